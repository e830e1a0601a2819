//! The DATA reader: message bytes in, a complete message (or why it is refused) out.
//!
//! Smuggling-safe end of data. The message ends only at `<CRLF>.<CRLF>`: a `.` line that
//! follows a line ended by a bare LF, or that is itself ended by a bare LF, is content, not
//! the end. This is what Postfix 3.9 does with `smtpd_forbid_bare_newline = normalize`, and it
//! closes SMTP smuggling (a receiver that ends DATA where the sender's server saw content
//! would accept a second, forged message). Lines ended by a bare LF are stored with CRLF. A
//! bare CR (not followed by LF) anywhere in the content refuses the message: RFC 5321 2.3.8
//! forbids it and some servers end lines there, so passing it on could smuggle at the next hop.
//!
//! Memory is bounded: the reader never holds more than [`MAX_PENDING`] bytes of an unfinished
//! line (longer lines are appended to the message as they arrive) plus the message itself,
//! which stops growing at the size limit.

/// Most bytes of one unfinished line kept before they are moved into the message.
pub const MAX_PENDING: usize = 64 * 1024;

/// Why a message read by DATA is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// Larger than the size limit.
    TooBig,
    /// Contains a CR that is not followed by LF.
    BareCr,
}

/// Reads one message after `354`.
#[derive(Debug)]
pub struct DataReader {
    max_size: usize,
    data: Vec<u8>,
    /// Bytes of an unfinished line.
    pending: Vec<u8>,
    /// The previous line ended with CRLF (true at the start: the DATA command's line did).
    prev_crlf: bool,
    /// Part of the current line was already moved into `data` (so it cannot be `.`).
    mid_line: bool,
    too_big: bool,
    bare_cr: bool,
}

/// The result of feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More input needed.
    More,
    /// The end of data was read; the bytes after it (pipelined commands) are returned too.
    Done(Result<Vec<u8>, DataError>, Vec<u8>),
}

impl DataReader {
    /// A reader for a message of at most `max_size` bytes.
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            data: Vec::new(),
            pending: Vec::new(),
            prev_crlf: true,
            mid_line: false,
            too_big: false,
            bare_cr: false,
        }
    }

    /// Feeds bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Progress {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl + 1);
            rest = tail;
            let done = if self.pending.is_empty() {
                self.line(line)
            } else {
                let mut joined = std::mem::take(&mut self.pending);
                joined.extend_from_slice(line);
                self.line(&joined)
            };
            if done {
                let result = if self.too_big {
                    Err(DataError::TooBig)
                } else if self.bare_cr {
                    Err(DataError::BareCr)
                } else {
                    Ok(std::mem::take(&mut self.data))
                };
                return Progress::Done(result, rest.to_vec());
            }
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_PENDING {
            self.flush_partial();
        }
        Progress::More
    }

    /// Handles one complete line (ending in LF); returns whether it ended the message.
    fn line(&mut self, line: &[u8]) -> bool {
        let crlf = line.ends_with(b"\r\n");
        if !self.mid_line && self.prev_crlf && line == b".\r\n" {
            return true;
        }
        let content = &line[..line.len() - if crlf { 2 } else { 1 }];
        let content = match content.split_first() {
            Some((b'.', unstuffed)) if !self.mid_line => unstuffed,
            _ => content,
        };
        self.content(content);
        self.append(b"\r\n");
        self.prev_crlf = crlf;
        self.mid_line = false;
        false
    }

    /// Moves most of an over-long unfinished line into the message, keeping a trailing CR
    /// (it may be the first half of CRLF).
    fn flush_partial(&mut self) {
        let keep = usize::from(self.pending.last() == Some(&b'\r'));
        let cut = self.pending.len() - keep;
        let chunk: Vec<u8> = self.pending.drain(..cut).collect();
        let content = match chunk.split_first() {
            Some((b'.', unstuffed)) if !self.mid_line => unstuffed,
            _ => &chunk[..],
        };
        self.content(content);
        self.mid_line = true;
    }

    /// Appends message text (never a line end): any CR in it is a bare CR.
    fn content(&mut self, bytes: &[u8]) {
        if bytes.contains(&b'\r') {
            self.bare_cr = true;
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.data.len() + bytes.len() > self.max_size {
            self.too_big = true;
            self.data = Vec::new();
            return;
        }
        self.data.extend_from_slice(bytes);
    }
}

/// Brings the bytes of a BDAT (RFC 3030) message to the form DATA produces: CRLF line ends
/// (a bare LF becomes CRLF) and no bare CR (refused, as in DATA). BDAT has no end-of-data
/// marker to smuggle through, but the next hop may still end lines at a bare CR.
pub fn normalize_chunked(data: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64);
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\r' if data.get(i + 1) != Some(&b'\n') => return Err(DataError::BareCr),
            b'\n' if i == 0 || data[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_messages_get_crlf_and_no_bare_cr() {
        assert_eq!(
            normalize_chunked(b"a\nb\r\n.\r\n").unwrap(),
            b"a\r\nb\r\n.\r\n"
        );
        assert_eq!(normalize_chunked(b"x\r.\r"), Err(DataError::BareCr));
        assert_eq!(normalize_chunked(b"\n").unwrap(), b"\r\n");
        assert_eq!(normalize_chunked(b"").unwrap(), b"");
    }

    fn read_all(input: &[u8]) -> Progress {
        let mut r = DataReader::new(1 << 20);
        r.feed(input)
    }

    fn message(input: &[u8]) -> Vec<u8> {
        match read_all(input) {
            Progress::Done(Ok(m), _) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs() {
        assert_eq!(
            read_all(b"a\r\n..b\r\n.\r\nQUIT\r\n"),
            Progress::Done(Ok(b"a\r\n.b\r\n".to_vec()), b"QUIT\r\n".to_vec())
        );
        // Byte by byte gives the same.
        let mut r = DataReader::new(100);
        let input = b"x\r\n.\r\nNOOP\r\n";
        let mut out = Progress::More;
        for (i, b) in input.iter().enumerate() {
            out = r.feed(std::slice::from_ref(b));
            if i < 5 {
                assert_eq!(out, Progress::More);
            } else {
                break;
            }
        }
        assert_eq!(out, Progress::Done(Ok(b"x\r\n".to_vec()), Vec::new()));
    }

    /// The known SMTP smuggling shapes (SEC Consult, December 2023): each would end DATA
    /// early at a lenient receiver, so that what follows is read as a second message. Here
    /// none of them ends the message; the commands after them stay content.
    #[test]
    fn smuggling_shapes_do_not_end_the_message() {
        let smuggled = b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@x.onion>\r\nDATA\r\n\
                         Subject: forged\r\n\r\nhi\r\n";
        for shape in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r\n.\r",
            b"\r.\r\n",
        ] {
            let mut input = b"Subject: real\r\n\r\nbody".to_vec();
            input.extend_from_slice(shape);
            input.extend_from_slice(smuggled);
            input.extend_from_slice(b".\r\n");
            let mut r = DataReader::new(1 << 20);
            match r.feed(&input) {
                Progress::Done(result, rest) => {
                    assert!(
                        rest.is_empty(),
                        "{shape:?}: ended early, {rest:?} left over"
                    );
                    if let Ok(m) = result {
                        let text = String::from_utf8(m).unwrap();
                        assert!(text.contains("Subject: forged"), "{shape:?}: {text}");
                        assert!(!text.contains("\r\n.\r\n"), "{shape:?}: {text:?}");
                    }
                }
                Progress::More => panic!("{shape:?}: no end at the real CRLF.CRLF"),
            }
        }
    }

    #[test]
    fn bare_lf_is_normalised_and_bare_cr_refused() {
        assert_eq!(message(b"a\nb\r\n\r\n.\r\n"), b"a\r\nb\r\n\r\n");
        // ".\n" is content (becomes an empty line), and so is ".\r\n" after a bare LF.
        assert_eq!(
            message(b"a\r\n.\nb\n.\r\nc\r\n.\r\n"),
            b"a\r\n\r\nb\r\n\r\nc\r\n"
        );
        assert_eq!(
            read_all(b"a\rb\r\n.\r\n"),
            Progress::Done(Err(DataError::BareCr), Vec::new())
        );
    }

    #[test]
    fn long_lines_are_bounded_and_kept_whole() {
        let mut r = DataReader::new(1 << 22);
        let long = vec![b'x'; 3 * MAX_PENDING + 7];
        let mut input = b".".to_vec();
        input.extend_from_slice(&long);
        for chunk in input.chunks(1000) {
            assert_eq!(r.feed(chunk), Progress::More);
            assert!(r.pending.len() <= MAX_PENDING + 1000);
        }
        // A CR split from its LF across a flush is still CRLF.
        assert_eq!(r.feed(b"\r"), Progress::More);
        match r.feed(b"\n.\r\n") {
            Progress::Done(Ok(m), _) => {
                let mut want = long.clone();
                want.extend_from_slice(b"\r\n");
                assert_eq!(m, want, "unstuffed once, CRLF kept");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_message_is_refused_after_its_end() {
        let mut r = DataReader::new(10);
        assert_eq!(r.feed(b"0123456789abc\r\n"), Progress::More);
        assert!(r.data.is_empty(), "stopped growing");
        assert_eq!(
            r.feed(b".\r\nNOOP\r\n"),
            Progress::Done(Err(DataError::TooBig), b"NOOP\r\n".to_vec())
        );
    }
}
