//! Autocrypt Level 1 headers: `Autocrypt` in the outer header of every message a node sends,
//! and `Autocrypt-Gossip` inside the encrypted part of a message to several recipients (an
//! encrypted list post), so that each recipient learns the others' keys.
//!
//! The format (Autocrypt Level 1, §2.1): `addr=<address>; [prefer-encrypt=mutual;]
//! keydata=<base64 of the binary certificate>`. Parsing follows the specification's rules:
//! `addr` and `keydata` are required; an attribute whose name begins with `_` is
//! non-critical and ignored; any other unknown attribute makes the whole header invalid; a
//! `prefer-encrypt` value other than `mutual` means no preference. An `Autocrypt` header
//! counts only if its `addr` is the message's From address and it is the only one; a gossip
//! header only if its `addr` is one of the message's recipients.

use crate::error::Error;
use crate::key::{PublicCert, normalize_address};
use crate::mime;

/// The sender's encryption preference (Autocrypt §2.1 `prefer-encrypt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferEncrypt {
    /// `prefer-encrypt=mutual`: encrypt whenever the recipient also prefers it.
    Mutual,
    /// No `prefer-encrypt` attribute (or any value but `mutual`).
    NoPreference,
}

/// A parsed or to-be-sent Autocrypt (or Autocrypt-Gossip) header.
#[derive(Debug, Clone)]
pub struct Autocrypt {
    /// The address the key is for, lower-cased.
    pub addr: String,
    /// The sender's preference (always [`PreferEncrypt::NoPreference`] in gossip).
    pub prefer_encrypt: PreferEncrypt,
    /// The certificate from `keydata`, its self-signatures checked.
    pub cert: PublicCert,
}

/// Why an Autocrypt header is not valid (the header is then ignored, per the specification).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutocryptError {
    /// A required attribute (`addr` or `keydata`) is missing.
    #[error("the Autocrypt header has no {0} attribute")]
    Missing(&'static str),
    /// An attribute appears twice.
    #[error("the Autocrypt header has the attribute {0} twice")]
    Duplicate(String),
    /// An attribute is not `name=value`.
    #[error("the Autocrypt header has an attribute that is not name=value: {0:?}")]
    Syntax(String),
    /// A critical (no leading `_`) attribute this implementation does not know.
    #[error("the Autocrypt header has the unknown critical attribute {0:?}")]
    UnknownCritical(String),
    /// `addr` is not an e-mail address.
    #[error("the Autocrypt addr {0:?} is not an e-mail address")]
    BadAddr(String),
    /// `keydata` is not base64 or not a valid certificate.
    #[error("the Autocrypt keydata is not a valid certificate: {0}")]
    BadKeydata(String),
    /// The header's `addr` is not the From address (or, for gossip, not a recipient).
    #[error("the Autocrypt addr {addr:?} is not the message's {expected}")]
    AddrMismatch {
        /// The header's address.
        addr: String,
        /// What it had to be: "From address" or "recipients".
        expected: &'static str,
    },
    /// More than one Autocrypt header for the From address: all are ignored (§2.3).
    #[error("the message has {0} Autocrypt headers")]
    Several(usize),
}

impl Autocrypt {
    /// The header announcing `cert` for its first address.
    pub fn new(cert: &PublicCert, prefer_encrypt: PreferEncrypt) -> Self {
        Autocrypt {
            addr: cert.address().to_string(),
            prefer_encrypt,
            cert: cert.clone(),
        }
    }

    /// The header value (after `Autocrypt: `), folded: one attribute per line, keydata in
    /// lines of 76 base64 characters.
    pub fn value(&self) -> Result<String, Error> {
        // The certificate's keydata is serialised once per certificate (it goes out with
        // every message the node signs).
        let keydata = self.cert.autocrypt_keydata()?;
        // One attribute per line: an onion address alone is 62+ characters, so the `addr`
        // line is the only one that can pass 78 columns (never the 998 limit).
        let mut value = String::with_capacity(self.addr.len() + keydata.len() + 48);
        value.push_str("addr=");
        value.push_str(&self.addr);
        value.push(';');
        if self.prefer_encrypt == PreferEncrypt::Mutual {
            value.push_str("\r\n prefer-encrypt=mutual;");
        }
        value.push_str("\r\n keydata=");
        value.push_str(keydata);
        Ok(value)
    }

    /// The whole `Autocrypt:` header field, CRLF-terminated.
    pub fn header(&self) -> Result<String, Error> {
        Ok(format!("Autocrypt: {}\r\n", self.value()?))
    }

    /// The whole `Autocrypt-Gossip:` header field (no `prefer-encrypt`), CRLF-terminated.
    pub fn gossip_header(&self) -> Result<String, Error> {
        let gossip = Autocrypt {
            prefer_encrypt: PreferEncrypt::NoPreference,
            ..self.clone()
        };
        Ok(format!("Autocrypt-Gossip: {}\r\n", gossip.value()?))
    }

    /// Parses a header value (folded or not) by the Autocrypt Level 1 rules.
    pub fn parse(value: &str) -> Result<Self, AutocryptError> {
        let unfolded = value.replace(['\r', '\n'], "");
        let mut addr = None;
        let mut prefer = None;
        let mut keydata = None;
        for attr in unfolded.split(';').map(str::trim).filter(|a| !a.is_empty()) {
            let (name, val) = attr
                .split_once('=')
                .ok_or_else(|| AutocryptError::Syntax(attr.to_string()))?;
            let name = name.trim().to_ascii_lowercase();
            let val = val.trim();
            let slot = match name.as_str() {
                "addr" => &mut addr,
                "prefer-encrypt" => &mut prefer,
                "keydata" => &mut keydata,
                n if n.starts_with('_') => continue,
                n => return Err(AutocryptError::UnknownCritical(n.to_string())),
            };
            if slot.replace(val.to_string()).is_some() {
                return Err(AutocryptError::Duplicate(name));
            }
        }
        let addr = addr.ok_or(AutocryptError::Missing("addr"))?;
        let addr = normalize_address(&addr).map_err(|_| AutocryptError::BadAddr(addr))?;
        let keydata = keydata.ok_or(AutocryptError::Missing("keydata"))?;
        let compact: String = keydata.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = data_encoding::BASE64
            .decode(compact.as_bytes())
            .map_err(|e| AutocryptError::BadKeydata(format!("base64: {e}")))?;
        let cert = PublicCert::from_bytes(&bytes)
            .map_err(|e| AutocryptError::BadKeydata(crate::error_chain(&e)))?;
        let prefer_encrypt = match prefer.as_deref() {
            Some(v) if v.eq_ignore_ascii_case("mutual") => PreferEncrypt::Mutual,
            _ => PreferEncrypt::NoPreference,
        };
        Ok(Autocrypt {
            addr,
            prefer_encrypt,
            cert,
        })
    }

    /// The sender's Autocrypt header of a message: None if it has none, an error if it is
    /// invalid, if its `addr` is not the From address, or if there are several.
    pub fn from_message(message: &[u8]) -> Result<Option<Self>, Error> {
        let message = mime::to_crlf(message);
        let entity = mime::split_entity(&message)?;
        let from = mime::addresses(entity.header, "from").into_iter().next();
        let values: Vec<String> = entity
            .fields
            .iter()
            .filter(|f| f.is("autocrypt"))
            .map(|f| f.value())
            .collect();
        match values.len() {
            0 => return Ok(None),
            1 => {}
            n => return Err(AutocryptError::Several(n).into()),
        }
        let header = Self::parse(&values[0])?;
        if from.as_deref() != Some(header.addr.as_str()) {
            return Err(AutocryptError::AddrMismatch {
                addr: header.addr,
                expected: "From address",
            }
            .into());
        }
        Ok(Some(header))
    }
}

/// The valid `Autocrypt-Gossip` headers among `fields` whose addr is one of `recipients`.
/// Invalid ones are skipped, as the specification says.
pub(crate) fn gossip_from(fields: &[mime::Field<'_>], recipients: &[String]) -> Vec<Autocrypt> {
    fields
        .iter()
        .filter(|f| f.is("autocrypt-gossip"))
        .filter_map(|f| Autocrypt::parse(&f.value()).ok())
        .filter(|g| recipients.iter().any(|r| r == &g.addr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SecretCert;

    #[test]
    fn the_keydata_is_serialised_once_and_is_the_certificates_bytes() {
        let me = SecretCert::generate(rand::rngs::OsRng, "a@example.onion").unwrap();
        // What the header carried when it was serialised for every message.
        let encoded = data_encoding::BASE64.encode(&me.public().to_bytes().unwrap());
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let want = format!(
            "Autocrypt: addr=a@example.onion;\r\n prefer-encrypt=mutual;\r\n keydata=\r\n {}\r\n",
            lines.join("\r\n ")
        );
        let first = Autocrypt::new(me.public(), PreferEncrypt::Mutual)
            .header()
            .unwrap();
        assert_eq!(first, want);
        // The memo is the certificate's, shared by its clones (a header borrows a clone).
        let memo = me.public().autocrypt_keydata().unwrap().as_ptr();
        assert_eq!(
            me.public().clone().autocrypt_keydata().unwrap().as_ptr(),
            memo
        );
        assert_eq!(
            Autocrypt::new(me.public(), PreferEncrypt::Mutual)
                .header()
                .unwrap(),
            want
        );
        let gossip = Autocrypt::new(me.public(), PreferEncrypt::Mutual)
            .gossip_header()
            .unwrap();
        assert_eq!(
            gossip,
            format!(
                "Autocrypt-Gossip: addr=a@example.onion;\r\n keydata=\r\n {}\r\n",
                lines.join("\r\n ")
            )
        );
    }
}
