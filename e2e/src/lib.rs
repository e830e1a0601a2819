//! End-to-end OpenPGP for onionpost, without I/O: what a mail node needs to sign, encrypt,
//! verify and decrypt its identities' mail, on rPGP (`pgp`).
//!
//! - [`key`]: an identity's key ([`SecretCert`]): Ed25519 primary key that certifies and
//!   signs, Curve25519 encryption subkey, User ID = the identity's address; certificates of
//!   correspondents ([`PublicCert`]), armored or binary.
//! - [`protect`]: outgoing PGP/MIME (RFC 3156): [`sign`] makes `multipart/signed`,
//!   [`sign_and_encrypt`] makes `multipart/encrypted` (signed, then encrypted, in one
//!   OpenPGP message), both with protected headers and an Autocrypt header.
//! - [`open`](mod@open): incoming: [`verify`], [`decrypt`], or [`open()`] for any message,
//!   returning [`Opened`]: the readable message and a typed verdict,
//!   `Result<`[`Signer`]`, `[`SignatureError`]`>`.
//! - [`autocrypt`]: Autocrypt Level 1 `Autocrypt` and `Autocrypt-Gossip` headers.
//!
//! Certificates are given by the caller: the crate does not decide whom to trust. The node
//! passes the certificates bound on the ledger for the message's From address (verified
//! with a proof), so "valid" means "signed by the key bound to that address".
//!
//! Compatibility: keys are v4 with the RFC 6637 encodings of Ed25519 and Curve25519, and
//! encryption is SEIPD v1 with AES-256; GnuPG 2.2, RNP and Sequoia read them
//! (`tests/interop.rs` runs all three).

pub mod autocrypt;
pub mod error;
pub mod key;
mod mime;
pub mod open;
pub mod protect;

pub use autocrypt::{Autocrypt, AutocryptError, PreferEncrypt};
pub use error::{Error, SignatureError};
pub use key::{Fingerprint, PublicCert, SecretCert, normalize_address};
pub use open::{Opened, Signer, decrypt, encrypted_to, open, verify};
pub use protect::{Protect, sign, sign_and_encrypt};

/// An error and its sources, joined with ": " (for messages that must be one line).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
