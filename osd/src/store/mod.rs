//! The object store: what an OSD keeps on its disk, behind a trait that knows nothing of sled.
//!
//! Objects are keyed by placement group and id (the same id may exist in two pools, and a PG's
//! objects form one contiguous key range for listing, scanning and removal). Each object has its
//! metadata ([`ObjectStat`]), its data cut into [`CHUNK`]-byte chunks with one crc32 each, and,
//! when typed, its fields in an order-preserving index. Each PG has a bounded log of the versions
//! that changed it and a [`PgInfo`] saying how far this OSD has got.
//!
//! Mutations come in three kinds ([`Mutation`]): a client op ordered by the primary as a PG
//! version ([`Store::apply`]), a copy of an object installed by recovery ([`Store::install`]),
//! and the removal of a copy the primary does not have ([`Store::remove`]). Every mutation is
//! idempotent when replayed in order over a newer state, which is what lets the journal
//! ([`crate::journal`]) be replayed over whatever part of the store reached the disk.
//!
//! Implementations: [`sled_store::SledStore`] (sled for metadata and small objects, data files
//! for large ones) and [`mem::MemStore`] (a model in memory). One test suite runs against both.

mod direct;
pub mod mem;
pub mod sled_store;
#[cfg(test)]
mod suite;

use crate::error::{Error, Result};
use bytes::Bytes;
use cairn_proto::msg::{LogEntry, LogOp, ObjectPiece, PgInfo, ScanItem};
use cairn_proto::object::{check_field_name, CmpOp, QueryHit};
use cairn_proto::{Filter, ObjOp, ObjectStat, Oid, PgId};
use serde::{Deserialize, Serialize};

/// Bytes covered by one checksum.
pub const CHUNK: u64 = 64 * 1024;
/// Objects up to this size live inside the metadata database.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Default number of log entries kept per placement group.
pub const DEFAULT_LOG_KEEP: u64 = 3000;

/// Tunables shared by the store implementations.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Log entries kept per placement group; older ones are dropped and recovery from further
    /// back needs a backfill.
    pub log_keep: u64,
    /// Large writes into data files go `O_DIRECT` (see `direct.rs`).
    pub direct_io: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            log_keep: DEFAULT_LOG_KEEP,
            direct_io: true,
        }
    }
}

/// One durable change, as the journal records it and the store applies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Mutation {
    /// A client op the primary ordered as `version` of the PG.
    Apply { version: u64, op: ObjOp, mtime: i64 },
    /// A piece of a copy from a peer; see [`Store::install`].
    Install {
        piece: ObjectPiece,
        first: bool,
        entry: Option<LogEntry>,
    },
    /// Drop this copy (recovery found the object absent at the source).
    Remove,
    /// A client's whole-object write of a new object whose data [`Store::place`] already wrote
    /// to its final place (durably, before this record): the record carries only what makes
    /// the data the object. Variant added in place of nothing: older journals decode as before.
    Placed {
        version: u64,
        mtime: i64,
        placed: Placed,
    },
}

/// What [`Store::place`] wrote: the object's size and the crc32 of each chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub size: u64,
    pub crcs: Vec<u32>,
}

impl Placed {
    /// The size and chunk checksums of `data`.
    pub fn of(data: &[u8]) -> Placed {
        Placed {
            size: data.len() as u64,
            crcs: data.chunks(CHUNK as usize).map(crc32fast::hash).collect(),
        }
    }
}

impl Mutation {
    pub fn apply_to(&self, store: &dyn Store, pg: PgId, oid: Oid) -> Result<()> {
        match self {
            Mutation::Apply { version, op, mtime } => {
                store.apply(pg, *version, oid, op, *mtime).map(|_| ())
            }
            Mutation::Install {
                piece,
                first,
                entry,
            } => store.install(pg, oid, piece, *first, entry.as_ref()),
            Mutation::Remove => store.remove(pg, oid),
            Mutation::Placed {
                version,
                mtime,
                placed,
            } => store
                .apply_placed(pg, *version, oid, placed, *mtime)
                .map(|_| ()),
        }
    }

    /// Bytes by which this mutation may grow the store at most (for the capacity check).
    pub fn max_growth(&self, current_size: u64) -> u64 {
        match self {
            Mutation::Apply { op, .. } => match op {
                ObjOp::WriteFull { data } => data.len() as u64,
                ObjOp::Write { offset, data } => {
                    (offset + data.len() as u64).saturating_sub(current_size)
                }
                ObjOp::Truncate { size } => size.saturating_sub(current_size),
                ObjOp::Delete => 0,
                ObjOp::SetAttrs { set, .. } => {
                    set.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
                }
                ObjOp::SetTyped { fields, .. } => fields.len() as u64 * 64,
            },
            Mutation::Install { piece, first, .. } => {
                if *first {
                    piece.stat.size.saturating_sub(current_size)
                } else {
                    0
                }
            }
            Mutation::Remove => 0,
            Mutation::Placed { placed, .. } => placed.size.saturating_sub(current_size),
        }
    }
}

/// An object store. Methods block (sled and file I/O); async callers run them on blocking
/// threads.
pub trait Store: Send + Sync + 'static {
    /// Apply a client mutation ordered as `version` of `pg`, record it in the PG log and advance
    /// the PG info. Returns the object's version before the change (0: it did not exist).
    fn apply(&self, pg: PgId, version: u64, oid: Oid, op: &ObjOp, mtime: i64) -> Result<u64>;

    /// Install a piece of a copy of an object: `first` replaces the local copy (data, attributes,
    /// fields and version) with `piece.stat` and zeros of `piece.stat.size` bytes before writing
    /// `piece.data` at `piece.offset`; later pieces only write their data. With `entry`, the PG
    /// log and info advance as if the entry had been applied here.
    fn install(
        &self,
        pg: PgId,
        oid: Oid,
        piece: &ObjectPiece,
        first: bool,
        entry: Option<&LogEntry>,
    ) -> Result<()>;

    /// Remove the local copy of an object without logging (recovery).
    fn remove(&self, pg: PgId, oid: Oid) -> Result<()>;

    /// Write the data of a new object (one that does not exist and has no mutation in flight)
    /// straight to the place it will live in, durably, before the small journal record
    /// ([`Mutation::Placed`]) that makes it the object: the data is written once, not into the
    /// journal and again into the store. Until [`Store::apply_placed`] the object does not
    /// exist; data placed for a record that never became durable is overwritten by the next
    /// placement of the same object. `None`: this store does not place data (the write is
    /// journaled whole).
    fn place(&self, pg: PgId, oid: Oid, data: &[u8]) -> Result<Option<Placed>>;

    /// Make placed data the object `oid`, ordered as `version` of `pg`, and log it. Whatever the
    /// store holds of `oid` is replaced (only a replay can find one: a later state of the
    /// object), except the placed data itself. Returns the version replaced (0: none).
    fn apply_placed(
        &self,
        pg: PgId,
        version: u64,
        oid: Oid,
        placed: &Placed,
        mtime: i64,
    ) -> Result<u64>;

    /// Record a PG log entry without applying anything: a replayed mutation superseded by a
    /// later placed write of the same object (see [`crate::durable::Durable::replay`]).
    fn log_only(&self, pg: PgId, entry: &LogEntry) -> Result<()>;

    /// Read up to `len` bytes at `offset`, shorter at the end of the object; every chunk is
    /// checked against its checksum ([`Error::Corrupt`]).
    fn read(&self, pg: PgId, oid: Oid, offset: u64, len: u64) -> Result<Bytes>;

    fn stat(&self, pg: PgId, oid: Oid) -> Result<Option<ObjectStat>>;

    /// The object's stat and up to `len` bytes at `offset`, consistent with each other (`None`:
    /// no such object). What recovery and repair copy between OSDs.
    fn read_piece(&self, pg: PgId, oid: Oid, offset: u64, len: u64) -> Result<Option<ObjectPiece>>;

    /// Objects of a PG with their versions, in id order after `after`; `true` when more follow.
    fn list(&self, pg: PgId, after: Option<Oid>, limit: usize) -> Result<(Vec<(Oid, u64)>, bool)>;

    /// Like [`Store::list`] with sizes and digests (crc32 over the chunk checksums).
    fn scan(&self, pg: PgId, after: Option<Oid>, limit: usize) -> Result<(Vec<ScanItem>, bool)>;

    /// Typed objects of `otype` in `pg` matching `filter`, in id order after `after`.
    fn query(
        &self,
        pg: PgId,
        otype: &str,
        filter: &Filter,
        after: Option<Oid>,
        limit: usize,
    ) -> Result<(Vec<QueryHit>, bool)>;

    /// Check every chunk of an object against its checksum without returning data.
    fn verify(&self, pg: PgId, oid: Oid) -> Result<()>;

    fn pg_info(&self, pg: PgId) -> Result<PgInfo>;

    /// Log entries with versions after `since`, oldest first; [`Error::LogTrimmed`] when `since`
    /// is older than the log's tail.
    fn pg_log(&self, pg: PgId, since: u64) -> Result<Vec<LogEntry>>;

    /// Recovery of this copy finished through `last_update`: merge `log` into the local log (or,
    /// when `backfilled`, drop the local log and start it at `last_update`) and mark the PG
    /// complete through `last_update`.
    fn activate(
        &self,
        pg: PgId,
        last_update: u64,
        log: &[LogEntry],
        backfilled: bool,
    ) -> Result<()>;

    /// Placement groups this store holds anything of.
    fn pgs(&self) -> Result<Vec<PgId>>;

    /// Drop every object, log entry and the info of a PG.
    fn remove_pg(&self, pg: PgId) -> Result<()>;

    /// Make everything applied so far durable.
    fn sync(&self) -> Result<()>;

    /// Logical bytes held (sum of object sizes).
    fn used_bytes(&self) -> u64;

    /// While replaying the journal the data files may hold newer bytes than the checksums that
    /// reached the disk: recompute checksums of touched chunks instead of flagging them corrupt.
    fn set_replaying(&self, on: bool);
}

/// Check the names a `SetTyped` op brings.
pub fn check_typed(
    otype: &str,
    fields: &std::collections::BTreeMap<String, cairn_proto::Value>,
) -> Result<()> {
    check_field_name(otype).map_err(|e| Error::invalid(format!("object type: {e}")))?;
    for name in fields.keys() {
        check_field_name(name).map_err(|e| Error::invalid(format!("field: {e}")))?;
    }
    Ok(())
}

/// The log entry an op leaves.
pub fn log_entry(version: u64, oid: Oid, op: &ObjOp, prior: u64) -> LogEntry {
    LogEntry {
        version,
        oid,
        op: if matches!(op, ObjOp::Delete) {
            LogOp::Delete
        } else {
            LogOp::Modify
        },
        prior,
    }
}

/// How recording `version` moves a PG's info: `last_complete` only advances without gaps, and
/// the log keeps its newest `keep` entries. Returns the new info; entries at or below the new
/// `log_tail` are to be dropped.
pub fn advance_info(mut info: PgInfo, version: u64, keep: u64) -> PgInfo {
    if info.last_complete + 1 == version {
        info.last_complete = version;
    }
    info.last_update = info.last_update.max(version);
    let keep = keep.max(1);
    if info.last_update > info.log_tail + keep {
        info.log_tail = info.last_update - keep;
    }
    info
}

/// The info after an activation through `last_update`.
pub fn activated_info(info: PgInfo, last_update: u64, backfilled: bool) -> PgInfo {
    PgInfo {
        last_update,
        last_complete: last_update,
        log_tail: if backfilled {
            last_update
        } else {
            info.log_tail.min(last_update)
        },
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Which predicate of a filter an index scan should use: equality first (narrowest), then
/// prefix, then ranges.
pub fn pick_index_pred(filter: &Filter) -> Option<usize> {
    let rank = |op: CmpOp| match op {
        CmpOp::Eq => 0,
        CmpOp::Prefix => 1,
        _ => 2,
    };
    (0..filter.preds.len()).min_by_key(|&i| rank(filter.preds[i].op))
}

/// The checksum-of-checksums digest of an object, from `(len, crc)` per chunk in order, with
/// holes given as `None` (they hash as zeros, so a hole and written zeros digest alike).
pub fn digest(chunks: impl Iterator<Item = (u64, Option<u32>)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (len, crc) in chunks {
        let crc = crc.unwrap_or_else(|| zero_crc(len));
        h.update(&crc.to_be_bytes());
    }
    h.finalize()
}

/// crc32 of `len` zero bytes.
pub fn zero_crc(len: u64) -> u32 {
    static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];
    let mut h = crc32fast::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        h.update(&ZEROS[..n as usize]);
        left -= n;
    }
    h.finalize()
}

/// Valid length of chunk `idx` of an object of `size` bytes.
pub fn chunk_len(size: u64, idx: u64) -> u64 {
    size.saturating_sub(idx * CHUNK).min(CHUNK)
}

/// Number of chunks of an object of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
