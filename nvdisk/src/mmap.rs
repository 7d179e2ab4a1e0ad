//! The only code that needs `unsafe`: carving one memory mapping into disjoint regions, and an
//! advisory `flock`.
//!
//! A [`Mapping`] (anonymous memory, or a file on /dev/shm or pmem) is split once into [`Region`]s
//! whose byte ranges never overlap. Each region is then the sole handle to its bytes, so it can hand
//! out `&[u8]` from `&self` and `&mut [u8]` from `&mut self` with ordinary borrow rules; the
//! callers put regions behind a `Mutex` or `RwLock`. Regions that several threads update at once
//! (the header and the dirty bitmaps) are viewed as [`Words`]: `AtomicU64`s only, never bytes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

/// A whole mapping, before it is split.
pub(crate) struct Mapping {
    raw: Arc<MmapRaw>,
}

impl Mapping {
    /// Anonymous, zeroed memory of `len` bytes.
    pub(crate) fn anon(len: usize) -> io::Result<Mapping> {
        let map = MmapOptions::new().len(len).map_anon()?;
        Ok(Mapping {
            raw: Arc::new(MmapRaw::from(map)),
        })
    }

    /// A shared mapping of all of `file` (its length must already be set).
    pub(crate) fn file(file: &File) -> io::Result<Mapping> {
        Ok(Mapping {
            raw: Arc::new(MmapRaw::map_raw(file)?),
        })
    }

    /// Cuts the mapping into consecutive regions of the given lengths.
    ///
    /// # Panics
    /// If the lengths add up to more than the mapping: the caller computed the mapping's size
    /// from the same lengths, so that would be a bug here, not bad input.
    pub(crate) fn split(self, lens: &[usize]) -> Vec<Region> {
        let total: usize = lens.iter().sum();
        assert!(total <= self.raw.len(), "regions exceed the mapping");
        let mut off = 0;
        lens.iter()
            .map(|&len| {
                let region = Region {
                    raw: Arc::clone(&self.raw),
                    off,
                    len,
                };
                off += len;
                region
            })
            .collect()
    }
}

/// A byte range of a mapping that no other `Region` covers.
pub(crate) struct Region {
    raw: Arc<MmapRaw>,
    off: usize,
    len: usize,
}

impl Region {
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `off..off+len` lies inside the mapping (checked in `split`), the mapping lives as
        // long as `raw`, and no other Region covers these bytes, so the only aliasing is through
        // this Region's own borrows, which the borrow checker orders.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(self.off), self.len) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr().add(self.off), self.len) }
    }

    /// `msync`s `len` bytes at `off` within the region (a no-op cost on anonymous memory).
    pub(crate) fn sync(&self, off: usize, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.raw.flush_range(self.off + off, len)
    }

    /// Views the region as atomic words.
    ///
    /// # Panics
    /// If the region is not 8-byte aligned in offset and length (a layout bug).
    pub(crate) fn into_words(self) -> Words {
        assert!(
            self.off.is_multiple_of(8) && self.len.is_multiple_of(8),
            "unaligned word region"
        );
        Words { region: self }
    }
}

/// A region accessed only as `AtomicU64`s, so that threads may update it through `&self`.
pub(crate) struct Words {
    region: Region,
}

impl Words {
    pub(crate) fn words(&self) -> &[AtomicU64] {
        let ptr = self.region.raw.as_ptr();
        // SAFETY: the range is inside the mapping, 8-byte aligned (mappings are page aligned and
        // `into_words` checked offset and length), AtomicU64 has the size and alignment of u64, and
        // these bytes are only ever accessed through atomics.
        unsafe {
            std::slice::from_raw_parts(
                ptr.add(self.region.off).cast::<AtomicU64>(),
                self.region.len / 8,
            )
        }
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.region.sync(0, self.region.len)
    }

    /// `msync`s the words `first..=last`.
    pub(crate) fn sync_words(&self, first: usize, last: usize) -> io::Result<()> {
        self.region.sync(first * 8, (last - first + 1) * 8)
    }
}

/// Takes an exclusive advisory lock on `file` without waiting; `Ok(false)` if someone holds it.
/// The lock lasts as long as the open file.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}
