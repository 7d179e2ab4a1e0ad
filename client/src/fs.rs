//! The uniform namespace for applications: [`FsClient`] sends every namespace operation and read
//! to the metadata service (one raft entry per mutation, reads answered by the leader from
//! memory) and moves file data straight between the caller and the OSDs.
//!
//! A file's bytes are a [`Striped`] space over objects `Oid::for_piece(File, ino, index)` of the
//! file's `chunk_size` in the file's pool (`InodeAttr::pool`, `None`: the [`DEFAULT_FILE_POOL`]).
//! Objects are created on first write, so files are sparse, and holes read as zeros.
//!
//! Sizes. The namespace holds each file's size; data writes do not touch it. A writer that goes
//! past the end grows the size with [`FsClient::extend`] (which never shrinks, so racing writers
//! cannot cut each other off), and may batch that: the FUSE mount tracks a high-water mark per
//! file and extends on flush, fsync and close. [`FsClient::setattr`] with a size truncates: it
//! frees the data past a smaller size (objects wholly past it are deleted) *before* the size
//! changes, so no crash can leave stale bytes inside the file.
//!
//! Freeing. When the last link of a file goes, the raft entry that drops it also puts the file
//! on the namespace's purge queue, and [`FsClient::unlink`] and [`FsClient::rename`] answer
//! once that entry committed, returning its [`FreedFile`]: nothing waits for the objects to go.
//! A [`Purger`] deletes them in the background ([`FsClient::purge`]: delete, then `Purged`):
//! the files its own process freed, as they come, and the whole queue at start and every
//! [`PURGE_EVERY`], so what a process that died left on the queue is deleted by another.
//! Purging is idempotent (inode numbers are never reused), so purgers may race. A mount keeps
//! a removed file it has open as an orphan of its session instead ([`FsClient::unlink_for`]);
//! it goes on the queue when the mount forgets it ([`FsClient::forget`]) or its session ends.
//!
//! Moves. A file's data can move to another pool (a directory pinned after the file was
//! written: see [`crate::migrate`]). Data I/O therefore does not trust the pool of the
//! `InodeAttr` it is given for long: the client remembers the newest layout (pool) of each file
//! any answer of the metadata service showed it, and reads the attributes again before I/O when
//! that is older than [`LAYOUT_TTL`]. An OSD refuses operations on the objects of a file being
//! moved ([`WireError::Moved`]); I/O then follows the file's attributes to the new pool, or waits
//! while the copy is under way (writes only; reads go on from the old objects).
//!
//! Nothing else is cached here: every call goes to the cluster. Front ends layer their own
//! caching policy (the FUSE mount's TTLs, NFS clients' attribute caches) on top.

use crate::error::{ClientError, Result};
use crate::objects::PoolIo;
use crate::striped::Striped;
use crate::Cluster;
use bytes::Bytes;
use cairn_proto::fs::{
    DirEntry, DirEntryPlus, FileKind, FreedFile, FsError, HeldLock, Ino, InodeAttr, LockKind,
    LockSpec, NsOp, NsQuery, NsReply, NsResult, NsStats, SetTime, XattrFlag,
};
use cairn_proto::msg::{MetaCommand, MetaRead, MetaRequest, MetaResponse, MetaResult};
use cairn_proto::rpc::RpcError;
use cairn_proto::{PieceKind, PoolId, WireError};
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a file's pool, as an answer of the metadata service showed it, is trusted for data
/// I/O before the attributes are read again. Shorter than [`crate::migrate::MOVE_GRACE`], so a
/// client trusting an old pool always meets the old objects' refusal rather than their absence.
pub const LAYOUT_TTL: Duration = Duration::from_secs(30);

/// How long data I/O waits for the copy of a moving file before failing.
const MOVE_WAIT: Duration = Duration::from_secs(600);

/// Most layouts remembered; past it the memory starts again.
const LAYOUTS_MAX: usize = 100_000;

/// The pool of files whose `pool` is `None`.
pub const DEFAULT_FILE_POOL: &str = "default";

impl ClientError {
    /// The POSIX error behind this one, if the namespace answered with one.
    pub fn fs(&self) -> Option<FsError> {
        match self.wire() {
            Some(WireError::Fs(e)) => Some(*e),
            _ => None,
        }
    }

    /// The Linux errno a file-system front end reports for this error: the namespace's own,
    /// `ENOSPC` for a full OSD, `EIO` for everything else (the cluster could not be reached or
    /// gave up).
    pub fn errno(&self) -> i32 {
        const ENOSPC: i32 = 28;
        const EIO: i32 = 5;
        match self.fs() {
            Some(e) => e.errno(),
            None if self.is_no_space() => ENOSPC,
            None => EIO,
        }
    }
}

impl From<FsError> for ClientError {
    fn from(e: FsError) -> Self {
        ClientError::Rpc(RpcError::Remote(WireError::Fs(e)))
    }
}

/// Attributes to change with [`FsClient::setattr`]; `None` leaves one as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend the file to this size.
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// File-system capacity for `statfs`, in bytes of file data (raw OSD bytes divided by the
/// default pool's replica count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsCapacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub inodes: u64,
    pub file_bytes: u64,
}

/// The newest pool seen for each file, with when the answer showing it was asked for.
type Layouts = HashMap<Ino, (Option<PoolId>, Instant)>;

/// Namespace operations and file data I/O over a [`Cluster`]. Cheap to clone.
#[derive(Clone)]
pub struct FsClient {
    cluster: Cluster,
    /// Object I/O per file pool, looked up once.
    pools: Arc<Mutex<HashMap<Option<PoolId>, PoolIo>>>,
    /// The newest pool seen for each file and when the answer showing it was asked for.
    layouts: Arc<Mutex<Layouts>>,
}

fn unexpected(what: impl std::fmt::Debug) -> ClientError {
    ClientError::Protocol(format!("unexpected namespace reply: {what:?}"))
}

impl FsClient {
    pub fn new(cluster: Cluster) -> FsClient {
        FsClient {
            cluster,
            pools: Arc::default(),
            layouts: Arc::default(),
        }
    }

    /// Remember the layout of a file from an answer to a request sent at `asked`.
    fn note_layout(&self, attr: &InodeAttr, asked: Instant) {
        if attr.kind != FileKind::File {
            return;
        }
        let mut l = self.layouts.lock().expect("layouts lock");
        if l.len() >= LAYOUTS_MAX {
            l.clear();
        }
        match l.get_mut(&attr.ino) {
            Some(known) if known.1 > asked => {}
            Some(known) => *known = (attr.pool, asked),
            None => {
                l.insert(attr.ino, (attr.pool, asked));
            }
        }
    }

    fn note_result(&self, r: &NsResult, asked: Instant) {
        match r {
            NsResult::Attr(a) | NsResult::Entry { attr: a, .. } => self.note_layout(a, asked),
            NsResult::Batch(rs) => rs.iter().for_each(|r| self.note_result(r, asked)),
            _ => {}
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    // ------------------------------------------------------------ raw namespace calls

    /// Apply one namespace mutation (one raft entry).
    pub async fn apply(&self, op: NsOp) -> Result<NsResult> {
        let asked = Instant::now();
        match self.cluster.meta().command(MetaCommand::Ns(op)).await? {
            MetaResult::Ns(r) => {
                self.note_result(&r, asked);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Answer one namespace read (linearizable, from the leader's memory).
    pub async fn query(&self, q: NsQuery) -> Result<NsReply> {
        let asked = Instant::now();
        match self
            .cluster
            .meta()
            .call(MetaRequest::Read(MetaRead::Ns(q)))
            .await?
        {
            MetaResponse::Ns(r) => {
                match &r {
                    NsReply::Attr(a) | NsReply::AttrXattr(a, _) => self.note_layout(a, asked),
                    NsReply::DirPlus { entries, .. } => entries
                        .iter()
                        .for_each(|e| self.note_layout(&e.attr, asked)),
                    _ => {}
                }
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn query_attr(&self, q: NsQuery) -> Result<InodeAttr> {
        match self.query(q).await? {
            NsReply::Attr(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    async fn apply_attr(&self, op: NsOp) -> Result<InodeAttr> {
        match self.apply(op).await? {
            NsResult::Attr(a) | NsResult::Entry { attr: a, .. } => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    // ------------------------------------------------------------ reads

    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<InodeAttr> {
        self.query_attr(NsQuery::Lookup {
            parent,
            name: name.to_string(),
        })
        .await
    }

    pub async fn getattr(&self, ino: Ino) -> Result<InodeAttr> {
        self.query_attr(NsQuery::GetAttr { ino }).await
    }

    /// The inode an absolute path names (see [`NsQuery::Resolve`]).
    pub async fn resolve(&self, path: &str, follow_last: bool) -> Result<InodeAttr> {
        self.query_attr(NsQuery::Resolve {
            path: path.to_string(),
            follow_last,
        })
        .await
    }

    /// One page of a directory: entries after `after` in name order, and whether more follow.
    pub async fn readdir(
        &self,
        ino: Ino,
        after: Option<String>,
        limit: u32,
    ) -> Result<(Vec<DirEntry>, bool)> {
        match self.query(NsQuery::ReadDir { ino, after, limit }).await? {
            NsReply::Dir { entries, more } => Ok((entries, more)),
            other => Err(unexpected(other)),
        }
    }

    /// The inode `path` names (the last symlink not followed) and its extended attribute
    /// `xattr`, in one round trip.
    pub async fn resolve_xattr(
        &self,
        path: &str,
        xattr: &str,
    ) -> Result<(InodeAttr, Option<Vec<u8>>)> {
        let q = NsQuery::ResolveXattr {
            path: path.to_string(),
            xattr: xattr.to_string(),
        };
        match self.query(q).await? {
            NsReply::AttrXattr(a, v) => Ok((a, v)),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a directory with each entry's attributes and extended attribute `xattr`.
    pub async fn readdir_plus(
        &self,
        ino: Ino,
        after: Option<String>,
        limit: u32,
        xattr: Option<&str>,
    ) -> Result<(Vec<DirEntryPlus>, bool)> {
        let q = NsQuery::ReadDirPlus {
            ino,
            after,
            limit,
            xattr: xattr.map(str::to_string),
        };
        match self.query(q).await? {
            NsReply::DirPlus { entries, more } => Ok((entries, more)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn readlink(&self, ino: Ino) -> Result<String> {
        match self.query(NsQuery::ReadLink { ino }).await? {
            NsReply::Link(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    pub async fn getxattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>> {
        let q = NsQuery::GetXattr {
            ino,
            name: name.to_string(),
        };
        match self.query(q).await? {
            NsReply::Xattr(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<String>> {
        match self.query(NsQuery::ListXattr { ino }).await? {
            NsReply::XattrNames(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ns_stats(&self) -> Result<NsStats> {
        match self.query(NsQuery::Stats).await? {
            NsReply::Stats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Capacity from the cluster map (every OSD that is in, as its last heartbeat reported it)
    /// and counts from the namespace.
    pub async fn capacity(&self) -> Result<FsCapacity> {
        let map = self.cluster.refresh_map().await?;
        let (raw_total, raw_used) = map
            .osds
            .values()
            .filter(|o| o.in_cluster)
            .fold((0u64, 0u64), |(t, u), o| {
                (t.saturating_add(o.capacity), u.saturating_add(o.used))
            });
        let copies = map
            .pool_by_name(DEFAULT_FILE_POOL)
            .map_or(1, |p| u64::from(p.size.max(1)));
        let stats = self.ns_stats().await?;
        Ok(FsCapacity {
            total_bytes: raw_total / copies,
            free_bytes: raw_total.saturating_sub(raw_used) / copies,
            inodes: stats.inodes,
            file_bytes: stats.file_bytes,
        })
    }

    // ------------------------------------------------------------ mutations

    /// Make a file or directory (`exclusive`: fail if a file of that name exists; otherwise an
    /// existing file is the answer, with `false`).
    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> Result<(InodeAttr, bool)> {
        let op = NsOp::Create {
            parent,
            name: name.to_string(),
            kind,
            mode,
            uid,
            gid,
            target: None,
            exclusive,
        };
        match self.apply(op).await? {
            NsResult::Entry { attr, created, .. } => Ok((attr, created)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Result<InodeAttr> {
        self.apply_attr(NsOp::Create {
            parent,
            name: name.to_string(),
            kind: FileKind::Symlink,
            mode: 0o777,
            uid,
            gid,
            target: Some(target.to_string()),
            exclusive: true,
        })
        .await
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> Result<InodeAttr> {
        self.apply_attr(NsOp::Link {
            ino,
            new_parent,
            new_name: new_name.to_string(),
        })
        .await
    }

    /// Remove a file or symlink entry; returns the file whose last link went, which is on the
    /// purge queue once this answers (hand it to a [`Purger`]).
    pub async fn unlink(&self, parent: Ino, name: &str) -> Result<Option<FreedFile>> {
        self.unlink_for(None, parent, name).await
    }

    /// [`FsClient::unlink`] for a client with lock session `session` (a mount): a file that
    /// loses its last link stays, by inode number, as the session's orphan until
    /// [`FsClient::forget`] (see [`NsOp::AsSession`]).
    pub async fn unlink_for(
        &self,
        session: Option<u64>,
        parent: Ino,
        name: &str,
    ) -> Result<Option<FreedFile>> {
        let op = as_session(
            session,
            NsOp::Unlink {
                parent,
                name: name.to_string(),
            },
        );
        match self.apply(op).await? {
            NsResult::Unlinked { freed, .. } => Ok(freed),
            other => Err(unexpected(other)),
        }
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        let op = NsOp::Rmdir {
            parent,
            name: name.to_string(),
        };
        match self.apply(op).await? {
            NsResult::Unlinked { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Atomic rename (one raft entry); returns the replaced file if that was its last link.
    pub async fn rename(
        &self,
        (parent, name): (Ino, &str),
        (new_parent, new_name): (Ino, &str),
        noreplace: bool,
        exchange: bool,
    ) -> Result<Option<FreedFile>> {
        self.rename_for(
            None,
            (parent, name),
            (new_parent, new_name),
            noreplace,
            exchange,
        )
        .await
    }

    /// [`FsClient::rename`] for a client with lock session `session`: a replaced file that
    /// loses its last link stays as the session's orphan (see [`FsClient::unlink_for`]).
    pub async fn rename_for(
        &self,
        session: Option<u64>,
        (parent, name): (Ino, &str),
        (new_parent, new_name): (Ino, &str),
        noreplace: bool,
        exchange: bool,
    ) -> Result<Option<FreedFile>> {
        let op = as_session(
            session,
            NsOp::Rename {
                parent,
                name: name.to_string(),
                new_parent,
                new_name: new_name.to_string(),
                noreplace,
                exchange,
            },
        );
        match self.apply(op).await? {
            NsResult::Renamed { replaced_freed } => Ok(replaced_freed),
            other => Err(unexpected(other)),
        }
    }

    /// Change attributes. A size truncates: data past a smaller size is freed first; growing
    /// clears the rest of the object that held the old end (so bytes a crashed writer left past
    /// the end cannot show up inside the file).
    pub async fn setattr(&self, ino: Ino, set: SetAttrs) -> Result<InodeAttr> {
        if let Some(size) = set.size {
            let old = self.getattr(ino).await?;
            if old.kind == FileKind::File {
                let chunk = u64::from(old.chunk_size.max(1));
                let hole = if size < old.size {
                    let end = old.size.div_ceil(chunk) * chunk;
                    Some((size, end - size))
                } else if size > old.size && old.size % chunk != 0 {
                    let end = (old.size / chunk + 1) * chunk;
                    Some((old.size, end.min(size) - old.size))
                } else {
                    None
                };
                if let Some((at, len)) = hole {
                    self.with_data(&old, |d| async move { d.punch(at, len).await })
                        .await?;
                }
            }
        }
        self.apply_attr(NsOp::SetAttr {
            ino,
            mode: set.mode,
            uid: set.uid,
            gid: set.gid,
            size: set.size,
            atime: set.atime,
            mtime: set.mtime,
        })
        .await
    }

    /// Make bytes `offset..offset+len` of a file read as zeros, deleting the objects the range
    /// covers whole (`fallocate(PUNCH_HOLE)`); the size does not change.
    pub async fn punch(&self, attr: &InodeAttr, offset: u64, len: u64) -> Result<()> {
        self.with_data(attr, |d| async move { d.punch(offset, len).await })
            .await
    }

    /// Grow a file to at least `size` after writing past its end (never shrinks it).
    pub async fn extend(&self, ino: Ino, size: u64) -> Result<InodeAttr> {
        self.apply_attr(NsOp::Extend { ino, size }).await
    }

    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &str,
        value: Vec<u8>,
        flags: XattrFlag,
    ) -> Result<()> {
        let op = NsOp::SetXattr {
            ino,
            name: name.to_string(),
            value,
            flags,
        };
        self.apply(op).await.map(|_| ())
    }

    pub async fn removexattr(&self, ino: Ino, name: &str) -> Result<()> {
        let op = NsOp::RemoveXattr {
            ino,
            name: name.to_string(),
        };
        self.apply(op).await.map(|_| ())
    }

    // ------------------------------------------------------------ data

    async fn pool_io(&self, pool: Option<PoolId>) -> Result<PoolIo> {
        if let Some(io) = self.pools.lock().expect("pools lock").get(&pool) {
            return Ok(io.clone());
        }
        let name = match pool {
            None => DEFAULT_FILE_POOL.to_string(),
            Some(id) => {
                let name = self.cluster.map().pools.get(&id).map(|p| p.name.clone());
                match name {
                    Some(n) => n,
                    None => self
                        .cluster
                        .refresh_map()
                        .await?
                        .pools
                        .get(&id)
                        .map(|p| p.name.clone())
                        .ok_or_else(|| ClientError::NoSuchPool(id.to_string()))?,
                }
            }
        };
        let io = self.cluster.pool_io(&name).await?;
        self.pools
            .lock()
            .expect("pools lock")
            .insert(pool, io.clone());
        Ok(io)
    }

    /// The striped byte space of a file.
    async fn data(&self, attr: &InodeAttr) -> Result<Striped> {
        if attr.kind != FileKind::File {
            return Err(if attr.kind == FileKind::Dir {
                FsError::IsDir
            } else {
                FsError::Invalid
            }
            .into());
        }
        let io = self.pool_io(attr.pool).await?;
        Ok(Striped::new(
            io,
            PieceKind::File,
            attr.ino,
            u64::from(attr.chunk_size.max(1)),
        ))
    }

    /// `attr` with the newest pool known for its data: the one remembered if it is fresh
    /// enough, else the metadata service's (the given one when the file is gone from the
    /// namespace: an open file outlives its last name, and its data stays where it was).
    async fn layout(&self, attr: &InodeAttr) -> Result<InodeAttr> {
        let mut a = attr.clone();
        if a.kind != FileKind::File {
            return Ok(a);
        }
        let known = self
            .layouts
            .lock()
            .expect("layouts lock")
            .get(&a.ino)
            .filter(|(_, at)| at.elapsed() < LAYOUT_TTL)
            .map(|(p, _)| *p);
        match known {
            Some(pool) => a.pool = pool,
            None => match self.getattr(a.ino).await {
                Ok(fresh) => a.pool = fresh.pool,
                Err(e) if matches!(e.fs(), Some(FsError::NotFound | FsError::Stale)) => {}
                Err(e) => return Err(e),
            },
        }
        Ok(a)
    }

    /// Run `f` on the file's data where its newest layout says, following a move (see the
    /// module documentation): refused by an OSD because the data moved, it reads the attributes
    /// again and goes where they say, or waits while the copy is under way.
    async fn with_data<T, F, Fut>(&self, attr: &InodeAttr, f: F) -> Result<T>
    where
        F: Fn(Striped) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut a = self.layout(attr).await?;
        let mut backoff = Duration::from_millis(20);
        loop {
            let e = match f(self.data(&a).await?).await {
                Err(e) if matches!(e.wire(), Some(WireError::Moved { .. })) => e,
                r => return r,
            };
            if start.elapsed() >= MOVE_WAIT {
                return Err(e);
            }
            match self.getattr(a.ino).await {
                Ok(fresh) if fresh.pool != a.pool => {
                    a.pool = fresh.pool;
                    continue;
                }
                Ok(_) => {}
                // The file went while its data was moving: the mover deletes the data.
                Err(g) if matches!(g.fs(), Some(FsError::NotFound | FsError::Stale)) => {
                    return Err(FsError::Stale.into())
                }
                Err(g) => return Err(g),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Read up to `len` bytes at `offset` of a file whose size is `attr.size` (fewer at the end;
    /// none past it). Holes read as zeros.
    pub async fn read(&self, attr: &InodeAttr, offset: u64, len: u64) -> Result<Bytes> {
        let end = offset.saturating_add(len).min(attr.size);
        if end <= offset {
            return Ok(Bytes::new());
        }
        self.with_data(attr, |d| async move { d.read(offset, end - offset).await })
            .await
    }

    /// Write `data` at `offset`; durable on the OSDs when this returns. Does not change the
    /// file's size: the caller extends it ([`FsClient::extend`]) when it wrote past the end.
    pub async fn write(&self, attr: &InodeAttr, offset: u64, data: Bytes) -> Result<()> {
        if offset.saturating_add(data.len() as u64) > cairn_proto::fs::MAX_FILE_SIZE {
            return Err(FsError::FileTooBig.into());
        }
        self.with_data(attr, |d| {
            let data = data.clone();
            async move { d.write(offset, data).await }
        })
        .await
    }

    /// Delete the data of a file whose last link went (without touching the purge queue: see
    /// [`FsClient::purge`]). Refused because the file's data was being copied to another pool,
    /// it is left to the mover, which deletes both copies of a file that is gone.
    pub async fn free(&self, f: FreedFile) -> Result<()> {
        let chunk = u64::from(f.chunk_size.max(1));
        let io = self.pool_io(f.pool).await?;
        let r = Striped::new(io, PieceKind::File, f.ino, chunk)
            .remove_objects(0, f.size.div_ceil(chunk))
            .await;
        match r {
            Err(e) if matches!(e.wire(), Some(WireError::Moved { .. })) => Ok(()),
            r => r,
        }
    }

    // ------------------------------------------------------------ advisory locks

    /// Start or renew this client's lock session (see [`NsOp::RenewSession`]).
    pub async fn renew_session(&self, session: u64, ttl_ms: u32) -> Result<()> {
        self.apply(NsOp::RenewSession { session, ttl_ms })
            .await
            .map(|_| ())
    }

    /// End the session, dropping its locks.
    pub async fn end_session(&self, session: u64) -> Result<()> {
        self.apply(NsOp::EndSession { session }).await.map(|_| ())
    }

    /// Take (`Some`) or release (`None`) a lock; a conflict is `FsError::WouldBlock`.
    pub async fn set_lock(&self, ino: Ino, lock: LockSpec, kind: Option<LockKind>) -> Result<()> {
        self.apply(NsOp::SetLock { ino, lock, kind })
            .await
            .map(|_| ())
    }

    /// A blocking request's try: takes the lock, or fails with `FsError::WouldBlock` and counts
    /// the owner as waiting for `wait_ms` (ask again before then), or with `FsError::Deadlock`
    /// when waiting would close a cycle of waiting owners.
    pub async fn wait_lock(
        &self,
        ino: Ino,
        lock: LockSpec,
        kind: LockKind,
        wait_ms: u32,
    ) -> Result<()> {
        let op = NsOp::WaitLock {
            ino,
            lock,
            kind,
            wait_ms,
        };
        self.apply(op).await.map(|_| ())
    }

    /// The owner stopped waiting for a lock (its request was interrupted).
    pub async fn stop_wait(&self, session: u64, owner: u64) -> Result<()> {
        self.apply(NsOp::StopWait { session, owner })
            .await
            .map(|_| ())
    }

    /// Let go of files removed while open (orphans of `session`, see [`FsClient::unlink_for`]):
    /// they go on the purge queue.
    pub async fn forget(&self, session: u64, inos: Vec<Ino>) -> Result<()> {
        self.apply(NsOp::Forget { session, inos }).await.map(|_| ())
    }

    /// Up to `limit` files of the purge queue (see [`NsQuery::Purgeable`]).
    pub async fn purgeable(&self, limit: u32) -> Result<Vec<FreedFile>> {
        match self.query(NsQuery::Purgeable { limit }).await? {
            NsReply::Purgeable(files) => Ok(files),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// The data of these files of the purge queue is deleted: take them off it.
    pub async fn purged(&self, inos: Vec<Ino>) -> Result<()> {
        self.apply(NsOp::Purged { inos }).await.map(|_| ())
    }

    /// Delete the data of files on the purge queue ([`PURGE_DEPTH`] at a time), then take the
    /// ones deleted off the queue in one `Purged`. A file whose data could not be deleted stays
    /// on the queue for a later pass (logged). Returns how many went.
    pub async fn purge(&self, files: Vec<FreedFile>) -> Result<usize> {
        let results: Vec<(FreedFile, Result<()>)> = futures::stream::iter(files)
            .map(|f| async move { (f, self.free(f).await) })
            .buffer_unordered(PURGE_DEPTH)
            .collect()
            .await;
        let mut done = Vec::with_capacity(results.len());
        for (f, r) in results {
            match r {
                Ok(()) => done.push(f.ino),
                // Its pool was deleted, and its objects with it.
                Err(ClientError::NoSuchPool(_)) => done.push(f.ino),
                Err(e) => tracing::warn!(
                    ino = f.ino,
                    error = %e,
                    "could not delete the data of a removed file; it stays on the purge queue"
                ),
            }
        }
        let n = done.len();
        if n > 0 {
            self.purged(done).await?;
        }
        Ok(n)
    }

    /// Purge the whole queue, a batch at a time, until it is empty (or a batch purged
    /// nothing: what is left waits for the next pass). Returns how many files went.
    pub async fn drain_purge_queue(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let files = self.purgeable(PURGE_BATCH).await?;
            let full = files.len() == PURGE_BATCH as usize;
            if files.is_empty() {
                return Ok(total);
            }
            let n = self.purge(files).await?;
            total += n;
            if n == 0 || !full {
                return Ok(total);
            }
        }
    }

    /// The lock that would block `kind` on `lock`, if any.
    pub async fn test_lock(
        &self,
        ino: Ino,
        lock: LockSpec,
        kind: LockKind,
    ) -> Result<Option<HeldLock>> {
        match self.apply(NsOp::TestLock { ino, lock, kind }).await? {
            NsResult::LockTest(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }
}

/// How often a [`Purger`] started with a period drains the whole purge queue by default.
pub const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Files taken off the purge queue per `Purgeable` read and `Purged` entry.
const PURGE_BATCH: u32 = 1000;

/// Object deletions in flight while purging.
const PURGE_DEPTH: usize = 16;

/// How long a [`Purger`] gathers files handed to it before it purges them, so that a stream of
/// removals costs one `Purged` entry per batch rather than one per file.
const PURGE_GATHER: Duration = Duration::from_millis(100);

/// A background purger: deletes the data of files on the namespace's purge queue. Files its
/// process removed are handed to it ([`Purger::push`]) and purged within moments, in batches;
/// with a period it also drains the whole queue at start and then every period, which is how
/// the files of processes that died before purging them go. Cheap to clone; the worker stops
/// once every clone is dropped, after purging what it was handed (what it could not finish
/// stays on the queue: nothing is lost with it).
#[derive(Clone)]
pub struct Purger {
    tx: mpsc::UnboundedSender<FreedFile>,
}

impl Purger {
    /// Start the worker on the current tokio runtime; `every`: drain the whole queue at start
    /// and then this often (`None`: only purge what is pushed). The handle ends with the
    /// worker.
    pub fn start(fs: FsClient, every: Option<Duration>) -> (Purger, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(purge_worker(fs, rx, every));
        (Purger { tx }, worker)
    }

    /// `f` went on the purge queue here (an unlink or rename answered it): purge it soon.
    pub fn push(&self, f: FreedFile) {
        // A stopped worker leaves the file on the queue for the next drain anywhere.
        let _ = self.tx.send(f);
    }
}

async fn purge_worker(
    fs: FsClient,
    mut rx: mpsc::UnboundedReceiver<FreedFile>,
    every: Option<Duration>,
) {
    let mut tick = every.map(|e| {
        let mut t = tokio::time::interval(e);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let first = tokio::select! {
            _ = async {
                match tick.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            } => {
                match fs.drain_purge_queue().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(files = n, "purged the data of removed files"),
                    Err(e) => tracing::debug!(error = %e, "could not drain the purge queue"),
                }
                continue;
            }
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        let mut batch = vec![first];
        let gather = tokio::time::sleep(PURGE_GATHER);
        tokio::pin!(gather);
        while batch.len() < PURGE_BATCH as usize {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => batch.push(f),
                    None => break,
                },
                _ = &mut gather => break,
            }
        }
        let n = batch.len();
        if let Err(e) = fs.purge(batch).await {
            tracing::warn!(files = n, error = %e, "could not purge removed files; they stay on the queue");
        }
    }
}

/// `op` applied for a session's orphans, when there is a session.
fn as_session(session: Option<u64>, op: NsOp) -> NsOp {
    match session {
        Some(session) => NsOp::AsSession {
            session,
            op: Box::new(op),
        },
        None => op,
    }
}
