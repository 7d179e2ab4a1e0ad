//! Device configuration: where the pool lives, its geometry, where backups go, how writes are made
//! durable.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the memory page pool lives.
///
/// Written in config files as `"anon"` or `"file:/dev/shm/cairn-nv0"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PoolMode {
    /// Anonymous process memory: lost with the process; the image is rebuilt from the backups.
    #[default]
    Anon,
    /// A file mapped with `mmap`, on `/dev/shm` (survives a process crash, not a reboot) or on a
    /// pmem/DAX mount (survives power loss when `pool_sync` is set or the platform flushes CPU
    /// caches on power failure).
    File(PathBuf),
}

impl FromStr for PoolMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "anon" {
            return Ok(PoolMode::Anon);
        }
        match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(PoolMode::File(PathBuf::from(path))),
            _ => Err(Error::InvalidConfig {
                field: "pool",
                reason: format!("{s:?} is neither \"anon\" nor \"file:PATH\""),
            }),
        }
    }
}

impl TryFrom<String> for PoolMode {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<PoolMode> for String {
    fn from(mode: PoolMode) -> String {
        mode.to_string()
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolMode::Anon => f.write_str("anon"),
            PoolMode::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Configuration of one nvdisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the page pool lives: `"anon"` or `"file:PATH"` (a file on /dev/shm or pmem/DAX).
    pub pool: PoolMode,
    /// Device size in bytes; a multiple of `page_size`.
    pub size: u64,
    /// Page (and block) size in bytes: a power of two from 512 to 65536.
    pub page_size: u32,
    /// Directory of the two backup images, their two journals, the status mark, the lock file and,
    /// in sync mode, the two write-ahead log segments. Put it on the disk that must hold the data.
    pub backup_dir: PathBuf,
    /// Milliseconds between disk transactions of the committer (the paper's periodic flush).
    pub flush_interval_ms: u64,
    /// Every write is appended to a write-ahead log and fdatasync'ed (group commit) before it is
    /// acknowledged, so an acknowledged write survives power loss whatever the pool mode.
    pub sync: bool,
    /// `msync` the touched pool ranges before a write is acknowledged. Meant for a `file:` pool on
    /// a pmem/DAX mount whose platform does not flush CPU caches on power failure.
    pub pool_sync: bool,
    /// Bytes of the snapshot buffer that holds writes arriving during a disk transaction; also the
    /// bound on an atomic write. Writers wait when it is full until the transaction ends.
    pub snapshot_buffer: u64,
    /// Bytes of each of the two write-ahead log segments (sync mode only); preallocated so that
    /// fdatasync need not update file metadata. At least `snapshot_buffer`.
    pub wal_segment_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pool: PoolMode::Anon,
            size: 64 << 20,
            page_size: 4096,
            backup_dir: PathBuf::from("nvdisk"),
            flush_interval_ms: 1000,
            sync: false,
            pool_sync: false,
            snapshot_buffer: 16 << 20,
            wal_segment_size: 64 << 20,
        }
    }
}

/// Space the pool reserves for its header and bitmaps never exceeds this share of the address space
/// the platform can map; sizes beyond are refused rather than failing in `mmap`.
const MAX_SIZE: u64 = 1 << 46;

impl Config {
    /// Checks every field; the message names the field and the rule it breaks.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::InvalidConfig { field, reason });
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return bad(
                "page_size",
                format!("{} is not a power of two from 512 to 65536", self.page_size),
            );
        }
        if self.size == 0
            || !self.size.is_multiple_of(u64::from(self.page_size))
            || self.size > MAX_SIZE
        {
            return bad(
                "size",
                format!(
                    "{} is not a non-zero multiple of page_size {} up to {MAX_SIZE}",
                    self.size, self.page_size
                ),
            );
        }
        if self.backup_dir.as_os_str().is_empty() {
            return bad("backup_dir", "must be set".into());
        }
        if self.flush_interval_ms == 0 {
            return bad("flush_interval_ms", "must be at least 1".into());
        }
        if self.snapshot_buffer < 2 * u64::from(self.page_size) || self.snapshot_buffer > 1 << 34 {
            return bad(
                "snapshot_buffer",
                format!(
                    "{} is not between two pages and 16 GiB",
                    self.snapshot_buffer
                ),
            );
        }
        if self.sync && self.wal_segment_size < self.snapshot_buffer {
            return bad(
                "wal_segment_size",
                format!(
                    "{} is smaller than snapshot_buffer {}",
                    self.wal_segment_size, self.snapshot_buffer
                ),
            );
        }
        if self.pool_sync && self.pool == PoolMode::Anon {
            return bad("pool_sync", "needs a file: pool".into());
        }
        Ok(())
    }

    /// The flush interval as a `Duration`.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
}

/// `/dev/shm/<prefix>-<dir, with every character but letters, digits, '.' and '-' as '_'>.pool`:
/// one pool file per owner directory, so two daemons on one host never share one and a
/// restarted daemon finds its own. `dir` should be absolute. Names stay under the 255-byte
/// limit: a long one keeps its distinctive end behind a hash of the whole.
pub fn shm_pool_path(prefix: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let mut name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > 180 {
        let hash = crc32fast::hash(name.as_bytes());
        name = format!("{hash:08x}{}", &name[name.len() - 160..]);
    }
    std::path::PathBuf::from(format!(
        "/dev/shm/{prefix}-{}.pool",
        name.trim_start_matches('_')
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_mode_round_trips_through_serde() {
        let cfg = Config {
            pool: PoolMode::File("/dev/shm/x".into()),
            sync: true,
            ..Config::default()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"pool\":\"file:/dev/shm/x\""), "{json}");
        let back: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        let partial: Config = serde_json::from_str(r#"{"pool":"anon","size":8192}"#).unwrap();
        assert_eq!(partial.size, 8192);
        assert_eq!(partial.page_size, 4096);
        assert!(serde_json::from_str::<Config>(r#"{"pool":"disk"}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"colour":"red"}"#).is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        assert!(Config::default().validate().is_ok());
        let field_of = |cfg: Config| match cfg.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let d = Config::default;
        assert_eq!(
            field_of(Config {
                page_size: 3000,
                ..d()
            }),
            "page_size"
        );
        assert_eq!(field_of(Config { size: 4097, ..d() }), "size");
        assert_eq!(field_of(Config { size: 0, ..d() }), "size");
        assert_eq!(
            field_of(Config {
                backup_dir: "".into(),
                ..d()
            }),
            "backup_dir"
        );
        assert_eq!(
            field_of(Config {
                flush_interval_ms: 0,
                ..d()
            }),
            "flush_interval_ms"
        );
        assert_eq!(
            field_of(Config {
                snapshot_buffer: 100,
                ..d()
            }),
            "snapshot_buffer"
        );
        assert_eq!(
            field_of(Config {
                sync: true,
                wal_segment_size: 1 << 20,
                ..d()
            }),
            "wal_segment_size"
        );
        assert_eq!(
            field_of(Config {
                pool_sync: true,
                ..d()
            }),
            "pool_sync"
        );
    }
}
