//! The sync-mode write-ahead log: two preallocated segment files of intent frames (codec, magic
//! b"NVW1"), written with group commit.
//!
//! Every write of a sync-mode device is appended here (in sequence order, under the device's
//! write lock) and acknowledged only once a leader thread has written and fdatasync'ed the batch
//! holding it. Writers that arrive while a leader is syncing queue their frames; the next leader
//! takes them all with one `pwrite` and one `fdatasync`.
//!
//! Segments: writes between disk transaction k-1 and k go to one segment; when transaction k
//! takes its snapshot, writing switches to the other segment from its start. That segment held
//! the writes before transaction k-1's snapshot, all of them in the backups since transaction
//! k-1 completed, so overwriting it loses nothing. Frames are scanned from a segment's start while
//! whole and consecutive; a stale frame from an earlier use has a lower sequence and ends the scan.
//! Segments are preallocated with zeros so that an fdatasync never has to commit file metadata.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::codec::{self, KIND_INTENT};
use crate::error::{Error, Result};
use crate::failpoint;

const SEGMENTS: [&str; 2] = ["wal-0.log", "wal-1.log"];

/// A write recovered from the log.
pub(crate) struct Recovered {
    pub seq: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

pub(crate) struct Wal {
    files: [File; 2],
    paths: [PathBuf; 2],
    capacity: u64,
    state: Mutex<State>,
    cv: Condvar,
}

struct Batch {
    seg: usize,
    off: u64,
    buf: Vec<u8>,
    last: u64,
}

struct State {
    seg: usize,
    end: u64,
    switches: u64,
    pending: Vec<Batch>,
    durable: u64,
    leader: bool,
    failed: Option<io::ErrorKind>,
    syncs: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wal {
    /// Opens (creating and preallocating) both segments.
    pub(crate) fn open(dir: &Path, capacity: u64) -> Result<Wal> {
        let paths = SEGMENTS.map(|s| dir.join(s));
        let open = |path: &PathBuf| -> Result<File> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::io("open wal segment", path, e))?;
            preallocate(&file, capacity).map_err(|e| Error::io("preallocate", path, e))?;
            Ok(file)
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        crate::backup::sync_dir(dir)?;
        Ok(Wal {
            files,
            paths,
            capacity,
            state: Mutex::new(State {
                seg: 0,
                end: 0,
                switches: 0,
                pending: Vec::new(),
                durable: 0,
                leader: false,
                failed: None,
                syncs: 0,
            }),
            cv: Condvar::new(),
        })
    }

    /// Every write with a sequence above `after`, in order, up to the first gap; and the highest
    /// sequence seen in any whole frame.
    pub(crate) fn recover(&self, after: u64) -> Result<(Vec<Recovered>, u64)> {
        let mut all = Vec::new();
        let mut max_seen = after;
        for (file, path) in self.files.iter().zip(&self.paths) {
            let mut buf = vec![0u8; self.capacity as usize];
            file.read_exact_at(&mut buf, 0)
                .map_err(|e| Error::io("read wal segment", path, e))?;
            let mut at = 0;
            let mut prev: Option<u64> = None;
            while let codec::Decoded::Frame {
                kind,
                payload,
                size,
            } = codec::decode(&buf[at..], codec::WAL, buf.len())
            {
                let Some(w) = codec::parse_intent(payload) else {
                    break;
                };
                if kind != KIND_INTENT || prev.is_some_and(|p| w.seq != p + 1) {
                    break;
                }
                prev = Some(w.seq);
                max_seen = max_seen.max(w.seq);
                if w.seq > after {
                    all.push(Recovered {
                        seq: w.seq,
                        offset: w.offset,
                        data: w.data.to_vec(),
                    });
                }
                at += size;
            }
        }
        all.sort_by_key(|r| r.seq);
        let mut want = after + 1;
        all.retain(|r| {
            let keep = r.seq == want;
            if keep {
                want += 1;
            }
            keep
        });
        Ok((all, max_seen))
    }

    /// Starts writing segment 0 from its start; only when every frame in both segments is in
    /// the backups.
    pub(crate) fn reset(&self) {
        let mut st = lock(&self.state);
        st.seg = 0;
        st.end = 0;
    }

    /// Queues a write's frame; `Err(switches)` when the current segment has no room (the caller
    /// then waits with [`Wal::wait_switch`] for the next transaction to switch segments).
    pub(crate) fn try_append(&self, seq: u64, offset: u64, data: &[u8]) -> Result<(), u64> {
        let mut st = lock(&self.state);
        let need = codec::frame_len(codec::INTENT_HEADER + data.len()) as u64;
        if st.end + need > self.capacity {
            return Err(st.switches);
        }
        let (seg, end) = (st.seg, st.end);
        let contiguous = st
            .pending
            .last()
            .is_some_and(|b| b.seg == seg && b.off + b.buf.len() as u64 == end);
        if !contiguous {
            st.pending.push(Batch {
                seg,
                off: end,
                buf: Vec::new(),
                last: seq,
            });
        }
        let batch = st.pending.last_mut().expect("pushed above");
        codec::push_frame(
            &mut batch.buf,
            codec::WAL,
            KIND_INTENT,
            &[&seq.to_be_bytes(), &offset.to_be_bytes(), data],
        );
        batch.last = seq;
        st.end += need;
        Ok(())
    }

    /// Share of the current segment in use, in percent.
    pub(crate) fn fill_percent(&self) -> u64 {
        lock(&self.state).end * 100 / self.capacity
    }

    /// Group commits (each one fdatasync per segment it touched) since open.
    pub(crate) fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Moves writing to the other segment, from its start.
    pub(crate) fn switch(&self) {
        let mut st = lock(&self.state);
        st.seg ^= 1;
        st.end = 0;
        st.switches += 1;
        self.cv.notify_all();
    }

    /// Waits (at most `timeout`) until a switch after `seen` switches.
    pub(crate) fn wait_switch(&self, seen: u64, timeout: Duration) {
        let st = lock(&self.state);
        if st.switches == seen {
            drop(self.cv.wait_timeout(st, timeout));
        }
    }

    /// Returns once the frame of `seq` is on disk, leading a group commit if no one else is.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut st = lock(&self.state);
        loop {
            if let Some(kind) = st.failed {
                return Err(Error::io(
                    "write-ahead log failed earlier",
                    &self.paths[st.seg],
                    kind.into(),
                ));
            }
            if st.durable >= seq {
                return Ok(());
            }
            if st.leader || st.pending.is_empty() {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            let batches = std::mem::take(&mut st.pending);
            drop(st);
            let res = self.write_batches(&batches);
            st = lock(&self.state);
            st.leader = false;
            match res {
                Ok(()) => {
                    st.syncs += 1;
                    let last = batches.last().map_or(st.durable, |b| b.last);
                    st.durable = st.durable.max(last);
                }
                Err((path, e)) => {
                    st.failed = Some(e.kind());
                    self.cv.notify_all();
                    return Err(Error::io("write-ahead log", path, e));
                }
            }
            self.cv.notify_all();
        }
    }

    /// Writes batches in order, syncing a segment before any later batch touches the other one,
    /// so a durable frame never follows a lost one.
    fn write_batches(&self, batches: &[Batch]) -> Result<(), (PathBuf, io::Error)> {
        let mut dirty: Option<usize> = None;
        for b in batches {
            let file = &self.files[b.seg];
            let fail = |e| (self.paths[b.seg].clone(), e);
            if dirty.is_some_and(|d| d != b.seg) {
                let d = dirty.take().expect("checked");
                self.files[d]
                    .sync_data()
                    .map_err(|e| (self.paths[d].clone(), e))?;
            }
            if failpoint::triggers("wal.mid") {
                let cut = b.buf.len() / 2 + 3;
                file.write_all_at(&b.buf[..cut], b.off).map_err(fail)?;
                failpoint::crash("wal.mid");
            }
            file.write_all_at(&b.buf, b.off).map_err(fail)?;
            dirty = Some(b.seg);
        }
        if let Some(d) = dirty {
            self.files[d]
                .sync_data()
                .map_err(|e| (self.paths[d].clone(), e))?;
        }
        Ok(())
    }
}

/// Extends `file` to `len` bytes with written zeros (not a hole), then syncs it.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let have = file.metadata()?.len();
    if have >= len {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = have;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}
