//! The raft log and hard state on sled, implementing [`raft::Storage`].
//!
//! Layout (two sled trees; a snapshot is written to both in one transaction; appends go key by
//! key in an order that keeps the log contiguous, see [`RaftStore::append`]):
//!
//! ```text
//! tree      key                     value
//! default   "M/version"             record(u32 BE format version, currently 2)
//! default   "M/hs"                  record(eraftpb::HardState, protobuf)
//! default   "M/snap_meta"           record(eraftpb::SnapshotMetadata, protobuf): index, term, conf state
//! default   "L" ++ index (u64 BE)   record(eraftpb::Entry, protobuf)
//! "snap"    "M/snap_data"           record(state-machine image, see `state::State::encode`)
//! record(x) = crc32(x) (u32 BE) ++ x          (sled keeps the length)
//! ```
//!
//! The image has a tree of its own because sled rewrites a whole leaf page on every change to
//! any key in it: with the image beside the log's last entries and the hard state, every
//! append rewrote the image too (hundreds of KiB per raft write, a new sled blob file each
//! time; a metadata replica grew to 510 MB during a migration). Format 1 kept the image in the
//! default tree; it is moved on open.
//!
//! The log always starts right after the latest snapshot: taking a snapshot deletes the entries it
//! covers, so `first_index == snapshot.index + 1`, and the snapshot's conf state is the
//! configuration as of that index. Entries after it are replayed on restart (`Config.applied` is
//! the snapshot index), which also replays the conf changes among them.
//!
//! Writes are not flushed here; the raft task calls [`RaftStore::flush`] when a `Ready` says
//! `must_sync`, before sending the messages that depend on it.

use crate::error::MetaError;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use sled::transaction::{ConflictableTransactionResult, TransactionError};
use sled::Transactional;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FORMAT_VERSION: u32 = 2;
const SNAP_TREE: &[u8] = b"snap";
const KEY_VERSION: &[u8] = b"M/version";
const KEY_HS: &[u8] = b"M/hs";
const KEY_SNAP_META: &[u8] = b"M/snap_meta";
const KEY_SNAP_DATA: &[u8] = b"M/snap_data";
const LOG_PREFIX: u8 = b'L';

/// Index and term of the snapshot a fresh cluster starts from. Starting above zero means the log of
/// every initial member begins after it, so a replica added later always receives a snapshot (and
/// with it the initial configuration) rather than an entry history that lacks it.
pub(crate) const BOOTSTRAP_INDEX: u64 = 5;
pub(crate) const BOOTSTRAP_TERM: u64 = 5;

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [LOG_PREFIX; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn unrecord<'a>(key: &str, v: &'a [u8]) -> Result<&'a [u8], MetaError> {
    if v.len() < 4 {
        return Err(MetaError::corrupt(key, "record shorter than its checksum"));
    }
    let (crc, payload) = v.split_at(4);
    if crc32fast::hash(payload).to_be_bytes() != crc {
        return Err(MetaError::corrupt(key, "checksum mismatch"));
    }
    Ok(payload)
}

fn pb_record<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, MetaError> {
    Ok(record(&m.write_to_bytes().map_err(raft::Error::from)?))
}

fn decode_pb<M: protobuf::Message>(key: &str, v: &[u8]) -> Result<M, MetaError> {
    M::parse_from_bytes(unrecord(key, v)?).map_err(|e| MetaError::corrupt(key, e))
}

/// The transactions here never abort (`Infallible`), so only storage errors come out.
fn transaction_err(e: TransactionError<Infallible>) -> MetaError {
    match e {
        TransactionError::Storage(e) => e.into(),
        TransactionError::Abort(never) => match never {},
    }
}

/// Format 1 kept the snapshot image in the default tree: move it to its own.
fn migrate_v1(db: &sled::Db, snap_tree: &sled::Tree) -> Result<(), MetaError> {
    let image = db.get(KEY_SNAP_DATA)?;
    (&**db, snap_tree)
        .transaction(
            |(log, snap)| -> ConflictableTransactionResult<(), Infallible> {
                if let Some(v) = &image {
                    snap.insert(KEY_SNAP_DATA, v.clone())?;
                    log.remove(KEY_SNAP_DATA)?;
                }
                log.insert(KEY_VERSION, record(&FORMAT_VERSION.to_be_bytes()))?;
                Ok(())
            },
        )
        .map_err(transaction_err)?;
    db.flush()?;
    Ok(())
}

fn store_err(e: MetaError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Whether `id` is part of `cs` in any role.
fn conf_contains(cs: &ConfState, id: u64) -> bool {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .any(|v| *v == id)
}

pub struct RaftStore {
    db: sled::Db,
    /// The tree holding only the snapshot image.
    snap_tree: sled::Tree,
    hs: HardState,
    /// The latest snapshot's metadata; also where the log was truncated.
    snap: SnapshotMetadata,
    /// Terms of the entries `first_index()..=last_index()`, so `term()` needs no disk read.
    terms: VecDeque<u64>,
    /// Set when raft asked for a snapshot the stored one cannot serve (too old, or from before the
    /// recipient joined); the raft task then takes a fresh one.
    snapshot_wanted: AtomicBool,
}

impl RaftStore {
    /// Open (or create) the store under `dir`. sled's file lock may outlive a just-stopped replica
    /// of the same directory by a moment, so a lock failure is retried briefly.
    pub fn open(dir: &Path) -> Result<RaftStore, MetaError> {
        std::fs::create_dir_all(dir).map_err(|source| MetaError::Io {
            op: "create data_dir",
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let db = loop {
            match sled::Config::new()
                .path(dir.join("raft"))
                .cache_capacity(16 << 20)
                .open()
            {
                Ok(db) => break db,
                // sled reports a held lock as `ErrorKind::Other`.
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other && Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, "raft store busy; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let snap_tree = db.open_tree(SNAP_TREE)?;
        match db.get(KEY_VERSION)? {
            None => {
                db.insert(KEY_VERSION, record(&FORMAT_VERSION.to_be_bytes()))?;
            }
            Some(v) => {
                let p = unrecord("M/version", &v)?;
                let version = <[u8; 4]>::try_from(p)
                    .map(u32::from_be_bytes)
                    .map_err(|_| MetaError::corrupt("M/version", "not 4 bytes"))?;
                match version {
                    FORMAT_VERSION => {}
                    1 => migrate_v1(&db, &snap_tree)?,
                    _ => {
                        return Err(MetaError::corrupt(
                            "M/version",
                            format!("unknown format version {version}"),
                        ))
                    }
                }
            }
        }
        let hs = match db.get(KEY_HS)? {
            Some(v) => decode_pb("M/hs", &v)?,
            None => HardState::default(),
        };
        let snap: SnapshotMetadata = match db.get(KEY_SNAP_META)? {
            Some(v) => decode_pb("M/snap_meta", &v)?,
            None => SnapshotMetadata::default(),
        };
        let mut terms = VecDeque::new();
        for (expect, kv) in (snap.index + 1..).zip(db.scan_prefix([LOG_PREFIX])) {
            let (k, v) = kv?;
            let key = format!(
                "L/{}",
                u64::from_be_bytes(k[1..].try_into().unwrap_or_default())
            );
            let e: Entry = decode_pb(&key, &v)?;
            if e.index != expect {
                return Err(MetaError::corrupt(
                    key,
                    format!("log gap: expected index {expect}, found {}", e.index),
                ));
            }
            terms.push_back(e.term);
        }
        let store = RaftStore {
            db,
            snap_tree,
            hs,
            snap,
            terms,
            snapshot_wanted: AtomicBool::new(false),
        };
        if store.hs.commit > store.last_index_() {
            return Err(MetaError::corrupt(
                "M/hs",
                format!(
                    "commit {} beyond the last log index {}",
                    store.hs.commit,
                    store.last_index_()
                ),
            ));
        }
        Ok(store)
    }

    /// Whether this store has ever held raft state (bootstrapped, or joined and sent a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.snap.index > 0 || self.hs != HardState::default() || !self.terms.is_empty()
    }

    /// Start a new cluster: a snapshot at [`BOOTSTRAP_INDEX`] whose conf state has `voters` and
    /// whose data is the initial state machine.
    pub fn bootstrap(&mut self, voters: Vec<u64>, data: Vec<u8>) -> Result<(), MetaError> {
        let mut meta = SnapshotMetadata {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
            ..Default::default()
        };
        meta.mut_conf_state().voters = voters;
        self.write_snapshot(meta, &data, true)?;
        self.flush()
    }

    pub fn snapshot_meta(&self) -> &SnapshotMetadata {
        &self.snap
    }

    /// The state-machine image of the latest snapshot.
    pub fn snapshot_data(&self) -> Result<Vec<u8>, MetaError> {
        match self.snap_tree.get(KEY_SNAP_DATA)? {
            Some(v) => Ok(unrecord("M/snap_data", &v)?.to_vec()),
            None => Ok(Vec::new()),
        }
    }

    fn first_index_(&self) -> u64 {
        self.snap.index + 1
    }

    fn last_index_(&self) -> u64 {
        self.snap.index + self.terms.len() as u64
    }

    /// Append entries, replacing any conflicting suffix of the log.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), MetaError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        let (start, last) = (first.index, self.last_index_());
        if start < self.first_index_() || start > last + 1 {
            return Err(MetaError::corrupt(
                format!("L/{start}"),
                format!(
                    "append at {start} outside the log [{}, {}]",
                    self.first_index_(),
                    last + 1
                ),
            ));
        }
        let mut records = Vec::with_capacity(ents.len());
        for (n, e) in ents.iter().enumerate() {
            if e.index != start + n as u64 {
                return Err(MetaError::corrupt(
                    format!("L/{}", e.index),
                    "appended entries are not contiguous",
                ));
            }
            records.push((log_key(e.index), pb_record(e)?));
        }
        // Key by key, not as a sled batch: every `apply_batch` of sled 0.34 rolls its log buffer
        // twice, each roll a synchronous `sync_file_range` (measured: 9 per namespace write over
        // three replicas, where the `flush` that follows needs one each). The order keeps the
        // log contiguous whatever prefix of these writes a crash keeps (sled recovers its log up
        // to the first incomplete write): the conflicting suffix goes from its end backwards,
        // then the new entries come in index order. Nothing here was acknowledged yet: raft
        // answers only after `flush`.
        for i in (start..=last).rev() {
            self.db.remove(log_key(i))?;
        }
        for (k, v) in records {
            self.db.insert(k, v)?;
        }
        self.terms.truncate((start - self.first_index_()) as usize);
        self.terms.extend(ents.iter().map(|e| e.term));
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), MetaError> {
        self.db.insert(KEY_HS, pb_record(&hs)?)?;
        self.hs = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), MetaError> {
        let mut hs = self.hs.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// Install a snapshot received from the leader: it replaces the whole log.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), MetaError> {
        let meta = snap.get_metadata();
        if meta.index <= self.snap.index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate).into());
        }
        self.write_snapshot(meta.clone(), &snap.data, true)
    }

    /// Record a snapshot of the local state machine at `meta.index` (applied, so in the log) and
    /// drop the entries it covers.
    pub fn compact_to(&mut self, meta: SnapshotMetadata, data: &[u8]) -> Result<(), MetaError> {
        if meta.index <= self.snap.index || meta.index > self.last_index_() {
            return Err(MetaError::corrupt(
                "M/snap_meta",
                format!(
                    "snapshot at {} outside the log ({}, {}]",
                    meta.index,
                    self.snap.index,
                    self.last_index_()
                ),
            ));
        }
        self.write_snapshot(meta, data, false)
    }

    fn write_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: &[u8],
        replace_log: bool,
    ) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        let drop_to = if replace_log {
            self.last_index_()
        } else {
            meta.index
        };
        for i in self.first_index_()..=drop_to {
            batch.remove(&log_key(i));
        }
        let mut hs = self.hs.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        batch.insert(KEY_HS, pb_record(&hs)?);
        batch.insert(KEY_SNAP_META, pb_record(&meta)?);
        let image = record(data);
        (&*self.db, &self.snap_tree)
            .transaction(
                |(log, snap)| -> ConflictableTransactionResult<(), Infallible> {
                    log.apply_batch(&batch)?;
                    snap.insert(KEY_SNAP_DATA, image.as_slice())?;
                    Ok(())
                },
            )
            .map_err(transaction_err)?;
        if replace_log {
            self.terms.clear();
        } else {
            self.terms.drain(..(meta.index - self.snap.index) as usize);
        }
        self.hs = hs;
        self.snap = meta;
        Ok(())
    }

    /// Make everything written so far durable.
    pub fn flush(&self) -> Result<(), MetaError> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether raft asked for a snapshot the store could not give; clears the request.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::AcqRel)
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, MetaError> {
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut limited = false;
        for kv in self.db.range(log_key(low)..log_key(high)) {
            let (_, v) = kv?;
            let key = format!("L/{}", low + out.len() as u64);
            let e: Entry = decode_pb(&key, &v)?;
            if e.index != low + out.len() as u64 {
                return Err(MetaError::corrupt(key, format!("holds entry {}", e.index)));
            }
            size += u64::from(e.compute_size());
            // At least one entry, then stop before exceeding the limit.
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                limited = true;
                break;
            }
            out.push(e);
        }
        if !limited && out.len() as u64 != high - low {
            return Err(MetaError::corrupt(
                format!("L/{low}"),
                format!("entries [{low}, {high}) missing from the log"),
            ));
        }
        Ok(out)
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hs.clone(),
            self.snap.get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        self.read_entries(low, high, max_size.into())
            .map_err(store_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap.index {
            return Ok(self.snap.term);
        }
        if idx < self.snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.terms.get((idx - self.first_index_()) as usize) {
            Some(t) => Ok(*t),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if self.snap.index < request_index || !conf_contains(self.snap.get_conf_state(), to) {
            self.snapshot_wanted.store(true, Ordering::Release);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut s = Snapshot {
            data: self.snapshot_data().map_err(store_err)?.into(),
            ..Default::default()
        };
        s.set_metadata(self.snap.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn log_survives_reopen_and_conflicts_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RaftStore::open(dir.path()).unwrap();
            assert!(!s.is_initialized());
            s.bootstrap(vec![1, 2, 3], b"state".to_vec()).unwrap();
            assert!(s.is_initialized());
            assert_eq!(s.first_index().unwrap(), BOOTSTRAP_INDEX + 1);
            assert_eq!(s.last_index().unwrap(), BOOTSTRAP_INDEX);
            assert_eq!(s.term(BOOTSTRAP_INDEX).unwrap(), BOOTSTRAP_TERM);
            s.append(&[entry(6, 6, b"a"), entry(7, 6, b"b"), entry(8, 6, b"c")])
                .unwrap();
            // A new leader overwrites 7.. with its own entries.
            s.append(&[entry(7, 7, b"x")]).unwrap();
            let hs = HardState {
                term: 7,
                vote: 2,
                commit: 7,
                ..Default::default()
            };
            s.set_hard_state(hs).unwrap();
            s.flush().unwrap();
        }
        let s = RaftStore::open(dir.path()).unwrap();
        assert_eq!(s.last_index().unwrap(), 7);
        let es = s.entries(6, 8, None, ctx()).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(&es[1].data[..], b"x");
        assert_eq!(s.term(7).unwrap(), 7);
        assert_eq!(s.initial_state().unwrap().hard_state.vote, 2);
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(st.hard_state.commit, 7);
        assert_eq!(
            s.entries(5, 7, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        // A size limit still returns at least one entry.
        assert_eq!(s.entries(6, 8, Some(1), ctx()).unwrap().len(), 1);
    }

    #[test]
    fn appends_leave_the_image_alone_and_format_1_is_moved_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let image = vec![7u8; 300 << 10];
        {
            let mut s = RaftStore::open(dir.path()).unwrap();
            s.bootstrap(vec![1], image.clone()).unwrap();
            // The image is not in the tree the log and hard state live in.
            assert!(s.db.get(KEY_SNAP_DATA).unwrap().is_none());
            for i in 0..200u64 {
                s.append(&[entry(BOOTSTRAP_INDEX + 1 + i, 6, b"x")])
                    .unwrap();
                s.set_commit(BOOTSTRAP_INDEX + 1 + i).unwrap();
                s.flush().unwrap();
            }
            // Beside the log, each append rewrote the image: 14 MB here after 200 appends (sled
            // collects some); apart, under 1 MB.
            let size: u64 = walk_size(dir.path());
            assert!(size < 4 << 20, "the store holds {size} bytes");
            // What format 1 looked like: the image in the default tree.
            let img = s.snap_tree.remove(KEY_SNAP_DATA).unwrap().unwrap();
            s.db.insert(KEY_SNAP_DATA, img).unwrap();
            s.db.insert(KEY_VERSION, record(&1u32.to_be_bytes()))
                .unwrap();
            s.flush().unwrap();
        }
        let s = RaftStore::open(dir.path()).unwrap();
        assert_eq!(s.snapshot_data().unwrap(), image);
        assert!(s.db.get(KEY_SNAP_DATA).unwrap().is_none());
        assert_eq!(s.last_index().unwrap(), BOOTSTRAP_INDEX + 200);
    }

    fn walk_size(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }

    #[test]
    fn compaction_moves_first_index_and_snapshots_serve_members_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStore::open(dir.path()).unwrap();
        s.bootstrap(vec![1], b"s0".to_vec()).unwrap();
        let ents: Vec<_> = (6..=20).map(|i| entry(i, 6, b"e")).collect();
        s.append(&ents).unwrap();
        s.set_commit(20).unwrap();
        let mut meta = SnapshotMetadata {
            index: 15,
            term: 6,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2];
        s.compact_to(meta, b"s15").unwrap();
        assert_eq!(s.first_index().unwrap(), 16);
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.term(15).unwrap(), 6);
        assert!(s.term(14).is_err());
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(&snap.data[..], b"s15");
        assert_eq!(snap.get_metadata().index, 15);
        // Node 3 is not in the snapshot's configuration: the store asks for a fresh one.
        assert!(!s.take_snapshot_wanted());
        assert_eq!(
            s.snapshot(0, 3),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        assert!(s.take_snapshot_wanted());
        drop(s);
        let s = RaftStore::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 16);
        assert_eq!(s.entries(16, 21, None, ctx()).unwrap().len(), 5);
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStore::open(dir.path()).unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        let mut snap = Snapshot {
            data: b"img".to_vec().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 40;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 4];
        s.apply_snapshot(&snap).unwrap();
        assert_eq!(s.first_index().unwrap(), 41);
        assert_eq!(s.last_index().unwrap(), 40);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 40);
        assert_eq!(s.snapshot_data().unwrap(), b"img");
        assert!(s.apply_snapshot(&snap).is_err());
    }

    #[test]
    fn a_flipped_byte_is_reported_as_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RaftStore::open(dir.path()).unwrap();
            s.append(&[entry(1, 1, b"hello")]).unwrap();
            let mut v = s.db.get(log_key(1)).unwrap().unwrap().to_vec();
            let last = v.len() - 1;
            v[last] ^= 0xff;
            s.db.insert(log_key(1), v).unwrap();
            s.flush().unwrap();
        }
        match RaftStore::open(dir.path()) {
            Err(MetaError::Corrupt { key, .. }) => assert_eq!(key, "L/1"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("corruption not detected"),
        }
    }
}
