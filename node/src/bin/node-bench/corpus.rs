//! The messages the IMAP suite stores: varied senders, subjects, sizes and structure, with
//! two marker words whose hits are known, so SEARCH results can be checked exactly.
//!
//! Message `i` (from 0) has [`SUBJECT_WORD`] in its subject iff `i % 7 == 3` and
//! [`BODY_WORD`] in its (plain-text) body iff `i % 13 == 5`; neither word occurs anywhere
//! else. Every message has the Message-ID `<fill-<i>@bench.invalid>`.

/// The word SEARCH SUBJECT looks for.
pub const SUBJECT_WORD: &str = "quarterly";
/// The word SEARCH BODY looks for.
pub const BODY_WORD: &str = "zanzibar";

/// Whether message `i` has [`SUBJECT_WORD`] in its subject.
pub fn subject_hit(i: usize) -> bool {
    i % 7 == 3
}

/// Whether message `i` has [`BODY_WORD`] in its body.
pub fn body_hit(i: usize) -> bool {
    i % 13 == 5
}

/// The Message-ID of message `i`, without angle brackets.
pub fn message_id(i: usize) -> String {
    format!("fill-{i}@bench.invalid")
}

/// Message `i` from the last Message-ID in a response or message (`fill-<i>@bench.invalid`;
/// the last, as an ENVELOPE has In-Reply-To before Message-ID, and so do the messages).
pub fn index_in(text: &[u8]) -> Option<usize> {
    let at = text.windows(5).rposition(|w| w == b"fill-")?;
    let digits: Vec<u8> = text[at + 5..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Every Message-ID index found in each of `responses` (one per response).
pub fn indices<'a>(responses: impl Iterator<Item = &'a [u8]>) -> Vec<usize> {
    responses.filter_map(index_in).collect()
}

const NAMES: [&str; 12] = [
    "Ann Lee",
    "Bob Marsh",
    "Carla Diaz",
    "Dmitri Volkov",
    "Eve Adams",
    "Farid Haddad",
    "Grace Kim",
    "Hiro Tanaka",
    "Ines Moreau",
    "Jon Berg",
    "Kofi Mensah",
    "Lena Fischer",
];

const TOPICS: [&str; 10] = [
    "Re: lunch on Friday",
    "Build failed on main",
    "Minutes of the meeting",
    "Your invoice",
    "Photos from the trip",
    "Fwd: conference schedule",
    "Question about the patch",
    "Weekend plans",
    "Release notes draft",
    "Server maintenance tonight",
];

const WORDS: [&str; 32] = [
    "the", "mail", "node", "onion", "message", "client", "server", "folder", "search", "index",
    "client", "plain", "text", "with", "some", "words", "that", "repeat", "across", "many",
    "lines", "of", "ordinary", "prose", "about", "nothing", "much", "really", "just", "filler",
    "for", "bytes",
];

/// A deterministic pseudo-random stream (xorshift), so every run stores the same corpus.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn prose(rng: &mut Rng, bytes: usize, marker: Option<&str>) -> String {
    let mut out = String::with_capacity(bytes + 100);
    let mut line = String::new();
    let marker_at = bytes / 2;
    let mut marker = marker;
    while out.len() < bytes {
        if out.len() >= marker_at
            && let Some(m) = marker.take()
        {
            line.push_str(m);
            line.push(' ');
        }
        line.push_str(WORDS[rng.below(WORDS.len())]);
        if line.len() > 66 {
            out.push_str(&line);
            out.push_str(".\r\n");
            line.clear();
        } else {
            line.push(' ');
        }
    }
    if let Some(m) = marker {
        line.push_str(m);
    }
    out.push_str(&line);
    out.push_str("\r\n");
    out
}

/// Message `i` for `to`.
pub fn message(i: usize, to: &str) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let (name, user) = {
        let n = NAMES[i % NAMES.len()];
        (n, n.to_ascii_lowercase().replace(' ', "."))
    };
    let mut subject = format!("{} #{i}", TOPICS[(i / 3) % TOPICS.len()]);
    if subject_hit(i) {
        subject = format!("{subject} ({SUBJECT_WORD} report)");
    }
    if i.is_multiple_of(11) {
        // An encoded word (RFC 2047), as non-ASCII subjects arrive.
        subject = format!("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= {subject}");
    }
    let day = 1 + (i / 1440) % 28;
    let (hour, minute) = ((i / 60) % 24, i % 60);
    let mut h = format!(
        "Date: Tue, {day:02} Sep 2026 {hour:02}:{minute:02}:00 +0000\r\n\
         From: {name} <{user}@example.onion>\r\n\
         To: Bob <{to}>\r\n\
         Subject: {subject}\r\n"
    );
    if i.is_multiple_of(5) {
        h.push_str(
            "Cc: Grace Kim <grace.kim@example.onion>, Jon Berg <jon.berg@example.onion>\r\n",
        );
    }
    if i % 3 == 1 {
        h.push_str(&format!("In-Reply-To: <{}>\r\n", message_id(i - 1)));
    }
    h.push_str(&format!("Message-ID: <{}>\r\n", message_id(i)));
    let size = 400 + rng.below(7600);
    let marker = body_hit(i).then_some(BODY_WORD);
    let body = prose(&mut rng, size, marker);
    let mut m = h;
    m.push_str("MIME-Version: 1.0\r\n");
    if i % 10 == 7 {
        // A multipart message with a base64 attachment.
        let attachment: Vec<u8> = (0..1500).map(|_| rng.next() as u8).collect();
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(attachment)
        };
        m.push_str("Content-Type: multipart/mixed; boundary=\"b-1\"\r\n\r\n");
        m.push_str("This is a multi-part message in MIME format.\r\n--b-1\r\n");
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
        m.push_str(&body);
        m.push_str("--b-1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n");
        m.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        for chunk in b64.as_bytes().chunks(76) {
            m.push_str(std::str::from_utf8(chunk).expect("base64"));
            m.push_str("\r\n");
        }
        m.push_str("--b-1--\r\n");
    } else {
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
        m.push_str(&body);
    }
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_words_only_where_promised() {
        let has = |hay: &[u8], w: &str| {
            String::from_utf8_lossy(hay)
                .to_ascii_lowercase()
                .contains(w)
        };
        for i in 0..300 {
            let m = message(i, "bob@x.onion");
            let split = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let (head, body) = m.split_at(split);
            assert_eq!(has(head, SUBJECT_WORD), subject_hit(i), "{i}");
            assert!(!has(body, SUBJECT_WORD), "{i}");
            assert_eq!(has(body, BODY_WORD), body_hit(i), "{i}");
            assert!(!has(head, BODY_WORD), "{i}");
            assert_eq!(index_in(&m), Some(i));
        }
    }
}
