//! The crate against itself: what it signs and encrypts, it verifies and decrypts, with the
//! content, the signer and the headers it should have.

use onionpost_e2e::{
    Autocrypt, PreferEncrypt, Protect, PublicCert, SecretCert, SignatureError, decrypt, open, sign,
    sign_and_encrypt, verify,
};

const ALICE: &str = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion";
const BOB: &str = "bob@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.onion";
const CAROL: &str = "carol@cccccccccccccccccccccccccccccccccccccccccccccccccccccc.onion";

fn key(address: &str) -> SecretCert {
    SecretCert::generate(rand::thread_rng(), address).unwrap()
}

fn mail(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\nTo: {to}\nSubject: the plan\nDate: Tue, 1 Dec 2026 12:00:00 +0000\n\
         Message-ID: <1@example.onion>\n\n{body}"
    )
    .into_bytes()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn generated_key_has_the_address_and_survives_export() {
    let alice = key(ALICE);
    assert_eq!(alice.address(), ALICE);
    let armored = alice.public().to_armored().unwrap();
    assert!(armored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    let back = PublicCert::from_bytes(armored.as_bytes()).unwrap();
    assert_eq!(back.fingerprint(), alice.fingerprint());
    assert!(back.holds(&ALICE.to_uppercase()));
    let secret = SecretCert::from_bytes(alice.to_armored().unwrap().as_bytes()).unwrap();
    assert_eq!(secret.fingerprint(), alice.fingerprint());
    let binary = PublicCert::from_bytes(&alice.public().to_bytes().unwrap()).unwrap();
    assert_eq!(binary.fingerprint(), alice.fingerprint());
}

#[test]
fn bad_addresses_are_refused() {
    for bad in [
        "",
        "alice",
        "a b@c.onion",
        "<a@b.onion>",
        "a@b",
        "a@@b.onion",
    ] {
        assert!(
            matches!(
                SecretCert::generate(rand::thread_rng(), bad),
                Err(onionpost_e2e::Error::BadAddress(_))
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn signed_message_verifies_with_signer_and_content() {
    let alice = key(ALICE);
    let signed = sign(
        rand::thread_rng(),
        &mail(ALICE, BOB, "Meet at noon.\n"),
        &alice,
        Protect::default(),
    )
    .unwrap();
    let s = text(&signed);
    assert!(s.contains("Content-Type: multipart/signed; micalg=pgp-sha256;"));
    assert!(s.contains("protocol=\"application/pgp-signature\""));
    assert!(s.contains("-----BEGIN PGP SIGNATURE-----"));
    assert!(s.contains("Autocrypt: addr="));
    // A signed message is not hidden: the outer Subject stays.
    assert!(s.contains("\r\nSubject: the plan\r\n"));

    let opened = verify(&signed, &[alice.public().clone()]).unwrap();
    let signer = opened.signature.expect("valid signature");
    assert_eq!(signer.cert, alice.fingerprint());
    assert_eq!(signer.key, alice.fingerprint());
    assert_eq!(signer.address, ALICE);
    assert!(signer.created.is_some());
    assert!(!opened.encrypted);
    let readable = text(&opened.message);
    assert!(
        readable.ends_with("\r\n\r\nMeet at noon.\r\n"),
        "{readable}"
    );
    assert_eq!(readable.matches("Subject:").count(), 1, "{readable}");
    assert_eq!(readable.matches("From:").count(), 1, "{readable}");
}

#[test]
fn encrypted_message_decrypts_for_recipient_and_sender_only() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let carol = key(CAROL);
    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        &mail(ALICE, BOB, "The key is under the mat.\n"),
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    let s = text(&sealed);
    assert!(!s.contains("under the mat"), "plaintext leaked");
    assert!(!s.contains("the plan"), "subject leaked");
    assert!(s.contains("\r\nSubject: ...\r\n"));
    assert!(s.contains("multipart/encrypted"));

    for reader in [&bob, &alice] {
        let opened = decrypt(&sealed, reader, &[alice.public().clone()]).unwrap();
        assert!(opened.encrypted);
        assert_eq!(opened.signature.unwrap().cert, alice.fingerprint());
        let readable = text(&opened.message);
        assert!(readable.contains("\r\nSubject: the plan\r\n"), "{readable}");
        assert!(!readable.contains("Subject: ..."), "{readable}");
        assert!(
            readable.ends_with("\r\n\r\nThe key is under the mat.\r\n"),
            "{readable}"
        );
    }
    assert!(matches!(
        decrypt(&sealed, &carol, &[alice.public().clone()]),
        Err(onionpost_e2e::Error::NotForUs { .. })
    ));
}

#[test]
fn open_dispatches_on_content_type() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let certs = [alice.public().clone()];
    let plain = mail(ALICE, BOB, "hello\n");
    let opened = open(&plain, Some(&bob), &certs).unwrap();
    assert_eq!(
        opened.signature,
        Err(SignatureError::Unsigned {
            from: Some(ALICE.to_string())
        })
    );
    let signed = sign(rand::thread_rng(), &plain, &alice, Protect::default()).unwrap();
    assert!(open(&signed, Some(&bob), &certs).unwrap().signature.is_ok());
    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        &plain,
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    let opened = open(&sealed, Some(&bob), &certs).unwrap();
    assert!(opened.encrypted && opened.signature.is_ok());
}

#[test]
fn mime_body_with_attachment_keeps_its_structure() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let msg = format!(
        "From: {ALICE}\r\nTo: {BOB}\r\nSubject: pic\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n--xx\r\nContent-Type: text/plain\r\n\r\n\
         see attached\r\n--xx\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--xx--\r\n"
    );
    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        msg.as_bytes(),
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    let opened = decrypt(&sealed, &bob, &[alice.public().clone()]).unwrap();
    assert!(opened.signature.is_ok());
    let readable = text(&opened.message);
    assert!(readable.contains("Content-Type: multipart/mixed; boundary=\"xx\""));
    assert!(readable.contains("\r\n--xx\r\nContent-Type: application/octet-stream\r\n"));
    assert!(readable.ends_with("AAECAwQ=\r\n--xx--\r\n"));
    assert_eq!(readable.matches("MIME-Version").count(), 1, "{readable}");
}

#[test]
fn list_post_carries_gossip_for_every_recipient() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let carol = key(CAROL);
    let msg = format!("From: {ALICE}\r\nTo: {BOB}, {CAROL}\r\nSubject: list\r\n\r\nhi all\r\n");
    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        msg.as_bytes(),
        &alice,
        &[bob.public(), carol.public()],
        Protect::default(),
    )
    .unwrap();
    assert!(
        !text(&sealed).contains("Autocrypt-Gossip"),
        "gossip outside the encryption"
    );
    let opened = decrypt(&sealed, &carol, &[alice.public().clone()]).unwrap();
    let mut gossip: Vec<_> = opened
        .gossip
        .iter()
        .map(|g| (g.addr.clone(), g.cert.fingerprint()))
        .collect();
    gossip.sort();
    let mut expected = vec![
        (BOB.to_string(), bob.fingerprint()),
        (CAROL.to_string(), carol.fingerprint()),
    ];
    expected.sort();
    assert_eq!(gossip, expected);
    assert!(
        opened
            .gossip
            .iter()
            .all(|g| g.prefer_encrypt == PreferEncrypt::NoPreference)
    );
    assert!(!text(&opened.message).contains("Autocrypt-Gossip"));
}

#[test]
fn autocrypt_header_round_trips_and_follows_the_rules() {
    let alice = key(ALICE);
    let header = Autocrypt::new(alice.public(), PreferEncrypt::Mutual);
    let value = header.value().unwrap();
    let full = header.header().unwrap();
    for line in full.lines() {
        let limit = if line.contains("addr=") { 998 } else { 78 };
        assert!(line.len() <= limit, "{full}");
    }
    let parsed = Autocrypt::parse(&value).unwrap();
    assert_eq!(parsed.addr, ALICE);
    assert_eq!(parsed.prefer_encrypt, PreferEncrypt::Mutual);
    assert_eq!(parsed.cert.fingerprint(), alice.fingerprint());

    // Non-critical attributes are ignored, unknown critical ones void the header.
    let keydata = value.split("keydata=").nth(1).unwrap();
    let ok = format!("addr={ALICE}; _extra=1; prefer-encrypt=other; keydata={keydata}");
    assert_eq!(
        Autocrypt::parse(&ok).unwrap().prefer_encrypt,
        PreferEncrypt::NoPreference
    );
    let critical = format!("addr={ALICE}; color=blue; keydata={keydata}");
    assert!(matches!(
        Autocrypt::parse(&critical),
        Err(onionpost_e2e::AutocryptError::UnknownCritical(_))
    ));
    assert!(matches!(
        Autocrypt::parse(&format!("keydata={keydata}")),
        Err(onionpost_e2e::AutocryptError::Missing("addr"))
    ));
    assert!(matches!(
        Autocrypt::parse(&format!("addr={ALICE}; keydata=AAAA")),
        Err(onionpost_e2e::AutocryptError::BadKeydata(_))
    ));

    // In a message, the header counts only for the From address.
    let signed = sign(
        rand::thread_rng(),
        &mail(ALICE, BOB, "x\n"),
        &alice,
        Protect::default(),
    )
    .unwrap();
    let found = Autocrypt::from_message(&signed).unwrap().unwrap();
    assert_eq!(found.cert.fingerprint(), alice.fingerprint());
    let forged = text(&signed).replacen(&format!("<{ALICE}>"), &format!("<{BOB}>"), 1);
    assert!(Autocrypt::from_message(forged.as_bytes()).is_err());
}

#[test]
fn signing_for_someone_else_is_refused() {
    let alice = key(ALICE);
    let err = sign(
        rand::thread_rng(),
        &mail(BOB, ALICE, "x\n"),
        &alice,
        Protect::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, onionpost_e2e::Error::NotOurFrom { .. }),
        "{err}"
    );
}
