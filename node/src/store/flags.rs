//! IMAP system flags, the node's own keywords, and their Maildir letters.
//!
//! The keywords are the end-to-end verdicts the inbound stage sets ([`Flags::VERIFIED`],
//! [`Flags::UNVERIFIED`], [`Flags::ENCRYPTED`], [`Flags::KEY_CHANGED`]). They are stored as
//! lower-case Maildir letters (`a`, `b`, `c`, `d`), as Dovecot stores keywords, so they survive restarts, moves and
//! copies with the message. Clients see them in FETCH FLAGS and SEARCH KEYWORD but cannot set
//! or clear them ([`Flags::KEYWORDS`] are kept across STORE).

/// IMAP system flags and the node's keywords kept by the store, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u16);

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
    /// `$Verified`: signed by the key bound on the ledger to the From identity (Maildir `a`).
    pub const VERIFIED: Flags = Flags(32);
    /// `$Unverified`: not validly signed by a bound key (Maildir `b`).
    pub const UNVERIFIED: Flags = Flags(64);
    /// `$Encrypted`: arrived end-to-end encrypted and was decrypted (Maildir `c`).
    pub const ENCRYPTED: Flags = Flags(128);
    /// `$KeyChanged`: the sender's keys on the ledger changed since its previous message
    /// here (Maildir `d`).
    pub const KEY_CHANGED: Flags = Flags(256);
    /// The keywords only the node sets.
    pub const KEYWORDS: Flags = Flags(32 | 64 | 128 | 256);

    const TABLE: [(Flags, char, &'static str); 9] = [
        (Flags::DRAFT, 'D', "\\Draft"),
        (Flags::FLAGGED, 'F', "\\Flagged"),
        (Flags::ANSWERED, 'R', "\\Answered"),
        (Flags::SEEN, 'S', "\\Seen"),
        (Flags::DELETED, 'T', "\\Deleted"),
        (Flags::VERIFIED, 'a', "$Verified"),
        (Flags::UNVERIFIED, 'b', "$Unverified"),
        (Flags::ENCRYPTED, 'c', "$Encrypted"),
        (Flags::KEY_CHANGED, 'd', "$KeyChanged"),
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

    /// Intersection.
    pub fn only(self, other: Flags) -> Flags {
        Flags(self.0 & other.0)
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

    /// IMAP flag list contents, e.g. `\Seen \Flagged $Verified`.
    pub fn to_imap(self) -> String {
        let mut out = Vec::new();
        self.write_imap(&mut out);
        String::from_utf8(out).expect("flag names are ASCII")
    }

    /// Appends [`Flags::to_imap`] to `out` without allocating (one per message of a FETCH).
    pub fn write_imap(self, out: &mut Vec<u8>) {
        let names = Self::TABLE.iter().filter(|(f, _, _)| self.contains(*f));
        for (i, (_, _, n)) in names.enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(n.as_bytes());
        }
    }

    /// The keyword of this name (case-insensitive, as IMAP compares flags), if the node
    /// keeps it.
    pub fn keyword(name: &str) -> Option<Flags> {
        Self::TABLE
            .iter()
            .find(|(f, _, n)| Self::KEYWORDS.contains(*f) && n.eq_ignore_ascii_case(name))
            .map(|(f, _, _)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_round_trip_through_maildir_letters() {
        let f = Flags::SEEN.with(Flags::VERIFIED).with(Flags::ENCRYPTED);
        assert_eq!(f.to_maildir(), "Sac");
        assert_eq!(Flags::from_maildir("Sac"), f);
        assert_eq!(f.to_imap(), "\\Seen $Verified $Encrypted");
        assert_eq!(Flags::keyword("$verified"), Some(Flags::VERIFIED));
        assert_eq!(Flags::keyword("\\Seen"), None);
        let k = Flags::UNVERIFIED.with(Flags::KEY_CHANGED);
        assert_eq!(k.to_maildir(), "bd");
        assert_eq!(Flags::from_maildir("2,bd"), k);
        assert_eq!(k.to_imap(), "$Unverified $KeyChanged");
        assert_eq!(Flags::keyword("$keychanged"), Some(Flags::KEY_CHANGED));
        assert_eq!(
            f.only(Flags::KEYWORDS),
            Flags::VERIFIED.with(Flags::ENCRYPTED)
        );
    }
}
