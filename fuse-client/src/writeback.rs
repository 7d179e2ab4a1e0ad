//! Write-behind: a `write` request is copied into a buffer of its inode and answered at once; the
//! buffered bytes go to the OSDs later, in large pieces and many at a time, so a stream of 1 MiB
//! writes is not paced by one replicated OSD write per request.
//!
//! ```text
//!  write(ino, off, data) ──> space (semaphore: the mount's cap on buffered bytes; waits when full,
//!                             after starting every buffered write)
//!                       ──> runs of ino: contiguous ranges, merged with what they overlap or touch
//!                       ──> every run that reaches an object boundary is cut there and the part
//!                           before it starts: one task per piece, `FsClient::write`
//!  write_out(ino) ──> start every run of ino, wait for all writes started before
//!  launch_expired ──> start runs buffered for longer than the age limit (a timer calls it)
//! ```
//!
//! Order: each started write gets a sequence number per inode and waits for the earlier writes
//! it overlaps, so an older copy of a byte never lands after a newer one. Retries: a write the
//! cluster does not answer (timeouts, failovers) is sent again, every second, for up to the
//! mount's `write_retry`, holding its place in that order. Errors: a failed write
//! is remembered per inode and reported by the next flush (close) or fsync that asks for it
//! ([`WriteBack::failed`]), as a local file system reports a failed writeback; its data is
//! dropped. Reads do not look into the buffer: the caller writes out the inode first.

use bytes::{Bytes, BytesMut};
use cairn_client::FsClient;
use cairn_proto::fs::{Ino, InodeAttr};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

type Errno = i32;

/// A run grows in place up to this much before it is cut at an object boundary (so streams of
/// small appends do not reallocate their buffer over and over).
const RESERVE_MAX: usize = 4 << 20;
/// How often a writer waiting for buffer space starts what others buffered meanwhile.
const FULL_RECHECK: Duration = Duration::from_millis(50);
/// Pause before a deferred write the cluster did not answer is sent again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The write-behind buffers of one mount.
pub(crate) struct WriteBack {
    fs: FsClient,
    /// Writes start from the FUSE session thread too.
    rt: tokio::runtime::Handle,
    /// Free buffer space in bytes; a buffered byte holds a permit until its write finished.
    space: Semaphore,
    files: Mutex<HashMap<Ino, FileBuf>>,
    /// How long a write the cluster does not answer is retried.
    retry: Duration,
}

/// One inode's buffered and in-flight writes.
struct FileBuf {
    /// Layout (pool, chunk size) the data is written with.
    attr: InodeAttr,
    /// Buffered bytes by start offset: disjoint, never touching (touching runs are merged).
    runs: BTreeMap<u64, BytesMut>,
    /// When the oldest buffered byte of `runs` came.
    dirty_since: Option<Instant>,
    next_seq: u64,
    inflight: Vec<InFlight>,
    /// The first error of a deferred write not yet reported.
    error: Option<Errno>,
    /// Notified whenever a write of this inode ends.
    done: Arc<Notify>,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: u64,
    start: u64,
    end: u64,
}

impl FileBuf {
    fn idle(&self) -> bool {
        self.runs.is_empty() && self.inflight.is_empty() && self.error.is_none()
    }
}

/// Put `data` at `offset` into `runs`, overwriting what it overlaps and merging the runs it
/// touches. Returns the start of the run that now holds it and how many bytes were already
/// buffered under it (their space is free again).
fn insert(
    runs: &mut BTreeMap<u64, BytesMut>,
    offset: u64,
    data: &[u8],
    reserve: usize,
) -> (u64, usize) {
    let len = data.len();
    let (start, mut buf) = match runs.range(..=offset).next_back() {
        Some((&s, r)) if s + r.len() as u64 >= offset => (s, runs.remove(&s).expect("run")),
        _ => (offset, BytesMut::with_capacity(len.max(reserve))),
    };
    let at = (offset - start) as usize;
    let overlap = (buf.len() - at).min(len);
    buf[at..at + overlap].copy_from_slice(&data[..overlap]);
    buf.extend_from_slice(&data[overlap..]);
    let mut replaced = overlap;
    // Absorb the runs that start inside the new one or right at its end.
    loop {
        let end = start + buf.len() as u64;
        let Some(s) = runs.range(start + 1..=end).next().map(|(&s, _)| s) else {
            break;
        };
        let r = runs.remove(&s).expect("run");
        let r_end = s + r.len() as u64;
        if r_end > end {
            buf.extend_from_slice(&r[(end - s) as usize..]);
        }
        replaced += (r_end.min(end) - s) as usize;
    }
    runs.insert(start, buf);
    (start, replaced)
}

impl WriteBack {
    /// Buffers of at most `cap` bytes in all (at least one maximal FUSE write).
    pub fn new(fs: FsClient, rt: tokio::runtime::Handle, cap: usize, retry: Duration) -> WriteBack {
        WriteBack {
            fs,
            rt,
            retry,
            space: Semaphore::new(cap),
            files: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Ino, FileBuf>> {
        self.files.lock().expect("write-behind lock")
    }

    /// Buffer `data` at `offset` of the file `attr` names if there is room now (false: use
    /// [`WriteBack::write`]). Never waits, so the FUSE session thread may call it.
    pub fn try_write(self: &Arc<Self>, attr: &InodeAttr, offset: u64, data: &[u8]) -> bool {
        let Ok(n) = u32::try_from(data.len()) else {
            return false;
        };
        match self.space.try_acquire_many(n) {
            Ok(p) => p.forget(),
            Err(_) => return false,
        }
        self.buffer(attr, offset, data);
        true
    }

    /// Buffer `data` at `offset` of the file `attr` names; waits while the buffers are full.
    pub async fn write(self: &Arc<Self>, attr: &InodeAttr, offset: u64, data: &[u8]) {
        let n = u32::try_from(data.len()).expect("a FUSE write fits u32");
        loop {
            if let Ok(p) = self.space.try_acquire_many(n) {
                p.forget();
                break;
            }
            // Full: start everything buffered; the space comes back as those writes end. Start
            // again now and then what other writers buffered meanwhile.
            self.launch_all();
            let wait = tokio::time::timeout(FULL_RECHECK, self.space.acquire_many(n));
            if let Ok(p) = wait.await {
                p.expect("the semaphore is never closed").forget();
                break;
            }
        }
        self.buffer(attr, offset, data);
    }

    /// Put `data` into the runs of its inode (its space is taken) and start what is complete.
    fn buffer(self: &Arc<Self>, attr: &InodeAttr, offset: u64, data: &[u8]) {
        let chunk = u64::from(attr.chunk_size.max(1));
        let mut files = self.lock();
        let f = files.entry(attr.ino).or_insert_with(|| FileBuf {
            attr: attr.clone(),
            runs: BTreeMap::new(),
            dirty_since: None,
            next_seq: 0,
            inflight: Vec::new(),
            error: None,
            done: Arc::new(Notify::new()),
        });
        // Streams get room up to the end of the object; a single small write just its size.
        let to_boundary = (chunk - offset % chunk).min(RESERVE_MAX as u64) as usize;
        let reserve = if data.len() >= 64 << 10 {
            to_boundary
        } else {
            0
        };
        let (start, replaced) = insert(&mut f.runs, offset, data, reserve);
        f.dirty_since.get_or_insert_with(Instant::now);
        if replaced > 0 {
            self.space.add_permits(replaced);
        }
        // Everything before the last object boundary the run reaches is complete: start it.
        let run_end = start + f.runs[&start].len() as u64;
        let cut = run_end / chunk * chunk;
        if cut > start {
            let mut head = f.runs.remove(&start).expect("run");
            let tail = head.split_off((cut - start) as usize);
            if !tail.is_empty() {
                f.runs.insert(cut, tail);
            }
            self.launch(attr.ino, f, start, head.freeze());
        }
        if f.runs.is_empty() {
            f.dirty_since = None;
        }
    }

    /// Start writing `data` at `start` (its bytes already left `f.runs`).
    fn launch(self: &Arc<Self>, ino: Ino, f: &mut FileBuf, start: u64, data: Bytes) {
        let seq = f.next_seq;
        f.next_seq += 1;
        let end = start + data.len() as u64;
        f.inflight.push(InFlight { seq, start, end });
        let attr = f.attr.clone();
        let wb = self.clone();
        self.rt
            .spawn(async move { wb.write_piece(ino, seq, attr, start, data).await });
    }

    async fn write_piece(
        self: Arc<Self>,
        ino: Ino,
        seq: u64,
        attr: InodeAttr,
        start: u64,
        data: Bytes,
    ) {
        let len = data.len();
        let end = start + len as u64;
        self.wait_until(ino, |f| {
            !f.inflight
                .iter()
                .any(|w| w.seq < seq && w.start < end && start < w.end)
        })
        .await;
        let r = self.write_retrying(ino, &attr, start, data).await;
        {
            let mut files = self.lock();
            let f = files.get_mut(&ino).expect("a file with writes in flight");
            f.inflight.retain(|w| w.seq != seq);
            if let Err(e) = r {
                tracing::warn!(ino, offset = start, len, error = %e, "deferred write failed");
                f.error.get_or_insert(e.errno());
            }
            f.done.notify_waiters();
        }
        self.space.add_permits(len);
    }

    /// One piece to the cluster, tried again while the cluster does not answer (up to
    /// `retry`): only a write it refused or that outlived its retries is lost.
    async fn write_retrying(
        &self,
        ino: Ino,
        attr: &InodeAttr,
        start: u64,
        data: Bytes,
    ) -> Result<(), cairn_client::ClientError> {
        let began = Instant::now();
        let mut tries = 0u32;
        loop {
            match self.fs.write(attr, start, data.clone()).await {
                Err(e) if e.is_transient() && began.elapsed() < self.retry => {
                    tries += 1;
                    if tries == 1 {
                        tracing::warn!(ino, offset = start, error = %e, "deferred write delayed; retrying");
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(()) if tries > 0 => {
                    tracing::info!(
                        ino,
                        offset = start,
                        tries,
                        secs = began.elapsed().as_secs(),
                        "deferred write done after retries"
                    );
                    return Ok(());
                }
                r => return r,
            }
        }
    }

    /// Wait until `ready` holds for `ino` (or it has no buffer any more).
    async fn wait_until(&self, ino: Ino, ready: impl Fn(&FileBuf) -> bool) {
        loop {
            let done = match self.lock().get(&ino) {
                Some(f) if !ready(f) => f.done.clone(),
                _ => return,
            };
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A write that ended between the check and `enable` has notified nobody: look again.
            match self.lock().get(&ino) {
                Some(f) if !ready(f) => {}
                _ => return,
            }
            notified.await;
        }
    }

    /// Start every buffered run of `f`.
    fn launch_runs(self: &Arc<Self>, ino: Ino, f: &mut FileBuf) {
        for (start, data) in std::mem::take(&mut f.runs) {
            self.launch(ino, f, start, data.freeze());
        }
        f.dirty_since = None;
    }

    fn launch_all(self: &Arc<Self>) {
        let mut files = self.lock();
        for (&ino, f) in files.iter_mut() {
            self.launch_runs(ino, f);
        }
    }

    /// Start the runs of files whose oldest buffered byte is older than `age`.
    pub fn launch_expired(self: &Arc<Self>, age: Duration) {
        let mut files = self.lock();
        for (&ino, f) in files.iter_mut() {
            if f.dirty_since.is_some_and(|t| t.elapsed() >= age) {
                self.launch_runs(ino, f);
            }
        }
    }

    /// The inodes with buffered or in-flight writes.
    pub fn busy(&self) -> Vec<Ino> {
        self.lock()
            .iter()
            .filter(|(_, f)| !f.runs.is_empty() || !f.inflight.is_empty())
            .map(|(&ino, _)| ino)
            .collect()
    }

    /// Write out everything buffered for `ino` so far and wait until it (and every earlier write)
    /// is on the OSDs or failed.
    pub async fn write_out(self: &Arc<Self>, ino: Ino) {
        let upto = {
            let mut files = self.lock();
            let Some(f) = files.get_mut(&ino) else {
                return;
            };
            self.launch_runs(ino, f);
            f.next_seq
        };
        self.wait_until(ino, |f| f.inflight.iter().all(|w| w.seq >= upto))
            .await;
    }

    /// The error of a deferred write of `ino` not yet reported; `take`: it is being reported
    /// now. Forgets an inode with nothing left to do.
    pub fn failed(&self, ino: Ino, take: bool) -> Option<Errno> {
        let mut files = self.lock();
        let f = files.get_mut(&ino)?;
        let e = if take { f.error.take() } else { f.error };
        if f.idle() {
            files.remove(&ino);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(r: &BTreeMap<u64, BytesMut>) -> Vec<(u64, Vec<u8>)> {
        r.iter().map(|(&s, b)| (s, b.to_vec())).collect()
    }

    #[test]
    fn inserts_merge_overlapping_and_touching_runs() {
        let mut r = BTreeMap::new();
        assert_eq!(insert(&mut r, 10, b"abc", 0), (10, 0));
        // Appending touches the run: one run.
        assert_eq!(insert(&mut r, 13, b"de", 0), (10, 0));
        assert_eq!(runs_of(&r), [(10, b"abcde".to_vec())]);
        // A separate run, then one write that bridges both and overlaps each.
        assert_eq!(insert(&mut r, 20, b"xyz", 0), (20, 0));
        assert_eq!(insert(&mut r, 14, b"123456_", 0), (10, 1 + 1));
        assert_eq!(runs_of(&r), [(10, b"abcd123456_yz".to_vec())]);
        // Overwriting inside changes no length and frees the overlap.
        assert_eq!(insert(&mut r, 11, b"BC", 0), (10, 2));
        assert_eq!(runs_of(&r), [(10, b"aBCd123456_yz".to_vec())]);
        // A write before the run that reaches into it.
        assert_eq!(insert(&mut r, 8, b"--A", 0), (8, 1));
        assert_eq!(runs_of(&r), [(8, b"--ABCd123456_yz".to_vec())]);
        // A write that covers a whole run and more.
        let mut r = BTreeMap::new();
        insert(&mut r, 5, b"aa", 0);
        insert(&mut r, 9, b"bb", 0);
        assert_eq!(insert(&mut r, 0, &[b'z'; 20], 0), (0, 4));
        assert_eq!(runs_of(&r), [(0, vec![b'z'; 20])]);
        // A write just before a run touches it.
        let mut r = BTreeMap::new();
        insert(&mut r, 5, b"bb", 0);
        assert_eq!(insert(&mut r, 3, b"aa", 0), (3, 0));
        assert_eq!(runs_of(&r), [(3, b"aabb".to_vec())]);
    }

    #[test]
    fn random_writes_match_a_flat_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut runs = BTreeMap::new();
            let mut model = vec![None::<u8>; 256];
            let mut counted = 0usize;
            for _ in 0..20 {
                let off = rng.gen_range(0..200u64);
                let len = rng.gen_range(1..50usize);
                let byte = rng.gen::<u8>();
                let (_, replaced) = insert(&mut runs, off, &vec![byte; len], 0);
                counted += len - replaced;
                for m in &mut model[off as usize..off as usize + len] {
                    *m = Some(byte);
                }
            }
            let mut flat = vec![None::<u8>; 256];
            let mut prev_end = None;
            for (&s, b) in &runs {
                assert!(prev_end.is_none_or(|e| e < s), "runs touch or overlap");
                prev_end = Some(s + b.len() as u64);
                for (i, &v) in b.iter().enumerate() {
                    flat[s as usize + i] = Some(v);
                }
            }
            assert_eq!(flat, model);
            assert_eq!(counted, model.iter().filter(|m| m.is_some()).count());
        }
    }
}
