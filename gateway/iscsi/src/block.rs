//! The block-device seam under every LUN.
//!
//! The iSCSI and SCSI layers only see [`BlockDevice`]: byte-addressed reads, writes, flushes and
//! unmaps. Whether a LUN is a replicated volume, an nvdisk or a plain file is decided by whoever
//! builds the [`crate::target::TargetConfig`]. Two implementations live here: [`MemDevice`]
//! (sparse, in memory) and [`FileDevice`] (a regular file).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

/// Why a block operation failed. The SCSI layer maps each variant onto sense data.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The byte range ends past the device.
    #[error("range {offset}+{len} is beyond the device size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The backing store failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The backing store has no room for the write.
    #[error("no space left on the backing store")]
    NoSpace,
    /// The backing store cannot be reached right now (the initiator should retry).
    #[error("backing store unavailable")]
    Unavailable,
    /// The data read back failed its integrity check.
    #[error("data corrupt at byte offset {offset}")]
    Corrupt { offset: u64 },
    /// The device refuses writes.
    #[error("device is read-only")]
    ReadOnly,
    /// The range does not start or end on a block boundary.
    #[error("range {offset}+{len} is not aligned to the block size {block_size}")]
    Misaligned {
        offset: u64,
        len: u64,
        block_size: u32,
    },
}

/// Mapping state of a run of bytes, as reported by [`BlockDevice::mapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes of the run that starts at the queried offset.
    pub len: u64,
    /// Whether the run holds written data (false: deallocated, reads as zeros).
    pub mapped: bool,
}

/// A LUN's storage: byte offsets, lengths multiple of [`BlockDevice::block_size`].
#[async_trait]
pub trait BlockDevice: Send + Sync {
    /// Size in bytes; it may change between calls when the volume is resized.
    fn size(&self) -> u64;
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError>;
    /// Writes `data` at `offset`; with `fua` the data is durable when this returns.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError>;
    /// Makes every acknowledged write durable.
    async fn flush(&self) -> Result<(), BlockError>;
    /// Deallocates a range; it reads back as zeros afterwards.
    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// A stable serial number (VPD page 0x80) unique within the cluster.
    fn serial(&self) -> String;
    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }
    /// Whether acknowledged writes may sit in a volatile cache until [`BlockDevice::flush`]
    /// (or a write with `fua`): reported as WCE in the caching mode page. The default is no.
    fn volatile_write_cache(&self) -> bool {
        false
    }
    /// Physical block size in bytes: a power-of-two multiple of the block size below which a
    /// write means read-modify-write further down (512-byte emulation on 4 KiB media). The
    /// default is the block size itself.
    fn physical_block_size(&self) -> u32 {
        self.block_size()
    }
    /// The unit in bytes in which [`BlockDevice::unmap`] really deallocates; an unmap of a part of
    /// one only zeroes it. The default is one block.
    fn unmap_granularity(&self) -> u64 {
        u64::from(self.block_size())
    }
    /// Reports the mapping state of the run starting at `offset` (GET LBA STATUS). The default
    /// reports everything as mapped, which is always a truthful answer.
    async fn mapping(&self, offset: u64) -> Result<Extent, BlockError> {
        Ok(Extent {
            len: self.size().saturating_sub(offset),
            mapped: true,
        })
    }
}

fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

/// Granule of [`MemDevice`]'s sparse map: a granule is allocated on first write and freed when
/// wholly unmapped.
const MEM_GRANULE: u64 = 64 * 1024;

/// A sparse in-memory device: unwritten granules read as zeros and take no memory.
pub struct MemDevice {
    size: u64,
    block_size: u32,
    physical_block_size: u32,
    serial: String,
    granules: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl MemDevice {
    /// A device of `size` bytes (rounded down to whole blocks).
    pub fn new(size: u64, block_size: u32, serial: impl Into<String>) -> Self {
        let bs = u64::from(block_size.max(1));
        Self {
            size: size / bs * bs,
            block_size,
            physical_block_size: block_size,
            serial: serial.into(),
            granules: Mutex::new(HashMap::new()),
        }
    }

    /// Reports `physical` bytes per physical block (e.g. 4096 over 512-byte blocks, as a
    /// 512e disk does). Values that are not a power-of-two multiple of the block size are
    /// ignored.
    pub fn with_physical_block_size(mut self, physical: u32) -> Self {
        let bs = self.block_size.max(1);
        if physical >= bs && physical.is_multiple_of(bs) && (physical / bs).is_power_of_two() {
            self.physical_block_size = physical;
        }
        self
    }

    fn granules(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        // A poisoned map only means another thread panicked mid-copy of plain bytes.
        self.granules.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        check_range(offset, len as u64, self.size)?;
        let mut out = BytesMut::zeroed(len);
        let map = self.granules();
        let mut pos = 0usize;
        while pos < len {
            let abs = offset + pos as u64;
            let g = abs / MEM_GRANULE;
            let within = (abs % MEM_GRANULE) as usize;
            let n = (MEM_GRANULE as usize - within).min(len - pos);
            if let Some(buf) = map.get(&g) {
                out[pos..pos + n].copy_from_slice(&buf[within..within + n]);
            }
            pos += n;
        }
        Ok(out.freeze())
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), BlockError> {
        check_range(offset, data.len() as u64, self.size)?;
        let mut map = self.granules();
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let g = abs / MEM_GRANULE;
            let within = (abs % MEM_GRANULE) as usize;
            let n = (MEM_GRANULE as usize - within).min(data.len() - pos);
            let buf = map
                .entry(g)
                .or_insert_with(|| vec![0u8; MEM_GRANULE as usize].into_boxed_slice());
            buf[within..within + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }
    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        check_range(offset, len, self.size)?;
        let mut map = self.granules();
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let g = abs / MEM_GRANULE;
            let within = abs % MEM_GRANULE;
            let n = (MEM_GRANULE - within).min(len - pos);
            if n == MEM_GRANULE {
                map.remove(&g);
            } else if let Some(buf) = map.get_mut(&g) {
                buf[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
        Ok(())
    }
    fn serial(&self) -> String {
        self.serial.clone()
    }
    fn unmap_granularity(&self) -> u64 {
        MEM_GRANULE
    }
    async fn mapping(&self, offset: u64) -> Result<Extent, BlockError> {
        check_range(offset, 1, self.size)?;
        let map = self.granules();
        let first = offset / MEM_GRANULE;
        let mapped = map.contains_key(&first);
        let mut g = first + 1;
        while g * MEM_GRANULE < self.size && map.contains_key(&g) == mapped {
            g += 1;
        }
        let end = (g * MEM_GRANULE).min(self.size);
        Ok(Extent {
            len: end - offset,
            mapped,
        })
    }
}

/// A device backed by a regular file of fixed size. Unmapped ranges are overwritten with zeros
/// (so they read back as zeros) rather than punched, which keeps this crate free of `unsafe`.
pub struct FileDevice {
    file: Arc<File>,
    size: u64,
    block_size: u32,
    serial: String,
}

impl FileDevice {
    /// Opens (creating if needed) `path` and sets its length to `size` bytes (whole blocks).
    pub fn open(
        path: &Path,
        size: u64,
        block_size: u32,
        serial: impl Into<String>,
    ) -> Result<Self, BlockError> {
        let bs = u64::from(block_size.max(1));
        let size = size / bs * bs;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() != size {
            file.set_len(size)?;
        }
        Ok(Self {
            file: Arc::new(file),
            size,
            block_size,
            serial: serial.into(),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, BlockError>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(r) => r.map_err(io_to_block),
            Err(_) => Err(BlockError::Unavailable),
        }
    }
}

fn io_to_block(e: std::io::Error) -> BlockError {
    // ENOSPC and EDQUOT are "no space" to an initiator, whatever the platform's ErrorKind says.
    match e.raw_os_error() {
        Some(28) | Some(122) => BlockError::NoSpace,
        _ => BlockError::Io(e),
    }
}

/// Chunk of zeros written per call when a [`FileDevice`] range is unmapped.
const ZERO_CHUNK: usize = 1024 * 1024;

#[async_trait]
impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        check_range(offset, len as u64, self.size)?;
        self.blocking(move |f| {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        check_range(offset, data.len() as u64, self.size)?;
        self.blocking(move |f| {
            f.write_all_at(&data, offset)?;
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.blocking(|f| f.sync_data()).await
    }
    fn volatile_write_cache(&self) -> bool {
        true // the page cache, until sync_data
    }
    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        check_range(offset, len, self.size)?;
        self.blocking(move |f| {
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut pos = 0u64;
            while pos < len {
                let n = (len - pos).min(ZERO_CHUNK as u64) as usize;
                f.write_all_at(&zeros[..n], offset + pos)?;
                pos += n as u64;
            }
            Ok(())
        })
        .await
    }
    fn serial(&self) -> String {
        self.serial.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One behavioural suite run against every implementation.
    async fn exercise(dev: &dyn BlockDevice) {
        let bs = dev.block_size() as usize;
        assert_eq!(dev.read(0, bs).await.unwrap(), Bytes::from(vec![0u8; bs]));
        let data = Bytes::from((0..3 * bs).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let off = MEM_GRANULE - bs as u64; // straddles a MemDevice granule boundary
        dev.write(off, data.clone(), false).await.unwrap();
        assert_eq!(dev.read(off, data.len()).await.unwrap(), data);
        dev.write(off, data.clone(), true).await.unwrap();
        dev.flush().await.unwrap();
        dev.unmap(off + bs as u64, bs as u64).await.unwrap();
        let back = dev.read(off, data.len()).await.unwrap();
        assert_eq!(&back[..bs], &data[..bs]);
        assert!(back[bs..2 * bs].iter().all(|&b| b == 0));
        assert_eq!(&back[2 * bs..], &data[2 * bs..]);
        let size = dev.size();
        assert!(matches!(
            dev.read(size - bs as u64, 2 * bs).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write(u64::MAX - 1, Bytes::from_static(b"xx"), false)
                .await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(dev.unmap(size, 1).await.is_err());
    }

    #[tokio::test]
    async fn mem_device_behaves() {
        let dev = MemDevice::new(4 * MEM_GRANULE, 512, "m1");
        exercise(&dev).await;
        // A wholly unmapped granule is deallocated and reported as such.
        dev.unmap(0, 4 * MEM_GRANULE).await.unwrap();
        let e = dev.mapping(0).await.unwrap();
        assert_eq!(
            e,
            Extent {
                len: 4 * MEM_GRANULE,
                mapped: false
            }
        );
        dev.write(MEM_GRANULE, Bytes::from(vec![1u8; 512]), false)
            .await
            .unwrap();
        assert_eq!(dev.mapping(0).await.unwrap().len, MEM_GRANULE);
        assert!(dev.mapping(MEM_GRANULE).await.unwrap().mapped);
    }

    #[tokio::test]
    async fn file_device_behaves() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::open(&dir.path().join("lun"), 4 * MEM_GRANULE, 4096, "f1").unwrap();
        assert_eq!(dev.size(), 4 * MEM_GRANULE);
        exercise(&dev).await;
    }
}
