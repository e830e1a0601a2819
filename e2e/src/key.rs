//! Identity keys: generation, import and export, and which component key does what.
//!
//! An identity's OpenPGP key is a v4 key whose only User ID is the identity's e-mail
//! address (`name@<onion>.onion`): an Ed25519 primary key that certifies and signs, and a
//! Curve25519 (ECDH, "cv25519") subkey that encrypts. v4 with the RFC 6637 "legacy"
//! encodings, SEIPD v1 (MDC) and no AEAD is what every deployed OpenPGP implementation reads,
//! GnuPG 2.2 included; the algorithms are the same as RFC 9580's Ed25519/X25519.

use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use pgp::composed::{
    Deserializable, EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedPublicSubKey, SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet;
use pgp::ser::Serialize;
use pgp::types::{CompressionAlgorithm, KeyDetails};
use rand::{CryptoRng, Rng};
use smallvec::smallvec;

use crate::error::Error;

/// An OpenPGP fingerprint (20 bytes for v4 keys), shown as upper-case hex like GnuPG does.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(Vec<u8>);

impl Fingerprint {
    /// The raw fingerprint bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The fingerprint as upper-case hex (the form `gpg --with-colons` prints).
    pub fn to_hex(&self) -> String {
        data_encoding::HEXUPPER.encode(&self.0)
    }

    pub(crate) fn of(key: &impl KeyDetails) -> Self {
        Fingerprint(key.fingerprint().as_bytes().to_vec())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// Checks that `address` can be a User ID: `local@domain`, printable ASCII, no spaces, no
/// angle brackets, one `@`. Returns it lower-cased (addresses compare case-insensitively).
pub fn normalize_address(address: &str) -> Result<String, Error> {
    let bad = || Error::BadAddress(address.to_string());
    let (local, domain) = address.split_once('@').ok_or_else(bad)?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'@' | b'"'))
    };
    if !ok(local) || !ok(domain) || !domain.contains('.') {
        return Err(bad());
    }
    Ok(address.to_ascii_lowercase())
}

/// The address in a User ID: `Name <addr>`, `<addr>` or a bare `addr`, lower-cased; None if
/// the User ID holds no address.
pub(crate) fn address_of_user_id(uid: &[u8]) -> Option<String> {
    let uid = std::str::from_utf8(uid).ok()?.trim();
    let candidate = match (uid.rfind('<'), uid.rfind('>')) {
        (Some(open), Some(close)) if open < close => &uid[open + 1..close],
        _ => uid,
    };
    normalize_address(candidate).ok()
}

/// An identity's secret key (the transferable secret key, unprotected: protecting it at rest
/// is the node's keystore's job).
#[derive(Clone, Debug)]
pub struct SecretCert {
    key: SignedSecretKey,
    public: PublicCert,
}

impl SecretCert {
    /// Generates the key of the identity `address`: Ed25519 primary key (certify, sign),
    /// Curve25519 encryption subkey, User ID `address`, preferences AES-256/AES-128,
    /// SHA-256/SHA-512, no compression, SEIPD v1.
    pub fn generate<R: Rng + CryptoRng>(rng: R, address: &str) -> Result<Self, Error> {
        let address = normalize_address(address)?;
        let gen_err = |source| Error::KeyGeneration {
            address: address.clone(),
            source,
        };
        let builder_err = |e: String| {
            gen_err(pgp::errors::Error::Message {
                message: e,
                backtrace: None,
            })
        };
        let encryption = SubkeyParamsBuilder::default()
            .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
            .can_encrypt(EncryptionCaps::All)
            .build()
            .map_err(|e| builder_err(e.to_string()))?;
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id(address.clone())
            .preferred_symmetric_algorithms(smallvec![
                SymmetricKeyAlgorithm::AES256,
                SymmetricKeyAlgorithm::AES128
            ])
            .preferred_hash_algorithms(smallvec![HashAlgorithm::Sha256, HashAlgorithm::Sha512])
            .preferred_compression_algorithms(smallvec![CompressionAlgorithm::Uncompressed])
            .subkeys(vec![encryption])
            .build()
            .map_err(|e| builder_err(e.to_string()))?;
        let key = params.generate(rng).map_err(gen_err)?;
        Self::from_key(key)
    }

    /// Reads a transferable secret key, armored or binary, and checks its self-signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (key, _) =
            SignedSecretKey::from_reader_single(Cursor::new(bytes)).map_err(|source| {
                Error::KeyParse {
                    what: "secret key",
                    source,
                }
            })?;
        Self::from_key(key)
    }

    fn from_key(key: SignedSecretKey) -> Result<Self, Error> {
        key.verify_bindings().map_err(|source| Error::KeyBindings {
            fingerprint: Fingerprint::of(&key.primary_key),
            source,
        })?;
        let public = PublicCert::from_key(key.to_public_key())?;
        Ok(SecretCert { key, public })
    }

    /// The public half (the certificate others encrypt to and verify with).
    pub fn public(&self) -> &PublicCert {
        &self.public
    }

    /// The primary key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint()
    }

    /// The identity's address (its first User ID that holds one).
    pub fn address(&self) -> &str {
        self.public.address()
    }

    /// The transferable secret key, ASCII-armored (what `gpg --import` takes).
    pub fn to_armored(&self) -> Result<String, Error> {
        self.key
            .to_armored_string(Default::default())
            .map_err(|source| Error::Serialize {
                what: "secret key",
                source,
            })
    }

    /// The transferable secret key in binary.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.key.to_bytes().map_err(|source| Error::Serialize {
            what: "secret key",
            source,
        })
    }

    pub(crate) fn inner(&self) -> &SignedSecretKey {
        &self.key
    }
}

/// A certificate (transferable public key) of a correspondent or of one of our identities.
///
/// Immutable once read, and shared: a clone is a reference count, and what is derived from
/// the key alone (its fingerprint, the Autocrypt `keydata` that goes out with every message
/// it signs) is computed once per certificate, not once per message.
#[derive(Clone, Debug)]
pub struct PublicCert(Arc<CertInner>);

#[derive(Debug)]
struct CertInner {
    key: SignedPublicKey,
    addresses: Vec<String>,
    fingerprint: Fingerprint,
    /// The binary certificate in base64, folded as Autocrypt's `keydata` (see
    /// [`PublicCert::autocrypt_keydata`]); filled on first use.
    keydata: OnceLock<String>,
}

impl PublicCert {
    /// Reads a certificate, armored or binary, and checks its self-signatures. A certificate
    /// with no User ID holding an e-mail address is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (key, _) =
            SignedPublicKey::from_reader_single(Cursor::new(bytes)).map_err(|source| {
                Error::KeyParse {
                    what: "public key",
                    source,
                }
            })?;
        Self::from_key(key)
    }

    pub(crate) fn from_key(key: SignedPublicKey) -> Result<Self, Error> {
        key.verify_bindings().map_err(|source| Error::KeyBindings {
            fingerprint: Fingerprint::of(&key.primary_key),
            source,
        })?;
        let addresses: Vec<String> = key
            .details
            .users
            .iter()
            .filter_map(|u| address_of_user_id(u.id.id()))
            .collect();
        if addresses.is_empty() {
            return Err(Error::KeyParse {
                what: "public key",
                source: pgp::errors::Error::Message {
                    message: "no User ID holds an e-mail address".into(),
                    backtrace: None,
                },
            });
        }
        let fingerprint = Fingerprint::of(&key.primary_key);
        Ok(PublicCert(Arc::new(CertInner {
            key,
            addresses,
            fingerprint,
            keydata: OnceLock::new(),
        })))
    }

    /// The primary key's fingerprint: the certificate's identity.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint.clone()
    }

    /// The binary certificate in base64 as Autocrypt's `keydata` attribute folds it: each
    /// line of 76 characters preceded by CRLF and a space. A function of the key alone,
    /// serialised once per certificate (every message the node sends carries it).
    pub(crate) fn autocrypt_keydata(&self) -> Result<&str, Error> {
        if let Some(k) = self.0.keydata.get() {
            return Ok(k);
        }
        let encoded = data_encoding::BASE64.encode(&self.to_bytes()?);
        let mut folded = String::with_capacity(encoded.len() + encoded.len() / 76 * 3 + 3);
        for chunk in encoded.as_bytes().chunks(76) {
            folded.push_str("\r\n ");
            folded.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        }
        // Another thread may have filled it meanwhile, with the same value.
        Ok(self.0.keydata.get_or_init(|| folded))
    }

    /// The first address among the User IDs.
    pub fn address(&self) -> &str {
        &self.0.addresses[0]
    }

    /// Every address among the User IDs, lower-cased.
    pub fn addresses(&self) -> &[String] {
        &self.0.addresses
    }

    /// Whether one of the User IDs holds `address` (compared case-insensitively).
    pub fn holds(&self, address: &str) -> bool {
        self.0
            .addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(address))
    }

    /// The certificate, ASCII-armored (what `gpg --import`, `rnp --import`, `sq` take).
    pub fn to_armored(&self) -> Result<String, Error> {
        self.0
            .key
            .to_armored_string(Default::default())
            .map_err(|source| Error::Serialize {
                what: "public key",
                source,
            })
    }

    /// The certificate in binary (what Autocrypt `keydata` carries, base64-encoded).
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.0.key.to_bytes().map_err(|source| Error::Serialize {
            what: "public key",
            source,
        })
    }

    /// The legacy key ids (16 upper-case hex digits) of the subkeys that may encrypt: what
    /// [`crate::encrypted_to`] lists for a message encrypted to this certificate.
    pub fn encryption_key_ids(&self) -> Vec<String> {
        self.encryption_subkeys()
            .iter()
            .map(|s| data_encoding::HEXUPPER.encode(s.key.legacy_key_id().as_ref()))
            .collect()
    }

    /// The subkeys whose binding signature allows encryption (communications or storage).
    pub(crate) fn encryption_subkeys(&self) -> Vec<&SignedPublicSubKey> {
        self.0
            .key
            .public_subkeys
            .iter()
            .filter(|s| {
                s.signatures.iter().any(|sig| {
                    let f = sig.key_flags();
                    f.encrypt_comms() || f.encrypt_storage()
                })
            })
            .collect()
    }

    /// The keys of this certificate that may make data signatures, with their fingerprints
    /// and legacy key ids.
    pub(crate) fn signing_keys(&self) -> Vec<ComponentKey<'_>> {
        let mut keys = Vec::new();
        let primary_flags_sign = self
            .0
            .key
            .details
            .users
            .iter()
            .flat_map(|u| u.signatures.iter())
            .chain(self.0.key.details.direct_signatures.iter())
            .any(|sig| sig.key_flags().sign());
        keys.push(ComponentKey {
            key: KeyRef::Primary(&self.0.key.primary_key),
            may_sign: primary_flags_sign,
        });
        for sub in &self.0.key.public_subkeys {
            keys.push(ComponentKey {
                key: KeyRef::Subkey(sub),
                may_sign: sub.signatures.iter().any(|sig| sig.key_flags().sign()),
            });
        }
        keys
    }
}

/// One component key of a certificate (primary or subkey).
pub(crate) enum KeyRef<'a> {
    Primary(&'a packet::PublicKey),
    Subkey(&'a SignedPublicSubKey),
}

impl KeyRef<'_> {
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        match self {
            KeyRef::Primary(k) => Fingerprint::of(*k),
            KeyRef::Subkey(k) => Fingerprint::of(&k.key),
        }
    }

    pub(crate) fn key_id(&self) -> Vec<u8> {
        match self {
            KeyRef::Primary(k) => k.legacy_key_id().as_ref().to_vec(),
            KeyRef::Subkey(k) => k.key.legacy_key_id().as_ref().to_vec(),
        }
    }

    pub(crate) fn as_verifying(&self) -> &dyn pgp::types::VerifyingKey {
        match self {
            KeyRef::Primary(k) => *k,
            KeyRef::Subkey(k) => &k.key,
        }
    }
}

/// A component key and whether its certificate lets it sign data.
pub(crate) struct ComponentKey<'a> {
    pub(crate) key: KeyRef<'a>,
    pub(crate) may_sign: bool,
}
