//! SMTP replies as values: smtp-proto's [`Response`] with its enhanced status code (RFC 3463),
//! from the session that makes them to the queue that records them and the DSN that reports
//! them. Nothing parses reply text back into codes.

use std::fmt;

pub use smtp_proto::Response;

/// An SMTP reply: code, enhanced status code (`[0, 0, 0]` when there is none, as in the
/// greeting and the 354 go-ahead), and text. Text with `\n` is sent as a multi-line reply.
pub type Reply = Response<String>;

/// An enhanced status code `class.subject.detail`, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EnhancedCode(pub [u8; 3]);

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.0;
        write!(f, "{a}.{b}.{c}")
    }
}

/// A reply with an enhanced status code.
pub fn reply(code: u16, esc: [u8; 3], text: impl Into<String>) -> Reply {
    Response {
        code,
        esc,
        message: text.into(),
    }
}

/// Helpers on [`Reply`].
pub trait ReplyExt {
    /// 2xx.
    fn is_positive(&self) -> bool;
    /// 5xx: do not retry.
    fn is_permanent(&self) -> bool;
    /// The enhanced status code, if the reply has one.
    fn enhanced(&self) -> Option<EnhancedCode>;
    /// The enhanced status code, or `default` when the server sent none (from its class).
    fn status_or_class(&self) -> EnhancedCode;
    /// One line for logs and DSNs: `550 5.1.1 text`, lines joined with spaces.
    fn one_line(&self) -> String;
    /// Appends the reply in wire format (CRLF line ends; `-` continuation lines).
    fn encode(&self, out: &mut Vec<u8>);
}

impl ReplyExt for Reply {
    fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    fn enhanced(&self) -> Option<EnhancedCode> {
        (self.esc[0] != 0).then_some(EnhancedCode(self.esc))
    }

    fn status_or_class(&self) -> EnhancedCode {
        self.enhanced().unwrap_or(match self.code / 100 {
            2 => EnhancedCode([2, 0, 0]),
            4 => EnhancedCode([4, 0, 0]),
            _ => EnhancedCode([5, 0, 0]),
        })
    }

    fn one_line(&self) -> String {
        let text = self.message.replace(['\r', '\n'], " ");
        match self.enhanced() {
            Some(e) => format!("{} {e} {text}", self.code),
            None => format!("{} {text}", self.code),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut lines = self.message.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let line = line.trim_end_matches('\r');
            let head = match self.enhanced() {
                Some(e) => format!("{}{sep}{e} ", self.code),
                None => format!("{}{sep}", self.code),
            };
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line_replies() {
        let mut out = Vec::new();
        reply(250, [2, 1, 0], "Ok").encode(&mut out);
        reply(220, [0, 0, 0], "x.onion ESMTP").encode(&mut out);
        reply(250, [0, 0, 0], "x.onion\nPIPELINING\nSIZE 10").encode(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "250 2.1.0 Ok\r\n220 x.onion ESMTP\r\n250-x.onion\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let r = reply(452, [4, 2, 2], "Mailbox full");
        assert!(!r.is_permanent() && !r.is_positive());
        assert_eq!(r.enhanced(), Some(EnhancedCode([4, 2, 2])));
        assert_eq!(r.one_line(), "452 4.2.2 Mailbox full");
        assert_eq!(
            reply(554, [0, 0, 0], "no").status_or_class(),
            EnhancedCode([5, 0, 0])
        );
    }
}
