//! [`Journal`]: an append-only record log kept in a ring over an [`NvDisk`], for an OSD's write
//! journal.
//!
//! An append is one device write, durable as the device's mode says (see
//! [`NvDisk::durability`]); appends that arrive while one is being written are gathered into the
//! next device write (group commit), which in sync mode means one fdatasync for all of them.
//!
//! Device layout, format version 1 (integers big-endian). Block 0 is the superblock, written
//! whole by one device write (device writes are atomic, see [`NvDisk::max_atomic_write`]):
//!
//! ```text
//!  0 magic b"CNVJRNL1"   8 version u32 = 1   12 pad u32
//! 16 ring_start u64      24 ring_len u64
//! 32 head u64            logical byte position of the first live record
//! 40 head_seq u64        its sequence number
//! 48 head_prev_crc u32   the chain value it continues
//! 52 crc32 of bytes 0..52
//! ```
//!
//! Logical positions only grow; position `p` lives at device byte `ring_start + p % ring_len`.
//! Records follow one another from `head`, 8-byte aligned, and may wrap past the ring's end:
//!
//! ```text
//!  0 magic b"NVR1"   4 len u32   8 seq u64
//! 16 crc u32 = crc32(previous record's crc, big-endian || bytes 4..16 || payload)
//! 20 pad u32         24 payload, zero padded to a multiple of 8
//! ```
//!
//! Chaining each crc to the previous record's means a stale record left from an earlier lap of
//! the ring can never pass as the next one. At open the records are scanned from `head`: the
//! first record that is not whole ends the log (the torn tail, dropped), unless a whole record
//! that chains to it follows, which means a record in the middle went bad: [`Error::Corrupt`].
//! `trim_through` rewrites the superblock before any of the freed space is reused.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::codec::{be_u32, be_u64};
use crate::device::NvDisk;
use crate::error::{Error, Result};

const SB_MAGIC: &[u8; 8] = b"CNVJRNL1";
const SB_VERSION: u32 = 1;
const SB_LEN: usize = 56;
const REC_MAGIC: &[u8; 4] = b"NVR1";
const REC_HEADER: u64 = 24;

fn record_size(len: usize) -> u64 {
    REC_HEADER + (len as u64).div_ceil(8) * 8
}

fn chain_crc(prev: u32, head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&prev.to_be_bytes());
    h.update(head);
    h.update(payload);
    h.finalize()
}

#[derive(Debug, Clone, Copy)]
struct Superblock {
    ring_start: u64,
    ring_len: u64,
    head: u64,
    head_seq: u64,
    head_prev_crc: u32,
}

impl Superblock {
    fn encode(&self) -> [u8; SB_LEN] {
        let mut b = [0u8; SB_LEN];
        b[0..8].copy_from_slice(SB_MAGIC);
        b[8..12].copy_from_slice(&SB_VERSION.to_be_bytes());
        b[16..24].copy_from_slice(&self.ring_start.to_be_bytes());
        b[24..32].copy_from_slice(&self.ring_len.to_be_bytes());
        b[32..40].copy_from_slice(&self.head.to_be_bytes());
        b[40..48].copy_from_slice(&self.head_seq.to_be_bytes());
        b[48..52].copy_from_slice(&self.head_prev_crc.to_be_bytes());
        let crc = crc32fast::hash(&b[0..52]);
        b[52..56].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Superblock> {
        if &b[0..8] != SB_MAGIC
            || be_u32(&b[8..12]) != SB_VERSION
            || crc32fast::hash(&b[0..52]) != be_u32(&b[52..56])
        {
            return None;
        }
        Some(Superblock {
            ring_start: be_u64(&b[16..24]),
            ring_len: be_u64(&b[24..32]),
            head: be_u64(&b[32..40]),
            head_seq: be_u64(&b[40..48]),
            head_prev_crc: be_u32(&b[48..52]),
        })
    }
}

/// A live record's place in the ring.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    pos: u64,
    size: u64,
    crc: u32,
}

struct State {
    head: u64,
    head_seq: u64,
    head_prev_crc: u32,
    /// End of the reserved records (written or queued).
    tail: u64,
    next_seq: u64,
    last_crc: u32,
    /// End of the records known to be on the device, and the last of them.
    durable_tail: u64,
    durable_seq: u64,
    /// Encoded records waiting for a leader, starting at logical position `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    pending_last: u64,
    leader: bool,
    index: VecDeque<Entry>,
    failed: Option<io::ErrorKind>,
}

/// An append-only record log on an [`NvDisk`]; `Send + Sync`, every method takes `&self`.
pub struct Journal {
    disk: Arc<NvDisk>,
    ring_start: u64,
    ring_len: u64,
    state: Mutex<State>,
    cv: Condvar,
    /// Serialises superblock rewrites (trims).
    trim: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What lies at one ring position.
enum Probe {
    /// A whole record that continues the chain.
    Record(Entry, Vec<u8>),
    /// A record header that parses but whose payload fails the crc; carries the crc it claims.
    BadCrc { size: u64, claimed: u32 },
    /// Nothing that continues the log.
    End,
}

impl Journal {
    /// Opens the journal on `disk`, formatting it if block 0 is blank (all zeros), and finds the
    /// end of the log. Fails with [`Error::NotAJournal`] if block 0 holds something else, and
    /// with [`Error::Corrupt`] if a record in the middle of the log is damaged.
    pub fn open(disk: Arc<NvDisk>) -> Result<Journal> {
        let bs = u64::from(disk.block_size());
        if disk.len() < 2 * bs {
            return Err(Error::InvalidConfig {
                field: "size",
                reason: format!(
                    "a journal needs at least two blocks, the device has {}",
                    disk.len()
                ),
            });
        }
        let mut block = vec![0u8; SB_LEN];
        disk.read(0, &mut block)?;
        let sb = match Superblock::decode(&block) {
            Some(sb) => sb,
            None if block.iter().all(|&b| b == 0) => {
                let sb = Superblock {
                    ring_start: bs,
                    ring_len: (disk.len() - bs) / 8 * 8,
                    head: 0,
                    head_seq: 1,
                    head_prev_crc: 0,
                };
                disk.write(0, &sb.encode())?;
                sb
            }
            None => return Err(Error::NotAJournal),
        };
        if sb.ring_start < SB_LEN as u64
            || sb.ring_len < REC_HEADER
            || sb
                .ring_start
                .checked_add(sb.ring_len)
                .is_none_or(|end| end > disk.len())
        {
            return Err(Error::NotAJournal);
        }
        let journal = Journal {
            disk,
            ring_start: sb.ring_start,
            ring_len: sb.ring_len,
            state: Mutex::new(State {
                head: sb.head,
                head_seq: sb.head_seq,
                head_prev_crc: sb.head_prev_crc,
                tail: sb.head,
                next_seq: sb.head_seq,
                last_crc: sb.head_prev_crc,
                durable_tail: sb.head,
                durable_seq: sb.head_seq - 1,
                pending: Vec::new(),
                pending_at: sb.head,
                pending_last: 0,
                leader: false,
                index: VecDeque::new(),
                failed: None,
            }),
            cv: Condvar::new(),
            trim: Mutex::new(()),
        };
        journal.scan(sb)?;
        Ok(journal)
    }

    /// Finds the records after the superblock's head.
    fn scan(&self, sb: Superblock) -> Result<()> {
        let (mut pos, mut seq, mut prev) = (sb.head, sb.head_seq, sb.head_prev_crc);
        let mut index = VecDeque::new();
        loop {
            match self.probe(sb.head, pos, seq, prev)? {
                Probe::Record(e, _) => {
                    index.push_back(e);
                    pos += e.size;
                    seq += 1;
                    prev = e.crc;
                }
                Probe::BadCrc { size, claimed } => {
                    // Torn tail, or damage in the middle: the latter if a whole record follows
                    // that chains to the damaged one.
                    if let Probe::Record(..) = self.probe(sb.head, pos + size, seq + 1, claimed)? {
                        return Err(self.corrupt(pos));
                    }
                    break;
                }
                Probe::End => break,
            }
        }
        let mut st = lock(&self.state);
        st.tail = pos;
        st.durable_tail = pos;
        st.pending_at = pos;
        st.next_seq = seq;
        st.durable_seq = seq - 1;
        st.last_crc = prev;
        st.index = index;
        Ok(())
    }

    fn corrupt(&self, pos: u64) -> Error {
        Error::Corrupt {
            what: "journal record",
            path: PathBuf::from(&self.disk.config().backup_dir),
            offset: self.ring_start + pos % self.ring_len,
        }
    }

    /// Reads `buf.len()` bytes at logical position `pos`, wrapping at the ring's end.
    fn read_ring(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let off = pos % self.ring_len;
        let first = (self.ring_len - off).min(buf.len() as u64) as usize;
        self.disk.read(self.ring_start + off, &mut buf[..first])?;
        if first < buf.len() {
            self.disk.read(self.ring_start, &mut buf[first..])?;
        }
        Ok(())
    }

    fn write_ring(&self, pos: u64, buf: &[u8]) -> Result<()> {
        let off = pos % self.ring_len;
        let first = (self.ring_len - off).min(buf.len() as u64) as usize;
        self.disk.write(self.ring_start + off, &buf[..first])?;
        if first < buf.len() {
            self.disk.write(self.ring_start, &buf[first..])?;
        }
        Ok(())
    }

    /// Looks for record `seq`, chained to `prev`, at `pos`, within one ring length of `head`.
    fn probe(&self, head: u64, pos: u64, seq: u64, prev: u32) -> Result<Probe> {
        let room = (head + self.ring_len).saturating_sub(pos);
        if room < REC_HEADER {
            return Ok(Probe::End);
        }
        let mut h = [0u8; REC_HEADER as usize];
        self.read_ring(pos, &mut h)?;
        let len = be_u32(&h[4..8]) as usize;
        let size = record_size(len);
        if &h[0..4] != REC_MAGIC || be_u64(&h[8..16]) != seq || size > room {
            return Ok(Probe::End);
        }
        let mut payload = vec![0u8; len];
        self.read_ring(pos + REC_HEADER, &mut payload)?;
        let claimed = be_u32(&h[16..20]);
        if chain_crc(prev, &h[4..16], &payload) != claimed {
            return Ok(Probe::BadCrc { size, claimed });
        }
        Ok(Probe::Record(
            Entry {
                seq,
                pos,
                size,
                crc: claimed,
            },
            payload,
        ))
    }

    /// Appends a record; returns its sequence number once it is durable per the device's mode.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        let size = record_size(payload.len());
        if size > self.ring_len {
            return Err(Error::TooLarge {
                len: payload.len() as u64,
                max: self.ring_len - REC_HEADER,
            });
        }
        let mut st = lock(&self.state);
        if let Some(kind) = st.failed {
            return Err(self.failed(kind));
        }
        let free = self.ring_len - (st.tail - st.head);
        if size > free {
            return Err(Error::Full { needed: size, free });
        }
        let seq = st.next_seq;
        let mut head = [0u8; REC_HEADER as usize];
        head[0..4].copy_from_slice(REC_MAGIC);
        head[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        head[8..16].copy_from_slice(&seq.to_be_bytes());
        let crc = chain_crc(st.last_crc, &head[4..16], payload);
        head[16..20].copy_from_slice(&crc.to_be_bytes());
        if st.pending.is_empty() {
            st.pending_at = st.tail;
        }
        st.pending.extend_from_slice(&head);
        st.pending.extend_from_slice(payload);
        let padded = st.pending.len().div_ceil(8) * 8;
        st.pending.resize(padded, 0);
        let pos = st.tail;
        st.index.push_back(Entry {
            seq,
            pos,
            size,
            crc,
        });
        st.tail += size;
        st.next_seq += 1;
        st.last_crc = crc;
        st.pending_last = seq;

        loop {
            if st.durable_seq >= seq {
                return Ok(seq);
            }
            if let Some(kind) = st.failed {
                return Err(self.failed(kind));
            }
            if st.leader || st.pending.is_empty() {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            let batch = std::mem::take(&mut st.pending);
            let (at, last) = (st.pending_at, st.pending_last);
            drop(st);
            let res = self.write_ring(at, &batch);
            st = lock(&self.state);
            st.leader = false;
            match res {
                Ok(()) => {
                    st.durable_seq = last;
                    st.durable_tail = at + batch.len() as u64;
                }
                Err(e) => {
                    // The ring's tail is now unknown: refuse further appends rather than leave
                    // a gap that replay would read as the end.
                    st.failed = Some(match &e {
                        Error::Io { source, .. } => source.kind(),
                        _ => io::ErrorKind::Other,
                    });
                    self.cv.notify_all();
                    return Err(e);
                }
            }
            self.cv.notify_all();
        }
    }

    fn failed(&self, kind: io::ErrorKind) -> Error {
        Error::io(
            "journal append failed earlier",
            &self.disk.config().backup_dir,
            kind.into(),
        )
    }

    /// Every durable record after the last trim, in order, read back from the device. A record
    /// that fails its checks ends the iteration with [`Error::Corrupt`]. Meant for recovery,
    /// before appends and trims resume: a trim whose space is reused during the iteration can
    /// also end it that way.
    pub fn replay(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>)>> + '_ {
        let st = lock(&self.state);
        let mut pos = st.head;
        let mut seq = st.head_seq;
        let mut prev = st.head_prev_crc;
        let (head, end) = (st.head, st.durable_tail);
        drop(st);
        let mut done = false;
        std::iter::from_fn(move || {
            if done || pos >= end {
                return None;
            }
            let item = match self.probe(head, pos, seq, prev) {
                Ok(Probe::Record(e, payload)) if pos + e.size <= end => {
                    pos += e.size;
                    seq += 1;
                    prev = e.crc;
                    Ok((e.seq, payload))
                }
                Ok(_) => Err(self.corrupt(pos)),
                Err(e) => Err(e),
            };
            done = item.is_err();
            Some(item)
        })
    }

    /// Drops every record up to and including `seq` (only durable ones; later `seq`s are
    /// clamped) and frees its space. The new head is on the device before the space is reused.
    pub fn trim_through(&self, seq: u64) -> Result<()> {
        let _one_trim = lock(&self.trim);
        let sb = {
            let st = lock(&self.state);
            let upto = seq.min(st.durable_seq);
            let Some(last) = st.index.iter().take_while(|e| e.seq <= upto).last() else {
                return Ok(());
            };
            Superblock {
                ring_start: self.ring_start,
                ring_len: self.ring_len,
                head: last.pos + last.size,
                head_seq: last.seq + 1,
                head_prev_crc: last.crc,
            }
        };
        self.disk.write(0, &sb.encode())?;
        let mut st = lock(&self.state);
        while st.index.front().is_some_and(|e| e.seq < sb.head_seq) {
            st.index.pop_front();
        }
        st.head = sb.head;
        st.head_seq = sb.head_seq;
        st.head_prev_crc = sb.head_prev_crc;
        Ok(())
    }

    /// Bytes free in the ring.
    pub fn free(&self) -> u64 {
        let st = lock(&self.state);
        self.ring_len - (st.tail - st.head)
    }

    /// Sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        lock(&self.state).next_seq
    }

    /// The device underneath.
    pub fn disk(&self) -> &Arc<NvDisk> {
        &self.disk
    }
}
