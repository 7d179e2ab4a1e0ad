//! The dual-journal, dual-backup-disk mechanism of the NVDisk paper (figure 4b).
//!
//! Files in the backup directory:
//!
//! ```text
//! backup-a.img, backup-b.img    disks A and B: raw images of the device, `size` bytes each
//! journal-a.log, journal-b.log  A(L) and B(L): the delta of the last transaction that targeted
//!                               that disk (codec frames, magic b"NVJ1", kinds below)
//! status                        the status mark (layout below), replaced tmp -> fsync -> rename
//! lock                          flock'ed while a device has the directory open
//! ```
//!
//! Disk transaction k targets disk X = A for odd k and B for even k (the roles switch every
//! transaction); Y is the other disk. At its start Y holds the image at T(k-1) and Y(L) the delta
//! Δ(k-1) that brought it there, while X lags one delta behind. Then:
//!
//! 1. Y(L) → X: apply Δ(k-1) to X; now X and Y both hold T(k-1). Mark (k, 1).
//! 2. C → X(L): the committer writes Δ(k), the snapshot's dirty pages, to X(L). Mark (k, 2).
//! 3. X(L) → X: apply Δ(k) to X, which now holds T(k). Mark (k, 3).
//!
//! Each step ends with fdatasync of what it wrote, then the mark. Recovery reads the last mark:
//! (k, 3) — X is whole at T(k); (k, 2) — X(L) is whole, redo step 3; (k, 1) — X(L) may be torn,
//! ignore it: Y (and X) are whole at T(k-1), and transaction k runs again. A crash before (k, 1)
//! leaves mark (k-1, 3): Y is whole and step 1 runs again. Every step is a redo of page writes,
//! so repeating it is harmless.
//!
//! Status block, version 1 (64 bytes, integers big-endian):
//!
//! ```text
//!  0 magic b"NVSTATUS"   8 version u32 = 1   12 step u8 (1..=3)   13 pad [u8; 3]
//! 16 instance u64        24 txn u64          32 seq_prev u64 (write seq at T(k-1))
//! 40 seq_cur u64 (write seq at T(k))          48 size u64         56 page_size u32
//! 60 crc32 of bytes 0..60
//! ```
//!
//! Journal records (payloads of NVJ1 frames):
//!
//! ```text
//! kind 1 BEGIN   version u32 = 1 | page_size u32 | instance u64 | txn u64 | seq_prev u64
//!                | seq_cur u64 | pages u64
//! kind 2 PAGE    page index u64 | page bytes
//! kind 3 COMMIT  txn u64 | pages u64 | seq_cur u64
//! ```
//!
//! A journal is whole when BEGIN, `pages` PAGE records and a matching COMMIT all pass their crc;
//! anything else is a torn journal.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec::{self, be_u32, be_u64};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::mmap;

const DISKS: [&str; 2] = ["backup-a.img", "backup-b.img"];
const JOURNALS: [&str; 2] = ["journal-a.log", "journal-b.log"];
const STATUS: &str = "status";
const STATUS_TMP: &str = "status.tmp";
const LOCK: &str = "lock";
const STATUS_MAGIC: &[u8; 8] = b"NVSTATUS";
const VERSION: u32 = 1;
const STATUS_LEN: usize = 64;

const KIND_BEGIN: u8 = 1;
const KIND_PAGE: u8 = 2;
const KIND_COMMIT: u8 = 3;
const BEGIN_LEN: usize = 48;

/// The status mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    pub step: u8,
    pub instance: u64,
    pub txn: u64,
    pub seq_prev: u64,
    pub seq_cur: u64,
    pub size: u64,
    pub page_size: u32,
}

impl Status {
    fn encode(&self) -> [u8; STATUS_LEN] {
        let mut b = [0u8; STATUS_LEN];
        b[0..8].copy_from_slice(STATUS_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_be_bytes());
        b[12] = self.step;
        b[16..24].copy_from_slice(&self.instance.to_be_bytes());
        b[24..32].copy_from_slice(&self.txn.to_be_bytes());
        b[32..40].copy_from_slice(&self.seq_prev.to_be_bytes());
        b[40..48].copy_from_slice(&self.seq_cur.to_be_bytes());
        b[48..56].copy_from_slice(&self.size.to_be_bytes());
        b[56..60].copy_from_slice(&self.page_size.to_be_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Status> {
        if b.len() != STATUS_LEN
            || &b[0..8] != STATUS_MAGIC
            || be_u32(&b[8..12]) != VERSION
            || crc32fast::hash(&b[0..60]) != be_u32(&b[60..64])
            || !(1..=3).contains(&b[12])
        {
            return None;
        }
        Some(Status {
            step: b[12],
            instance: be_u64(&b[16..24]),
            txn: be_u64(&b[24..32]),
            seq_prev: be_u64(&b[32..40]),
            seq_cur: be_u64(&b[40..48]),
            size: be_u64(&b[48..56]),
            page_size: be_u32(&b[56..60]),
        })
    }
}

/// Disk index targeted by transaction `txn`: A (0) for odd, B (1) for even.
pub(crate) fn target(txn: u64) -> usize {
    if txn % 2 == 1 {
        0
    } else {
        1
    }
}

/// Which backup holds the newest whole image after recovery, and the write sequence it covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovered {
    pub disk: usize,
    pub seq: u64,
}

/// What a transaction wrote.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxnStats {
    pub pages: u64,
    pub redo_pages: u64,
}

pub(crate) struct Backups {
    dir: PathBuf,
    disks: [File; 2],
    journals: [File; 2],
    status: Status,
    _lock: File,
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

fn random_instance() -> u64 {
    // RandomState is seeded from the OS per process; mixing in the time and pid keeps two
    // directories formatted by one process apart too.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

impl Backups {
    /// Opens (or formats) the backup directory and finishes whatever transaction a crash
    /// interrupted, as far as the marks allow.
    pub(crate) fn open(dir: &Path, size: u64, page_size: u32) -> Result<(Backups, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create backup dir", dir, e))?;
        let lock = open_rw(&dir.join(LOCK))?;
        if !mmap::try_lock(&lock).map_err(|e| Error::io("lock", dir.join(LOCK), e))? {
            return Err(Error::Locked { path: dir.into() });
        }
        let disks = [open_rw(&dir.join(DISKS[0]))?, open_rw(&dir.join(DISKS[1]))?];
        let journals = [
            open_rw(&dir.join(JOURNALS[0]))?,
            open_rw(&dir.join(JOURNALS[1]))?,
        ];
        let status_path = dir.join(STATUS);
        let status = match fs::read(&status_path) {
            Ok(bytes) => Status::decode(&bytes).ok_or_else(|| Error::Corrupt {
                what: "status mark",
                path: status_path.clone(),
                offset: 0,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Status {
                step: 3,
                instance: 0,
                txn: 0,
                seq_prev: 0,
                seq_cur: 0,
                size,
                page_size,
            },
            Err(e) => return Err(Error::io("read", status_path, e)),
        };
        let mut b = Backups {
            dir: dir.into(),
            disks,
            journals,
            status,
            _lock: lock,
        };
        if b.status.instance == 0 {
            b.format(size, page_size)?;
        }
        for (what, found, expected) in [
            ("backup size", b.status.size, size),
            (
                "backup page size",
                u64::from(b.status.page_size),
                u64::from(page_size),
            ),
        ] {
            if found != expected {
                return Err(Error::Mismatch {
                    what,
                    found,
                    expected,
                });
            }
        }
        for (i, name) in DISKS.iter().enumerate() {
            let len = b.disks[i]
                .metadata()
                .map_err(|e| Error::io("stat", dir.join(name), e))?
                .len();
            if len != size {
                return Err(Error::Mismatch {
                    what: "backup image length",
                    found: len,
                    expected: size,
                });
            }
        }
        let rec = b.recover()?;
        Ok((b, rec))
    }

    /// A fresh directory: zero images, an empty but whole B(L) for transaction 0, then the mark.
    /// Until the mark exists a crash here just formats again.
    fn format(&mut self, size: u64, page_size: u32) -> Result<()> {
        let instance = random_instance();
        for (i, disk) in self.disks.iter().enumerate() {
            disk.set_len(0)
                .and_then(|()| disk.set_len(size))
                .and_then(|()| disk.sync_all())
                .map_err(|e| Error::io("format", self.dir.join(DISKS[i]), e))?;
        }
        self.journals[0]
            .set_len(0)
            .and_then(|()| self.journals[0].sync_all())
            .map_err(|e| Error::io("format", self.dir.join(JOURNALS[0]), e))?;
        let b_journal = JournalBegin {
            page_size,
            instance,
            txn: 0,
            seq_prev: 0,
            seq_cur: 0,
            pages: 0,
        };
        self.write_journal(1, &b_journal, &[], &[])?;
        self.journals[1]
            .sync_all()
            .map_err(|e| Error::io("fsync", self.dir.join(JOURNALS[1]), e))?;
        sync_dir(&self.dir)?;
        self.mark(Status {
            step: 3,
            instance,
            txn: 0,
            seq_prev: 0,
            seq_cur: 0,
            size,
            page_size,
        })?;
        tracing::info!(dir = %self.dir.display(), instance, "formatted nvdisk backups");
        Ok(())
    }

    fn recover(&mut self) -> Result<Recovered> {
        let st = self.status;
        let x = target(st.txn);
        match st.step {
            3 => Ok(Recovered {
                disk: x,
                seq: st.seq_cur,
            }),
            2 => {
                tracing::warn!(
                    txn = st.txn,
                    "redoing step 3 of an interrupted disk transaction"
                );
                self.apply_journal(x, x, st.txn, None)?;
                self.sync_disk(x)?;
                self.mark(Status { step: 3, ..st })?;
                Ok(Recovered {
                    disk: x,
                    seq: st.seq_cur,
                })
            }
            _ => {
                tracing::warn!(
                    txn = st.txn,
                    "disk transaction interrupted in step 2; image from the other disk"
                );
                Ok(Recovered {
                    disk: 1 - x,
                    seq: st.seq_prev,
                })
            }
        }
    }

    pub(crate) fn instance(&self) -> u64 {
        self.status.instance
    }

    /// Reads backup `disk` into `out` (the pool's pages).
    pub(crate) fn load_image(&self, disk: usize, out: &mut [u8]) -> Result<()> {
        const CHUNK: usize = 8 << 20;
        for (i, chunk) in out.chunks_mut(CHUNK).enumerate() {
            self.disks[disk]
                .read_exact_at(chunk, (i * CHUNK) as u64)
                .map_err(|e| Error::io("read backup image", self.dir.join(DISKS[disk]), e))?;
        }
        Ok(())
    }

    /// One disk transaction: writes `list` (ascending page indices) of `pages` — the pool's
    /// frozen image, whose writes end at sequence `seq_cur` — through the three steps.
    pub(crate) fn transaction(
        &mut self,
        pages: &[u8],
        list: &[u64],
        seq_cur: u64,
    ) -> Result<TxnStats> {
        let st = self.status;
        // After a crash in step 2, transaction `txn` runs again with new contents.
        let (k, seq_prev) = if st.step == 3 {
            (st.txn + 1, st.seq_cur)
        } else {
            (st.txn, st.seq_prev)
        };
        let x = target(k);
        let y = 1 - x;
        let page_size = st.page_size as usize;
        let next = |step| Status {
            step,
            txn: k,
            seq_prev,
            seq_cur,
            ..st
        };

        // Step 1: B(L) -> A.
        let redo_pages = self.apply_journal(y, x, k - 1, Some("step1.mid"))?;
        self.sync_disk(x)?;
        failpoint::hit("step1.done");
        self.mark(next(1))?;

        // Step 2: C -> A(L).
        let begin = JournalBegin {
            page_size: st.page_size,
            instance: st.instance,
            txn: k,
            seq_prev,
            seq_cur,
            pages: list.len() as u64,
        };
        self.write_journal(x, &begin, pages, list)?;
        self.journals[x]
            .sync_data()
            .map_err(|e| Error::io("fdatasync", self.dir.join(JOURNALS[x]), e))?;
        failpoint::hit("step2.done");
        self.mark(next(2))?;

        // Step 3: A(L) -> A. The journal holds exactly these bytes, so write them from memory
        // instead of reading the journal back.
        self.write_pages(x, pages, list, page_size)?;
        self.sync_disk(x)?;
        failpoint::hit("step3.done");
        self.mark(next(3))?;
        Ok(TxnStats {
            pages: list.len() as u64,
            redo_pages,
        })
    }

    fn sync_disk(&self, disk: usize) -> Result<()> {
        self.disks[disk]
            .sync_data()
            .map_err(|e| Error::io("fdatasync", self.dir.join(DISKS[disk]), e))
    }

    /// Replaces the status mark: tmp -> fsync -> rename -> fsync dir.
    fn mark(&mut self, status: Status) -> Result<()> {
        let tmp = self.dir.join(STATUS_TMP);
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        std::io::Write::write_all(&mut f, &status.encode())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))?;
        failpoint::hit("status.tmp");
        fs::rename(&tmp, self.dir.join(STATUS))
            .map_err(|e| Error::io("rename", self.dir.join(STATUS), e))?;
        sync_dir(&self.dir)?;
        self.status = status;
        Ok(())
    }

    /// Writes journal `j` for a transaction: BEGIN, a PAGE per listed page, COMMIT.
    fn write_journal(
        &self,
        j: usize,
        begin: &JournalBegin,
        pages: &[u8],
        list: &[u64],
    ) -> Result<()> {
        const FLUSH_AT: usize = 1 << 20;
        let path = self.dir.join(JOURNALS[j]);
        let file = &self.journals[j];
        let page_size = begin.page_size as usize;
        let total = codec::frame_len(BEGIN_LEN)
            + list.len() * codec::frame_len(8 + page_size)
            + codec::frame_len(24);
        // A crash test tears the journal inside a PAGE record.
        let limit = if failpoint::triggers("step2.mid") {
            total / 2 + 13
        } else {
            usize::MAX
        };
        let mut buf = Vec::with_capacity(FLUSH_AT + page_size + 64);
        let mut written = 0usize;
        let flush = |buf: &mut Vec<u8>, written: &mut usize| -> Result<()> {
            let n = buf.len().min(limit.saturating_sub(*written));
            file.write_all_at(&buf[..n], *written as u64)
                .map_err(|e| Error::io("write journal", &path, e))?;
            *written += buf.len();
            buf.clear();
            if *written > limit {
                failpoint::crash("step2.mid");
            }
            Ok(())
        };
        codec::push_frame(&mut buf, codec::JOURNAL, KIND_BEGIN, &[&begin.encode()]);
        for &p in list {
            let at = p as usize * page_size;
            codec::push_frame(
                &mut buf,
                codec::JOURNAL,
                KIND_PAGE,
                &[&p.to_be_bytes(), &pages[at..at + page_size]],
            );
            if buf.len() >= FLUSH_AT {
                flush(&mut buf, &mut written)?;
            }
        }
        let commit = [
            begin.txn.to_be_bytes(),
            begin.pages.to_be_bytes(),
            begin.seq_cur.to_be_bytes(),
        ]
        .concat();
        codec::push_frame(&mut buf, codec::JOURNAL, KIND_COMMIT, &[&commit]);
        flush(&mut buf, &mut written)
    }

    /// Applies journal `j`, which must be the whole journal of transaction `txn`, to disk `d`;
    /// returns the number of pages written.
    fn apply_journal(
        &self,
        j: usize,
        d: usize,
        txn: u64,
        tear: Option<&'static str>,
    ) -> Result<u64> {
        let path = self.dir.join(JOURNALS[j]);
        let size = self.status.size;
        let page_size = self.status.page_size as usize;
        let corrupt = |offset: u64| Error::Corrupt {
            what: "committer journal",
            path: path.clone(),
            offset,
        };
        let mut r = BufReader::with_capacity(
            1 << 20,
            ReadAt {
                file: &self.journals[j],
                pos: 0,
            },
        );
        let mut payload = Vec::with_capacity(page_size + 8);
        let next = |r: &mut BufReader<ReadAt>, payload: &mut Vec<u8>| {
            codec::read_frame(r, codec::JOURNAL, page_size + 64, payload)
                .map_err(|e| Error::io("read journal", &path, e))
        };
        let at = |r: &BufReader<ReadAt>| r.get_ref().pos - r.buffer().len() as u64;
        if next(&mut r, &mut payload)? != Some(KIND_BEGIN) {
            return Err(corrupt(0));
        }
        let begin = JournalBegin::decode(&payload).ok_or_else(|| corrupt(0))?;
        if begin.txn != txn
            || begin.seq_prev > begin.seq_cur
            || begin.instance != self.status.instance
            || begin.page_size as usize != page_size
        {
            return Err(corrupt(0));
        }
        let half = begin.pages / 2;
        for i in 0..begin.pages {
            let offset = at(&r);
            if next(&mut r, &mut payload)? != Some(KIND_PAGE) || payload.len() != 8 + page_size {
                return Err(corrupt(offset));
            }
            let index = be_u64(&payload[..8]);
            if (index + 1) * page_size as u64 > size {
                return Err(corrupt(offset));
            }
            if i == half && tear.is_some_and(failpoint::triggers) {
                failpoint::crash(tear.unwrap_or_default());
            }
            self.disks[d]
                .write_all_at(&payload[8..], index * page_size as u64)
                .map_err(|e| Error::io("write backup image", self.dir.join(DISKS[d]), e))?;
        }
        let offset = at(&r);
        if next(&mut r, &mut payload)? != Some(KIND_COMMIT)
            || payload.len() != 24
            || be_u64(&payload[0..8]) != txn
            || be_u64(&payload[8..16]) != begin.pages
        {
            return Err(corrupt(offset));
        }
        Ok(begin.pages)
    }

    /// Writes the listed pages from memory to disk `d`, merging runs of adjacent pages.
    fn write_pages(&self, d: usize, pages: &[u8], list: &[u64], page_size: usize) -> Result<()> {
        let path = || self.dir.join(DISKS[d]);
        let half = list.len() / 2;
        let mut i = 0;
        while i < list.len() {
            let mut j = i + 1;
            while j < list.len() && list[j] == list[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            if i <= half && half < j && failpoint::triggers("step3.mid") {
                let at = list[i] as usize * page_size;
                self.disks[d]
                    .write_all_at(&pages[at..at + page_size / 2], at as u64)
                    .map_err(|e| Error::io("write backup image", path(), e))?;
                failpoint::crash("step3.mid");
            }
            let from = list[i] as usize * page_size;
            let to = (list[j - 1] as usize + 1) * page_size;
            self.disks[d]
                .write_all_at(&pages[from..to], from as u64)
                .map_err(|e| Error::io("write backup image", path(), e))?;
            i = j;
        }
        Ok(())
    }
}

struct JournalBegin {
    page_size: u32,
    instance: u64,
    txn: u64,
    seq_prev: u64,
    seq_cur: u64,
    pages: u64,
}

impl JournalBegin {
    fn encode(&self) -> [u8; BEGIN_LEN] {
        let mut b = [0u8; BEGIN_LEN];
        b[0..4].copy_from_slice(&VERSION.to_be_bytes());
        b[4..8].copy_from_slice(&self.page_size.to_be_bytes());
        b[8..16].copy_from_slice(&self.instance.to_be_bytes());
        b[16..24].copy_from_slice(&self.txn.to_be_bytes());
        b[24..32].copy_from_slice(&self.seq_prev.to_be_bytes());
        b[32..40].copy_from_slice(&self.seq_cur.to_be_bytes());
        b[40..48].copy_from_slice(&self.pages.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<JournalBegin> {
        if b.len() != BEGIN_LEN || be_u32(&b[0..4]) != VERSION {
            return None;
        }
        Some(JournalBegin {
            page_size: be_u32(&b[4..8]),
            instance: be_u64(&b[8..16]),
            txn: be_u64(&b[16..24]),
            seq_prev: be_u64(&b[24..32]),
            seq_cur: be_u64(&b[32..40]),
            pages: be_u64(&b[40..48]),
        })
    }
}

/// `Read` over a shared `&File` by position, so readers never move a shared cursor.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;
    const SIZE: u64 = 16 * PS as u64;

    fn image(fill: u8) -> Vec<u8> {
        vec![fill; SIZE as usize]
    }

    fn disk_bytes(b: &Backups, d: usize) -> Vec<u8> {
        let mut out = image(0);
        b.load_image(d, &mut out).unwrap();
        out
    }

    #[test]
    fn transactions_alternate_disks_and_each_lags_one_delta() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, rec) = Backups::open(dir.path(), SIZE, PS as u32).unwrap();
        assert_eq!((rec.disk, rec.seq), (1, 0));
        let mut pages = image(0);
        for k in 1..=4u64 {
            let page = k as usize;
            pages[page * PS..(page + 1) * PS].fill(k as u8);
            b.transaction(&pages, &[k], k * 10).unwrap();
            assert_eq!(b.status.txn, k);
            assert_eq!(b.status.step, 3);
            // The target holds T(k); the other disk T(k-1), without page k.
            assert_eq!(disk_bytes(&b, target(k)), pages);
            let other = disk_bytes(&b, 1 - target(k));
            assert_eq!(other[page * PS], 0);
            assert_eq!(other[(page - 1) * PS], if k > 1 { k as u8 - 1 } else { 0 });
        }
        drop(b);
        let (_, rec) = Backups::open(dir.path(), SIZE, PS as u32).unwrap();
        assert_eq!((rec.disk, rec.seq), (target(4), 40));
    }

    #[test]
    fn status_mark_rejects_any_flipped_bit() {
        let st = Status {
            step: 2,
            instance: 7,
            txn: 9,
            seq_prev: 1,
            seq_cur: 2,
            size: SIZE,
            page_size: PS as u32,
        };
        let bytes = st.encode();
        assert_eq!(Status::decode(&bytes), Some(st));
        for i in 0..STATUS_LEN * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(Status::decode(&b), None, "bit {i}");
        }
    }

    #[test]
    fn a_torn_or_corrupt_journal_is_refused_when_it_must_be_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = Backups::open(dir.path(), SIZE, PS as u32).unwrap();
        let pages = image(0x77);
        b.transaction(&pages, &[2, 3, 5], 3).unwrap();
        let journal = dir.path().join(JOURNALS[target(1)]);
        let whole = fs::read(&journal).unwrap();
        assert_eq!(
            b.apply_journal(target(1), 1 - target(1), 1, None).unwrap(),
            3
        );

        // Torn inside the last PAGE record: no COMMIT.
        let cut = whole.len() - codec::frame_len(24) - 100;
        fs::write(&journal, &whole[..cut]).unwrap();
        assert!(matches!(
            b.apply_journal(target(1), 1 - target(1), 1, None),
            Err(Error::Corrupt { .. })
        ));
        // One flipped payload bit.
        let mut bad = whole.clone();
        bad[codec::frame_len(BEGIN_LEN) + codec::HEADER + 8 + 1000] ^= 4;
        fs::write(&journal, &bad).unwrap();
        assert!(matches!(
            b.apply_journal(target(1), 1 - target(1), 1, None),
            Err(Error::Corrupt { .. })
        ));
        // A whole journal of another transaction.
        fs::write(&journal, &whole).unwrap();
        assert!(matches!(
            b.apply_journal(target(1), 1 - target(1), 2, None),
            Err(Error::Corrupt { .. })
        ));
    }
}
