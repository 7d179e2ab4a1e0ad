//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use cairn_nvdisk::{Config, PoolMode};
use tempfile::TempDir;

/// SplitMix64: small, seeded, good enough to drive tests reproducibly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The durability modes under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Anonymous pool, periodic flush only.
    Anon,
    /// File pool on /dev/shm.
    Shm,
    /// Anonymous pool, write-ahead log with fdatasync.
    Sync,
    /// File pool on /dev/shm and the write-ahead log.
    ShmSync,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Anon, Mode::Shm, Mode::Sync, Mode::ShmSync];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Anon => "anon",
            Mode::Shm => "shm",
            Mode::Sync => "sync",
            Mode::ShmSync => "shm-sync",
        }
    }

    pub fn parse(s: &str) -> Mode {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .unwrap_or_else(|| panic!("unknown mode {s}"))
    }

    /// Whether a write is durable when `write` returns (otherwise only after `flush`).
    pub fn acks_on_write(self) -> bool {
        self != Mode::Anon
    }

    pub fn uses_file_pool(self) -> bool {
        matches!(self, Mode::Shm | Mode::ShmSync)
    }
}

/// A backup dir on the real disk and, for file pools, a dir on /dev/shm (or the temp dir where
/// /dev/shm is missing).
pub struct Dirs {
    pub backup: TempDir,
    pub shm: TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        let shm = if Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new()
                .prefix("cairn-nvdisk-test")
                .tempdir_in("/dev/shm")
                .unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        Dirs {
            backup: tempfile::tempdir().unwrap(),
            shm,
        }
    }

    pub fn pool_path(&self) -> PathBuf {
        self.shm.path().join("pool")
    }
}

pub fn config_at(backup: &Path, pool: &Path, mode: Mode, size: u64) -> Config {
    Config {
        pool: if mode.uses_file_pool() {
            PoolMode::File(pool.to_path_buf())
        } else {
            PoolMode::Anon
        },
        size,
        page_size: 4096,
        backup_dir: backup.to_path_buf(),
        flush_interval_ms: 50,
        sync: matches!(mode, Mode::Sync | Mode::ShmSync),
        pool_sync: false,
        snapshot_buffer: 256 << 10,
        wal_segment_size: 1 << 20,
    }
}

pub fn config(dirs: &Dirs, mode: Mode, size: u64) -> Config {
    config_at(dirs.backup.path(), &dirs.pool_path(), mode, size)
}
