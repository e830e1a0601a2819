//! A minimal SMTP client: EHLO, AUTH PLAIN, pipelined MAIL/RCPT/DATA, each reply checked.

use anyhow::bail;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SMTP connection.
pub struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects, reads the greeting, says EHLO and authenticates if `auth` is given.
    pub async fn connect(port: u16, auth: Option<(&str, &str)>) -> anyhow::Result<Smtp> {
        let mut s = Smtp {
            r: BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?),
        };
        s.expect("220").await?;
        s.write(b"EHLO bench\r\n").await?;
        s.expect("250").await?;
        if let Some((u, p)) = auth {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
            s.write(format!("AUTH PLAIN {b64}\r\n").as_bytes()).await?;
            s.expect("235").await?;
        }
        Ok(s)
    }

    async fn write(&mut self, b: &[u8]) -> anyhow::Result<()> {
        self.r.get_mut().write_all(b).await?;
        Ok(())
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, code: &str) -> anyhow::Result<()> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await? == 0 {
                bail!("server closed the connection, expected {code}");
            }
            if !line.starts_with(code) {
                bail!("expected {code}, got {line:?}");
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    /// MAIL FROM, RCPT TO and DATA (pipelined), up to the 354.
    pub async fn begin(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        self.write(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes())
            .await?;
        self.expect("250").await?;
        self.expect("250").await?;
        self.expect("354").await
    }

    /// The message text (dot-stuffed here) and the final dot; returns at the 250, which
    /// means the message is durably stored.
    pub async fn finish(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        self.write(&onionpost_node::smtp::client::dot_stuff(msg))
            .await?;
        self.expect("250").await
    }

    /// One whole transaction.
    pub async fn send(&mut self, from: &str, to: &str, msg: &[u8]) -> anyhow::Result<()> {
        self.begin(from, to).await?;
        self.finish(msg).await
    }

    /// QUIT.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.write(b"QUIT\r\n").await?;
        self.expect("221").await
    }
}

/// Sends `msgs` over one connection (authenticated if `auth` is given).
pub async fn send_all(
    port: u16,
    auth: Option<(String, String)>,
    from: String,
    to: String,
    msgs: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut s = Smtp::connect(port, auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))).await?;
    for m in msgs {
        s.send(&from, &to, &m).await?;
    }
    s.quit().await
}
