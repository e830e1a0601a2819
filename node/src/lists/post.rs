//! A list post on the wire: the signed message and the one header line that carries its
//! signature. Pure.
//!
//! ```text
//! Onionpost-Post: v=1; list=<list>; h=<height>; a=<author key, 64 hex>; s=<signature, base64>
//! <the message, exactly as signed: headers (List-Id, List-Post, ...) and body>
//! ```
//!
//! The signature is ed25519 by the author's identity key (its onion address) over
//! [`signing_digest`]: SHA-256 of a domain separator, the list name, the height H whose
//! member set the author posted to, the Message-ID, and the exact bytes that members
//! deliver. Changing any of them (another list, an older height, another Message-ID, one
//! byte of the message) breaks the signature. The digest is also the post's id
//! ([`crate::lists::broadcast::PostId`]): every relayed copy of a post has the same id, and
//! members dedupe by it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_consensus::{Signature, SigningKey, VerificationKey};
use sha2::{Digest, Sha256};

use crate::message::message_id;

/// Domain separator of post signatures.
pub const POST_SIGNING_DOMAIN: &[u8] = b"onionpost/list-post/v1";

/// The name of the signature header.
pub const POST_HEADER: &str = "Onionpost-Post";

/// What the signature covers and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The list.
    pub list: String,
    /// The height whose member set the post went to.
    pub height: u64,
    /// The author's identity key.
    pub author: [u8; 32],
    /// The Message-ID, as in the message (angle brackets included).
    pub message_id: String,
    /// The message exactly as delivered.
    pub message: Vec<u8>,
    /// The author's signature over [`signing_digest`].
    pub signature: [u8; 64],
}

/// Why bytes are not a well-formed, correctly signed post. Each is a refusal reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// No `Onionpost-Post:` first line.
    #[error("not a list post: the first line must be the Onionpost-Post: signature header")]
    NotAPost,
    /// The header is there but unreadable.
    #[error("malformed Onionpost-Post header: {0}")]
    Malformed(String),
    /// The message has no Message-ID.
    #[error("the post has no Message-ID")]
    NoMessageId,
    /// The signature does not verify with the author's key.
    #[error(
        "signature check failed: the signature does not verify with the author's key over the list, height, Message-ID and message bytes"
    )]
    BadSignature,
}

/// The 32 bytes an author signs for a post; also the post's id.
pub fn signing_digest(list: &str, height: u64, message_id: &str, message: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(POST_SIGNING_DOMAIN);
    h.update((list.len() as u64).to_be_bytes());
    h.update(list.as_bytes());
    h.update(height.to_be_bytes());
    h.update((message_id.len() as u64).to_be_bytes());
    h.update(message_id.as_bytes());
    h.update(message);
    h.finalize().into()
}

impl Post {
    /// Signs `message` (which must carry a Message-ID) as a post to `list` at `height`.
    pub fn sign(
        key: &SigningKey,
        list: &str,
        height: u64,
        message: Vec<u8>,
    ) -> Result<Post, PostError> {
        let message_id = message_id(&message).ok_or(PostError::NoMessageId)?;
        let digest = signing_digest(list, height, &message_id, &message);
        Ok(Post {
            list: list.to_string(),
            height,
            author: key.verification_key().to_bytes(),
            message_id,
            message,
            signature: key.sign(&digest).to_bytes(),
        })
    }

    /// The post's id: its signing digest.
    pub fn id(&self) -> [u8; 32] {
        signing_digest(&self.list, self.height, &self.message_id, &self.message)
    }

    /// The bytes sent to members: the signature line, then the message.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = format!(
            "{POST_HEADER}: v=1; list={}; h={}; a={}; s={}\r\n",
            self.list,
            self.height,
            hex::encode(self.author),
            B64.encode(self.signature)
        )
        .into_bytes();
        out.extend_from_slice(&self.message);
        out
    }

    /// Parses the wire form and checks the signature (nothing else: membership is the
    /// ledger's business, see `lists::check`).
    pub fn from_wire(bytes: &[u8]) -> Result<Post, PostError> {
        let end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(PostError::NotAPost)?;
        let line = std::str::from_utf8(&bytes[..end]).map_err(|_| PostError::NotAPost)?;
        let (name, value) = line.split_once(':').ok_or(PostError::NotAPost)?;
        if !name.eq_ignore_ascii_case(POST_HEADER) {
            return Err(PostError::NotAPost);
        }
        let mut fields = std::collections::BTreeMap::new();
        for part in value.split(';') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| PostError::Malformed(format!("{part:?} is not key=value")))?;
            if fields.insert(k, v).is_some() {
                return Err(PostError::Malformed(format!("{k} given twice")));
            }
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| PostError::Malformed(format!("no {k}=")))
        };
        if get("v")? != "1" {
            return Err(PostError::Malformed(format!(
                "version {} (this node reads v=1)",
                get("v")?
            )));
        }
        let list = get("list")?.to_string();
        if !onionpost_proto::keys::is_valid_list_name(&list) {
            return Err(PostError::Malformed(format!("{list:?} is not a list name")));
        }
        let height = get("h")?
            .parse()
            .map_err(|_| PostError::Malformed("h= is not a height".into()))?;
        let author: [u8; 32] = hex::decode(get("a")?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| PostError::Malformed("a= is not a 64-hex key".into()))?;
        let signature: [u8; 64] = B64
            .decode(get("s")?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| PostError::Malformed("s= is not a base64 signature".into()))?;
        let message = bytes[end + 2..].to_vec();
        let message_id = message_id(&message).ok_or(PostError::NoMessageId)?;
        let post = Post {
            list,
            height,
            author,
            message_id,
            message,
            signature,
        };
        let key = VerificationKey::try_from(author).map_err(|_| PostError::BadSignature)?;
        key.verify(&Signature::from(signature), &post.id())
            .map_err(|_| PostError::BadSignature)?;
        Ok(post)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Vec<u8> {
        b"From: <a@x.onion>\r\nMessage-ID: <1@x.onion>\r\nList-Id: <dev.list.invalid>\r\n\r\nhello\r\n"
            .to_vec()
    }

    #[test]
    fn a_post_round_trips_and_every_covered_part_is_bound() {
        let key = SigningKey::new(rand_core::OsRng);
        let p = Post::sign(&key, "dev", 42, msg()).unwrap();
        let wire = p.to_wire();
        let back = Post::from_wire(&wire).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.message,
            msg(),
            "members deliver exactly the signed bytes"
        );

        let tamper = |from: &str, to: &str| {
            let s = String::from_utf8(wire.clone())
                .unwrap()
                .replacen(from, to, 1);
            Post::from_wire(s.as_bytes())
        };
        assert_eq!(tamper("list=dev", "list=ops"), Err(PostError::BadSignature));
        assert_eq!(tamper("h=42", "h=41"), Err(PostError::BadSignature));
        assert_eq!(tamper("<1@x", "<2@x"), Err(PostError::BadSignature));
        assert_eq!(tamper("hello", "hellO"), Err(PostError::BadSignature));
        let other = SigningKey::new(rand_core::OsRng);
        assert_eq!(
            tamper(
                &hex::encode(p.author),
                &hex::encode(other.verification_key().to_bytes())
            ),
            Err(PostError::BadSignature)
        );
        assert_ne!(p.id(), Post::sign(&key, "dev", 43, msg()).unwrap().id());
    }

    #[test]
    fn malformed_posts_are_named() {
        assert_eq!(
            Post::from_wire(b"Subject: x\r\n\r\n"),
            Err(PostError::NotAPost)
        );
        assert_eq!(Post::from_wire(b"no line end"), Err(PostError::NotAPost));
        assert!(matches!(
            Post::from_wire(b"Onionpost-Post: v=1; list=dev\r\n\r\n"),
            Err(PostError::Malformed(_))
        ));
        assert!(matches!(
            Post::from_wire(b"Onionpost-Post: v=2; list=dev; h=1; a=00; s=00\r\n\r\n"),
            Err(PostError::Malformed(_))
        ));
        let key = SigningKey::new(rand_core::OsRng);
        assert_eq!(
            Post::sign(&key, "dev", 1, b"Subject: x\r\n\r\n".to_vec()),
            Err(PostError::NoMessageId)
        );
    }
}
