//! LUNs that are nvdisks: [`NvDiskDevice`], a [`BlockDevice`] over a [`cairn_nvdisk::NvDisk`],
//! and where a gateway keeps the nvdisks of the volumes it serves ([`open_volume`]).
//!
//! This is the paper's remote RAM disk: the LUN's image is a page pool in the gateway's memory
//! (or /dev/shm), copied by the nvdisk's committer to two backup files under the gateway's data
//! directory. What an acknowledged write survives is the nvdisk's [`Durability`]:
//!
//! | volume mode | nvdisk | WCE | a write acknowledged to the initiator survives |
//! |---|---|---|---|
//! | `anon` | anonymous pool | 1 | nothing until FUA / SYNCHRONIZE CACHE (a disk transaction) or the periodic one |
//! | `shm` | /dev/shm pool | 1 | a gateway crash (kill -9); FUA / SYNCHRONIZE CACHE make it survive power loss |
//! | `sync`, `shm-sync` | + fdatasync'ed write-ahead log | 0 | a gateway crash and power loss |
//!
//! Whatever the mode the device lives on one gateway's disk and is not replicated: losing that
//! machine's disk loses the volume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_nvdisk::{Config as NvConfig, Durability, NvDisk, PoolMode};
use cairn_proto::volume::{NvDiskMode, VolumeInfo};

use crate::error::GatewayError;
use cairn_iscsi::block::{BlockDevice, BlockError};

/// Page size of every nvdisk the gateway creates.
pub const PAGE: u32 = 4096;

/// Largest piece of zeros written per call when a range is unmapped.
const ZERO_CHUNK: usize = 1 << 20;

/// The nvdisk's errors as block errors (and so as sense data).
pub fn block_error(e: cairn_nvdisk::Error) -> BlockError {
    match e {
        cairn_nvdisk::Error::OutOfRange { offset, len, size } => {
            BlockError::OutOfRange { offset, len, size }
        }
        cairn_nvdisk::Error::Corrupt { offset, .. } => BlockError::Corrupt { offset },
        cairn_nvdisk::Error::Io { source, .. } => match source.raw_os_error() {
            // ENOSPC, EDQUOT: the backup disk or /dev/shm is full.
            Some(28) | Some(122) => BlockError::NoSpace,
            _ => BlockError::Io(source),
        },
        other => BlockError::Io(std::io::Error::other(other.to_string())),
    }
}

/// A LUN on an nvdisk; see the module documentation for what a write survives.
pub struct NvDiskDevice {
    disk: Arc<NvDisk>,
    size: u64,
    block_size: u32,
    serial: String,
    /// Writes go through a blocking thread (they wait for an fdatasync).
    sync: bool,
}

impl NvDiskDevice {
    /// A LUN of `block_size` (512 or 4096) byte blocks over `disk`, whose length must be a
    /// multiple of it.
    pub fn new(
        disk: Arc<NvDisk>,
        block_size: u32,
        serial: impl Into<String>,
    ) -> Result<NvDiskDevice, GatewayError> {
        if block_size != 512 && block_size != 4096 {
            return Err(GatewayError::InvalidOption {
                field: "block_size",
                reason: "must be 512 or 4096",
            });
        }
        if !disk.len().is_multiple_of(u64::from(block_size)) {
            return Err(GatewayError::InvalidOption {
                field: "block_size",
                reason: "the nvdisk's length is not a whole number of blocks",
            });
        }
        Ok(NvDiskDevice {
            size: disk.len(),
            sync: disk.config().sync,
            disk,
            block_size,
            serial: serial.into(),
        })
    }

    /// The device underneath.
    pub fn disk(&self) -> &Arc<NvDisk> {
        &self.disk
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let size = self.size;
        match offset.checked_add(len) {
            Some(end) if end <= size => {}
            _ => return Err(BlockError::OutOfRange { offset, len, size }),
        }
        let bs = u64::from(self.block_size);
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(BlockError::Misaligned {
                offset,
                len,
                block_size: self.block_size,
            });
        }
        Ok(())
    }

    /// Whether acknowledged writes are already safe from power loss.
    fn power_safe(&self) -> bool {
        self.disk.durability() == Durability::PowerLoss
    }

    /// Runs `f` on the disk: on a blocking thread in sync mode, where it waits for an
    /// fdatasync; inline otherwise, where a write is a copy into the pool and waits only in
    /// the rare case of a full snapshot buffer (bounded by one disk transaction).
    async fn on_disk<T: Send + 'static>(
        &self,
        blocking: bool,
        f: impl FnOnce(&NvDisk) -> cairn_nvdisk::Result<T> + Send + 'static,
    ) -> Result<T, BlockError> {
        if !blocking {
            return f(&self.disk).map_err(block_error);
        }
        let disk = Arc::clone(&self.disk);
        match tokio::task::spawn_blocking(move || f(&disk)).await {
            Ok(r) => r.map_err(block_error),
            Err(_) => Err(BlockError::Unavailable),
        }
    }

    /// A disk transaction: everything acknowledged so far reaches the backup files (fsynced).
    async fn commit(&self) -> Result<(), BlockError> {
        self.on_disk(true, |d| d.flush()).await
    }
}

#[async_trait]
impl BlockDevice for NvDiskDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        self.check(offset, len as u64)?;
        // One copy, straight from the pool's pages into the buffer the Data-In PDUs send; the
        // pool cannot be lent out further since writers must not change bytes being sent.
        self.disk
            .read_zero_copy(offset, len, Bytes::copy_from_slice)
            .map_err(block_error)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.check(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.on_disk(self.sync, move |d| d.write(offset, &data))
            .await?;
        if fua && !self.power_safe() {
            self.commit().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.power_safe() {
            return Ok(());
        }
        self.commit().await
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check(offset, len)?;
        // The nvdisk keeps every page; an unmapped range is zeroed, in pieces the nvdisk writes
        // atomically.
        let chunk = ZERO_CHUNK
            .min(self.disk.max_atomic_write() / self.block_size as usize * self.block_size as usize)
            .max(self.block_size as usize) as u64;
        self.on_disk(self.sync, move |d| {
            let zeros = vec![0u8; chunk.min(len) as usize];
            let mut at = 0u64;
            while at < len {
                let n = chunk.min(len - at) as usize;
                d.write(offset + at, &zeros[..n])?;
                at += n as u64;
            }
            Ok(())
        })
        .await
    }

    fn serial(&self) -> String {
        self.serial.clone()
    }

    fn volatile_write_cache(&self) -> bool {
        !self.power_safe()
    }
}

pub use cairn_nvdisk::shm_pool_path;

/// The directory of volume `id`'s nvdisk under a gateway's data directory.
pub fn volume_dir(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join("nvdisk").join(format!("vol-{id}"))
}

/// The nvdisk configuration of an nvdisk volume kept under `data_dir`.
pub fn volume_config(data_dir: &Path, info: &VolumeInfo, mode: NvDiskMode) -> NvConfig {
    let dir = volume_dir(data_dir, info.id);
    let pool = match mode {
        NvDiskMode::Anon | NvDiskMode::Sync => PoolMode::Anon,
        NvDiskMode::Shm | NvDiskMode::ShmSync => PoolMode::File(shm_pool_path("cairn-gw", &dir)),
    };
    let mut cfg = NvConfig {
        pool,
        size: info.size,
        page_size: PAGE,
        backup_dir: dir,
        sync: matches!(mode, NvDiskMode::Sync | NvDiskMode::ShmSync),
        ..NvConfig::default()
    };
    // The snapshot buffer and the two preallocated write-ahead log segments need not outgrow a
    // small device.
    cfg.snapshot_buffer = cfg.snapshot_buffer.min(info.size.max(2 * u64::from(PAGE)));
    cfg.wal_segment_size = cfg.wal_segment_size.min(info.size.max(cfg.snapshot_buffer));
    cfg
}

/// Opens (creating or recovering) the nvdisk of volume `info` under `data_dir`: the image is
/// rebuilt from the surviving /dev/shm pool, else from the backups, plus the write-ahead log.
pub async fn open_volume(data_dir: &Path, info: &VolumeInfo) -> Result<NvDiskDevice, GatewayError> {
    let Some((_, mode)) = info.nvdisk() else {
        return Err(GatewayError::InvalidOption {
            field: "volume",
            reason: "not an nvdisk volume",
        });
    };
    let cfg = volume_config(data_dir, info, mode);
    let dir = cfg.backup_dir.clone();
    let disk = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| cairn_nvdisk::Error::Io {
            op: "create nvdisk directory",
            path: dir.clone(),
            source: e,
        })?;
        NvDisk::open(cfg)
    })
    .await
    .map_err(|_| GatewayError::Unavailable { service: "nvdisk" })?
    .map_err(|source| GatewayError::NvDisk {
        volume: info.name.clone(),
        source,
    })?;
    tracing::info!(
        volume = %info.name,
        durability = ?disk.durability(),
        size = disk.len(),
        "nvdisk volume open"
    );
    NvDiskDevice::new(
        Arc::new(disk),
        info.block_size,
        format!("cairn{:011x}", info.id),
    )
}

/// Removes the nvdisk of a volume that no longer exists (its directory and /dev/shm pool).
pub fn remove_volume_files(dir: &Path) -> std::io::Result<()> {
    let shm = shm_pool_path("cairn-gw", dir);
    match std::fs::remove_file(&shm) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::volume::VolumeBacking;

    fn info(size: u64, block_size: u32, mode: NvDiskMode) -> VolumeInfo {
        VolumeInfo {
            id: 7,
            name: "nv".into(),
            size,
            block_size,
            object_size: u64::from(block_size),
            pool: Default::default(),
            created_ms: 0,
            backing: VolumeBacking::NvDisk {
                gateway: "gw".into(),
                mode,
            },
        }
    }

    fn open(dir: &Path, mode: NvDiskMode) -> NvDiskDevice {
        let i = info(1 << 20, 512, mode);
        let mut cfg = volume_config(dir, &i, mode);
        // Tests must not leave pool files in /dev/shm: a pool under the temporary directory
        // behaves the same for a process that stays alive.
        if let PoolMode::File(_) = cfg.pool {
            cfg.pool = PoolMode::File(dir.join("pool"));
        }
        std::fs::create_dir_all(&cfg.backup_dir).unwrap();
        NvDiskDevice::new(Arc::new(NvDisk::open(cfg).unwrap()), 512, "s").unwrap()
    }

    fn pattern(seed: u8, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn reads_writes_unmaps_and_rejects_bad_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let dev = open(dir.path(), NvDiskMode::Shm);
        assert_eq!((dev.size(), dev.block_size()), (1 << 20, 512));
        assert!(dev.read(0, 4096).await.unwrap().iter().all(|&b| b == 0));
        let data = pattern(1, 3 * 4096 + 512);
        dev.write(4096 - 512, data.clone(), false).await.unwrap();
        assert_eq!(dev.read(4096 - 512, data.len()).await.unwrap(), data);
        dev.unmap(4096, 1024).await.unwrap();
        let back = dev.read(4096 - 512, data.len()).await.unwrap();
        assert_eq!(&back[..512], &data[..512]);
        assert!(back[512..1536].iter().all(|&b| b == 0));
        assert_eq!(&back[1536..], &data[1536..]);
        // The last block is writable, one past it is not.
        dev.write((1 << 20) - 512, pattern(2, 512), true)
            .await
            .unwrap();
        for r in [
            dev.read(1 << 20, 512).await.map(|_| ()),
            dev.write((1 << 20) - 512, pattern(3, 1024), false).await,
            dev.write(u64::MAX - 511, pattern(3, 512), false).await,
            dev.unmap(1 << 20, 512).await,
        ] {
            assert!(matches!(r, Err(BlockError::OutOfRange { .. })), "{r:?}");
        }
        for r in [
            dev.read(100, 512).await.map(|_| ()),
            dev.write(512, pattern(4, 100), false).await,
            dev.unmap(0, 100).await,
        ] {
            assert!(matches!(r, Err(BlockError::Misaligned { .. })), "{r:?}");
        }
    }

    #[tokio::test]
    async fn write_cache_flag_follows_the_durability_mode() {
        for (mode, wce) in [
            (NvDiskMode::Anon, true),
            (NvDiskMode::Shm, true),
            (NvDiskMode::Sync, false),
            (NvDiskMode::ShmSync, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let dev = open(dir.path(), mode);
            assert_eq!(dev.volatile_write_cache(), wce, "{mode}");
        }
    }

    /// FUA and SYNCHRONIZE CACHE run a disk transaction where writes are not yet safe from
    /// power loss, and nothing where they are. (Surviving kill -9 is checked by the
    /// integration test tests/tests/iscsi_nvdisk.rs, which kills a real gateway.)
    #[tokio::test]
    async fn fua_and_flush_commit_only_when_the_mode_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let dev = open(dir.path(), NvDiskMode::Anon);
        let t0 = dev.disk().stats().transactions;
        dev.write(0, pattern(6, 512), false).await.unwrap();
        assert_eq!(dev.disk().stats().transactions, t0);
        dev.write(512, pattern(7, 512), true).await.unwrap();
        let t1 = dev.disk().stats().transactions;
        assert!(t1 > t0, "FUA ran no disk transaction");
        dev.write(1024, pattern(8, 512), false).await.unwrap();
        dev.flush().await.unwrap();
        assert!(dev.disk().stats().transactions > t1, "flush ran none");

        let sdir = tempfile::tempdir().unwrap();
        let sdev = open(sdir.path(), NvDiskMode::Sync);
        let t = sdev.disk().stats().transactions;
        sdev.write(0, pattern(9, 512), true).await.unwrap();
        sdev.flush().await.unwrap();
        assert_eq!(sdev.disk().stats().transactions, t);
        assert!(sdev.disk().stats().wal_syncs >= 1);

        // A restarted gateway rebuilds the image from the backup files.
        drop(dev);
        let dev = open(dir.path(), NvDiskMode::Anon);
        assert_eq!(
            dev.read(0, 1536).await.unwrap()[512..1024],
            pattern(7, 512)[..]
        );
        assert_eq!(dev.read(1024, 512).await.unwrap(), pattern(8, 512));
    }

    #[test]
    fn shm_names_are_distinct_and_bounded() {
        let a = shm_pool_path("cairn-gw", Path::new("/data/gw/nvdisk/vol-1"));
        let b = shm_pool_path("cairn-gw", Path::new("/data/gw/nvdisk/vol-11"));
        assert_ne!(a, b);
        assert!(a.starts_with("/dev/shm"));
        let long = "/x".repeat(300);
        let p = shm_pool_path("cairn-gw", Path::new(&long));
        assert!(p.file_name().unwrap().len() < 255);
    }
}
