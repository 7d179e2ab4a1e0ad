//! [`NvDisk`]: the block device over the page pool, its write and read paths, the committer
//! thread, and recovery at open.
//!
//! Locks, always taken in this order: `state` (the write lock: sequence numbers, the snapshot
//! log, the snapshot overlay), then `pages` (readers share it; the committer holds it shared for
//! a whole disk transaction, while writers stay out of the pages by writing to the snapshot),
//! then `backups` (committer only). The WAL has its own lock, taken inside `state` to keep its
//! frames in sequence order.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backup::Backups;
use crate::codec::{self, INTENT_HEADER, KIND_INTENT, POOL_LOG};
use crate::config::{Config, PoolMode};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::mmap::Region;
use crate::pool::{self, Bitmap, Header, Layout, Origin, Pool};
use crate::wal::Wal;

/// How long a blocked writer sleeps before it checks again whether the committer failed.
const RECHECK: Duration = Duration::from_millis(100);

/// What an acknowledged write survives, by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Anonymous pool without `sync`: a write is durable only once a disk transaction that
    /// started after it has completed (`flush()`, or the committer's next period).
    AfterFlush,
    /// File pool (on /dev/shm) without `sync`: a write survives a crash of the process as soon
    /// as `write` returns; after power loss or a reboot the image is the last disk transaction.
    ProcessCrash,
    /// `sync` mode (write-ahead log fdatasync'ed before the ack), or a file pool with
    /// `pool_sync` on a pmem/DAX mount: a write survives power loss once `write` returns.
    PowerLoss,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write calls completed.
    pub writes: u64,
    /// Write pieces that arrived during a disk transaction and went to the snapshot buffer.
    pub snapshot_writes: u64,
    /// Disk transactions completed.
    pub transactions: u64,
    /// Pages written through step 2 and 3 (journal and target disk).
    pub pages_flushed: u64,
    /// Pages copied in step 1 (the other journal onto the target disk).
    pub redo_pages: u64,
    /// fdatasyncs of the write-ahead log (sync mode); fewer than `writes` when group commit
    /// gathered concurrent writes.
    pub wal_syncs: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    snapshot_writes: AtomicU64,
    transactions: AtomicU64,
    pages_flushed: AtomicU64,
    redo_pages: AtomicU64,
}

/// An NVRAM disk: a byte-addressed block device held in a memory page pool and made durable on
/// two backup files with two journals. `Send + Sync`; share it in an `Arc`.
pub struct NvDisk {
    inner: Arc<Inner>,
    committer: Option<JoinHandle<()>>,
}

struct WriteState {
    /// The pool's snapshot log region.
    log: Region,
    /// Bytes of `log` in use.
    log_used: usize,
    next_seq: u64,
    /// While a disk transaction runs: the new contents of every page written since its
    /// snapshot (the snapshot buffer, indexed for reads).
    overlay: BTreeMap<u64, Box<[u8]>>,
    snapshot: bool,
}

#[derive(Default)]
struct Control {
    requested: u64,
    completed: u64,
    kicked: bool,
    shutdown: bool,
    failed: Option<(&'static str, io::ErrorKind)>,
}

struct Inner {
    cfg: Config,
    layout: Layout,
    /// Largest piece of a write that goes through the pool log as one atomic intent.
    max_chunk: usize,
    header: Header,
    dirty: Bitmap,
    flushing: Bitmap,
    pages: RwLock<Region>,
    state: Mutex<WriteState>,
    /// Signalled when the snapshot log empties.
    space: Condvar,
    snapshot_active: AtomicBool,
    wal: Option<Wal>,
    backups: Mutex<Backups>,
    ctl: Mutex<Control>,
    ctl_cv: Condvar,
    failed: AtomicBool,
    counters: Counters,
    _pool_file: Option<std::fs::File>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn kind_of(e: &Error) -> io::ErrorKind {
    match e {
        Error::Io { source, .. } => source.kind(),
        Error::Corrupt { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    }
}

impl NvDisk {
    /// Opens the device: recovers the backups, maps the pool, rebuilds the image (from the
    /// surviving pool file, else from the newest whole backup), replays the write-ahead log in
    /// sync mode, runs one disk transaction if recovery changed anything, and starts the
    /// committer.
    pub fn open(cfg: Config) -> Result<NvDisk> {
        cfg.validate()?;
        let layout = Layout::new(cfg.size, cfg.page_size, cfg.snapshot_buffer);
        let (backups, rec) = Backups::open(&cfg.backup_dir, cfg.size, cfg.page_size)?;
        let instance = backups.instance();
        let (pool, origin) = Pool::open(&cfg.pool, layout, instance)?;
        let Pool {
            header,
            dirty,
            flushing,
            mut log,
            mut pages,
            file,
        } = pool;
        let ps = layout.page_size;
        let size = layout.size;
        let corrupt = |offset| Error::Corrupt {
            what: "intent outside the device",
            path: match &cfg.pool {
                PoolMode::File(p) => p.clone(),
                PoolMode::Anon => cfg.backup_dir.clone(),
            },
            offset,
        };

        let mut image_seq;
        match origin {
            Origin::Survived { applied_seq } => {
                image_seq = applied_seq;
                for (seq, off, range) in pool::log_intents(log.bytes(), applied_seq) {
                    if !in_device(off, range.len(), size) {
                        return Err(corrupt(off));
                    }
                    apply_direct(&dirty, pages.bytes_mut(), ps, off, &log.bytes()[range]);
                    image_seq = seq;
                }
                if image_seq < rec.seq {
                    tracing::warn!(
                        pool_seq = image_seq,
                        backup_seq = rec.seq,
                        "pool file is older than the backups; loading the backup image"
                    );
                    backups.load_image(rec.disk, pages.bytes_mut())?;
                    dirty.clear_all();
                    flushing.clear_all();
                    log.bytes_mut().fill(0);
                    image_seq = rec.seq;
                } else {
                    // Pages of a transaction that may not have completed go out again.
                    flushing.move_into(&dirty);
                    tracing::info!(seq = image_seq, "pool survived; image taken from it");
                }
                header.set_applied_seq(image_seq);
            }
            Origin::Fresh => {
                backups.load_image(rec.disk, pages.bytes_mut())?;
                image_seq = rec.seq;
                header.seal(layout, instance, image_seq);
            }
        }

        let mut max_seen = image_seq;
        let wal = if cfg.sync {
            let wal = Wal::open(&cfg.backup_dir, cfg.wal_segment_size)?;
            let (records, seen) = wal.recover(image_seq)?;
            for r in &records {
                if !in_device(r.offset, r.data.len(), size) {
                    return Err(corrupt(r.offset));
                }
                apply_direct(&dirty, pages.bytes_mut(), ps, r.offset, &r.data);
                header.set_applied_seq(r.seq);
            }
            if !records.is_empty() {
                tracing::info!(writes = records.len(), "replayed the write-ahead log");
            }
            max_seen = max_seen.max(seen);
            Some(wal)
        } else {
            None
        };
        if cfg.pool_sync {
            let sync = pages
                .sync(0, size as usize)
                .and_then(|()| dirty.sync())
                .and_then(|()| flushing.sync())
                .and_then(|()| header.sync());
            sync.map_err(|e| Error::io("msync pool", &cfg.backup_dir, e))?;
        }

        let max_chunk = (layout.log_bytes - codec::HEADER - INTENT_HEADER) & !7;
        let inner = Arc::new(Inner {
            layout,
            max_chunk,
            header,
            dirty,
            flushing,
            pages: RwLock::new(pages),
            state: Mutex::new(WriteState {
                log,
                log_used: 0,
                next_seq: max_seen + 1,
                overlay: BTreeMap::new(),
                snapshot: false,
            }),
            space: Condvar::new(),
            snapshot_active: AtomicBool::new(false),
            wal,
            backups: Mutex::new(backups),
            ctl: Mutex::new(Control::default()),
            ctl_cv: Condvar::new(),
            failed: AtomicBool::new(false),
            counters: Counters::default(),
            _pool_file: file,
            cfg,
        });
        // Whatever recovery replayed goes to the backups before anything new is accepted; only
        // then may the write-ahead log start over.
        inner.commit()?;
        if let Some(wal) = &inner.wal {
            wal.reset();
        }
        let worker = Arc::clone(&inner);
        let committer = std::thread::Builder::new()
            .name("nvdisk-committer".into())
            .spawn(move || worker.run_committer())
            .map_err(|e| Error::io("spawn committer", &inner.cfg.backup_dir, e))?;
        Ok(NvDisk {
            inner,
            committer: Some(committer),
        })
    }

    /// Device size in bytes.
    pub fn len(&self) -> u64 {
        self.inner.layout.size
    }

    /// Always false: a device has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Block (page) size in bytes.
    pub fn block_size(&self) -> u32 {
        self.inner.layout.page_size as u32
    }

    /// Largest write that is atomic across a crash: it appears whole or not at all. Longer writes
    /// are applied in pieces of this size, each atomic.
    pub fn max_atomic_write(&self) -> usize {
        self.inner.max_chunk
    }

    /// What an acknowledged write survives under this configuration.
    pub fn durability(&self) -> Durability {
        let cfg = &self.inner.cfg;
        match (&cfg.pool, cfg.sync || cfg.pool_sync) {
            (_, true) => Durability::PowerLoss,
            (PoolMode::File(_), false) => Durability::ProcessCrash,
            (PoolMode::Anon, false) => Durability::AfterFlush,
        }
    }

    /// The configuration the device runs with.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            writes: get(&c.writes),
            snapshot_writes: get(&c.snapshot_writes),
            transactions: get(&c.transactions),
            pages_flushed: get(&c.pages_flushed),
            redo_pages: get(&c.redo_pages),
            wal_syncs: self.inner.wal.as_ref().map_or(0, |w| w.syncs()),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_zero_copy(offset, buf.len(), |bytes| buf.copy_from_slice(bytes))
    }

    /// Calls `f` with the `len` bytes at `offset`. Outside a disk transaction `f` sees the pool's
    /// own memory (zero copy; writers wait while `f` runs, so keep it short); during one, pages
    /// written since the snapshot live in the snapshot buffer and `f` gets an assembled copy, as
    /// in the paper, where zero copy is off while the committer runs.
    pub fn read_zero_copy<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.inner.check_range(offset, len)?;
        let at = offset as usize;
        if !self.inner.snapshot_active.load(Ordering::SeqCst) {
            let pages = read_lock(&self.inner.pages);
            return Ok(f(&pages.bytes()[at..at + len]));
        }
        let mut copy = vec![0u8; len];
        {
            let st = lock(&self.inner.state);
            let pages = read_lock(&self.inner.pages);
            let ps = self.inner.layout.page_size;
            let mut done = 0;
            while done < len {
                let pos = at + done;
                let page = (pos / ps) as u64;
                let in_page = pos % ps;
                let n = (ps - in_page).min(len - done);
                let src = match st.overlay.get(&page) {
                    Some(p) => &p[in_page..in_page + n],
                    None => &pages.bytes()[pos..pos + n],
                };
                copy[done..done + n].copy_from_slice(src);
                done += n;
            }
        }
        Ok(f(&copy))
    }

    /// Writes `data` at `offset`. Returns once the write is as durable as [`NvDisk::durability`]
    /// says; in sync mode that includes the fdatasync of its write-ahead log record, shared with
    /// concurrent writers (group commit).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let inner = &self.inner;
        inner.check_range(offset, data.len())?;
        let mut last = None;
        for (i, piece) in data.chunks(inner.max_chunk).enumerate() {
            last = Some(inner.write_piece(offset + (i * inner.max_chunk) as u64, piece)?);
        }
        if let (Some(wal), Some(seq)) = (&inner.wal, last) {
            wal.wait_durable(seq)?;
        }
        inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs a disk transaction now and waits for it: every write acknowledged before the call is
    /// then in a backup image.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        let mut ctl = lock(&inner.ctl);
        ctl.requested += 1;
        let mine = ctl.requested;
        inner.ctl_cv.notify_all();
        loop {
            if let Some((step, kind)) = ctl.failed {
                return Err(Error::CommitterFailed { step, kind });
            }
            if ctl.completed >= mine {
                return Ok(());
            }
            if ctl.shutdown {
                return Err(Error::CommitterFailed {
                    step: "shutdown",
                    kind: io::ErrorKind::BrokenPipe,
                });
            }
            ctl = inner.ctl_cv.wait(ctl).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the committer after a last disk transaction, reporting its failure if any.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(handle) = self.committer.take() else {
            return Ok(());
        };
        {
            let mut ctl = lock(&self.inner.ctl);
            ctl.shutdown = true;
            self.inner.ctl_cv.notify_all();
        }
        if handle.join().is_err() {
            tracing::error!("nvdisk committer panicked");
        }
        self.inner.check_failed()
    }
}

impl Drop for NvDisk {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "nvdisk closed with a failed committer");
        }
    }
}

fn in_device(offset: u64, len: usize, size: u64) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

/// Applies a recovered write straight to the pages (recovery only, single-threaded).
fn apply_direct(dirty: &Bitmap, pages: &mut [u8], ps: usize, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let ps = ps as u64;
    dirty.set_range(offset / ps, (offset + data.len() as u64 - 1) / ps);
    let at = offset as usize;
    pages[at..at + data.len()].copy_from_slice(data);
}

impl Inner {
    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        if in_device(offset, len, self.layout.size) {
            Ok(())
        } else {
            Err(Error::OutOfRange {
                offset,
                len: len as u64,
                size: self.layout.size,
            })
        }
    }

    fn check_failed(&self) -> Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match lock(&self.ctl).failed {
            Some((step, kind)) => Err(Error::CommitterFailed { step, kind }),
            None => Ok(()),
        }
    }

    fn kick(&self) {
        lock(&self.ctl).kicked = true;
        self.ctl_cv.notify_all();
    }

    /// One atomic piece of a write: its intent into the pool's snapshot log (and the WAL), then
    /// into the pages, or into the snapshot overlay while a transaction runs. Returns its
    /// sequence number.
    fn write_piece(&self, offset: u64, data: &[u8]) -> Result<u64> {
        let need = codec::frame_len(INTENT_HEADER + data.len());
        let log_cap = self.layout.log_bytes;
        let mut st = lock(&self.state);
        let seq = loop {
            self.check_failed()?;
            if st.log_used + need > log_cap {
                // Only while a transaction runs: wait for it to end and empty the log.
                st = self
                    .space
                    .wait_timeout(st, RECHECK)
                    .map_or_else(|e| e.into_inner().0, |r| r.0);
                continue;
            }
            let seq = st.next_seq;
            if let Some(wal) = &self.wal {
                if let Err(seen) = wal.try_append(seq, offset, data) {
                    drop(st);
                    self.kick();
                    wal.wait_switch(seen, RECHECK);
                    st = lock(&self.state);
                    continue;
                }
                if wal.fill_percent() >= 50 {
                    self.kick();
                }
            }
            break seq;
        };
        st.next_seq += 1;

        // The intent: once whole in the log, the write survives a process crash.
        let at = st.log_used;
        let parts: [&[u8]; 3] = [&seq.to_be_bytes(), &offset.to_be_bytes(), data];
        if failpoint::triggers("pool.log.mid") {
            let mut frame = Vec::new();
            codec::push_frame(&mut frame, POOL_LOG, KIND_INTENT, &parts);
            let cut = frame.len() / 2 + 5;
            st.log.bytes_mut()[at..at + cut].copy_from_slice(&frame[..cut]);
            failpoint::crash("pool.log.mid");
        }
        codec::write_frame(&mut st.log.bytes_mut()[at..], POOL_LOG, KIND_INTENT, &parts);
        if self.cfg.pool_sync {
            st.log
                .sync(at, need)
                .map_err(|e| Error::io("msync pool log", &self.cfg.backup_dir, e))?;
        }
        st.log_used += need;

        // Dirty bits before the bytes: a crash between leaves a page marked, never one changed
        // and unmarked.
        let ps = self.layout.page_size;
        let first = offset / ps as u64;
        let last = (offset + data.len().max(1) as u64 - 1) / ps as u64;
        self.dirty.set_range(first, last);
        if self.cfg.pool_sync {
            self.dirty
                .sync_range(first, last)
                .map_err(|e| Error::io("msync pool bitmap", &self.cfg.backup_dir, e))?;
        }

        if st.snapshot {
            let pages = read_lock(&self.pages);
            for page in first..=last {
                let start = page as usize * ps;
                let copy = st
                    .overlay
                    .entry(page)
                    .or_insert_with(|| pages.bytes()[start..start + ps].into());
                let from = (offset as usize).max(start);
                let to = (offset as usize + data.len()).min(start + ps);
                let src = from - offset as usize;
                copy[from - start..to - start].copy_from_slice(&data[src..src + (to - from)]);
            }
            self.counters
                .snapshot_writes
                .fetch_add(1, Ordering::Relaxed);
            return Ok(seq);
        }

        let at = offset as usize;
        {
            let mut pages = write_lock(&self.pages);
            let dst = &mut pages.bytes_mut()[at..at + data.len()];
            if failpoint::triggers("pool.apply.mid") {
                let cut = data.len() / 2;
                dst[..cut].copy_from_slice(&data[..cut]);
                failpoint::crash("pool.apply.mid");
            }
            dst.copy_from_slice(data);
            if self.cfg.pool_sync {
                pages
                    .sync(at, data.len())
                    .map_err(|e| Error::io("msync pool", &self.cfg.backup_dir, e))?;
            }
        }
        self.header.set_applied_seq(seq);
        if self.cfg.pool_sync {
            self.header
                .sync()
                .map_err(|e| Error::io("msync pool", &self.cfg.backup_dir, e))?;
        }
        st.log_used = 0;
        Ok(seq)
    }

    fn run_committer(&self) {
        let interval = self.cfg.flush_interval();
        let mut due = Instant::now() + interval;
        loop {
            let (target, shutdown) = {
                let mut ctl = lock(&self.ctl);
                loop {
                    let now = Instant::now();
                    if ctl.shutdown || ctl.kicked || ctl.requested > ctl.completed || now >= due {
                        break;
                    }
                    ctl = self
                        .ctl_cv
                        .wait_timeout(ctl, due - now)
                        .map_or_else(|e| e.into_inner().0, |r| r.0);
                }
                ctl.kicked = false;
                (ctl.requested, ctl.shutdown)
            };
            let res = self.commit();
            due = Instant::now() + interval;
            let mut ctl = lock(&self.ctl);
            match res {
                Ok(()) => ctl.completed = ctl.completed.max(target),
                Err(e) => {
                    tracing::error!(error = %e, "disk transaction failed; nvdisk stops accepting writes");
                    ctl.failed = Some(("disk transaction", kind_of(&e)));
                    self.failed.store(true, Ordering::Release);
                }
            }
            self.ctl_cv.notify_all();
            self.space.notify_all();
            if shutdown || ctl.failed.is_some() {
                return;
            }
        }
    }

    /// One disk transaction, if any page is dirty: snapshot, the three steps, then the snapshot
    /// buffer goes back into the pool.
    fn commit(&self) -> Result<()> {
        let (list, seq_cur) = {
            let mut st = lock(&self.state);
            self.dirty.move_into(&self.flushing);
            let list = self.flushing.pages();
            if list.is_empty() {
                return Ok(());
            }
            if self.cfg.pool_sync {
                self.flushing
                    .sync()
                    .and_then(|()| self.dirty.sync())
                    .map_err(|e| Error::io("msync pool bitmap", &self.cfg.backup_dir, e))?;
            }
            if let Some(wal) = &self.wal {
                wal.switch();
            }
            st.snapshot = true;
            self.snapshot_active.store(true, Ordering::SeqCst);
            (list, st.next_seq - 1)
        };
        let started = Instant::now();
        let txn = {
            let pages = read_lock(&self.pages);
            lock(&self.backups).transaction(pages.bytes(), &list, seq_cur)?
        };
        self.flushing.clear_all();
        self.end_snapshot()?;
        let c = &self.counters;
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.pages_flushed.fetch_add(txn.pages, Ordering::Relaxed);
        c.redo_pages.fetch_add(txn.redo_pages, Ordering::Relaxed);
        tracing::debug!(
            pages = txn.pages,
            redo = txn.redo_pages,
            seq = seq_cur,
            took_ms = started.elapsed().as_millis() as u64,
            "disk transaction complete"
        );
        Ok(())
    }

    /// Folds the snapshot buffer into the pages and reopens them to writers.
    fn end_snapshot(&self) -> Result<()> {
        let mut st = lock(&self.state);
        let overlay = std::mem::take(&mut st.overlay);
        if !overlay.is_empty() {
            let ps = self.layout.page_size;
            let mut pages = write_lock(&self.pages);
            for (page, bytes) in &overlay {
                let at = *page as usize * ps;
                pages.bytes_mut()[at..at + ps].copy_from_slice(bytes);
                if self.cfg.pool_sync {
                    pages
                        .sync(at, ps)
                        .map_err(|e| Error::io("msync pool", &self.cfg.backup_dir, e))?;
                }
            }
        }
        failpoint::hit("flush.end");
        self.header.set_applied_seq(st.next_seq - 1);
        if self.cfg.pool_sync {
            self.header
                .sync()
                .map_err(|e| Error::io("msync pool", &self.cfg.backup_dir, e))?;
        }
        st.log_used = 0;
        st.snapshot = false;
        self.snapshot_active.store(false, Ordering::SeqCst);
        self.space.notify_all();
        Ok(())
    }
}
