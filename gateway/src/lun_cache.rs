//! The write-back cache of cluster-volume LUNs, and its journal on an nvdisk.
//!
//! A gateway puts a [`WriteBackCache`] in front of every cluster-volume LUN when its
//! `lun_cache` setting ([`LunCacheSpec`]) says so:
//!
//! - `off`: writes go straight to the OSDs, which acknowledge only journaled writes.
//! - `memory`: the cache in gateway memory. A write is acknowledged from memory (WCE=1) and is
//!   lost if the gateway dies before the cache writes it back, unless the initiator asked for
//!   FUA or SYNCHRONIZE CACHE.
//! - `nvdisk:…`: the same cache, but every write (and unmap) is first appended to a journal on
//!   an nvdisk of this volume under `DATA/lun-cache/vol-ID/` ([`JournaledCache`]). A write
//!   acknowledged from the cache then survives kill -9 of the gateway (`shm`) or also power
//!   loss (`sync`); when the gateway starts again it replays the journal into the cluster
//!   volume before it serves the LUN.
//!
//! ```text
//!  write ─> journal.append(record) ─> cache.write ─> (flusher) ─> cluster volume
//!                 │                                                    │
//!  trimmer: note the last record, flush every cache of the volume, ───┘ then trim the journal
//! ```
//!
//! The journal is trimmed by a background task every flush interval, and at once when it is
//! half full: it notes the last record appended (under a gate that writers hold from append to
//! cache insert, so every noted record is in a cache), flushes the volume's caches, and trims
//! through that record. Writers that find the journal full wait for the next trim.
//!
//! Replay is in journal order, so it reproduces the last acknowledged contents. Two writes to
//! one range that are in flight at once may reach the journal and the cache in different
//! orders; SCSI leaves the outcome of such overlapping commands undefined, and either
//! outcome is one the initiator could see.
//!
//! Journal record payload, format version 1 (integers big-endian):
//!
//! ```text
//!  write:  0 kind u8 = 1   1 offset u64   9 data …
//!  unmap:  0 kind u8 = 2   1 offset u64   9 len u64
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_nvdisk::{Config as NvConfig, Durability, Journal, NvDisk, PoolMode};
use cairn_proto::volume::VolumeInfo;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::cache::{CacheConfig, WriteBackCache};
use crate::error::GatewayError;
use crate::nvdisk::{block_error, shm_pool_path, PAGE};
use cairn_iscsi::block::{BlockDevice, BlockError, Extent};

/// Journal size when the spec names none.
pub const DEFAULT_JOURNAL_SIZE: u64 = 64 << 20;
/// Smallest journal accepted: room for several of the largest records.
pub const MIN_JOURNAL_SIZE: u64 = 8 << 20;
/// Largest write recorded as one journal record; longer writes are split.
const MAX_PIECE: usize = 1 << 20;
const KIND_WRITE: u8 = 1;
const KIND_UNMAP: u8 = 2;
/// How long a writer waits for room in a full journal before it fails the command (the
/// initiator retries it).
const ROOM_WAIT: Duration = Duration::from_secs(30);
const SPEC_FILE: &str = "cache.spec";

/// Where a gateway's LUN write-back cache lives; see the module documentation.
///
/// Written `"off"`, `"memory"` or `"nvdisk:ITEM[,ITEM…]"` with items `shm` (the pool is a
/// /dev/shm file), `sync` (fdatasync'ed write-ahead log) and `size=SIZE` (journal size,
/// default 64M). An nvdisk cache needs `shm`, `sync` or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LunCacheSpec {
    #[default]
    Off,
    Memory,
    NvDisk {
        shm: bool,
        sync: bool,
        size: u64,
    },
}

fn bad(reason: String) -> GatewayError {
    GatewayError::InvalidSetting {
        field: "lun_cache",
        reason,
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.to_ascii_lowercase().trim_end_matches("ib") {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl FromStr for LunCacheSpec {
    type Err = GatewayError;

    fn from_str(s: &str) -> Result<Self, GatewayError> {
        match s {
            "off" => return Ok(LunCacheSpec::Off),
            "memory" => return Ok(LunCacheSpec::Memory),
            _ => {}
        }
        let Some(items) = s.strip_prefix("nvdisk:") else {
            return Err(bad(format!(
                "{s:?} is none of \"off\", \"memory\", \"nvdisk:ITEMS\""
            )));
        };
        let (mut shm, mut sync, mut size) = (false, false, None);
        for item in items.split(',') {
            match item.split_once('=') {
                None if item == "shm" && !shm => shm = true,
                None if item == "sync" && !sync => sync = true,
                Some(("size", v)) if size.is_none() => {
                    size = Some(parse_size(v).ok_or_else(|| bad(format!("{s:?}: bad size {v:?}")))?)
                }
                _ => {
                    return Err(bad(format!(
                        "{s:?}: bad or repeated item {item:?} (items: shm, sync, size=SIZE)"
                    )))
                }
            }
        }
        let size = size.unwrap_or(DEFAULT_JOURNAL_SIZE);
        if !shm && !sync {
            return Err(bad(format!(
                "{s:?}: an anonymous pool dies with the gateway; add shm, sync or both"
            )));
        }
        if size < MIN_JOURNAL_SIZE || !size.is_multiple_of(u64::from(PAGE)) {
            return Err(bad(format!(
                "{s:?}: size {size} is not a multiple of 4 KiB of at least 8 MiB"
            )));
        }
        Ok(LunCacheSpec::NvDisk { shm, sync, size })
    }
}

impl fmt::Display for LunCacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LunCacheSpec::Off => f.write_str("off"),
            LunCacheSpec::Memory => f.write_str("memory"),
            LunCacheSpec::NvDisk { shm, sync, size } => {
                let mut items = Vec::new();
                if *shm {
                    items.push("shm".to_string());
                }
                if *sync {
                    items.push("sync".to_string());
                }
                if *size != DEFAULT_JOURNAL_SIZE {
                    items.push(if size.is_multiple_of(1 << 20) {
                        format!("size={}M", size >> 20)
                    } else {
                        format!("size={size}")
                    });
                }
                write!(f, "nvdisk:{}", items.join(","))
            }
        }
    }
}

impl TryFrom<String> for LunCacheSpec {
    type Error = GatewayError;

    fn try_from(s: String) -> Result<Self, GatewayError> {
        s.parse()
    }
}

impl From<LunCacheSpec> for String {
    fn from(s: LunCacheSpec) -> String {
        s.to_string()
    }
}

/// One decoded journal record.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Write { offset: u64, data: Bytes },
    Unmap { offset: u64, len: u64 },
}

fn encode_write(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(9 + data.len());
    r.push(KIND_WRITE);
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(data);
    r
}

fn encode_unmap(offset: u64, len: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(17);
    r.push(KIND_UNMAP);
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// `None` for a payload that is no record of this format (the journal's crc already passed, so
/// this means a bug or a foreign journal; recovery refuses it).
fn decode(p: &[u8]) -> Option<Record> {
    let (&kind, rest) = p.split_first()?;
    let offset = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    match kind {
        KIND_WRITE => Some(Record::Write {
            offset,
            data: Bytes::copy_from_slice(rest),
        }),
        KIND_UNMAP if rest.len() == 8 => Some(Record::Unmap {
            offset,
            len: u64::from_be_bytes(rest.try_into().ok()?),
        }),
        _ => None,
    }
}

/// The journal of one volume's cache, shared by every cache of the volume (a resize builds a
/// new one), and the trimmer's state.
struct CacheLog {
    volume: String,
    journal: Arc<Journal>,
    ring_len: u64,
    /// Appends wait for an fdatasync: run them on a blocking thread.
    sync: bool,
    power_safe: bool,
    /// Writers hold it shared from append to cache insert; the trimmer takes it exclusively
    /// to note the last record that is in a cache.
    gate: tokio::sync::RwLock<()>,
    /// Every cache that may hold journaled data of this volume.
    caches: Mutex<Vec<Arc<WriteBackCache>>>,
    /// Wakes the trimmer early (the trimmer holds only a weak reference to the log, so that
    /// dropping the gateway's caches closes the nvdisk).
    kick: Arc<Notify>,
    /// Counts trim passes, for writers waiting for room.
    trims: watch::Sender<u64>,
    trimmed_upto: Mutex<u64>,
}

impl CacheLog {
    async fn append(&self, rec: Vec<u8>) -> Result<(), cairn_nvdisk::Error> {
        if self.sync {
            let j = Arc::clone(&self.journal);
            tokio::task::spawn_blocking(move || j.append(&rec))
                .await
                .map_err(|_| cairn_nvdisk::Error::CommitterFailed {
                    step: "journal append task",
                    kind: std::io::ErrorKind::Other,
                })??;
        } else {
            // A copy into the pool: cheaper than a thread hop.
            self.journal.append(&rec)?;
        }
        if self.journal.free() < self.ring_len / 2 {
            self.kick.notify_one();
        }
        Ok(())
    }

    /// Appends `rec` and runs `then` while no trim can note the record; waits for room when
    /// the journal is full.
    async fn record<F, Fut>(&self, rec: Vec<u8>, then: F) -> Result<(), BlockError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), BlockError>>,
    {
        let mut trims = self.trims.subscribe();
        loop {
            let gate = self.gate.read().await;
            trims.borrow_and_update();
            match self.append(rec.clone()).await {
                Ok(()) => {
                    let r = then().await;
                    drop(gate);
                    return r;
                }
                Err(cairn_nvdisk::Error::Full { .. }) => {
                    drop(gate);
                    self.kick.notify_one();
                    match tokio::time::timeout(ROOM_WAIT, trims.changed()).await {
                        Ok(Ok(())) => {}
                        _ => return Err(BlockError::Unavailable),
                    }
                }
                Err(e) => return Err(block_error(e)),
            }
        }
    }

    /// Writes back everything journaled so far and trims it from the journal.
    async fn trim(&self) -> Result<(), BlockError> {
        let upto = {
            let _all_in_caches = self.gate.write().await;
            self.journal.next_seq().saturating_sub(1)
        };
        if upto > *self.trimmed_upto.lock().unwrap_or_else(|e| e.into_inner()) {
            let caches: Vec<Arc<WriteBackCache>> = self
                .caches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for c in &caches {
                c.flush().await?;
            }
            drop(caches);
            let (j, power_safe) = (Arc::clone(&self.journal), self.power_safe);
            tokio::task::spawn_blocking(move || {
                j.trim_through(upto)?;
                // Without `sync` the trim lives in the pool until the next disk transaction;
                // were the pool lost (power loss), the backups would bring back records older
                // than data already written back, and replaying them would roll it back.
                if !power_safe {
                    j.disk().flush()?;
                }
                Ok::<_, cairn_nvdisk::Error>(())
            })
            .await
            .map_err(|_| BlockError::Unavailable)?
            .map_err(block_error)?;
            *self.trimmed_upto.lock().unwrap_or_else(|e| e.into_inner()) = upto;
            // Caches of an older size that nobody else holds and that are clean are done.
            self.caches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| Arc::strong_count(c) > 1 || c.dirty_bytes() > 0);
        }
        self.trims.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// A LUN's write-back cache whose writes are journaled on an nvdisk first; see the module
/// documentation.
pub struct JournaledCache {
    log: Arc<CacheLog>,
    cache: Arc<WriteBackCache>,
}

#[async_trait]
impl BlockDevice for JournaledCache {
    fn size(&self) -> u64 {
        self.cache.size()
    }
    fn block_size(&self) -> u32 {
        self.cache.block_size()
    }
    fn physical_block_size(&self) -> u32 {
        self.cache.physical_block_size()
    }
    fn unmap_granularity(&self) -> u64 {
        self.cache.unmap_granularity()
    }
    fn serial(&self) -> String {
        self.cache.serial()
    }
    fn read_only(&self) -> bool {
        self.cache.read_only()
    }
    /// With a `sync` journal an acknowledged write is safe from power loss already.
    fn volatile_write_cache(&self) -> bool {
        !self.log.power_safe
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        self.cache.read(offset, len).await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        let size = self.size();
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(BlockError::OutOfRange { offset, len, size });
        }
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        let mut at = 0usize;
        while at < data.len() {
            let piece = data.slice(at..data.len().min(at + MAX_PIECE));
            let off = offset + at as u64;
            at += piece.len();
            let rec = encode_write(off, &piece);
            self.log
                .record(rec, || self.cache.write(off, piece, fua))
                .await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.cache.flush().await
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(BlockError::OutOfRange { offset, len, size });
        }
        self.log
            .record(encode_unmap(offset, len), || self.cache.unmap(offset, len))
            .await
    }

    async fn mapping(&self, offset: u64) -> Result<Extent, BlockError> {
        self.cache.mapping(offset).await
    }
}

/// A gateway's LUN caches: builds the cache a spec asks for in front of a volume, and owns the
/// journals (one per volume, recovered on first use).
pub struct LunCaches {
    dir: PathBuf,
    spec: LunCacheSpec,
    cfg: CacheConfig,
    logs: tokio::sync::Mutex<HashMap<u64, Arc<CacheLog>>>,
    memory: Mutex<Vec<std::sync::Weak<WriteBackCache>>>,
}

impl LunCaches {
    /// Caches per `spec`, journals under `data_dir/lun-cache`, written back every
    /// `flush_interval`.
    pub fn new(data_dir: &Path, spec: LunCacheSpec, flush_interval: Duration) -> LunCaches {
        let mut cfg = CacheConfig {
            flush_interval,
            ..CacheConfig::default()
        };
        if let LunCacheSpec::NvDisk { size, .. } = spec {
            // Dirty data never needs more than the journal holds.
            cfg.max_dirty_bytes = cfg.max_dirty_bytes.min(size / 2);
            cfg.high_watermark = cfg.max_dirty_bytes / 2;
        }
        LunCaches {
            dir: data_dir.join("lun-cache"),
            spec,
            cfg,
            logs: tokio::sync::Mutex::new(HashMap::new()),
            memory: Mutex::new(Vec::new()),
        }
    }

    /// The directory of volume `id`'s cache journal.
    pub fn journal_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("vol-{id}"))
    }

    /// Ids of the volumes that have a cache journal on this gateway (left by an earlier run).
    pub fn journaled_volumes(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("vol-")?
                    .parse::<u64>()
                    .ok()
            })
            .collect()
    }

    /// Removes the journal of a volume that no longer exists.
    pub fn forget(&self, id: u64) -> std::io::Result<()> {
        let dir = self.journal_dir(id);
        let _ = std::fs::remove_file(shm_pool_path("cairn-gw-cache", &dir));
        std::fs::remove_dir_all(dir)
    }

    /// `vol` behind the cache the spec asks for. A journal an earlier run left for this
    /// volume is replayed into `vol` first, whatever the spec is now.
    pub async fn wrap(
        &self,
        info: &VolumeInfo,
        vol: Arc<dyn BlockDevice>,
    ) -> Result<Arc<dyn BlockDevice>, GatewayError> {
        let log = self.log(info, &vol).await?;
        Ok(match (&self.spec, log) {
            (LunCacheSpec::Off, _) => vol,
            (LunCacheSpec::Memory, _) | (LunCacheSpec::NvDisk { .. }, None) => {
                let c = Arc::new(WriteBackCache::new(vol, self.cfg.clone()));
                let mut mem = self.memory.lock().unwrap_or_else(|e| e.into_inner());
                mem.retain(|w| w.strong_count() > 0);
                mem.push(Arc::downgrade(&c));
                c
            }
            (LunCacheSpec::NvDisk { .. }, Some(log)) => {
                let cache = Arc::new(WriteBackCache::new(vol, self.cfg.clone()));
                log.caches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Arc::clone(&cache));
                Arc::new(JournaledCache { log, cache })
            }
        })
    }

    /// Writes back every cache (a clean gateway stop).
    pub async fn flush_all(&self) -> Result<(), BlockError> {
        let logs: Vec<Arc<CacheLog>> = self.logs.lock().await.values().cloned().collect();
        for l in logs {
            l.trim().await?;
        }
        let mem: Vec<Arc<WriteBackCache>> = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|w| w.upgrade())
            .collect();
        for c in mem {
            c.flush().await?;
        }
        Ok(())
    }

    /// The volume's open journal; opens it (replaying what an earlier run left into `vol`) on
    /// first use. `None` when the spec keeps no journal.
    async fn log(
        &self,
        info: &VolumeInfo,
        vol: &Arc<dyn BlockDevice>,
    ) -> Result<Option<Arc<CacheLog>>, GatewayError> {
        let mut logs = self.logs.lock().await;
        if let Some(l) = logs.get(&info.id) {
            return Ok(Some(Arc::clone(l)));
        }
        let dir = self.journal_dir(info.id);
        let nv_err = |source| GatewayError::NvDisk {
            volume: info.name.clone(),
            source,
        };
        let stored = match std::fs::read_to_string(dir.join(SPEC_FILE)) {
            Ok(s) => Some(s.trim().parse::<LunCacheSpec>()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(GatewayError::Io(e)),
        };
        let mut kept = None;
        if let Some(stored) = stored {
            let (journal, power_safe) = open_journal(&dir, &stored).await.map_err(nv_err)?;
            let replayed = replay(&journal, vol.as_ref()).await?;
            // Everything replayed is in the volume now; drop it from the journal.
            let j = Arc::clone(&journal);
            tokio::task::spawn_blocking(move || {
                j.trim_through(u64::MAX)?;
                j.disk().flush()
            })
            .await
            .map_err(|_| GatewayError::Unavailable { service: "nvdisk" })?
            .map_err(nv_err)?;
            tracing::info!(volume = %info.name, records = replayed, "LUN cache journal replayed");
            if stored == self.spec {
                kept = Some((journal, power_safe));
            } else {
                drop(journal);
                self.forget(info.id)?;
            }
        }
        let LunCacheSpec::NvDisk { sync, size, .. } = self.spec else {
            return Ok(None);
        };
        let (journal, power_safe) = match kept {
            Some(k) => k,
            None => {
                std::fs::create_dir_all(&dir)?;
                write_durably(&dir, SPEC_FILE, self.spec.to_string().as_bytes())?;
                open_journal(&dir, &self.spec).await.map_err(nv_err)?
            }
        };
        let ring_len = (size - u64::from(PAGE)) / 8 * 8;
        let (trims, _) = watch::channel(0u64);
        let log = Arc::new(CacheLog {
            volume: info.name.clone(),
            journal,
            ring_len,
            sync,
            power_safe,
            gate: tokio::sync::RwLock::new(()),
            caches: Mutex::new(Vec::new()),
            kick: Arc::new(Notify::new()),
            trims,
            trimmed_upto: Mutex::new(0),
        });
        *log.trimmed_upto.lock().unwrap_or_else(|e| e.into_inner()) =
            log.journal.next_seq().saturating_sub(1);
        let (trimmer, kick) = (Arc::downgrade(&log), Arc::clone(&log.kick));
        let every = self.cfg.flush_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = kick.notified() => {}
                }
                let Some(log) = trimmer.upgrade() else {
                    return;
                };
                if let Err(e) = log.trim().await {
                    tracing::warn!(volume = %log.volume, error = %e, "LUN cache trim failed; retrying");
                    drop(log);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        logs.insert(info.id, Arc::clone(&log));
        Ok(Some(log))
    }
}

/// Opens (recovering) the nvdisk and the journal on it; also says whether appends are safe from
/// power loss.
async fn open_journal(
    dir: &Path,
    spec: &LunCacheSpec,
) -> Result<(Arc<Journal>, bool), cairn_nvdisk::Error> {
    let LunCacheSpec::NvDisk { shm, sync, size } = *spec else {
        return Err(cairn_nvdisk::Error::InvalidConfig {
            field: "lun_cache",
            reason: format!("{spec} keeps no journal"),
        });
    };
    let cfg = NvConfig {
        pool: if shm {
            PoolMode::File(shm_pool_path("cairn-gw-cache", dir))
        } else {
            PoolMode::Anon
        },
        size,
        page_size: PAGE,
        backup_dir: dir.to_path_buf(),
        sync,
        ..NvConfig::default()
    };
    tokio::task::spawn_blocking(move || {
        let disk = Arc::new(NvDisk::open(cfg)?);
        let power_safe = disk.durability() == Durability::PowerLoss;
        Ok((Arc::new(Journal::open(disk)?), power_safe))
    })
    .await
    .map_err(|_| cairn_nvdisk::Error::CommitterFailed {
        step: "open task",
        kind: std::io::ErrorKind::Other,
    })?
}

/// Applies every record of `journal` to `vol` in order and flushes it; returns the count.
async fn replay(journal: &Arc<Journal>, vol: &dyn BlockDevice) -> Result<u64, GatewayError> {
    let j = Arc::clone(journal);
    let records = tokio::task::spawn_blocking(move || {
        j.replay()
            .map(|r| r.map(|(_, payload)| payload))
            .collect::<Result<Vec<Vec<u8>>, _>>()
    })
    .await
    .map_err(|_| GatewayError::Unavailable { service: "nvdisk" })?
    .map_err(|source| GatewayError::NvDisk {
        volume: String::from("(replay)"),
        source,
    })?;
    let n = records.len() as u64;
    for p in records {
        match decode(&p) {
            Some(Record::Write { offset, data }) => vol.write(offset, data, false).await?,
            Some(Record::Unmap { offset, len }) => vol.unmap(offset, len).await?,
            None => {
                return Err(GatewayError::Protocol(
                    "LUN cache journal holds a bad record",
                ))
            }
        }
    }
    vol.flush().await?;
    Ok(n)
}

/// Writes `name` in `dir`: tmp file, fsync, rename, fsync the directory.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_iscsi::block::MemDevice;
    use cairn_proto::volume::VolumeBacking;

    #[test]
    fn specs_parse_and_print() {
        for s in [
            "off",
            "memory",
            "nvdisk:shm",
            "nvdisk:sync",
            "nvdisk:shm,sync,size=16M",
        ] {
            assert_eq!(s.parse::<LunCacheSpec>().unwrap().to_string(), s);
        }
        for s in [
            "nvdisk:",
            "nvdisk:size=16M",
            "nvdisk:shm,size=1M",
            "nvdisk:shm,shm",
            "disk",
        ] {
            assert!(s.parse::<LunCacheSpec>().is_err(), "{s}");
        }
    }

    #[test]
    fn records_round_trip() {
        let w = encode_write(4096, b"abc");
        assert_eq!(
            decode(&w),
            Some(Record::Write {
                offset: 4096,
                data: Bytes::from_static(b"abc")
            })
        );
        assert_eq!(
            decode(&encode_unmap(512, 1024)),
            Some(Record::Unmap {
                offset: 512,
                len: 1024
            })
        );
        assert_eq!(decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[KIND_UNMAP, 0, 0]), None);
    }

    fn info(id: u64) -> VolumeInfo {
        VolumeInfo {
            id,
            name: format!("v{id}"),
            size: 4 << 20,
            block_size: 512,
            object_size: 4 << 20,
            pool: Default::default(),
            created_ms: 0,
            backing: VolumeBacking::Objects,
        }
    }

    /// Acknowledged writes and unmaps that never left the cache come back from the journal into
    /// the volume when the caches are opened again, in order; a trim empties the journal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journal_replays_what_the_cache_never_wrote_back() {
        let dir = tempfile::tempdir().unwrap();
        // `sync` keeps the pool anonymous, so nothing is left in /dev/shm.
        // 16 MiB: the cache holds up to 8 MiB dirty and starts writing back at 4 MiB.
        let spec: LunCacheSpec = "nvdisk:sync,size=16M".parse().unwrap();
        let hour = Duration::from_secs(3600);
        let below = Arc::new(MemDevice::new(4 << 20, 512, "below"));
        {
            let caches = LunCaches::new(dir.path(), spec.clone(), hour);
            let dev = caches.wrap(&info(1), below.clone()).await.unwrap();
            assert!(!dev.volatile_write_cache());
            dev.write(0, Bytes::from(vec![1u8; 8192]), false)
                .await
                .unwrap();
            dev.write(4096, Bytes::from(vec![2u8; 4096]), false)
                .await
                .unwrap();
            dev.unmap(0, 512).await.unwrap();
            // A write longer than one record.
            dev.write(1 << 20, Bytes::from(vec![3u8; 3 << 20]), false)
                .await
                .unwrap();
            // The unmap reached the device; the dirty writes did not.
            assert!(below
                .read(4096, 4096)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0));
            // The gateway "dies": the caches are dropped without a write-back.
        }
        let caches = LunCaches::new(dir.path(), spec.clone(), hour);
        assert_eq!(caches.journaled_volumes(), vec![1]);
        let dev = caches.wrap(&info(1), below.clone()).await.unwrap();
        let back = below.read(0, 8192).await.unwrap();
        assert!(
            back[..512].iter().all(|&b| b == 0),
            "unmap replayed in order"
        );
        assert!(back[512..4096].iter().all(|&b| b == 1));
        assert!(back[4096..].iter().all(|&b| b == 2));
        assert!(below
            .read(1 << 20, 3 << 20)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 3));
        // Writes fill the journal several times over: trims make room.
        for i in 0..40u64 {
            dev.write((i % 4) << 20, Bytes::from(vec![i as u8; 1 << 20]), false)
                .await
                .unwrap();
        }
        caches.flush_all().await.unwrap();
        assert!(below
            .read(3 << 20, 4096)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 39));
        drop(dev);
        drop(caches);
        // Let a trim the writes kicked off finish and let go of the nvdisk.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Nothing is left to replay: a third open changes nothing on a wiped device.
        let fresh = Arc::new(MemDevice::new(4 << 20, 512, "fresh"));
        let caches = LunCaches::new(dir.path(), spec, hour);
        caches.wrap(&info(1), fresh.clone()).await.unwrap();
        assert!(fresh
            .read(0, 4 << 20)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0));
    }

    /// Switching the spec off replays the journal and removes it.
    #[tokio::test]
    async fn a_journal_left_behind_is_replayed_when_the_cache_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let spec: LunCacheSpec = "nvdisk:sync,size=8M".parse().unwrap();
        let below = Arc::new(MemDevice::new(4 << 20, 512, "below"));
        {
            let caches = LunCaches::new(dir.path(), spec, Duration::from_secs(3600));
            let dev = caches.wrap(&info(2), below.clone()).await.unwrap();
            dev.write(0, Bytes::from(vec![5u8; 512]), false)
                .await
                .unwrap();
        }
        let caches = LunCaches::new(dir.path(), LunCacheSpec::Off, Duration::from_secs(1));
        caches.wrap(&info(2), below.clone()).await.unwrap();
        assert_eq!(below.read(0, 512).await.unwrap(), vec![5u8; 512]);
        assert!(caches.journaled_volumes().is_empty());
    }
}
