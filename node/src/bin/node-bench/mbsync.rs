//! Runs of Debian's `mbsync` (isync) pulling a server's INBOX into a local Maildir.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::corpus;

/// One mbsync channel: its config file and the local Maildir it fills.
pub struct Channel {
    config: PathBuf,
    /// The local copy of the server's INBOX.
    pub near: PathBuf,
}

impl Channel {
    /// A channel from the server on `port` to a new, empty `<dir>/INBOX`. Pull only (the
    /// server is left as it is, so runs can be repeated), no expunge, and `FSync no`: the
    /// local writes are the same work for both servers and the figure is about the server.
    pub fn new(dir: &Path, port: u16, user: &str, pass: &str) -> anyhow::Result<Channel> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        let near = dir.join("INBOX");
        let config = dir.join("mbsyncrc");
        fs::write(
            &config,
            format!(
                "FSync no\n\n\
                 IMAPAccount far\nHost 127.0.0.1\nPort {port}\nUser \"{user}\"\nPass \"{pass}\"\n\
                 SSLType None\nAuthMechs LOGIN\n\n\
                 IMAPStore far\nAccount far\n\n\
                 MaildirStore near\nPath {dir}/\nInbox {near}\n\n\
                 Channel bench\nFar :far:\nNear :near:\nPatterns INBOX\nCreate Near\n\
                 Sync Pull\nExpunge None\nSyncState *\n",
                dir = dir.display(),
                near = near.display(),
            ),
        )?;
        Ok(Channel { config, near })
    }

    /// Runs `mbsync -a`; with `trace`, under `-Dn` and returns the IMAP commands it sent.
    /// Returns the seconds the process took.
    pub async fn sync(&self, trace: bool) -> anyhow::Result<(f64, Vec<String>)> {
        let mut cmd = tokio::process::Command::new("mbsync");
        cmd.arg("-c").arg(&self.config);
        if trace {
            cmd.arg("-Dn");
        } else {
            cmd.arg("-q");
        }
        cmd.arg("-a");
        let start = Instant::now();
        let out = cmd
            .output()
            .await
            .context("running mbsync (Debian package isync)")?;
        let secs = start.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("mbsync failed ({}):\n{}", out.status, tail(&text));
        }
        let sent = text
            .lines()
            .filter_map(|l| l.split_once(">>> ").map(|(_, c)| c.to_string()))
            .collect();
        Ok((secs, sent))
    }

    /// The files of the local copy (`cur/` and `new/`).
    pub fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for sub in ["cur", "new"] {
            for e in fs::read_dir(self.near.join(sub))? {
                v.push(e?.path());
            }
        }
        v.sort();
        Ok(v)
    }

    /// Checks that the local copy holds exactly messages `0..n` of the corpus.
    pub fn check_complete(&self, n: usize) -> anyhow::Result<()> {
        let files = self.files()?;
        let mut seen = HashSet::new();
        for f in &files {
            let text = fs::read(f)?;
            // The header ends at the first empty line (mbsync may store LF line ends).
            let head_end = text
                .windows(2)
                .position(|w| w == b"\n\n")
                .into_iter()
                .chain(text.windows(4).position(|w| w == b"\r\n\r\n"))
                .min()
                .unwrap_or(text.len());
            let i = corpus::index_in(&text[..head_end])
                .with_context(|| format!("{}: no Message-ID of the corpus", f.display()))?;
            if i >= n || !seen.insert(i) {
                bail!("{}: message {i} unexpected or twice", f.display());
            }
        }
        if seen.len() != n {
            bail!("mbsync copied {} of {n} messages", seen.len());
        }
        Ok(())
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
