//! The outside world for the gateway's tests: ordinary e-mail on loopback, made of real
//! programs, so that the gateway meets the same peers it will meet on the internet.
//!
//! - [`Dns`]: Debian's `dnsmasq` on a loopback port serving a [`Zone`] of MX, A and TXT
//!   records (SPF, DKIM keys, DMARC policies), for the gateway's MX look-ups and its
//!   SPF/DKIM/DMARC checks. [`dig`] queries it with a real resolver.
//! - [`Postfix`]: a Postfix instance on a loopback port with its own directory, which
//!   (a) receives mail for [`PostfixConfig::mailbox`] addresses into Maildirs the test
//!   reads, and (b) relays mail for [`PostfixConfig::relay`] domains (the gateway's) to a
//!   loopback port: the outside sender's MTA.
//! - [`SmtpSink`]: aiosmtpd accepting everything and recording each message with its
//!   envelope (to see exactly what a relay sent).
//! - [`DkimKey`], [`dkim_sign`], [`dkim_verify`]: keys in the formats mail-auth's signer
//!   and a DNS TXT record take, and Python's dkimpy (an implementation independent of
//!   mail-auth) signing as an outside sender and verifying what the gateway signed.
//!
//! Everything started here is stopped when its value is dropped, and waits for an
//! observable event to be ready (an answered query, a 220 greeting), never a pause.
//!
//! # Ports
//! Every listener takes a port from [`super::free_port`]. Postfix relays to a port it is
//! told (`transport_maps`: `gw.test smtp:[127.0.0.1]:PORT`), so inbound mail reaches the
//! gateway on whatever port the gateway listens on. The other way, an MX record names a
//! host, never a port, and real MTAs deliver to port 25: the gateway's tests give it this
//! module's [`Dns`] port as its resolver and the receiving [`Postfix`]'s port as its
//! outbound SMTP port (a test-only setting of the gateway), with the MX of the outside
//! domain pointing at a host whose A record is 127.0.0.1 ([`Zone::mail_domain`]).
//!
//! Needs Debian's `postfix` (debconf "No configuration"), `dnsmasq-base`,
//! `bind9-dnsutils` and `openssl`, and PyPI's `dkimpy`, `pynacl`, `dnspython` and
//! `aiosmtpd` (scripts/test.sh installs them). Postfix runs as root with its queue owned
//! by `postfix`; the tests run as root.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use dnsmasq::Record;

use super::free_port;

/// The shared Postfix instance code (also node-bench's).
#[path = "../../src/bin/node-bench/postfix.rs"]
pub mod postfix;

/// The shared dnsmasq code (also node-bench's).
#[path = "../../src/bin/node-bench/dnsmasq.rs"]
pub mod dnsmasq;

/// This directory (the Python helpers live here).
const SUPPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support");

/// A temporary directory that the `postfix` user can traverse (mode 755).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let st = Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .expect("chmod");
    assert!(st.success(), "chmod 755 {}", dir.path().display());
    dir
}

// ---------------------------------------------------------------------------------------
// DNS

/// The records a [`Dns`] serves, built up per test.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// The records, in the order given.
    pub records: Vec<Record>,
}

impl Zone {
    /// No records.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// `domain MX preference host`.
    pub fn mx(mut self, domain: &str, host: &str, preference: u16) -> Zone {
        self.records.push(Record::Mx {
            domain: domain.into(),
            host: host.into(),
            preference,
        });
        self
    }

    /// `name A address`.
    pub fn a(mut self, name: &str, address: Ipv4Addr) -> Zone {
        self.records.push(Record::A {
            name: name.into(),
            address,
        });
        self
    }

    /// `name TXT text` (split into 255-byte strings when longer).
    pub fn txt(mut self, name: &str, text: &str) -> Zone {
        self.records.push(Record::Txt {
            name: name.into(),
            text: text.into(),
        });
        self
    }

    /// A domain whose mail goes to loopback: `domain MX 10 mx.domain` and
    /// `mx.domain A 127.0.0.1`.
    pub fn mail_domain(self, domain: &str) -> Zone {
        let host = format!("mx.{domain}");
        self.mx(domain, &host, 10).a(&host, Ipv4Addr::LOCALHOST)
    }

    /// The SPF policy of `domain`: `domain TXT "v=spf1 <mechanisms>"`, for example
    /// `spf("outside.test", "ip4:127.0.0.1 -all")`.
    pub fn spf(self, domain: &str, mechanisms: &str) -> Zone {
        self.txt(domain, &format!("v=spf1 {mechanisms}"))
    }

    /// The DKIM public key of `key`: `<selector>._domainkey.<domain> TXT
    /// "v=DKIM1; k=...; p=..."`.
    pub fn dkim(self, key: &DkimKey) -> Zone {
        self.txt(&key.dns_name(), &key.txt_record())
    }

    /// The DMARC policy of `domain`: `_dmarc.<domain> TXT "v=DMARC1; <tags>"`, for example
    /// `dmarc("outside.test", "p=reject")`.
    pub fn dmarc(self, domain: &str, tags: &str) -> Zone {
        self.txt(&format!("_dmarc.{domain}"), &format!("v=DMARC1; {tags}"))
    }
}

/// dnsmasq serving a [`Zone`] on `127.0.0.1:`[`Dns::port`] (UDP and TCP); killed when
/// dropped.
pub struct Dns {
    inner: dnsmasq::Dnsmasq,
    zone: Zone,
    dir: tempfile::TempDir,
}

impl Dns {
    /// Starts dnsmasq on a free port serving `zone`; returns once it has answered a query
    /// (asked with `dig`). Fails the test if it does not within 20 s.
    pub fn start(zone: &Zone) -> Dns {
        let dir = tempfile::tempdir().expect("temporary directory");
        let inner = start_dnsmasq(dir.path(), free_port(), zone);
        Dns {
            inner,
            zone: zone.clone(),
            dir,
        }
    }

    /// The port to point a resolver at (`127.0.0.1:port`).
    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// The records it serves.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Serves `zone` instead, on the same port (dnsmasq restarted; ready on return).
    pub fn set_zone(&mut self, zone: &Zone) {
        let port = self.inner.port();
        self.inner.stop();
        self.inner = start_dnsmasq(self.dir.path(), port, zone);
        self.zone = zone.clone();
    }

    /// `dig`'s answer for `name` and `rtype` (`MX`, `A`, `TXT`): one line per record,
    /// as `dig +short` prints them (TXT strings quoted, several strings of one record on
    /// one line).
    pub fn query(&self, name: &str, rtype: &str) -> Vec<String> {
        dig(self.port(), name, rtype).unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// Its query log.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// Its pid (to check that nothing is left running after the drop).
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }
}

fn start_dnsmasq(dir: &Path, port: u16, zone: &Zone) -> dnsmasq::Dnsmasq {
    dnsmasq::Dnsmasq::start(dir, port, &zone.records, |port, probe| {
        dig(port, probe, "TXT").is_ok_and(|a| a.iter().any(|l| l.contains("ready")))
    })
    .unwrap_or_else(|e| panic!("dnsmasq: {e:#}"))
}

/// Asks `127.0.0.1:port` for `name`/`rtype` with `dig +short` (one try, 1 s); the answer's
/// lines, or why there was none.
pub fn dig(port: u16, name: &str, rtype: &str) -> Result<Vec<String>, String> {
    let out = Command::new("dig")
        .args(["+short", "+time=1", "+tries=1", "@127.0.0.1", "-p"])
        .arg(port.to_string())
        .args([name, rtype])
        .output()
        .map_err(|e| format!("running dig (bind9-dnsutils): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains(";; ") {
        return Err(format!("dig {name} {rtype} on port {port}: {text}"));
    }
    Ok(text.lines().map(str::to_string).collect())
}

// ---------------------------------------------------------------------------------------
// Postfix

/// What a [`Postfix`] instance does; [`PostfixConfig::start`] starts it.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    name: String,
    mailboxes: Vec<String>,
    relays: Vec<(String, u16)>,
    tls: bool,
    extra: String,
}

impl PostfixConfig {
    /// An instance whose `myhostname` is `name` (`mx.outside.test`; a name without a dot
    /// gets `.test`). It accepts mail from any loopback client for the domains it holds or
    /// relays, refuses mail for any other domain (554, relay access denied), and retries
    /// deferred mail every second.
    pub fn new(name: &str) -> PostfixConfig {
        PostfixConfig {
            name: name.into(),
            mailboxes: Vec::new(),
            relays: Vec::new(),
            tls: false,
            extra: String::new(),
        }
    }

    /// Receives mail for `address` into a Maildir ([`Postfix::messages`]); its domain
    /// becomes a virtual mailbox domain (other addresses there are refused with 550).
    pub fn mailbox(mut self, address: &str) -> PostfixConfig {
        self.mailboxes.push(address.into());
        self
    }

    /// Relays mail for `domain` to `127.0.0.1:port` (`transport_maps`), as the outside
    /// sender's MTA relays to the gateway domain's MX.
    pub fn relay(mut self, domain: &str, port: u16) -> PostfixConfig {
        self.relays.push((domain.into(), port));
        self
    }

    /// Offers STARTTLS with a self-signed certificate for its name
    /// ([`Postfix::tls_cert`]); a message received over TLS has `with ESMTPS` in its
    /// Received header.
    pub fn tls(mut self) -> PostfixConfig {
        self.tls = true;
        self
    }

    /// Connects out from `address` (`smtp_bind_address`; any of 127.0.0.0/8 is local), so
    /// that the relay's destination sees that client address: with
    /// [`Zone::spf`] allowing or not allowing it, SPF passes or fails on purpose.
    pub fn source_address(self, address: Ipv4Addr) -> PostfixConfig {
        self.main_cf(&format!("smtp_bind_address = {address}"))
    }

    /// Appends `line` to `main.cf` (later settings win).
    pub fn main_cf(mut self, line: &str) -> PostfixConfig {
        self.extra += line;
        self.extra.push('\n');
        self
    }

    /// Starts the instance on a free port and waits for its 220 greeting (30 s at most).
    pub fn start(self) -> Postfix {
        self.start_on(free_port())
    }

    /// Starts the instance on `port` (one from [`super::free_port`] that something else
    /// was already told, such as a relay's destination); ready on return.
    pub fn start_on(self, port: u16) -> Postfix {
        let tmp = open_tempdir();
        let dir = tmp.path().join("postfix");
        let vmail = tmp.path().join("vmail");
        // Loopback clients are in `mynetworks` (the bench relies on that), but this
        // instance relays only its relay domains: never an open relay, as on the internet.
        let mut extra = String::from(
            "smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n\
             minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n\
             smtp_connect_timeout = 5s\n",
        );
        if !self.mailboxes.is_empty() {
            extra += &or_panic(
                &self.name,
                postfix::mailbox_config(&dir, &vmail, &self.mailboxes),
            );
        }
        if !self.relays.is_empty() {
            extra += &or_panic(&self.name, postfix::relay_config(&dir, &self.relays));
        }
        let cert = self.tls.then(|| {
            let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
            let host = if self.name.contains('.') {
                self.name.clone()
            } else {
                format!("{}.test", self.name)
            };
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .arg("-subj")
                .arg(format!("/CN={host}"))
                .arg("-addext")
                .arg(format!("subjectAltName=DNS:{host}"))
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl req: {out:?}");
            extra += &format!(
                "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = may\n\
                 smtpd_tls_received_header = yes\nsmtpd_tls_loglevel = 1\n",
                cert.display(),
                key.display()
            );
            cert
        });
        extra += &self.extra;
        let inst = or_panic(&self.name, postfix::start(&dir, &self.name, port, &extra));
        Postfix {
            inst,
            vmail,
            cert,
            _tmp: tmp,
        }
    }
}

fn or_panic<T>(name: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("postfix {name}: {e:#}"))
}

/// A running Postfix instance (see [`PostfixConfig`]); stopped when dropped, its master
/// waited for.
pub struct Postfix {
    inst: postfix::Instance,
    vmail: PathBuf,
    cert: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

/// smtplib: sends a file to a loopback port, optionally after STARTTLS: "OK", or the
/// refusal as "CODE text".
const SEND: &str = r#"
import smtplib, ssl, sys
port, starttls, sender, rcpts, path = sys.argv[1:]
data = open(path, 'rb').read()
try:
    with smtplib.SMTP('127.0.0.1', int(port), local_hostname='client.outside.test') as s:
        if starttls == '1':
            s.starttls(context=ssl._create_unverified_context())
        refused = s.sendmail(sender, rcpts.split(','), data)
    print('OK' if not refused else ' '.join('%s %s' % (c, m.decode()) for c, m in refused.values()))
except smtplib.SMTPRecipientsRefused as e:
    code, msg = list(e.recipients.values())[0]
    print(code, msg.decode())
except smtplib.SMTPResponseException as e:
    print(e.smtp_code, e.smtp_error.decode())
"#;

/// Sends `data` from `sender` to `rcpts` over SMTP to `127.0.0.1:port` with Python's
/// smtplib (STARTTLS first if `starttls`, any certificate accepted): "OK", or the
/// refusal as "CODE text" (the first refused recipient, or the refused MAIL or DATA).
pub fn smtp_send(port: u16, starttls: bool, sender: &str, rcpts: &[&str], data: &[u8]) -> String {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    std::io::Write::write_all(&mut file, data).expect("write message");
    super::python(
        SEND,
        &[
            &port.to_string(),
            if starttls { "1" } else { "0" },
            sender,
            &rcpts.join(","),
            file.path().to_str().unwrap(),
        ],
    )
    .trim()
    .to_string()
}

impl Postfix {
    /// Its smtpd's loopback port.
    pub fn port(&self) -> u16 {
        self.inst.port()
    }

    /// Its configuration directory (for `postfix -c`, `sendmail -C`, `postqueue -c`).
    pub fn dir(&self) -> &Path {
        self.inst.dir()
    }

    /// The pid of its master (to check that nothing is left running after the drop).
    pub fn master_pid(&self) -> Option<u32> {
        self.inst.master_pid()
    }

    /// Its self-signed certificate, if it offers STARTTLS.
    pub fn tls_cert(&self) -> Option<&Path> {
        self.cert.as_deref()
    }

    /// Sends `data` to it over SMTP (see [`smtp_send`]): "OK" or "CODE text".
    pub fn send(&self, sender: &str, rcpts: &[&str], data: &[u8]) -> String {
        smtp_send(self.port(), false, sender, rcpts, data)
    }

    /// Hands `data` to it with `sendmail -C <dir> -f sender rcpts...` (the local
    /// submission path, through its maildrop and pickup); fails the test if sendmail
    /// refuses.
    pub fn sendmail(&self, sender: &str, rcpts: &[&str], data: &[u8]) {
        let mut child = Command::new("sendmail")
            .arg("-C")
            .arg(self.dir())
            .args(["-i", "-f", sender])
            .args(rcpts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sendmail (Debian's postfix)");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).expect("to sendmail");
        let out = child.wait_with_output().expect("sendmail");
        assert!(
            out.status.success(),
            "sendmail -C {}: {out:?}",
            self.dir().display()
        );
    }

    /// The Maildir of mailbox `address` (`new/` holds what `virtual(8)` delivered).
    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.split_once('@').expect("an address");
        self.vmail.join(domain).join(local)
    }

    /// The messages in `address`'s Maildir (`new/` and `cur/`), oldest first.
    pub fn messages(&self, address: &str) -> Vec<Vec<u8>> {
        let dir = self.maildir(address);
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .flat_map(|d| fs::read_dir(dir.join(d)).into_iter().flatten())
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| fs::read(p).ok())
            .collect()
    }

    /// Waits until a message containing `needle` is in `address`'s Maildir and returns
    /// it; fails the test with the end of Postfix's log after `limit`.
    pub fn wait_for_message(&self, address: &str, needle: &str, limit: Duration) -> Vec<u8> {
        let start = Instant::now();
        loop {
            if let Some(m) = self
                .messages(address)
                .into_iter()
                .find(|m| String::from_utf8_lossy(m).contains(needle))
            {
                return m;
            }
            if start.elapsed() > limit {
                panic!(
                    "no message with {needle:?} for {address} in {limit:?}; postfix {} log ends:\n{}",
                    self.inst.name(),
                    self.maillog_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log (`maillog`).
    pub fn maillog(&self) -> String {
        self.inst.maillog()
    }

    /// The last `n` lines of its log.
    pub fn maillog_tail(&self, n: usize) -> String {
        let log = self.maillog();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether its queue is empty (`postqueue -p`): everything delivered or bounced.
    pub fn queue_is_empty(&self) -> bool {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.dir())
            .arg("-p")
            .output()
            .expect("postqueue");
        String::from_utf8_lossy(&out.stdout).contains("Mail queue is empty")
    }

    /// Asks it to retry deferred mail now (`postqueue -f`), for example once the gateway
    /// it relays to is up.
    pub fn flush(&self) {
        let st = Command::new("postqueue")
            .arg("-c")
            .arg(self.dir())
            .arg("-f")
            .status()
            .expect("postqueue");
        assert!(st.success(), "postqueue -f");
    }

    /// Stops it now (as the drop does): `postfix stop`, then its master waited for.
    pub fn stop(&mut self) {
        self.inst.stop();
    }
}

// ---------------------------------------------------------------------------------------
// An SMTP sink

/// One message a [`SmtpSink`] received.
#[derive(Clone, Debug)]
pub struct Received {
    /// MAIL FROM.
    pub mail_from: String,
    /// RCPT TO, in order.
    pub rcpt_tos: Vec<String>,
    /// The EHLO/HELO name the client gave.
    pub helo: String,
    /// The client's IP address.
    pub peer: String,
    /// The message bytes as received (CRLF line ends).
    pub data: Vec<u8>,
}

/// aiosmtpd on `127.0.0.1:`[`SmtpSink::port`], accepting every message and recording it
/// with its envelope (`smtp_sink.py`); killed when dropped.
pub struct SmtpSink {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts the sink on a free port; returns once it gave a 220 greeting (20 s at most).
    pub fn start() -> SmtpSink {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let child = Command::new("python3")
            .arg(format!("{SUPPORT}/smtp_sink.py"))
            .arg(port.to_string())
            .arg(dir.path().join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd");
        let mut sink = SmtpSink {
            child: Some(child),
            port,
            dir,
        };
        let start = Instant::now();
        while !greets(port) {
            let exited = sink.child.as_mut().and_then(|c| c.try_wait().unwrap());
            assert!(exited.is_none(), "smtp_sink.py exited: {exited:?}");
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "smtp_sink.py gave no greeting on {port} in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let dir = self.dir.path().join("mail");
        (1..)
            .map_while(|n| {
                let meta = fs::read_to_string(dir.join(format!("{n}.json"))).ok()?;
                let meta: serde_json::Value = serde_json::from_str(&meta).ok()?;
                let s = |k: &str| meta[k].as_str().unwrap_or_default().to_string();
                Some(Received {
                    mail_from: s("mail_from"),
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    helo: s("helo"),
                    peer: meta["peer"][0].as_str().unwrap_or_default().to_string(),
                    data: fs::read(dir.join(format!("{n}.eml"))).ok()?,
                })
            })
            .collect()
    }

    /// Waits until it has received `n` messages; returns them. Fails after `limit`.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "the sink on {} received {} of {n} messages in {limit:?}",
                self.port,
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a connection to `127.0.0.1:port` reads a 220 greeting.
pub fn greets(port: u16) -> bool {
    use std::io::BufRead;
    let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("220")
}

// ---------------------------------------------------------------------------------------
// DKIM

/// A DKIM key's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimAlgorithm {
    /// RSA 2048 bits, `rsa-sha256` (its TXT record is longer than one 255-byte string).
    Rsa,
    /// Ed25519, `ed25519-sha256` (RFC 8463).
    Ed25519,
}

/// A DKIM key pair made by `openssl`, with the private key in every format a signer may
/// want (files in a temporary directory kept as long as the key) and the public key for
/// its DNS TXT record.
///
/// mail-auth: `RsaKey::<Sha256>::from_pkcs1_pem(&key.rsa_pkcs1_pem()?)` (or
/// `from_pkcs8_pem` / `from_pkcs8_der`), `Ed25519Key::from_pkcs8_der(&key.pkcs8_der)` or
/// `Ed25519Key::from_seed_and_public_key(&seed, &key.public_key)`.
pub struct DkimKey {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// RSA or Ed25519.
    pub algorithm: DkimAlgorithm,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub pkcs8_pem: String,
    /// The private key, PKCS#8 DER.
    pub pkcs8_der: Vec<u8>,
    /// The public key as the TXT record's `p=` carries it, decoded: the SubjectPublicKeyInfo
    /// DER for RSA, the raw 32 bytes for Ed25519.
    pub public_key: Vec<u8>,
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl DkimKey {
    /// A new key pair for `selector._domainkey.domain`.
    pub fn generate(algorithm: DkimAlgorithm, domain: &str, selector: &str) -> DkimKey {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("temporary directory");
        let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        match algorithm {
            DkimAlgorithm::Rsa => {
                openssl(&["genrsa", "-traditional", "-out", &p("pkcs1.pem"), "2048"]);
                openssl(&[
                    "pkcs8",
                    "-topk8",
                    "-nocrypt",
                    "-in",
                    &p("pkcs1.pem"),
                    "-out",
                    &p("pkcs8.pem"),
                ]);
            }
            DkimAlgorithm::Ed25519 => {
                openssl(&["genpkey", "-algorithm", "ed25519", "-out", &p("pkcs8.pem")]);
            }
        }
        let pkcs8_der = openssl(&["pkey", "-in", &p("pkcs8.pem"), "-outform", "DER"]);
        let spki = openssl(&["pkey", "-in", &p("pkcs8.pem"), "-pubout", "-outform", "DER"]);
        let public_key = match algorithm {
            DkimAlgorithm::Rsa => spki,
            DkimAlgorithm::Ed25519 => spki[spki.len() - 32..].to_vec(),
        };
        // dkimpy signs with an ed25519 key given as its base64 seed, an RSA key as PEM.
        let dkimpy_key = match algorithm {
            DkimAlgorithm::Rsa => fs::read(p("pkcs1.pem")).unwrap(),
            DkimAlgorithm::Ed25519 => base64::engine::general_purpose::STANDARD
                .encode(&pkcs8_der[pkcs8_der.len() - 32..])
                .into_bytes(),
        };
        fs::write(p("dkimpy.key"), dkimpy_key).unwrap();
        fs::write(p("pkcs8.der"), &pkcs8_der).unwrap();
        DkimKey {
            domain: domain.into(),
            selector: selector.into(),
            algorithm,
            pkcs8_pem: fs::read_to_string(p("pkcs8.pem")).unwrap(),
            pkcs8_der,
            public_key,
            dir,
        }
    }

    /// The TXT record's owner name: `<selector>._domainkey.<domain>`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record's text: `v=DKIM1; k=rsa|ed25519; p=<base64>`.
    pub fn txt_record(&self) -> String {
        use base64::Engine;
        let k = match self.algorithm {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        };
        format!(
            "v=DKIM1; k={k}; p={}",
            base64::engine::general_purpose::STANDARD.encode(&self.public_key)
        )
    }

    /// The RSA private key as PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`); None for
    /// Ed25519.
    pub fn rsa_pkcs1_pem(&self) -> Option<String> {
        fs::read_to_string(self.dir.path().join("pkcs1.pem")).ok()
    }

    /// The Ed25519 private key's 32-byte seed; None for RSA.
    pub fn ed25519_seed(&self) -> Option<[u8; 32]> {
        (self.algorithm == DkimAlgorithm::Ed25519).then(|| {
            self.pkcs8_der[self.pkcs8_der.len() - 32..]
                .try_into()
                .unwrap()
        })
    }

    /// A file holding the private key as PKCS#8 PEM (for a signer configured by path).
    pub fn pkcs8_pem_path(&self) -> PathBuf {
        self.dir.path().join("pkcs8.pem")
    }

    /// A file holding the private key as PKCS#8 DER.
    pub fn pkcs8_der_path(&self) -> PathBuf {
        self.dir.path().join("pkcs8.der")
    }
}

/// dkimpy's verdict on a message's DKIM signature.
#[derive(Clone, Debug)]
pub struct DkimVerdict {
    /// Whether the signature verified against the key found in DNS.
    pub pass: bool,
    /// Why not (body hash mismatch, missing public key, no signature...), or what passed.
    pub reason: String,
    /// The signature's `d=`.
    pub domain: Option<String>,
    /// The signature's `s=`.
    pub selector: Option<String>,
    /// How many DKIM-Signature headers the message has.
    pub signatures: usize,
}

fn dkim_tool(args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(format!("{SUPPORT}/dkim_tool.py"))
        .args(args)
        .output()
        .expect("python3 with dkimpy");
    assert!(
        out.status.success(),
        "dkim_tool.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Signs `message` with `key` as an outside sender's MTA would, with dkimpy
/// (relaxed/relaxed; `headers` to sign, or dkimpy's default set if empty); returns the
/// message with its DKIM-Signature header prepended.
pub fn dkim_sign(message: &[u8], key: &DkimKey, headers: &[&str]) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    fs::write(file.path(), message).unwrap();
    let algo = match key.algorithm {
        DkimAlgorithm::Rsa => "rsa",
        DkimAlgorithm::Ed25519 => "ed25519",
    };
    dkim_tool(&[
        "sign",
        file.path().to_str().unwrap(),
        &key.selector,
        &key.domain,
        key.dir.path().join("dkimpy.key").to_str().unwrap(),
        algo,
        &headers.join(","),
    ])
}

/// Verifies the topmost DKIM-Signature of `message` with dkimpy, its key looked up in
/// `dns` with dnspython.
pub fn dkim_verify(message: &[u8], dns: &Dns) -> DkimVerdict {
    dkim_verify_at(message, dns, 0)
}

/// Verifies the `index`-th DKIM-Signature (0: the topmost) of `message` with dkimpy.
pub fn dkim_verify_at(message: &[u8], dns: &Dns, index: usize) -> DkimVerdict {
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    fs::write(file.path(), message).unwrap();
    let out = dkim_tool(&[
        "verify",
        file.path().to_str().unwrap(),
        &dns.port().to_string(),
        &index.to_string(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("dkim_tool.py verify printed {out:?}: {e}"));
    DkimVerdict {
        pass: v["pass"].as_bool().unwrap_or(false),
        reason: v["reason"].as_str().unwrap_or_default().to_string(),
        domain: v["domain"].as_str().map(str::to_string),
        selector: v["selector"].as_str().map(str::to_string),
        signatures: v["signatures"].as_u64().unwrap_or(0) as usize,
    }
}

/// A message from `from` to `to` with `subject` and a plain `body` (`\n` line ends,
/// sent as CRLF), a
/// Date and a Message-ID in `from`'s domain: what an outside sender writes.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let domain = from.rsplit('@').next().unwrap_or("outside.test");
    let id = format!("{:016x}", rand::random::<u64>());
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {}\r\n\
         Message-ID: <{id}@{domain}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        chrono::Utc::now().to_rfc2822(),
        body.replace('\n', "\r\n")
    )
    .into_bytes()
}
