//! The write-ahead journal: a mutation is durable once its record is, so the store itself is
//! only made durable at checkpoints ([`crate::durable`]).
//!
//! [`Journal`] is the seam for other journal devices (`append` → durable sequence number,
//! `replay`, `trim_through`; the nvdisk one is [`crate::nvjournal::NvJournal`]).
//! [`FileJournal`] is a plain file:
//!
//! ```text
//! header (24 bytes): "CRNJ" | version u32 = 1 | first_seq u64 | reserved u32 | crc32(bytes 0..20) u32
//! record:            len u32 | crc32(payload) u32 | payload (len bytes, len > 0)
//! ```
//! Integers are big-endian. Records carry no sequence number: the first one after the header is
//! `first_seq` and each next one is one more. Appenders write their record under a lock and then
//! share fdatasyncs (group commit): whoever finds no sync running syncs everything written so
//! far while later appenders wait for the next round.
//!
//! On open, a record that is cut short or fails its checksum at the end of the file is a torn
//! tail: it was never acknowledged, and it is cut off. A bad record followed by a good one is
//! corruption ([`Error::JournalCorrupt`]): records after it were acknowledged, so the journal
//! refuses to open rather than silently lose them. Trimming rewrites the file
//! (tmp → fsync → rename → fsync dir).

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

const MAGIC: &[u8; 4] = b"CRNJ";
const VERSION: u32 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: u64 = 24;
/// Bytes before each record's payload.
pub const RECORD_HEADER: u64 = 8;
/// Largest payload accepted (a 64 MiB write plus its envelope).
pub const MAX_RECORD: u32 = 80 << 20;

/// A durable, ordered log of opaque records.
pub trait Journal: Send + Sync + 'static {
    /// Append a record and return its sequence number once it is durable.
    fn append(&self, payload: &[u8]) -> Result<u64>;
    /// Write a record without waiting for it to be durable; [`Journal::wait_durable`] waits.
    /// Records become durable in sequence order, so once one is, every earlier one is too.
    /// (A journal without a cheaper split makes the record durable here.)
    fn submit(&self, payload: &[u8]) -> Result<u64> {
        self.append(payload)
    }
    /// Wait until the record `seq` (from [`Journal::submit`]) is durable.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        let _ = seq;
        Ok(())
    }
    /// Visit every record after the last trim, oldest first.
    fn replay(&self, visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()>;
    /// Drop the records up to and including `seq`.
    fn trim_through(&self, seq: u64) -> Result<()>;
    /// Sequence number of the newest record (0: none yet).
    fn last_seq(&self) -> u64;
    /// Bytes the kept records take.
    fn len_bytes(&self) -> u64;
    /// Bytes the journal can hold at most, if it is bounded (appends beyond fail with
    /// [`Error::JournalFull`] until a trim).
    fn capacity(&self) -> Option<u64> {
        None
    }
}

/// Why the end of a journal was cut off when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornKind {
    /// The last record is shorter than its length says (or its length is impossible).
    Short,
    /// The last record is complete but fails its checksum.
    Checksum,
}

/// A torn tail found and dropped at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub kind: TornKind,
    pub dropped_bytes: u64,
}

struct State {
    file: Arc<File>,
    /// End of the last complete record.
    end: u64,
    first_seq: u64,
    next_seq: u64,
}

struct SyncState {
    synced: u64,
    syncing: bool,
}

/// See the module doc.
pub struct FileJournal {
    path: PathBuf,
    state: Mutex<State>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    /// Sequence number of the last record written (not necessarily synced).
    written: AtomicU64,
    syncs: AtomicU64,
    /// Set when an fdatasync failed: nothing is known about what reached the disk.
    poisoned: AtomicBool,
    torn: Option<TornTail>,
}

fn header(first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_be_bytes());
    h[8..16].copy_from_slice(&first_seq.to_be_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_be_bytes());
    h
}

fn parse_header(h: &[u8]) -> Result<u64> {
    if h.len() < HEADER_LEN as usize
        || &h[..4] != MAGIC
        || u32::from_be_bytes([h[4], h[5], h[6], h[7]]) != VERSION
        || crc32fast::hash(&h[..20]) != u32::from_be_bytes([h[20], h[21], h[22], h[23]])
    {
        return Err(Error::JournalHeader);
    }
    Ok(u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")))
}

/// One record of `buf` at `at`: `Ok(Some(payload range end))`, `Ok(None)` when cut short,
/// `Err(())` when its checksum fails.
fn record_at(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, ()> {
    if buf.len() < at + RECORD_HEADER as usize {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Ok(None);
    }
    let start = at + RECORD_HEADER as usize;
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    if crc32fast::hash(&buf[start..end]) != crc {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Encode one record.
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(payload.len() + RECORD_HEADER as usize);
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

fn fsync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// Write a journal file holding `records` (already encoded) atomically at `path`.
fn write_new(path: &Path, first_seq: u64, records: &[u8]) -> Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
        f.write_all(&header(first_seq)).map_err(Error::io(&tmp))?;
        f.write_all(records).map_err(Error::io(&tmp))?;
        f.sync_all().map_err(Error::io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    fsync_dir(path)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io(path))
}

impl FileJournal {
    /// Open the journal at `path`, creating it if absent, and cut off a torn tail.
    pub fn open(path: &Path) -> Result<FileJournal> {
        let existing = match File::open(path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(Error::io(path))?;
                Some(buf)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(path)(e)),
        };
        let (file, first_seq, end, count, torn) = match existing {
            None => (write_new(path, 1, &[])?, 1, HEADER_LEN, 0, None),
            Some(buf) if buf.is_empty() => (write_new(path, 1, &[])?, 1, HEADER_LEN, 0, None),
            Some(buf) => {
                let first_seq = parse_header(&buf)?;
                let mut at = HEADER_LEN as usize;
                let mut count = 0u64;
                let mut torn = None;
                while at < buf.len() {
                    match record_at(&buf, at) {
                        Ok(Some((_, end))) => {
                            at = end;
                            count += 1;
                        }
                        Ok(None) => {
                            torn = Some(TornKind::Short);
                            break;
                        }
                        Err(()) => {
                            let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4"));
                            let next = at + RECORD_HEADER as usize + len as usize;
                            if matches!(record_at(&buf, next), Ok(Some(_))) {
                                return Err(Error::JournalCorrupt { offset: at as u64 });
                            }
                            torn = Some(TornKind::Checksum);
                            break;
                        }
                    }
                }
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(Error::io(path))?;
                let torn = torn.map(|kind| TornTail {
                    offset: at as u64,
                    kind,
                    dropped_bytes: (buf.len() - at) as u64,
                });
                if let Some(t) = torn {
                    tracing::warn!(path = %path.display(), offset = t.offset, kind = ?t.kind,
                        bytes = t.dropped_bytes, "journal: dropping torn tail");
                    f.set_len(at as u64).map_err(Error::io(path))?;
                    f.sync_all().map_err(Error::io(path))?;
                }
                (f, first_seq, at as u64, count, torn)
            }
        };
        let last = first_seq + count - 1;
        Ok(FileJournal {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file: Arc::new(file),
                end,
                first_seq,
                next_seq: first_seq + count,
            }),
            sync: Mutex::new(SyncState {
                synced: last,
                syncing: false,
            }),
            synced_cv: Condvar::new(),
            written: AtomicU64::new(last),
            syncs: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            torn,
        })
    }

    /// fdatasyncs done by appends so far (fewer than appends when they were grouped).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The torn tail cut off at open, if any.
    pub fn torn_tail(&self) -> Option<TornTail> {
        self.torn
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("journal state lock")
    }

    fn sync_state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.sync.lock().expect("journal sync lock")
    }

    /// Wait until `seq` is durable, syncing if nobody else is.
    fn sync_through(&self, seq: u64) -> Result<()> {
        let mut s = self.sync_state();
        loop {
            if self.poisoned.load(Ordering::Acquire) {
                return Err(Error::JournalPoisoned);
            }
            if s.synced >= seq {
                return Ok(());
            }
            if s.syncing {
                s = self.synced_cv.wait(s).expect("journal sync lock");
                continue;
            }
            s.syncing = true;
            drop(s);
            let target = self.written.load(Ordering::Acquire);
            let file = self.state().file.clone();
            let r = file.sync_data();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            s = self.sync_state();
            s.syncing = false;
            match r {
                Ok(()) => s.synced = s.synced.max(target),
                Err(e) => {
                    tracing::error!(error = %e, "journal fdatasync failed; journal stops");
                    self.poisoned.store(true, Ordering::Release);
                }
            }
            self.synced_cv.notify_all();
        }
    }
}

impl Journal for FileJournal {
    fn append(&self, payload: &[u8]) -> Result<u64> {
        let seq = self.submit(payload)?;
        self.sync_through(seq)?;
        Ok(seq)
    }

    fn wait_durable(&self, seq: u64) -> Result<()> {
        self.sync_through(seq)
    }

    fn submit(&self, payload: &[u8]) -> Result<u64> {
        if payload.is_empty() || payload.len() > MAX_RECORD as usize {
            return Err(Error::invalid("journal record of impossible size"));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::JournalPoisoned);
        }
        let rec = encode_record(payload);
        let seq = {
            let mut st = self.state();
            if let Err(e) = st.file.write_all_at(&rec, st.end) {
                // Leave no partial record behind for the next append to follow.
                let _ = st.file.set_len(st.end);
                return Err(Error::io(&self.path)(e));
            }
            st.end += rec.len() as u64;
            let seq = st.next_seq;
            st.next_seq += 1;
            self.written.store(seq, Ordering::Release);
            seq
        };
        Ok(seq)
    }

    fn replay(&self, visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let (file, end, first) = {
            let st = self.state();
            (st.file.clone(), st.end, st.first_seq)
        };
        let mut buf = vec![0u8; end as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(Error::io(&self.path))?;
        let mut at = HEADER_LEN as usize;
        let mut seq = first;
        while at < buf.len() {
            match record_at(&buf, at) {
                Ok(Some((s, e))) => {
                    visit(seq, &buf[s..e])?;
                    seq += 1;
                    at = e;
                }
                _ => return Err(Error::JournalCorrupt { offset: at as u64 }),
            }
        }
        Ok(())
    }

    fn trim_through(&self, seq: u64) -> Result<()> {
        let mut st = self.state();
        if seq < st.first_seq {
            return Ok(());
        }
        let keep_from = seq + 1;
        let mut rest = Vec::new();
        if keep_from < st.next_seq {
            // Copy the records after `seq` into the new file.
            let mut buf = vec![0u8; st.end as usize];
            st.file
                .read_exact_at(&mut buf, 0)
                .map_err(Error::io(&self.path))?;
            let mut at = HEADER_LEN as usize;
            let mut s = st.first_seq;
            while at < buf.len() {
                let Ok(Some((_, e))) = record_at(&buf, at) else {
                    return Err(Error::JournalCorrupt { offset: at as u64 });
                };
                if s >= keep_from {
                    rest.extend_from_slice(&buf[at..e]);
                }
                s += 1;
                at = e;
            }
        }
        let first_seq = keep_from.min(st.next_seq);
        let file = write_new(&self.path, first_seq, &rest)?;
        st.file = Arc::new(file);
        st.end = HEADER_LEN + rest.len() as u64;
        st.first_seq = first_seq;
        // Everything kept was just synced with the new file.
        let mut s = self.sync_state();
        s.synced = s.synced.max(st.next_seq - 1);
        self.synced_cv.notify_all();
        Ok(())
    }

    fn last_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    fn len_bytes(&self) -> u64 {
        self.state().end - HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn append_and_replay_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = FileJournal::open(&path).unwrap();
            assert_eq!(j.last_seq(), 0);
            assert_eq!(j.append(b"one").unwrap(), 1);
            assert_eq!(j.append(b"two").unwrap(), 2);
            assert_eq!(j.append(&[7u8; 100_000]).unwrap(), 3);
        }
        let j = FileJournal::open(&path).unwrap();
        assert!(j.torn_tail().is_none());
        let recs = collect(&j);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], (1, b"one".to_vec()));
        assert_eq!(recs[2].1.len(), 100_000);
        assert_eq!(j.append(b"four").unwrap(), 4);
        assert!(j.append(b"").is_err());
    }

    #[test]
    fn torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = FileJournal::open(&path).unwrap();
            j.append(b"keep me").unwrap();
            j.append(b"and me").unwrap();
        }
        let full = std::fs::metadata(&path).unwrap().len();
        // A third record cut short mid-payload.
        let rec = encode_record(b"never acknowledged");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&rec[..rec.len() - 4], full).unwrap();
        drop(f);
        let j = FileJournal::open(&path).unwrap();
        let t = j.torn_tail().unwrap();
        assert_eq!((t.offset, t.kind), (full, TornKind::Short));
        assert_eq!(collect(&j).len(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
        // Appends go on after the cut.
        assert_eq!(j.append(b"next").unwrap(), 3);
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(collect(&j)[2], (3, b"next".to_vec()));
    }

    #[test]
    fn checksum_mismatch_at_the_end_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = FileJournal::open(&path).unwrap();
            j.append(b"good").unwrap();
            j.append(b"flipped").unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        flip(&path, len - 1);
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(j.torn_tail().unwrap().kind, TornKind::Checksum);
        assert_eq!(collect(&j), vec![(1, b"good".to_vec())]);
    }

    #[test]
    fn checksum_mismatch_before_good_records_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = FileJournal::open(&path).unwrap();
            j.append(b"first").unwrap();
            j.append(b"second").unwrap();
            j.append(b"third").unwrap();
        }
        // Flip a payload byte of the first record.
        flip(&path, HEADER_LEN + RECORD_HEADER + 1);
        match FileJournal::open(&path) {
            Err(Error::JournalCorrupt { offset }) => assert_eq!(offset, HEADER_LEN),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // A bad header is refused too.
        flip(&path, 0);
        assert!(matches!(
            FileJournal::open(&path),
            Err(Error::JournalHeader)
        ));
    }

    fn flip(path: &Path, at: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0xFF;
        f.write_all_at(&b, at).unwrap();
    }

    #[test]
    fn trim_keeps_later_records_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let j = FileJournal::open(&path).unwrap();
        for i in 0..10u8 {
            j.append(&[i + 1; 10]).unwrap();
        }
        j.trim_through(6).unwrap();
        let recs = collect(&j);
        assert_eq!(
            recs.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert_eq!(recs[0].1, vec![7; 10]);
        assert_eq!(j.append(b"x").unwrap(), 11);
        j.trim_through(j.last_seq()).unwrap();
        assert!(collect(&j).is_empty());
        assert_eq!(j.len_bytes(), 0);
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(j.append(b"y").unwrap(), 12);
        assert_eq!(collect(&j), vec![(12, b"y".to_vec())]);
    }

    #[test]
    fn appenders_waiting_together_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(FileJournal::open(&dir.path().join("journal")).unwrap());
        // Hold the sync state so every appender writes its record and then queues for a sync.
        let guard = j.sync_state();
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let j = j.clone();
                std::thread::spawn(move || j.append(&[i; 16]).unwrap())
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while j.written.load(Ordering::Acquire) < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "appenders did not write"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(guard);
        let mut seqs: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
        assert_eq!(j.syncs(), 1);
    }

    #[test]
    fn concurrent_appenders_share_syncs_and_keep_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let j = Arc::new(FileJournal::open(&path).unwrap());
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    let mut seqs = Vec::new();
                    for i in 0..50u32 {
                        let mut p = t.to_be_bytes().to_vec();
                        p.extend_from_slice(&i.to_be_bytes());
                        seqs.push(j.append(&p).unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=400).collect::<Vec<_>>());
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        let recs = collect(&j);
        assert_eq!(recs.len(), 400);
        // Each appender's records are in its own order.
        for t in 0..8u32 {
            let mine: Vec<u32> = recs
                .iter()
                .filter(|r| r.1[..4] == t.to_be_bytes())
                .map(|r| u32::from_be_bytes(r.1[4..8].try_into().unwrap()))
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>());
        }
    }
}
