//! A minimal IMAP client for timing: tagged commands, responses read whole (literals
//! included) and kept as bytes for the checks, IDLE.

use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One IMAP connection.
pub struct Imap {
    r: BufReader<TcpStream>,
    tag: u32,
}

/// What one command got back.
#[derive(Debug, Default)]
pub struct Reply {
    /// Untagged responses, each with its literals inline.
    pub untagged: Vec<Vec<u8>>,
    /// Bytes of literal data in them.
    pub literal_bytes: usize,
}

/// `{n}` (or `{n+}`) ending a response line: the length of the literal that follows.
fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n").unwrap_or(line);
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = &l[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The number `n` of a `* n WORD` response.
fn numbered<'a>(resp: &'a [u8], word: &str) -> Option<(u32, &'a [u8])> {
    let rest = resp.strip_prefix(b"* ")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let n = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let after = rest[sp + 1..].strip_prefix(word.as_bytes())?;
    matches!(after.first(), Some(b' ' | b'\r') | None).then_some((n, after))
}

impl Reply {
    /// The `* n FETCH (...)` responses.
    pub fn fetches(&self) -> impl Iterator<Item = &[u8]> {
        self.untagged
            .iter()
            .filter(|r| numbered(r, "FETCH").is_some())
            .map(Vec::as_slice)
    }

    /// The numbers of the `* SEARCH` responses.
    pub fn search(&self) -> anyhow::Result<Vec<u32>> {
        let mut hits = Vec::new();
        let mut seen = false;
        for r in &self.untagged {
            let Some(rest) = r.strip_prefix(b"* SEARCH") else {
                continue;
            };
            seen = true;
            for w in String::from_utf8_lossy(rest).split_ascii_whitespace() {
                hits.push(
                    w.parse::<u32>()
                        .with_context(|| format!("SEARCH result {w:?}"))?,
                );
            }
        }
        if !seen {
            bail!("no * SEARCH response");
        }
        Ok(hits)
    }

    /// The last `* n EXISTS`.
    pub fn exists(&self) -> Option<u32> {
        self.untagged
            .iter()
            .rev()
            .find_map(|r| numbered(r, "EXISTS").map(|(n, _)| n))
    }
}

impl Imap {
    /// Connects to 127.0.0.1:`port` and reads the greeting.
    pub async fn connect(port: u16) -> anyhow::Result<Imap> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let mut c = Imap {
            r: BufReader::with_capacity(256 * 1024, s),
            tag: 0,
        };
        let mut greeting = Vec::new();
        c.response(&mut greeting).await?;
        if !greeting.starts_with(b"* OK") {
            bail!("greeting: {}", String::from_utf8_lossy(&greeting));
        }
        Ok(c)
    }

    /// Reads one whole response (a line and the literals it announces) onto `out`; returns
    /// the literal bytes.
    async fn response(&mut self, out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let mut literal = 0;
        loop {
            let start = out.len();
            if self.r.read_until(b'\n', out).await? == 0 {
                bail!("the server closed the connection");
            }
            let Some(len) = literal_len(&out[start..]) else {
                return Ok(literal);
            };
            let at = out.len();
            out.resize(at + len, 0);
            self.r.read_exact(&mut out[at..]).await?;
            literal += len;
        }
    }

    async fn send(&mut self, line: &str) -> anyhow::Result<String> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.r
            .get_mut()
            .write_all(format!("{tag} {line}\r\n").as_bytes())
            .await?;
        Ok(tag)
    }

    /// Reads responses up to the tagged one for `tag`, which must be OK.
    async fn until_tagged(&mut self, tag: &str, what: &str) -> anyhow::Result<Reply> {
        let mut reply = Reply::default();
        let tagged = format!("{tag} ");
        loop {
            let mut resp = Vec::new();
            reply.literal_bytes += self.response(&mut resp).await?;
            if resp.starts_with(tagged.as_bytes()) {
                if !resp[tagged.len()..].starts_with(b"OK") {
                    bail!("{what}: {}", String::from_utf8_lossy(&resp).trim_end());
                }
                return Ok(reply);
            }
            if resp.starts_with(b"+") {
                bail!("{what}: unexpected continuation request");
            }
            reply.untagged.push(resp);
        }
    }

    /// Sends one command and reads its responses; anything but OK is an error.
    pub async fn command(&mut self, line: &str) -> anyhow::Result<Reply> {
        let tag = self.send(line).await?;
        let what = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
        self.until_tagged(&tag, &what).await
    }

    /// LOGIN with quoted strings.
    pub async fn login(&mut self, user: &str, pass: &str) -> anyhow::Result<()> {
        self.command(&format!("LOGIN \"{user}\" \"{pass}\""))
            .await
            .map(drop)
    }

    /// SELECT INBOX; returns EXISTS.
    pub async fn select_inbox(&mut self) -> anyhow::Result<u32> {
        self.command("SELECT INBOX")
            .await?
            .exists()
            .context("SELECT INBOX without EXISTS")
    }

    /// Starts IDLE; returns its tag once the server sent the continuation. Untagged
    /// responses before it are dropped (the caller knows the mailbox from SELECT).
    pub async fn idle(&mut self) -> anyhow::Result<String> {
        let tag = self.send("IDLE").await?;
        loop {
            let mut resp = Vec::new();
            self.response(&mut resp).await?;
            if resp.starts_with(b"+") {
                return Ok(tag);
            }
            if resp.starts_with(tag.as_bytes()) {
                bail!(
                    "IDLE refused: {}",
                    String::from_utf8_lossy(&resp).trim_end()
                );
            }
        }
    }

    /// While idling: waits for `* n EXISTS` with `n >= at_least`; returns when it was read.
    pub async fn wait_exists(&mut self, at_least: u32) -> anyhow::Result<(u32, Instant)> {
        loop {
            let mut resp = Vec::new();
            self.response(&mut resp).await?;
            let now = Instant::now();
            if let Some((n, _)) = numbered(&resp, "EXISTS")
                && n >= at_least
            {
                return Ok((n, now));
            }
        }
    }

    /// Ends IDLE.
    pub async fn done(&mut self, tag: &str) -> anyhow::Result<Reply> {
        self.r.get_mut().write_all(b"DONE\r\n").await?;
        self.until_tagged(tag, "IDLE").await
    }

    /// LOGOUT.
    pub async fn logout(mut self) -> anyhow::Result<()> {
        self.command("LOGOUT").await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_numbered_responses() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {12+}\r\n"), Some(12));
        assert_eq!(literal_len(b"* 1 FETCH (FLAGS ())\r\n"), None);
        assert_eq!(numbered(b"* 7 EXISTS\r\n", "EXISTS").map(|x| x.0), Some(7));
        assert!(numbered(b"* 7 EXISTSX\r\n", "EXISTS").is_none());
        assert!(numbered(b"* OK [UIDNEXT 3]\r\n", "EXISTS").is_none());
    }
}
