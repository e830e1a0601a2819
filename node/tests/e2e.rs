//! End-to-end tests: two `onionpost-node` processes on loopback with the direct transport.
//! Mail is submitted with Python's smtplib and read back with Python's imaplib and with
//! Debian's fetchmail; swaks submits too. Needs `python3`, `fetchmail` and `swaks` on PATH (the
//! CI script installs them); a missing tool fails the test.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use support::direct::{Node, imap_read, submit};
use support::{python, wait_for};

fn fetchmail(node: &Node) -> String {
    let dir = node.home.join("fetchmail");
    fs::create_dir_all(&dir).unwrap();
    let mbox = dir.join("out.mbox");
    let rc = dir.join("fetchmailrc");
    fs::write(
        &rc,
        format!(
            "set no syslog\npoll 127.0.0.1 with proto IMAP service {} auth password\n  \
             user \"{}\" there with password \"{}\"\n  options keep fetchall sslproto ''\n  \
             mda \"/bin/sh -c 'cat >> {}'\"\n",
            node.imap,
            node.address,
            node.password,
            mbox.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("-v")
        .env("FETCHMAILHOME", &dir)
        .env("HOME", &dir)
        .output()
        .expect("fetchmail must be installed");
    assert!(
        out.status.success(),
        "fetchmail failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(mbox).unwrap()
}

#[test]
fn submitted_mail_arrives_and_is_read_by_imaplib_and_fetchmail() {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    a.route_to(&b);
    b.start();
    a.start();
    let status = a.status();
    assert!(
        status.contains("running") && status.contains(&a.address),
        "{status}"
    );
    assert!(
        status.contains(&format!("submission: 127.0.0.1:{}", a.submission)),
        "{status}"
    );

    submit(
        &a,
        &b.address,
        "Greetings from A",
        "First line.\n.Second line starts with a dot.",
    );
    wait_for(Duration::from_secs(30), "delivery to B", || {
        b.count_in_maildir("Greetings from A") == 1
    });

    let read = imap_read(&b);
    assert!(read.contains("SUBJECT=Greetings from A"), "{read}");
    assert!(
        read.contains("BODY=First line.|.Second line starts with a dot."),
        "{read}"
    );
    assert!(
        read.contains("UNSEEN=\n") || read.contains("UNSEEN=\r\n"),
        "fetch set \\Seen: {read}"
    );
    // Privacy: nothing names the client host; Message-ID in A's onion; Date in UTC.
    assert!(
        !read.contains("my-laptop") && !read.contains("LeakyClient"),
        "{read}"
    );
    assert!(
        !read.contains("User-Agent") && !read.contains("X-Originating-IP"),
        "{read}"
    );
    assert!(read.contains(&format!("@{}>", a.onion())), "{read}");
    assert!(read.contains("+0000"), "{read}");

    // A second, independent client: Debian's swaks, with AUTH PLAIN.
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", a.submission)])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            &a.address,
            "--auth-password",
            &a.password,
        ])
        .args(["--from", &a.address, "--to", &b.address])
        .args([
            "--header",
            "Subject: Sent with swaks",
            "--body",
            "Body from swaks.",
        ])
        .output()
        .expect("swaks must be installed");
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for(Duration::from_secs(30), "swaks mail at B", || {
        b.count_in_maildir("Sent with swaks") == 1
    });

    let mbox = fetchmail(&b);
    assert!(
        mbox.contains("Subject: Sent with swaks") && mbox.contains("Body from swaks."),
        "{mbox}"
    );
    assert!(mbox.contains("Subject: Greetings from A"), "{mbox}");
    assert!(mbox.contains("First line."), "{mbox}");

    // B is not an open relay: mail for someone it does not host is refused at RCPT.
    let relay = python(
        r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]))
s.ehlo('x')
print(s.mail('x@example.com'))
print(s.rcpt('victim@example.com'))
s.quit()
"#,
        &[&b.smtp.to_string()],
    );
    assert!(relay.contains("(550, b'5.1.1"), "{relay}");
    wait_for(Duration::from_secs(10), "A's queue empty", || {
        a.status().contains("queue: 0 message(s)")
    });
}

#[test]
fn recipient_down_message_waits_in_queue_then_arrives() {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    a.route_to(&b);
    a.start();
    submit(&a, &b.address, "Patience", "delivered later");
    wait_for(Duration::from_secs(20), "a failed attempt", || {
        a.log().contains("temporary failure")
    });
    let status = a.status();
    assert!(
        status.contains("queue: 1 message(s)"),
        "{status}\n{}",
        a.log()
    );
    b.start();
    wait_for(Duration::from_secs(30), "delivery after B came up", || {
        b.count_in_maildir("Patience") == 1
    });
    wait_for(Duration::from_secs(10), "queue drained", || {
        a.status().contains("queue: 0 message(s)")
    });
    assert!(imap_read(&b).contains("SUBJECT=Patience"));
}

#[test]
fn sender_killed_with_sigkill_still_delivers_exactly_once() {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    a.route_to(&b);
    a.start();
    // Queued while B is down, then A dies hard.
    for i in 0..3 {
        submit(&a, &b.address, &format!("Queued-{i}"), "survives kill -9");
    }
    a.kill9();
    b.start();
    a.start();
    for i in 0..3 {
        let s = format!("Queued-{i}");
        wait_for(Duration::from_secs(30), "queued message delivered", || {
            b.count_in_maildir(&s) >= 1
        });
    }
    // Now kill A in the middle of a burst: while a client is still submitting and the queue
    // is delivering. Every message A acknowledged must arrive exactly once.
    let client = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import smtplib, sys
from email.message import EmailMessage
port, user, pw, to = sys.argv[1:]
with smtplib.SMTP('127.0.0.1', int(port)) as s:
    s.login(user, pw)
    for i in range(300):
        m = EmailMessage()
        m['From'] = user
        m['To'] = to
        m['Subject'] = 'Burst-%03d' % i
        m.set_content('exactly once')
        s.send_message(m)
        print('accepted %03d' % i, flush=True)
"#,
        )
        .args([
            &a.submission.to_string(),
            &a.address,
            &a.password,
            &b.address,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    wait_for(Duration::from_secs(30), "burst under way", || {
        b.count_in_maildir("Subject: Burst-") >= 10
    });
    a.kill9();
    let out = client.wait_with_output().unwrap();
    let accepted: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("accepted ")
                .map(|n| format!("Subject: Burst-{n}"))
        })
        .collect();
    let before = b.count_in_maildir("Subject: Burst-");
    eprintln!(
        "A acknowledged {} messages, B had {before} when A was killed",
        accepted.len()
    );
    assert!(
        accepted.len() < 300,
        "the kill should interrupt the submission"
    );
    a.start();
    for s in &accepted {
        wait_for(
            Duration::from_secs(60),
            "acknowledged message delivered",
            || b.count_in_maildir(s) >= 1,
        );
    }
    // The status is live: once it says empty, nothing more is in flight or will be sent.
    wait_for(Duration::from_secs(20), "queue drained", || {
        a.status()
            .contains("queue: 0 message(s), 0 being delivered")
    });
    for i in 0..3 {
        assert_eq!(b.count_in_maildir(&format!("Subject: Queued-{i}")), 1);
    }
    for s in &accepted {
        assert_eq!(b.count_in_maildir(s), 1, "{s} not delivered exactly once");
    }
    let total = b.count_in_maildir("Subject: Burst-");
    assert!(
        total <= accepted.len() + 1,
        "unacknowledged duplicates: {total}"
    );
}

#[test]
fn undeliverable_mail_bounces_with_a_dsn() {
    let mut a = Node::new("alice");
    let b = Node::new("bob"); // never started
    a.route_to(&b);
    a.queue_extra = "retry_window_secs = 1.5".into();
    a.start();
    submit(&a, &b.address, "Doomed", "nobody home");
    wait_for(Duration::from_secs(30), "bounce", || {
        a.count_in_maildir("delivery-status") == 1
    });
    let read = imap_read(&a);
    assert!(
        read.contains("SUBJECT=Undelivered Mail Returned to Sender"),
        "{read}"
    );
    let dsn = fs::read_dir(a.home.join("identities/alice/Maildir/cur"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|t| t.contains("delivery-status"))
        .unwrap();
    assert!(
        dsn.contains(&format!("Final-Recipient: rfc822; {}", b.address)),
        "{dsn}"
    );
    assert!(
        dsn.contains("Action: failed") && dsn.contains("Status: 4.4.7"),
        "{dsn}"
    );
    assert!(dsn.contains("Subject: Doomed"), "{dsn}");
    wait_for(Duration::from_secs(10), "queue drained", || {
        a.status().contains("queue: 0 message(s)")
    });
}
