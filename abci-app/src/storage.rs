//! Durable, authenticated, versioned state: RocksDB holding a Jellyfish Merkle tree.
//!
//! Version `h` of the tree is the state after block `h` (version 0 is genesis) and its root is
//! the app hash. A block is applied in two steps, as ABCI 2.0 wants: [`Storage::prepare`]
//! computes the new root in memory (FinalizeBlock must return the app hash), and
//! [`Storage::commit`] writes the tree nodes, the values, the block's events and the new
//! committed height in **one** RocksDB write batch, synced to disk. A crash at any moment
//! therefore leaves either the old or the new height on disk, never a mix, and a restart
//! reports it through [`Storage::committed`].
//!
//! Column families:
//! - `nodes`: borsh(`NodeKey`) -> borsh(`Node`) — the tree;
//! - `values`: key hash ‖ version (big-endian) -> 0x00 (deleted) or 0x01 ‖ value, so the value
//!   of a key at any version is one reverse seek;
//! - `events`: height (big-endian) -> encoded `LedgerEvents` of that block;
//! - `meta`: the committed height, app hash and chain id, and the database's format version.
//!
//! Old versions are never pruned, so every past height stays queryable with proofs.
//!
//! Formats: the database records its format version ([`STATE_FORMAT`]) when it is created,
//! and every open checks it, so the layout of the tree nodes (borsh of jmt 0.12's types) and
//! of the values can never be misread by a build that lays them out differently. The records
//! this module encodes itself (the committed height, a block's events) also begin with their
//! own version byte. Anything else is refused with [`StorageError::Format`].

use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, RwLock};

use jmt::storage::{LeafNode, Node, NodeKey, TreeReader, TreeUpdateBatch};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, Version};
use onionpost_proto::proof::{encode_proof, key_hash};
use onionpost_proto::v1::{LedgerEvent, ProvenValue};
use prost::Message;
use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRawIterator, IteratorMode, Options, WriteBatch, WriteOptions,
};
use sha2::Sha256;

use crate::execute::{ReadError, StateRead, WriteSet};

const CF_NODES: &str = "nodes";
const CF_VALUES: &str = "values";
const CF_EVENTS: &str = "events";
const CF_META: &str = "meta";
const META_COMMITTED: &[u8] = b"committed";
const META_FORMAT: &[u8] = b"format";

/// The format version of the state database this build writes and reads.
pub const STATE_FORMAT: u32 = 1;
/// The version byte of the committed-height record.
const COMMITTED_VERSION: u8 = 1;
/// The version byte of a block's stored events.
const EVENTS_VERSION: u8 = 1;

/// A storage failure, saying what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB failed.
    #[error("RocksDB failed while {doing}: {source}")]
    Rocks {
        /// What was being done.
        doing: &'static str,
        /// The error.
        source: rocksdb::Error,
    },
    /// The tree failed (a missing node means a corrupt or foreign database).
    #[error("the state tree failed while {doing}: {message}")]
    Tree {
        /// What was being done.
        doing: &'static str,
        /// The error.
        message: String,
    },
    /// Stored bytes do not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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
    /// A height that is not stored.
    #[error("height {asked} is not available (committed height is {committed})")]
    NoSuchHeight {
        /// Asked for.
        asked: u64,
        /// What there is.
        committed: u64,
    },
    /// Nothing committed yet.
    #[error("the ledger has no state yet: InitChain has not run")]
    NoGenesis,
    /// A commit out of order.
    #[error("cannot commit height {got}: the next height is {want}")]
    OutOfOrder {
        /// Expected.
        want: u64,
        /// Given.
        got: u64,
    },
}

fn rocks(doing: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
    move |source| StorageError::Rocks { doing, source }
}

fn tree(doing: &'static str) -> impl FnOnce(anyhow::Error) -> StorageError {
    move |e| StorageError::Tree {
        doing,
        message: format!("{e:#}"),
    }
}

/// The last committed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its height (0 = genesis only).
    pub height: u64,
    /// The tree root at that height: the app hash.
    pub app_hash: [u8; 32],
    /// The chain id from genesis.
    pub chain_id: String,
}

impl Committed {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41 + self.chain_id.len());
        v.push(COMMITTED_VERSION);
        v.extend_from_slice(&self.height.to_be_bytes());
        v.extend_from_slice(&self.app_hash);
        v.extend_from_slice(self.chain_id.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Result<Self, StorageError> {
        let b = versioned("the committed-height record", COMMITTED_VERSION, b)?;
        if b.len() < 40 {
            return Err(StorageError::Corrupt(
                "committed-height record is short".into(),
            ));
        }
        Ok(Self {
            height: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            app_hash: b[8..40].try_into().expect("32 bytes"),
            chain_id: String::from_utf8(b[40..].to_vec())
                .map_err(|_| StorageError::Corrupt("chain id is not UTF-8".into()))?,
        })
    }
}

/// A block whose new root is computed but not yet on disk.
pub struct PreparedBlock {
    /// The height it will commit as.
    pub height: u64,
    /// The new root: the app hash FinalizeBlock reports.
    pub root: [u8; 32],
    batch: TreeUpdateBatch,
}

/// The ledger's database.
pub struct Storage {
    db: DB,
    committed: RwLock<Option<Committed>>,
    recent: RwLock<Option<Arc<Recent>>>,
}

/// What the last committed block wrote (tree nodes and values), kept in memory after the
/// commit: the next block reads much of it again (the upper levels of the tree are rewritten
/// by every block; a signer's record by each of its transactions), and a hit here saves a
/// RocksDB lookup and a decoding. It can never be stale: a tree node is immutable once
/// written (its key carries its version), and a value written at height `h` is the value at
/// `h` — [`StateView`] uses it only for reads at exactly that height.
struct Recent {
    height: u64,
    batch: TreeUpdateBatch,
}

impl Recent {
    fn node(&self, key: &NodeKey) -> Option<&Node> {
        self.batch.node_batch.get_node(key)
    }

    /// The value written at `version` under `key_hash`: `Some(None)` for a deletion, `None` if
    /// this block did not write the key or is not at `version`.
    fn value(&self, key_hash: KeyHash, version: u64) -> Option<Option<&[u8]>> {
        if version != self.height {
            return None;
        }
        self.batch
            .node_batch
            .values()
            .get(&(version, key_hash))
            .map(Option::as_deref)
    }
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_NODES, CF_VALUES, CF_EVENTS, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(rocks("opening the database"))?;
        check_format(&db, dir)?;
        let committed = db
            .get_cf(cf(&db, CF_META), META_COMMITTED)
            .map_err(rocks("reading the committed height"))?
            .map(|b| Committed::decode(&b))
            .transpose()?;
        Ok(Self {
            db,
            committed: RwLock::new(committed),
            recent: RwLock::new(None),
        })
    }

    /// The last committed block, `None` before genesis.
    pub fn committed(&self) -> Option<Committed> {
        self.committed.read().expect("lock poisoned").clone()
    }

    /// The committed height, or an error before genesis.
    pub fn committed_height(&self) -> Result<u64, StorageError> {
        self.committed()
            .map(|c| c.height)
            .ok_or(StorageError::NoGenesis)
    }

    /// A read-only view of the state at `version` (`None`: the empty pre-genesis state).
    pub fn view(&self, version: Option<u64>) -> StateView<'_> {
        StateView {
            storage: self,
            version,
            recent: self.recent(),
            iter: RefCell::new(None),
        }
    }

    fn recent(&self) -> Option<Arc<Recent>> {
        self.recent.read().expect("lock poisoned").clone()
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            db: &self.db,
            recent: self.recent(),
        }
    }

    /// A view of the latest committed state.
    pub fn latest(&self) -> StateView<'_> {
        self.view(self.committed().map(|c| c.height))
    }

    /// Computes the tree root after applying `writes` to the committed state as `height`.
    pub fn prepare(&self, height: u64, writes: &WriteSet) -> Result<PreparedBlock, StorageError> {
        let want = self.committed().map_or(0, |c| c.height + 1);
        if height != want {
            return Err(StorageError::OutOfOrder { want, got: height });
        }
        let reader = self.reader();
        let (root, batch) = tree_update(&reader, writes, height)?;
        Ok(PreparedBlock {
            height,
            root: root.0,
            batch,
        })
    }

    /// Writes a prepared block, its events and the new committed height atomically and
    /// durably (fsync), then makes it visible to readers.
    pub fn commit(
        &self,
        block: PreparedBlock,
        chain_id: &str,
        events: &[LedgerEvent],
    ) -> Result<Committed, StorageError> {
        let want = self.committed().map_or(0, |c| c.height + 1);
        if block.height != want {
            return Err(StorageError::OutOfOrder {
                want,
                got: block.height,
            });
        }
        let mut wb = WriteBatch::default();
        let nodes = cf(&self.db, CF_NODES);
        for (key, node) in block.batch.node_batch.nodes() {
            wb.put_cf(
                nodes,
                borsh::to_vec(key).expect("vec write"),
                borsh::to_vec(node).expect("vec write"),
            );
        }
        let values = cf(&self.db, CF_VALUES);
        for ((version, hash), value) in block.batch.node_batch.values() {
            wb.put_cf(
                values,
                value_key(*hash, *version),
                encode_value(value.as_deref()),
            );
        }
        if !events.is_empty() {
            let mut encoded = vec![EVENTS_VERSION];
            LedgerEvents {
                events: events.to_vec(),
            }
            .encode(&mut encoded)
            .expect("a Vec grows");
            wb.put_cf(cf(&self.db, CF_EVENTS), block.height.to_be_bytes(), encoded);
        }
        let committed = Committed {
            height: block.height,
            app_hash: block.root,
            chain_id: chain_id.to_owned(),
        };
        wb.put_cf(cf(&self.db, CF_META), META_COMMITTED, committed.encode());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(wb, &opts)
            .map_err(rocks("committing a block"))?;
        *self.committed.write().expect("lock poisoned") = Some(committed.clone());
        *self.recent.write().expect("lock poisoned") = Some(Arc::new(Recent {
            height: block.height,
            batch: block.batch,
        }));
        Ok(committed)
    }

    /// The value of `key` at `version`.
    pub fn get_at(&self, key: &[u8], version: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(cf(&self.db, CF_VALUES));
        read_value(&mut iter, key_hash(key), version)
    }

    /// Checks `height` is stored; 0 means the latest committed height.
    pub fn resolve_height(&self, height: u64) -> Result<u64, StorageError> {
        let committed = self.committed_height()?;
        match height {
            0 => Ok(committed),
            h if h <= committed => Ok(h),
            h => Err(StorageError::NoSuchHeight {
                asked: h,
                committed,
            }),
        }
    }

    /// The app hash at `height`.
    pub fn root_at(&self, height: u64) -> Result<[u8; 32], StorageError> {
        let reader = self.reader();
        JellyfishMerkleTree::<_, Sha256>::new(&reader)
            .get_root_hash(height)
            .map(|r| r.0)
            .map_err(tree("reading a root"))
    }

    /// `key`'s value (or absence) at `height` with a proof against [`Storage::root_at`].
    pub fn prove(&self, key: &[u8], height: u64) -> Result<ProvenValue, StorageError> {
        let reader = self.reader();
        let (value, proof) = JellyfishMerkleTree::<_, Sha256>::new(&reader)
            .get_with_proof(key_hash(key), height)
            .map_err(tree("building a proof"))?;
        Ok(ProvenValue {
            key: key.to_vec(),
            present: value.is_some(),
            value: value.unwrap_or_default(),
            proof: encode_proof(&proof),
        })
    }

    /// The events committed at `height`.
    pub fn events_at(&self, height: u64) -> Result<Vec<LedgerEvent>, StorageError> {
        match self
            .db
            .get_cf(cf(&self.db, CF_EVENTS), height.to_be_bytes())
            .map_err(rocks("reading events"))?
        {
            None => Ok(Vec::new()),
            Some(b) => {
                let what = format!("the events of height {height}");
                LedgerEvents::decode(versioned(&what, EVENTS_VERSION, &b)?)
                    .map(|e| e.events)
                    .map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
            }
        }
    }
}

/// The events of one block, as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct LedgerEvents {
    #[prost(message, repeated, tag = "1")]
    events: Vec<LedgerEvent>,
}

/// Checks the database's format version; records it in a database that is new.
fn check_format(db: &DB, dir: &Path) -> Result<(), StorageError> {
    let meta = cf(db, CF_META);
    let what = || format!("the ledger database in {}", dir.display());
    match db
        .get_cf(meta, META_FORMAT)
        .map_err(rocks("reading the format version"))?
    {
        Some(b) => {
            let found = <[u8; 4]>::try_from(b.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| StorageError::Corrupt("the format version is not 4 bytes".into()))?;
            if found != STATE_FORMAT {
                return Err(StorageError::Format {
                    what: what(),
                    found,
                    supported: STATE_FORMAT,
                });
            }
        }
        None => {
            let empty = db.iterator_cf(meta, IteratorMode::Start).next().is_none();
            if !empty {
                // Written before formats were versioned.
                return Err(StorageError::Format {
                    what: what(),
                    found: 0,
                    supported: STATE_FORMAT,
                });
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.put_cf_opt(meta, META_FORMAT, STATE_FORMAT.to_be_bytes(), &opts)
                .map_err(rocks("recording the format version"))?;
        }
    }
    Ok(())
}

/// The payload of a record that starts with a version byte, if it is version `want`.
fn versioned<'b>(what: &str, want: u8, b: &'b [u8]) -> Result<&'b [u8], StorageError> {
    match b.split_first() {
        Some((&v, rest)) if v == want => Ok(rest),
        found => Err(StorageError::Format {
            what: what.to_owned(),
            found: found.map_or(0, |(v, _)| u32::from(*v)),
            supported: u32::from(want),
        }),
    }
}

/// The new root and tree nodes after applying `writes` to the tree in `reader` as `version`.
///
/// A block that only writes (the common case: no key deleted) goes through jmt's batch
/// insertion, which walks the tree once for the whole sorted write set and hashes every
/// changed node once. `put_value_set` instead inserts key by key from the root, so each key
/// re-hashes (up to 15 hashes per internal node) and clones every node on its path: with
/// four keys per `sign_trust` that was half of FinalizeBlock's time. Batch insertion has no
/// deletion, so a write set with a deletion goes key by key. Both give the same tree: a
/// Jellyfish Merkle tree's shape and hashes depend only on the set of keys and values, not
/// on the order of insertion (`batch_and_key_by_key_insertion_agree` checks it at every
/// version, and the golden app hashes pin it).
fn tree_update<R: TreeReader>(
    reader: &R,
    writes: &WriteSet,
    version: Version,
) -> Result<(jmt::RootHash, TreeUpdateBatch), StorageError> {
    let inserts: Option<Vec<(KeyHash, OwnedValue)>> = writes
        .iter()
        .map(|(k, v)| v.as_ref().map(|v| (key_hash(k), v.clone())))
        .collect();
    match inserts {
        Some(inserts) if !inserts.is_empty() => {
            let (roots, batch) = JellyfishMerkleTree::<_, Sha256>::new(reader)
                .batch_put_value_sets(vec![inserts], None, version)
                .map_err(tree("computing the new root"))?;
            Ok((roots[0], batch))
        }
        _ => key_by_key(reader, writes, version),
    }
}

/// [`tree_update`] one key at a time (jmt's `put_value_set`): for write sets with deletions.
fn key_by_key<R: TreeReader>(
    reader: &R,
    writes: &WriteSet,
    version: Version,
) -> Result<(jmt::RootHash, TreeUpdateBatch), StorageError> {
    JellyfishMerkleTree::<_, Sha256>::new(reader)
        .put_value_set(
            writes.iter().map(|(k, v)| (key_hash(k), v.clone())),
            version,
        )
        .map_err(tree("computing the new root"))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} is created at open"))
}

fn value_key(hash: KeyHash, version: Version) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&hash.0);
    k[32..].copy_from_slice(&version.to_be_bytes());
    k
}

fn encode_value(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(1);
            out.extend_from_slice(v);
            out
        }
    }
}

/// The value of the key with hash `key_hash` at `version`: the newest record of the key at or
/// before `version` (one reverse seek), through `iter`, which may be reused from seek to seek.
fn read_value(
    iter: &mut DBRawIterator<'_>,
    key_hash: KeyHash,
    version: Version,
) -> Result<Option<OwnedValue>, StorageError> {
    iter.seek_for_prev(value_key(key_hash, version));
    if !iter.valid() {
        iter.status().map_err(rocks("reading a value"))?;
        return Ok(None);
    }
    match (iter.key(), iter.value()) {
        (Some(k), Some(v)) if k.len() == 40 && k[..32] == key_hash.0 => match v.first() {
            Some(1) => Ok(Some(v[1..].to_vec())),
            Some(0) => Ok(None),
            _ => Err(StorageError::Corrupt(format!(
                "the value record for {key_hash:?} at version {version} is corrupt"
            ))),
        },
        _ => Ok(None),
    }
}

/// jmt's view of the database.
struct Reader<'a> {
    db: &'a DB,
    recent: Option<Arc<Recent>>,
}

impl TreeReader for Reader<'_> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        if let Some(node) = self.recent.as_ref().and_then(|r| r.node(node_key)) {
            return Ok(Some(node.clone()));
        }
        let key = borsh::to_vec(node_key)?;
        match self.db.get_cf(cf(self.db, CF_NODES), key)? {
            None => Ok(None),
            Some(b) => Ok(Some(borsh::from_slice(&b)?)),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        let mut iter = self.db.raw_iterator_cf(cf(self.db, CF_VALUES));
        Ok(read_value(&mut iter, key_hash, max_version)?)
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        anyhow::bail!("state-sync restore is not supported by this ledger")
    }
}

/// Read-only state at one version, for the state machine.
///
/// It keeps one RocksDB iterator for all its reads: creating an iterator costs more than the
/// seek itself, and a block's execution reads several keys per transaction. (The iterator
/// pins the database as it was when the view first read; that changes nothing, since the view
/// reads only versions committed before it was made.)
pub struct StateView<'a> {
    storage: &'a Storage,
    version: Option<u64>,
    recent: Option<Arc<Recent>>,
    iter: RefCell<Option<DBRawIterator<'a>>>,
}

impl StateRead for StateView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(version) = self.version else {
            return Ok(None);
        };
        let key_hash = key_hash(key);
        if let Some(value) = self
            .recent
            .as_ref()
            .and_then(|r| r.value(key_hash, version))
        {
            return Ok(value.map(<[u8]>::to_vec));
        }
        let mut iter = self.iter.borrow_mut();
        let iter = iter.get_or_insert_with(|| {
            let db = &self.storage.db;
            db.raw_iterator_cf(cf(db, CF_VALUES))
        });
        read_value(iter, key_hash, version).map_err(|e| ReadError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionpost_proto::proof::verify;

    fn writes(pairs: &[(&str, Option<&str>)]) -> WriteSet {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn versions_stay_readable_and_provable_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let roots = {
            let s = Storage::open(dir.path()).unwrap();
            assert!(s.committed().is_none());
            let b0 = s
                .prepare(0, &writes(&[("a", Some("1")), ("b", Some("2"))]))
                .unwrap();
            let r0 = b0.root;
            s.commit(b0, "c", &[]).unwrap();
            let b1 = s
                .prepare(1, &writes(&[("a", Some("3")), ("b", None)]))
                .unwrap();
            let r1 = b1.root;
            s.commit(b1, "c", &[]).unwrap();
            assert!(
                s.prepare(1, &WriteSet::new()).is_err(),
                "height 1 is committed"
            );
            (r0, r1)
        };
        let s = Storage::open(dir.path()).unwrap();
        let c = s.committed().unwrap();
        assert_eq!(
            (c.height, c.app_hash, c.chain_id.as_str()),
            (1, roots.1, "c")
        );
        assert_eq!(s.get_at(b"a", 0).unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get_at(b"a", 1).unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(s.get_at(b"b", 0).unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(s.get_at(b"b", 1).unwrap(), None);
        assert_eq!(s.root_at(0).unwrap(), roots.0);

        let p = s.prove(b"b", 0).unwrap();
        assert_eq!(verify(&roots.0, b"b", &p).unwrap(), Some(&b"2"[..]));
        let p = s.prove(b"b", 1).unwrap();
        assert_eq!(verify(&roots.1, b"b", &p).unwrap(), None);
        // A proof for one height does not verify against another root.
        assert!(verify(&roots.0, b"b", &p).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

        /// Batch insertion (blocks without deletions) and key-by-key insertion compute the
        /// same root at every version, and a tree built by both kinds of update stays
        /// readable (from RocksDB, and through a view that uses the last block's writes in
        /// memory) and provable.
        #[test]
        fn batch_and_key_by_key_insertion_agree(
            blocks in proptest::collection::vec(
                proptest::collection::btree_map(
                    0u16..300,
                    proptest::option::weighted(0.99, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                    1..120,
                ),
                1..8,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path()).unwrap();
            let mut model = std::collections::BTreeMap::new();
            for (version, block) in blocks.iter().enumerate() {
                let version = version as u64;
                let writes: WriteSet = block
                    .iter()
                    .map(|(k, v)| (format!("key/{k}").into_bytes(), v.clone()))
                    .collect();
                let reader = s.reader();
                let (fast, _) = tree_update(&reader, &writes, version).unwrap();
                let (slow, _) = key_by_key(&reader, &writes, version).unwrap();
                proptest::prop_assert_eq!(fast, slow, "roots differ at version {}", version);
                let prepared = s.prepare(version, &writes).unwrap();
                let root = prepared.root;
                s.commit(prepared, "c", &[]).unwrap();
                for (k, v) in &writes {
                    match v {
                        Some(v) => model.insert(k.clone(), v.clone()),
                        None => model.remove(k),
                    };
                }
                for k in (0u16..300).step_by(7) {
                    let key = format!("key/{k}").into_bytes();
                    let want = model.get(&key).cloned();
                    proptest::prop_assert_eq!(s.get_at(&key, version).unwrap(), want.clone());
                    // Through the view, which answers keys the last block wrote from memory.
                    proptest::prop_assert_eq!(s.latest().get(&key).unwrap(), want.clone());
                    let p = s.prove(&key, version).unwrap();
                    proptest::prop_assert_eq!(verify(&root, &key, &p).unwrap(), want.as_deref());
                }
            }
        }
    }

    #[test]
    fn an_unknown_format_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path()).unwrap();
            let b = s.prepare(0, &writes(&[("a", Some("1"))])).unwrap();
            s.commit(b, "c", &[LedgerEvent::default()]).unwrap();
            assert_eq!(s.events_at(0).unwrap().len(), 1);
        }
        // A newer build's database.
        {
            let db = DB::open_cf(
                &Options::default(),
                dir.path(),
                [CF_NODES, CF_VALUES, CF_EVENTS, CF_META],
            )
            .unwrap();
            db.put_cf(cf(&db, CF_META), META_FORMAT, 2u32.to_be_bytes())
                .unwrap();
        }
        let err = Storage::open(dir.path()).err().expect("refused");
        assert!(
            matches!(
                err,
                StorageError::Format {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("format version 2"), "{err}");
        // A record of a newer version inside a database of this version.
        {
            let db = DB::open_cf(
                &Options::default(),
                dir.path(),
                [CF_NODES, CF_VALUES, CF_EVENTS, CF_META],
            )
            .unwrap();
            db.put_cf(cf(&db, CF_META), META_FORMAT, STATE_FORMAT.to_be_bytes())
                .unwrap();
            db.put_cf(cf(&db, CF_EVENTS), 0u64.to_be_bytes(), [9u8, 1, 2])
                .unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let err = s.events_at(0).unwrap_err();
        assert!(
            matches!(err, StorageError::Format { found: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("the events of height 0"), "{err}");
        // A database written before formats were versioned.
        let old = tempfile::tempdir().unwrap();
        {
            let db = DB::open_cf(
                &{
                    let mut o = Options::default();
                    o.create_if_missing(true);
                    o.create_missing_column_families(true);
                    o
                },
                old.path(),
                [CF_NODES, CF_VALUES, CF_EVENTS, CF_META],
            )
            .unwrap();
            db.put_cf(cf(&db, CF_META), META_COMMITTED, [0u8; 40])
                .unwrap();
        }
        let err = Storage::open(old.path()).err().expect("refused");
        assert!(
            matches!(err, StorageError::Format { found: 0, .. }),
            "{err}"
        );
    }
}
