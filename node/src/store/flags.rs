//! IMAP system flags and their Maildir letters.

/// IMAP system flags kept by the store, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// `\Seen` (Maildir `S`).
    pub const SEEN: Flags = Flags(1);
    /// `\Answered` (Maildir `R`).
    pub const ANSWERED: Flags = Flags(2);
    /// `\Flagged` (Maildir `F`).
    pub const FLAGGED: Flags = Flags(4);
    /// `\Deleted` (Maildir `T`).
    pub const DELETED: Flags = Flags(8);
    /// `\Draft` (Maildir `D`).
    pub const DRAFT: Flags = Flags(16);

    const TABLE: [(Flags, char, &'static str); 5] = [
        (Flags::DRAFT, 'D', "\\Draft"),
        (Flags::FLAGGED, 'F', "\\Flagged"),
        (Flags::ANSWERED, 'R', "\\Answered"),
        (Flags::SEEN, 'S', "\\Seen"),
        (Flags::DELETED, 'T', "\\Deleted"),
    ];

    /// Whether all bits of `other` are set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Difference.
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Maildir info letters, in ASCII order.
    pub fn to_maildir(self) -> String {
        Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, c, _)| *c)
            .collect()
    }

    /// Parses Maildir info letters; unknown letters are ignored.
    pub fn from_maildir(s: &str) -> Flags {
        Self::TABLE
            .iter()
            .filter(|(_, c, _)| s.contains(*c))
            .fold(Flags::default(), |acc, (f, _, _)| acc.with(*f))
    }

    /// IMAP flag list contents, e.g. `\Seen \Flagged`.
    pub fn to_imap(self) -> String {
        Self::TABLE
            .iter()
            .filter(|(f, _, _)| self.contains(*f))
            .map(|(_, _, n)| *n)
            .collect::<Vec<_>>()
            .join(" ")
    }
}
