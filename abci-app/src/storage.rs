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
//!   of a key at any version is one reverse seek, within the key hash's prefix (the family's
//!   prefix Bloom filters answer a read of a key never written without a search);
//! - `events`: height (big-endian) -> encoded `LedgerEvents` of that block;
//! - `meta`: the committed height, app hash and chain id, and the database's format version.
//!
//! Old versions are never pruned, so every past height stays queryable with proofs.
//!
//! In memory, never part of what is committed: the last blocks' tree nodes, a cache of
//! the decoded tree nodes read from RocksDB and a cache of the latest values of recently used keys (each bounded;
//! see `Generations` and `ValueCache`), so a block's reads of the hot part of the tree and
//! state seldom reach RocksDB.
//!
//! Formats: the database records its format version ([`STATE_FORMAT`]) when it is created,
//! and every open checks it, so the layout of the tree nodes (borsh of jmt 0.12's types) and
//! of the values can never be misread by a build that lays them out differently. The records
//! this module encodes itself (the committed height, a block's events) also begin with their
//! own version byte. Anything else is refused with [`StorageError::Format`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use jmt::storage::{LeafNode, Node, NodeKey, TreeReader, TreeUpdateBatch};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, Version};
use onionpost_proto::proof::{encode_proof, key_hash};
use onionpost_proto::v1::{LedgerEvent, ProvenValue};
use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBRawIterator, IteratorMode, Options,
    ReadOptions, SliceTransform, WriteBatch, WriteOptions,
};
use sha2::Sha256;

use crate::execute::{ReadError, StateRead, WriteSet};

const CF_NODES: &str = "nodes";
const CF_VALUES: &str = "values";
const CF_EVENTS: &str = "events";
const CF_META: &str = "meta";
const META_COMMITTED: &[u8] = b"committed";
const META_FORMAT: &[u8] = b"format";

/// The format version of the state database this build writes and reads. 2: trust
/// statements are held whole by the `trust_out/` and `trust_in/` indexes (`TrustIndex`),
/// with no `trust/<from><to>` record of their own (version 1). 3: a list record
/// (`ListRecord`) has no member count (version 2 kept one, rewriting the record on every
/// membership change); the member set (`list_members/<name>`) is the count.
pub const STATE_FORMAT: u32 = 3;
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
    recent: RwLock<Arc<Vec<Arc<Recent>>>>,
    nodes: Mutex<Generations<NodeKey, Node>>,
    values: Mutex<ValueCache>,
}

/// RocksDB's block cache, shared by the column families.
const BLOCK_CACHE_BYTES: usize = 128 << 20;
/// The recent blocks' tree nodes kept in memory, as written (in all, at most this many nodes
/// beyond the last block's; about 1 KiB each).
const RECENT_NODES: usize = 64 * 1024;
/// At most this many recent blocks are kept in memory.
const RECENT_BLOCKS: usize = 64;
/// Decoded tree nodes kept in memory, per generation of [`Generations`] (an internal node
/// is about 1 KiB decoded, so at most about 64 MiB).
const NODE_CACHE_ENTRIES: usize = 32 * 1024;
/// Bytes of state values kept in memory, per generation (so at most about 64 MiB).
const VALUE_CACHE_BYTES: usize = 32 << 20;

/// A bounded map that forgets the least recently used entries in bulk: entries go into the
/// young generation; when it is full it becomes the old one (the previous old generation is
/// dropped); a hit in the old generation moves the entry back into the young one. So the
/// map never holds more than two generations' worth, and what is used stays.
struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    /// The young generation's size, in the caller's unit (entries or bytes).
    young_size: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Generations<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            young_size: 0,
            capacity,
        }
    }

    fn get(&mut self, key: &K, size: impl Fn(&V) -> usize) -> Option<&V> {
        if !self.young.contains_key(key) {
            let value = self.old.remove(key)?;
            // (If this fills the young generation, the entry is in the old one.)
            self.insert(key.clone(), value, size);
        }
        self.young.get(key).or_else(|| self.old.get(key))
    }

    fn insert(&mut self, key: K, value: V, size: impl Fn(&V) -> usize) {
        self.young_size += size(&value);
        self.old.remove(&key);
        if let Some(old) = self.young.insert(key, value) {
            self.young_size -= size(&old);
        }
        if self.young_size >= self.capacity {
            self.old = std::mem::take(&mut self.young);
            self.young_size = 0;
        }
    }
}

/// The latest value of recently used keys, for every read of state ([`Storage::value_at`]).
///
/// Invariant: an entry `key_hash -> (w, value)` says that the key's last write at or before
/// version `latest` was at `w` and wrote `value` (`None`: deleted, or never written, `w` =
/// 0). Every commit overwrites the entries of all the keys it writes, and a value read from
/// RocksDB at version `v` is entered only while `latest == v`, so the invariant holds; a
/// read at `v` may then use an entry with `w <= v <= latest`.
struct ValueCache {
    latest: Option<u64>,
    map: Generations<KeyHash, (u64, Option<Vec<u8>>)>,
}

fn value_size(v: &(u64, Option<Vec<u8>>)) -> usize {
    64 + v.1.as_ref().map_or(0, Vec::len)
}

fn node_size(_: &Node) -> usize {
    1
}

/// What a recently committed block wrote, kept in memory after the commit: the next blocks
/// read many of its tree nodes again (the upper levels of the tree are rewritten by every
/// block), and a hit here saves a RocksDB lookup and a decoding. It can never be stale: a
/// tree node is immutable once written (its key carries its version). The storage keeps the
/// last blocks' (up to [`RECENT_NODES`] nodes), newest last; a node's version says which
/// block wrote it, so a lookup is one map search.
struct Recent {
    height: u64,
    batch: TreeUpdateBatch,
}

/// The node `key` if one of the `recent` blocks (contiguous heights, newest last) wrote it.
fn recent_node<'r>(recent: &'r [Arc<Recent>], key: &NodeKey) -> Option<&'r Node> {
    let newest = recent.last()?.height;
    let age = usize::try_from(newest.checked_sub(key.version())?).ok()?;
    let block = recent.get(recent.len().checked_sub(age + 1)?)?;
    debug_assert_eq!(block.height, key.version());
    block.batch.node_batch.get_node(key)
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = [CF_NODES, CF_VALUES, CF_EVENTS, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(rocks("opening the database"))?;
        check_format(&db, dir)?;
        let committed = db
            .get_cf(cf(&db, CF_META), META_COMMITTED)
            .map_err(rocks("reading the committed height"))?
            .map(|b| Committed::decode(&b))
            .transpose()?;
        let latest = committed.as_ref().map(|c| c.height);
        Ok(Self {
            db,
            committed: RwLock::new(committed),
            recent: RwLock::new(Arc::new(Vec::new())),
            nodes: Mutex::new(Generations::new(NODE_CACHE_ENTRIES)),
            values: Mutex::new(ValueCache {
                latest,
                map: Generations::new(VALUE_CACHE_BYTES),
            }),
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
            iter: RefCell::new(None),
        }
    }

    fn recent(&self) -> Arc<Vec<Arc<Recent>>> {
        self.recent.read().expect("lock poisoned").clone()
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            storage: self,
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
        let node_batch = &block.batch.node_batch;
        // One allocation for the whole batch (growing it by doubling copied every record
        // again and again), and one scratch buffer for every encoding, instead of fresh
        // vectors per node and value.
        let mut wb = WriteBatch::with_capacity_bytes(batch_bytes_estimate(&block.batch));
        let mut key_buf = Vec::with_capacity(64);
        let mut buf = Vec::with_capacity(1024);
        let nodes = cf(&self.db, CF_NODES);
        for (key, node) in node_batch.nodes() {
            key_buf.clear();
            borsh::to_writer(&mut key_buf, key).expect("vec write");
            buf.clear();
            borsh::to_writer(&mut buf, node).expect("vec write");
            wb.put_cf(nodes, &key_buf, &buf);
        }
        let values = cf(&self.db, CF_VALUES);
        for ((version, hash), value) in node_batch.values() {
            encode_value(value.as_deref(), &mut buf);
            wb.put_cf(values, value_key(*hash, *version), &buf);
        }
        if !events.is_empty() {
            // Encoded as a `LedgerEvents` message (`repeated LedgerEvent events = 1`) without
            // copying the events into one first.
            let len: usize = events
                .iter()
                .map(|e| prost::encoding::message::encoded_len(1, e))
                .sum();
            let mut encoded = Vec::with_capacity(1 + len);
            encoded.push(EVENTS_VERSION);
            for e in events {
                prost::encoding::message::encode(1, e, &mut encoded);
            }
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
        self.remember(&block.batch, block.height);
        *self.committed.write().expect("lock poisoned") = Some(committed.clone());
        let mut recent = self.recent.write().expect("lock poisoned");
        let mut blocks: Vec<Arc<Recent>> = recent.iter().cloned().collect();
        blocks.push(Arc::new(Recent {
            height: block.height,
            batch: block.batch,
        }));
        // Keep the newest blocks' nodes, up to RECENT_NODES beyond the newest block's.
        let mut kept = 0;
        let keep_from = blocks
            .iter()
            .rev()
            .skip(1)
            .position(|b| {
                kept += b.batch.node_batch.nodes().len();
                kept > RECENT_NODES
            })
            .map_or(0, |older| blocks.len() - 1 - older)
            .max(blocks.len().saturating_sub(RECENT_BLOCKS));
        blocks.drain(..keep_from);
        *recent = Arc::new(blocks);
        drop(recent);
        Ok(committed)
    }

    /// Enters the values a committed block wrote into the value cache, which keeps it true.
    fn remember(&self, batch: &TreeUpdateBatch, height: u64) {
        let mut values = self.values.lock().expect("lock poisoned");
        for ((version, hash), value) in batch.node_batch.values() {
            values
                .map
                .insert(*hash, (*version, value.clone()), value_size);
        }
        values.latest = Some(height);
    }

    /// The value of `key` at `version`.
    pub fn get_at(&self, key: &[u8], version: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.value_at(&mut None, key_hash(key), version)
    }

    /// The value of the key with hash `key_hash` at `version`: from the value cache when it
    /// knows it (see [`ValueCache`]), otherwise one reverse seek through `iter` (created on
    /// first use, so that a caller making several reads can keep one), entered into the
    /// cache if `version` is still the latest. Every read of state goes through here: the
    /// block's execution, queries, and the values jmt asks for while building a proof.
    fn value_at<'s>(
        &'s self,
        iter: &mut Option<DBRawIterator<'s>>,
        key_hash: KeyHash,
        version: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        {
            let mut values = self.values.lock().expect("lock poisoned");
            if values.latest.is_some_and(|latest| version <= latest)
                && let Some((written, value)) = values.map.get(&key_hash, value_size)
                && *written <= version
            {
                return Ok(value.clone());
            }
        }
        let iter = iter.get_or_insert_with(|| {
            self.db
                .raw_iterator_cf_opt(cf(&self.db, CF_VALUES), values_read_options())
        });
        let (written, value) = read_record(iter, key_hash, version)?;
        let mut values = self.values.lock().expect("lock poisoned");
        if values.latest == Some(version) {
            values
                .map
                .insert(key_hash, (written, value.clone()), value_size);
        }
        Ok(value)
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

/// A column family's RocksDB options: every family shares one LRU block cache; the tree nodes,
/// read by point lookups, get a Bloom filter (10 bits a key, ~1% false positives), so a
/// lookup skips the files that do not hold the node instead of searching each one's index.
///
/// The values are read by a reverse seek within one key's records (`key hash ‖ version`), so
/// their family has the key hash as a fixed prefix, with a Bloom filter of prefixes in the
/// memtable and in every file: a read of a key that was never written (a registration's
/// signer, a first trust statement or membership) is answered by the filters instead of a
/// search of the memtable's skip list and of each file. Their iterators seek in prefix mode
/// ([`values_read_options`]).
fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    let mut opts = Options::default();
    match name {
        CF_NODES => table.set_bloom_filter(10.0, false),
        CF_VALUES => {
            opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(VALUE_PREFIX));
            opts.set_memtable_prefix_bloom_ratio(0.1);
            table.set_bloom_filter(10.0, false);
            table.set_whole_key_filtering(false);
        }
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    opts
}

/// The prefix of a value record's key that names the state key: its hash.
const VALUE_PREFIX: usize = 32;

/// How the values are read: every seek stays within the prefix of the key it seeks (one
/// state key's records), which lets RocksDB consult the prefix Bloom filters.
fn values_read_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_prefix_same_as_start(true);
    opts
}

fn value_key(hash: KeyHash, version: Version) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&hash.0);
    k[32..].copy_from_slice(&version.to_be_bytes());
    k
}

/// A state value as stored in the values column family, into `out` (cleared first): `0` for a
/// deletion, or `1` and the value.
fn encode_value(value: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
    }
}

/// At least as many bytes as a block's write batch takes (RocksDB's record headers included),
/// so that the batch is allocated once: every node is counted as an internal node (at most
/// ~700 bytes encoded, with its key), which overestimates leaves (~80), but the part of the
/// allocation that is never written is never touched either.
fn batch_bytes_estimate(batch: &TreeUpdateBatch) -> usize {
    let nodes = batch.node_batch.nodes().len() * 768;
    let values: usize = batch
        .node_batch
        .values()
        .values()
        .map(|v| 64 + v.as_ref().map_or(0, Vec::len))
        .sum();
    nodes + values + 4096
}

/// The value of the key with hash `key_hash` at `version` and the version it was written at
/// (0 if there is no record): the newest record of the key at or before `version` (one
/// reverse seek), through `iter`, which may be reused from seek to seek.
fn read_record(
    iter: &mut DBRawIterator<'_>,
    key_hash: KeyHash,
    version: Version,
) -> Result<(Version, Option<OwnedValue>), StorageError> {
    iter.seek_for_prev(value_key(key_hash, version));
    if !iter.valid() {
        iter.status().map_err(rocks("reading a value"))?;
        return Ok((0, None));
    }
    match (iter.key(), iter.value()) {
        (Some(k), Some(v)) if k.len() == 40 && k[..32] == key_hash.0 => {
            let written = u64::from_be_bytes(k[32..].try_into().expect("8 bytes"));
            match v.first() {
                Some(1) => Ok((written, Some(v[1..].to_vec()))),
                Some(0) => Ok((written, None)),
                _ => Err(StorageError::Corrupt(format!(
                    "the value record for {key_hash:?} at version {version} is corrupt"
                ))),
            }
        }
        _ => Ok((0, None)),
    }
}

/// jmt's view of the database: the last block's nodes, the node cache, then RocksDB (a node
/// read from RocksDB enters the cache; nodes never change once written, so the cache is
/// never stale).
struct Reader<'a> {
    storage: &'a Storage,
    recent: Arc<Vec<Arc<Recent>>>,
}

impl TreeReader for Reader<'_> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        if let Some(node) = recent_node(&self.recent, node_key) {
            return Ok(Some(node.clone()));
        }
        let nodes = &self.storage.nodes;
        if let Some(node) = nodes
            .lock()
            .expect("lock poisoned")
            .get(node_key, node_size)
        {
            return Ok(Some(node.clone()));
        }
        let db = &self.storage.db;
        let key = borsh::to_vec(node_key)?;
        match db.get_cf(cf(db, CF_NODES), key)? {
            None => Ok(None),
            Some(b) => {
                let node: Node = borsh::from_slice(&b)?;
                nodes.lock().expect("lock poisoned").insert(
                    node_key.clone(),
                    node.clone(),
                    node_size,
                );
                Ok(Some(node))
            }
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        Ok(self.storage.value_at(&mut None, key_hash, max_version)?)
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        anyhow::bail!("state-sync restore is not supported by this ledger")
    }
}

/// Read-only state at one version, for the state machine.
///
/// A read is answered by the value cache when the cache knows the value at the view's version
/// (see `ValueCache`), otherwise by RocksDB, through one iterator kept for all the view's
/// reads: creating an iterator costs more than the seek itself, and a block's execution reads
/// several keys per transaction. (The iterator pins the database as it was when the view first
/// read; that changes nothing, since the view reads only versions committed before it was
/// made.)
pub struct StateView<'a> {
    storage: &'a Storage,
    version: Option<u64>,
    iter: RefCell<Option<DBRawIterator<'a>>>,
}

impl StateRead for StateView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(version) = self.version else {
            return Ok(None);
        };
        self.storage
            .value_at(&mut self.iter.borrow_mut(), key_hash(key), version)
            .map_err(|e| ReadError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionpost_proto::proof::verify;

    /// The state as a plain map, to compare the storage with.
    type Model = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

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
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, ..Default::default() })]

        /// Reads and proofs answer every committed version as the history says, whether the
        /// value cache answers (warm: filled by the commits and by reads between them) or
        /// RocksDB does (cold: the same database reopened).
        #[test]
        fn reads_and_proofs_agree_with_the_history_warm_and_cold(
            blocks in proptest::collection::vec(
                proptest::collection::btree_map(0u8..6, proptest::option::of(0u8..4), 1..4),
                1..10,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let key = |k: u8| vec![b'k', k];
            // history[v]: the state after version v.
            let mut history: Vec<Model> = Vec::new();
            let check = |s: &Storage, history: &[Model]| {
                for (v, model) in history.iter().enumerate() {
                    let root = s.root_at(v as u64).unwrap();
                    for k in 0..6 {
                        let want = model.get(&key(k)).map(Vec::as_slice);
                        let got = s.get_at(&key(k), v as u64).unwrap();
                        proptest::prop_assert_eq!(got.as_deref(), want, "get_at k{} v{}", k, v);
                        let p = s.prove(&key(k), v as u64).unwrap();
                        proptest::prop_assert_eq!(verify(&root, &key(k), &p).unwrap(), want);
                    }
                }
                Ok(())
            };
            {
                let s = Storage::open(dir.path()).unwrap();
                let mut state = Model::new();
                for (height, block) in blocks.iter().enumerate() {
                    let w: WriteSet = block
                        .iter()
                        .map(|(k, v)| (key(*k), v.map(|v| vec![b'v', v, height as u8])))
                        .collect();
                    for (k, v) in &w {
                        match v {
                            Some(v) => state.insert(k.clone(), v.clone()),
                            None => state.remove(k),
                        };
                    }
                    let b = s.prepare(height as u64, &w).unwrap();
                    s.commit(b, "c", &[]).unwrap();
                    history.push(state.clone());
                    check(&s, &history)?;
                }
            }
            let s = Storage::open(dir.path()).unwrap();
            check(&s, &history)?;
        }
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
            let mut history: Vec<(Model, [u8; 32])> = Vec::new();
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
                history.push((model.clone(), root));
                // Earlier versions stay what they were, through views (which the value cache
                // must not answer with a newer value) and proofs (through the node cache).
                for (old, (old_model, old_root)) in history.iter().enumerate() {
                    let view = s.view(Some(old as u64));
                    for k in (0u16..300).step_by(11) {
                        let key = format!("key/{k}").into_bytes();
                        let want = old_model.get(&key).cloned();
                        proptest::prop_assert_eq!(view.get(&key).unwrap(), want.clone());
                        let p = s.prove(&key, old as u64).unwrap();
                        proptest::prop_assert_eq!(
                            verify(old_root, &key, &p).unwrap(),
                            want.as_deref()
                        );
                    }
                }
            }
            // Reopened (caches empty), every version reads the same.
            drop(s);
            let s = Storage::open(dir.path()).unwrap();
            for (old, (old_model, _)) in history.iter().enumerate() {
                for k in (0u16..300).step_by(13) {
                    let key = format!("key/{k}").into_bytes();
                    proptest::prop_assert_eq!(
                        s.view(Some(old as u64)).get(&key).unwrap(),
                        old_model.get(&key).cloned()
                    );
                }
            }
        }
    }

    #[test]
    fn generations_keep_what_is_used_and_stay_bounded() {
        let mut g = Generations::new(3);
        let one = |_: &u32| 1;
        for k in 0..3u32 {
            g.insert(k, k * 10, one);
        }
        // The young generation filled up and became the old one.
        assert!(g.young.is_empty() && g.old.len() == 3);
        assert_eq!(g.get(&0, one), Some(&0), "a hit in the old generation");
        assert!(
            g.young.contains_key(&0) && !g.old.contains_key(&0),
            "moved to the young"
        );
        g.insert(3, 30, one);
        g.insert(4, 40, one);
        // 0, 3, 4 filled the young generation: 1 and 2, unused, are gone.
        assert_eq!(
            (g.get(&1, one).copied(), g.get(&2, one).copied()),
            (None, None)
        );
        assert_eq!(
            (g.get(&0, one).copied(), g.get(&4, one).copied()),
            (Some(0), Some(40))
        );
        g.insert(4, 41, one);
        assert_eq!(g.get(&4, one).copied(), Some(41), "replaced");
        assert!(g.young.len() + g.old.len() <= 6);
    }

    /// A view made before a commit still reads its own version after the commit, though the
    /// value cache then holds the newer value.
    #[test]
    fn a_view_reads_its_version_across_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let b = s
            .prepare(0, &writes(&[("a", Some("1")), ("b", Some("2"))]))
            .unwrap();
        s.commit(b, "c", &[]).unwrap();
        let before = s.latest();
        assert_eq!(before.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        let b = s
            .prepare(1, &writes(&[("a", Some("3")), ("b", None)]))
            .unwrap();
        s.commit(b, "c", &[]).unwrap();
        assert_eq!(before.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(before.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        let after = s.latest();
        assert_eq!(after.get(b"a").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(after.get(b"b").unwrap(), None);
        assert_eq!(after.get(b"never").unwrap(), None);
        assert_eq!(before.get(b"never").unwrap(), None);
    }

    /// The values column family is read through its prefix Bloom filters (the key hash): a
    /// key's value is found at every version after its write, a deletion reads as one, and a
    /// key never written reads as absent, from the memtable and then from files, with the
    /// same read options as every read of state and without the value cache.
    #[test]
    fn values_are_found_through_the_prefix_filters_in_memtable_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let key = |i: usize| format!("key/{i}").into_bytes();
        // Version 0 writes the even keys, 2 the odd ones, 3 deletes key 0; 1 and 4 write
        // another key only.
        for version in 0..5u64 {
            let w: WriteSet = match version {
                0 => (0..100)
                    .step_by(2)
                    .map(|i| (key(i), Some(vec![0])))
                    .collect(),
                2 => (1..100)
                    .step_by(2)
                    .map(|i| (key(i), Some(vec![2])))
                    .collect(),
                3 => [(key(0), None)].into_iter().collect(),
                v => [(b"other".to_vec(), Some(vec![v as u8]))]
                    .into_iter()
                    .collect(),
            };
            let b = s.prepare(version, &w).unwrap();
            s.commit(b, "c", &[]).unwrap();
        }
        let want = |i: usize, version: u64| -> (u64, Option<Vec<u8>>) {
            match i {
                0 if version >= 3 => (3, None),
                i if i % 2 == 0 => (0, Some(vec![0])),
                _ if version >= 2 => (2, Some(vec![2])),
                _ => (0, None),
            }
        };
        let check = |s: &Storage, place: &str| {
            let mut iter =
                s.db.raw_iterator_cf_opt(cf(&s.db, CF_VALUES), values_read_options());
            for version in 0..5u64 {
                for i in 0..100 {
                    let got = read_record(&mut iter, key_hash(&key(i)), version).unwrap();
                    assert_eq!(
                        got,
                        want(i, version),
                        "key {i} at version {version} ({place})"
                    );
                    let never = format!("never/{i}").into_bytes();
                    let got = read_record(&mut iter, key_hash(&never), version).unwrap();
                    assert_eq!(got, (0, None), "never-written key {i} ({place})");
                }
            }
        };
        check(&s, "memtable");
        s.db.flush_cf(cf(&s.db, CF_VALUES)).unwrap();
        check(&s, "files");
    }

    /// A database whose values were written before their column family had a prefix
    /// extractor (files without prefix filters) reads the same with it: RocksDB does not
    /// consult a filter that a file does not have.
    #[test]
    fn values_written_without_prefix_filters_read_the_same_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = |i: u8| key_hash(&[b'k', i]);
        let open = |values: Options| {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            DB::open_cf_descriptors(
                &opts,
                dir.path(),
                [ColumnFamilyDescriptor::new(CF_VALUES, values)],
            )
            .unwrap()
        };
        {
            // The family as it was configured before: no prefix extractor, no filter.
            let db = open(Options::default());
            let mut buf = Vec::new();
            for i in 0..50u8 {
                encode_value(Some(&[i]), &mut buf);
                db.put_cf(
                    cf(&db, CF_VALUES),
                    value_key(key(i), u64::from(i % 3)),
                    &buf,
                )
                .unwrap();
            }
            db.flush_cf(cf(&db, CF_VALUES)).unwrap();
        }
        let db = open(cf_options(CF_VALUES, &Cache::new_lru_cache(1 << 20)));
        let mut iter = db.raw_iterator_cf_opt(cf(&db, CF_VALUES), values_read_options());
        for i in 0..50u8 {
            let written = u64::from(i % 3);
            for version in 0..4u64 {
                let want = if version >= written {
                    (written, Some(vec![i]))
                } else {
                    (0, None)
                };
                assert_eq!(
                    read_record(&mut iter, key(i), version).unwrap(),
                    want,
                    "key {i} at {version}"
                );
            }
            assert_eq!(read_record(&mut iter, key(100 + i), 3).unwrap(), (0, None));
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
        // The database as a build of format `version` leaves it, opened by this build.
        let open_as = |version: u32| {
            let db = DB::open_cf(
                &Options::default(),
                dir.path(),
                [CF_NODES, CF_VALUES, CF_EVENTS, CF_META],
            )
            .unwrap();
            db.put_cf(cf(&db, CF_META), META_FORMAT, version.to_be_bytes())
                .unwrap();
            drop(db);
            Storage::open(dir.path()).err().expect("refused")
        };
        // A newer build's database, and older builds' (format 1: trust statements under keys
        // of their own; format 2: list records with a member count).
        for version in [STATE_FORMAT + 1, 1, 2] {
            let err = open_as(version);
            assert!(
                matches!(
                    err,
                    StorageError::Format { found, supported: STATE_FORMAT, .. } if found == version
                ),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("format version {version}")),
                "{err}"
            );
        }
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
