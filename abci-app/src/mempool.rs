//! Transactions that passed CheckTx and wait for a block.
//!
//! Under CometBFT the mempool is CometBFT's; this one serves the gRPC `SubmitTx` of a
//! standalone ledger and, on the devnet, feeds the embedded engine's proposals.
//! Bounded, first-in first-out, deduplicated by transaction hash.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Why the mempool did not take a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// Already there.
    #[error("transaction is already in the mempool")]
    Duplicate,
    /// Full.
    #[error("mempool is full ({0} transactions); try again after the next block")]
    Full(usize),
}

/// A bounded FIFO of encoded transactions.
pub struct Mempool {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<([u8; 32], Vec<u8>)>,
    hashes: HashSet<[u8; 32]>,
}

impl Mempool {
    /// An empty mempool holding at most `capacity` transactions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Queues a transaction.
    pub fn insert(&self, hash: [u8; 32], tx: Vec<u8>) -> Result<(), MempoolError> {
        let mut inner = self.inner.lock().expect("lock poisoned");
        if inner.hashes.contains(&hash) {
            return Err(MempoolError::Duplicate);
        }
        if inner.queue.len() >= self.capacity {
            return Err(MempoolError::Full(self.capacity));
        }
        inner.hashes.insert(hash);
        inner.queue.push_back((hash, tx));
        Ok(())
    }

    /// The oldest transactions, up to `max_bytes` in total, without removing them.
    pub fn peek(&self, max_bytes: usize) -> Vec<Vec<u8>> {
        let inner = self.inner.lock().expect("lock poisoned");
        let mut total = 0;
        inner
            .queue
            .iter()
            .take_while(|(_, tx)| {
                total += tx.len();
                total <= max_bytes
            })
            .map(|(_, tx)| tx.clone())
            .collect()
    }

    /// Removes the transactions a committed block included.
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
        inner.queue.retain(|(h, _)| !gone.contains(h));
        for h in &gone {
            inner.hashes.remove(h);
        }
    }

    /// How many transactions wait.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("lock poisoned").queue.len()
    }

    /// Whether it is at capacity.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupes_bounds_and_removes() {
        let m = Mempool::new(2);
        m.insert([1; 32], vec![1; 10]).unwrap();
        assert_eq!(m.insert([1; 32], vec![1; 10]), Err(MempoolError::Duplicate));
        m.insert([2; 32], vec![2; 10]).unwrap();
        assert!(m.is_full());
        assert_eq!(m.insert([3; 32], vec![3]), Err(MempoolError::Full(2)));
        assert_eq!(m.peek(15), vec![vec![1; 10]]);
        m.remove(&[[1; 32]]);
        assert_eq!(m.peek(100), vec![vec![2; 10]]);
        assert_eq!(m.len(), 1);
    }
}
