//! Random damage to real messages: whatever bytes arrive, opening them returns a result or a
//! typed error and never panics; a change inside the signed or encrypted content is never
//! reported as a valid signature.

use std::sync::OnceLock;

use onionpost_e2e::{Protect, SecretCert, open, sign, sign_and_encrypt};
use proptest::prelude::*;

const ALICE: &str = "alice@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.onion";
const BOB: &str = "bob@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.onion";

struct Fixture {
    alice: SecretCert,
    bob: SecretCert,
    signed: Vec<u8>,
    sealed: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let alice = SecretCert::generate(rand::thread_rng(), ALICE).unwrap();
        let bob = SecretCert::generate(rand::thread_rng(), BOB).unwrap();
        let msg = format!("From: {ALICE}\r\nTo: {BOB}\r\nSubject: s\r\n\r\nPay 10 to Bob.\r\n");
        let options = Protect {
            autocrypt: false,
            ..Protect::default()
        };
        let signed = sign(rand::thread_rng(), msg.as_bytes(), &alice, options).unwrap();
        let sealed = sign_and_encrypt(
            rand::thread_rng(),
            msg.as_bytes(),
            &alice,
            &[bob.public()],
            options,
        )
        .unwrap();
        Fixture {
            alice,
            bob,
            signed,
            sealed,
        }
    })
}

/// Where the protected content starts: after the first boundary line of the body.
fn content_start(m: &[u8]) -> usize {
    let s = String::from_utf8_lossy(m);
    let b = s
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    s.find(&format!("\r\n--{b}\r\n")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let f = fixture();
        if let Ok(opened) = open(&bytes, Some(&f.bob), &[f.alice.public().clone()]) {
            prop_assert!(opened.signature.is_err());
        }
    }

    #[test]
    fn damaged_content_is_never_valid(which in 0..2usize, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let f = fixture();
        let original = if which == 0 { &f.signed } else { &f.sealed };
        let start = content_start(original);
        let pos = start + at.index(original.len() - start);
        prop_assume!(original[pos] != byte);
        let mut damaged = original.clone();
        damaged[pos] = byte;
        if let Ok(opened) = open(&damaged, Some(&f.bob), &[f.alice.public().clone()])
            && opened.signature.is_ok()
        {
            // A valid verdict is only possible if the change did not alter the content that
            // was signed: then the readable message must be the original one.
            let clean = open(original, Some(&f.bob), &[f.alice.public().clone()]).unwrap();
            prop_assert_eq!(opened.message, clean.message);
        }
    }
}
