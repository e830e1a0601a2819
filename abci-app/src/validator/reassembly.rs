//! Reassembly of streamed proposals, bounded so that hostile peers cannot exhaust a
//! validator's memory or crowd out honest proposals.
//!
//! A proposal travels as a stream of parts (`Init`, `Data`…, `Fin`, then the stream's end
//! marker) that may arrive out of order and through any neighbour. [`Reassembly`] collects
//! them per (publisher, stream id) under [`Limits`]:
//!
//! - only publishers in the current validator set are accepted ([`Reassembly::set_publishers`]);
//! - the stream id names its height (see [`stream_id`]); parts for heights below the current
//!   one or more than [`Limits::max_heights_ahead`] above it are dropped at once, so a flood
//!   for far-future heights costs nothing to keep;
//! - a stream holds at most [`Limits::max_parts`] parts and [`Limits::max_stream_bytes`]
//!   bytes of block data, else it is dropped whole;
//! - a publisher has at most [`Limits::max_streams_per_publisher`] streams open (complete
//!   ones for future heights included). At the cap, a new stream replaces that publisher's
//!   *own* farthest-ahead stream (the oldest among equals) if it is no farther ahead, and is
//!   dropped otherwise. Nothing a publisher sends ever evicts another publisher's stream.
//!
//! So the memory held is at most `validators × max_streams_per_publisher × max_stream_bytes`,
//! whatever peers send. Complete proposals for the current height are returned at once;
//! those for a later height wait until [`Reassembly::advance`] reaches it. The structure is
//! pure (no clock, no I/O): the caller passes the time a part arrived.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamMessage};

use super::types::ProposalPart;

/// Length of a stream id: height, round, and the publisher's stream counter, 8 bytes each
/// (big-endian).
pub const STREAM_ID_LEN: usize = 24;

/// The id of a proposal stream for `height` and `round`; `counter` makes it unique per
/// publisher.
pub fn stream_id(height: u64, round: i64, counter: u64) -> Bytes {
    let mut id = Vec::with_capacity(STREAM_ID_LEN);
    id.extend_from_slice(&height.to_be_bytes());
    id.extend_from_slice(&(round as u64).to_be_bytes());
    id.extend_from_slice(&counter.to_be_bytes());
    Bytes::from(id)
}

/// The height a stream id names; `None` if it is not a stream id of this format.
pub fn stream_height(id: &[u8]) -> Option<u64> {
    (id.len() == STREAM_ID_LEN).then(|| u64::from_be_bytes(id[..8].try_into().expect("8 bytes")))
}

/// The bounds of a [`Reassembly`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of block data (`Data` parts) in one stream.
    pub max_stream_bytes: usize,
    /// Most parts in one stream (`Init` and `Fin` included).
    pub max_parts: u64,
    /// Most streams one publisher may have open.
    pub max_streams_per_publisher: usize,
    /// Highest height accepted, as an offset above the current height.
    pub max_heights_ahead: u64,
}

/// Why a part was dropped (a part of a dropped stream is counted under the stream's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The publisher is not a validator.
    NotAValidator,
    /// The stream id is not [`STREAM_ID_LEN`] bytes.
    BadStreamId,
    /// For a height already passed.
    Stale,
    /// For a height more than [`Limits::max_heights_ahead`] above the current one.
    TooFarAhead,
    /// The stream has more than [`Limits::max_parts`] parts.
    TooManyParts,
    /// The stream has more than [`Limits::max_stream_bytes`] bytes.
    TooManyBytes,
    /// The publisher has [`Limits::max_streams_per_publisher`] streams open, all nearer.
    TooManyStreams,
    /// A stream this publisher opened later, and no farther ahead, took its place.
    Replaced,
    /// An `Init` not first, for another height than its stream id's, or parts after the end.
    Malformed,
}

impl DropReason {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotAValidator => "not_a_validator",
            DropReason::BadStreamId => "bad_stream_id",
            DropReason::Stale => "stale",
            DropReason::TooFarAhead => "too_far_ahead",
            DropReason::TooManyParts => "too_many_parts",
            DropReason::TooManyBytes => "too_many_bytes",
            DropReason::TooManyStreams => "too_many_streams",
            DropReason::Replaced => "replaced",
            DropReason::Malformed => "malformed",
        }
    }
}

/// What became of one received part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Kept; the stream is not complete yet (or complete, for a later height).
    Kept,
    /// The stream is complete and for the current height: its parts, in order.
    Complete(Vec<ProposalPart>),
    /// Dropped, and why.
    Dropped(DropReason),
}

/// A proposal waiting for its height, with the time it was completed (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Its parts, in order.
    pub parts: Vec<ProposalPart>,
    /// When its last part arrived.
    pub completed_at_ms: u64,
}

#[derive(Debug)]
struct Stream {
    height: u64,
    /// Arrival order of its first part (to replace the oldest among equals).
    opened: u64,
    parts: BTreeMap<u64, ProposalPart>,
    bytes: usize,
    /// Sequence number of the end marker, once seen: the number of parts.
    end: Option<u64>,
    completed_at_ms: Option<u64>,
}

/// Streams being reassembled; see the [module docs](self).
#[derive(Debug)]
pub struct Reassembly<P> {
    limits: Limits,
    current: u64,
    publishers: BTreeSet<P>,
    opened: u64,
    streams: BTreeMap<(P, Bytes), Stream>,
    dropped: BTreeMap<DropReason, u64>,
}

impl<P: Ord + Clone> Reassembly<P> {
    /// An empty reassembly at height `current` accepting nobody until
    /// [`set_publishers`](Self::set_publishers).
    pub fn new(limits: Limits, current: u64) -> Self {
        Self {
            limits,
            current,
            publishers: BTreeSet::new(),
            opened: 0,
            streams: BTreeMap::new(),
            dropped: BTreeMap::new(),
        }
    }

    /// The publishers whose parts are accepted (the validators); streams of others are dropped.
    pub fn set_publishers(&mut self, publishers: impl IntoIterator<Item = P>) {
        self.publishers = publishers.into_iter().collect();
        let keep = &self.publishers;
        self.streams.retain(|(p, _), _| keep.contains(p));
    }

    /// The current height.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// How many streams are open (complete ones for later heights included).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes of block data held.
    pub fn held_bytes(&self) -> usize {
        self.streams.values().map(|s| s.bytes).sum()
    }

    /// How many parts were dropped for each reason since the last call; resets the counts.
    pub fn take_dropped(&mut self) -> BTreeMap<DropReason, u64> {
        std::mem::take(&mut self.dropped)
    }

    /// Moves to `height`: forgets streams below it and returns the complete proposals for it
    /// (in the order their publishers and streams sort).
    pub fn advance(&mut self, height: u64) -> Vec<Ready> {
        self.current = height;
        self.streams.retain(|_, s| s.height >= height);
        let done: Vec<(P, Bytes)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.height == height && s.completed_at_ms.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        done.into_iter()
            .filter_map(|k| self.streams.remove(&k))
            .map(|s| Ready {
                completed_at_ms: s.completed_at_ms.unwrap_or_default(),
                parts: s.parts.into_values().collect(),
            })
            .collect()
    }

    fn refuse(&mut self, why: DropReason) -> Received {
        *self.dropped.entry(why).or_default() += 1;
        Received::Dropped(why)
    }

    fn drop_stream(&mut self, key: &(P, Bytes), why: DropReason) -> Received {
        self.streams.remove(key);
        self.refuse(why)
    }

    /// Adds one part from `publisher`, received at `now_ms` (Unix ms).
    pub fn insert(
        &mut self,
        publisher: P,
        msg: StreamMessage<ProposalPart>,
        now_ms: u64,
    ) -> Received {
        if !self.publishers.contains(&publisher) {
            return self.refuse(DropReason::NotAValidator);
        }
        let id = msg.stream_id.to_bytes();
        let Some(height) = stream_height(&id) else {
            return self.refuse(DropReason::BadStreamId);
        };
        if height < self.current {
            return self.refuse(DropReason::Stale);
        }
        if height - self.current > self.limits.max_heights_ahead {
            return self.refuse(DropReason::TooFarAhead);
        }
        let key = (publisher, id);
        let is_end = matches!(msg.content, StreamContent::Fin);
        // The end marker's sequence is the number of parts; a part's is below it. A stream
        // that goes past the limit can never complete: it goes whole.
        if msg.sequence > self.limits.max_parts
            || (!is_end && msg.sequence == self.limits.max_parts)
        {
            return self.drop_stream(&key, DropReason::TooManyParts);
        }
        if !self.streams.contains_key(&key) {
            if let Some(refused) = self.make_room(&key.0, height) {
                return refused;
            }
            self.opened += 1;
            self.streams.insert(
                key.clone(),
                Stream {
                    height,
                    opened: self.opened,
                    parts: BTreeMap::new(),
                    bytes: 0,
                    end: None,
                    completed_at_ms: None,
                },
            );
        }
        let limits = self.limits;
        let stream = self.streams.get_mut(&key).expect("inserted above");
        if stream.completed_at_ms.is_some() {
            return Received::Kept; // a duplicate of a part of a complete stream
        }
        match msg.content {
            StreamContent::Fin => {
                let beyond = stream
                    .parts
                    .keys()
                    .next_back()
                    .is_some_and(|&s| s >= msg.sequence);
                if beyond || stream.end.is_some_and(|e| e != msg.sequence) {
                    return self.drop_stream(&key, DropReason::Malformed);
                }
                stream.end = Some(msg.sequence);
            }
            StreamContent::Data(part) => {
                if stream.end.is_some_and(|e| msg.sequence >= e) {
                    return self.drop_stream(&key, DropReason::Malformed);
                }
                match &part {
                    ProposalPart::Init { height: h, .. } if msg.sequence != 0 || h.0 != height => {
                        return self.drop_stream(&key, DropReason::Malformed);
                    }
                    ProposalPart::Data(d) if !stream.parts.contains_key(&msg.sequence) => {
                        if stream.bytes + d.len() > limits.max_stream_bytes {
                            return self.drop_stream(&key, DropReason::TooManyBytes);
                        }
                        stream.bytes += d.len();
                    }
                    _ => {}
                }
                stream.parts.entry(msg.sequence).or_insert(part);
            }
        }
        if stream.end != Some(stream.parts.len() as u64) {
            return Received::Kept;
        }
        // Every sequence number below the end is present (they are distinct and below it).
        if height == self.current {
            let stream = self.streams.remove(&key).expect("present");
            Received::Complete(stream.parts.into_values().collect())
        } else {
            stream.completed_at_ms = Some(now_ms);
            Received::Kept
        }
    }

    /// Makes room for a new stream of `publisher` at `height`; `Some` if it must be refused.
    fn make_room(&mut self, publisher: &P, height: u64) -> Option<Received> {
        let own: Vec<(&(P, Bytes), &Stream)> = self
            .streams
            .iter()
            .filter(|((p, _), _)| p == publisher)
            .collect();
        if own.len() < self.limits.max_streams_per_publisher {
            return None;
        }
        // The farthest ahead, the oldest among equals.
        let (victim, v) = own
            .into_iter()
            .max_by_key(|(_, s)| (s.height, std::cmp::Reverse(s.opened)))
            .expect("at the cap, so not empty");
        if v.height < height {
            return Some(self.refuse(DropReason::TooManyStreams));
        }
        let victim = victim.clone();
        let parts = self
            .streams
            .remove(&victim)
            .map_or(0, |s| s.parts.len() as u64);
        *self.dropped.entry(DropReason::Replaced).or_default() += parts.max(1);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::types::{Address, Height};
    use malachitebft_app_channel::app::streaming::StreamId;
    use malachitebft_core_types::Round;
    use malachitebft_signing_ed25519::PrivateKey;

    const LIMITS: Limits = Limits {
        max_stream_bytes: 1000,
        max_parts: 6,
        max_streams_per_publisher: 3,
        max_heights_ahead: 2,
    };

    /// The messages of a whole proposal stream for `height`: Init, `chunks` Data, Fin, end.
    fn proposal(height: u64, counter: u64, chunks: &[&[u8]]) -> Vec<StreamMessage<ProposalPart>> {
        let id = StreamId::new(stream_id(height, 0, counter));
        let mut parts = vec![ProposalPart::Init {
            height: Height(height),
            round: Round::new(0),
            pol_round: Round::Nil,
            proposer: Address([1; 20]),
        }];
        parts.extend(
            chunks
                .iter()
                .map(|c| ProposalPart::Data(Bytes::copy_from_slice(c))),
        );
        parts.push(ProposalPart::Fin(PrivateKey::from([3; 32]).sign(b"x")));
        let n = parts.len() as u64;
        let mut msgs: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| StreamMessage::new(id.clone(), i as u64, StreamContent::Data(p)))
            .collect();
        msgs.push(StreamMessage::new(id, n, StreamContent::Fin));
        msgs
    }

    fn feed(r: &mut Reassembly<u8>, who: u8, msgs: Vec<StreamMessage<ProposalPart>>) -> Received {
        let mut last = Received::Kept;
        for m in msgs {
            last = r.insert(who, m, 0);
            if matches!(last, Received::Dropped(_)) {
                return last;
            }
        }
        last
    }

    fn reassembly() -> Reassembly<u8> {
        let mut r = Reassembly::new(LIMITS, 10);
        r.set_publishers([1, 2, 9]);
        r
    }

    #[test]
    fn a_proposal_in_any_order_completes_once() {
        let mut r = reassembly();
        let mut msgs = proposal(10, 1, &[b"ab", b"cd"]);
        msgs.reverse();
        let dup = msgs[2].clone();
        msgs.insert(1, dup);
        let Received::Complete(parts) = feed(&mut r, 1, msgs) else {
            panic!("not complete");
        };
        assert_eq!(parts.len(), 4);
        assert!(matches!(parts[0], ProposalPart::Init { .. }));
        assert_eq!(parts[1], ProposalPart::Data(Bytes::from_static(b"ab")));
        assert!(matches!(parts[3], ProposalPart::Fin(_)));
        assert_eq!(r.open_streams(), 0, "a complete stream is not kept");
    }

    #[test]
    fn far_future_floods_are_dropped_without_touching_honest_streams() {
        let mut r = reassembly();
        // An honest proposal for the current height, half received.
        let honest = proposal(10, 1, &[b"honest"]);
        for m in &honest[..2] {
            assert_eq!(r.insert(1, m.clone(), 0), Received::Kept);
        }
        // A flood from validator 9: thousands of streams for far-future heights, stale
        // heights, bad ids, and the cap's worth for in-window heights.
        for i in 0..5_000u64 {
            let far = proposal(13 + i, i, &[b"junk"]);
            assert_eq!(
                feed(&mut r, 9, far),
                Received::Dropped(DropReason::TooFarAhead)
            );
            assert_eq!(
                feed(&mut r, 9, proposal(9 - i % 9, i, &[b"old"])),
                Received::Dropped(DropReason::Stale)
            );
            let bad = StreamMessage::new(
                StreamId::new(Bytes::from(i.to_be_bytes().to_vec())),
                0,
                StreamContent::Fin,
            );
            assert_eq!(
                r.insert(9, bad, 0),
                Received::Dropped(DropReason::BadStreamId)
            );
        }
        for i in 0..100u64 {
            // Incomplete streams (no end marker) at heights 11 and 12.
            let mut msgs = proposal(11 + i % 2, 10_000 + i, &[b"x"]);
            msgs.pop();
            feed(&mut r, 9, msgs);
        }
        // A non-validator is refused outright.
        assert_eq!(
            feed(&mut r, 7, proposal(10, 5, &[b"y"])),
            Received::Dropped(DropReason::NotAValidator)
        );
        assert!(r.open_streams() <= 1 + LIMITS.max_streams_per_publisher);
        // The honest stream is still there and completes.
        let Received::Complete(parts) = feed(&mut r, 1, honest[2..].to_vec()) else {
            panic!("the honest stream was evicted");
        };
        assert_eq!(parts[1], ProposalPart::Data(Bytes::from_static(b"honest")));
        let dropped = r.take_dropped();
        assert_eq!(dropped[&DropReason::TooFarAhead], 5_000);
        assert_eq!(dropped[&DropReason::NotAValidator], 1);
        assert!(dropped[&DropReason::Replaced] > 0);
        assert!(r.take_dropped().is_empty(), "counts reset");
    }

    #[test]
    fn a_publisher_at_its_cap_only_replaces_its_own_farther_streams() {
        let mut r = reassembly();
        let open = |r: &mut Reassembly<u8>, who, h, c| {
            let mut m = proposal(h, c, &[b"z"]);
            m.pop();
            feed(r, who, m)
        };
        // Validator 2 has one stream open at the current height.
        assert_eq!(open(&mut r, 2, 10, 1), Received::Kept);
        // Validator 9 fills its cap with streams two heights ahead...
        for c in 0..3 {
            assert_eq!(open(&mut r, 9, 12, c), Received::Kept);
        }
        // ... a fourth, farther than none of them, replaces its own oldest at that height ...
        assert_eq!(open(&mut r, 9, 12, 3), Received::Kept);
        // ... one for a nearer height replaces one of its height-12 streams ...
        assert_eq!(open(&mut r, 9, 10, 4), Received::Kept);
        assert_eq!(open(&mut r, 9, 11, 5), Received::Kept);
        assert_eq!(open(&mut r, 9, 11, 6), Received::Kept);
        // ... and now that all are nearer than 12, a height-12 stream is refused.
        assert_eq!(
            open(&mut r, 9, 12, 7),
            Received::Dropped(DropReason::TooManyStreams)
        );
        assert_eq!(r.open_streams(), 1 + 3);
        // Validator 2's stream survived all of it.
        let rest = proposal(10, 1, &[b"z"]);
        assert!(matches!(
            feed(&mut r, 2, rest[2..].to_vec()),
            Received::Complete(_)
        ));
    }

    #[test]
    fn streams_are_bounded_in_bytes_and_parts() {
        let mut r = reassembly();
        let big = [0u8; 400];
        let too_big = proposal(10, 1, &[&big, &big, &big]);
        assert_eq!(
            feed(&mut r, 1, too_big),
            Received::Dropped(DropReason::TooManyBytes)
        );
        assert_eq!(
            r.open_streams(),
            0,
            "a stream over the limit is dropped whole"
        );
        let fits = proposal(10, 2, &[&big, &big]);
        assert!(matches!(feed(&mut r, 1, fits), Received::Complete(_)));
        let many = proposal(10, 3, &[b"1", b"2", b"3", b"4", b"5"]);
        assert_eq!(
            feed(&mut r, 1, many),
            Received::Dropped(DropReason::TooManyParts)
        );
        // A duplicate part is not counted twice.
        let msgs = proposal(10, 4, &[&big, &big]);
        for _ in 0..5 {
            assert_eq!(r.insert(1, msgs[1].clone(), 0), Received::Kept);
        }
        assert_eq!(r.held_bytes(), 400);
    }

    #[test]
    fn malformed_streams_are_dropped() {
        let mut r = reassembly();
        // Init for another height than the stream id says.
        let mut lying = proposal(10, 1, &[b"a"]);
        let StreamContent::Data(ProposalPart::Init { height, .. }) = &mut lying[0].content else {
            unreachable!()
        };
        *height = Height(11);
        assert_eq!(
            feed(&mut r, 1, lying),
            Received::Dropped(DropReason::Malformed)
        );
        // A part after the end marker.
        let msgs = proposal(10, 2, &[b"a", b"b"]);
        let end = msgs.last().unwrap().clone();
        let end_early = StreamMessage::new(end.stream_id.clone(), 2, StreamContent::Fin);
        assert_eq!(r.insert(1, end_early, 0), Received::Kept);
        assert_eq!(
            r.insert(1, msgs[3].clone(), 0),
            Received::Dropped(DropReason::Malformed)
        );
        assert_eq!(r.open_streams(), 0);
    }

    #[test]
    fn proposals_for_later_heights_wait_for_their_height() {
        let mut r = reassembly();
        assert_eq!(feed(&mut r, 1, proposal(11, 1, &[b"next"])), Received::Kept);
        let mut partial = proposal(12, 2, &[b"after"]);
        partial.pop();
        feed(&mut r, 2, partial);
        assert_eq!(
            r.insert(1, proposal(12, 3, &[b"z"])[0].clone(), 5),
            Received::Kept
        );
        assert!(r.advance(10).is_empty());
        let ready = r.advance(11);
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].parts[1],
            ProposalPart::Data(Bytes::from_static(b"next"))
        );
        assert_eq!(r.open_streams(), 2, "height 12 streams stay");
        assert!(r.advance(13).is_empty());
        assert_eq!(r.open_streams(), 0, "passed heights are forgotten");
        // The window moved: height 15 is now in it.
        assert_eq!(feed(&mut r, 1, proposal(15, 4, &[b"w"])), Received::Kept);
        assert_eq!(
            feed(&mut r, 1, proposal(16, 5, &[b"w"])),
            Received::Dropped(DropReason::TooFarAhead)
        );
    }

    #[test]
    fn only_validators_are_heard() {
        let mut r = reassembly();
        let mut partial = proposal(10, 1, &[b"a"]);
        partial.pop();
        feed(&mut r, 2, partial);
        r.set_publishers([1]);
        assert_eq!(r.open_streams(), 0, "a removed validator's streams go");
        assert_eq!(
            feed(&mut r, 2, proposal(10, 2, &[b"a"])),
            Received::Dropped(DropReason::NotAValidator)
        );
    }
}
