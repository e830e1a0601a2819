//! Dovecot with a throwaway configuration (static passdb: any user, password `pw`) serving
//! a copy of an onionpost Maildir as INBOX, so both servers hold identical messages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::procs::{Kill, chown_r, free_port, run, uid_of, wait_port};

/// The system user Dovecot's mail processes run as (Debian's `mail`).
pub const MAIL_USER: &str = "mail";

/// The password every user has.
pub const PASSWORD: &str = "pw";

/// A running Dovecot (killed when dropped).
pub struct Dovecot {
    _proc: Kill,
    /// Its IMAP port on 127.0.0.1.
    pub port: u16,
    /// The Maildir it serves as INBOX.
    pub maildir: PathBuf,
    /// The uid and gid owning that Maildir.
    pub uid: u32,
}

impl Dovecot {
    /// Copies the Maildir `source` to `<dir>/Maildir` and serves it.
    pub fn start(dir: &Path, source: &Path) -> anyhow::Result<Dovecot> {
        fs::create_dir_all(dir.join("run"))?;
        let maildir = dir.join("Maildir");
        run(Command::new("cp").arg("-a").arg(source).arg(&maildir))?;
        chown_r(MAIL_USER, dir)?;
        let uid = uid_of(MAIL_USER)?;
        let port = free_port();
        let conf = format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {run}\nstate_dir = {run}\n\
             log_path = {dir}/dovecot.log\nssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain\n\
             passdb {{\n  driver = static\n  args = password={PASSWORD}\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={uid} home={dir}\n}}\n\
             mail_location = maildir:{maildir}\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n\
             service imap-login {{\n  inet_listener imap {{\n    port = {port}\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\nservice imap-login {{\n  chroot =\n}}\n",
            run = dir.join("run").display(),
            dir = dir.display(),
            maildir = maildir.display(),
        );
        fs::write(dir.join("dovecot.conf"), conf)?;
        let proc = Kill(
            Command::new("dovecot")
                .arg("-F")
                .arg("-c")
                .arg(dir.join("dovecot.conf"))
                .stdout(Stdio::null())
                .spawn()
                .context("starting dovecot (Debian package dovecot-imapd)")?,
        );
        wait_port(port, "dovecot")?;
        Ok(Dovecot {
            _proc: proc,
            port,
            maildir,
            uid,
        })
    }
}
