//! A node of the direct-transport end-to-end tests: an `onionpost-node` process on loopback
//! with its own home, one identity, and free ports; plus the clients that talk to it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// Raw SMTP to a node's loopback port: "OK" or "CODE text".
const RAW_SMTP: &str = r#"
import smtplib, sys
port, sender, rcpt, path = sys.argv[1:]
data = open(path, 'rb').read()
try:
    with smtplib.SMTP('127.0.0.1', int(port)) as s:
        s.sendmail(sender, [rcpt], data)
    print('OK')
except smtplib.SMTPRecipientsRefused as e:
    code, msg = list(e.recipients.values())[0]
    print(code, msg.decode())
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
"#;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_onionpost-node");

/// One node: a home directory, an identity, ports, and maybe a running process.
pub struct Node {
    _dir: tempfile::TempDir,
    pub home: PathBuf,
    pub address: String,
    pub password: String,
    pub smtp: u16,
    pub submission: u16,
    pub imap: u16,
    child: Option<Child>,
    pub routes: Vec<(String, u16)>,
    pub queue_extra: String,
    /// More configuration appended verbatim (for example a `[limits]` table).
    pub extra: String,
    /// The process's `RUST_LOG` (tests: `debug,pgp=info`, so that a failure's log says much).
    pub log: String,
}

impl Node {
    pub fn new(name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let out = Command::new(BIN)
            .args(["--home", home.to_str().unwrap(), "identity", "new", name])
            .output()
            .expect("run onionpost-node");
        assert!(out.status.success(), "identity new: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
        };
        Node {
            address: field("address:"),
            password: field("password:"),
            home,
            _dir: dir,
            smtp: free_port(),
            submission: free_port(),
            imap: free_port(),
            child: None,
            routes: Vec::new(),
            queue_extra: String::new(),
            extra: String::new(),
            log: "debug,pgp=info".into(),
        }
    }

    pub fn onion(&self) -> &str {
        self.address.split_once('@').unwrap().1
    }

    pub fn route_to(&mut self, other: &Node) {
        self.routes.push((other.onion().to_string(), other.smtp));
    }

    /// Writes the configuration and starts the process; waits until it listens.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_listening(Duration::from_secs(20));
    }

    /// Waits until the process started by [`Node::spawn`] accepts IMAP and submission
    /// connections; fails the test with the end of its log if it exits first or `limit`
    /// passes.
    pub fn wait_listening(&mut self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.imap)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.submission)).is_ok()
            {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().unwrap());
            if exited.is_some() || std::time::Instant::now() > deadline {
                let what = match exited {
                    Some(status) => format!("exited ({status}) before listening"),
                    None => format!("not listening after {limit:?}"),
                };
                panic!(
                    "node {}: {what}; its log ends:\n{}",
                    self.address,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of this node's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(self.home.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The configuration file this node runs with.
    pub fn config(&self) -> String {
        let mut cfg = format!(
            "[smtp]\nlisten = \"127.0.0.1:{}\"\n[submission]\nlisten = \"127.0.0.1:{}\"\n\
             [imap]\nlisten = \"127.0.0.1:{}\"\n[queue]\nretry_base_secs = 0.2\nretry_max_secs = 0.5\n{}\n\
             [transport]\nkind = \"direct\"\n[transport.direct]\n",
            self.smtp, self.submission, self.imap, self.queue_extra
        );
        for (onion, port) in &self.routes {
            cfg += &format!("\"{onion}\" = \"127.0.0.1:{port}\"\n");
        }
        cfg + &self.extra
    }

    /// A `run` process of this node's home and configuration (not waited for).
    pub fn run_command(&self) -> Command {
        let cfg_path = self.home.join("node.toml");
        fs::write(&cfg_path, self.config()).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("node.log"))
            .unwrap();
        let mut c = Command::new(BIN);
        c.args(["--home", self.home.to_str().unwrap(), "run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", &self.log)
            .stdout(Stdio::null())
            .stderr(log);
        c
    }

    /// Starts the process without waiting for it to listen.
    pub fn spawn(&mut self) {
        self.child = Some(self.run_command().spawn().unwrap());
    }

    /// The running process's id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for the exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        c.wait().unwrap()
    }

    /// Runs the `onionpost-node` command line on this home.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["--home", self.home.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    pub fn status(&self) -> String {
        let out = self.cli(&["status"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Number of messages in the Maildir whose text contains `needle`.
    pub fn count_in_maildir(&self, needle: &str) -> usize {
        let name = self.address.split('@').next().unwrap();
        self.count_in(name, needle)
    }

    /// Number of messages of identity `name` whose text contains `needle`, in any of its
    /// mailboxes (INBOX and the folders: list posts are filed in `Lists/<list>`).
    pub fn count_in(&self, name: &str, needle: &str) -> usize {
        super::count_in_mailboxes(&self.home.join("identities").join(name), needle)
    }

    /// The identity's name (the local part of its address).
    pub fn name(&self) -> String {
        self.address.split('@').next().unwrap().to_string()
    }

    /// The configuration file `register` writes.
    pub fn config_path(&self) -> String {
        self.home.join("node.toml").to_str().unwrap().to_string()
    }

    /// The identity's ed25519 signing key (its onion address's key), from its directory.
    pub fn signing_key(&self) -> ed25519_consensus::SigningKey {
        let path = self
            .home
            .join("identities")
            .join(self.name())
            .join("secret.key");
        let hexkey = fs::read_to_string(&path).unwrap();
        let seed: [u8; 32] = hex::decode(hexkey.trim()).unwrap().try_into().unwrap();
        ed25519_consensus::SigningKey::from(seed)
    }

    /// The identity's public key: the 32 bytes its onion address encodes.
    pub fn identity_key(&self) -> [u8; 32] {
        self.onion()
            .parse::<onionpost_proto::onion::OnionAddress>()
            .unwrap()
            .public_key()
    }

    /// The identity's current OpenPGP secret key, from its keyring on disk.
    pub fn openpgp_secret(&self) -> onionpost_e2e::SecretCert {
        let dir = self
            .home
            .join("identities")
            .join(self.name())
            .join("openpgp");
        let fpr = fs::read_to_string(dir.join("current")).unwrap();
        onionpost_e2e::SecretCert::from_bytes(
            &fs::read(dir.join(format!("{}.key", fpr.trim()))).unwrap(),
        )
        .unwrap()
    }

    /// Writes the configuration and registers the identity on its `[ledger]`, binding its
    /// OpenPGP key; fails the test unless both are done. Returns the command's output.
    pub fn register(&self) -> String {
        let cfg = self.home.join("node.toml");
        fs::write(&cfg, self.config()).unwrap();
        let name = self.name();
        let out = self.cli(&[
            "identity",
            "register",
            &name,
            "--config",
            cfg.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success()
                && text.contains("registered:")
                && text.contains("bound: OpenPGP key"),
            "register {}: {text}\n{}",
            self.address,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// New free ports for the three listeners (ports chosen long before the start may have
    /// been taken meanwhile); routes that name the old SMTP port must be made again.
    pub fn fresh_ports(&mut self) {
        self.smtp = free_port();
        self.submission = free_port();
        self.imap = free_port();
    }

    /// Sends raw message bytes to `rcpt` on this node's SMTP port with Python's smtplib:
    /// "OK", or the refusal as "CODE text".
    pub fn send_raw(&self, sender: &str, rcpt: &str, data: &[u8]) -> String {
        let path = self.home.join("raw.eml");
        fs::write(&path, data).unwrap();
        super::python(
            RAW_SMTP,
            &[&self.smtp.to_string(), sender, rcpt, path.to_str().unwrap()],
        )
        .trim()
        .to_string()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.home.join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn submit(node: &Node, to: &str, subject: &str, body: &str) {
    super::submit(
        node.submission,
        &node.address,
        &node.password,
        to,
        subject,
        body,
    );
}

pub fn imap_read(node: &Node) -> String {
    super::imap_read(node.imap, &node.address, &node.password)
}
