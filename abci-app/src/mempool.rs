//! Transactions that passed CheckTx and wait for a block.
//!
//! Under CometBFT the mempool is CometBFT's; this one serves the gRPC `SubmitTx` of a
//! standalone ledger and, on the devnet, feeds the embedded engine's proposals.
//! Bounded, first-in first-out, deduplicated by transaction hash.
//!
//! Registration is anonymous and free, so a flood of registrations is the cheapest flood
//! there is. The mempool keeps registrations in a lane of their own, with its own capacity
//! ([`MempoolLimits::registrations`]): a flood fills that lane and is refused there, while
//! transactions of registered identities still find room. Those have a per-signer limit
//! ([`MempoolLimits::per_signer`]) so that no single identity can fill the rest. And a block
//! takes at most [`MAX_REGISTRATIONS_PER_BLOCK`] registrations ([`Mempool::peek`] skips the
//! others, which wait for later blocks), so a waiting flood never delays the transactions
//! behind it. docs/ledger.md says why this mechanism and not another.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use onionpost_proto::tx::DecodedTx;
use onionpost_proto::v1::tx_body::Action;

/// Most registrations one block may carry: a consensus rule (ProcessProposal rejects a block
/// with more), and what proposals built from this mempool respect.
pub const MAX_REGISTRATIONS_PER_BLOCK: usize = 2_048;

/// How much the mempool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolLimits {
    /// Transactions of registered identities.
    pub capacity: usize,
    /// Registrations (the anonymous lane).
    pub registrations: usize,
    /// Waiting transactions of any one registered identity.
    pub per_signer: usize,
}

impl MempoolLimits {
    /// `capacity` transactions of registered identities, as many registrations, and 256 per
    /// signer.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            registrations: capacity,
            per_signer: 256,
        }
    }
}

/// Why the mempool did not take a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// Already there.
    #[error("transaction is already in the mempool")]
    Duplicate,
    /// Full.
    #[error("mempool is full ({0} transactions); retry after the next block")]
    Full(usize),
    /// The registration lane is full.
    #[error(
        "the mempool's lane for registrations is full ({0} registrations are already waiting); retry after the next block"
    )]
    RegistrationsFull(usize),
    /// The signer has too many transactions waiting.
    #[error(
        "this identity already has {0} transactions waiting, the most the mempool holds for one identity; retry after the next block"
    )]
    SignerFull(usize),
}

/// A bounded FIFO of encoded transactions.
pub struct Mempool {
    limits: MempoolLimits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Entry>,
    hashes: HashSet<[u8; 32]>,
    registrations: usize,
    per_signer: HashMap<[u8; 32], usize>,
}

impl Inner {
    fn others(&self) -> usize {
        self.queue.len() - self.registrations
    }
}

/// A waiting transaction: its hash, its bytes, and its decoded form for re-checks.
struct Entry {
    hash: [u8; 32],
    raw: Vec<u8>,
    decoded: DecodedTx,
}

/// Whether `tx` is an anonymous registration.
pub fn is_registration(tx: &DecodedTx) -> bool {
    matches!(tx.action, Action::RegisterIdentity(_))
}

impl Mempool {
    /// An empty mempool holding at most `capacity` transactions of registered identities and
    /// as many registrations.
    pub fn new(capacity: usize) -> Self {
        Self::with_limits(MempoolLimits::with_capacity(capacity))
    }

    /// An empty mempool with these limits.
    pub fn with_limits(limits: MempoolLimits) -> Self {
        Self {
            limits,
            inner: Mutex::default(),
        }
    }

    /// Why `tx` would not be taken now for lack of room, if it would not.
    pub fn room_for(&self, tx: &DecodedTx) -> Result<(), MempoolError> {
        let inner = self.inner.lock().expect("lock poisoned");
        self.room(&inner, tx)
    }

    fn room(&self, inner: &Inner, tx: &DecodedTx) -> Result<(), MempoolError> {
        if is_registration(tx) {
            if inner.registrations >= self.limits.registrations {
                return Err(MempoolError::RegistrationsFull(inner.registrations));
            }
        } else {
            if inner.others() >= self.limits.capacity {
                return Err(MempoolError::Full(self.limits.capacity));
            }
            let mine = inner.per_signer.get(&tx.signer).copied().unwrap_or(0);
            if mine >= self.limits.per_signer {
                return Err(MempoolError::SignerFull(mine));
            }
        }
        Ok(())
    }

    /// Queues a transaction (`decoded` is its decoded form, kept for re-checks).
    pub fn insert(
        &self,
        hash: [u8; 32],
        tx: Vec<u8>,
        decoded: DecodedTx,
    ) -> Result<(), MempoolError> {
        let mut inner = self.inner.lock().expect("lock poisoned");
        if inner.hashes.contains(&hash) {
            return Err(MempoolError::Duplicate);
        }
        self.room(&inner, &decoded)?;
        if is_registration(&decoded) {
            inner.registrations += 1;
        } else {
            *inner.per_signer.entry(decoded.signer).or_insert(0) += 1;
        }
        inner.hashes.insert(hash);
        inner.queue.push_back(Entry {
            hash,
            raw: tx,
            decoded,
        });
        Ok(())
    }

    /// The oldest transactions, up to `max_bytes` in total, without removing them, for the
    /// next block: at most [`MAX_REGISTRATIONS_PER_BLOCK`] registrations; the registrations
    /// past that (and any later transaction of the identities they register) are skipped,
    /// not waited for, so the transactions behind a flood of registrations go into this
    /// block.
    pub fn peek(&self, max_bytes: usize) -> Vec<Vec<u8>> {
        let inner = self.inner.lock().expect("lock poisoned");
        let mut total = 0;
        let mut registrations = 0;
        let mut deferred: HashSet<[u8; 32]> = HashSet::new();
        let mut out = Vec::new();
        for e in &inner.queue {
            if is_registration(&e.decoded) {
                if registrations >= MAX_REGISTRATIONS_PER_BLOCK {
                    deferred.insert(e.decoded.signer);
                    continue;
                }
                registrations += 1;
            } else if deferred.contains(&e.decoded.signer) {
                continue;
            }
            total += e.raw.len();
            if total > max_bytes {
                break;
            }
            out.push(e.raw.clone());
        }
        out
    }

    /// Every waiting transaction, decoded, oldest first (for the re-check after a commit).
    pub fn decoded(&self) -> Vec<([u8; 32], DecodedTx)> {
        let inner = self.inner.lock().expect("lock poisoned");
        inner
            .queue
            .iter()
            .map(|e| (e.hash, e.decoded.clone()))
            .collect()
    }

    /// Removes the transactions a committed block included (or a re-check dropped).
    pub fn remove(&self, hashes: &[[u8; 32]]) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        let gone: HashSet<[u8; 32]> = hashes
            .iter()
            .filter(|h| inner.hashes.contains(*h))
            .copied()
            .collect();
        if gone.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut inner.queue);
        for e in queue {
            if !gone.contains(&e.hash) {
                inner.queue.push_back(e);
                continue;
            }
            inner.hashes.remove(&e.hash);
            if is_registration(&e.decoded) {
                inner.registrations -= 1;
            } else if let Some(n) = inner.per_signer.get_mut(&e.decoded.signer) {
                *n -= 1;
                if *n == 0 {
                    inner.per_signer.remove(&e.decoded.signer);
                }
            }
        }
    }

    /// How many transactions wait.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("lock poisoned").queue.len()
    }

    /// How many of them are registrations.
    pub fn registrations(&self) -> usize {
        self.inner.lock().expect("lock poisoned").registrations
    }

    /// Whether both lanes are at capacity (nothing more can be taken).
    pub fn is_full(&self) -> bool {
        let inner = self.inner.lock().expect("lock poisoned");
        inner.others() >= self.limits.capacity && inner.registrations >= self.limits.registrations
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_consensus::SigningKey;
    use onionpost_proto::v1::SetMailboxHosts;

    fn tx(seed: u8, nonce: u64, register: bool) -> ([u8; 32], Vec<u8>, DecodedTx) {
        let key = SigningKey::from([seed; 32]);
        let action = if register {
            Action::RegisterIdentity(Default::default())
        } else {
            Action::SetMailboxHosts(SetMailboxHosts::default())
        };
        let raw =
            prost::Message::encode_to_vec(&onionpost_proto::tx::sign(&key, "c", nonce, action));
        let decoded = DecodedTx::decode(&raw).unwrap();
        (decoded.hash, raw, decoded)
    }

    fn put(m: &Mempool, t: ([u8; 32], Vec<u8>, DecodedTx)) -> Result<(), MempoolError> {
        m.insert(t.0, t.1, t.2)
    }

    #[test]
    fn dedupes_bounds_and_removes() {
        let m = Mempool::new(2);
        let a = tx(1, 1, false);
        put(&m, a.clone()).unwrap();
        assert_eq!(put(&m, a.clone()), Err(MempoolError::Duplicate));
        put(&m, tx(2, 1, false)).unwrap();
        assert_eq!(put(&m, tx(3, 1, false)), Err(MempoolError::Full(2)));
        // The registration lane is separate.
        put(&m, tx(4, 0, true)).unwrap();
        put(&m, tx(5, 0, true)).unwrap();
        assert!(m.is_full());
        assert_eq!(
            put(&m, tx(6, 0, true)),
            Err(MempoolError::RegistrationsFull(2))
        );
        assert_eq!(m.peek(usize::MAX).len(), 4);
        assert_eq!(m.peek(a.1.len()), vec![a.1.clone()]);
        m.remove(&[a.0]);
        assert_eq!(m.len(), 3);
        put(&m, tx(3, 1, false)).expect("room again");
    }

    #[test]
    fn one_signer_cannot_fill_the_mempool() {
        let m = Mempool::with_limits(MempoolLimits {
            capacity: 100,
            registrations: 100,
            per_signer: 2,
        });
        put(&m, tx(1, 1, false)).unwrap();
        put(&m, tx(1, 2, false)).unwrap();
        assert_eq!(put(&m, tx(1, 3, false)), Err(MempoolError::SignerFull(2)));
        put(&m, tx(2, 1, false)).expect("another signer has room");
    }

    #[test]
    fn a_block_takes_a_bounded_share_of_registrations_and_everything_behind_them() {
        let m = Mempool::new(10_000);
        for i in 0..MAX_REGISTRATIONS_PER_BLOCK + 5 {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let key = SigningKey::from(seed);
            let raw = prost::Message::encode_to_vec(&onionpost_proto::tx::sign(
                &key,
                "c",
                0,
                Action::RegisterIdentity(Default::default()),
            ));
            let d = DecodedTx::decode(&raw).unwrap();
            m.insert(d.hash, raw, d).unwrap();
        }
        let late = tx(200, 1, false);
        put(&m, late.clone()).unwrap();
        let block = m.peek(usize::MAX);
        assert_eq!(block.len(), MAX_REGISTRATIONS_PER_BLOCK + 1);
        assert_eq!(
            block.last(),
            Some(&late.1),
            "the late transaction is not held back"
        );
    }
}
