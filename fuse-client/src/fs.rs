//! The `fuser::Filesystem` over [`FsClient`]. Every request that needs the cluster is answered
//! from a tokio task, so the session loop never waits on the network and slow requests (a
//! blocking lock, a large read) do not hold up others. Errors are errnos (`ClientError::errno`).
//!
//! Writes go to the write-behind buffers ([`WriteBack`]) unless the file was opened `O_SYNC`,
//! `O_DSYNC` or `O_DIRECT`; one that finds room is answered on the session thread itself.
//! Before anything that must see the data on the OSDs (a read, a truncate, close, fsync) the
//! inode's buffer is written out; close and fsync also commit the size and report a failed
//! deferred write.

use crate::state::{DirListing, Handles, PendingSize};
use crate::writeback::WriteBack;
use crate::{ttl_ms, MountOptions};
use bytes::Bytes;
use cairn_client::{ClientError, FsClient, Purger, SetAttrs};
use cairn_proto::fs::{
    DirEntry, FileKind, FreedFile, FsError, Ino, InodeAttr, LockKind, LockSpec, NsOp, NsResult,
    SetTime, XattrFlag, MAX_FILE_SIZE, NAME_MAX,
};
use fuser::consts::{
    FUSE_AUTO_INVAL_DATA, FUSE_FLOCK_LOCKS, FUSE_PARALLEL_DIROPS, FUSE_POSIX_LOCKS,
};
use fuser::{
    FileAttr, FileType, KernelConfig, Notifier, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// `st_blksize`: tools size their buffers by it (cp, tar); large writes mean fewer FUSE requests.
const BLKSIZE: u32 = 1 << 20;
/// Entries fetched per readdir page from the metadata service.
const DIR_PAGE: u32 = 1000;
/// `OFFSET_MAX`: the kernel's "to the end of file" in lock ranges.
const OFFSET_MAX: u64 = i64::MAX as u64;
/// Largest FUSE write request (`max_write`); the write-behind buffers hold at least two.
const MAX_WRITE: u32 = 1 << 20;
const MIN_WRITE_BEHIND: usize = 2 * MAX_WRITE as usize;
/// File capabilities: the xattr the kernel looks up before each write to a file.
const CAPS_XATTR: &str = "security.capability";

type Errno = i32;

/// The FUSE file system of one mount.
pub struct CairnFs {
    rt: tokio::runtime::Handle,
    inner: Arc<Inner>,
}

struct Inner {
    fs: FsClient,
    session: u64,
    opts: MountOptions,
    handles: Handles,
    /// Write-behind buffers (`None`: every write goes through at once).
    wb: Option<Arc<WriteBack>>,
    notifier: Arc<OnceLock<Notifier>>,
    /// Data of removed files goes to the reaper, which deletes it after a grace period.
    reaper: mpsc::UnboundedSender<FreedFile>,
    /// Blocking lock requests in progress, by FUSE request id: an INTERRUPT of one ends it.
    waits: std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

impl CairnFs {
    /// `notifier` is filled in once the session exists (it comes from the session), and used to
    /// tell the kernel to drop stale cached attributes.
    pub fn new(
        fs: FsClient,
        rt: tokio::runtime::Handle,
        session: u64,
        opts: MountOptions,
        notifier: Arc<OnceLock<Notifier>>,
        reaper: mpsc::UnboundedSender<FreedFile>,
    ) -> CairnFs {
        let wb = (opts.write_behind > 0).then(|| {
            Arc::new(WriteBack::new(
                fs.clone(),
                rt.clone(),
                opts.write_behind.max(MIN_WRITE_BEHIND),
                opts.write_retry,
            ))
        });
        if let Some(wb) = &wb {
            // Start what sat in the buffers too long; ends with the file system.
            let wb = Arc::downgrade(wb);
            let age = opts.write_behind_age;
            rt.spawn(async move {
                let mut tick = tokio::time::interval((age / 2).max(Duration::from_millis(10)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match wb.upgrade() {
                        Some(wb) => wb.launch_expired(age),
                        None => break,
                    }
                }
            });
        }
        CairnFs {
            rt,
            inner: Arc::new(Inner {
                fs,
                session,
                opts,
                handles: Handles::default(),
                wb,
                notifier,
                reaper,
                waits: Default::default(),
            }),
        }
    }

    /// Run `f` on the runtime with the shared state.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.inner.clone()));
    }
}

fn errno(e: ClientError) -> Errno {
    let n = e.errno();
    if n == libc::EIO {
        tracing::warn!(error = %e, "cluster error");
    }
    n
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    let s = name.to_str().ok_or(libc::EINVAL)?;
    if s.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(s.to_string())
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        }),
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &InodeAttr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn lock_kind(typ: i32) -> Result<Option<LockKind>, Errno> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Shared)),
        libc::F_WRLCK => Ok(Some(LockKind::Exclusive)),
        libc::F_UNLCK => Ok(None),
        _ => Err(libc::EINVAL),
    }
}

/// A kernel lock end (inclusive, `OFFSET_MAX` = to the end) as the namespace's.
fn lock_end(end: u64) -> u64 {
    if end >= OFFSET_MAX {
        u64::MAX
    } else {
        end
    }
}

impl Inner {
    fn waits(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>>
    {
        self.waits.lock().expect("waits lock")
    }

    fn entry_ttl(&self) -> Duration {
        self.opts.entry_ttl
    }

    async fn getattr(&self, ino: Ino) -> Result<InodeAttr, Errno> {
        let a = self.fs.getattr(ino).await.map_err(errno)?;
        Ok(self.handles.view(a))
    }

    /// Write out the buffered data of `ino` (see [`WriteBack::write_out`]).
    async fn write_out(&self, ino: Ino) {
        if let Some(wb) = &self.wb {
            wb.write_out(ino).await;
        }
    }

    /// Put this mount's writes to `ino` so far on the OSDs and commit the size and mtime they
    /// change, both at once: they answer when both are done, so what a close or fsync
    /// acknowledged is whole for the next open anywhere. `report`: return (and so clear) the
    /// error of a failed deferred write; otherwise it stays for the next close or fsync.
    async fn sync_file(&self, ino: Ino, report: bool) -> Result<(), Errno> {
        // Taken before the write-out starts, so everything the size covers is in it.
        let pending = self.handles.take_pending(ino);
        let commit = async {
            match pending {
                Some(p) => self.commit_size(ino, p).await,
                None => Ok(()),
            }
        };
        let Some(wb) = &self.wb else {
            return commit.await;
        };
        let ((), committed) = tokio::join!(wb.write_out(ino), commit);
        match wb.failed(ino, report) {
            Some(e) if report => Err(e),
            _ => committed,
        }
    }

    /// Commit a size and mtime change of `ino` taken from [`Handles::take_pending`].
    async fn commit_size(&self, ino: Ino, p: PendingSize) -> Result<(), Errno> {
        match self.fs.extend(ino, p.size).await {
            Ok(a) => {
                self.handles.sized(ino, a.size, false);
                Ok(())
            }
            Err(e) if e.fs() == Some(FsError::Stale) => {
                // Removed through another client (this mount keeps what it removes while
                // open): what was written here since is lost, so say so, and delete the
                // objects those writes made again.
                if p.size > 0 {
                    if let Some(attr) = self.handles.any_file(ino) {
                        self.free(FreedFile {
                            ino,
                            size: p.size,
                            pool: attr.pool,
                            chunk_size: attr.chunk_size,
                        })
                        .await;
                    }
                }
                Err(libc::ESTALE)
            }
            Err(e) => {
                self.handles.restore(ino, p);
                Err(errno(e))
            }
        }
    }

    /// Free the data of a file whose last link went, now or on its last close here.
    async fn freed(&self, f: Option<FreedFile>) {
        if let Some(f) = f.and_then(|f| self.handles.unlinked(f)) {
            self.free(f).await;
        }
    }

    async fn free(&self, f: FreedFile) {
        if let Err(f) = self.reaper.send(f) {
            // Unmounting: no reaper any more, delete now.
            free_now(&self.fs, f.0).await;
        }
    }

    /// Apply a namespace change; the directory attributes its answer carries are kept for the
    /// kernel's next look at the directory ([`Handles::changed_dir`]).
    async fn ns_change(&self, op: NsOp) -> Result<NsResult, Errno> {
        let r = self.fs.apply(op).await.map_err(errno)?;
        match &r {
            NsResult::Entry { dir: Some(d), .. } | NsResult::Unlinked { dir: Some(d), .. } => {
                self.handles.dir_changed(d.clone())
            }
            _ => {}
        }
        Ok(r)
    }

    /// [`Inner::ns_change`] for an op that answers with an entry (create, link).
    async fn entry(&self, op: NsOp) -> Result<(InodeAttr, bool), Errno> {
        match self.ns_change(op).await? {
            NsResult::Entry { attr, created, .. } => Ok((attr, created)),
            other => {
                tracing::warn!(?other, "unexpected namespace answer");
                Err(libc::EIO)
            }
        }
    }

    /// [`Inner::ns_change`] for an op that removes an entry (unlink, rmdir).
    async fn remove(&self, op: NsOp) -> Result<Option<FreedFile>, Errno> {
        match self.ns_change(op).await? {
            NsResult::Unlinked { freed, .. } => Ok(freed),
            other => {
                tracing::warn!(?other, "unexpected namespace answer");
                Err(libc::EIO)
            }
        }
    }

    async fn create_node(
        &self,
        req: (u32, u32),
        parent: Ino,
        name: String,
        kind: FileKind,
        mode: u32,
        exclusive: bool,
    ) -> Result<(InodeAttr, bool), Errno> {
        let op = NsOp::Create {
            parent,
            name,
            kind,
            mode: mode & 0o7777,
            uid: req.0,
            gid: req.1,
            target: None,
            exclusive,
        };
        let (attr, created) = self.entry(op).await?;
        if created {
            // A new inode has no extended attributes: the kernel's `security.capability` check
            // before the first write needs no round trip.
            self.handles.set_without_caps(attr.ino, true);
        }
        Ok((attr, created))
    }

    async fn setattr(&self, ino: Ino, set: SetAttrs) -> Result<InodeAttr, Errno> {
        if set.size.is_some() || set.mtime.is_some() {
            // Pending writes past the old end must count before the size moves (a truncate up
            // would clear them, a truncate down must cut buffered bytes too), and their mtime
            // must not land after an explicit one (cp -a sets times before it closes).
            self.sync_file(ino, false).await?;
        }
        let a = self.fs.setattr(ino, set).await.map_err(errno)?;
        self.handles.forget_dir(ino);
        if set.size.is_some() {
            self.handles.sized(ino, a.size, true);
        }
        Ok(self.handles.view(a))
    }

    async fn open(&self, ino: Ino) -> Result<(u64, u32), Errno> {
        // Close-to-open: fresh attributes on every open.
        let attr = self.fs.getattr(ino).await.map_err(errno)?;
        if attr.kind != FileKind::File {
            return Err(if attr.kind == FileKind::Dir {
                libc::EISDIR
            } else {
                libc::ELOOP
            });
        }
        let (fh, _, stale) = self.handles.open_file(attr);
        if stale {
            if let Some(n) = self.notifier.get() {
                // Offset -1: attributes only (the pages go anyway without FOPEN_KEEP_CACHE).
                let _ = n.inval_inode(ino, -1, 0);
            }
            Ok((fh, 0))
        } else {
            Ok((fh, fuser::consts::FOPEN_KEEP_CACHE))
        }
    }

    async fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let mut attr = self.handles.file(fh).ok_or(libc::EBADF)?;
        self.write_out(ino).await;
        attr.size = self.handles.read_size(ino).unwrap_or(attr.size);
        self.fs
            .read(&attr, offset, u64::from(size))
            .await
            .map_err(errno)
    }

    /// A write buffered without waiting, from the session thread: `None` when it must go the
    /// long way ([`Inner::write`]): no room in the buffers, a write-through file, an error.
    fn write_now(&self, ino: Ino, fh: u64, offset: u64, data: &[u8], flags: i32) -> Option<u32> {
        let wb = self.wb.as_ref()?;
        let n = data.len() as u64;
        if flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT) != 0
            || offset.saturating_add(n) > MAX_FILE_SIZE
        {
            return None;
        }
        let attr = self.handles.file(fh)?;
        if !wb.try_write(&attr, offset, data) {
            return None;
        }
        self.handles.wrote(ino, offset + n);
        Some(n as u32)
    }

    /// A write: buffered, or at once for a file opened `O_SYNC`, `O_DSYNC` or `O_DIRECT`
    /// (`flags`, the open flags), which also commits the size for `O_SYNC`/`O_DSYNC`.
    async fn write(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        data: Bytes,
        flags: i32,
    ) -> Result<u32, Errno> {
        let attr = self.handles.file(fh).ok_or(libc::EBADF)?;
        let n = data.len() as u64;
        if offset.saturating_add(n) > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        match &self.wb {
            Some(wb) if !sync && flags & libc::O_DIRECT == 0 => {
                wb.write(&attr, offset, &data).await;
            }
            _ => {
                // Bytes buffered earlier must not land over these later.
                self.write_out(ino).await;
                self.fs.write(&attr, offset, data).await.map_err(errno)?;
            }
        }
        self.handles.wrote(ino, offset + n);
        if sync {
            self.sync_file(ino, true).await?;
        }
        Ok(n as u32)
    }

    /// A `close`: write out the data, commit the size, report a failed deferred write, and drop
    /// the closing process's POSIX locks on the file (POSIX says any close does; the kernel
    /// leaves that to the file system when it handles locks).
    async fn flush(&self, ino: Ino, owner: u64) -> Result<(), Errno> {
        let committed = self.sync_file(ino, true).await;
        if self.handles.take_locker(ino, owner) {
            let spec = self.lock_spec(owner, 0, 0, u64::MAX);
            if let Err(e) = self.fs.set_lock(ino, spec, None).await {
                tracing::warn!(ino, error = %e, "could not release POSIX locks on close");
            }
        }
        committed
    }

    async fn release(&self, ino: Ino, fh: u64, flock_owner: Option<u64>) -> Result<(), Errno> {
        // Writes through a shared mapping may come after the last flush. Nobody hears of an
        // error here any more (the kernel drops release's answer), so it is logged.
        let committed = self.sync_file(ino, true).await;
        if let Err(e) = committed {
            tracing::warn!(ino, errno = e, "writes failed after the last close");
        }
        if let Some(owner) = flock_owner.filter(|o| self.handles.take_locker(ino, *o)) {
            let spec = self.lock_spec(owner, 0, 0, u64::MAX);
            if let Err(e) = self.fs.set_lock(ino, spec, None).await {
                tracing::warn!(ino, error = %e, "could not release a flock");
            }
        }
        if let Some(f) = self.handles.close_file(fh) {
            self.free(f).await;
        }
        committed
    }

    /// `fallocate(2)`. The cluster is thin (objects are made on first write), so there is
    /// nothing to reserve: mode 0 grows the size (the new range reads as zeros, as a truncate
    /// up would leave it), `KEEP_SIZE` alone is done, `PUNCH_HOLE` and `ZERO_RANGE` make the
    /// range read as zeros (`ZERO_RANGE` may grow the size). The kernel has checked the
    /// process's file size limit before asking.
    async fn fallocate(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        const KNOWN: i32 =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !KNOWN != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let attr = self.handles.file(fh).ok_or(libc::EBADF)?;
        // What this mount buffered must land before the range changes under it.
        self.sync_file(ino, false).await?;
        let size = self.getattr(ino).await?.size;
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 && offset < size {
            self.fs
                .punch(&attr, offset, end.min(size) - offset)
                .await
                .map_err(errno)?;
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
            let set = SetAttrs {
                size: Some(end),
                ..SetAttrs::default()
            };
            self.setattr(ino, set).await?;
        }
        Ok(())
    }

    async fn opendir(&self, ino: Ino) -> Result<u64, Errno> {
        let parent = self.fs.lookup(ino, "..").await.map_err(errno)?;
        Ok(self.handles.open_dir(DirListing {
            ino,
            parent: parent.ino,
            entries: Vec::new(),
            more: true,
        }))
    }

    /// Fill `reply` from position `offset` of the listing (0 `.`, 1 `..`, then the entries).
    async fn readdir(&self, fh: u64, offset: i64, reply: &mut ReplyDirectory) -> Result<(), Errno> {
        let mut pos = usize::try_from(offset).map_err(|_| libc::EINVAL)?;
        if pos == 0 {
            // rewinddir: see entries made since the directory was opened.
            self.handles
                .with_dir(fh, |d| {
                    d.entries.clear();
                    d.more = true;
                })
                .ok_or(libc::EBADF)?;
        }
        loop {
            let (ino, parent, window, more, after) = self
                .handles
                .with_dir(fh, |d| {
                    let window: Vec<DirEntry> = d
                        .entries
                        .iter()
                        .skip(pos.saturating_sub(2))
                        .take(256)
                        .cloned()
                        .collect();
                    let after = d.entries.last().map(|e| e.name.clone());
                    (d.ino, d.parent, window, d.more, after)
                })
                .ok_or(libc::EBADF)?;
            if pos < 2 {
                let (e_ino, name) = if pos == 0 { (ino, ".") } else { (parent, "..") };
                if reply.add(e_ino, pos as i64 + 1, FileType::Directory, name) {
                    return Ok(());
                }
                pos += 1;
                continue;
            }
            if window.is_empty() {
                if !more {
                    return Ok(());
                }
                let (page, more) = self.fs.readdir(ino, after, DIR_PAGE).await.map_err(errno)?;
                self.handles.with_dir(fh, |d| {
                    d.entries.extend(page);
                    d.more = more;
                });
                continue;
            }
            for e in window {
                if reply.add(e.ino, pos as i64 + 1, file_type(e.kind), &e.name) {
                    return Ok(());
                }
                pos += 1;
            }
        }
    }

    fn lock_spec(&self, owner: u64, pid: u32, start: u64, end: u64) -> LockSpec {
        LockSpec {
            session: self.session,
            owner,
            pid,
            start,
            end,
        }
    }

    async fn setlk(
        &self,
        ino: Ino,
        spec: LockSpec,
        kind: Option<LockKind>,
        sleep: bool,
    ) -> Result<(), Errno> {
        if kind.is_some() {
            // Before asking: a close racing with the grant must find the owner.
            self.handles.locked(ino, spec.owner);
        }
        let (Some(kind), true) = (kind, sleep) else {
            return self.fs.set_lock(ino, spec, kind).await.map_err(errno);
        };
        // A waiting request asks again every `lock_poll`; the metadata service counts it as
        // waiting for a few polls more, which is what its deadlock detection sees.
        let wait_ms = ttl_ms((self.opts.lock_poll * 10).max(Duration::from_secs(1)));
        loop {
            match self.fs.wait_lock(ino, spec, kind, wait_ms).await {
                Ok(()) => return Ok(()),
                Err(e) if e.fs() == Some(FsError::WouldBlock) => {
                    tokio::time::sleep(self.opts.lock_poll).await;
                }
                Err(e) => return Err(errno(e)),
            }
        }
    }

    /// A blocking lock request: [`Inner::setlk`] until granted, refused, or interrupted
    /// (`EINTR`, and the metadata service stops counting the owner as waiting).
    async fn setlk_interruptible(
        &self,
        ino: Ino,
        spec: LockSpec,
        kind: Option<LockKind>,
        interrupted: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), Errno> {
        tokio::select! {
            r = self.setlk(ino, spec, kind, true) => r,
            Ok(()) = interrupted => {
                if let Err(e) = self.fs.stop_wait(spec.session, spec.owner).await {
                    tracing::debug!(ino, error = %e, "could not end a lock wait");
                }
                Err(libc::EINTR)
            }
        }
    }
}

/// Answer a reply-taking request from a future's result.
macro_rules! answer {
    ($reply:ident, $fut:expr, |$v:ident| $ok:expr) => {
        async move {
            match $fut.await {
                Ok($v) => $ok,
                Err(e) => $reply.error(e),
            }
        }
    };
}

impl fuser::Filesystem for CairnFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        for cap in [
            FUSE_POSIX_LOCKS,
            FUSE_FLOCK_LOCKS,
            FUSE_AUTO_INVAL_DATA,
            FUSE_PARALLEL_DIROPS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::warn!(cap, "the kernel does not offer a FUSE capability");
            }
        }
        let _ = config.set_max_background(64);
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn destroy(&mut self) {
        // Unmounted with files still open: their buffered writes and sizes go out now. Runs on
        // the session thread, outside the runtime.
        let Some(wb) = self.inner.wb.clone() else {
            return;
        };
        let inner = self.inner.clone();
        let done = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), async {
                for ino in wb.busy() {
                    if let Err(e) = inner.sync_file(ino, true).await {
                        tracing::warn!(ino, errno = e, "buffered writes lost at unmount");
                    }
                }
            })
            .await
        });
        if done.is_err() {
            tracing::warn!("buffered writes not written out within 60 s of unmounting");
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(|i| async move {
            match i.fs.lookup(parent, &name).await {
                Ok(a) => {
                    let a = i.handles.view(a);
                    reply.entry(&i.entry_ttl(), &file_attr(&a), a.generation)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let ttl = self.inner.opts.attr_ttl;
        if let Some((a, left)) = self.inner.handles.changed_dir(ino, ttl) {
            return reply.attr(&left, &file_attr(&a));
        }
        self.spawn(|i| {
            answer!(reply, i.getattr(ino), |a| reply
                .attr(&i.opts.attr_ttl, &file_attr(&a)))
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let set = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        self.spawn(|i| {
            answer!(reply, i.setattr(ino, set), |a| reply
                .attr(&i.opts.attr_ttl, &file_attr(&a)))
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.spawn(|i| async move {
            match i.fs.readlink(ino).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files: the namespace has no devices, fifos or sockets.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(libc::EPERM);
        }
        self.make(req, parent, name, FileKind::File, mode, reply);
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(req, parent, name, FileKind::Dir, mode, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(|i| async move {
            let op = NsOp::AsSession {
                session: i.session,
                op: Box::new(NsOp::Unlink { parent, name }),
            };
            match i.remove(op).await {
                Ok(freed) => {
                    i.freed(freed).await;
                    reply.ok()
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(|i| async move {
            match i.remove(NsOp::Rmdir { parent, name }).await {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (name_of(link_name), target.to_str()) {
            (Ok(n), Some(t)) => (n, t.to_string()),
            (Err(e), _) => return reply.error(e),
            (_, None) => return reply.error(libc::EINVAL),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(|i| async move {
            let op = NsOp::Create {
                parent,
                name,
                kind: FileKind::Symlink,
                mode: 0o777,
                uid,
                gid,
                target: Some(target),
                exclusive: true,
            };
            match i.entry(op).await {
                Ok((a, _)) => reply.entry(&i.entry_ttl(), &file_attr(&a), a.generation),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !known != 0 {
            return reply.error(libc::EINVAL);
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        self.spawn(|i| async move {
            let r =
                i.fs.rename_for(
                    Some(i.session),
                    (parent, &name),
                    (newparent, &newname),
                    noreplace,
                    exchange,
                )
                .await;
            i.handles.forget_dir(parent);
            i.handles.forget_dir(newparent);
            match r {
                Ok(freed) => {
                    i.freed(freed).await;
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = match name_of(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(|i| async move {
            let op = NsOp::Link {
                ino,
                new_parent: newparent,
                new_name: newname,
            };
            match i.entry(op).await {
                Ok((a, _)) => {
                    let a = i.handles.view(a);
                    reply.entry(&i.entry_ttl(), &file_attr(&a), a.generation)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.spawn(|i| answer!(reply, i.open(ino), |v| reply.opened(v.0, v.1)));
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        self.spawn(|i| answer!(reply, i.read(ino, fh, offset, size), |d| reply.data(&d)));
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        if let Some(n) = self.inner.write_now(ino, fh, offset, data, flags) {
            return reply.written(n);
        }
        let data = Bytes::copy_from_slice(data);
        self.spawn(|i| {
            answer!(reply, i.write(ino, fh, offset, data, flags), |n| reply
                .written(n))
        });
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, owner: u64, reply: ReplyEmpty) {
        self.spawn(|i| answer!(reply, i.flush(ino, owner), |_v| reply.ok()));
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|i| answer!(reply, i.release(ino, fh, lock_owner), |_v| reply.ok()));
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        self.spawn(|i| answer!(reply, i.sync_file(ino, true), |_v| reply.ok()));
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.spawn(|i| answer!(reply, i.opendir(ino), |fh| reply.opened(fh, 0)));
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(|i| async move {
            match i.readdir(fh, offset, &mut reply).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.inner.handles.close_dir(fh);
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _d: bool, reply: ReplyEmpty) {
        // Namespace changes are committed through raft before they are answered.
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        self.spawn(|i| async move {
            match i.fs.capacity().await {
                Ok(c) => {
                    let bs = 4096u64;
                    let free_inodes = 1u64 << 40;
                    reply.statfs(
                        c.total_bytes / bs,
                        c.free_bytes / bs,
                        c.free_bytes / bs,
                        c.inodes + free_inodes,
                        free_inodes,
                        bs as u32,
                        NAME_MAX as u32,
                        bs as u32,
                    )
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(libc::EINVAL);
        };
        let flags = match flags {
            0 => XattrFlag::Either,
            libc::XATTR_CREATE => XattrFlag::CreateOnly,
            libc::XATTR_REPLACE => XattrFlag::ReplaceOnly,
            _ => return reply.error(libc::EINVAL),
        };
        if position != 0 {
            return reply.error(libc::EINVAL);
        }
        let value = value.to_vec();
        self.inner.handles.set_without_caps(ino, false);
        self.inner.handles.forget_dir(ino);
        self.spawn(|i| async move {
            match i.fs.setxattr(ino, &name, value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(libc::EINVAL);
        };
        // The kernel asks for this one before every write: answer from what it was a moment ago.
        let caps = name == CAPS_XATTR;
        if caps
            && self
                .inner
                .handles
                .known_without_caps(ino, self.inner.opts.attr_ttl)
        {
            return reply.error(libc::ENODATA);
        }
        self.spawn(|i| async move {
            match i.fs.getxattr(ino, &name).await {
                Ok(v) => xattr_reply(reply, size, &v),
                Err(e) => {
                    let e = errno(e);
                    if caps && e == libc::ENODATA {
                        i.handles.set_without_caps(ino, true);
                    }
                    reply.error(e)
                }
            }
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        self.spawn(|i| async move {
            match i.fs.listxattr(ino).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(n.as_bytes());
                        buf.push(0);
                    }
                    xattr_reply(reply, size, &buf)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(libc::EINVAL);
        };
        self.inner.handles.set_without_caps(ino, false);
        self.inner.handles.forget_dir(ino);
        self.spawn(|i| async move {
            match i.fs.removexattr(ino, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = (req.uid(), req.gid());
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn(|i| async move {
            match i
                .create_node(ids, parent, name, FileKind::File, mode, exclusive)
                .await
            {
                Ok((attr, _)) => {
                    let (fh, shown, _) = i.handles.open_file(attr);
                    let ttl = i.entry_ttl();
                    reply.created(&ttl, &file_attr(&shown), shown.generation, fh, 0)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let kind = match lock_kind(typ) {
            Ok(Some(k)) => k,
            Ok(None) => return reply.locked(start, end, libc::F_UNLCK, pid),
            Err(e) => return reply.error(e),
        };
        self.spawn(|i| async move {
            let spec = i.lock_spec(lock_owner, pid, start, lock_end(end));
            match i.fs.test_lock(ino, spec, kind).await {
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, pid),
                Ok(Some(h)) => {
                    let typ = match h.kind {
                        LockKind::Shared => libc::F_RDLCK,
                        LockKind::Exclusive => libc::F_WRLCK,
                    };
                    reply.locked(h.start, h.end.min(OFFSET_MAX), typ, h.pid)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let kind = match lock_kind(typ) {
            Ok(k) => k,
            Err(e) => return reply.error(e),
        };
        let spec = self.inner.lock_spec(lock_owner, pid, start, lock_end(end));
        if !sleep || kind.is_none() {
            return self.spawn(|i| async move {
                match i.setlk(ino, spec, kind, false).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                }
            });
        }
        // Registered before the request runs: an INTERRUPT comes after it was read, so after
        // this.
        let unique = req.unique();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.waits().insert(unique, tx);
        self.spawn(|i| async move {
            let r = i.setlk_interruptible(ino, spec, kind, rx).await;
            i.waits().remove(&unique);
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (Ok(offset), Ok(len)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        self.spawn(|i| {
            answer!(reply, i.fallocate(ino, fh, offset, len, mode), |_v| reply
                .ok())
        });
    }

    fn interrupt(&mut self, _req: &Request<'_>, unique: u64) {
        // Only blocking lock requests stop early; every other request finishes on its own.
        if let Some(tx) = self.inner.waits().remove(&unique) {
            let _ = tx.send(());
        }
    }

    fn ioctl(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: u32,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctls: what a local file system says for one it does not know.
        reply.error(libc::ENOTTY);
    }
}

impl CairnFs {
    fn make(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        kind: FileKind,
        mode: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = (req.uid(), req.gid());
        self.spawn(|i| async move {
            match i.create_node(ids, parent, name, kind, mode, true).await {
                Ok((a, _)) => reply.entry(&i.entry_ttl(), &file_attr(&a), a.generation),
                Err(e) => reply.error(e),
            }
        });
    }
}

async fn free_now(fs: &FsClient, f: FreedFile) {
    if let Err(e) = fs.free(f).await {
        tracing::warn!(ino = f.ino, error = %e, "could not delete the data of a removed file");
    }
}

/// Hand the data of removed files to the purge queue `grace` after they were removed, so that a
/// reader on another mount that opened the file just before it went (an editor's
/// save-by-rename under a reader) still reads it whole: the namespace forgets the mount's
/// orphans (`Forget` puts them on the queue in the same entry) and this mount's [`Purger`]
/// deletes their objects. The purger also drains the whole queue at start and every
/// `purge_every` (files of mounts and gateways that died before purging them). When `files`
/// closes (unmount), what is left is forgotten at once and purged before this returns.
pub(crate) async fn reap(
    fs: FsClient,
    session: u64,
    mut files: mpsc::UnboundedReceiver<FreedFile>,
    grace: Duration,
    purge_every: Duration,
) {
    let (purger, worker) = Purger::start(fs.clone(), Some(purge_every));
    let mut due: std::collections::VecDeque<(tokio::time::Instant, FreedFile)> = Default::default();
    loop {
        let next = due.front().map(|(at, _)| *at);
        tokio::select! {
            f = files.recv() => match f {
                Some(f) => due.push_back((tokio::time::Instant::now() + grace, f)),
                None => break,
            },
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now();
                let mut batch = Vec::new();
                while due.front().is_some_and(|(at, _)| *at <= now) && batch.len() < 1000 {
                    batch.extend(due.pop_front().map(|(_, f)| f));
                }
                forget_and_purge(&fs, session, &purger, batch).await;
            }
        }
    }
    let rest: Vec<FreedFile> = due.into_iter().map(|(_, f)| f).collect();
    for batch in rest.chunks(1000) {
        forget_and_purge(&fs, session, &purger, batch.to_vec()).await;
    }
    drop(purger);
    let _ = worker.await;
}

/// The namespace lets go of removed files kept for this mount (orphans), which puts them on the
/// purge queue, and the purger deletes their data. A file whose orphan cannot be forgotten now
/// stays one: it goes on the queue with the session at the latest.
async fn forget_and_purge(fs: &FsClient, session: u64, purger: &Purger, files: Vec<FreedFile>) {
    if files.is_empty() {
        return;
    }
    let inos = files.iter().map(|f| f.ino).collect();
    if let Err(e) = fs.forget(session, inos).await {
        tracing::warn!(error = %e, n = files.len(), "could not drop removed files; their data stays");
        return;
    }
    for f in files {
        purger.push(f);
    }
}

/// `getxattr`/`listxattr` answer: the size when asked for it (`size` 0), `ERANGE` when the
/// caller's buffer is too small, else the bytes.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(value);
    }
}
