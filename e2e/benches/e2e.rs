//! Sign+encrypt and verify+decrypt of a 10 KB message per second: the crate (rPGP, in
//! process) and GnuPG (`gpg`, one process per message, as a mail client runs it), side by
//! side in one run, with the same keys (the crate's Ed25519/Curve25519 keys imported into a
//! temporary GNUPGHOME).
//!
//! `cargo bench -p onionpost-e2e --bench e2e [-- --iterations N]` (release build). Method
//! and figures: BENCHMARKS.md.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use onionpost_e2e::{Protect, SecretCert, decrypt, sign_and_encrypt};

const ALICE: &str = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion";
const BOB: &str = "bob@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.onion";
const SIZE: usize = 10 * 1024;

fn main() -> Result<()> {
    let mut iterations = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iterations" {
            iterations = args.next().context("--iterations N")?.parse()?;
        }
    }
    let alice = SecretCert::generate(rand::thread_rng(), ALICE)?;
    let bob = SecretCert::generate(rand::thread_rng(), BOB)?;

    let mut body = String::new();
    let mut i = 0;
    while body.len() < SIZE {
        body.push_str(&format!(
            "line {i:05}: the quick brown fox jumps over the lazy dog\r\n"
        ));
        i += 1;
    }
    body.truncate(SIZE);
    let message = format!("From: {ALICE}\r\nTo: {BOB}\r\nSubject: bench\r\n\r\n{body}");
    let entity = format!("Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}");

    println!(
        "message body {} bytes, {iterations} iterations each",
        body.len()
    );
    println!("{:<44} {:>10} {:>12}", "operation", "msg/s", "ms/msg");

    // The crate.
    let start = Instant::now();
    let mut sealed = Vec::new();
    for _ in 0..iterations {
        sealed = sign_and_encrypt(
            rand::thread_rng(),
            message.as_bytes(),
            &alice,
            &[bob.public()],
            Protect::default(),
        )?;
    }
    let crate_seal = start.elapsed();
    report("onionpost-e2e sign+encrypt", crate_seal, iterations);
    let certs = [alice.public().clone()];
    let start = Instant::now();
    for _ in 0..iterations {
        let opened = decrypt(&sealed, &bob, &certs)?;
        if opened.signature.is_err() || !opened.message.ends_with(body.as_bytes()) {
            bail!(
                "the crate's own message did not verify: {:?}",
                opened.signature
            );
        }
    }
    let crate_open = start.elapsed();
    report("onionpost-e2e verify+decrypt", crate_open, iterations);

    // GnuPG, same keys, one process per message.
    let home = tempfile::tempdir()?;
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let gpg = |args: &[&str], input: &[u8]| -> Result<Vec<u8>> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args([
                "--batch",
                "--yes",
                "--no-tty",
                "--quiet",
                "--trust-model",
                "always",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running gpg (apt-get install gnupg)")?;
        child.stdin.take().expect("piped").write_all(input)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "gpg {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    };
    gpg(&["--import"], alice.to_armored()?.as_bytes())?;
    gpg(&["--import"], bob.to_armored()?.as_bytes())?;
    let start = Instant::now();
    let mut armored = Vec::new();
    for _ in 0..iterations {
        armored = gpg(
            &[
                "--armor",
                "--sign",
                "--encrypt",
                "-u",
                ALICE,
                "-r",
                BOB,
                "--compress-algo",
                "none",
            ],
            entity.as_bytes(),
        )?;
    }
    let gpg_seal = start.elapsed();
    report(
        "gpg sign+encrypt (process per message)",
        gpg_seal,
        iterations,
    );
    let start = Instant::now();
    for _ in 0..iterations {
        let plain = gpg(&["--decrypt"], &armored)?;
        if !plain.ends_with(body.as_bytes()) {
            bail!("gpg's own message did not decrypt");
        }
    }
    let gpg_open = start.elapsed();
    report(
        "gpg verify+decrypt (process per message)",
        gpg_open,
        iterations,
    );
    // What a gpg process costs before any OpenPGP work: the floor under the two figures above.
    let start = Instant::now();
    for _ in 0..iterations {
        gpg(&["--version"], b"")?;
    }
    report(
        "gpg --version (process start only)",
        start.elapsed(),
        iterations,
    );
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home.path())
        .args(["--kill", "all"])
        .output();

    println!(
        "ratio crate/gpg (throughput): sign+encrypt {:.1}x, verify+decrypt {:.1}x",
        gpg_seal.as_secs_f64() / crate_seal.as_secs_f64(),
        gpg_open.as_secs_f64() / crate_open.as_secs_f64()
    );
    Ok(())
}

fn report(what: &str, elapsed: Duration, n: usize) {
    let per = elapsed.as_secs_f64() / n as f64;
    println!("{what:<44} {:>10.1} {:>12.3}", 1.0 / per, per * 1000.0);
}
