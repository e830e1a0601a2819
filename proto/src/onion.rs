//! Tor v3 onion addresses: the self-certifying name of an onionpost identity.
//!
//! An identity is an ed25519 key pair and its onion address *is* its public key
//! (rend-spec-v3 §6): `base32(pubkey || checksum || version)` where
//! `checksum = SHA3-256(".onion checksum" || pubkey || version)[..2]` and `version = 3`.
//! Whoever knows the address therefore knows the key, and can check the identity's
//! signatures without asking anybody.

use std::fmt;
use std::str::FromStr;

use sha3::{Digest, Sha3_256};

/// Length of the address without the `.onion` suffix.
pub const ONION_ADDRESS_LEN: usize = 56;
const VERSION: u8 = 3;

/// Why a string is not a valid v3 onion address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnionAddressError {
    /// Wrong number of characters.
    #[error(
        "an onion address has {ONION_ADDRESS_LEN} base32 characters before \".onion\", this one has {0}"
    )]
    Length(usize),
    /// Not RFC 4648 base32.
    #[error("an onion address is base32 (a-z, 2-7): {0}")]
    Encoding(String),
    /// Not a version 3 address.
    #[error("only version 3 onion addresses are supported, this one says version {0}")]
    Version(u8),
    /// The two checksum bytes do not match the key: a typo.
    #[error("the onion address checksum does not match its key (is there a typo?)")]
    Checksum,
}

/// A v3 onion address, i.e. an ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OnionAddress([u8; 32]);

impl OnionAddress {
    /// The address of an ed25519 public key.
    pub fn from_public_key(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// The ed25519 public key this address encodes.
    pub fn public_key(&self) -> [u8; 32] {
        self.0
    }

    /// The 56 base32 characters, without `.onion`.
    pub fn label(&self) -> String {
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(&self.0);
        raw[32..34].copy_from_slice(&checksum(&self.0));
        raw[34] = VERSION;
        data_encoding::BASE32_NOPAD
            .encode(&raw)
            .to_ascii_lowercase()
    }

    /// The host name, `<56 chars>.onion`.
    pub fn hostname(&self) -> String {
        format!("{}.onion", self.label())
    }
}

fn checksum(key: &[u8; 32]) -> [u8; 2] {
    let mut h = Sha3_256::new();
    h.update(b".onion checksum");
    h.update(key);
    h.update([VERSION]);
    let d = h.finalize();
    [d[0], d[1]]
}

impl FromStr for OnionAddress {
    type Err = OnionAddressError;

    /// Parses `<56 chars>` or `<56 chars>.onion`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let label = s
            .strip_suffix(".onion")
            .or_else(|| s.strip_suffix(".ONION"))
            .unwrap_or(s);
        if label.len() != ONION_ADDRESS_LEN {
            return Err(OnionAddressError::Length(label.len()));
        }
        let raw = data_encoding::BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .map_err(|e| OnionAddressError::Encoding(e.to_string()))?;
        if raw[34] != VERSION {
            return Err(OnionAddressError::Version(raw[34]));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[..32]);
        if raw[32..34] != checksum(&key) {
            return Err(OnionAddressError::Checksum);
        }
        Ok(Self(key))
    }
}

impl fmt::Display for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hostname())
    }
}

impl fmt::Debug for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionAddress({})", self.hostname())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vector from Tor's test suite (test_hs_common.c, `test_build_address`).
    #[test]
    fn matches_tor_test_vector() {
        let key = hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
            .unwrap();
        let addr = OnionAddress::from_public_key(key.try_into().unwrap());
        assert_eq!(
            addr.hostname(),
            "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion"
        );
    }

    #[test]
    fn round_trips_and_rejects_typos() {
        let addr = OnionAddress::from_public_key([7u8; 32]);
        let parsed: OnionAddress = addr.hostname().parse().unwrap();
        assert_eq!(parsed, addr);
        assert_eq!(addr.label().parse::<OnionAddress>().unwrap(), addr);
        assert_eq!(
            addr.hostname()
                .to_uppercase()
                .parse::<OnionAddress>()
                .unwrap(),
            addr
        );

        let mut typo = addr.label().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            typo.parse::<OnionAddress>(),
            Err(OnionAddressError::Checksum)
        );
        assert!(matches!(
            "abc.onion".parse::<OnionAddress>(),
            Err(OnionAddressError::Length(3))
        ));
        assert!(matches!(
            "1".repeat(56).parse::<OnionAddress>(),
            Err(OnionAddressError::Encoding(_))
        ));
    }
}
