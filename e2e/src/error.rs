//! What can go wrong, as types: [`Error`] for operations that could not be carried out, and
//! [`SignatureError`] for a signature that was checked and found wanting.
//!
//! The split matters to the node: an [`Error`] means "this message is not what it claims to
//! be structurally" (a truncated armor, a multipart without its parts, a message that is not
//! for us), while a [`SignatureError`] is a normal outcome of verification, stored beside a
//! still readable message and reported in `Authentication-Results`.

use crate::key::Fingerprint;

/// An operation of this crate failed; each variant says which and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address that cannot be a User ID (`local@domain`, ASCII, no spaces or brackets).
    #[error("not an e-mail address usable as a User ID: {0:?}")]
    BadAddress(String),
    /// rPGP could not generate a key.
    #[error("generating the OpenPGP key for {address} failed")]
    KeyGeneration {
        /// The identity the key was for.
        address: String,
        /// What rPGP reported.
        #[source]
        source: pgp::errors::Error,
    },
    /// Key material could not be parsed (bad armor, truncated packets, not a key).
    #[error("cannot parse {what}")]
    KeyParse {
        /// Which key: "public key", "secret key", "Autocrypt keydata".
        what: &'static str,
        /// What rPGP reported.
        #[source]
        source: pgp::errors::Error,
    },
    /// A key's self-signatures (User ID or subkey bindings) do not verify.
    #[error("the self-signatures of key {fingerprint} do not verify")]
    KeyBindings {
        /// The key's primary fingerprint.
        fingerprint: Fingerprint,
        /// What rPGP reported.
        #[source]
        source: pgp::errors::Error,
    },
    /// The message to protect is not From exactly one address of the signing key.
    #[error("the From addresses {from:?} are not exactly one address of key {key}")]
    NotOurFrom {
        /// The From addresses found.
        from: Vec<String>,
        /// The signer's primary fingerprint.
        key: Fingerprint,
    },
    /// A certificate has no subkey (nor primary key) usable for encryption.
    #[error("key {0} has no valid encryption key")]
    NoEncryptionKey(Fingerprint),
    /// Serialising key material or a signature failed.
    #[error("serialising {what} failed")]
    Serialize {
        /// What was being written.
        what: &'static str,
        /// What rPGP reported.
        #[source]
        source: pgp::errors::Error,
    },
    /// Signing failed (the secret key could not be used).
    #[error("signing with key {key} failed")]
    Sign {
        /// The key used.
        key: Fingerprint,
        /// What rPGP reported.
        #[source]
        source: pgp::errors::Error,
    },
    /// Encrypting to the recipients failed.
    #[error("encrypting the message failed")]
    Encrypt(#[source] pgp::errors::Error),
    /// The message's MIME structure is broken where this crate needs it whole.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The message is not PGP/MIME of the kind asked for.
    #[error("not a PGP/MIME {expected} message (Content-Type {found:?})")]
    NotPgpMime {
        /// "multipart/signed" or "multipart/encrypted".
        expected: &'static str,
        /// The Content-Type found, if any.
        found: Option<String>,
    },
    /// The armored OpenPGP data could not be parsed (truncated, bad checksum, not OpenPGP).
    #[error("cannot parse the OpenPGP {what}")]
    Armor {
        /// "signature" or "encrypted message".
        what: &'static str,
        /// What rPGP reported.
        #[source]
        source: pgp::errors::Error,
    },
    /// The message is encrypted, but to none of the keys given for decryption.
    #[error("the message is not encrypted to key {ours:?}; it is for {recipients:?}")]
    NotForUs {
        /// The primary fingerprint of the key tried (None: no secret key was given).
        ours: Option<Fingerprint>,
        /// The key ids the message is encrypted to (hex; empty for anonymous recipients).
        recipients: Vec<String>,
    },
    /// Decryption started but failed: a tampered ciphertext (integrity check), a damaged
    /// session key, or an unsupported algorithm.
    #[error("decryption failed")]
    Decrypt(#[source] pgp::errors::Error),
    /// Reading the decrypted or decompressed data failed (truncated or tampered packets).
    #[error("reading the decrypted data failed")]
    Read(#[source] std::io::Error),
    /// An Autocrypt header is not valid (see [`crate::autocrypt`]).
    #[error(transparent)]
    Autocrypt(#[from] crate::autocrypt::AutocryptError),
}

/// Why a signature is not valid for the message it came with. The message itself may be
/// perfectly readable; this is the "why not" of a verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// There is no signature at all (a plain or an encrypted-only message).
    #[error("the message is not signed (From {from:?})")]
    Unsigned {
        /// The From address the message claims.
        from: Option<String>,
    },
    /// Signed by a key that is not among the certificates given.
    #[error("signed by unknown key {issuer}")]
    UnknownKey {
        /// Issuer fingerprint or key id from the signature (hex), or "none" if it names none.
        issuer: String,
    },
    /// The signing key is known but its certificate does not allow it to sign data.
    #[error("key {key} of certificate {cert} is not a signing key")]
    NotASigningKey {
        /// The certificate's primary fingerprint.
        cert: Fingerprint,
        /// The (sub)key named by the signature.
        key: Fingerprint,
    },
    /// The signature does not verify over the content: the content was changed after
    /// signing, or the signature was made by another key claiming this key's id.
    #[error("bad signature by key {key}: {reason}")]
    BadSignature {
        /// The certificate's primary fingerprint.
        cert: Fingerprint,
        /// The (sub)key the signature names.
        key: Fingerprint,
        /// What rPGP reported.
        reason: String,
    },
    /// The signature is good, but the signing certificate does not hold the From address
    /// (someone signed a message that claims to be from someone else).
    #[error(
        "signed by {cert}, whose User IDs {addresses:?} do not include the From address {from:?}"
    )]
    SignerNotFrom {
        /// The signing certificate's primary fingerprint.
        cert: Fingerprint,
        /// The addresses in that certificate's User IDs.
        addresses: Vec<String>,
        /// The From address of the message (None if it has none).
        from: Option<String>,
    },
    /// The signed (protected) From header differs from the message's outer From: the signed
    /// content was re-wrapped in another envelope.
    #[error("the signed From {signed:?} differs from the message's From {outer:?}")]
    FromMismatch {
        /// The From address inside the signed part.
        signed: String,
        /// The From address of the outer message.
        outer: Option<String>,
    },
    /// The signature part is present but cannot be parsed.
    #[error("the signature cannot be parsed: {0}")]
    Unparsable(String),
}
