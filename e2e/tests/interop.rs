//! Interoperability with the real OpenPGP tools of Debian: GnuPG (`gpg`), RNP (`rnp`) and
//! Sequoia (`sq`), each in a temporary home of its own.
//!
//! - What the crate signs and encrypts verifies and decrypts with each tool, given the keys
//!   the crate exports.
//! - What gpg, sq and rnp sign and encrypt to a crate key, wrapped in PGP/MIME as a mail
//!   client does, the crate verifies and decrypts.
//! - The crate's Autocrypt header is decoded by `sq autocrypt decode` (Sequoia's
//!   Autocrypt parser).
//!
//! The tools are installed by `scripts/test.sh` (`apt-get install gnupg rnp sq`); a missing
//! tool fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use onionpost_e2e::{
    Protect, PublicCert, SecretCert, SignatureError, decrypt, sign, sign_and_encrypt, verify,
};

const ALICE: &str = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion";
const BOB: &str = "bob@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.onion";
const BODY: &str = "Meet me at the old mill at noon.\r\nBring the map.\r\n";

fn key(address: &str) -> SecretCert {
    SecretCert::generate(rand::thread_rng(), address).unwrap()
}

fn mail(from: &str, to: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nSubject: interop\r\nMessage-ID: <i@x.onion>\r\n\r\n{BODY}")
        .into_bytes()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a tool, failing the test with its output if it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/test.sh installs gnupg rnp sq)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Runs a tool that must fail.
fn run_fails(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but must fail: {}",
        text(&out.stderr)
    );
    out
}

/// The boundary of a PGP/MIME message, and its two parts' exact bytes (test-side splitter,
/// independent of the crate's).
fn parts(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let s = text(message);
    let b = s
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let delim = format!("\r\n--{b}\r\n");
    let first = s.find(&format!("--{b}\r\n")).unwrap() + b.len() + 4;
    let second = s[first..].find(&delim).unwrap() + first;
    let close = s.find(&format!("\r\n--{b}--")).unwrap();
    let part1 = s.as_bytes()[first..second].to_vec();
    let part2 = &s[second + delim.len()..close];
    let body = part2.split_once("\r\n\r\n").unwrap().1;
    (part1, body.as_bytes().to_vec())
}

/// A `multipart/signed` message around `part` and a detached signature, as mutt builds it.
fn wrap_signed(from: &str, part: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {BOB}\r\nSubject: interop\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"sig\"\r\n\r\n--sig\r\n"
    )
    .into_bytes();
    m.extend_from_slice(part);
    m.extend_from_slice(b"\r\n--sig\r\nContent-Type: application/pgp-signature\r\n\r\n");
    m.extend_from_slice(signature);
    m.extend_from_slice(b"\r\n--sig--\r\n");
    m
}

/// A `multipart/encrypted` message around an armored OpenPGP message.
fn wrap_encrypted(from: &str, armored: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {BOB}\r\nSubject: interop\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"enc\"\r\n\r\n\
         --enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
         --enc\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(armored);
    m.extend_from_slice(b"\r\n--enc--\r\n");
    m
}

/// The MIME entity a client signs or encrypts.
const ENTITY: &str = "Content-Type: text/plain; charset=us-ascii\r\n\r\nMeet me at the old mill at noon.\r\nBring the map.\r\n";

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// GnuPG in a temporary GNUPGHOME; its agent is stopped when the test ends.
struct Gpg {
    home: Dir,
}

impl Gpg {
    fn new() -> Self {
        let home = Dir::new();
        let mut perms = std::fs::metadata(home.0.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(home.0.path(), perms).unwrap();
        Gpg { home }
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.0.path()).args([
            "--batch",
            "--yes",
            "--no-tty",
            "--trust-model",
            "always",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--status-fd",
            "2",
        ]);
        c
    }
    fn import(&self, armored: &str) {
        let p = self.home.write("import.asc", armored.as_bytes());
        run(self.cmd().arg("--import").arg(p));
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.0.path())
            .args(["--kill", "all"])
            .output();
    }
}

fn rnp(home: &Dir, keyfile: &Path) -> Command {
    let mut c = Command::new("rnp");
    c.arg("--homedir")
        .arg(home.0.path())
        .arg("--keyfile")
        .arg(keyfile)
        .args(["--notty", "--overwrite", "--password", ""]);
    c
}

#[test]
fn gpg_verifies_and_decrypts_what_the_crate_sends() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let gpg = Gpg::new();
    gpg.import(&alice.public().to_armored().unwrap());
    gpg.import(&bob.to_armored().unwrap());
    let dir = Dir::new();

    let signed = sign(
        rand::thread_rng(),
        &mail(ALICE, BOB),
        &alice,
        Protect::default(),
    )
    .unwrap();
    let (part, sig) = parts(&signed);
    let part_path = dir.write("part", &part);
    let sig_path = dir.write("part.asc", &sig);
    let out = run(gpg.cmd().arg("--verify").arg(&sig_path).arg(&part_path));
    let status = text(&out.stderr);
    assert!(
        status.contains(&format!("[GNUPG:] VALIDSIG {}", alice.fingerprint())),
        "{status}"
    );
    assert!(
        status.contains(&format!("GOODSIG {}", &alice.fingerprint().to_hex()[24..])),
        "{status}"
    );

    // gpg agrees that a changed part no longer verifies.
    let changed = text(&part).replace("noon", "dusk");
    let changed_path = dir.write("changed", changed.as_bytes());
    let out = run_fails(gpg.cmd().arg("--verify").arg(&sig_path).arg(&changed_path));
    assert!(
        text(&out.stderr).contains("BADSIG"),
        "{}",
        text(&out.stderr)
    );

    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        &mail(ALICE, BOB),
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    let (_, armored) = parts(&sealed);
    let msg = dir.write("msg.asc", &armored);
    let out = run(gpg.cmd().arg("--decrypt").arg(&msg));
    let status = text(&out.stderr);
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
    assert!(
        status.contains(&format!("[GNUPG:] VALIDSIG {}", alice.fingerprint())),
        "{status}"
    );
    let plain = text(&out.stdout);
    assert!(plain.ends_with(&format!("\r\n\r\n{BODY}")), "{plain}");
    assert!(
        plain.contains("Subject: interop\r\n"),
        "protected Subject: {plain}"
    );
}

#[test]
fn crate_verifies_and_decrypts_what_gpg_sends() {
    let bob = key(BOB);
    let gpg = Gpg::new();
    run(gpg.cmd().args([
        "--quick-gen-key",
        ALICE,
        "future-default",
        "default",
        "never",
    ]));
    let exported = run(gpg.cmd().args(["--armor", "--export", ALICE])).stdout;
    let gpg_alice = PublicCert::from_bytes(&exported).expect("crate reads gpg's certificate");
    assert!(gpg_alice.holds(ALICE));
    gpg.import(&bob.public().to_armored().unwrap());
    let dir = Dir::new();
    let entity = dir.write("entity", ENTITY.as_bytes());

    // Detached signature of the MIME entity, as mutt makes it for multipart/signed.
    let sig = run(gpg
        .cmd()
        .args([
            "--armor",
            "--detach-sign",
            "--digest-algo",
            "SHA256",
            "-u",
            ALICE,
            "-o",
            "-",
        ])
        .arg(&entity))
    .stdout;
    let message = wrap_signed(ALICE, ENTITY.as_bytes(), &sig);
    let opened = verify(&message, std::slice::from_ref(&gpg_alice)).unwrap();
    let signer = opened.signature.expect("gpg's signature verifies");
    assert_eq!(signer.cert, gpg_alice.fingerprint());
    assert!(text(&opened.message).ends_with(&format!("\r\n\r\n{BODY}")));

    // Sign and encrypt to the crate's key (gpg's default compresses the signed data).
    let armored = run(gpg
        .cmd()
        .args([
            "--armor",
            "--sign",
            "--encrypt",
            "-u",
            ALICE,
            "-r",
            BOB,
            "-o",
            "-",
        ])
        .arg(&entity))
    .stdout;
    let opened = decrypt(
        &wrap_encrypted(ALICE, &armored),
        &bob,
        std::slice::from_ref(&gpg_alice),
    )
    .unwrap();
    assert!(opened.encrypted);
    assert_eq!(
        opened.signature.expect("signed by gpg").cert,
        gpg_alice.fingerprint()
    );
    assert!(
        text(&opened.message).ends_with(&format!("\r\n\r\n{BODY}")),
        "{}",
        text(&opened.message)
    );

    // Encrypted only: readable, and unsigned.
    let armored = run(gpg
        .cmd()
        .args(["--armor", "--encrypt", "-r", BOB, "-o", "-"])
        .arg(&entity))
    .stdout;
    let opened = decrypt(
        &wrap_encrypted(ALICE, &armored),
        &bob,
        std::slice::from_ref(&gpg_alice),
    )
    .unwrap();
    assert!(matches!(
        opened.signature,
        Err(SignatureError::Unsigned { .. })
    ));
    assert!(text(&opened.message).ends_with(&format!("\r\n\r\n{BODY}")));
}

#[test]
fn sq_verifies_and_decrypts_what_the_crate_sends() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let dir = Dir::new();
    let alice_cert = dir.write("alice.pub", alice.public().to_armored().unwrap().as_bytes());
    let bob_key = dir.write("bob.key", bob.to_armored().unwrap().as_bytes());

    let signed = sign(
        rand::thread_rng(),
        &mail(ALICE, BOB),
        &alice,
        Protect::default(),
    )
    .unwrap();
    let (part, sig) = parts(&signed);
    let part_path = dir.write("part", &part);
    let sig_path = dir.write("part.asc", &sig);
    let out = run(Command::new("sq")
        .arg("verify")
        .arg("--detached")
        .arg(&sig_path)
        .arg("--signer-cert")
        .arg(&alice_cert)
        .arg(&part_path));
    assert!(
        text(&out.stderr).contains("Good signature"),
        "{}",
        text(&out.stderr)
    );

    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        &mail(ALICE, BOB),
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    let (_, armored) = parts(&sealed);
    let msg = dir.write("msg.asc", &armored);
    let out = run(Command::new("sq")
        .arg("decrypt")
        .arg("--recipient-key")
        .arg(&bob_key)
        .arg("--signer-cert")
        .arg(&alice_cert)
        .arg(&msg));
    assert!(
        text(&out.stderr).contains("Good signature"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).ends_with(&format!("\r\n\r\n{BODY}")),
        "{}",
        text(&out.stdout)
    );

    // Sequoia's Autocrypt parser reads the crate's header and gets the same certificate.
    let header_mail = dir.write("mail.eml", &signed);
    let decoded = run(Command::new("sq")
        .args(["autocrypt", "decode"])
        .arg(&header_mail))
    .stdout;
    let cert = PublicCert::from_bytes(&decoded).expect("sq's decoded Autocrypt key");
    assert_eq!(cert.fingerprint(), alice.fingerprint());
}

#[test]
fn crate_verifies_and_decrypts_what_sq_sends() {
    let bob = key(BOB);
    let dir = Dir::new();
    let sq_key = dir.path("alice.key");
    run(Command::new("sq")
        .args([
            "key",
            "generate",
            "--userid",
            &format!("<{ALICE}>"),
            "--export",
        ])
        .arg(&sq_key));
    let sq_cert = run(Command::new("sq")
        .args(["key", "extract-cert"])
        .arg(&sq_key))
    .stdout;
    let sq_alice = PublicCert::from_bytes(&sq_cert).expect("crate reads sq's certificate");
    let bob_cert = dir.write("bob.pub", bob.public().to_armored().unwrap().as_bytes());
    let entity = dir.write("entity", ENTITY.as_bytes());

    // sq signs with a signing subkey, not the primary key.
    let sig = run(Command::new("sq")
        .args(["sign", "--detached", "--signer-key"])
        .arg(&sq_key)
        .arg(&entity))
    .stdout;
    let opened = verify(
        &wrap_signed(ALICE, ENTITY.as_bytes(), &sig),
        std::slice::from_ref(&sq_alice),
    )
    .unwrap();
    let signer = opened.signature.expect("sq's signature verifies");
    assert_eq!(signer.cert, sq_alice.fingerprint());
    assert_ne!(signer.key, signer.cert, "made by the signing subkey");

    let armored = run(Command::new("sq")
        .arg("encrypt")
        .arg("--recipient-cert")
        .arg(&bob_cert)
        .arg("--signer-key")
        .arg(&sq_key)
        .arg(&entity))
    .stdout;
    let opened = decrypt(
        &wrap_encrypted(ALICE, &armored),
        &bob,
        std::slice::from_ref(&sq_alice),
    )
    .unwrap();
    assert_eq!(
        opened.signature.expect("signed by sq").cert,
        sq_alice.fingerprint()
    );
    assert!(
        text(&opened.message).ends_with(&format!("\r\n\r\n{BODY}")),
        "{}",
        text(&opened.message)
    );
}

#[test]
fn rnp_verifies_and_decrypts_what_the_crate_sends() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let dir = Dir::new();
    let home = Dir::new();
    let alice_cert = dir.write("alice.pub", alice.public().to_armored().unwrap().as_bytes());
    // rnp's --keyfile takes one file: Bob's secret key and Alice's certificate together.
    let mut ring = bob.to_armored().unwrap().into_bytes();
    ring.extend_from_slice(alice.public().to_armored().unwrap().as_bytes());
    let bob_ring = dir.write("bob-ring.asc", &ring);

    let signed = sign(
        rand::thread_rng(),
        &mail(ALICE, BOB),
        &alice,
        Protect::default(),
    )
    .unwrap();
    let (part, sig) = parts(&signed);
    let part_path = dir.write("part", &part);
    let sig_path = dir.write("part.asc", &sig);
    let out = run(rnp(&home, &alice_cert)
        .arg("--verify")
        .arg(&sig_path)
        .arg("--source")
        .arg(&part_path));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(report.contains("Good signature"), "{report}");
    let changed = dir.write("changed", text(&part).replace("noon", "dusk").as_bytes());
    run_fails(
        rnp(&home, &alice_cert)
            .arg("--verify")
            .arg(&sig_path)
            .arg("--source")
            .arg(&changed),
    );

    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        &mail(ALICE, BOB),
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    let (_, armored) = parts(&sealed);
    let msg = dir.write("msg.asc", &armored);
    let plain_path = dir.path("plain");
    let out = run(rnp(&home, &bob_ring)
        .arg("--decrypt")
        .arg(&msg)
        .arg("--output")
        .arg(&plain_path));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(report.contains("Good signature"), "{report}");
    let plain = std::fs::read(&plain_path).unwrap();
    assert!(
        text(&plain).ends_with(&format!("\r\n\r\n{BODY}")),
        "{}",
        text(&plain)
    );
}

#[test]
fn crate_decrypts_what_rnp_sends() {
    let bob = key(BOB);
    let gpg = Gpg::new();
    // An rnp-usable signing key for Alice, made by gpg, exported with its secret.
    run(gpg.cmd().args([
        "--quick-gen-key",
        ALICE,
        "future-default",
        "default",
        "never",
    ]));
    let alice_cert =
        PublicCert::from_bytes(&run(gpg.cmd().args(["--armor", "--export", ALICE])).stdout)
            .unwrap();
    let mut ring = run(gpg.cmd().args(["--armor", "--export-secret-keys", ALICE])).stdout;
    ring.extend_from_slice(bob.public().to_armored().unwrap().as_bytes());
    let dir = Dir::new();
    let home = Dir::new();
    let ring = dir.write("ring.asc", &ring);
    let entity = dir.write("entity", ENTITY.as_bytes());
    let out_path = dir.path("out.asc");
    run(rnp(&home, &ring)
        .args(["--sign", "--encrypt", "--armor", "-u", ALICE, "-r", BOB])
        .arg(&entity)
        .arg("--output")
        .arg(&out_path));
    let armored = std::fs::read(&out_path).unwrap();
    let opened = decrypt(
        &wrap_encrypted(ALICE, &armored),
        &bob,
        std::slice::from_ref(&alice_cert),
    )
    .unwrap();
    assert_eq!(
        opened.signature.expect("signed by rnp").cert,
        alice_cert.fingerprint()
    );
    assert!(
        text(&opened.message).ends_with(&format!("\r\n\r\n{BODY}")),
        "{}",
        text(&opened.message)
    );
}

#[test]
fn signed_from_differing_from_outer_from_is_a_mismatch() {
    // A gpg key with two addresses signs a part whose protected From is one of them; the
    // outer From is changed to the other. The signature is good and the key holds the outer
    // From, but the signed From says otherwise.
    const ALICE2: &str = "alice2@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion";
    let gpg = Gpg::new();
    run(gpg.cmd().args([
        "--quick-gen-key",
        ALICE,
        "future-default",
        "default",
        "never",
    ]));
    let fpr = run(gpg.cmd().args(["--with-colons", "--list-keys", ALICE])).stdout;
    let fpr = text(&fpr)
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9).map(str::to_string))
        .unwrap();
    run(gpg.cmd().args(["--quick-add-uid", &fpr, ALICE2]));
    let cert = PublicCert::from_bytes(&run(gpg.cmd().args(["--armor", "--export", ALICE])).stdout)
        .unwrap();
    assert!(cert.holds(ALICE) && cert.holds(ALICE2));
    let dir = Dir::new();
    let part = format!(
        "Content-Type: text/plain; protected-headers=\"v1\"\r\nFrom: {ALICE}\r\n\r\n{BODY}"
    );
    let part_path = dir.write("part", part.as_bytes());
    let sig = run(gpg
        .cmd()
        .args(["--armor", "--detach-sign", "-u", ALICE, "-o", "-"])
        .arg(&part_path))
    .stdout;

    let honest = verify(
        &wrap_signed(ALICE, part.as_bytes(), &sig),
        std::slice::from_ref(&cert),
    )
    .unwrap();
    assert_eq!(honest.signature.unwrap().address, ALICE);
    let rewrapped = verify(
        &wrap_signed(ALICE2, part.as_bytes(), &sig),
        std::slice::from_ref(&cert),
    )
    .unwrap();
    assert_eq!(
        rewrapped.signature,
        Err(SignatureError::FromMismatch {
            signed: ALICE.to_string(),
            outer: Some(ALICE2.to_string()),
        })
    );
}
