//! Hostile and broken input: each case ends in a typed error or a typed "not valid" verdict,
//! never a panic, and never in a message shown as verified.

use onionpost_e2e::{
    Error, Protect, PublicCert, SecretCert, SignatureError, decrypt, open, sign, sign_and_encrypt,
    verify,
};

const ALICE: &str = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion";
const BOB: &str = "bob@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.onion";
const MALLORY: &str = "mallory@mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm.onion";

fn key(address: &str) -> SecretCert {
    SecretCert::generate(rand::thread_rng(), address).unwrap()
}

fn mail(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nSubject: pay\r\n\r\n{body}").into_bytes()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn signed_by(signer: &SecretCert, from: &str) -> String {
    text(
        &sign(
            rand::thread_rng(),
            &mail(from, BOB, "Pay 10 to Bob.\r\n"),
            signer,
            Protect::default(),
        )
        .unwrap(),
    )
}

#[test]
fn tampered_signed_body_is_a_bad_signature() {
    let alice = key(ALICE);
    let tampered = signed_by(&alice, ALICE).replace("Pay 10 to Bob.", "Pay 99 to Eve.");
    let opened = verify(tampered.as_bytes(), &[alice.public().clone()]).unwrap();
    match opened.signature {
        Err(SignatureError::BadSignature { cert, key, .. }) => {
            assert_eq!(cert, alice.fingerprint());
            assert_eq!(key, alice.fingerprint());
        }
        other => panic!("tampered body gave {other:?}"),
    }
    // The (tampered) content is still readable, just not verified.
    assert!(text(&opened.message).contains("Pay 99 to Eve."));
}

#[test]
fn tampered_protected_subject_is_a_bad_signature() {
    let alice = key(ALICE);
    let signed = signed_by(&alice, ALICE);
    // Only the copy inside the signed part is covered; change it.
    let at = signed.find("protected-headers").unwrap();
    let (head, tail) = signed.split_at(at);
    let tampered = format!("{head}{}", tail.replacen("Subject: pay", "Subject: PAY", 1));
    let opened = verify(tampered.as_bytes(), &[alice.public().clone()]).unwrap();
    assert!(matches!(
        opened.signature,
        Err(SignatureError::BadSignature { .. })
    ));
}

#[test]
fn tampered_ciphertext_fails_to_decrypt() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let sealed = text(
        &sign_and_encrypt(
            rand::thread_rng(),
            &mail(ALICE, BOB, &"secret line\r\n".repeat(200)),
            &alice,
            &[bob.public()],
            Protect::default(),
        )
        .unwrap(),
    );
    // Flip one base64 character in the middle of the armored ciphertext (and drop the
    // checksum line, if any, so the change reaches the integrity check).
    let begin = sealed.find("-----BEGIN PGP MESSAGE-----").unwrap();
    let end = sealed.find("-----END PGP MESSAGE-----").unwrap();
    let mut lines: Vec<String> = sealed[begin..end].lines().map(str::to_string).collect();
    lines.retain(|l| !l.starts_with('='));
    let mid = lines.len() / 2;
    let line = &mut lines[mid];
    let c = line.remove(10);
    line.insert(10, if c == 'A' { 'B' } else { 'A' });
    let tampered = format!(
        "{}{}\r\n{}",
        &sealed[..begin],
        lines.join("\r\n"),
        &sealed[end..]
    );
    let err = decrypt(tampered.as_bytes(), &bob, &[alice.public().clone()]).unwrap_err();
    // The integrity check (MDC) catches it.
    assert!(
        matches!(err, Error::Decrypt(_)),
        "tampered ciphertext gave {err:?}"
    );
    assert!(format!("{err:?}").contains("Mdc"), "{err:?}");
}

#[test]
fn wrong_key_gives_not_for_us_with_the_recipients() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let mallory = key(MALLORY);
    let sealed = sign_and_encrypt(
        rand::thread_rng(),
        &mail(ALICE, BOB, "for bob\r\n"),
        &alice,
        &[bob.public()],
        Protect::default(),
    )
    .unwrap();
    match decrypt(&sealed, &mallory, &[]) {
        Err(Error::NotForUs { ours, recipients }) => {
            assert_eq!(ours, Some(mallory.fingerprint()));
            assert_eq!(recipients.len(), 2, "bob and alice herself: {recipients:?}");
        }
        other => panic!("wrong key gave {other:?}"),
    }
    assert!(matches!(
        open(&sealed, None, &[]),
        Err(Error::NotForUs { ours: None, .. })
    ));
}

#[test]
fn signature_verified_with_the_wrong_certificate_is_unknown_key() {
    let alice = key(ALICE);
    let mallory = key(MALLORY);
    let signed = signed_by(&alice, ALICE);
    let opened = verify(signed.as_bytes(), &[mallory.public().clone()]).unwrap();
    match opened.signature {
        Err(SignatureError::UnknownKey { issuer }) => {
            assert_eq!(issuer, alice.fingerprint().to_hex())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsigned_message_claiming_a_signer_is_unsigned() {
    let alice = key(ALICE);
    let forged = mail(ALICE, BOB, "I, Alice, owe Mallory 100.\r\n");
    let opened = open(&forged, None, &[alice.public().clone()]).unwrap();
    assert_eq!(
        opened.signature,
        Err(SignatureError::Unsigned {
            from: Some(ALICE.to_string())
        })
    );
    // verify() insists on a signed message.
    assert!(matches!(
        verify(&forged, &[alice.public().clone()]),
        Err(Error::NotPgpMime {
            expected: "multipart/signed",
            ..
        })
    ));
}

#[test]
fn forged_from_signed_by_another_key_is_signer_not_from() {
    let alice = key(ALICE);
    let mallory = key(MALLORY);
    // Mallory signs honestly as herself, then rewrites the outer From to Alice.
    let signed = signed_by(&mallory, MALLORY);
    let forged = signed.replacen(&format!("From: {MALLORY}"), &format!("From: {ALICE}"), 1);
    let certs = [alice.public().clone(), mallory.public().clone()];
    let opened = verify(forged.as_bytes(), &certs).unwrap();
    match opened.signature {
        Err(SignatureError::SignerNotFrom { cert, from, .. }) => {
            assert_eq!(cert, mallory.fingerprint());
            assert_eq!(from.as_deref(), Some(ALICE));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn signed_message_rewrapped_as_someone_else_is_signer_not_from() {
    let alice = key(ALICE);
    let mallory = key(MALLORY);
    // Alice's genuine signed message, with the outer From changed to Mallory: the signature
    // is good, but Alice's key does not hold Mallory's address.
    let signed = signed_by(&alice, ALICE);
    let rewrapped = signed.replacen(&format!("From: {ALICE}"), &format!("From: {MALLORY}"), 1);
    let certs = [alice.public().clone(), mallory.public().clone()];
    let opened = verify(rewrapped.as_bytes(), &certs).unwrap();
    match opened.signature {
        Err(SignatureError::SignerNotFrom { cert, from, .. }) => {
            assert_eq!(cert, alice.fingerprint());
            assert_eq!(from.as_deref(), Some(MALLORY));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_armor_is_a_typed_error() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let sealed = text(
        &sign_and_encrypt(
            rand::thread_rng(),
            &mail(ALICE, BOB, "x\r\n"),
            &alice,
            &[bob.public()],
            Protect::default(),
        )
        .unwrap(),
    );
    let end = sealed.find("-----END PGP MESSAGE-----").unwrap();
    // Cut the armor short but keep the MIME structure whole.
    let cut = format!(
        "{}\r\n{}",
        &sealed[..end - 40],
        &sealed[sealed.rfind("--op=").unwrap()..]
    );
    let err = decrypt(cut.as_bytes(), &bob, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Armor {
                what: "encrypted message",
                ..
            }
        ),
        "{err:?}"
    );

    // Cut the whole message short: the multipart has no close delimiter.
    let err = decrypt(&sealed.as_bytes()[..end], &bob, &[]).unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");

    // A truncated detached signature: the message stays readable, the verdict says why.
    let signed = signed_by(&alice, ALICE);
    let sig_end = signed.find("-----END PGP SIGNATURE-----").unwrap();
    let close = signed.rfind("\r\n--op=").unwrap();
    let cut = format!("{}{}", &signed[..sig_end - 30], &signed[close..]);
    let opened = verify(cut.as_bytes(), &[alice.public().clone()]).unwrap();
    assert!(
        matches!(opened.signature, Err(SignatureError::Unparsable(_))),
        "{:?}",
        opened.signature
    );
}

#[test]
fn garbage_never_panics() {
    let alice = key(ALICE);
    let bob = key(BOB);
    let certs = [alice.public().clone()];
    let sealed = text(
        &sign_and_encrypt(
            rand::thread_rng(),
            &mail(ALICE, BOB, "x\r\n"),
            &alice,
            &[bob.public()],
            Protect::default(),
        )
        .unwrap(),
    );
    let signed = signed_by(&alice, ALICE);
    let inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\r\n\r\n".to_vec(),
        b"no colon here\r\n\r\nbody".to_vec(),
        b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"\r\n\r\nno boundary".to_vec(),
        b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n--b\r\nVersion: 1\r\n--b\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n!!!!\r\n-----END PGP MESSAGE-----\r\n--b--\r\n".to_vec(),
        sealed.replace("multipart/encrypted", "multipart/signed").into_bytes(),
        signed.replace("application/pgp-signature\";", "application/pgp-encrypted\";").into_bytes(),
        sealed.as_bytes()[..sealed.len() / 2].to_vec(),
        signed.as_bytes()[..signed.len() / 2].to_vec(),
    ];
    for input in &inputs {
        // Any outcome but a panic, and never a valid signature.
        if let Ok(opened) = open(input, Some(&bob), &certs) {
            assert!(opened.signature.is_err(), "{}", text(input));
        }
        let _ = PublicCert::from_bytes(input);
        let _ = SecretCert::from_bytes(input);
        let _ = onionpost_e2e::Autocrypt::from_message(input);
    }
}

#[test]
fn smime_signed_mail_is_unsigned_for_openpgp_not_an_error() {
    let alice = key(ALICE);
    let smime = format!(
        "From: {ALICE}\r\nTo: {BOB}\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"s\"\r\n\r\n\
         --s\r\nContent-Type: text/plain\r\n\r\nhello\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nMIIB\r\n--s--\r\n"
    );
    let opened = open(smime.as_bytes(), None, &[alice.public().clone()]).unwrap();
    assert!(matches!(
        opened.signature,
        Err(SignatureError::Unsigned { .. })
    ));
    assert_eq!(opened.message, smime.as_bytes());
}
