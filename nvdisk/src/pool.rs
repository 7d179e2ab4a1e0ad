//! The memory page pool: one mapping (anonymous, or a file on /dev/shm or pmem) laid out as
//!
//! ```text
//! header    4 KiB     words below
//! dirty     bitmap    one bit per page written since the last snapshot
//! flushing  bitmap    pages of the disk transaction in progress (cleared when it completes)
//! log       snapshot_buffer bytes: intent frames (codec, magic b"NVP1") of writes not yet
//!           applied to the pages: the one write in progress, or every write that arrived
//!           during a disk transaction (the paper's snapshot buffer)
//! pages     size bytes: the device image
//! ```
//!
//! Header words (u64, big-endian values, accessed atomically), format version 1:
//!
//! ```text
//! 0 magic b"CNVPOOL1"   1 version << 32 | page_size   2 size   3 log bytes   4 instance
//! 5 crc32 of words 0..5 (0 while the pool is being formatted)   8 applied_seq
//! ```
//!
//! `instance` ties a file pool to its backup directory. `applied_seq` is the last write whose
//! bytes are in `pages`; a log frame with a higher sequence must be replayed after a crash. All
//! bitmap and header updates are atomic stores, so a process killed at any instruction leaves
//! every word whole.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{self, be_u64};
use crate::config::PoolMode;
use crate::error::{Error, Result};
use crate::mmap::{self, Mapping, Region, Words};

const MAGIC: u64 = u64::from_be_bytes(*b"CNVPOOL1");
const VERSION: u64 = 1;
const HEADER_BYTES: usize = 4096;
const W_MAGIC: usize = 0;
const W_GEOMETRY: usize = 1;
const W_SIZE: usize = 2;
const W_LOG: usize = 3;
const W_INSTANCE: usize = 4;
const W_CRC: usize = 5;
const W_APPLIED: usize = 8;

/// Sizes of the pool's parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub size: u64,
    pub page_size: usize,
    pub bitmap_bytes: usize,
    pub log_bytes: usize,
}

impl Layout {
    pub(crate) fn new(size: u64, page_size: u32, log_bytes: u64) -> Layout {
        let pages = size / u64::from(page_size);
        let words = pages.div_ceil(64) as usize;
        Layout {
            size,
            page_size: page_size as usize,
            bitmap_bytes: (words * 8).div_ceil(HEADER_BYTES) * HEADER_BYTES,
            log_bytes: (log_bytes as usize).div_ceil(HEADER_BYTES) * HEADER_BYTES,
        }
    }

    fn total(&self) -> usize {
        HEADER_BYTES + 2 * self.bitmap_bytes + self.log_bytes + self.size as usize
    }
}

/// How the pool came up.
pub(crate) enum Origin {
    /// Newly formatted: the pages are zero and must be loaded from a backup, then `seal`ed.
    Fresh,
    /// A file pool that outlived its process: pages hold every write up to `applied_seq`, and the
    /// log may hold later ones.
    Survived { applied_seq: u64 },
}

/// The pool, split into its parts.
pub(crate) struct Pool {
    pub header: Header,
    pub dirty: Bitmap,
    pub flushing: Bitmap,
    pub log: Region,
    pub pages: Region,
    /// A file pool's file, open for as long as the device so that its advisory lock holds.
    pub file: Option<File>,
}

impl Pool {
    pub(crate) fn open(mode: &PoolMode, layout: Layout, instance: u64) -> Result<(Pool, Origin)> {
        let (mapping, file, origin) = match mode {
            PoolMode::Anon => {
                let map = Mapping::anon(layout.total())
                    .map_err(|e| Error::io("mmap anonymous pool", "", e))?;
                (map, None, Origin::Fresh)
            }
            PoolMode::File(path) => {
                let (file, origin) = open_file(path, layout, instance)?;
                let map = Mapping::file(&file).map_err(|e| Error::io("mmap", path, e))?;
                (map, Some(file), origin)
            }
        };
        let mut parts = mapping
            .split(&[
                HEADER_BYTES,
                layout.bitmap_bytes,
                layout.bitmap_bytes,
                layout.log_bytes,
                layout.size as usize,
            ])
            .into_iter();
        let mut next = || parts.next().expect("five regions");
        let pool = Pool {
            header: Header(next().into_words()),
            dirty: Bitmap(next().into_words()),
            flushing: Bitmap(next().into_words()),
            log: next(),
            pages: next(),
            file,
        };
        if let Origin::Fresh = origin {
            // Invalid until sealed: a crash while the image loads must not leave a pool that looks
            // whole.
            pool.header.set(W_CRC, 0);
        }
        Ok((pool, origin))
    }
}

/// Opens or creates a file pool; decides whether its contents survived.
fn open_file(path: &Path, layout: Layout, instance: u64) -> Result<(File, Origin)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open pool file", path, e))?;
    if !mmap::try_lock(&file).map_err(|e| Error::io("lock", path, e))? {
        return Err(Error::Locked { path: path.into() });
    }
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let mut head = vec![0u8; HEADER_BYTES];
    if len >= HEADER_BYTES as u64 {
        file.read_exact(&mut head)
            .map_err(|e| Error::io("read pool header", path, e))?;
    }
    if let Some(found) = parse_header(&head) {
        let checks = [
            (
                "pool instance (a pool of another backup dir)",
                found.instance,
                instance,
            ),
            ("pool size", found.size, layout.size),
            ("pool page size", found.page_size, layout.page_size as u64),
            (
                "pool snapshot buffer",
                found.log_bytes,
                layout.log_bytes as u64,
            ),
            ("pool file length", len, layout.total() as u64),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(Error::Mismatch {
                    what,
                    found,
                    expected,
                });
            }
        }
        return Ok((
            file,
            Origin::Survived {
                applied_seq: found.applied_seq,
            },
        ));
    }
    // Not a whole pool: start from zeros.
    file.set_len(0)
        .and_then(|()| file.set_len(layout.total() as u64))
        .map_err(|e| Error::io("size pool file", path, e))?;
    Ok((file, Origin::Fresh))
}

struct HeaderFields {
    page_size: u64,
    size: u64,
    log_bytes: u64,
    instance: u64,
    applied_seq: u64,
}

fn header_crc(words: &[u64; 5]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    for w in words {
        h.update(&w.to_be_bytes());
    }
    u64::from(h.finalize())
}

fn parse_header(bytes: &[u8]) -> Option<HeaderFields> {
    let word = |i: usize| be_u64(&bytes[i * 8..]);
    let fields = [
        word(W_MAGIC),
        word(W_GEOMETRY),
        word(W_SIZE),
        word(W_LOG),
        word(W_INSTANCE),
    ];
    if fields[0] != MAGIC || fields[1] >> 32 != VERSION || word(W_CRC) != header_crc(&fields) {
        return None;
    }
    Some(HeaderFields {
        page_size: fields[1] & 0xffff_ffff,
        size: fields[2],
        log_bytes: fields[3],
        instance: fields[4],
        applied_seq: word(W_APPLIED),
    })
}

/// The header words.
pub(crate) struct Header(Words);

impl Header {
    fn set(&self, i: usize, v: u64) {
        self.0.words()[i].store(v.to_be(), Ordering::Release);
    }

    pub(crate) fn set_applied_seq(&self, seq: u64) {
        self.set(W_APPLIED, seq);
    }

    /// Writes the identity words and, last, their crc: from then on the pool counts as whole.
    pub(crate) fn seal(&self, layout: Layout, instance: u64, applied_seq: u64) {
        let fields = [
            MAGIC,
            VERSION << 32 | layout.page_size as u64,
            layout.size,
            layout.log_bytes as u64,
            instance,
        ];
        for (i, v) in fields.iter().enumerate() {
            self.set(i, *v);
        }
        self.set_applied_seq(applied_seq);
        self.set(W_CRC, header_crc(&fields));
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.0.sync()
    }
}

/// One bit per page, in atomic words.
pub(crate) struct Bitmap(Words);

impl Bitmap {
    fn words(&self) -> &[AtomicU64] {
        self.0.words()
    }

    /// Marks pages `first..=last`.
    pub(crate) fn set_range(&self, first: u64, last: u64) {
        for p in first..=last {
            let mask = 1u64 << (p % 64);
            self.words()[(p / 64) as usize].fetch_or(mask.to_be(), Ordering::AcqRel);
        }
    }

    /// Moves every bit into `other` (set there first, then cleared here, so a crash between
    /// leaves a page marked twice rather than not at all).
    pub(crate) fn move_into(&self, other: &Bitmap) {
        for (mine, theirs) in self.words().iter().zip(other.words()) {
            let bits = mine.load(Ordering::Acquire);
            if bits != 0 {
                theirs.fetch_or(bits, Ordering::AcqRel);
                mine.fetch_and(!bits, Ordering::AcqRel);
            }
        }
    }

    /// The marked pages, ascending.
    pub(crate) fn pages(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.words().iter().enumerate() {
            let mut bits = u64::from_be(w.load(Ordering::Acquire));
            while bits != 0 {
                let b = bits.trailing_zeros();
                out.push(i as u64 * 64 + u64::from(b));
                bits &= bits - 1;
            }
        }
        out
    }

    pub(crate) fn clear_all(&self) {
        for w in self.words() {
            w.store(0, Ordering::Release);
        }
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.0.sync()
    }

    /// `msync`s the words holding pages `first..=last`.
    pub(crate) fn sync_range(&self, first: u64, last: u64) -> std::io::Result<()> {
        self.0
            .sync_words((first / 64) as usize, (last / 64) as usize)
    }
}

/// The intents in a snapshot log newer than `applied_seq`, in order: frames are read from the
/// start while they are whole and their sequence numbers consecutive; the first frame that is
/// not ends the log (a torn frame, or a stale one from an earlier fill).
pub(crate) fn log_intents(log: &[u8], applied_seq: u64) -> Vec<(u64, u64, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut prev: Option<u64> = None;
    while let codec::Decoded::Frame {
        kind,
        payload,
        size,
    } = codec::decode(&log[at..], codec::POOL_LOG, log.len())
    {
        let Some(intent) = codec::parse_intent(payload) else {
            break;
        };
        if kind != codec::KIND_INTENT || prev.is_some_and(|p| intent.seq != p + 1) {
            break;
        }
        prev = Some(intent.seq);
        if intent.seq > applied_seq {
            let start = at + codec::HEADER + codec::INTENT_HEADER;
            out.push((intent.seq, intent.offset, start..start + intent.data.len()));
        }
        at += size;
    }
    out
}
