//! The validators' wire and write-ahead-log encoding of consensus messages.
//!
//! Malachite leaves the encoding to the application. Its message types have no common serde
//! or borsh support, so this is a small length-prefixed binary format written by hand: a
//! [`Wire`] trait implemented for every type the engine sends or logs, and one [`WireCodec`]
//! that serves as network, sync and WAL codec. Decoding never panics on hostile input.

use std::ops::RangeInclusive;

use bytes::Bytes;
use malachitebft_app_channel::app::consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::PeerId;
use malachitebft_app_channel::app::types::codec::{Codec, HasEncodedLen};
use malachitebft_core_types::{
    CommitCertificate, CommitSignature, ExtendedCommitCertificate, ExtendedCommitSignature,
    NilOrVal, PolkaCertificate, PolkaSignature, Round, RoundCertificate, RoundCertificateType,
    RoundSignature, SignedMessage, ValidatorProof, Validity, VoteType,
};
use malachitebft_signing_ed25519::Signature;
use malachitebft_sync::{RawDecidedValue, Request, Response, Status, ValueRequest, ValueResponse};

use super::types::{
    Address, BlockHash, Height, LedgerContext, Proposal, ProposalPart, Value, Vote,
};

/// Largest length prefix accepted when decoding (a whole sync response fits).
const MAX_LEN: usize = 64 << 20;

/// A message that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode consensus message: {0}")]
pub struct WireError(String);

impl WireError {
    /// An error with this message.
    pub fn from_msg(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(what.into()))
}

/// Encoding of one type.
pub trait Wire: Sized {
    /// Appends the encoding of `self`.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads one value from the front of `input`.
    fn get(input: &mut &[u8]) -> Result<Self, WireError>;
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if input.len() < n {
        return err(format!("truncated: wanted {n} bytes, {} left", input.len()));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], WireError> {
    Ok(take(input, N)?.try_into().expect("length checked"))
}

impl Wire for u8 {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(take(input, 1)?[0])
    }
}

impl Wire for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(u64::from_be_bytes(array(input)?))
    }
}

impl Wire for Vec<u8> {
    fn put(&self, out: &mut Vec<u8>) {
        (self.len() as u64).put(out);
        out.extend_from_slice(self);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let n = u64::get(input)? as usize;
        if n > MAX_LEN {
            return err(format!("length {n} exceeds the limit"));
        }
        Ok(take(input, n)?.to_vec())
    }
}

impl Wire for Bytes {
    fn put(&self, out: &mut Vec<u8>) {
        (self.len() as u64).put(out);
        out.extend_from_slice(self);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Vec::<u8>::get(input).map(Bytes::from)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::get(input)? {
            0 => Ok(None),
            1 => T::get(input).map(Some),
            t => err(format!("bad option tag {t}")),
        }
    }
}

/// Vectors of structured items (byte vectors have their own impl above).
struct List<T>(Vec<T>);

impl<T: Wire> Wire for List<T> {
    fn put(&self, out: &mut Vec<u8>) {
        (self.0.len() as u64).put(out);
        for v in &self.0 {
            v.put(out);
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let n = u64::get(input)? as usize;
        if n > input.len() {
            return err(format!("list of {n} items in {} bytes", input.len()));
        }
        (0..n)
            .map(|_| T::get(input))
            .collect::<Result<_, _>>()
            .map(List)
    }
}

fn put_list<T: Wire + Clone>(v: &[T], out: &mut Vec<u8>) {
    List(v.to_vec()).put(out)
}

fn get_list<T: Wire>(input: &mut &[u8]) -> Result<Vec<T>, WireError> {
    List::get(input).map(|l| l.0)
}

impl Wire for Height {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out)
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        u64::get(input).map(Height)
    }
}

impl Wire for Address {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0)
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        array(input).map(Address)
    }
}

impl Wire for BlockHash {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0)
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        array(input).map(BlockHash)
    }
}

impl Wire for Value {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out)
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        BlockHash::get(input).map(Value)
    }
}

impl Wire for Round {
    fn put(&self, out: &mut Vec<u8>) {
        (self.as_i64() as u64).put(out)
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        match u64::get(input)? as i64 {
            -1 => Ok(Round::Nil),
            r if (0..=u32::MAX as i64).contains(&r) => Ok(Round::new(r as u32)),
            r => err(format!("bad round {r}")),
        }
    }
}

impl Wire for Signature {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes())
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        array(input).map(Signature::from_bytes)
    }
}

impl Wire for VoteType {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(match self {
            VoteType::Prevote => 1,
            VoteType::Precommit => 2,
        })
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::get(input)? {
            1 => Ok(VoteType::Prevote),
            2 => Ok(VoteType::Precommit),
            t => err(format!("bad vote type {t}")),
        }
    }
}

impl Wire for NilOrVal<BlockHash> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            NilOrVal::Nil => None::<BlockHash>.put(out),
            NilOrVal::Val(v) => Some(*v).put(out),
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(match Option::<BlockHash>::get(input)? {
            None => NilOrVal::Nil,
            Some(v) => NilOrVal::Val(v),
        })
    }
}

impl<M: Wire> Wire for SignedMessage<LedgerContext, M> {
    fn put(&self, out: &mut Vec<u8>) {
        self.message.put(out);
        self.signature.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let message = M::get(input)?;
        Ok(SignedMessage::new(message, Signature::get(input)?))
    }
}

impl Wire for Vote {
    fn put(&self, out: &mut Vec<u8>) {
        self.vote_type.put(out);
        self.height.put(out);
        self.round.put(out);
        self.value.put(out);
        self.voter.put(out);
        self.extension.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Vote {
            vote_type: Wire::get(input)?,
            height: Wire::get(input)?,
            round: Wire::get(input)?,
            value: Wire::get(input)?,
            voter: Wire::get(input)?,
            extension: Wire::get(input)?,
        })
    }
}

impl Wire for Proposal {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value.put(out);
        self.pol_round.put(out);
        self.proposer.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Proposal {
            height: Wire::get(input)?,
            round: Wire::get(input)?,
            value: Wire::get(input)?,
            pol_round: Wire::get(input)?,
            proposer: Wire::get(input)?,
        })
    }
}

impl Wire for ProposalPart {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            ProposalPart::Init {
                height,
                round,
                pol_round,
                proposer,
            } => {
                out.push(1);
                height.put(out);
                round.put(out);
                pol_round.put(out);
                proposer.put(out);
            }
            ProposalPart::Data(d) => {
                out.push(2);
                d.put(out);
            }
            ProposalPart::Fin(s) => {
                out.push(3);
                s.put(out);
            }
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::get(input)? {
            1 => Ok(ProposalPart::Init {
                height: Wire::get(input)?,
                round: Wire::get(input)?,
                pol_round: Wire::get(input)?,
                proposer: Wire::get(input)?,
            }),
            2 => Bytes::get(input).map(ProposalPart::Data),
            3 => Signature::get(input).map(ProposalPart::Fin),
            t => err(format!("bad proposal part tag {t}")),
        }
    }
}

impl Wire for SignedConsensusMsg<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            SignedConsensusMsg::Vote(v) => {
                out.push(1);
                v.put(out)
            }
            SignedConsensusMsg::Proposal(p) => {
                out.push(2);
                p.put(out)
            }
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::get(input)? {
            1 => Wire::get(input).map(SignedConsensusMsg::Vote),
            2 => Wire::get(input).map(SignedConsensusMsg::Proposal),
            t => err(format!("bad consensus message tag {t}")),
        }
    }
}

impl Wire for PolkaSignature<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.address.put(out);
        self.signature.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(PolkaSignature::new(Wire::get(input)?, Wire::get(input)?))
    }
}

impl Wire for PolkaCertificate<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value_id.put(out);
        put_list(&self.polka_signatures, out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(PolkaCertificate {
            height: Wire::get(input)?,
            round: Wire::get(input)?,
            value_id: Wire::get(input)?,
            polka_signatures: get_list(input)?,
        })
    }
}

impl Wire for RoundSignature<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.vote_type.put(out);
        self.value_id.put(out);
        self.address.put(out);
        self.signature.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(RoundSignature::new(
            Wire::get(input)?,
            Wire::get(input)?,
            Wire::get(input)?,
            Wire::get(input)?,
        ))
    }
}

impl Wire for RoundCertificate<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        out.push(match self.cert_type {
            RoundCertificateType::Skip => 1,
            RoundCertificateType::Precommit => 2,
        });
        put_list(&self.round_signatures, out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let height = Wire::get(input)?;
        let round = Wire::get(input)?;
        let cert_type = match u8::get(input)? {
            1 => RoundCertificateType::Skip,
            2 => RoundCertificateType::Precommit,
            t => return err(format!("bad round certificate type {t}")),
        };
        Ok(RoundCertificate {
            height,
            round,
            cert_type,
            round_signatures: get_list(input)?,
        })
    }
}

impl Wire for LivenessMsg<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            LivenessMsg::Vote(v) => {
                out.push(1);
                v.put(out)
            }
            LivenessMsg::PolkaCertificate(c) => {
                out.push(2);
                c.put(out)
            }
            LivenessMsg::SkipRoundCertificate(c) => {
                out.push(3);
                c.put(out)
            }
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::get(input)? {
            1 => Wire::get(input).map(LivenessMsg::Vote),
            2 => Wire::get(input).map(LivenessMsg::PolkaCertificate),
            3 => Wire::get(input).map(LivenessMsg::SkipRoundCertificate),
            t => err(format!("bad liveness message tag {t}")),
        }
    }
}

impl Wire for CommitSignature<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.address.put(out);
        self.signature.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(CommitSignature::new(Wire::get(input)?, Wire::get(input)?))
    }
}

impl Wire for CommitCertificate<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value_id.put(out);
        put_list(&self.commit_signatures, out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(CommitCertificate {
            height: Wire::get(input)?,
            round: Wire::get(input)?,
            value_id: Wire::get(input)?,
            commit_signatures: get_list(input)?,
        })
    }
}

impl Wire for ExtendedCommitSignature<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.address.put(out);
        self.signature.put(out);
        self.extension.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(ExtendedCommitSignature {
            address: Wire::get(input)?,
            signature: Wire::get(input)?,
            extension: Wire::get(input)?,
        })
    }
}

impl Wire for ExtendedCommitCertificate<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value_id.put(out);
        put_list(&self.commit_signatures, out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(ExtendedCommitCertificate {
            height: Wire::get(input)?,
            round: Wire::get(input)?,
            value_id: Wire::get(input)?,
            commit_signatures: get_list(input)?,
        })
    }
}

impl Wire for StreamMessage<ProposalPart> {
    fn put(&self, out: &mut Vec<u8>) {
        self.stream_id.to_bytes().put(out);
        self.sequence.put(out);
        match &self.content {
            StreamContent::Data(p) => {
                out.push(1);
                p.put(out)
            }
            StreamContent::Fin => out.push(2),
        }
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let stream_id = StreamId::new(Bytes::get(input)?);
        let sequence = u64::get(input)?;
        let content = match u8::get(input)? {
            1 => StreamContent::Data(ProposalPart::get(input)?),
            2 => StreamContent::Fin,
            t => return err(format!("bad stream content tag {t}")),
        };
        Ok(StreamMessage::new(stream_id, sequence, content))
    }
}

impl Wire for ValidatorProof<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.public_key.put(out);
        self.peer_id.put(out);
        self.signature.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(ValidatorProof::new(
            Wire::get(input)?,
            Wire::get(input)?,
            Wire::get(input)?,
        ))
    }
}

impl Wire for PeerId {
    fn put(&self, out: &mut Vec<u8>) {
        self.to_bytes().put(out)
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let b = Vec::<u8>::get(input)?;
        PeerId::from_bytes(&b).map_err(|e| WireError(format!("bad peer id: {e}")))
    }
}

impl Wire for Status<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.peer_id.put(out);
        self.tip_height.put(out);
        self.history_min_height.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Status {
            peer_id: Wire::get(input)?,
            tip_height: Wire::get(input)?,
            history_min_height: Wire::get(input)?,
        })
    }
}

impl Wire for Request<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        let Request::ValueRequest(r) = self;
        r.range.start().put(out);
        r.range.end().put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        let start = Height::get(input)?;
        let end = Height::get(input)?;
        let range: RangeInclusive<Height> = start..=end;
        Ok(Request::ValueRequest(ValueRequest::new(range)))
    }
}

impl Wire for RawDecidedValue<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.value_bytes.put(out);
        self.certificate.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(RawDecidedValue {
            value_bytes: Wire::get(input)?,
            certificate: Wire::get(input)?,
        })
    }
}

impl Wire for Response<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        let Response::ValueResponse(r) = self;
        r.start_height.put(out);
        put_list(&r.values, out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Response::ValueResponse(ValueResponse {
            start_height: Wire::get(input)?,
            values: get_list(input)?,
        }))
    }
}

impl Wire for ProposedValue<LedgerContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.valid_round.put(out);
        self.proposer.put(out);
        self.value.put(out);
        out.push(match self.validity {
            Validity::Valid => 1,
            Validity::Invalid => 0,
        });
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(ProposedValue {
            height: Wire::get(input)?,
            round: Wire::get(input)?,
            valid_round: Wire::get(input)?,
            proposer: Wire::get(input)?,
            value: Wire::get(input)?,
            validity: match u8::get(input)? {
                1 => Validity::Valid,
                0 => Validity::Invalid,
                t => return err(format!("bad validity {t}")),
            },
        })
    }
}

/// Encodes `v` into a fresh buffer.
pub fn encode<T: Wire>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.put(&mut out);
    out
}

/// Decodes exactly one `T` from `bytes` (trailing bytes are an error).
pub fn decode<T: Wire>(mut bytes: &[u8]) -> Result<T, WireError> {
    let v = T::get(&mut bytes)?;
    if !bytes.is_empty() {
        return err(format!("{} trailing bytes", bytes.len()));
    }
    Ok(v)
}

/// The network, sync and WAL codec of a validator.
#[derive(Clone, Copy, Debug, Default)]
pub struct WireCodec;

impl<T: Wire + Send + Sync + 'static> Codec<T> for WireCodec {
    type Error = WireError;

    fn decode(&self, bytes: Bytes) -> Result<T, WireError> {
        decode(&bytes)
    }

    fn encode(&self, msg: &T) -> Result<Bytes, WireError> {
        Ok(Bytes::from(encode(msg)))
    }
}

impl<T: Wire + Send + Sync + 'static> HasEncodedLen<T> for WireCodec {
    fn encoded_len(&self, msg: &T) -> Result<usize, WireError> {
        Ok(encode(msg).len())
    }
}

/// The version byte that begins every WAL entry this build writes.
pub const WAL_ENTRY_VERSION: u8 = 1;

/// The write-ahead log's codec: [`WireCodec`] behind a version byte, so a WAL written by a
/// build with another entry format is refused on replay, not misread. (The network and sync
/// codecs need none: peers of different formats simply fail to decode each other's messages.)
#[derive(Clone, Copy, Debug, Default)]
pub struct WalCodec;

impl<T: Wire + Send + Sync + 'static> Codec<T> for WalCodec {
    type Error = WireError;

    fn decode(&self, bytes: Bytes) -> Result<T, WireError> {
        match bytes.split_first() {
            Some((&WAL_ENTRY_VERSION, rest)) => decode(rest),
            Some((v, _)) => err(format!(
                "WAL entry is in format version {v}, but this build reads only version {WAL_ENTRY_VERSION}: the WAL was written by another version of onionpost-ledger"
            )),
            None => err("empty WAL entry"),
        }
    }

    fn encode(&self, msg: &T) -> Result<Bytes, WireError> {
        let mut out = vec![WAL_ENTRY_VERSION];
        msg.put(&mut out);
        Ok(Bytes::from(out))
    }
}

impl<T: Wire + Send + Sync + 'static> HasEncodedLen<T> for WalCodec {
    fn encoded_len(&self, msg: &T) -> Result<usize, WireError> {
        Ok(1 + encode(msg).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use malachitebft_signing_ed25519::PrivateKey;

    #[test]
    fn wal_entries_carry_a_version_and_another_is_refused() {
        let v: u64 = 42;
        let bytes = Codec::<u64>::encode(&WalCodec, &v).unwrap();
        assert_eq!(bytes[0], WAL_ENTRY_VERSION);
        assert_eq!(Codec::<u64>::decode(&WalCodec, bytes.clone()).unwrap(), v);
        let mut newer = bytes.to_vec();
        newer[0] = 2;
        let e = Codec::<u64>::decode(&WalCodec, Bytes::from(newer)).unwrap_err();
        assert!(e.to_string().contains("format version 2"), "{e}");
    }

    fn sig(seed: u8) -> Signature {
        PrivateKey::from([seed; 32]).sign(b"x")
    }

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = encode(&v);
        assert_eq!(decode::<T>(&bytes).unwrap(), v);
        // Every truncation is an error, never a panic.
        for n in 0..bytes.len() {
            assert!(decode::<T>(&bytes[..n]).is_err(), "truncated at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<T>(&longer).is_err(), "trailing byte");
    }

    #[test]
    fn consensus_messages_round_trip() {
        let vote = Vote {
            vote_type: VoteType::Precommit,
            height: Height(7),
            round: Round::new(2),
            value: NilOrVal::Val(BlockHash([3; 32])),
            voter: Address([4; 20]),
            extension: None,
        };
        round_trip(SignedConsensusMsg::<LedgerContext>::Vote(
            SignedMessage::new(vote.clone(), sig(1)),
        ));
        let nil = Vote {
            value: NilOrVal::Nil,
            round: Round::Nil,
            ..vote.clone()
        };
        round_trip(nil);
        round_trip(SignedConsensusMsg::<LedgerContext>::Proposal(
            SignedMessage::new(
                Proposal {
                    height: Height(7),
                    round: Round::new(0),
                    value: Value(BlockHash([9; 32])),
                    pol_round: Round::Nil,
                    proposer: Address([1; 20]),
                },
                sig(2),
            ),
        ));
        round_trip(StreamMessage::new(
            StreamId::new(Bytes::from_static(b"s1")),
            3,
            StreamContent::Data(ProposalPart::Data(Bytes::from_static(b"block bytes"))),
        ));
        round_trip(StreamMessage::<ProposalPart>::new(
            StreamId::new(Bytes::new()),
            4,
            StreamContent::Fin,
        ));
        round_trip(CommitCertificate::<LedgerContext> {
            height: Height(5),
            round: Round::new(1),
            value_id: BlockHash([8; 32]),
            commit_signatures: vec![CommitSignature::new(Address([1; 20]), sig(3))],
        });
        round_trip(LivenessMsg::<LedgerContext>::PolkaCertificate(
            PolkaCertificate {
                height: Height(1),
                round: Round::new(0),
                value_id: BlockHash([2; 32]),
                polka_signatures: vec![PolkaSignature::new(Address([5; 20]), sig(4))],
            },
        ));
    }

    #[test]
    fn hostile_lengths_are_rejected() {
        let mut bytes = Vec::new();
        (u64::MAX).put(&mut bytes);
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<Response<LedgerContext>>(&[0; 16]).is_ok_and(|r| {
            let Response::ValueResponse(v) = r;
            v.values.is_empty()
        }));
        let mut huge_list = Vec::new();
        Height(1).put(&mut huge_list);
        (1u64 << 40).put(&mut huge_list);
        assert!(decode::<Response<LedgerContext>>(&huge_list).is_err());
    }
}
