//! The OSD write journal on an nvdisk ([`NvJournal`]), and the `journal` setting that picks it
//! ([`JournalSpec`]).
//!
//! [`NvJournal`] adapts `cairn_nvdisk::Journal` — a ring of length + chained-crc32 records on an
//! [`NvDisk`] — to the OSD's [`Journal`] trait. An append returns once the nvdisk says the record
//! is durable, which, by the pool and `sync` chosen, means it is in a memory pool that outlives
//! the process, or in an fdatasync'ed write-ahead log. The nvdisk's committer copies the ring to
//! its two backup images in the background; the OSD store is still synced only at checkpoints.
//!
//! A trim (at a checkpoint) of a journal without `sync` also runs an nvdisk disk transaction, so
//! that losing the pool can never bring back records older than the synced store.
//!
//! Errors map onto the OSD's: a full ring is [`Error::JournalFull`] (the durable layer
//! checkpoints, which empties the ring, and appends again); a record larger than the whole ring
//! is [`Error::JournalRecordTooLarge`], refused as an invalid request; a damaged record in the
//! middle of the ring is [`Error::JournalCorrupt`] and a block 0 that is no journal is
//! [`Error::JournalHeader`], both of which keep the OSD from starting, as with the file journal.
//!
//! # Spec syntax
//!
//! `journal = "file"` (the default) or `"nvdisk:ITEM[,ITEM…]"`, items in any order:
//!
//! | item | meaning |
//! |---|---|
//! | `shm` | the pool is a file in /dev/shm named after the OSD's data directory |
//! | `file=PATH` | the pool is the file `PATH` (no commas) |
//! | `sync` | every append is also fdatasync'ed to the nvdisk's write-ahead log |
//! | `size=SIZE` | device size, e.g. `256M` (the default; at least `8M`, a multiple of 4 KiB); it bounds the largest write the OSD accepts |
//!
//! `shm` and `file=` exclude each other; with neither, the pool is anonymous memory, which needs
//! `sync` (else an acknowledged write would live only in the process). The nvdisk's backup
//! images, their journals and the write-ahead log live in `DATA/nvdisk/`.
//!
//! | spec | an acknowledged write survives |
//! |---|---|
//! | `file` | process crash and power loss (fdatasync of `DATA/journal`, group commit) |
//! | `nvdisk:shm` | process crash (kill -9); not a reboot or power loss, which fall back to the last nvdisk disk transaction (at most `flush_interval` old) |
//! | `nvdisk:file=PATH` | as `shm` for a file on tmpfs; the same for a file on any other file system, whose page cache outlives the process |
//! | `nvdisk:sync`, `nvdisk:shm,sync`, `nvdisk:file=PATH,sync` | process crash and power loss (the write-ahead log record is fdatasync'ed before the ack) |

use crate::error::{Error, Result};
use crate::journal::Journal;
use cairn_nvdisk::{Config as NvConfig, Durability, NvDisk, PoolMode};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Ring size when the spec names none.
pub const DEFAULT_SIZE: u64 = 256 << 20;
/// Smallest ring size accepted: two of recovery's 4 MiB pieces with their envelopes.
pub const MIN_SIZE: u64 = 8 << 20;
const PAGE: u64 = 4096;

/// Where the nvdisk's page pool lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvPool {
    /// Anonymous memory (only with `sync`).
    Anon,
    /// A file in /dev/shm named after the data directory.
    Shm,
    /// A file at this path.
    File(PathBuf),
}

/// An nvdisk journal's settings, as parsed from `nvdisk:…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvJournalSpec {
    pub pool: NvPool,
    pub size: u64,
    pub sync: bool,
}

/// Which journal an OSD writes; see the module doc for the syntax and what each survives.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum JournalSpec {
    /// `DATA/journal`, a plain file.
    #[default]
    File,
    /// A ring on an nvdisk.
    NvDisk(NvJournalSpec),
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Config {
        field: "journal",
        reason: reason.into(),
    }
}

/// `N` with an optional binary unit `K`, `M`, `G` (case-insensitive, `KiB` and `KB` too).
fn parse_size(s: &str) -> Result<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad(format!("size {s:?}: unknown unit (use K, M or G)"))),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| bad(format!("size {s:?} is not a number of bytes")))
}

impl FromStr for JournalSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<JournalSpec> {
        if s == "file" {
            return Ok(JournalSpec::File);
        }
        let Some(items) = s.strip_prefix("nvdisk:") else {
            return Err(bad(format!(
                "{s:?} is neither \"file\" nor \"nvdisk:ITEMS\""
            )));
        };
        let mut pool = None;
        let mut size = None;
        let mut sync = false;
        for item in items.split(',') {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let place = match (key, value) {
                ("shm", None) => Some(NvPool::Shm),
                ("file", Some(p)) if !p.is_empty() => Some(NvPool::File(PathBuf::from(p))),
                ("sync", None) if !sync => {
                    sync = true;
                    None
                }
                ("size", Some(v)) if size.is_none() => {
                    size = Some(parse_size(v)?);
                    None
                }
                _ => {
                    return Err(bad(format!(
                        "{s:?}: bad or repeated item {item:?} (items: shm, file=PATH, sync, \
                         size=SIZE)"
                    )))
                }
            };
            if let Some(p) = place {
                if pool.replace(p).is_some() {
                    return Err(bad(format!("{s:?}: name one pool, shm or file=PATH")));
                }
            }
        }
        let spec = NvJournalSpec {
            pool: pool.unwrap_or(NvPool::Anon),
            size: size.unwrap_or(DEFAULT_SIZE),
            sync,
        };
        if spec.pool == NvPool::Anon && !spec.sync {
            return Err(bad(format!(
                "{s:?}: an anonymous pool dies with the process; add shm, file=PATH or sync"
            )));
        }
        if spec.size < MIN_SIZE || !spec.size.is_multiple_of(PAGE) {
            return Err(bad(format!(
                "{s:?}: size {} is not a multiple of 4 KiB of at least 8 MiB",
                spec.size
            )));
        }
        Ok(JournalSpec::NvDisk(spec))
    }
}

impl TryFrom<String> for JournalSpec {
    type Error = Error;

    fn try_from(s: String) -> Result<JournalSpec> {
        s.parse()
    }
}

impl From<JournalSpec> for String {
    fn from(spec: JournalSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for JournalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let JournalSpec::NvDisk(spec) = self else {
            return f.write_str("file");
        };
        let mut items = Vec::new();
        match &spec.pool {
            NvPool::Anon => {}
            NvPool::Shm => items.push("shm".to_string()),
            NvPool::File(p) => items.push(format!("file={}", p.display())),
        }
        if spec.sync {
            items.push("sync".into());
        }
        if spec.size != DEFAULT_SIZE {
            let unit = [(30, "G"), (20, "M"), (10, "K")]
                .into_iter()
                .find(|(shift, _)| spec.size.is_multiple_of(1 << shift));
            items.push(match unit {
                Some((shift, u)) => format!("size={}{u}", spec.size >> shift),
                None => format!("size={}", spec.size),
            });
        }
        write!(f, "nvdisk:{}", items.join(","))
    }
}

impl NvJournalSpec {
    /// The pool file for `shm`: /dev/shm/cairn-osd-<data dir, `/` → `_`>.pool, so that two OSDs
    /// on one host never share one and a restarted OSD finds its own. `data_dir` should be
    /// canonical.
    pub fn shm_pool_path(data_dir: &Path) -> PathBuf {
        cairn_nvdisk::shm_pool_path("cairn-osd", data_dir)
    }

    /// The nvdisk configuration for an OSD whose data directory is `data_dir`.
    pub fn nvdisk_config(&self, data_dir: &Path) -> NvConfig {
        let pool = match &self.pool {
            NvPool::Anon => PoolMode::Anon,
            NvPool::Shm => PoolMode::File(Self::shm_pool_path(data_dir)),
            NvPool::File(p) => PoolMode::File(p.clone()),
        };
        NvConfig {
            pool,
            size: self.size,
            page_size: PAGE as u32,
            backup_dir: data_dir.join("nvdisk"),
            sync: self.sync,
            ..NvConfig::default()
        }
    }
}

/// An OSD journal on an nvdisk; see the module doc.
pub struct NvJournal {
    ring: cairn_nvdisk::Journal,
    ring_len: u64,
}

/// The nvdisk's errors as the OSD's.
fn map_err(e: cairn_nvdisk::Error) -> Error {
    match e {
        cairn_nvdisk::Error::Full { needed, free } => Error::JournalFull { needed, free },
        cairn_nvdisk::Error::TooLarge { len, max } => Error::JournalRecordTooLarge { len, max },
        cairn_nvdisk::Error::Corrupt { offset, .. } => Error::JournalCorrupt { offset },
        cairn_nvdisk::Error::NotAJournal => Error::JournalHeader,
        other => Error::NvDisk(other),
    }
}

impl NvJournal {
    /// Opens (recovers) the nvdisk described by `spec` for `data_dir` and the journal on it.
    pub fn open(spec: &NvJournalSpec, data_dir: &Path) -> Result<NvJournal> {
        let cfg = spec.nvdisk_config(data_dir);
        std::fs::create_dir_all(&cfg.backup_dir).map_err(Error::io(&cfg.backup_dir))?;
        let disk = NvDisk::open(cfg).map_err(map_err)?;
        tracing::info!(durability = ?disk.durability(), size = disk.len(), "nvdisk journal open");
        NvJournal::on(Arc::new(disk))
    }

    /// The journal on an open device.
    pub fn on(disk: Arc<NvDisk>) -> Result<NvJournal> {
        // The ring is everything after block 0, 8-byte aligned: how cairn_nvdisk formats it.
        let ring_len = (disk.len() - u64::from(disk.block_size())) / 8 * 8;
        let ring = cairn_nvdisk::Journal::open(disk).map_err(map_err)?;
        Ok(NvJournal { ring, ring_len })
    }

    /// The device underneath.
    pub fn disk(&self) -> &Arc<NvDisk> {
        self.ring.disk()
    }
}

impl Journal for NvJournal {
    fn append(&self, payload: &[u8]) -> Result<u64> {
        if payload.is_empty() {
            return Err(Error::invalid("empty journal record"));
        }
        self.ring.append(payload).map_err(map_err)
    }

    fn replay(&self, visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        for rec in self.ring.replay() {
            let (seq, payload) = rec.map_err(map_err)?;
            visit(seq, &payload)?;
        }
        Ok(())
    }

    fn trim_through(&self, seq: u64) -> Result<()> {
        self.ring.trim_through(seq).map_err(map_err)?;
        // Without `sync`, the trim lives only in the pool until the next disk transaction. Were
        // the pool lost (power loss, reboot) before then, the image would come back from the
        // backups with the trimmed records, and replaying them over the store synced at this
        // checkpoint would roll objects back to older values. So make the trim reach the
        // backups now.
        let disk = self.ring.disk();
        if disk.durability() != Durability::PowerLoss {
            disk.flush().map_err(map_err)?;
        }
        Ok(())
    }

    fn last_seq(&self) -> u64 {
        self.ring.next_seq() - 1
    }

    fn len_bytes(&self) -> u64 {
        self.ring_len.saturating_sub(self.ring.free())
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.ring_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nv(pool: NvPool, size: u64, sync: bool) -> JournalSpec {
        JournalSpec::NvDisk(NvJournalSpec { pool, size, sync })
    }

    #[test]
    fn spec_parses_and_round_trips() {
        let cases = [
            ("file", JournalSpec::File),
            ("nvdisk:shm", nv(NvPool::Shm, DEFAULT_SIZE, false)),
            ("nvdisk:sync", nv(NvPool::Anon, DEFAULT_SIZE, true)),
            ("nvdisk:shm,sync", nv(NvPool::Shm, DEFAULT_SIZE, true)),
            (
                "nvdisk:file=/mnt/pm/p,size=64M,sync",
                nv(NvPool::File("/mnt/pm/p".into()), 64 << 20, true),
            ),
            ("nvdisk:size=8MiB,shm", nv(NvPool::Shm, 8 << 20, false)),
            ("nvdisk:shm,size=16777216", nv(NvPool::Shm, 16 << 20, false)),
        ];
        for (s, want) in cases {
            let got: JournalSpec = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got, want, "{s}");
            let again: JournalSpec = got.to_string().parse().unwrap();
            assert_eq!(again, want, "{s} printed as {got}");
        }
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let cases = [
            ("disk", "neither"),
            ("nvdisk:", "bad or repeated item"),
            ("nvdisk:anon", "bad or repeated item"),
            ("nvdisk:shm,shm", "name one pool"),
            ("nvdisk:shm,file=/x", "name one pool"),
            ("nvdisk:file=", "bad or repeated item"),
            ("nvdisk:sync,sync", "bad or repeated item"),
            ("nvdisk:shm,size=1M,size=2M", "bad or repeated item"),
            ("nvdisk:size=64M", "anonymous pool"),
            ("nvdisk:shm,size=12x", "unknown unit"),
            ("nvdisk:shm,size=M", "not a number"),
            ("nvdisk:shm,size=99999999999G", "not a number"),
            ("nvdisk:shm,size=4M", "at least 8 MiB"),
            ("nvdisk:shm,size=16777217", "multiple of 4 KiB"),
        ];
        for (s, why) in cases {
            match s.parse::<JournalSpec>() {
                Err(Error::Config { field, reason }) => {
                    assert_eq!(field, "journal");
                    assert!(reason.contains(why), "{s}: {reason}");
                }
                other => panic!("{s}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn spec_maps_onto_an_nvdisk_config() {
        let data = Path::new("/srv/cairn/osd 1");
        let JournalSpec::NvDisk(spec) = "nvdisk:shm".parse().unwrap() else {
            panic!("not an nvdisk spec")
        };
        let cfg = spec.nvdisk_config(data);
        assert_eq!(
            cfg.pool,
            PoolMode::File("/dev/shm/cairn-osd-srv_cairn_osd_1.pool".into())
        );
        assert_eq!(cfg.backup_dir, data.join("nvdisk"));
        assert!(!cfg.sync);
        cfg.validate().unwrap();
        let JournalSpec::NvDisk(spec) = "nvdisk:sync".parse().unwrap() else {
            panic!("not an nvdisk spec")
        };
        let cfg = spec.nvdisk_config(data);
        assert_eq!((cfg.pool.clone(), cfg.sync), (PoolMode::Anon, true));
        cfg.validate().unwrap();
        // Long directories still give a bounded, distinct name.
        let long = PathBuf::from(format!("/{}", "d/".repeat(200)));
        let a = NvJournalSpec::shm_pool_path(&long.join("a"));
        let b = NvJournalSpec::shm_pool_path(&long.join("b"));
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().len() < 255);
    }

    /// A 64 KiB device with its pool file and backups in `dir`.
    fn small_disk(dir: &Path, sync: bool) -> Arc<NvDisk> {
        let spec = NvJournalSpec {
            pool: NvPool::File(dir.join("pool")),
            size: 64 << 10,
            sync,
        };
        let cfg = NvConfig {
            snapshot_buffer: 64 << 10,
            wal_segment_size: 256 << 10,
            ..spec.nvdisk_config(dir)
        };
        std::fs::create_dir_all(&cfg.backup_dir).unwrap();
        Arc::new(NvDisk::open(cfg).unwrap())
    }

    fn small_journal(dir: &Path, sync: bool) -> NvJournal {
        NvJournal::on(small_disk(dir, sync)).unwrap()
    }

    fn collect(j: &dyn Journal) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        j.replay(&mut |s, p| {
            out.push((s, p.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn append_replay_trim_across_reopen() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            {
                let j = small_journal(dir.path(), sync);
                assert_eq!(j.last_seq(), 0);
                assert_eq!(j.len_bytes(), 0);
                assert_eq!(j.append(b"one").unwrap(), 1);
                assert_eq!(j.append(b"two").unwrap(), 2);
                assert_eq!(j.append(&[7u8; 5000]).unwrap(), 3);
                assert!(j.len_bytes() > 5000);
                j.trim_through(1).unwrap();
                assert!(j.append(b"").is_err());
            }
            let j = small_journal(dir.path(), sync);
            let recs = collect(&j);
            assert_eq!(
                recs.iter().map(|r| r.0).collect::<Vec<_>>(),
                vec![2, 3],
                "sync {sync}"
            );
            assert_eq!(recs[0].1, b"two");
            assert_eq!(recs[1].1, vec![7u8; 5000]);
            assert_eq!(j.last_seq(), 3);
            j.trim_through(j.last_seq()).unwrap();
            assert_eq!(j.len_bytes(), 0);
            assert!(collect(&j).is_empty());
            assert_eq!(j.append(b"four").unwrap(), 4);
        }
    }

    #[test]
    fn full_and_too_large_map_to_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let j = small_journal(dir.path(), false);
        let cap = j.capacity().unwrap();
        assert!(matches!(
            j.append(&vec![1u8; cap as usize]),
            Err(Error::JournalRecordTooLarge { .. })
        ));
        let rec = vec![2u8; 10_000];
        let mut n = 0;
        let err = loop {
            match j.append(&rec) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100, "the ring never filled");
        };
        assert!(matches!(err, Error::JournalFull { .. }), "{err:?}");
        assert!(n >= 5, "only {n} records fit in {cap} bytes");
        // A trim makes room again and numbering goes on.
        j.trim_through(j.last_seq()).unwrap();
        assert_eq!(j.append(&rec).unwrap(), n + 1);
    }

    #[test]
    fn damage_in_the_middle_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = small_journal(dir.path(), false);
            for i in 0..4u8 {
                j.append(&[i; 100]).unwrap();
            }
            // Record 2 starts 8-aligned after record 1 (24-byte header + 104 padded bytes);
            // its payload starts 24 bytes further, ring at block 1.
            j.disk().write(4096 + 128 + 24 + 10, &[0xee]).unwrap();
        }
        assert!(matches!(
            NvJournal::on(small_disk(dir.path(), false)),
            Err(Error::JournalCorrupt { .. })
        ));
    }
}
