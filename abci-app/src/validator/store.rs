//! What a validator keeps besides the ledger state: proposals it saw (undecided blocks) and
//! every decided block with its commit certificate, in its own RocksDB (`HOME/consensus`).
//!
//! A block is stored before the engine is told about it (pitfall: the engine's write-ahead
//! log keeps votes and value ids, not block bodies), and a decided block with its certificate
//! is stored before the ledger commits it, so a crash between the two is repaired by the
//! engine replaying `Decided`.

use std::path::Path;

use malachitebft_core_types::{CommitCertificate, Round};
use malachitebft_signing_ed25519::Signature;
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::types::{Address, BlockHash, Height, LedgerContext};
use super::wire::{Wire, WireError, decode, encode};

const CF_PROPOSALS: &str = "proposals";
const CF_DECIDED: &str = "decided";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("consensus store: RocksDB failed: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored bytes do not decode.
    #[error("consensus store is corrupt: {0}")]
    Corrupt(#[from] WireError),
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
        let cfs = [CF_PROPOSALS, CF_DECIDED]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(Self {
            db: DB::open_cf_descriptors(&opts, dir, cfs)?,
        })
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
            encode(p),
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
            Some(b) => Ok(Some(decode(&b)?)),
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
            out.push((hash, decode(&v)?));
        }
        Ok(out)
    }

    /// Records a decided block (overwriting a certificate for the same height, which
    /// `Finalized` may extend with late precommits).
    pub fn put_decided(&self, height: Height, decided: &Decided) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_DECIDED),
            height.0.to_be_bytes(),
            encode(decided),
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
            Some(b) => Ok(Some(decode(&b)?)),
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
    pub fn prune_proposals(&self, height: Height) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_PROPOSALS),
            [0u8; 8],
            (height.0 + 1).to_be_bytes(),
        );
        self.db.write(wb)?;
        Ok(())
    }
}
