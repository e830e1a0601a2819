//! Modified UTF-7 (RFC 3501 §5.1.3), the encoding of mailbox names on the IMAP4rev1 wire.
//!
//! Written here because no maintained crate on crates.io does just this; the base64 part is
//! the `base64` crate's `IMAP_MUTF7` alphabet. Printable ASCII stands for itself (`&` is
//! `&-`); everything else is UTF-16BE in that base64 between `&` and `-`.

use base64::Engine;
use base64::alphabet::IMAP_MUTF7;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const B64: GeneralPurpose = GeneralPurpose::new(
    &IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

fn direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// Encodes a UTF-8 mailbox name for the wire.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<u16>| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&B64.encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in name.chars() {
        if direct(c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// Why a name on the wire is not modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mailbox name is not modified UTF-7: {0}")]
pub struct Utf7Error(&'static str);

/// Decodes a mailbox name from the wire into UTF-8.
pub fn decode(wire: &[u8]) -> Result<String, Utf7Error> {
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    while i < wire.len() {
        let b = wire[i];
        if b != b'&' {
            if !(0x20..=0x7e).contains(&b) {
                return Err(Utf7Error("8-bit or control byte (use &...- for non-ASCII)"));
            }
            out.push(b as char);
            i += 1;
            continue;
        }
        let end = wire[i + 1..]
            .iter()
            .position(|&c| c == b'-')
            .map(|p| i + 1 + p)
            .ok_or(Utf7Error("'&' without a closing '-'"))?;
        let chunk = &wire[i + 1..end];
        if chunk.is_empty() {
            out.push('&');
        } else {
            let bytes = B64
                .decode(chunk)
                .map_err(|_| Utf7Error("bad modified base64"))?;
            if bytes.len() % 2 != 0 {
                return Err(Utf7Error("odd number of UTF-16 bytes"));
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            for c in char::decode_utf16(units) {
                let c = c.map_err(|_| Utf7Error("unpaired UTF-16 surrogate"))?;
                if direct(c) {
                    return Err(Utf7Error("printable ASCII must not be base64-encoded"));
                }
                out.push(c);
            }
        }
        i = end + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples_and_round_trips() {
        // RFC 3501 §5.1.3.
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(
            decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(),
            "~peter/mail/台北/日本語"
        );
        assert_eq!(encode("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(decode(b"Tom &- Jerry").unwrap(), "Tom & Jerry");
        for s in [
            "Entwürfe",
            "Gelöschte Elemente",
            "😀 smile",
            "a&b",
            "Отправленные",
            "",
        ] {
            assert_eq!(decode(encode(s).as_bytes()).unwrap(), s, "{s}");
        }
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
    }

    #[test]
    fn malformed_names_are_refused() {
        assert!(decode("Entwürfe".as_bytes()).is_err(), "raw UTF-8");
        assert!(decode(b"&U,BTFw").is_err(), "unterminated");
        assert!(decode(b"&AGE-").is_err(), "'a' encoded");
        assert!(decode(b"&2D0-").is_err(), "lone surrogate");
        assert!(decode(b"&A-").is_err(), "bad base64");
        assert!(decode(b"a\x01b").is_err(), "control");
    }
}
