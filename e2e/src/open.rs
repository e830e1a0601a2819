//! Incoming: verification of `multipart/signed` and decryption of `multipart/encrypted`
//! (RFC 3156), with a typed result that says who signed with which key, or why the
//! signature does not count.
//!
//! Both kinds of signed-and-encrypted messages are read: the combined form (RFC 3156 §6.2,
//! one OpenPGP message signed and encrypted, what this crate, GnuPG with `-se` and most
//! clients send) and the nested form (§6.1, a `multipart/signed` entity inside the
//! encryption).
//!
//! The readable message returned is what the node stores for IMAP: the outer header fields,
//! the protected part's `Content-*` fields and its body; protected copies of header fields
//! and gossip are not repeated, and a Subject hidden as `...` is restored from the
//! protected part.

use std::io::{Cursor, Read};

use pgp::composed::{Deserializable, DetachedSignature, Esk, Message};
use pgp::packet::Signature;
use pgp::types::Password;

use crate::autocrypt::{self, Autocrypt};
use crate::error::{Error, SignatureError};
use crate::key::{Fingerprint, KeyRef, PublicCert, SecretCert};
use crate::mime::{self, Entity};
use crate::protect::HIDDEN_SUBJECT;

/// Who made a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The signing certificate's primary fingerprint (what the ledger binds).
    pub cert: Fingerprint,
    /// The component key that made the signature (the primary key for onionpost keys, a
    /// signing subkey for many others).
    pub key: Fingerprint,
    /// The From address, which the certificate holds.
    pub address: String,
    /// The signature's creation time (seconds since the Unix epoch), if it states one.
    pub created: Option<u32>,
}

/// An opened incoming message.
#[derive(Debug)]
pub struct Opened {
    /// The readable message (CRLF), to store for IMAP.
    pub message: Vec<u8>,
    /// The outer From address, lower-cased.
    pub from: Option<String>,
    /// Whether the message came encrypted (and was decrypted).
    pub encrypted: bool,
    /// The signature verdict: who signed, or why the message does not count as signed.
    pub signature: Result<Signer, SignatureError>,
    /// Valid Autocrypt-Gossip headers from inside the encryption whose address is one of the
    /// message's recipients.
    pub gossip: Vec<Autocrypt>,
}

/// Opens any incoming message: decrypts PGP/MIME `multipart/encrypted` with `me` (error
/// [`Error::NotForUs`] without it), verifies PGP/MIME `multipart/signed`, and reports
/// anything else (S/MIME included) as [`SignatureError::Unsigned`] with the message
/// unchanged (CRLF-normalised).
pub fn open(
    message: &[u8],
    me: Option<&SecretCert>,
    certs: &[PublicCert],
) -> Result<Opened, Error> {
    let message = mime::to_crlf(message);
    let entity = mime::split_entity(&message)?;
    let (ctype, params) = mime::content_type(entity.header).unwrap_or_default();
    // S/MIME and other protocols are not ours: such a message is, for OpenPGP, unsigned.
    let protocol = mime::param(&params, "protocol")
        .unwrap_or("")
        .to_ascii_lowercase();
    let ctype = match (ctype.as_str(), protocol.as_str()) {
        ("multipart/encrypted", "application/pgp-encrypted")
        | ("multipart/signed", "application/pgp-signature") => ctype,
        _ => String::new(),
    };
    match ctype.as_str() {
        "multipart/encrypted" => match me {
            Some(me) => decrypt_entity(&entity, &params, me, certs),
            None => Err(Error::NotForUs {
                ours: None,
                recipients: Vec::new(),
            }),
        },
        "multipart/signed" => verify_entity(&entity, &params, certs),
        _ => {
            let from = outer_from(&entity);
            Ok(Opened {
                message: message.to_vec(),
                signature: Err(SignatureError::Unsigned { from: from.clone() }),
                from,
                encrypted: false,
                gossip: Vec::new(),
            })
        }
    }
}

/// Verifies a `multipart/signed` message against `certs` (the certificates the caller
/// trusts for their addresses: for the node, those bound on the ledger).
pub fn verify(message: &[u8], certs: &[PublicCert]) -> Result<Opened, Error> {
    let message = mime::to_crlf(message);
    let entity = mime::split_entity(&message)?;
    let (ctype, params) = mime::content_type(entity.header).unwrap_or_default();
    if ctype != "multipart/signed" {
        return Err(Error::NotPgpMime {
            expected: "multipart/signed",
            found: Some(ctype).filter(|c| !c.is_empty()),
        });
    }
    verify_entity(&entity, &params, certs)
}

/// Decrypts a `multipart/encrypted` message with `me` and verifies its signature against
/// `certs`.
pub fn decrypt(message: &[u8], me: &SecretCert, certs: &[PublicCert]) -> Result<Opened, Error> {
    let message = mime::to_crlf(message);
    let entity = mime::split_entity(&message)?;
    let (ctype, params) = mime::content_type(entity.header).unwrap_or_default();
    if ctype != "multipart/encrypted" {
        return Err(Error::NotPgpMime {
            expected: "multipart/encrypted",
            found: Some(ctype).filter(|c| !c.is_empty()),
        });
    }
    decrypt_entity(&entity, &params, me, certs)
}

fn outer_from(entity: &Entity<'_>) -> Option<String> {
    mime::addresses(entity.header, "from").into_iter().next()
}

fn two_parts<'a>(
    entity: &Entity<'a>,
    params: &[(String, String)],
    protocol: &str,
) -> Result<(&'a [u8], &'a [u8]), Error> {
    let found = mime::param(params, "protocol").unwrap_or("");
    if !found.eq_ignore_ascii_case(protocol) {
        return Err(Error::Malformed(
            "PGP/MIME protocol parameter missing or unknown",
        ));
    }
    let boundary =
        mime::param(params, "boundary").ok_or(Error::Malformed("multipart without a boundary"))?;
    let parts = mime::split_multipart(entity.body, boundary)?;
    match parts.as_slice() {
        [first, second] => Ok((first, second)),
        _ => Err(Error::Malformed(
            "a PGP/MIME multipart must have exactly two parts",
        )),
    }
}

fn verify_entity(
    entity: &Entity<'_>,
    params: &[(String, String)],
    certs: &[PublicCert],
) -> Result<Opened, Error> {
    let (signed, sig_part) = two_parts(entity, params, "application/pgp-signature")?;
    let from = outer_from(entity);
    let payload = mime::split_entity(signed)?;
    let sig_entity = mime::split_entity(sig_part)?;
    let sig_bytes = mime::decode_transfer(&sig_entity.fields, sig_entity.body)?;
    let signature = match DetachedSignature::from_reader_single(Cursor::new(sig_bytes)) {
        Err(e) => Err(SignatureError::Unparsable(e.to_string())),
        Ok((sig, _)) => check(&sig.signature, certs, from.as_deref(), |key| match key {
            KeyRef::Primary(k) => sig.signature.verify(*k, signed),
            KeyRef::Subkey(k) => sig.signature.verify(&k.key, signed),
        }),
    };
    let signature = signature.and_then(|s| protected_from_matches(&payload, from.as_deref(), s));
    Ok(Opened {
        message: readable(entity, &payload),
        from,
        encrypted: false,
        signature,
        gossip: Vec::new(),
    })
}

/// The key ids (16 upper-case hex digits) a PGP/MIME `multipart/encrypted` message is
/// encrypted to, read without any secret key: what a mailbox host checks before it holds a
/// message for someone (held mail must be ciphertext for the recipient's bound key; see
/// [`PublicCert::encryption_key_ids`]). Anonymous recipients (a zero key id) are listed as
/// zeros. [`Error::NotPgpMime`] for anything that is not `multipart/encrypted`.
pub fn encrypted_to(message: &[u8]) -> Result<Vec<String>, Error> {
    let message = mime::to_crlf(message);
    let entity = mime::split_entity(&message)?;
    let (ctype, params) = mime::content_type(entity.header).unwrap_or_default();
    if ctype != "multipart/encrypted" {
        return Err(Error::NotPgpMime {
            expected: "multipart/encrypted",
            found: Some(ctype).filter(|c| !c.is_empty()),
        });
    }
    let (_version, encrypted) = two_parts(&entity, &params, "application/pgp-encrypted")?;
    let enc_entity = mime::split_entity(encrypted)?;
    let data = mime::decode_transfer(&enc_entity.fields, enc_entity.body)?;
    let binary = dearmor(data)?;
    let msg = Message::from_bytes(Cursor::new(binary)).map_err(|source| Error::Armor {
        what: "encrypted message",
        source,
    })?;
    let Message::Encrypted { esk, .. } = &msg else {
        return Err(Error::Malformed(
            "the encrypted part is not an encrypted OpenPGP message",
        ));
    };
    Ok(esk
        .iter()
        .filter_map(|e| match e {
            Esk::PublicKeyEncryptedSessionKey(p) => p
                .id()
                .ok()
                .map(|id| data_encoding::HEXUPPER.encode(id.as_ref())),
            Esk::SymKeyEncryptedSessionKey(_) => None,
        })
        .collect())
}

fn decrypt_entity(
    entity: &Entity<'_>,
    params: &[(String, String)],
    me: &SecretCert,
    certs: &[PublicCert],
) -> Result<Opened, Error> {
    let (_version, encrypted) = two_parts(entity, params, "application/pgp-encrypted")?;
    let from = outer_from(entity);
    let enc_entity = mime::split_entity(encrypted)?;
    let data = mime::decode_transfer(&enc_entity.fields, enc_entity.body)?;
    let binary = dearmor(data)?;
    let msg = Message::from_bytes(Cursor::new(binary)).map_err(|source| Error::Armor {
        what: "encrypted message",
        source,
    })?;
    let Message::Encrypted { esk, .. } = &msg else {
        return Err(Error::Malformed(
            "the encrypted part is not an encrypted OpenPGP message",
        ));
    };
    let recipients: Vec<String> = esk
        .iter()
        .filter_map(|e| match e {
            Esk::PublicKeyEncryptedSessionKey(p) => p
                .id()
                .ok()
                .map(|id| data_encoding::HEXUPPER.encode(id.as_ref())),
            Esk::SymKeyEncryptedSessionKey(_) => None,
        })
        .collect();
    let mut msg = match msg.decrypt(&Password::empty(), me.inner()) {
        Ok(m) => m,
        Err(pgp::errors::Error::MissingKey) => {
            return Err(Error::NotForUs {
                ours: Some(me.fingerprint()),
                recipients,
            });
        }
        Err(e) => return Err(Error::Decrypt(e)),
    };
    // gpg compresses around the signed data; other tools sign around compressed data.
    for _ in 0..3 {
        msg = msg.decompress().map_err(Error::Decrypt)?;
    }
    let data = msg.as_data_vec().map_err(Error::Read)?;
    let mut signature = Err(SignatureError::Unsigned { from: from.clone() });
    if let Message::Signed { reader, .. } = &msg {
        for i in 0..reader.num_signatures() {
            let Some(sig) = reader.signature(i) else {
                continue;
            };
            let verdict = check(sig, certs, from.as_deref(), |key| {
                msg.verify_nested_explicit(i, key.as_verifying())
                    .map(|_| ())
            });
            let valid = verdict.is_ok();
            if i == 0 || valid {
                signature = verdict;
            }
            if valid {
                break;
            }
        }
    }
    let payload_bytes = mime::to_crlf(&data);
    let payload = mime::split_entity(&payload_bytes)?;
    let recipients: Vec<String> = mime::addresses(entity.header, "to")
        .into_iter()
        .chain(mime::addresses(entity.header, "cc"))
        .collect();
    let gossip = autocrypt::gossip_from(&payload.fields, &recipients);

    // The nested form: a multipart/signed entity inside the encryption.
    let (inner_type, inner_params) = mime::content_type(payload.header).unwrap_or_default();
    if inner_type == "multipart/signed" && matches!(signature, Err(SignatureError::Unsigned { .. }))
    {
        let mut wrapped = Vec::new();
        for field in entity.fields.iter().filter(|f| !f.is_content()) {
            wrapped.extend_from_slice(field.raw);
        }
        wrapped.extend_from_slice(&payload_bytes);
        let wrapped_entity = mime::split_entity(&wrapped)?;
        let inner = verify_entity(&wrapped_entity, &inner_params, certs)?;
        return Ok(Opened {
            encrypted: true,
            gossip,
            ..inner
        });
    }
    let signature = signature.and_then(|s| protected_from_matches(&payload, from.as_deref(), s));
    Ok(Opened {
        message: readable(entity, &payload),
        from,
        encrypted: true,
        signature,
        gossip,
    })
}

/// Binary OpenPGP data from armored or binary input; a damaged or truncated armor is
/// [`Error::Armor`] before any decryption is tried.
fn dearmor(data: Vec<u8>) -> Result<Vec<u8>, Error> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first.is_some_and(|b| b & 0x80 != 0) {
        return Ok(data);
    }
    if let Some(binary) = dearmor_plain(&data) {
        return Ok(binary);
    }
    let mut out = Vec::new();
    pgp::armor::Dearmor::new(Cursor::new(data))
        .read_to_end(&mut out)
        .map_err(|e| Error::Armor {
            what: "encrypted message",
            source: pgp::errors::Error::IO {
                source: e,
                backtrace: None,
            },
        })?;
    Ok(out)
}

/// The armor of an OpenPGP message in the one layout senders write (this crate, GnuPG):
/// the BEGIN line, no armor headers, an empty line, lines of base64, an optional checksum
/// line, the END line, nothing after it but white space; CRLF line ends (what
/// [`mime::to_crlf`] gives). Decoded in one piece; None for anything else, which
/// [`pgp::armor::Dearmor`] then reads. For the input it takes, it gives the bytes `Dearmor`
/// would (which checks no CRC-24 either: RFC 9580 §6.1); it exists because `Dearmor` reads
/// the base64 a byte at a time, the largest cost of opening a message after the crypto.
fn dearmor_plain(data: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----\r\n\r\n";
    const END: &[u8] = b"-----END PGP MESSAGE-----";
    let start = data.iter().position(|b| !b.is_ascii_whitespace())?;
    let mut rest = data[start..].strip_prefix(BEGIN)?;
    let mut base64 = Vec::with_capacity(rest.len());
    loop {
        let end = mime::find_crlf(rest)?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line == END {
            break;
        }
        if let Some(sum) = line.strip_prefix(b"=") {
            // The checksum: four base64 characters, then the END line.
            let checksum = sum.len() == 4 && data_encoding::BASE64.decode(sum).is_ok();
            if !checksum || !rest.starts_with(END) {
                return None;
            }
            rest = &rest[END.len()..];
            break;
        }
        if line.is_empty() {
            return None;
        }
        base64.extend_from_slice(line);
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    data_encoding::BASE64.decode(&base64).ok()
}

/// Finds the key a signature names among `certs`, checks it may sign, verifies with
/// `verify`, and checks the certificate holds the From address.
fn check(
    sig: &Signature,
    certs: &[PublicCert],
    from: Option<&str>,
    verify: impl Fn(&KeyRef<'_>) -> pgp::errors::Result<()>,
) -> Result<Signer, SignatureError> {
    let fingerprints: Vec<Vec<u8>> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| f.as_bytes().to_vec())
        .collect();
    let key_ids: Vec<Vec<u8>> = sig
        .issuer_key_id()
        .iter()
        .map(|k| k.as_ref().to_vec())
        .collect();
    for cert in certs {
        for component in cert.signing_keys() {
            let fp = component.key.fingerprint();
            let named = fingerprints.iter().any(|f| f == fp.as_bytes())
                || key_ids.iter().any(|k| *k == component.key.key_id());
            if !named {
                continue;
            }
            if !component.may_sign {
                return Err(SignatureError::NotASigningKey {
                    cert: cert.fingerprint(),
                    key: fp,
                });
            }
            verify(&component.key).map_err(|e| SignatureError::BadSignature {
                cert: cert.fingerprint(),
                key: fp.clone(),
                reason: e.to_string(),
            })?;
            return match from {
                Some(from) if cert.holds(from) => Ok(Signer {
                    cert: cert.fingerprint(),
                    key: fp,
                    address: from.to_string(),
                    created: sig.created().map(|t| t.as_secs()),
                }),
                _ => Err(SignatureError::SignerNotFrom {
                    cert: cert.fingerprint(),
                    addresses: cert.addresses().to_vec(),
                    from: from.map(str::to_string),
                }),
            };
        }
    }
    let issuer = fingerprints
        .first()
        .or(key_ids.first())
        .map(|b| data_encoding::HEXUPPER.encode(b))
        .unwrap_or_else(|| "none".to_string());
    Err(SignatureError::UnknownKey { issuer })
}

/// A valid signature counts only if the protected From (when there is one) is the outer
/// From.
fn protected_from_matches(
    payload: &Entity<'_>,
    outer: Option<&str>,
    signer: Signer,
) -> Result<Signer, SignatureError> {
    match mime::addresses(payload.header, "from").into_iter().next() {
        Some(signed) if Some(signed.as_str()) != outer => Err(SignatureError::FromMismatch {
            signed,
            outer: outer.map(str::to_string),
        }),
        _ => Ok(signer),
    }
}

/// The outer fields (without Content-*), the payload's Content-* fields, its body; a hidden
/// Subject restored from the protected copy.
fn readable(outer: &Entity<'_>, payload: &Entity<'_>) -> Vec<u8> {
    let protected_subject = payload.fields.iter().find(|f| f.is("subject"));
    let mut out = Vec::new();
    let mut had_subject = false;
    for field in outer.fields.iter().filter(|f| !f.is_content()) {
        if field.is("subject") {
            had_subject = true;
            if let Some(p) = protected_subject
                && field.value() == HIDDEN_SUBJECT
            {
                out.extend_from_slice(p.raw);
                continue;
            }
        }
        out.extend_from_slice(field.raw);
    }
    if !had_subject && let Some(p) = protected_subject {
        out.extend_from_slice(p.raw);
    }
    // Only what describes the body: protected copies, gossip and anything else inside
    // the part were shown above or are not for the reader.
    for field in payload.fields.iter().filter(|f| f.is_content()) {
        out.extend_from_slice(field.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `pgp`'s reader makes of an armor.
    fn dearmor_by_pgp(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pgp::armor::Dearmor::new(Cursor::new(data))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn armored(len: usize) -> Vec<u8> {
        let me = SecretCert::generate(rand::rngs::OsRng, "a@example.onion").unwrap();
        let body = "y".repeat(len);
        let msg = format!("From: a@example.onion\r\nTo: a@example.onion\r\n\r\n{body}");
        let sealed = crate::sign_and_encrypt(
            rand::rngs::OsRng,
            msg.as_bytes(),
            &me,
            &[me.public()],
            crate::Protect::default(),
        )
        .unwrap();
        let start = mime::find(&sealed, b"-----BEGIN").unwrap();
        let end = mime::find(&sealed, b"-----END PGP MESSAGE-----\r\n").unwrap() + 27;
        sealed[start..end].to_vec()
    }

    #[test]
    fn the_plain_armor_decodes_as_pgp_decodes_it_and_anything_else_goes_to_pgp() {
        for len in [0, 1, 2, 3, 47, 48, 49, 1000, 10_240] {
            let a = armored(len);
            let fast = dearmor_plain(&a).expect("the crate's own armor is the plain layout");
            assert_eq!(fast, dearmor_by_pgp(&a), "body of {len} bytes");
            assert_eq!(dearmor(a.clone()).unwrap(), fast);
            // Without its checksum line, and with white space around, still the same.
            let text = String::from_utf8(a.clone()).unwrap();
            let lines: Vec<&str> = text.split("\r\n").collect();
            let without: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| !l.starts_with('='))
                .collect();
            let no_sum = without.join("\r\n");
            assert_eq!(dearmor_plain(no_sum.as_bytes()).as_ref(), Some(&fast));
            let spaced = format!("\r\n  {text}\r\n \r\n");
            assert_eq!(dearmor_plain(spaced.as_bytes()).as_ref(), Some(&fast));
        }
        // Other layouts are left to pgp: armor headers, LF line ends, a damaged checksum
        // line, a character outside base64, text after the END line, another block type.
        let a = String::from_utf8(armored(100)).unwrap();
        let others = [
            a.replacen("-----\r\n\r\n", "-----\r\nVersion: x\r\n\r\n", 1),
            a.replace("\r\n", "\n"),
            a.replacen("\r\n=", "\r\n=!", 1),
            a.replacen("\r\n\r\n", "\r\n\r\n*", 1),
            format!("{a}trailing"),
            a.replace("PGP MESSAGE", "PGP SIGNATURE"),
        ];
        for other in others {
            assert_eq!(dearmor_plain(other.as_bytes()), None, "{other}");
        }
    }
}
