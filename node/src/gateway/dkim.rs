//! DKIM signing of outbound mail with mail-auth (RFC 6376; Ed25519 per RFC 8463).

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The header fields signed (each once more than present is not attempted: a simple list).
const SIGNED: [&str; 9] = [
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
];

/// A DER length.
fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

/// An RSAPublicKey (PKCS#1, as ring gives it) wrapped as a SubjectPublicKeyInfo, the form
/// DKIM records carry and verifiers expect.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bits);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALG.len() + bits.len(), &mut out);
    out.extend_from_slice(&ALG);
    out.extend_from_slice(&bits);
    out
}

/// Why the DKIM key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("reading the DKIM key {0}: {1}")]
    Read(String, std::io::Error),
    /// Not a PEM private key that mail-auth can sign with.
    #[error(
        "the DKIM key {0} is not a PEM RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key: {1}"
    )]
    Key(String, String),
    /// Signing failed.
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// A DKIM signer for one domain and selector.
pub struct Dkim {
    key: Key,
    domain: String,
    selector: String,
    /// The public key, as published in the DNS record's `p=`.
    public: Vec<u8>,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl Dkim {
    /// Loads the PEM key at `path` for `domain` and `selector`.
    pub fn load(path: &Path, domain: &str, selector: &str) -> Result<Self, DkimError> {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| DkimError::Read(name.clone(), e))?;
        Self::from_pem(&pem, domain, selector).map_err(|e| match e {
            DkimError::Key(_, why) => DkimError::Key(name, why),
            other => other,
        })
    }

    /// A signer from PEM text.
    pub fn from_pem(pem: &[u8], domain: &str, selector: &str) -> Result<Self, DkimError> {
        let bad = |why: String| DkimError::Key(String::new(), why);
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(e.to_string()))?;
        let rsa = |k: RsaKey<Sha256>| {
            let public = rsa_spki(&k.public_key());
            let s = DkimSigner::from_key(k)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED);
            (Key::Rsa(s), public)
        };
        let (key, public) = match &der {
            PrivateKeyDer::Pkcs8(p) => {
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()) {
                    Ok(k) => {
                        let public = k.public_key();
                        let s = DkimSigner::from_key(k)
                            .domain(domain)
                            .selector(selector)
                            .headers(SIGNED);
                        (Key::Ed25519(s), public)
                    }
                    Err(_) => rsa(RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(
                        p.clone_key(),
                    ))
                    .map_err(|e| bad(e.to_string()))?),
                }
            }
            other => rsa(RsaKey::<Sha256>::from_key_der(other.clone_key())
                .map_err(|e| bad(e.to_string()))?),
        };
        Ok(Dkim {
            key,
            domain: domain.to_string(),
            selector: selector.to_string(),
            public,
        })
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> (String, String) {
        use base64::Engine;
        let k = match self.key {
            Key::Rsa(_) => "rsa",
            Key::Ed25519(_) => "ed25519",
        };
        let p = base64::engine::general_purpose::STANDARD.encode(&self.public);
        (
            format!("{}._domainkey.{}", self.selector, self.domain),
            format!("v=DKIM1; k={k}; p={p}"),
        )
    }

    /// `message` with a `DKIM-Signature` field first.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let field = match &self.key {
            Key::Rsa(s) => s.sign(message),
            Key::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?
        .to_header();
        let mut out = field.into_bytes();
        out.extend_from_slice(message);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn signs_with_an_ed25519_key_and_gives_its_dns_record() {
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let d = Dkim::from_pem(pem.as_bytes(), "gw.example", "sel").unwrap();
        let (name, value) = d.dns_record();
        assert_eq!(name, "sel._domainkey.gw.example");
        assert!(value.starts_with("v=DKIM1; k=ed25519; p="), "{value}");
        let m = b"From: <a@gw.example>\r\nTo: <b@example.com>\r\nSubject: s\r\n\r\nbody\r\n";
        let signed = String::from_utf8(d.sign(m).unwrap()).unwrap();
        assert!(signed.starts_with("DKIM-Signature: "), "{signed}");
        let head = signed.split("\r\n\r\n").next().unwrap();
        for want in [
            "a=ed25519-sha256",
            "d=gw.example",
            "s=sel",
            "Subject:To:From:",
        ] {
            assert!(head.contains(want), "{want} in {head}");
        }
        assert!(signed.ends_with("\r\n\r\nbody\r\n"));
        assert!(Dkim::from_pem(b"not a key", "gw.example", "sel").is_err());
    }

    #[test]
    fn an_rsa_public_key_is_published_as_subject_public_key_info() {
        // A 3-byte "key" shows the framing: SEQUENCE { rsaEncryption NULL, BIT STRING }.
        let spki = rsa_spki(&[1, 2, 3]);
        assert_eq!(
            spki,
            [
                0x30, 0x15, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
                0x01, 0x05, 0x00, 0x03, 0x04, 0x00, 1, 2, 3
            ]
        );
        let long = rsa_spki(&[7; 300]);
        assert_eq!(&long[..4], &[0x30, 0x82, 0x01, 0x40]);
    }
}
