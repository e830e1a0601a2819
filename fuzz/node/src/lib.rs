//! Harnesses for the mail node's sans-I/O protocol sessions.
//!
//! - [`smtp_session`]: the SMTP server session (inbound and submission), DATA reader
//!   included;
//! - [`imap_session`]: the IMAP session over an in-memory mail store.
//!
//! Inputs are split into chunks at positions the input chooses, so the fuzzer explores how
//! commands, literals and message data are cut across reads.

pub mod imap_session;
pub mod smtp_session;

/// Splits `data` into (control bytes, payload): the first byte says how many control bytes
/// follow; each control byte is the length of the next chunk of payload (0 means 1).
pub fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let Some((&n, rest)) = data.split_first() else {
        return Vec::new();
    };
    let n = (n as usize).min(rest.len());
    let (ctl, mut payload) = rest.split_at(n);
    let mut out = Vec::new();
    for &c in ctl {
        if payload.is_empty() {
            break;
        }
        let k = (c as usize).max(1).min(payload.len());
        let (head, tail) = payload.split_at(k);
        out.push(head);
        payload = tail;
    }
    if !payload.is_empty() {
        out.push(payload);
    }
    out
}
