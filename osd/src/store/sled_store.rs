//! The on-disk [`Store`]: sled for metadata, checksums, indexes, PG logs and small objects;
//! one data file per large object.
//!
//! Layout (every integer big-endian so keys sort):
//! ```text
//! db/                      sled database
//!   "format"               (default tree) FORMAT
//!   obj   pg(8) oid(16)                          -> ObjMeta (bincode)
//!   crc   pg(8) oid(16) chunk(8)                 -> crc32(4) len(4) flags(1)   absent: a hole (zeros)
//!   inl   pg(8) oid(16)                          -> the data of an inline object (<= INLINE_MAX)
//!   idx   pg(8) otype 00 field 00 value oid(16)  -> ()   value: Value::encode_ordered
//!   log   pg(8) version(8)                       -> LogEntry (bincode)
//!   info  pg(8)                                  -> PgInfo (bincode)
//! objects/<oid byte 0, 2 hex>/<pg, 16 hex>-<oid, 32 hex>   data file, length = object size
//! ```
//! Large writes into data files go `O_DIRECT` (see `store/direct.rs`); the rest through the page cache.
//!
//! A chunk's `flags` bit 0 marks it poisoned: it was partly rewritten while its old bytes failed
//! their checksum, so its content is unknown until a full rewrite or a repair.
//!
//! Writes are not atomic across trees and files; the OSD journal makes them so by replaying every
//! mutation since the last [`Store::sync`]. Concurrent readers of one object are kept off
//! half-applied state by a striped per-object lock.

use super::direct::Direct;
use super::{
    activated_info, advance_info, check_typed, chunk_count, chunk_len, digest, log_entry,
    pick_index_pred, prefix_end, Placed, Store, StoreOptions, CHUNK, INLINE_MAX,
};
use crate::error::{Error, Result};
use crate::journal::fsync_dir;
use bytes::{Bytes, BytesMut};
use cairn_proto::msg::{LogEntry, LogOp, ObjectPiece, PgInfo, ScanItem};
use cairn_proto::object::{CmpOp, QueryHit};
use cairn_proto::{Filter, ObjOp, ObjectStat, Oid, PgId, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// On-disk format marker, checked at open.
pub const FORMAT: &str = "cairn-osd-store/1";
const LOCK_STRIPES: usize = 64;
const POISONED: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Storage {
    Inline,
    File,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ObjMeta {
    stat: ObjectStat,
    storage: Storage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkRec {
    crc: u32,
    len: u32,
    flags: u8,
}

impl ChunkRec {
    fn encode(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[..4].copy_from_slice(&self.crc.to_be_bytes());
        b[4..8].copy_from_slice(&self.len.to_be_bytes());
        b[8] = self.flags;
        b
    }

    fn decode(b: &[u8]) -> Result<ChunkRec> {
        if b.len() != 9 {
            return Err(Error::BadRecord { what: "chunk" });
        }
        Ok(ChunkRec {
            crc: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            flags: b[8],
        })
    }

    fn poisoned(self) -> bool {
        self.flags & POISONED != 0
    }
}

/// The bytes of an object, wherever they live.
enum Data {
    Inline(Vec<u8>),
    File(File),
}

impl Data {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        match self {
            Data::Inline(v) => {
                let s = off as usize;
                let src = v
                    .get(s..s + buf.len())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Data::File(f) => f.read_exact_at(buf, off),
        }
    }

    fn write_at(&mut self, data: &[u8], off: u64) -> std::io::Result<()> {
        match self {
            Data::Inline(v) => {
                let end = off as usize + data.len();
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[off as usize..end].copy_from_slice(data);
                Ok(())
            }
            Data::File(f) => f.write_all_at(data, off),
        }
    }

    /// As [`Data::write_at`], with large writes into a data file going `O_DIRECT`.
    fn write_large_at(
        &mut self,
        direct: &Direct,
        path: &Path,
        data: &[u8],
        off: u64,
    ) -> std::io::Result<()> {
        match self {
            Data::File(f) => direct.write_at(f, path, data, off),
            Data::Inline(_) => self.write_at(data, off),
        }
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        match self {
            Data::Inline(v) => {
                v.resize(len as usize, 0);
                Ok(())
            }
            Data::File(f) => f.set_len(len),
        }
    }
}

/// A change to an object's bytes.
enum Change<'a> {
    /// Zeros of `size` bytes, then `data` at `at`.
    Replace {
        size: u64,
        at: u64,
        data: &'a [u8],
    },
    /// `data` at `offset`, growing the object as needed.
    Write {
        offset: u64,
        data: &'a [u8],
    },
    Truncate {
        size: u64,
    },
}

/// See the module doc.
pub struct SledStore {
    db: sled::Db,
    objs: sled::Tree,
    crcs: sled::Tree,
    inline: sled::Tree,
    index: sled::Tree,
    logs: sled::Tree,
    infos: sled::Tree,
    objects_dir: PathBuf,
    opts: StoreOptions,
    locks: Vec<RwLock<()>>,
    /// Serializes read-modify-writes of PG infos and logs.
    log_lock: Mutex<()>,
    used: AtomicU64,
    replaying: AtomicBool,
    /// Files and directories written since the last sync.
    dirty: Mutex<HashSet<PathBuf>>,
    direct: Direct,
}

fn db_err(e: sled::Error) -> Error {
    Error::Db(e.into())
}

fn obj_key(pg: PgId, oid: Oid) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&pg.to_be_bytes());
    k[8..].copy_from_slice(&oid.to_be_bytes());
    k
}

fn crc_key(pg: PgId, oid: Oid, idx: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..24].copy_from_slice(&obj_key(pg, oid));
    k[24..].copy_from_slice(&idx.to_be_bytes());
    k
}

fn log_key(pg: PgId, version: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&pg.to_be_bytes());
    k[8..].copy_from_slice(&version.to_be_bytes());
    k
}

/// `pg otype 00 field 00`: the start of one field's index range.
fn index_field_prefix(pg: PgId, otype: &str, field: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + otype.len() + field.len() + 2);
    k.extend_from_slice(&pg.to_be_bytes());
    k.extend_from_slice(otype.as_bytes());
    k.push(0);
    k.extend_from_slice(field.as_bytes());
    k.push(0);
    k
}

fn index_key(pg: PgId, otype: &str, field: &str, value: &Value, oid: Oid) -> Vec<u8> {
    let mut k = index_field_prefix(pg, otype, field);
    value.encode_ordered(&mut k);
    k.extend_from_slice(&oid.to_be_bytes());
    k
}

fn oid_from_key_tail(k: &[u8]) -> Result<Oid> {
    let tail: [u8; 16] = k
        .get(k.len().saturating_sub(16)..)
        .and_then(|t| t.try_into().ok())
        .ok_or(Error::BadRecord { what: "key" })?;
    Ok(Oid::from_be_bytes(tail))
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], what: &'static str) -> Result<T> {
    bincode::deserialize(b).map_err(|_| Error::BadRecord { what })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory records serialize")
}

/// Changes to one tree made by one journaled mutation, applied key by key in the order given.
///
/// Not a `sled::Batch` on purpose: in sled 0.34 every `apply_batch` rolls the log buffer twice
/// (`pin_log`), and each roll writes the buffer with `sync_file_range(WAIT_BEFORE | WRITE |
/// WAIT_AFTER)`, a synchronous device write. Measured with `perf stat` through `cairn bench obj`
/// (4 KiB PUT, c1, size 3): 4.8 such writes per PUT on each OSD, beside the journal's one
/// fdatasync. These changes need no crash atomicity of their own: they belong to a mutation the
/// journal holds until the next checkpoint flushes the store, and a replay applies the whole
/// mutation again over whatever part of it reached sled (mutations are blind writes).
#[derive(Default)]
struct Writes(Vec<(sled::IVec, Option<sled::IVec>)>);

impl Writes {
    fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.0.push((key.into(), Some(value.into())));
    }

    fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.0.push((key.into(), None));
    }

    fn apply(self, tree: &sled::Tree) -> Result<()> {
        for (k, v) in self.0 {
            match v {
                Some(v) => tree.insert(k, v).map(drop),
                None => tree.remove(k).map(drop),
            }
            .map_err(db_err)?;
        }
        Ok(())
    }
}

impl SledStore {
    /// Open (or create) a store in `dir`.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<SledStore> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let objects_dir = dir.join("objects");
        std::fs::create_dir_all(&objects_dir).map_err(Error::io(&objects_dir))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(64 << 20)
            .open()
            .map_err(db_err)?;
        match db.get("format").map_err(db_err)? {
            Some(f) if f.as_ref() == FORMAT.as_bytes() => {}
            Some(f) => {
                return Err(Error::Format {
                    found: String::from_utf8_lossy(&f).into_owned(),
                    expected: FORMAT.into(),
                })
            }
            None => {
                db.insert("format", FORMAT).map_err(db_err)?;
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(db_err);
        let direct = Direct::new(opts.direct_io);
        let store = SledStore {
            objs: tree("obj")?,
            crcs: tree("crc")?,
            inline: tree("inl")?,
            index: tree("idx")?,
            logs: tree("log")?,
            infos: tree("info")?,
            db,
            objects_dir,
            opts,
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            log_lock: Mutex::new(()),
            used: AtomicU64::new(0),
            replaying: AtomicBool::new(false),
            dirty: Mutex::default(),
            direct,
        };
        let mut used = 0;
        for kv in store.objs.iter() {
            let (_, v) = kv.map_err(db_err)?;
            used += decode::<ObjMeta>(&v, "object")?.stat.size;
        }
        store.used.store(used, Ordering::Relaxed);
        Ok(store)
    }

    fn lock(&self, pg: PgId, oid: Oid) -> &RwLock<()> {
        let h = (oid.0 as u64) ^ ((oid.0 >> 64) as u64) ^ u64::from(pg.seed);
        &self.locks[(h % LOCK_STRIPES as u64) as usize]
    }

    fn data_path(&self, pg: PgId, oid: Oid) -> PathBuf {
        let hex = oid.to_string();
        self.objects_dir.join(&hex[..2]).join(format!(
            "{:016x}-{hex}",
            u64::from_be_bytes(pg.to_be_bytes())
        ))
    }

    fn mark_dirty(&self, p: PathBuf) {
        self.dirty.lock().expect("dirty lock").insert(p);
    }

    fn get_meta(&self, pg: PgId, oid: Oid) -> Result<Option<ObjMeta>> {
        match self.objs.get(obj_key(pg, oid)).map_err(db_err)? {
            Some(v) => Ok(Some(decode(&v, "object")?)),
            None => Ok(None),
        }
    }

    fn put_meta(&self, pg: PgId, oid: Oid, m: &ObjMeta) -> Result<()> {
        self.objs
            .insert(obj_key(pg, oid), encode(m))
            .map_err(db_err)?;
        Ok(())
    }

    fn chunk(&self, pg: PgId, oid: Oid, idx: u64) -> Result<Option<ChunkRec>> {
        match self.crcs.get(crc_key(pg, oid, idx)).map_err(db_err)? {
            Some(v) => Ok(Some(ChunkRec::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn open_data(&self, pg: PgId, oid: Oid, storage: Storage, create: bool) -> Result<Data> {
        match storage {
            Storage::Inline => Ok(Data::Inline(
                self.inline
                    .get(obj_key(pg, oid))
                    .map_err(db_err)?
                    .map(|v| v.to_vec())
                    .unwrap_or_default(),
            )),
            Storage::File => {
                let path = self.data_path(pg, oid);
                if create {
                    let dir = path.parent().expect("data files live in a directory");
                    if !dir.exists() {
                        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
                        self.mark_dirty(self.objects_dir.clone());
                    }
                    self.mark_dirty(dir.to_path_buf());
                }
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&path)
                    .map_err(Error::io(&path))?;
                Ok(Data::File(f))
            }
        }
    }

    fn store_data(&self, pg: PgId, oid: Oid, data: Data) -> Result<()> {
        match data {
            Data::Inline(v) => {
                self.inline.insert(obj_key(pg, oid), v).map_err(db_err)?;
            }
            Data::File(_) => self.mark_dirty(self.data_path(pg, oid)),
        }
        Ok(())
    }

    /// The bytes of chunk `idx` (`len` valid bytes) as they are now, and whether they can be
    /// trusted (their checksum matches). Holes are zeros.
    fn old_chunk(&self, data: &Data, rec: Option<ChunkRec>, idx: u64, len: u64) -> (Vec<u8>, bool) {
        let mut buf = vec![0u8; len as usize];
        let Some(rec) = rec else {
            return (buf, true);
        };
        if len == 0 {
            return (buf, true);
        }
        let read_ok = data.read_exact_at(&mut buf, idx * CHUNK).is_ok();
        if self.replaying.load(Ordering::Relaxed) {
            return (buf, true);
        }
        let good = read_ok
            && !rec.poisoned()
            && u64::from(rec.len) == len
            && crc32fast::hash(&buf) == rec.crc;
        (buf, good)
    }

    /// Apply a change to an object's bytes and checksums; updates `m.stat.size` and storage.
    fn change_data(&self, pg: PgId, oid: Oid, m: &mut ObjMeta, change: Change<'_>) -> Result<()> {
        let old_size = m.stat.size;
        let mut batch = Writes::default();
        match change {
            Change::Replace { size, at, data } => {
                for kv in self.crcs.scan_prefix(obj_key(pg, oid)) {
                    batch.remove(kv.map_err(db_err)?.0);
                }
                let storage = if size <= INLINE_MAX {
                    Storage::Inline
                } else {
                    Storage::File
                };
                if m.storage == Storage::File && storage == Storage::Inline {
                    self.remove_file(pg, oid)?;
                }
                if m.storage == Storage::Inline && storage == Storage::File {
                    self.inline.remove(obj_key(pg, oid)).map_err(db_err)?;
                }
                m.storage = storage;
                let mut d = match storage {
                    Storage::Inline => Data::Inline(Vec::new()),
                    Storage::File => self.open_data(pg, oid, storage, true)?,
                };
                let path = self.data_path(pg, oid);
                d.set_len(0).map_err(Error::io(&path))?;
                d.set_len(size).map_err(Error::io(&path))?;
                let end = (at + data.len() as u64).min(size);
                let data = &data[..end.saturating_sub(at) as usize];
                if !data.is_empty() {
                    d.write_large_at(&self.direct, &path, data, at)
                        .map_err(Error::io(&path))?;
                    for idx in at / CHUNK..end.div_ceil(CHUNK) {
                        let len = chunk_len(size, idx);
                        let cs = idx * CHUNK;
                        let (s, e) = (at.max(cs), end.min(cs + len));
                        let new = &data[(s - at) as usize..(e - at) as usize];
                        // A chunk the data covers whole is hashed where it lies; only a
                        // partly covered one (zeros around it) is assembled first.
                        let crc = if s == cs && e == cs + len {
                            crc32fast::hash(new)
                        } else {
                            let mut buf = vec![0u8; len as usize];
                            buf[(s - cs) as usize..(e - cs) as usize].copy_from_slice(new);
                            crc32fast::hash(&buf)
                        };
                        let rec = ChunkRec {
                            crc,
                            len: len as u32,
                            flags: 0,
                        };
                        batch.insert(&crc_key(pg, oid, idx), &rec.encode());
                    }
                }
                self.store_data(pg, oid, d)?;
                m.stat.size = size;
            }
            Change::Write { offset, data } => {
                let end = offset + data.len() as u64;
                let new_size = old_size.max(end);
                if m.storage == Storage::Inline && new_size > INLINE_MAX {
                    self.migrate_to_file(pg, oid, m)?;
                }
                let mut d = self.open_data(pg, oid, m.storage, true)?;
                let mut touched: Vec<u64> = if data.is_empty() {
                    Vec::new()
                } else {
                    (offset / CHUNK..end.div_ceil(CHUNK)).collect()
                };
                if new_size > old_size && !old_size.is_multiple_of(CHUNK) {
                    touched.push(old_size / CHUNK);
                }
                touched.sort_unstable();
                touched.dedup();
                let mut recs = Vec::with_capacity(touched.len());
                for idx in touched {
                    let cs = idx * CHUNK;
                    let new_len = chunk_len(new_size, idx);
                    let (s, e) = (offset.max(cs), end.min(cs + new_len));
                    let covered = !data.is_empty() && s == cs && e == cs + new_len;
                    let rec = if covered {
                        ChunkRec {
                            crc: crc32fast::hash(
                                &data[(s - offset) as usize..(e - offset) as usize],
                            ),
                            len: new_len as u32,
                            flags: 0,
                        }
                    } else {
                        let old_len = chunk_len(old_size, idx);
                        let (mut buf, good) =
                            self.old_chunk(&d, self.chunk(pg, oid, idx)?, idx, old_len);
                        buf.resize(new_len as usize, 0);
                        if s < e {
                            buf[(s - cs) as usize..(e - cs) as usize].copy_from_slice(
                                &data[(s - offset) as usize..(e - offset) as usize],
                            );
                        }
                        ChunkRec {
                            crc: crc32fast::hash(&buf),
                            len: new_len as u32,
                            flags: if good { 0 } else { POISONED },
                        }
                    };
                    recs.push((idx, rec));
                }
                let path = self.data_path(pg, oid);
                if !data.is_empty() {
                    d.write_large_at(&self.direct, &path, data, offset)
                        .map_err(Error::io(&path))?;
                }
                if new_size > old_size {
                    d.set_len(new_size).map_err(Error::io(&path))?;
                }
                self.store_data(pg, oid, d)?;
                for (idx, rec) in recs {
                    batch.insert(&crc_key(pg, oid, idx), &rec.encode());
                }
                m.stat.size = new_size;
            }
            Change::Truncate { size } => {
                if size == old_size {
                    return Ok(());
                }
                if m.storage == Storage::Inline && size > INLINE_MAX {
                    self.migrate_to_file(pg, oid, m)?;
                }
                let mut d = self.open_data(pg, oid, m.storage, true)?;
                // The chunk whose valid length changes (the new last one when shrinking, the
                // old last one when growing).
                let edge = if size < old_size { size } else { old_size };
                if !edge.is_multiple_of(CHUNK) {
                    let idx = edge / CHUNK;
                    if let Some(old) = self.chunk(pg, oid, idx)? {
                        let (mut buf, good) =
                            self.old_chunk(&d, Some(old), idx, chunk_len(old_size, idx));
                        buf.resize(chunk_len(size, idx) as usize, 0);
                        let rec = ChunkRec {
                            crc: crc32fast::hash(&buf),
                            len: buf.len() as u32,
                            flags: if good { 0 } else { POISONED },
                        };
                        batch.insert(&crc_key(pg, oid, idx), &rec.encode());
                    }
                }
                if size < old_size {
                    for idx in chunk_count(size)..chunk_count(old_size) {
                        batch.remove(&crc_key(pg, oid, idx));
                    }
                }
                let path = self.data_path(pg, oid);
                d.set_len(size).map_err(Error::io(&path))?;
                self.store_data(pg, oid, d)?;
                m.stat.size = size;
            }
        }
        batch.apply(&self.crcs)?;
        let new_size = m.stat.size;
        if new_size >= old_size {
            self.used.fetch_add(new_size - old_size, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(old_size - new_size, Ordering::Relaxed);
        }
        Ok(())
    }

    fn migrate_to_file(&self, pg: PgId, oid: Oid, m: &mut ObjMeta) -> Result<()> {
        let bytes = self
            .inline
            .get(obj_key(pg, oid))
            .map_err(db_err)?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        let mut f = self.open_data(pg, oid, Storage::File, true)?;
        let path = self.data_path(pg, oid);
        f.set_len(0).map_err(Error::io(&path))?;
        f.write_at(&bytes, 0).map_err(Error::io(&path))?;
        f.set_len(m.stat.size).map_err(Error::io(&path))?;
        self.mark_dirty(path);
        self.inline.remove(obj_key(pg, oid)).map_err(db_err)?;
        m.storage = Storage::File;
        Ok(())
    }

    fn remove_file(&self, pg: PgId, oid: Oid) -> Result<()> {
        let path = self.data_path(pg, oid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { path, source: e }),
        }
        if let Some(dir) = path.parent() {
            self.mark_dirty(dir.to_path_buf());
        }
        Ok(())
    }

    fn set_index(
        &self,
        pg: PgId,
        oid: Oid,
        old: &ObjectStat,
        new: Option<&ObjectStat>,
    ) -> Result<()> {
        let mut batch = Writes::default();
        if let Some(t) = &old.otype {
            for (f, v) in &old.fields {
                batch.remove(index_key(pg, t, f, v, oid));
            }
        }
        if let Some(new) = new {
            if let Some(t) = &new.otype {
                for (f, v) in &new.fields {
                    batch.insert(index_key(pg, t, f, v, oid), &[]);
                }
            }
        }
        batch.apply(&self.index)
    }

    /// Remove an object entirely (metadata, checksums, data, index entries).
    fn delete_obj(&self, pg: PgId, oid: Oid, m: &ObjMeta) -> Result<()> {
        self.set_index(pg, oid, &m.stat, None)?;
        let mut batch = Writes::default();
        for kv in self.crcs.scan_prefix(obj_key(pg, oid)) {
            batch.remove(kv.map_err(db_err)?.0);
        }
        batch.apply(&self.crcs)?;
        match m.storage {
            Storage::Inline => {
                self.inline.remove(obj_key(pg, oid)).map_err(db_err)?;
            }
            Storage::File => self.remove_file(pg, oid)?,
        }
        self.objs.remove(obj_key(pg, oid)).map_err(db_err)?;
        let size = m.stat.size;
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(size))
            });
        Ok(())
    }

    fn get_info(&self, pg: PgId) -> Result<Option<PgInfo>> {
        match self.infos.get(pg.to_be_bytes()).map_err(db_err)? {
            Some(v) => Ok(Some(decode(&v, "pg info")?)),
            None => Ok(None),
        }
    }

    fn put_info(&self, pg: PgId, info: &PgInfo) -> Result<()> {
        self.infos
            .insert(pg.to_be_bytes(), encode(info))
            .map_err(db_err)?;
        Ok(())
    }

    /// Record a log entry and advance the PG info.
    fn record(&self, pg: PgId, entry: &LogEntry) -> Result<()> {
        let _g = self.log_lock.lock().expect("log lock");
        let info = self.get_info(pg)?.unwrap_or_default();
        let info = advance_info(info, entry.version, self.opts.log_keep);
        self.logs
            .insert(log_key(pg, entry.version), encode(entry))
            .map_err(db_err)?;
        let mut batch = Writes::default();
        for kv in self.logs.range(log_key(pg, 0)..=log_key(pg, info.log_tail)) {
            batch.remove(kv.map_err(db_err)?.0);
        }
        batch.apply(&self.logs)?;
        self.put_info(pg, &info)
    }

    fn ensure_info(&self, pg: PgId) -> Result<()> {
        let _g = self.log_lock.lock().expect("log lock");
        if self.get_info(pg)?.is_none() {
            self.put_info(pg, &PgInfo::default())?;
        }
        Ok(())
    }

    /// Visit the chunks of `[offset, offset+len)` of an object, verified, in order.
    fn read_chunks(
        &self,
        pg: PgId,
        oid: Oid,
        m: &ObjMeta,
        offset: u64,
        len: u64,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<()> {
        let size = m.stat.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        let mut data: Option<Data> = None;
        for idx in offset / CHUNK..end.div_ceil(CHUNK) {
            let cs = idx * CHUNK;
            let clen = chunk_len(size, idx);
            let corrupt = Error::Corrupt { oid, offset: cs };
            let buf = match self.chunk(pg, oid, idx)? {
                None => vec![0u8; clen as usize],
                Some(rec) => {
                    if rec.poisoned() || u64::from(rec.len) != clen {
                        return Err(corrupt);
                    }
                    if data.is_none() {
                        data = Some(match self.open_data(pg, oid, m.storage, false) {
                            Ok(d) => d,
                            Err(Error::Io { source, .. })
                                if source.kind() == std::io::ErrorKind::NotFound =>
                            {
                                return Err(corrupt)
                            }
                            Err(e) => return Err(e),
                        });
                    }
                    let d = data.as_ref().expect("opened above");
                    let mut buf = vec![0u8; clen as usize];
                    if d.read_exact_at(&mut buf, cs).is_err() || crc32fast::hash(&buf) != rec.crc {
                        return Err(corrupt);
                    }
                    buf
                }
            };
            let (s, e) = (offset.max(cs), end.min(cs + clen));
            visit(s, &buf[(s - cs) as usize..(e - cs) as usize]);
        }
        Ok(())
    }

    fn objects_after(
        &self,
        pg: PgId,
        after: Option<Oid>,
    ) -> impl Iterator<Item = Result<(Oid, ObjMeta)>> + '_ {
        let start = match after {
            Some(a) if a.0 == u128::MAX => prefix_end(&pg.to_be_bytes()).unwrap_or_default(),
            Some(a) => obj_key(pg, Oid(a.0 + 1)).to_vec(),
            None => pg.to_be_bytes().to_vec(),
        };
        let end = obj_key(pg, Oid(u128::MAX));
        let range = if start.as_slice() <= end.as_slice() {
            Some(self.objs.range(start..=end.to_vec()))
        } else {
            None
        };
        range.into_iter().flatten().map(|kv| {
            let (k, v) = kv.map_err(db_err)?;
            Ok((oid_from_key_tail(&k)?, decode::<ObjMeta>(&v, "object")?))
        })
    }

    fn digest_of(&self, pg: PgId, oid: Oid, size: u64) -> Result<u32> {
        let mut recs = BTreeMap::new();
        for kv in self.crcs.scan_prefix(obj_key(pg, oid)) {
            let (k, v) = kv.map_err(db_err)?;
            let idx = u64::from_be_bytes(
                k[24..32]
                    .try_into()
                    .map_err(|_| Error::BadRecord { what: "chunk key" })?,
            );
            recs.insert(idx, ChunkRec::decode(&v)?.crc);
        }
        Ok(digest(
            (0..chunk_count(size)).map(|i| (chunk_len(size, i), recs.get(&i).copied())),
        ))
    }

    /// Candidate object ids from an index scan of one predicate.
    fn index_candidates(
        &self,
        pg: PgId,
        otype: &str,
        pred: &cairn_proto::object::Pred,
    ) -> Result<Vec<Oid>> {
        let base = index_field_prefix(pg, otype, &pred.field);
        let mut enc = base.clone();
        let mut kind = base;
        kind.push(pred.value.tag());
        let kind_end = prefix_end(&kind);
        if pred.op == CmpOp::Prefix {
            enc.push(pred.value.tag());
            match &pred.value {
                Value::Str(s) => escape_into(s.as_bytes(), &mut enc),
                Value::Bytes(b) => escape_into(b, &mut enc),
                _ => return Ok(Vec::new()),
            }
        } else {
            pred.value.encode_ordered(&mut enc);
        }
        let (lo, hi): (Vec<u8>, Option<Vec<u8>>) = match pred.op {
            CmpOp::Eq | CmpOp::Prefix => (enc.clone(), prefix_end(&enc)),
            CmpOp::Ge => (enc, kind_end),
            CmpOp::Gt => (prefix_end(&enc).unwrap_or_default(), kind_end),
            CmpOp::Lt => (kind, Some(enc)),
            CmpOp::Le => (kind, prefix_end(&enc)),
        };
        let iter = match hi {
            Some(hi) => self.index.range(lo..hi),
            None => self.index.range(lo..),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, _) = kv.map_err(db_err)?;
            out.push(oid_from_key_tail(&k)?);
        }
        Ok(out)
    }
}

/// The escaped bytes of [`Value::encode_ordered`] without the terminator: a prefix of the
/// encodings of every value that starts with `b`.
fn escape_into(b: &[u8], out: &mut Vec<u8>) {
    for &c in b {
        out.push(c);
        if c == 0 {
            out.push(0xFF);
        }
    }
}

impl Store for SledStore {
    fn apply(&self, pg: PgId, version: u64, oid: Oid, op: &ObjOp, mtime: i64) -> Result<u64> {
        if let ObjOp::SetTyped { otype, fields } = op {
            check_typed(otype, fields)?;
        }
        let _g = self.lock(pg, oid).write().expect("object lock");
        let old = self.get_meta(pg, oid)?;
        let prior = old.as_ref().map_or(0, |m| m.stat.version);
        match (op, old) {
            (ObjOp::Delete, Some(m)) => self.delete_obj(pg, oid, &m)?,
            (ObjOp::Delete, None) => {}
            (op, old) => {
                let mut m = old.unwrap_or(ObjMeta {
                    stat: ObjectStat {
                        oid,
                        ..Default::default()
                    },
                    storage: Storage::Inline,
                });
                match op {
                    ObjOp::WriteFull { data } => self.change_data(
                        pg,
                        oid,
                        &mut m,
                        Change::Replace {
                            size: data.len() as u64,
                            at: 0,
                            data,
                        },
                    )?,
                    ObjOp::Write { offset, data } => self.change_data(
                        pg,
                        oid,
                        &mut m,
                        Change::Write {
                            offset: *offset,
                            data,
                        },
                    )?,
                    ObjOp::Truncate { size } => {
                        self.change_data(pg, oid, &mut m, Change::Truncate { size: *size })?
                    }
                    ObjOp::SetAttrs { set, remove } => {
                        for k in remove {
                            m.stat.attrs.remove(k);
                        }
                        for (k, v) in set {
                            m.stat.attrs.insert(k.clone(), v.clone());
                        }
                    }
                    ObjOp::SetTyped { otype, fields } => {
                        let new = ObjectStat {
                            otype: Some(otype.clone()),
                            fields: fields.clone(),
                            ..m.stat.clone()
                        };
                        self.set_index(pg, oid, &m.stat, Some(&new))?;
                        m.stat = new;
                    }
                    ObjOp::Delete => {}
                }
                m.stat.version = version;
                m.stat.mtime = mtime;
                self.put_meta(pg, oid, &m)?;
            }
        }
        self.record(pg, &log_entry(version, oid, op, prior))?;
        Ok(prior)
    }

    /// The data file is made anew (a leftover of a placement whose record never became durable
    /// is cut off), written (its aligned middle `O_DIRECT`), and it and its directory entry are
    /// made durable before this returns: the record that follows names data already on disk.
    fn place(&self, pg: PgId, oid: Oid, data: &[u8]) -> Result<Option<Placed>> {
        if (data.len() as u64) <= INLINE_MAX {
            return Ok(None);
        }
        let path = self.data_path(pg, oid);
        let dir = path.parent().expect("data files live in a directory");
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            fsync_dir(dir)?;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        self.direct
            .write_at(&f, &path, data, 0)
            .map_err(Error::io(&path))?;
        f.sync_data().map_err(Error::io(&path))?;
        fsync_dir(&path)?;
        Ok(Some(Placed::of(data)))
    }

    fn apply_placed(
        &self,
        pg: PgId,
        version: u64,
        oid: Oid,
        placed: &Placed,
        mtime: i64,
    ) -> Result<u64> {
        let _g = self.lock(pg, oid).write().expect("object lock");
        let old = self.get_meta(pg, oid)?;
        let prior = old.as_ref().map_or(0, |m| m.stat.version);
        let mut batch = Writes::default();
        if let Some(m) = &old {
            // A later state of the object (a replay over a store that got further): it goes,
            // but not the data file, which holds the placed data (see `Durable::replay`).
            self.set_index(pg, oid, &m.stat, None)?;
            if m.storage == Storage::Inline {
                self.inline.remove(obj_key(pg, oid)).map_err(db_err)?;
            }
            for kv in self.crcs.scan_prefix(obj_key(pg, oid)) {
                batch.remove(kv.map_err(db_err)?.0);
            }
            let size = m.stat.size;
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(size))
                });
        }
        for (idx, crc) in placed.crcs.iter().enumerate() {
            let idx = idx as u64;
            let rec = ChunkRec {
                crc: *crc,
                len: chunk_len(placed.size, idx) as u32,
                flags: 0,
            };
            batch.insert(&crc_key(pg, oid, idx), &rec.encode());
        }
        batch.apply(&self.crcs)?;
        let m = ObjMeta {
            stat: ObjectStat {
                oid,
                size: placed.size,
                version,
                mtime,
                ..Default::default()
            },
            storage: Storage::File,
        };
        self.put_meta(pg, oid, &m)?;
        self.used.fetch_add(placed.size, Ordering::Relaxed);
        self.record(
            pg,
            &LogEntry {
                version,
                oid,
                op: LogOp::Modify,
                prior,
            },
        )?;
        Ok(prior)
    }

    fn log_only(&self, pg: PgId, entry: &LogEntry) -> Result<()> {
        self.record(pg, entry)
    }

    fn install(
        &self,
        pg: PgId,
        oid: Oid,
        piece: &ObjectPiece,
        first: bool,
        entry: Option<&LogEntry>,
    ) -> Result<()> {
        if let Some(t) = &piece.stat.otype {
            check_typed(t, &piece.stat.fields)?;
        }
        {
            let _g = self.lock(pg, oid).write().expect("object lock");
            let old = self.get_meta(pg, oid)?;
            if first {
                let mut m = old.clone().unwrap_or(ObjMeta {
                    stat: ObjectStat::default(),
                    storage: Storage::Inline,
                });
                let old_stat = m.stat.clone();
                self.change_data(
                    pg,
                    oid,
                    &mut m,
                    Change::Replace {
                        size: piece.stat.size,
                        at: piece.offset,
                        data: &piece.data,
                    },
                )?;
                m.stat = ObjectStat {
                    oid,
                    ..piece.stat.clone()
                };
                self.set_index(pg, oid, &old_stat, Some(&m.stat))?;
                self.put_meta(pg, oid, &m)?;
            } else if let Some(mut m) = old {
                let end = (piece.offset + piece.data.len() as u64).min(m.stat.size);
                if piece.offset < end {
                    let n = (end - piece.offset) as usize;
                    self.change_data(
                        pg,
                        oid,
                        &mut m,
                        Change::Write {
                            offset: piece.offset,
                            data: &piece.data[..n],
                        },
                    )?;
                    self.put_meta(pg, oid, &m)?;
                }
            }
        }
        match entry {
            Some(e) => self.record(pg, e),
            None => self.ensure_info(pg),
        }
    }

    fn remove(&self, pg: PgId, oid: Oid) -> Result<()> {
        let _g = self.lock(pg, oid).write().expect("object lock");
        if let Some(m) = self.get_meta(pg, oid)? {
            self.delete_obj(pg, oid, &m)?;
        }
        Ok(())
    }

    fn read(&self, pg: PgId, oid: Oid, offset: u64, len: u64) -> Result<Bytes> {
        let _g = self.lock(pg, oid).read().expect("object lock");
        let m = self.get_meta(pg, oid)?.ok_or(Error::NoSuchObject { oid })?;
        let mut out = BytesMut::new();
        self.read_chunks(pg, oid, &m, offset, len, |_, b| out.extend_from_slice(b))?;
        Ok(out.freeze())
    }

    fn stat(&self, pg: PgId, oid: Oid) -> Result<Option<ObjectStat>> {
        Ok(self.get_meta(pg, oid)?.map(|m| m.stat))
    }

    fn read_piece(&self, pg: PgId, oid: Oid, offset: u64, len: u64) -> Result<Option<ObjectPiece>> {
        let _g = self.lock(pg, oid).read().expect("object lock");
        let Some(m) = self.get_meta(pg, oid)? else {
            return Ok(None);
        };
        let mut out = BytesMut::new();
        self.read_chunks(pg, oid, &m, offset, len, |_, b| out.extend_from_slice(b))?;
        Ok(Some(ObjectPiece {
            stat: m.stat,
            offset,
            data: out.freeze(),
        }))
    }

    fn list(&self, pg: PgId, after: Option<Oid>, limit: usize) -> Result<(Vec<(Oid, u64)>, bool)> {
        let mut out = Vec::new();
        for r in self.objects_after(pg, after) {
            let (oid, m) = r?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((oid, m.stat.version));
        }
        Ok((out, false))
    }

    fn scan(&self, pg: PgId, after: Option<Oid>, limit: usize) -> Result<(Vec<ScanItem>, bool)> {
        let mut out = Vec::new();
        for r in self.objects_after(pg, after) {
            let (oid, m) = r?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(ScanItem {
                oid,
                version: m.stat.version,
                size: m.stat.size,
                digest: self.digest_of(pg, oid, m.stat.size)?,
            });
        }
        Ok((out, false))
    }

    fn query(
        &self,
        pg: PgId,
        otype: &str,
        filter: &Filter,
        after: Option<Oid>,
        limit: usize,
    ) -> Result<(Vec<QueryHit>, bool)> {
        filter
            .validate()
            .map_err(|e| Error::invalid(e.to_string()))?;
        let mut hits = Vec::new();
        let matches =
            |m: &ObjMeta| m.stat.otype.as_deref() == Some(otype) && filter.matches(&m.stat.fields);
        match pick_index_pred(filter) {
            None => {
                for r in self.objects_after(pg, after) {
                    let (oid, m) = r?;
                    if matches(&m) {
                        if hits.len() == limit {
                            return Ok((hits, true));
                        }
                        hits.push(QueryHit {
                            oid,
                            fields: m.stat.fields,
                        });
                    }
                }
                Ok((hits, false))
            }
            Some(i) => {
                let mut oids = self.index_candidates(pg, otype, &filter.preds[i])?;
                oids.retain(|o| after.is_none_or(|a| *o > a));
                oids.sort_unstable();
                oids.dedup();
                for oid in oids {
                    let Some(m) = self.get_meta(pg, oid)? else {
                        continue;
                    };
                    if matches(&m) {
                        if hits.len() == limit {
                            return Ok((hits, true));
                        }
                        hits.push(QueryHit {
                            oid,
                            fields: m.stat.fields,
                        });
                    }
                }
                Ok((hits, false))
            }
        }
    }

    fn verify(&self, pg: PgId, oid: Oid) -> Result<()> {
        let _g = self.lock(pg, oid).read().expect("object lock");
        let m = self.get_meta(pg, oid)?.ok_or(Error::NoSuchObject { oid })?;
        self.read_chunks(pg, oid, &m, 0, m.stat.size, |_, _| {})
    }

    fn pg_info(&self, pg: PgId) -> Result<PgInfo> {
        Ok(self.get_info(pg)?.unwrap_or_default())
    }

    fn pg_log(&self, pg: PgId, since: u64) -> Result<Vec<LogEntry>> {
        let info = self.pg_info(pg)?;
        if since < info.log_tail {
            return Err(Error::LogTrimmed {
                pg,
                since,
                tail: info.log_tail,
            });
        }
        let mut out = Vec::new();
        for kv in self
            .logs
            .range(log_key(pg, since.saturating_add(1))..=log_key(pg, u64::MAX))
        {
            out.push(decode(&kv.map_err(db_err)?.1, "log entry")?);
        }
        Ok(out)
    }

    fn activate(
        &self,
        pg: PgId,
        last_update: u64,
        log: &[LogEntry],
        backfilled: bool,
    ) -> Result<()> {
        let _g = self.log_lock.lock().expect("log lock");
        let info = self.get_info(pg)?.unwrap_or_default();
        let info = activated_info(info, last_update, backfilled);
        let mut batch = sled::Batch::default();
        let drop_from = if backfilled {
            0
        } else {
            last_update.saturating_add(1)
        };
        for kv in self
            .logs
            .range(log_key(pg, drop_from)..=log_key(pg, u64::MAX))
        {
            batch.remove(kv.map_err(db_err)?.0);
        }
        if !backfilled {
            for e in log.iter().filter(|e| e.version <= last_update) {
                batch.insert(&log_key(pg, e.version), encode(e));
            }
        }
        self.logs.apply_batch(batch).map_err(db_err)?;
        self.put_info(pg, &info)
    }

    fn pgs(&self) -> Result<Vec<PgId>> {
        let mut out = Vec::new();
        for kv in self.infos.iter() {
            let (k, _) = kv.map_err(db_err)?;
            let b: [u8; 8] = k.as_ref().try_into().map_err(|_| Error::BadRecord {
                what: "pg info key",
            })?;
            out.push(PgId::from_be_bytes(b));
        }
        Ok(out)
    }

    fn remove_pg(&self, pg: PgId) -> Result<()> {
        let oids: Vec<Oid> = self
            .objects_after(pg, None)
            .map(|r| r.map(|(o, _)| o))
            .collect::<Result<_>>()?;
        for oid in oids {
            self.remove(pg, oid)?;
        }
        let prefix = pg.to_be_bytes();
        for tree in [&self.index, &self.logs] {
            let mut batch = sled::Batch::default();
            for kv in tree.scan_prefix(prefix) {
                batch.remove(kv.map_err(db_err)?.0);
            }
            tree.apply_batch(batch).map_err(db_err)?;
        }
        self.infos.remove(prefix).map_err(db_err)?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let dirty = std::mem::take(&mut *self.dirty.lock().expect("dirty lock"));
        for path in dirty {
            match File::open(&path) {
                Ok(f) => f.sync_all().map_err(Error::io(&path))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { path, source: e }),
            }
        }
        self.db.flush().map_err(db_err)?;
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn set_replaying(&self, on: bool) {
        self.replaying.store(on, Ordering::Relaxed);
    }
}

#[cfg(test)]
impl SledStore {
    pub(crate) fn db_for_tests(&self) -> &sled::Db {
        &self.db
    }

    /// Flip a byte of an inline object's data behind the store's back.
    pub(crate) fn corrupt_inline_for_tests(&self, pg: PgId, oid: Oid, at: usize) {
        let mut v = self.inline.get(obj_key(pg, oid)).unwrap().unwrap().to_vec();
        v[at] ^= 0x5A;
        self.inline.insert(obj_key(pg, oid), v).unwrap();
    }
}
