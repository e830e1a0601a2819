//! `onionpost audit` and certified queries against a real validator network: the audit
//! resumes from its checkpoint, `query commit` says "certified" only with a validator set
//! derived from genesis, and a key history that differs from what the checkpoint proved
//! earlier is reported as a rewrite.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use onionpost_devnet::{InitOptions, init, start_validator, validator_ip, wait_ready};

struct Validators(Vec<Child>);

impl Drop for Validators {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn onionpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onionpost"))
        .args(args)
        .env_remove("ONIONPOST_LEDGER")
        .env_remove("ONIONPOST_GENESIS")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn free_base_port() -> u16 {
    let start = 30_000 + (std::process::id() % 10_000) as u16 * 2;
    (0..500)
        .map(|i| start.wrapping_add(i * 2) % 20_000 + 30_000)
        .find(|p| {
            [*p, p + 1]
                .iter()
                .all(|port| TcpListener::bind(SocketAddr::new(validator_ip(0), *port)).is_ok())
        })
        .expect("a free port pair")
}

fn ledger_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("onionpost-ledger");
    assert!(
        bin.exists(),
        "{} is missing: run the tests for the whole workspace (cargo nextest run --workspace)",
        bin.display()
    );
    bin
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_resumes_certifies_and_reports_rewritten_key_histories() {
    ledger_bin();
    let dir = tempfile::tempdir().unwrap();
    let m = init(
        &dir.path().join("net"),
        &InitOptions {
            validators: 1,
            admins: 1,
            chain_id: "audit-chain".into(),
            base_port: free_base_port(),
            block_ms: 50,
        },
    )
    .unwrap();
    let _validators = Validators(vec![start_validator(&m.validators[0]).unwrap()]);
    wait_ready(&m, Duration::from_secs(60)).await.unwrap();
    let ledger = format!("http://{}", m.validators[0].grpc);
    let genesis = m.validators[0].home.join("genesis.json");
    let checkpoint = dir.path().join("state/audit.json");

    // alice registers and binds a key.
    let alice_key = dir.path().join("alice.key");
    let out = ok(onionpost(&["key", "new", s(&alice_key)]));
    let alice = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    let pgp = dir.path().join("k.pgp");
    std::fs::write(&pgp, b"alice's openpgp key").unwrap();
    for args in [
        vec!["register", "--name", "alice"],
        vec!["bind-key", s(&pgp)],
    ] {
        let mut all = vec!["tx", "--ledger", &ledger, "--key", s(&alice_key)];
        all.extend(args);
        ok(onionpost(&all));
    }

    let audit = |extra: &[&str]| {
        let mut all = vec![
            "audit",
            "--ledger",
            &ledger,
            "--genesis",
            s(&genesis),
            "--checkpoint",
            s(&checkpoint),
        ];
        all.extend_from_slice(extra);
        onionpost(&all)
    };
    let first = ok(audit(&["--all-keys"]));
    assert!(first.contains("audited blocks 1..="), "{first}");
    assert!(!first.contains("resumed"), "{first}");
    assert!(
        first.contains("key directory: 2 identities checked"),
        "the admin and alice: {first}"
    );
    assert!(first.contains("no entry rewritten"), "{first}");
    let height = |out: &str| -> u64 {
        let l = out
            .lines()
            .find(|l| l.starts_with("audited blocks 1..="))
            .unwrap();
        l["audited blocks 1..=".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let h1 = height(&first);

    // The second run starts where the first stopped.
    std::thread::sleep(Duration::from_millis(300));
    let second = ok(audit(&["--all-keys"]));
    assert!(
        second.contains(&format!("resumed from the checkpoint at block {h1}")),
        "{second}"
    );
    let h2 = height(&second);
    assert!(second.contains(&format!("({} new in", h2 - h1)), "{second}");

    // `query commit` certifies only through the derived set.
    let claimed = ok(onionpost(&["query", "--ledger", &ledger, "commit"]));
    assert!(claimed.contains("as the server claims it"), "{claimed}");
    assert!(!claimed.contains("certified:"), "{claimed}");
    let certified = |args: &[&str]| {
        let mut all = vec![
            "query",
            "--ledger",
            &ledger,
            "--genesis",
            s(&genesis),
            "--checkpoint",
            s(&checkpoint),
        ];
        all.extend_from_slice(args);
        ok(onionpost(&all))
    };
    let derived = certified(&["commit", &h2.to_string()]);
    assert!(
        derived.contains(&format!("certified: app hash of height {}", h2 - 1)),
        "{derived}"
    );
    assert!(derived.contains("derived from genesis"), "{derived}");
    let keys = certified(&["keys", &alice]);
    assert!(keys.contains("1 key history entries"), "{keys}");
    assert!(
        keys.contains("against the validator set derived from genesis"),
        "{keys}"
    );

    // The checkpoint remembers alice's entry #0; if the chain now proves another one, the
    // audit says so and exits 2.
    let text = std::fs::read_to_string(&checkpoint).unwrap();
    let mut cp: serde_json::Value = serde_json::from_str(&text).unwrap();
    let alice_pk = {
        let out = ok(onionpost(&["key", "show", s(&alice_key)]));
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned()
    };
    cp["keys"][&alice_pk]["entries"][0][0] = serde_json::Value::String("00".repeat(32));
    std::fs::write(&checkpoint, serde_json::to_vec(&cp).unwrap()).unwrap();
    let out = audit(&["--identity", &alice]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 REWRITTEN"), "{stdout}");
    assert!(
        stdout.contains(&format!("key history rewritten: entry #0 of {alice}")),
        "{stdout}"
    );

    // A checkpoint is never used for another genesis.
    let mut other: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&genesis).unwrap()).unwrap();
    other["genesis_time"] = serde_json::json!(1);
    let other_genesis = dir.path().join("other-genesis.json");
    std::fs::write(&other_genesis, serde_json::to_vec(&other).unwrap()).unwrap();
    let out = onionpost(&[
        "audit",
        "--ledger",
        &ledger,
        "--genesis",
        s(&other_genesis),
        "--checkpoint",
        s(&checkpoint),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another genesis"), "{err}");
}
