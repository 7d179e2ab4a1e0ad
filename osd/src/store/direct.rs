//! Large writes into data files with `O_DIRECT`, as BlueStore writes large extents.
//!
//! A buffered write into a new data file costs the page cache a never-touched page per 4 KiB, and
//! on this project's VMs that runs at ~100 MB/s while the disk takes `O_DIRECT` at 1.4 GB/s (see
//! docs/ARCHITECTURE.md, OSD). So the 4 KiB-aligned middle of a large write goes through an
//! `O_DIRECT` descriptor from a reused aligned buffer; the unaligned head and tail, and every
//! small write, go through the page cache as before. Linux keeps the two coherent: a direct write
//! first writes back and then drops cached pages of its range. Durability is unchanged: the data
//! is durable at the store's next sync (fsync of the file), as buffered data is.
//!
//! A file system that refuses `O_DIRECT` (`EINVAL`: tmpfs before Linux 6.6, some FUSE and network
//! file systems) turns it off for the store; writes then go through the page cache only.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A write goes direct when its aligned middle is at least this long.
pub(super) const DIRECT_MIN: usize = 128 << 10;
const ALIGN: usize = 4096;
/// Size of one bounce buffer; larger writes go in pieces of this size.
const BUF: usize = 1 << 20;
/// Bounce buffers kept for reuse (a fresh allocation would cost the never-touched pages again).
const KEEP: usize = 8;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Whether the store's file system takes `O_DIRECT`; cleared at the first refusal.
pub(super) struct Direct {
    on: AtomicBool,
    bytes: AtomicU64,
}

impl Direct {
    pub(super) fn new(on: bool) -> Direct {
        Direct {
            on: AtomicBool::new(on),
            bytes: AtomicU64::new(0),
        }
    }

    pub(super) fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Bytes written with `O_DIRECT` so far.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Write `data` at `off` of the data file at `path`, open as `file`.
    pub(super) fn write_at(
        &self,
        file: &File,
        path: &Path,
        data: &[u8],
        off: u64,
    ) -> io::Result<()> {
        let end = off + data.len() as u64;
        let a = off.next_multiple_of(ALIGN as u64);
        let b = end - end % ALIGN as u64;
        if !self.on() || b <= a || ((b - a) as usize) < DIRECT_MIN {
            return file.write_all_at(data, off);
        }
        let direct = match OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.on.store(false, Ordering::Relaxed);
                return file.write_all_at(data, off);
            }
            Err(e) => return Err(e),
        };
        let mut bounce = POOL.lock().expect("bounce pool").pop().unwrap_or_default();
        if bounce.len() < BUF + ALIGN {
            bounce = vec![0u8; BUF + ALIGN];
        }
        let skew = bounce.as_ptr().align_offset(ALIGN);
        let res = (|| {
            let mut at = a;
            while at < b {
                let n = (b - at).min(BUF as u64) as usize;
                let src = &data[(at - off) as usize..(at - off) as usize + n];
                let buf = &mut bounce[skew..skew + n];
                buf.copy_from_slice(src);
                match direct.write_all_at(buf, at) {
                    Ok(()) => {}
                    Err(e)
                        if at == a
                            && e.raw_os_error()
                                == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                    {
                        self.on.store(false, Ordering::Relaxed);
                        return file.write_all_at(&data[(a - off) as usize..(b - off) as usize], a);
                    }
                    Err(e) => return Err(e),
                }
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                at += n as u64;
            }
            Ok(())
        })();
        {
            let mut pool = POOL.lock().expect("bounce pool");
            if pool.len() < KEEP {
                pool.push(bounce);
            }
        }
        res?;
        if a > off {
            file.write_all_at(&data[..(a - off) as usize], off)?;
        }
        if end > b {
            file.write_all_at(&data[(b - off) as usize..], b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// Writes of every alignment, over buffered bytes already there, read back through the
    /// page cache as written.
    #[test]
    fn unaligned_large_writes_read_back_over_buffered_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let d = Direct::new(true);
        let mut model = vec![0u8; 5 << 20];
        let first = pattern(model.len(), 7);
        file.write_all_at(&first, 0).unwrap();
        model.copy_from_slice(&first);
        for (i, (off, len)) in [
            (0usize, 1usize << 20),
            (1, 300 << 10),
            (4096 * 3 + 17, (2 << 20) + 4095),
            (4096 * 40, DIRECT_MIN),
            (100, DIRECT_MIN - 1),
            ((3 << 20) + 5, (1 << 20) + 4096 * 7 + 3),
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(len, i as u8 + 1);
            d.write_at(&file, &path, &data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
            let mut back = vec![0u8; model.len()];
            file.read_exact_at(&mut back, 0).unwrap();
            assert!(
                back == model,
                "write {i} at {off}+{len} reads back differently"
            );
        }
        assert!(d.on() && d.bytes() > 0, "this file system takes O_DIRECT");
        // A write past the end grows the file like a buffered one.
        let tail = pattern(DIRECT_MIN * 2, 99);
        let at = model.len() as u64 + 4096;
        d.write_at(&file, &path, &tail, at).unwrap();
        assert_eq!(file.metadata().unwrap().len(), at + tail.len() as u64);
        let mut back = vec![0u8; tail.len()];
        file.read_exact_at(&mut back, at).unwrap();
        assert!(back == tail);
    }
}
