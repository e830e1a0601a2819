//! The harnesses behind the fuzz targets in `fuzz_targets/`, kept in a library so the seed
//! corpus generator (`src/bin/seeds.rs`) builds inputs in the same format the harnesses read.
//!
//! - [`tx_execute`]: transaction decoding plus execution over an in-memory state;
//! - [`wire_codec`]: the validators' consensus wire codec;
//! - [`proof_verify`]: Merkle proof and commit-certificate verification.
//!
//! Each harness panics only on a bug: a panic in the code under test, or a broken property
//! it checks (stated in its doc).

pub mod proof_verify;
pub mod tx_execute;
pub mod wire_codec;

/// Splits off the first `n` bytes (or fewer, at the end of the input).
pub(crate) fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

/// One byte, 0 once the input is used up.
pub(crate) fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

/// A little-endian u16, 0-padded at the end of the input.
pub(crate) fn u16le(data: &mut &[u8]) -> u16 {
    let lo = byte(data) as u16;
    let hi = byte(data) as u16;
    lo | (hi << 8)
}
