//! Outgoing: PGP/MIME signing (RFC 3156 §5, `multipart/signed`) and signing-then-encrypting
//! (RFC 3156 §6.2, `multipart/encrypted` whose OpenPGP message is signed and encrypted in
//! one), with an Autocrypt header and, for several recipients, Autocrypt-Gossip.
//!
//! The message given is a whole RFC 5322 message as the node's submission stage has it.
//! Its `Content-*` fields and body become the protected part; the other fields stay outside.
//! Copies of From, To, Cc, Reply-To, Subject, Date and Message-ID go into the protected part
//! too ("protected headers", marked `protected-headers="v1"` on its Content-Type), so the
//! signature covers who the message claims to be from, and an encrypted message can hide
//! its Subject outside (`...`) and have it restored when it is opened.

use pgp::composed::{ArmorOptions, DetachedSignature, MessageBuilder};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::Password;
use rand::{CryptoRng, Rng};

use crate::autocrypt::{Autocrypt, PreferEncrypt};
use crate::error::Error;
use crate::key::{PublicCert, SecretCert};
use crate::mime;

/// Header fields copied into the protected part.
pub(crate) const PROTECTED: [&str; 7] = [
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
];

/// What the outer Subject of an encrypted message is replaced with.
pub(crate) const HIDDEN_SUBJECT: &str = "...";

/// Options for [`sign`] and [`sign_and_encrypt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protect {
    /// Add an `Autocrypt` header (prefer-encrypt=mutual) with the signer's certificate.
    pub autocrypt: bool,
    /// When encrypting, replace the outer Subject with `...` (the real one is inside).
    pub hide_subject: bool,
    /// When encrypting to more than one recipient, put an `Autocrypt-Gossip` header for each
    /// recipient inside the encrypted part.
    pub gossip: bool,
}

impl Default for Protect {
    fn default() -> Self {
        Protect {
            autocrypt: true,
            hide_subject: true,
            gossip: true,
        }
    }
}

/// A message split for protection.
struct Prepared {
    /// Outer header fields (not Content-*, not MIME-Version), raw.
    outer: Vec<u8>,
    /// The part to protect: Content-* fields, protected copies, extra fields, empty line,
    /// body.
    inner: Vec<u8>,
}

fn prepare(
    message: &[u8],
    signer: &SecretCert,
    extra_inner: &[String],
    hide_subject: bool,
) -> Result<Prepared, Error> {
    let entity = mime::split_entity(message)?;
    let from = mime::addresses(entity.header, "from");
    match from.as_slice() {
        [one] if signer.public().holds(one) => {}
        _ => {
            return Err(Error::NotOurFrom {
                from,
                key: signer.fingerprint(),
            });
        }
    }
    let mut outer = Vec::new();
    let mut inner = Vec::new();
    let mut has_content_type = false;
    for field in &entity.fields {
        if field.is_content() {
            if field.is("content-type") {
                has_content_type = true;
                let raw = field.raw.strip_suffix(b"\r\n").unwrap_or(field.raw);
                inner.extend_from_slice(raw);
                inner.extend_from_slice(b";\r\n protected-headers=\"v1\"\r\n");
            } else {
                inner.extend_from_slice(field.raw);
            }
        } else if field.is("mime-version") {
            // Written once, below.
        } else {
            if hide_subject && field.is("subject") {
                outer.extend_from_slice(format!("Subject: {HIDDEN_SUBJECT}\r\n").as_bytes());
            } else {
                outer.extend_from_slice(field.raw);
            }
        }
    }
    if !has_content_type {
        let charset = if entity.body.is_ascii() {
            "us-ascii"
        } else {
            "utf-8"
        };
        inner.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset=\"{charset}\";\r\n protected-headers=\"v1\"\r\n"
            )
            .as_bytes(),
        );
    }
    for field in &entity.fields {
        if PROTECTED.iter().any(|p| field.is(p)) {
            inner.extend_from_slice(field.raw);
        }
    }
    for extra in extra_inner {
        inner.extend_from_slice(extra.as_bytes());
    }
    inner.extend_from_slice(b"\r\n");
    inner.extend_from_slice(entity.body);
    Ok(Prepared { outer, inner })
}

/// Signs `message` as RFC 3156 `multipart/signed` (detached text-mode signature, SHA-256,
/// by the signer's primary key). The From address must be one of the signer's.
pub fn sign<R: Rng + CryptoRng>(
    mut rng: R,
    message: &[u8],
    signer: &SecretCert,
    options: Protect,
) -> Result<Vec<u8>, Error> {
    let message = mime::to_crlf(message);
    let prepared = prepare(&message, signer, &[], false)?;
    let key = &signer.inner().primary_key;
    let signature = DetachedSignature::sign_text_data(
        &mut rng,
        key,
        &Password::empty(),
        HashAlgorithm::Sha256,
        &prepared.inner[..],
    )
    .map_err(|source| Error::Sign {
        key: signer.fingerprint(),
        source,
    })?;
    let armored = signature
        .to_armored_string(ArmorOptions::default())
        .map_err(|source| Error::Serialize {
            what: "signature",
            source,
        })?;
    let boundary = mime::boundary(&mut rng, &prepared.inner);
    let mut out = prepared.outer;
    if options.autocrypt {
        out.extend_from_slice(
            Autocrypt::new(signer.public(), PreferEncrypt::Mutual)
                .header()?
                .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n \
             protocol=\"application/pgp-signature\";\r\n boundary=\"{boundary}\"\r\n\r\n\
             This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n--{boundary}\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&prepared.inner);
    out.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\
             Content-Description: OpenPGP digital signature\r\n\
             Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&mime::to_crlf(armored.as_bytes()));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(out)
}

/// Signs and encrypts `message` as RFC 3156 `multipart/encrypted`: one OpenPGP message,
/// signed by the signer's primary key and encrypted (SEIPD v1, AES-256) to every valid
/// encryption subkey of each recipient and of the signer (so its own copy stays readable).
pub fn sign_and_encrypt<R: Rng + CryptoRng>(
    mut rng: R,
    message: &[u8],
    signer: &SecretCert,
    recipients: &[&PublicCert],
    options: Protect,
) -> Result<Vec<u8>, Error> {
    let message = mime::to_crlf(message);
    let mut gossip = Vec::new();
    if options.gossip && recipients.len() > 1 {
        for r in recipients {
            gossip.push(Autocrypt::new(r, PreferEncrypt::NoPreference).gossip_header()?);
        }
    }
    let prepared = prepare(&message, signer, &gossip, options.hide_subject)?;

    let mut keys = Vec::new();
    for cert in recipients.iter().copied().chain([signer.public()]) {
        let subkeys = cert.encryption_subkeys();
        if subkeys.is_empty() {
            return Err(Error::NoEncryptionKey(cert.fingerprint()));
        }
        keys.extend(subkeys);
    }
    let mut builder = MessageBuilder::from_bytes("", prepared.inner)
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    for key in keys {
        builder
            .encrypt_to_key(&mut rng, key)
            .map_err(Error::Encrypt)?;
    }
    builder.sign(
        &signer.inner().primary_key,
        Password::empty(),
        HashAlgorithm::Sha256,
    );
    let armored = builder
        .to_armored_string(&mut rng, ArmorOptions::default())
        .map_err(Error::Encrypt)?;
    let armored = mime::to_crlf(armored.as_bytes());

    let boundary = mime::boundary(&mut rng, &armored);
    let mut out = prepared.outer;
    if options.autocrypt {
        out.extend_from_slice(
            Autocrypt::new(signer.public(), PreferEncrypt::Mutual)
                .header()?
                .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/encrypted;\r\n \
             protocol=\"application/pgp-encrypted\";\r\n boundary=\"{boundary}\"\r\n\r\n\
             This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n--{boundary}\r\n\
             Content-Type: application/pgp-encrypted\r\n\
             Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n\
             --{boundary}\r\n\
             Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
             Content-Description: OpenPGP encrypted message\r\n\
             Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&armored);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(out)
}
