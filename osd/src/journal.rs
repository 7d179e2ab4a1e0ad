//! The write-ahead journal: a mutation is durable once its record is, so the store itself is
//! only made durable at checkpoints ([`crate::durable`]).
//!
//! [`Journal`] is the seam for other journal devices (`append` → durable sequence number,
//! `replay`, `trim_through`; the nvdisk one is [`crate::nvjournal::NvJournal`]).
//! [`FileJournal`] is a plain file, written in place:
//!
//! ```text
//! header slot 0 at 0, slot 1 at 512 (24 bytes each):
//!          "CRNJ" | version u32 = 2 | first_seq u64 | reserved u32 | crc32(bytes 0..20) u32
//! records from byte 1024:
//!          len u32 | crc32(seq u64 ‖ payload) u32 | payload (len bytes, len > 0)
//! end marker after the last record: 8 zero bytes (a record of length 0)
//! ```
//! Integers are big-endian. Records carry no sequence number: the first one is `first_seq` of
//! the valid header slot with the larger `first_seq`, each next one is one more, and a record's
//! checksum covers its sequence number with its payload. Appenders write their record (with a new
//! end marker after it) under a lock and then share fdatasyncs (group commit): whoever finds no
//! sync running syncs everything written so far while later appenders wait for the next round.
//!
//! **Why in place.** A trim used to write a new file (tmp → rename), so every record after it
//! grew the file, and an fdatasync that follows a write growing the file must also make the
//! file's new size and blocks durable: a jbd2 commit on a journaled ext4, a synchronous write of
//! the inode on this project's VMs (ext4 without a journal: `ext4_fsync_nojournal` in `perf`).
//! On those VMs, 2,000 4 KiB writes each followed by an fdatasync ran at 8.8–11.4k/s into
//! already-written blocks and at 3.7–4.8k/s appended (3 rounds each, alternated). So a full trim
//! (the OSD's checkpoints trim everything) keeps the file and its blocks: it writes a header with
//! `first_seq` = the next sequence number into the *other* slot, fdatasyncs, writes the end
//! marker at byte 1024 and fdatasyncs again; records then start over at 1024 over the old ones.
//! Old records left further on can never be taken for new ones: their sequence numbers are all
//! below the header's `first_seq`, and the checksum covers the sequence number.
//!
//! **Crash cases.** A header write cut by a crash leaves the other slot: the records it names
//! are intact (the marker is written only after the header is durable) and are replayed again,
//! as they were when a crash fell between the store's sync and the old rename. A slot that is
//! neither valid nor blank while the records do not follow the other slot is corruption, not a
//! crash, and the journal refuses to open ([`Error::JournalHeader`]). On open, a record that is
//! cut short or fails its checksum where the end marker should be is a torn tail: it was never
//! acknowledged; the kept records are then written to a new file (tmp → fsync → rename →
//! fsync dir) so that nothing of the unacknowledged tail stays behind to be mistaken for a later
//! record. A bad record followed by a good one is corruption ([`Error::JournalCorrupt`]):
//! records after it were acknowledged, so the journal refuses to open rather than silently lose
//! them. A trim that keeps records, and a version 1 journal (one header, records from byte 24,
//! checksums over the payload alone), are written as a new file the same way.

use crate::error::{Error, Result};
use bytes::Bytes;
use cairn_proto::payload::SEGMENT_MIN;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

const MAGIC: &[u8; 4] = b"CRNJ";
const VERSION: u32 = 2;
/// The version whose records follow its one header and are checked over their payload alone.
const VERSION_1: u32 = 1;
/// Bytes of a header.
pub const HEADER_LEN: u64 = 24;
/// Where the two header slots are.
const SLOTS: [u64; 2] = [0, 512];
/// Where the records start.
pub const RECORDS_START: u64 = 1024;
/// Bytes before each record's payload.
pub const RECORD_HEADER: u64 = 8;
/// Written after the last record: a record header of length 0.
const END_MARKER: [u8; RECORD_HEADER as usize] = [0; RECORD_HEADER as usize];
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
    /// As [`Journal::submit`], for a payload given as the parts of a
    /// [`cairn_proto::payload::Segments`] in order (a journal that can writes them without
    /// joining them first).
    fn submit_parts(&self, parts: &[Bytes]) -> Result<u64> {
        match parts {
            [one] => self.submit(one),
            _ => self.submit(&parts.concat()),
        }
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
    /// End of the last complete record (where the end marker is).
    end: u64,
    first_seq: u64,
    next_seq: u64,
    /// The header slot that names `first_seq`; a full trim writes the other one.
    slot: usize,
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

fn header(version: u32, first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&version.to_be_bytes());
    h[8..16].copy_from_slice(&first_seq.to_be_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The header in `h`: `Some((version, first_seq))` when it is whole and of a known version.
fn parse_header(h: &[u8]) -> Option<(u32, u64)> {
    if h.len() < HEADER_LEN as usize
        || &h[..4] != MAGIC
        || crc32fast::hash(&h[..20]) != u32::from_be_bytes([h[20], h[21], h[22], h[23]])
    {
        return None;
    }
    let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if version != VERSION && version != VERSION_1 {
        return None;
    }
    Some((
        version,
        u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")),
    ))
}

/// The checksum of record `seq` (version 1 checked the payload alone).
fn record_crc(version: u32, seq: u64, payload: &crc32fast::Hasher) -> u32 {
    if version == VERSION_1 {
        return payload.clone().finalize();
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_be_bytes());
    h.combine(payload);
    h.finalize()
}

fn payload_hasher(payload: &[u8]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(payload);
    h
}

/// What lies at one offset of a journal's bytes.
#[derive(Debug, PartialEq, Eq)]
enum At {
    /// Record `seq` whole: its payload's range and where the next record starts.
    Record(usize, usize),
    /// The end marker, or the end of the file.
    End,
    /// A record cut short (or of impossible length).
    Short,
    /// A whole record failing its checksum (torn, or an old record of an earlier trim).
    Bad,
}

fn record_at(buf: &[u8], at: usize, version: u32, seq: u64) -> At {
    if at >= buf.len() {
        return At::End;
    }
    if buf.len() < at + RECORD_HEADER as usize {
        return At::Short;
    }
    let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 && version == VERSION {
        return At::End;
    }
    if len == 0 || len > MAX_RECORD {
        return At::Short;
    }
    let start = at + RECORD_HEADER as usize;
    let end = start + len as usize;
    if buf.len() < end {
        return At::Short;
    }
    if record_crc(version, seq, &payload_hasher(&buf[start..end])) != crc {
        return At::Bad;
    }
    At::Record(start, end)
}

/// The records of `buf` from `start`, `first_seq` first: visits each, returns where they end,
/// how many there are and how the tail was torn (if it was).
fn scan(
    buf: &[u8],
    version: u32,
    start: usize,
    first_seq: u64,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<(usize, u64, Option<TornKind>)> {
    let mut at = start;
    let mut seq = first_seq;
    loop {
        match record_at(buf, at, version, seq) {
            At::Record(s, e) => {
                visit(seq, &buf[s..e]);
                at = e;
                seq += 1;
            }
            At::End => return Ok((at, seq - first_seq, None)),
            At::Short => return Ok((at, seq - first_seq, Some(TornKind::Short))),
            At::Bad => {
                let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                let next = at + RECORD_HEADER as usize + len as usize;
                if matches!(record_at(buf, next, version, seq + 1), At::Record(..)) {
                    return Err(Error::JournalCorrupt { offset: at as u64 });
                }
                return Ok((at, seq - first_seq, Some(TornKind::Checksum)));
            }
        }
    }
}

/// Encode record `seq`, with the end marker after it.
pub fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = encode_unnumbered(payload);
    number(&mut r, seq, &payload_hasher(payload));
    r
}

/// A record with a blank checksum (see [`number`]) and the end marker after it.
fn encode_unnumbered(payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(payload.len() + 2 * RECORD_HEADER as usize);
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(payload);
    r.extend_from_slice(&END_MARKER);
    r
}

/// Give a record from [`encode_unnumbered`] its sequence number.
fn number(rec: &mut [u8], seq: u64, payload: &crc32fast::Hasher) {
    rec[4..8].copy_from_slice(&record_crc(VERSION, seq, payload).to_be_bytes());
}

/// A visitor for [`scan`] that appends each record from `from` on to `out`, encoded for version 2
/// without end marker (what [`write_new`] takes).
fn collect_from(out: &mut Vec<u8>, from: u64) -> impl FnMut(u64, &[u8]) + '_ {
    move |seq, payload| {
        if seq >= from {
            let mut r = encode_record(seq, payload);
            r.truncate(r.len() - END_MARKER.len());
            out.extend_from_slice(&r);
        }
    }
}

/// Make the directory entry of `path` durable (fsync its parent directory).
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// Write a journal file holding `records` (encoded for version 2, without their end marker)
/// atomically at `path`.
fn write_new(path: &Path, first_seq: u64, records: &[u8]) -> Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
        let mut head = vec![0u8; RECORDS_START as usize];
        head[..HEADER_LEN as usize].copy_from_slice(&header(VERSION, first_seq));
        f.write_all(&head).map_err(Error::io(&tmp))?;
        f.write_all(records).map_err(Error::io(&tmp))?;
        f.write_all(&END_MARKER).map_err(Error::io(&tmp))?;
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

/// Which header of `buf` holds: `(version, first_seq, slot)`.
fn pick_header(buf: &[u8]) -> Result<(u32, u64, usize)> {
    let slot = |i: usize| {
        let at = SLOTS[i] as usize;
        buf.get(at..at + HEADER_LEN as usize)
    };
    match parse_header(slot(0).unwrap_or(&[])) {
        Some((VERSION_1, first)) => Ok((VERSION_1, first, 0)),
        Some((_, first0)) => match slot(1).and_then(parse_header) {
            Some((VERSION, first1)) if first1 > first0 => Ok((VERSION, first1, 1)),
            _ => Ok((VERSION, first0, 0)),
        },
        None => match slot(1).and_then(parse_header) {
            Some((VERSION, first1)) => Ok((VERSION, first1, 1)),
            _ => Err(Error::JournalHeader),
        },
    }
}

/// Whether header slot `i` of `buf` is neither valid nor blank (never written).
fn slot_damaged(buf: &[u8], i: usize) -> bool {
    let at = SLOTS[i] as usize;
    match buf.get(at..at + HEADER_LEN as usize) {
        Some(h) => parse_header(h).is_none() && h.iter().any(|&b| b != 0),
        None => false,
    }
}

impl FileJournal {
    /// Open the journal at `path`, creating it if absent; a torn tail is cut off and a version 1
    /// journal rewritten as version 2 (see the module doc).
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
        let buf = match existing {
            Some(buf) if !buf.is_empty() => buf,
            _ => {
                let file = write_new(path, 1, &[])?;
                return Ok(Self::with(path, file, 1, 0, RECORDS_START, 0, None));
            }
        };
        let (version, first_seq, slot) = pick_header(&buf)?;
        let start = if version == VERSION_1 {
            HEADER_LEN
        } else {
            RECORDS_START
        } as usize;
        let (at, count, torn) = scan(&buf, version, start, first_seq, &mut |_, _| {})?;
        if version == VERSION && count == 0 && torn.is_some() && slot_damaged(&buf, 1 - slot) {
            // The other slot was written and is now unreadable, and the records do not follow
            // this one: they follow the lost header. Refuse rather than drop them.
            return Err(Error::JournalHeader);
        }
        let torn = torn.map(|kind| TornTail {
            offset: at as u64,
            kind,
            dropped_bytes: (buf.len() - at) as u64,
        });
        if let Some(t) = torn {
            tracing::warn!(path = %path.display(), offset = t.offset, kind = ?t.kind,
                bytes = t.dropped_bytes, "journal: dropping torn tail");
        }
        if version == VERSION && torn.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(Error::io(path))?;
            return Ok(Self::with(path, f, first_seq, count, at as u64, slot, None));
        }
        // A torn tail, or version 1: the kept records go to a new file, so that nothing of the
        // tail stays behind.
        let mut kept = Vec::new();
        scan(
            &buf,
            version,
            start,
            first_seq,
            &mut collect_from(&mut kept, first_seq),
        )?;
        let file = write_new(path, first_seq, &kept)?;
        let end = RECORDS_START + kept.len() as u64;
        Ok(Self::with(path, file, first_seq, count, end, 0, torn))
    }

    fn with(
        path: &Path,
        file: File,
        first_seq: u64,
        count: u64,
        end: u64,
        slot: usize,
        torn: Option<TornTail>,
    ) -> FileJournal {
        let last = first_seq + count - 1;
        FileJournal {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file: Arc::new(file),
                end,
                first_seq,
                next_seq: first_seq + count,
                slot,
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
        }
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

    /// Large payloads (an object write's data) are written where they lie, between the writes
    /// of the bytes around them, rather than copied into one record buffer first: a few more
    /// system calls against a copy of the data.
    fn submit_parts(&self, parts: &[Bytes]) -> Result<u64> {
        if parts.len() <= 1 {
            return self.submit(parts.first().map_or(&[][..], |p| &p[..]));
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        if len == 0 || len > MAX_RECORD as usize {
            return Err(Error::invalid("journal record of impossible size"));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::JournalPoisoned);
        }
        let mut hasher = crc32fast::Hasher::new();
        for p in parts {
            hasher.update(p);
        }
        // The record as runs to write: small parts joined, large ones by themselves.
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(&(len as u32).to_be_bytes());
        head.extend_from_slice(&[0; 4]);
        let mut runs: Vec<std::borrow::Cow<'_, [u8]>> = Vec::new();
        let mut small = head;
        for p in parts {
            if p.len() >= SEGMENT_MIN {
                runs.push(std::mem::take(&mut small).into());
                runs.push(p[..].into());
            } else {
                small.extend_from_slice(p);
            }
        }
        small.extend_from_slice(&END_MARKER);
        runs.push(small.into());
        let mut st = self.state();
        let seq = st.next_seq;
        if let std::borrow::Cow::Owned(first) = &mut runs[0] {
            number(first, seq, &hasher);
        }
        let mut at = st.end;
        for r in &runs {
            if let Err(e) = st.file.write_all_at(r, at) {
                let _ = st.file.write_all_at(&END_MARKER, st.end);
                return Err(Error::io(&self.path)(e));
            }
            at += r.len() as u64;
        }
        st.end += RECORD_HEADER + len as u64;
        st.next_seq += 1;
        self.written.store(seq, Ordering::Release);
        Ok(seq)
    }

    fn submit(&self, payload: &[u8]) -> Result<u64> {
        if payload.is_empty() || payload.len() > MAX_RECORD as usize {
            return Err(Error::invalid("journal record of impossible size"));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::JournalPoisoned);
        }
        // The payload's checksum is computed outside the lock; only its combination with the
        // sequence number is done under it.
        let hasher = payload_hasher(payload);
        let mut rec = encode_unnumbered(payload);
        let seq = {
            let mut st = self.state();
            let seq = st.next_seq;
            number(&mut rec, seq, &hasher);
            if let Err(e) = st.file.write_all_at(&rec, st.end) {
                // Leave no partial record behind for the next append to follow.
                let _ = st.file.write_all_at(&END_MARKER, st.end);
                return Err(Error::io(&self.path)(e));
            }
            st.end += (rec.len() - END_MARKER.len()) as u64;
            st.next_seq += 1;
            self.written.store(seq, Ordering::Release);
            seq
        };
        Ok(seq)
    }

    fn replay(&self, visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let (file, end, first, count) = {
            let st = self.state();
            (
                st.file.clone(),
                st.end,
                st.first_seq,
                st.next_seq - st.first_seq,
            )
        };
        let mut buf = vec![0u8; end as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(Error::io(&self.path))?;
        let mut err = None;
        let (at, seen, torn) = scan(&buf, VERSION, RECORDS_START as usize, first, &mut |s, p| {
            if err.is_none() {
                err = visit(s, p).err();
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        if torn.is_some() || seen != count {
            return Err(Error::JournalCorrupt { offset: at as u64 });
        }
        Ok(())
    }

    fn trim_through(&self, seq: u64) -> Result<()> {
        let mut st = self.state();
        if seq < st.first_seq {
            return Ok(());
        }
        let keep_from = seq + 1;
        if keep_from >= st.next_seq {
            if st.end == RECORDS_START {
                return Ok(());
            }
            // Everything goes: the file and its blocks stay (see the module doc). The header
            // first, then the marker, each made durable before the next.
            let other = 1 - st.slot;
            let first_seq = st.next_seq;
            let path = &self.path;
            st.file
                .write_all_at(&header(VERSION, first_seq), SLOTS[other])
                .and_then(|()| st.file.sync_data())
                .map_err(Error::io(path))?;
            st.slot = other;
            st.first_seq = first_seq;
            st.end = RECORDS_START;
            st.file
                .write_all_at(&END_MARKER, RECORDS_START)
                .and_then(|()| st.file.sync_data())
                .map_err(Error::io(path))?;
        } else {
            // Copy the records after `seq` into a new file.
            let mut buf = vec![0u8; st.end as usize];
            st.file
                .read_exact_at(&mut buf, 0)
                .map_err(Error::io(&self.path))?;
            let mut rest = Vec::new();
            let (at, count, torn) = scan(
                &buf,
                VERSION,
                RECORDS_START as usize,
                st.first_seq,
                &mut collect_from(&mut rest, keep_from),
            )?;
            if torn.is_some() || count != st.next_seq - st.first_seq {
                return Err(Error::JournalCorrupt { offset: at as u64 });
            }
            let file = write_new(&self.path, keep_from, &rest)?;
            st.file = Arc::new(file);
            st.end = RECORDS_START + rest.len() as u64;
            st.first_seq = keep_from;
            st.slot = 0;
        }
        // Everything kept was just made durable.
        let mut s = self.sync_state();
        s.synced = s.synced.max(st.next_seq - 1);
        self.synced_cv.notify_all();
        Ok(())
    }

    fn last_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    fn len_bytes(&self) -> u64 {
        self.state().end - RECORDS_START
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

    /// A record written in parts (a large payload between small pieces) is the same record as
    /// one written whole: same bytes on disk, same replay, and a cut anywhere in it is a torn
    /// tail.
    #[test]
    fn records_written_in_parts_replay_as_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let big = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let parts = vec![
            Bytes::from_static(b"env-"),
            big.clone(),
            Bytes::from_static(b"-mid-"),
            big.slice(1000..50_000),
            Bytes::from_static(b"-end"),
        ];
        let whole = parts.concat();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        {
            let ja = FileJournal::open(&a).unwrap();
            let jb = FileJournal::open(&b).unwrap();
            for _ in 0..3 {
                ja.submit_parts(&parts).unwrap();
                jb.submit(&whole).unwrap();
                ja.submit_parts(&parts[..1]).unwrap();
                jb.submit(&parts[0]).unwrap();
            }
            ja.wait_durable(ja.last_seq()).unwrap();
            jb.wait_durable(jb.last_seq()).unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let got = collect(&FileJournal::open(&a).unwrap());
        assert_eq!(got.len(), 6);
        assert_eq!(got[4].1, whole);
        // Cut inside the last large record's payload: the record is a torn tail, the earlier
        // ones stay.
        let len = std::fs::metadata(&a).unwrap().len();
        let cut = len - 8 - whole.len() as u64 - 8 - (parts[0].len() as u64 + 8) + 100_000;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let j = FileJournal::open(&a).unwrap();
        assert!(j.torn_tail().is_some());
        assert_eq!(collect(&j).len(), 4);
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
        // The end marker of record 2 is where record 3 starts.
        let full = std::fs::metadata(&path).unwrap().len() - RECORD_HEADER;
        // A third record cut short mid-payload.
        let rec = encode_record(3, b"never acknowledged");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&rec[..rec.len() - 12], full).unwrap();
        drop(f);
        let j = FileJournal::open(&path).unwrap();
        let t = j.torn_tail().unwrap();
        assert_eq!((t.offset, t.kind), (full, TornKind::Short));
        assert_eq!(collect(&j).len(), 2);
        // Nothing of the torn record is left in the file.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            full + RECORD_HEADER
        );
        // Appends go on after the cut.
        assert_eq!(j.append(b"next").unwrap(), 3);
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        assert!(j.torn_tail().is_none());
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
        // The last payload byte (the end marker follows it).
        let len = std::fs::metadata(&path).unwrap().len();
        flip(&path, len - RECORD_HEADER - 1);
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
        flip(&path, RECORDS_START + RECORD_HEADER + 1);
        match FileJournal::open(&path) {
            Err(Error::JournalCorrupt { offset }) => assert_eq!(offset, RECORDS_START),
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

    fn ino(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_trimmed_journal_reuses_its_file_and_never_replays_older_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let j = FileJournal::open(&path).unwrap();
        for i in 0..20u8 {
            j.append(&[i; 4096]).unwrap();
        }
        let (len, inode) = (std::fs::metadata(&path).unwrap().len(), ino(&path));
        j.trim_through(j.last_seq()).unwrap();
        assert_eq!(j.len_bytes(), 0);
        // Records of the same size land exactly where records 1..5 were: their old neighbours
        // 6..20 follow them in the file and must not be taken for records 26..40.
        for i in 0..5u8 {
            assert_eq!(j.append(&[100 + i; 4096]).unwrap(), 21 + u64::from(i));
        }
        assert_eq!(
            (std::fs::metadata(&path).unwrap().len(), ino(&path)),
            (len, inode)
        );
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        assert!(j.torn_tail().is_none());
        let recs = collect(&j);
        assert_eq!(
            recs.iter().map(|r| r.0).collect::<Vec<_>>(),
            (21..=25).collect::<Vec<_>>()
        );
        assert!(recs.iter().all(|r| r.1[0] >= 100));
        assert_eq!(j.last_seq(), 25);
        // A trim with nothing new since is a no-op; a second full trim uses the first slot again.
        j.trim_through(j.last_seq()).unwrap();
        j.trim_through(j.last_seq()).unwrap();
        assert_eq!(j.append(b"after two trims").unwrap(), 26);
        j.trim_through(j.last_seq()).unwrap();
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        assert!(collect(&j).is_empty());
        assert!(j.torn_tail().is_none());
        assert_eq!(j.append(b"z").unwrap(), 27);
        assert_eq!(ino(&path), inode);
    }

    #[test]
    fn a_header_cut_by_a_crash_leaves_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let j = FileJournal::open(&path).unwrap();
            j.append(b"one").unwrap();
            j.append(b"two").unwrap();
        }
        // A trim cut by a crash while its header (slot 1) was being written: the records are
        // still there and follow slot 0.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let mut torn = header(VERSION, 3);
        torn[12..].fill(0xAB);
        f.write_all_at(&torn, SLOTS[1]).unwrap();
        drop(f);
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(
            collect(&j),
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        assert_eq!(j.append(b"three").unwrap(), 3);
        // The next trim writes slot 1 whole; records after it follow it.
        j.trim_through(3).unwrap();
        assert_eq!(j.append(b"four").unwrap(), 4);
        drop(j);
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(collect(&j), vec![(4, b"four".to_vec())]);
        drop(j);
        // Slot 1 damaged later, with records that follow it: refused, not silently emptied.
        flip(&path, SLOTS[1] + 9);
        assert!(matches!(
            FileJournal::open(&path),
            Err(Error::JournalHeader)
        ));
    }

    #[test]
    fn a_version_1_journal_is_replayed_and_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut v1 = header(VERSION_1, 7).to_vec();
        for p in [&b"seven"[..], b"eight"] {
            v1.extend_from_slice(&(p.len() as u32).to_be_bytes());
            v1.extend_from_slice(&crc32fast::hash(p).to_be_bytes());
            v1.extend_from_slice(p);
        }
        std::fs::write(&path, &v1).unwrap();
        let j = FileJournal::open(&path).unwrap();
        assert!(j.torn_tail().is_none());
        assert_eq!(
            collect(&j),
            vec![(7, b"seven".to_vec()), (8, b"eight".to_vec())]
        );
        assert_eq!(j.append(b"nine").unwrap(), 9);
        drop(j);
        let buf = std::fs::read(&path).unwrap();
        assert_eq!(
            parse_header(&buf[..HEADER_LEN as usize]),
            Some((VERSION, 7))
        );
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(collect(&j).len(), 3);
    }
}
