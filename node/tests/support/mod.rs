//! Helpers shared by the node's end-to-end tests (and the onion bench, which includes
//! `onion_e2e.rs`): free ports, waiting, and the Python smtplib / imaplib clients.

#![allow(dead_code)]

pub mod direct;
pub mod ledger;
pub mod outside;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that nothing listens on now, never the same twice in one test
/// process, and below the kernel's ephemeral range (32768-60999).
///
/// A port from binding port 0 is drawn from that range, so another call (the birthday
/// problem: among the 150 ports of a 50-node run, a repeat is likely), another process's
/// bind to port 0, or the local end of any outgoing connection could take it between now
/// and the node's own bind; the node then fails to start.
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(10_000..32_000);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// Polls `f` every 50 ms until it holds; fails the test after `limit`. Returns the wait.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Polls `f` every 50 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Runs a Python script with arguments; returns stdout, failing on a non-zero exit.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// smtplib submission with AUTH; adds client-identifying headers the node must strip.
const SUBMIT: &str = r#"
import smtplib, sys
from email.message import EmailMessage
port, user, pw, to, subject, body = sys.argv[1:]
m = EmailMessage()
m['From'] = user
m['To'] = to
m['Subject'] = subject
m['User-Agent'] = 'LeakyClient/1.0 (my-laptop.example)'
m['X-Originating-IP'] = '192.0.2.7'
m['Message-ID'] = '<abc@my-laptop.example>'
m.set_content(body)
with smtplib.SMTP('127.0.0.1', int(port)) as s:
    s.login(user, pw)
    s.send_message(m)
print('sent')
"#;

/// Submits one message as `user` through the submission port.
pub fn submit(port: u16, user: &str, password: &str, to: &str, subject: &str, body: &str) {
    python(
        SUBMIT,
        &[&port.to_string(), user, password, to, subject, body],
    );
}

/// imaplib: every INBOX message as KEY=value lines, then the UNSEEN list.
const IMAP_READ: &str = r#"
import imaplib, sys, email, email.policy
port, user, pw = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port))
M.login(user, pw)
typ, data = M.select('INBOX')
assert typ == 'OK', data
typ, data = M.search(None, 'ALL')
for num in data[0].split():
    typ, msg = M.fetch(num, '(RFC822)')
    m = email.message_from_bytes(msg[0][1], policy=email.policy.default)
    print('FROM=' + str(m['From']))
    print('SUBJECT=' + str(m['Subject']))
    print('MESSAGE-ID=' + str(m['Message-ID']))
    print('DATE=' + str(m['Date']))
    print('HEADERS=' + ','.join(m.keys()))
    body = m.get_body(('plain',))
    print('BODY=' + (body.get_content().strip() if body else '').replace('\r', '').replace('\n', '|'))
typ, data = M.search(None, 'UNSEEN')
print('UNSEEN=' + data[0].decode())
M.logout()
"#;

/// Reads `user`'s INBOX over IMAP.
pub fn imap_read(port: u16, user: &str, password: &str) -> String {
    python(IMAP_READ, &[&port.to_string(), user, password])
}

/// Messages of the identity whose directory is `id_dir` (`<home>/identities/<name>`) that
/// contain `needle`, in any of its mailboxes: INBOX (`Maildir/`) and the folders (list posts
/// are filed in `Lists/<list>`).
pub fn count_in_mailboxes(id_dir: &std::path::Path, needle: &str) -> usize {
    files_in_mailboxes(id_dir, needle).len()
}

/// The stored messages (Maildir files of INBOX and every folder) of the identity directory
/// `id_dir` that contain `needle`.
pub fn files_in_mailboxes(id_dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let folders = std::fs::read_dir(id_dir.join("folders"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("cur"));
    std::iter::once(id_dir.join("Maildir/cur"))
        .chain(folders)
        .flat_map(|cur| std::fs::read_dir(cur).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Every file under `dir`, recursively, as text (lossy).
pub fn texts_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
    }
    out
}
