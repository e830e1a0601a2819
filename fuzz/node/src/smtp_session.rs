//! The SMTP server session ([`onionpost_node::smtp::session`]).
//!
//! Input: one byte of flags (bit 0: submission instead of inbound; bit 1: the store refuses
//! every message with 452), then chunks as [`crate::chunks`] cuts them. Properties checked:
//! no panic; every reply has a valid code and encodes as CRLF-terminated lines with no other
//! CR or LF; a message handed to the store is within the size limit, has CRLF line ends
//! only (no bare CR or LF survives the DATA reader), and has between 1 and the maximum number
//! of recipients, all of them accepted by the policy; submission hands over only
//! authenticated mail; nothing comes out after Close.

use onionpost_node::smtp::reply::{Reply, ReplyExt, reply};
use onionpost_node::smtp::session::{Mode, Output, Policy, Session, SessionConfig};

const MAX_SIZE: usize = 4096;
const MAX_RCPTS: usize = 4;

struct TestPolicy;

impl Policy for TestPolicy {
    fn accepts(&self, address: &str) -> bool {
        address.eq_ignore_ascii_case("bob@here.onion")
    }
    fn authenticate(&self, user: &str, password: &str) -> Option<String> {
        (user == "u" && password == "p").then(|| "u@here.onion".to_string())
    }
}

fn check_reply(r: &Reply) {
    assert!((200..600).contains(&r.code), "reply code {}", r.code);
    let mut wire = Vec::new();
    r.encode(&mut wire);
    assert!(wire.ends_with(b"\r\n"));
    for line in wire[..wire.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r') && !line.contains(&b'\n'), "{line:?}");
        assert!(line.len() < 4096);
    }
}

fn check_message(data: &[u8]) {
    assert!(data.len() <= MAX_SIZE, "message of {} bytes", data.len());
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mode = if flags & 1 == 0 {
        Mode::Inbound
    } else {
        Mode::Submission
    };
    let refuse = flags & 2 != 0;
    let cfg = SessionConfig {
        mode,
        hostname: "me.onion".into(),
        max_message_size: MAX_SIZE,
        max_recipients: MAX_RCPTS,
        max_line_length: 512,
    };
    let mut s = Session::new(cfg, TestPolicy);
    let mut closed = false;
    for chunk in crate::chunks(data) {
        let mut outs = s.receive(chunk);
        while !outs.is_empty() {
            let mut next = Vec::new();
            for o in outs {
                assert!(!closed, "output after Close: {o:?}");
                match o {
                    Output::Reply(r) => check_reply(&r),
                    Output::Close => closed = true,
                    Output::Deliver(env) => {
                        check_message(&env.data);
                        assert!((1..=MAX_RCPTS).contains(&env.recipients.len()));
                        match mode {
                            Mode::Inbound => {
                                assert!(env.recipients.iter().all(|r| TestPolicy.accepts(r)))
                            }
                            Mode::Submission => {
                                assert_eq!(env.authenticated.as_deref(), Some("u@here.onion"))
                            }
                        }
                        let result = if refuse {
                            Err(reply(452, [4, 2, 2], "Mailbox full"))
                        } else {
                            Ok(())
                        };
                        next.extend(s.delivered(result));
                    }
                }
            }
            outs = next;
        }
        if closed {
            assert!(s.is_closed());
            assert!(s.receive(b"NOOP\r\n").is_empty());
            return;
        }
    }
}
