//! Two identities hosted on one node must not be linkable by anything the node sends.
//!
//! alice and carol live on the same `onionpost-node` process (direct transport). Both submit
//! the same message through the same client (Python's smtplib, which adds a leaky User-Agent,
//! an X-Originating-IP and a Message-ID naming the laptop). Their mail goes to a capture
//! server written here, standing in for the receiving node: it records every SMTP
//! transcript, refuses the first attempts with 451 so that retries happen, and keeps the
//! final messages. The test then compares what each identity sent: commands, capabilities
//! used, header names and order, every value, and the retry timing.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{free_port, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_onionpost-node");

/// Refusals (451) before a sender's message is taken.
const REFUSALS: usize = 5;

/// One SMTP conversation as the receiver saw it.
#[derive(Debug, Clone)]
struct Transcript {
    at: Instant,
    commands: Vec<String>,
    data: Option<Vec<u8>>,
    sender: String,
}

#[derive(Default)]
struct Capture {
    sessions: Vec<Transcript>,
    refused: HashMap<String, usize>,
}

fn serve_capture(listener: TcpListener, state: Arc<Mutex<Capture>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = session(stream, &state);
        });
    }
}

fn session(stream: TcpStream, state: &Mutex<Capture>) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut t = Transcript {
        at: Instant::now(),
        commands: vec![],
        data: None,
        sender: String::new(),
    };
    w.write_all(b"220 capture ESMTP\r\n")?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let cmd = line.trim_end().to_string();
        t.commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            w.write_all(b"250-capture\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            t.sender = cmd[10..].trim_matches(['<', '>']).to_string();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                r.read_until(b'\n', &mut l)?;
                if l == b".\r\n" || l.is_empty() {
                    break;
                }
                data.extend_from_slice(&l);
            }
            let mut st = state.lock().unwrap();
            let n = st.refused.entry(t.sender.clone()).or_default();
            if *n < REFUSALS {
                *n += 1;
                w.write_all(b"451 4.3.0 try again later\r\n")?;
            } else {
                t.data = Some(data);
                w.write_all(b"250 2.0.0 taken\r\n")?;
            }
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n")?;
            break;
        } else {
            w.write_all(b"250 ok\r\n")?;
        }
    }
    state.lock().unwrap().sessions.push(t);
    Ok(())
}

fn new_identity(home: &std::path::Path, name: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["--home", home.to_str().unwrap(), "identity", "new", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap()
    };
    (field("address:"), field("password:"))
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `text` with `addr` (and its onion, and its name) replaced by placeholders.
fn anonymise(text: &str, addr: &str) -> String {
    let (name, onion) = addr.split_once('@').unwrap();
    text.replace(addr, "SELF@SELF.onion")
        .replace(onion, "SELF.onion")
        .replace(name, "SELF")
}

/// Whether `word` occurs in `text` as a whole token (not inside a longer run of letters and
/// digits: the host may be called `vm`, which base32 onion names contain by chance).
fn contains_word(text: &str, word: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    text.match_indices(word).any(|(i, _)| {
        !alnum(text[..i].chars().next_back()) && !alnum(text[i + word.len()..].chars().next())
    })
}

#[test]
fn two_identities_of_one_node_cannot_be_linked_by_what_they_send() {
    let dir = tempfile::tempdir().unwrap();
    let home: PathBuf = dir.path().join("home");
    let (alice, alice_pw) = new_identity(&home, "alice");
    let (carol, carol_pw) = new_identity(&home, "carol");
    // A recipient onion that routes to the capture server.
    let (rcpt, _) = new_identity(&dir.path().join("elsewhere"), "dana");
    let capture = TcpListener::bind("127.0.0.1:0").unwrap();
    let capture_port = capture.local_addr().unwrap().port();
    let state = Arc::new(Mutex::new(Capture::default()));
    {
        let s = state.clone();
        std::thread::spawn(move || serve_capture(capture, s));
    }
    let submission = free_port();
    let cfg = home.join("node.toml");
    fs::write(
        &cfg,
        format!(
            "[submission]\nlisten = \"127.0.0.1:{submission}\"\n\
             [queue]\nretry_base_secs = 0.3\nretry_max_secs = 1.0\nretry_jitter = 0.5\n\
             [transport]\nkind = \"direct\"\n[transport.direct]\n\"{}\" = \"127.0.0.1:{capture_port}\"\n",
            rcpt.split_once('@').unwrap().1
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.path().join("node.log")).unwrap();
    let _node = Running(
        Command::new(BIN)
            .args(["--home", home.to_str().unwrap(), "run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(20), "submission listening", || {
        TcpStream::connect(("127.0.0.1", submission)).is_ok()
    });
    for (addr, pw) in [(&alice, &alice_pw), (&carol, &carol_pw)] {
        support::submit(submission, addr, pw, &rcpt, "Same subject", "Same body.");
    }
    wait_for(Duration::from_secs(60), "both messages taken", || {
        state
            .lock()
            .unwrap()
            .sessions
            .iter()
            .filter(|t| t.data.is_some())
            .count()
            == 2
    });
    let st = state.lock().unwrap();
    let of = |addr: &str| -> Vec<Transcript> {
        let mut v: Vec<Transcript> = st
            .sessions
            .iter()
            .filter(|t| t.sender.eq_ignore_ascii_case(addr))
            .cloned()
            .collect();
        v.sort_by_key(|t| t.at);
        v
    };
    let (ta, tc) = (of(&alice), of(&carol));
    assert_eq!(ta.len(), REFUSALS + 1, "{ta:#?}");
    assert_eq!(tc.len(), REFUSALS + 1, "{tc:#?}");

    // 1. The conversations are the same once each identity's own address is blanked.
    let conv = |ts: &[Transcript], addr: &str| -> Vec<Vec<String>> {
        ts.iter()
            .map(|t| t.commands.iter().map(|c| anonymise(c, addr)).collect())
            .collect()
    };
    assert_eq!(conv(&ta, &alice), conv(&tc, &carol));
    assert_eq!(ta[0].commands[0], "EHLO localhost", "{:?}", ta[0].commands);

    // 2. The messages: same header names in the same order, same values once blanked,
    //    except the fresh Message-IDs, which share nothing.
    let msg =
        |ts: &[Transcript]| String::from_utf8(ts.last().unwrap().data.clone().unwrap()).unwrap();
    let (ma, mc) = (msg(&ta), msg(&tc));
    let fields = |m: &str| -> Vec<(String, String)> {
        m.split("\r\n\r\n")
            .next()
            .unwrap()
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ")
            .split("\r\n")
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_string(), v.trim().to_string())
            })
            .collect()
    };
    let (fa, fc) = (fields(&ma), fields(&mc));
    let names = |f: &[(String, String)]| f.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fc));
    assert_eq!(
        names(&fa),
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Autocrypt",
            "MIME-Version",
            "Content-Type"
        ]
    );
    let value = |f: &[(String, String)], k: &str| f.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let mid_a = value(&fa, "Message-ID");
    let mid_c = value(&fc, "Message-ID");
    let local = |m: &str| {
        m.trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(local(&mid_a).len(), 32, "{mid_a}");
    assert_ne!(local(&mid_a), local(&mid_c));
    // Signed (PGP/MIME): each carries its own key (Autocrypt) and a random MIME boundary.
    for (k, va) in &fa {
        if k == "Message-ID" || k == "Date" || k == "Autocrypt" || k == "Content-Type" {
            continue;
        }
        assert_eq!(
            anonymise(va, &alice),
            anonymise(&value(&fc, k), &carol),
            "{k}"
        );
    }
    assert!(value(&fa, "Date").ends_with("+0000"));
    assert!(value(&fa, "Content-Type").starts_with("multipart/signed;"));
    assert!(value(&fa, "Autocrypt").starts_with(&format!("addr={alice};")));
    assert!(value(&fc, "Autocrypt").starts_with(&format!("addr={carol};")));
    // Nothing in one names the other, the host, or the client.
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    for (m, other) in [(&ma, &carol), (&mc, &alice)] {
        let (oname, oonion) = other.split_once('@').unwrap();
        for bad in [
            oname,
            oonion,
            host.trim(),
            "127.0.0.1",
            "LeakyClient",
            "my-laptop",
            "192.0.2.7",
        ] {
            assert!(!contains_word(m, bad), "{bad:?} in {m}");
        }
    }
    assert!(!mid_a.contains(&local(&mid_c)[..8]));

    // 3. Timing: the two identities' retries do not move in lock-step.
    let offsets: Vec<f64> = ta
        .iter()
        .zip(&tc)
        .map(|(a, c)| {
            a.at.duration_since(ta[0].at).as_secs_f64()
                - c.at.duration_since(tc[0].at).as_secs_f64()
        })
        .collect();
    let spread = offsets.iter().cloned().fold(f64::MIN, f64::max)
        - offsets.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.05, "retry offsets {offsets:?}");
}
