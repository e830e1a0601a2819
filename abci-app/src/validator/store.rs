//! What a validator keeps besides the ledger state: proposals it saw (undecided blocks) and
//! every decided block with its commit certificate, in its own RocksDB (`HOME/consensus`).
//!
//! A block is stored before the engine is told about it (pitfall: the engine's write-ahead
//! log keeps votes and value ids, not block bodies), and a decided block with its certificate
//! is stored before the ledger commits it, so a crash between the two is repaired by the
//! engine replaying `Decided`.
//!
//! Formats: the store records its format version ([`CONSENSUS_FORMAT`]) in its `meta` column
//! family when it is created and checks it at every open; each stored proposal and decided
//! block also begins with a version byte. Data of another version is refused with
//! [`StoreError::Format`], never misread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use malachitebft_core_types::{CommitCertificate, Round};
use malachitebft_signing_ed25519::Signature;
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::types::{Address, BlockHash, Height, LedgerContext};
use super::wire::{Wire, WireError, decode};

const CF_PROPOSALS: &str = "proposals";
const CF_DECIDED: &str = "decided";
const CF_META: &str = "meta";
const META_FORMAT: &[u8] = b"format";

/// The format version of the consensus store this build writes and reads.
pub const CONSENSUS_FORMAT: u32 = 1;
/// The version byte of a stored proposal and of a decided block.
const RECORD_VERSION: u8 = 1;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("consensus store: RocksDB failed: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored bytes do not decode.
    #[error("consensus store is corrupt: {0}")]
    Corrupt(#[from] WireError),
    /// Data in a format this build does not read: it was written by another version.
    #[error(
        "{what} is in format version {found}, but this build reads only version {supported}: it was written by another version of onionpost-ledger; run that version, or start from a fresh directory"
    )]
    Format {
        /// What carries the version.
        what: String,
        /// The version found (0: none).
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
}

/// `v` encoded after its version byte.
fn encode_versioned<T: Wire>(v: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    v.put(&mut out);
    out
}

/// Decodes a record written by [`encode_versioned`], refusing another version.
fn decode_versioned<T: Wire>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    match b.split_first() {
        Some((&RECORD_VERSION, rest)) => Ok(decode(rest)?),
        found => Err(StoreError::Format {
            what: what.to_owned(),
            found: found.map_or(0, |(v, _)| u32::from(*v)),
            supported: u32::from(RECORD_VERSION),
        }),
    }
}

/// A block somebody proposed at a height, with what is needed to vote on it and restream it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProposal {
    /// The round it was (first) proposed in.
    pub round: Round,
    /// Its proof-of-lock round.
    pub pol_round: Round,
    /// Who proposed it.
    pub proposer: Address,
    /// Whether ProcessProposal accepted it.
    pub valid: bool,
    /// The proposer's signature over the proposal (absent for blocks received by sync).
    pub signature: Option<Signature>,
    /// The encoded block.
    pub block: Vec<u8>,
}

impl Wire for StoredProposal {
    fn put(&self, out: &mut Vec<u8>) {
        self.round.put(out);
        self.pol_round.put(out);
        self.proposer.put(out);
        (self.valid as u8).put(out);
        self.signature.put(out);
        self.block.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Self {
            round: Wire::get(input)?,
            pol_round: Wire::get(input)?,
            proposer: Wire::get(input)?,
            valid: u8::get(input)? == 1,
            signature: Wire::get(input)?,
            block: Wire::get(input)?,
        })
    }
}

/// A decided block and the certificate that decided it.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The encoded block.
    pub block: Vec<u8>,
    /// Its commit certificate.
    pub certificate: CommitCertificate<LedgerContext>,
}

impl Wire for Decided {
    fn put(&self, out: &mut Vec<u8>) {
        self.block.put(out);
        self.certificate.put(out);
    }
    fn get(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Self {
            block: Wire::get(input)?,
            certificate: Wire::get(input)?,
        })
    }
}

/// The consensus store.
pub struct ConsensusStore {
    db: DB,
    /// No height below this one holds a proposal (every one was pruned).
    pruned_below: AtomicU64,
}

fn proposal_key(height: Height, value: &BlockHash) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&height.0.to_be_bytes());
    k[8..].copy_from_slice(&value.0);
    k
}

impl ConsensusStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_PROPOSALS, CF_DECIDED, CF_META]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let store = Self {
            db: DB::open_cf_descriptors(&opts, dir, cfs)?,
            pruned_below: AtomicU64::new(0),
        };
        store.check_format(dir)?;
        // The lowest height with a proposal left: pruning starts there.
        if let Some(item) = store
            .db
            .iterator_cf(store.cf(CF_PROPOSALS), IteratorMode::Start)
            .next()
        {
            let (k, _) = item?;
            if let Some(h) = k.get(..8) {
                let h = u64::from_be_bytes(h.try_into().expect("8 bytes"));
                store.pruned_below.store(h, Ordering::Relaxed);
            }
        }
        Ok(store)
    }

    /// Checks the store's format version; records it in a store that is new.
    fn check_format(&self, dir: &Path) -> Result<(), StoreError> {
        let what = || format!("the consensus store in {}", dir.display());
        let found = match self.db.get_cf(self.cf(CF_META), META_FORMAT)? {
            Some(b) => <[u8; 4]>::try_from(b.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| WireError::from_msg("the format version is not 4 bytes"))?,
            None => {
                let empty = [CF_PROPOSALS, CF_DECIDED].iter().all(|c| {
                    self.db
                        .iterator_cf(self.cf(c), IteratorMode::Start)
                        .next()
                        .is_none()
                });
                if !empty {
                    // Written before formats were versioned.
                    0
                } else {
                    self.db.put_cf_opt(
                        self.cf(CF_META),
                        META_FORMAT,
                        CONSENSUS_FORMAT.to_be_bytes(),
                        &Self::synced(),
                    )?;
                    CONSENSUS_FORMAT
                }
            }
        };
        if found != CONSENSUS_FORMAT {
            return Err(StoreError::Format {
                what: what(),
                found,
                supported: CONSENSUS_FORMAT,
            });
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn synced() -> WriteOptions {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        o
    }

    /// Stores a proposal durably.
    pub fn put_proposal(
        &self,
        height: Height,
        value: &BlockHash,
        p: &StoredProposal,
    ) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_PROPOSALS),
            proposal_key(height, value),
            encode_versioned(p),
            &Self::synced(),
        )?;
        Ok(())
    }

    /// The proposal of `value` at `height`.
    pub fn proposal(
        &self,
        height: Height,
        value: &BlockHash,
    ) -> Result<Option<StoredProposal>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_PROPOSALS), proposal_key(height, value))?
        {
            None => Ok(None),
            Some(b) => Ok(Some(decode_versioned(
                &format!("the proposal {value} of height {height}"),
                &b,
            )?)),
        }
    }

    /// Every proposal stored for `height`, with its value.
    pub fn proposals_at(
        &self,
        height: Height,
    ) -> Result<Vec<(BlockHash, StoredProposal)>, StoreError> {
        let prefix = height.0.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_PROPOSALS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() != 40 || k[..8] != prefix {
                break;
            }
            let hash = BlockHash(k[8..].try_into().expect("32 bytes"));
            let what = format!("the proposal {hash} of height {height}");
            out.push((hash, decode_versioned(&what, &v)?));
        }
        Ok(out)
    }

    /// Records a decided block (overwriting a certificate for the same height, which
    /// `Finalized` may extend with late precommits).
    pub fn put_decided(&self, height: Height, decided: &Decided) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_DECIDED),
            height.0.to_be_bytes(),
            encode_versioned(decided),
            &Self::synced(),
        )?;
        Ok(())
    }

    /// The decided block of `height`.
    pub fn decided(&self, height: Height) -> Result<Option<Decided>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_DECIDED), height.0.to_be_bytes())?
        {
            None => Ok(None),
            Some(b) => Ok(Some(decode_versioned(
                &format!("the decided block of height {height}"),
                &b,
            )?)),
        }
    }

    /// The highest decided height stored.
    pub fn last_decided(&self) -> Result<Option<Height>, StoreError> {
        let mut it = self.db.iterator_cf(self.cf(CF_DECIDED), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(Height(u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| WireError::from_msg("bad decided key"))?,
                ))))
            }
        }
    }

    /// Forgets proposals of heights up to `height` (decided ones live on in `decided`).
    ///
    /// Each proposal is deleted by its key, from the lowest height not yet pruned: a range
    /// deletion per height (as before) left one more range tombstone in the memtable at every
    /// block, and every read of the column family had to fragment them all, so a validator's
    /// idle CPU grew with its uptime.
    pub fn prune_proposals(&self, height: Height) -> Result<(), StoreError> {
        let from = self.pruned_below.load(Ordering::Relaxed);
        if from > height.0 {
            return Ok(());
        }
        let cf = self.cf(CF_PROPOSALS);
        let mut wb = WriteBatch::default();
        for item in self.db.iterator_cf(
            cf,
            IteratorMode::From(&from.to_be_bytes(), Direction::Forward),
        ) {
            let (k, _) = item?;
            match k.get(..8) {
                Some(h) if u64::from_be_bytes(h.try_into().expect("8 bytes")) <= height.0 => {
                    wb.delete_cf(cf, &k);
                }
                _ => break,
            }
        }
        if !wb.is_empty() {
            self.db.write(wb)?;
        }
        self.pruned_below.store(height.0 + 1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_format_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ConsensusStore::open(dir.path()).unwrap();
            assert!(store.decided(Height(1)).unwrap().is_none());
            // A decided block written by a newer build.
            store
                .db
                .put_cf(store.cf(CF_DECIDED), 1u64.to_be_bytes(), [7u8, 0, 0])
                .unwrap();
            let err = store.decided(Height(1)).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Format {
                        found: 7,
                        supported: 1,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(
                err.to_string().contains("decided block of height 1"),
                "{err}"
            );
            // The whole store from a newer build.
            store
                .db
                .put_cf(store.cf(CF_META), META_FORMAT, 2u32.to_be_bytes())
                .unwrap();
        }
        let err = ConsensusStore::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::Format { found: 2, .. }), "{err}");
        assert!(err.to_string().contains("format version 2"), "{err}");
    }

    fn proposal(block: u8) -> StoredProposal {
        StoredProposal {
            round: Round::new(0),
            pol_round: Round::Nil,
            proposer: Address([block; 20]),
            valid: true,
            signature: None,
            block: vec![block],
        }
    }

    /// The heights of the proposals stored at heights 1..=8.
    fn heights_left(store: &ConsensusStore) -> Vec<u64> {
        (1..=8)
            .filter(|&h| !store.proposals_at(Height(h)).unwrap().is_empty())
            .collect()
    }

    #[test]
    fn pruning_forgets_exactly_the_decided_heights_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ConsensusStore::open(dir.path()).unwrap();
            for h in 1..=6u64 {
                for b in 0..2u8 {
                    let p = proposal(h as u8 * 10 + b);
                    store
                        .put_proposal(Height(h), &BlockHash([h as u8 * 10 + b; 32]), &p)
                        .unwrap();
                }
            }
            store.prune_proposals(Height(3)).unwrap();
            assert_eq!(heights_left(&store), [4, 5, 6]);
            // Pruning a height already pruned changes nothing.
            store.prune_proposals(Height(2)).unwrap();
            assert_eq!(heights_left(&store), [4, 5, 6]);
            assert_eq!(store.proposals_at(Height(4)).unwrap().len(), 2);
        }
        // After a restart pruning starts from the lowest height left.
        let store = ConsensusStore::open(dir.path()).unwrap();
        assert_eq!(store.pruned_below.load(Ordering::Relaxed), 4);
        store.prune_proposals(Height(5)).unwrap();
        assert_eq!(heights_left(&store), [6]);
        let (hash, p) = store.proposals_at(Height(6)).unwrap().remove(0);
        assert_eq!(hash, BlockHash([60; 32]));
        assert_eq!(p, proposal(60));
        store.prune_proposals(Height(8)).unwrap();
        assert!(heights_left(&store).is_empty());
        // Nothing left: a reopened store starts at 0 and later proposals stay until pruned.
        drop(store);
        let store = ConsensusStore::open(dir.path()).unwrap();
        assert_eq!(store.pruned_below.load(Ordering::Relaxed), 0);
        store
            .put_proposal(Height(7), &BlockHash([70; 32]), &proposal(70))
            .unwrap();
        store.prune_proposals(Height(6)).unwrap();
        assert_eq!(heights_left(&store), [7]);
    }
}
