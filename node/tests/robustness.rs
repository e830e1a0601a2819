//! The node under everyday trouble, through real processes (direct transport): a second node
//! on the same home, SIGTERM, identities created and deleted while it runs, a lost spool
//! file, a full mailbox, too many connections, password guessing. Each test waits for an
//! observable event (a file, a log line, a status field) under a deadline.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use support::direct::{Node, imap_read, submit};
use support::{python, wait_for};

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    r.read_line(&mut l).unwrap();
    l
}

#[test]
fn a_second_node_on_the_same_home_refuses_with_a_clear_message() {
    let mut a = Node::new("alice");
    a.start();
    let out = a
        .run_command()
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains("pid "), "{err}");
    // The first one still serves.
    assert!(a.status().contains("node: running"));
}

#[test]
fn sigterm_tells_idle_clients_drains_and_exits_zero() {
    let mut a = Node::new("alice");
    a.start();
    let mut idle = BufReader::new(TcpStream::connect(("127.0.0.1", a.submission)).unwrap());
    assert!(read_line(&mut idle).starts_with("220 "));
    let status = a.terminate();
    assert!(status.success(), "{status:?}");
    assert!(read_line(&mut idle).starts_with("421 4.3.2"));
    assert!(a.log().contains("stopped"), "{}", a.log());
    assert!(a.status().contains("node: not running"));
}

#[test]
fn status_changes_nothing_in_the_spool() {
    let a = Node::new("alice");
    let spool = a.home.join("spool");
    fs::create_dir_all(&spool).unwrap();
    for f in ["orphan.eml", ".tmp-half-written", "x.json"] {
        fs::write(spool.join(f), b"{}").unwrap();
    }
    let text = a.status();
    assert!(text.contains("node: not running"), "{text}");
    assert!(text.contains("queue: 1 message(s)"), "{text}");
    for f in ["orphan.eml", ".tmp-half-written", "x.json"] {
        assert!(spool.join(f).exists(), "{f} was removed by status");
    }
}

#[test]
fn a_queued_message_whose_file_was_lost_bounces_instead_of_retrying_forever() {
    let mut a = Node::new("alice");
    let b = Node::new("bob"); // never started
    a.route_to(&b);
    a.start();
    submit(&a, &b.address, "Lost in the spool", "x");
    wait_for(Duration::from_secs(20), "a failed attempt", || {
        a.log().contains("temporary failure")
    });
    a.kill9();
    for e in fs::read_dir(a.home.join("spool")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "eml") {
            fs::remove_file(p).unwrap();
        }
    }
    a.start();
    wait_for(Duration::from_secs(30), "a DSN about the lost file", || {
        a.count_in_maildir("was lost") == 1
    });
    wait_for(Duration::from_secs(10), "queue empty", || {
        a.status().contains("queue: 0 message(s)")
    });
}

#[test]
fn identities_created_and_deleted_while_running_take_effect_at_once() {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    a.route_to(&b);
    b.start();
    a.start();
    // A new identity on the running node B: it logs in and mails bob and is mailed back.
    let out = b.cli(&["identity", "new", "carol"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("now served by the running node: carol@"),
        "{text}"
    );
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap()
    };
    let (carol, carol_pw) = (field("address:"), field("password:"));
    support::submit(
        b.submission,
        &carol,
        &carol_pw,
        &b.address,
        "From new carol",
        "hi bob",
    );
    wait_for(Duration::from_secs(30), "carol's mail at bob", || {
        b.count_in_maildir("From new carol") == 1
    });
    submit(&b, &carol, "Back to carol", "hi carol");
    wait_for(Duration::from_secs(30), "bob's mail at carol", || {
        b.count_in("carol", "Back to carol") == 1
    });
    let read = support::imap_read(b.imap, &carol, &carol_pw);
    assert!(read.contains("SUBJECT=Back to carol"), "{read}");
    assert!(b.status().contains(&carol));

    // Deleting bob: mail to him bounces back to alice at A with 5.1.1.
    let out = b.cli(&["identity", "delete", "bob"]);
    assert!(!out.status.success(), "needs --yes");
    let out = b.cli(&["identity", "delete", "bob", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer served by the running node"));
    submit(&a, &b.address, "To a deleted identity", "anyone?");
    wait_for(Duration::from_secs(30), "bounce at alice", || {
        a.count_in_maildir("Status: 5.1.1") == 1
    });
}

#[test]
fn a_full_mailbox_defers_mail_and_loses_none() {
    let mut a = Node::new("alice");
    let mut b = Node::new("bob");
    a.route_to(&b);
    // Each message is stored as ~2.7 KB (1.2 KB body, the sender's Autocrypt key, the
    // node's Authentication-Results): two fit, three do not.
    b.extra = "[limits]\nmailbox_quota_bytes = 6000\n".into();
    b.start();
    a.start();
    let body = "x".repeat(1200);
    for i in 0..3 {
        submit(&a, &b.address, &format!("Quota-{i}"), &body);
    }
    wait_for(Duration::from_secs(30), "a 452 at A", || {
        a.log().contains("452 4.2.2")
    });
    assert!(b.count_in_maildir("Subject: Quota-") < 3);
    assert!(a.status().contains("queue: "), "queued at A");
    // bob empties his mailbox over IMAP; the deferred mail then arrives, each once.
    let emptied = python(
        r#"
import imaplib, sys
M = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))
M.login(sys.argv[2], sys.argv[3])
M.select('INBOX')
M.store('1:*', '+FLAGS', '\\Deleted')
M.expunge()
print('emptied')
"#,
        &[&b.imap.to_string(), &b.address, &b.password],
    );
    assert!(emptied.contains("emptied"));
    let drained = support::wait_until(Duration::from_secs(60), || {
        a.status().contains("queue: 0 message(s)")
    });
    let files = |n: &Node| -> Vec<String> {
        let cur = n.home.join("identities/bob/Maildir/cur");
        fs::read_dir(cur)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        drained,
        "A's queue did not drain:\n{}\nB's INBOX: {:?}\nB:\n{}",
        a.status(),
        files(&b),
        b.log()
    );
    let read = imap_read(&b);
    let got: usize = (0..3)
        .map(|i| read.matches(&format!("SUBJECT=Quota-{i}")).count())
        .sum();
    // Those expunged before the last arrivals are gone by the user's choice; what is in
    // the mailbox now arrived after the expunge, and nothing came twice.
    assert!(got >= 1, "{read}");
    for i in 0..3 {
        assert!(
            read.matches(&format!("SUBJECT=Quota-{i}")).count() <= 1,
            "{read}"
        );
    }
}

#[test]
fn connections_over_the_cap_are_told_to_come_back_later() {
    let mut a = Node::new("alice");
    a.extra = "[limits]\nmax_connections = 2\n".into();
    a.start();
    // The start-up probe's connection is gone from the count first.
    wait_for(
        Duration::from_secs(10),
        "no connection on submission",
        || {
            a.status()
                .lines()
                .any(|l| l.contains("submission: 127.0.0.1") && l.contains("(0 of 2 connections)"))
        },
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", a.submission)).unwrap());
        let l = read_line(&mut c);
        assert!(l.starts_with("220 "), "{l:?}");
        held.push(c);
    }
    let mut third = BufReader::new(TcpStream::connect(("127.0.0.1", a.submission)).unwrap());
    assert_eq!(
        read_line(&mut third),
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    let status = a.status();
    assert!(status.contains("(2 of 2 connections)"), "{status}");
    held[0].get_mut().write_all(b"QUIT\r\n").unwrap();
    assert!(read_line(&mut held[0]).starts_with("221"));
    wait_for(Duration::from_secs(10), "a slot freed", || {
        a.status().contains("submission: 127.0.0.1") && a.status().contains("(1 of 2 connections)")
    });
}

#[test]
fn imap_ends_the_connection_after_three_failed_logins() {
    let mut a = Node::new("alice");
    a.start();
    let out = python(
        r#"
import imaplib, sys
M = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))
for i in range(3):
    try:
        M.login(sys.argv[2], 'wrong-%d' % i)
        print('LOGGED IN')
    except imaplib.IMAP4.error as e:
        print('NO')
try:
    M.login(sys.argv[2], sys.argv[3])
    print('LOGGED IN')
except Exception as e:
    print('CLOSED')
"#,
        &[&a.imap.to_string(), &a.address, &a.password],
    );
    assert!(!out.contains("LOGGED IN"), "{out}");
    assert_eq!(out.lines().last(), Some("CLOSED"), "{out}");
}

/// SMTP smuggling against a running node: for each known shape of a fake end of data, a
/// client sends one message that hides a second, forged transaction behind it. The node must
/// store exactly one message per connection (with the forgery inside it as text, or refuse
/// it), never a second one.
#[test]
fn smuggled_second_messages_are_never_delivered() {
    let mut b = Node::new("bob");
    b.start();
    let shapes: [&[u8]; 6] = [
        b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n",
    ];
    for (i, shape) in shapes.iter().enumerate() {
        let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", b.smtp)).unwrap());
        let l = read_line(&mut c);
        assert!(l.starts_with("220 "), "{l:?}");
        let mut msg = format!(
            "EHLO x\r\nMAIL FROM:<a@a.onion>\r\nRCPT TO:<{to}>\r\nDATA\r\n\
             Message-ID: <real-{i}@a.onion>\r\nSubject: real-{i}\r\n\r\nhello",
            to = b.address
        )
        .into_bytes();
        msg.extend_from_slice(shape);
        msg.extend_from_slice(
            format!(
                "MAIL FROM:<ceo@bank.onion>\r\nRCPT TO:<{to}>\r\nDATA\r\n\
                 Message-ID: <forged-{i}@bank.onion>\r\nSubject: forged-{i}\r\n\r\npay now\r\n.\r\nQUIT\r\n",
                to = b.address
            )
            .as_bytes(),
        );
        c.get_mut().write_all(&msg).unwrap();
        let mut replies = Vec::new();
        loop {
            let l = read_line(&mut c);
            if l.is_empty() {
                break;
            }
            replies.push(l);
        }
        let finals: Vec<&str> = replies
            .iter()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        // EHLO, MAIL, RCPT, 354, then one verdict for the one message, then QUIT's 221.
        assert_eq!(finals.len(), 6, "shape {shape:?}: {replies:?}");
        assert!(
            finals[4] == "250" || finals[4] == "554",
            "shape {shape:?}: {replies:?}"
        );
        assert_eq!(finals[5], "221", "shape {shape:?}: {replies:?}");
    }
    let subjects = imap_read(&b);
    assert_eq!(subjects.matches("SUBJECT=forged-").count(), 0, "{subjects}");
    for i in 0..shapes.len() {
        assert!(b.count_in_maildir(&format!("Subject: real-{i}")) <= 1);
    }
}
