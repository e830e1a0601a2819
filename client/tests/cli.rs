//! The `onionpost` command line against a real `onionpost-ledger solo` process: keys,
//! transactions that commit, and queries whose proofs are verified (and rejected when the
//! trusted root disagrees).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A binary of this workspace, next to this test's own directory (cargo builds every
/// workspace binary before running workspace tests).
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests for the whole workspace (cargo nextest run --workspace)",
        path.display()
    );
    path
}

struct Solo(Child);

impl Drop for Solo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn onionpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onionpost"))
        .args(args)
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

fn address_of(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = ok(onionpost(&["key", "new", file.to_str().unwrap()]));
    let addr = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert!(addr.ends_with(".onion") && addr.len() == 62, "{addr}");
    (file, addr)
}

#[test]
fn cli_registers_lists_and_verifies_membership() {
    let dir = tempfile::tempdir().unwrap();
    let (admin_key, _admin) = address_of(dir.path(), "admin.key");
    let (alice_key, alice) = address_of(dir.path(), "alice.key");
    let (_bob_key, bob) = address_of(dir.path(), "bob.key");
    let admin_pk = ok(onionpost(&["key", "show", admin_key.to_str().unwrap()]))
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    let genesis = dir.path().join("genesis.json");
    std::fs::write(
        &genesis,
        format!(r#"{{"governing_list":"govern","admins":[{{"public_key":"{admin_pk}","display_name":"admin"}}]}}"#),
    )
    .unwrap();

    let mut child = Command::new(workspace_bin("onionpost-ledger"))
        .args([
            "solo",
            "--grpc",
            "127.0.0.1:0",
            "--block-ms",
            "50",
            "--home",
        ])
        .arg(dir.path().join("ledger"))
        .arg("--genesis")
        .arg(&genesis)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _solo = Solo(child);
    let grpc = line
        .trim()
        .strip_prefix("listening grpc=")
        .unwrap_or_else(|| panic!("{line:?}"));
    let ledger = format!("http://{grpc}");
    let tx = |key: &Path, args: &[&str]| {
        let mut all = vec!["tx", "--ledger", &ledger, "--key", key.to_str().unwrap()];
        all.extend_from_slice(args);
        onionpost(&all)
    };

    let out = ok(tx(&alice_key, &["register", "--name", "alice"]));
    assert!(out.contains("committed at height"), "{out}");
    assert!(out.contains("applied"), "{out}");
    ok(tx(&admin_key, &["create-list", "friends"]));
    ok(tx(
        &admin_key,
        &["add-member", "friends", &format!("alice@{alice}")],
    ));

    let q = |args: &[&str]| {
        let mut all = vec!["query", "--ledger", &ledger];
        all.extend_from_slice(args);
        onionpost(&all)
    };
    let out = ok(q(&["member", "friends", &alice]));
    assert!(out.contains("is a member of friends"), "{out}");
    assert!(out.contains("verified: proofs check"), "{out}");
    let out = q(&["member", "friends", &bob]);
    assert_eq!(out.status.code(), Some(1), "a non-member exits 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is NOT a member"));
    let out = ok(q(&["members", "friends"]));
    assert!(out.contains("2 members, 1 admins"), "{out}");

    // Admin changes: one admin alone only where one approval is enough.
    ok(tx(&admin_key, &["add-admin", "friends", &alice]));
    let out = tx(&admin_key, &["remove-admin", "friends", &alice]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("code 16") && err.contains("2 of the 2 admins"),
        "{err}"
    );
    let out = ok(tx(
        &admin_key,
        &["propose", "remove-admin", "friends", &alice],
    ));
    assert!(out.contains("proposal 1"), "{out}");
    let out = ok(q(&["members", "friends"]));
    assert!(out.contains("2 members, 2 admins"), "still pending: {out}");
    let out = ok(tx(&alice_key, &["approve", "1"]));
    assert!(out.contains("applied"), "{out}");
    let out = ok(q(&["members", "friends"]));
    assert!(out.contains("2 members, 1 admins"), "{out}");

    // Rejections are explained, and nothing is committed.
    let out = tx(&alice_key, &["add-member", "friends", &bob]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("code 11") || err.contains("code 9"), "{err}");

    // A solo ledger runs no consensus: no commit certificates, and it says so.
    let out = q(&["commit"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not run consensus"));

    // A trusted root that disagrees with the server makes every query fail.
    let out = q(&[
        "--trusted-root",
        &format!("0:{}", "00".repeat(32)),
        "status",
    ]);
    assert!(!out.status.success());
}
