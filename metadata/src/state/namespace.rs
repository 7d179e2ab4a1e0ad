//! The POSIX namespace state machine: one tree of directories, files and symlinks with their
//! attributes, extended attributes and hard links, changed only by [`Namespace::apply`] and read
//! by [`Namespace::query`]. The raft layer applies committed [`NsOp`]s in log order and puts the
//! whole [`Namespace`] into its snapshots.
//!
//! Storage, all in ordered maps so iteration, encoding and therefore every replica agree:
//! - `inodes`: [`Ino`] → `Inode` (attributes; a directory's parent; a symlink's target).
//! - `entries`: `(directory, name)` → [`Ino`]. A directory's entries are one contiguous range in
//!   name order, so a page of a 100,000-entry directory is a range scan, and emptiness is one step.
//! - `xattrs`: `(ino, name)` → value, apart from the inodes so that touching an inode (every
//!   create touches its parent) never copies attribute values.
//! - counters: the next inode number and generation (neither is ever reused) and the sum of
//!   file sizes.
//! - advisory locks: `locks` (ino → held byte-range locks) and `sessions` (lock session → expiry
//!   time). A mount renews its session; when it stops (crash, partition) the session expires at a
//!   time every replica computes from the entries' clocks, its locks stop conflicting at once and
//!   the next lock op drops them. Lock ops never go through a `Txn`: each one checks everything
//!   first and then changes the lock tables, so a failure changes nothing.
//!
//! Applying is deterministic: the outcome depends only on the state, the op and the `now_ns`
//! the proposer put in the entry; there is no clock, randomness or hash-ordered map inside.
//! Every op, a [`NsOp::Batch`] included, is atomic: mutations go through a `Txn` that logs
//! the previous value of every key it writes, and a failure replays the log backwards, so a
//! rejected op leaves the namespace exactly as it was without copying it.
//!
//! Errors follow Linux (ext4): argument errors (`EINVAL`, `ENAMETOOLONG`, ...) come before
//! state errors, and among state errors the order is the kernel's (for example a rename with
//! `noreplace` onto a hard link of itself is `EEXIST`, not a no-op). An inode number that names
//! nothing is [`FsError::Stale`]; a name that names nothing is [`FsError::NotFound`].
//!
//! The maps have tuple keys: encode snapshots with bincode (as the rest of the state machine
//! does), not with a format whose map keys must be strings.

use cairn_proto::fs::{
    DirEntry, DirEntryPlus, FileKind, FreedFile, FsError, HeldLock, Ino, InodeAttr, LockKind,
    LockSpec, NsOp, NsQuery, NsReply, NsResult, NsStats, SetTime, XattrFlag, DEFAULT_CHUNK_SIZE,
    LINK_MAX, MAX_FILE_SIZE, NAME_MAX, PATH_MAX, READDIRPLUS_MAX, READDIR_MAX, ROOT_INO,
    SYMLOOP_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};
use cairn_proto::PoolId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The set-group-id bit: on a directory, new inodes below it take its group.
const S_ISGID: u32 = 0o2000;

/// One inode: its attributes plus what only some kinds have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Inode {
    attr: InodeAttr,
    /// For a directory, the directory holding it (the root's is the root); `None` otherwise.
    /// Directories have exactly one link, so this is their `..`.
    parent: Option<Ino>,
    /// For a symlink, its target.
    target: Option<String>,
}

/// The namespace state machine. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    inodes: BTreeMap<Ino, Inode>,
    entries: BTreeMap<(Ino, String), Ino>,
    xattrs: BTreeMap<(Ino, String), Vec<u8>>,
    next_ino: Ino,
    next_generation: u64,
    /// Sum of file sizes, modulo 2^64 (sparse files can exceed it).
    file_bytes: u64,
    /// Advisory locks held on each inode, in the order they were taken.
    locks: BTreeMap<Ino, Vec<HeldLock>>,
    /// Lock sessions and when they expire (nanoseconds since the epoch).
    sessions: BTreeMap<u64, i64>,
}

impl Namespace {
    /// An empty namespace: the root directory, mode `0o755`, owned by root, created at `now_ns`.
    pub fn new(now_ns: i64) -> Namespace {
        let root = Inode {
            attr: InodeAttr {
                ino: ROOT_INO,
                kind: FileKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                nlink: 2,
                atime_ns: now_ns,
                mtime_ns: now_ns,
                ctime_ns: now_ns,
                generation: 1,
                pool: None,
                chunk_size: 0,
            },
            parent: Some(ROOT_INO),
            target: None,
        };
        Namespace {
            inodes: BTreeMap::from([(ROOT_INO, root)]),
            entries: BTreeMap::new(),
            xattrs: BTreeMap::new(),
            next_ino: ROOT_INO + 1,
            next_generation: 2,
            file_bytes: 0,
            locks: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    /// Apply one mutation at time `now_ns` (the proposer's clock, carried in the raft entry).
    /// On error nothing changed.
    pub fn apply(&mut self, op: &NsOp, now_ns: i64) -> Result<NsResult, FsError> {
        if let Some(result) = self.lock_op(op, now_ns) {
            return result;
        }
        let mut txn = Txn::new(self, now_ns);
        match txn.op(op) {
            Ok(result) => Ok(result),
            Err(e) => {
                txn.rollback();
                Err(e)
            }
        }
    }

    /// Answer a read.
    /// The attributes of `ino`, if it is a file.
    pub fn file_attr(&self, ino: Ino) -> Option<&InodeAttr> {
        self.inodes
            .get(&ino)
            .map(|i| &i.attr)
            .filter(|a| a.kind == FileKind::File)
    }

    pub fn is_dir(&self, ino: Ino) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|i| i.attr.kind == FileKind::Dir)
    }

    /// The pin of directory `ino` (`None` also when it is no directory).
    pub fn dir_pin(&self, ino: Ino) -> Option<PoolId> {
        self.inodes
            .get(&ino)
            .filter(|i| i.attr.kind == FileKind::Dir)
            .and_then(|i| i.attr.pool)
    }

    /// Point file `ino`'s data at `pool`: a move of its data between pools is complete. Not a
    /// change a user made, so no time changes. Returns whether `ino` is a file.
    pub fn set_file_pool(&mut self, ino: Ino, pool: Option<PoolId>) -> bool {
        match self.inodes.get_mut(&ino) {
            Some(i) if i.attr.kind == FileKind::File => {
                i.attr.pool = pool;
                true
            }
            _ => false,
        }
    }

    pub fn query(&self, q: &NsQuery) -> Result<NsReply, FsError> {
        match q {
            NsQuery::Lookup { parent, name } => self.lookup(*parent, name).map(NsReply::Attr),
            NsQuery::GetAttr { ino } => Ok(NsReply::Attr(self.inode(*ino)?.attr.clone())),
            NsQuery::ReadDir { ino, after, limit } => self.read_dir(*ino, after.as_deref(), *limit),
            NsQuery::ReadDirPlus {
                ino,
                after,
                limit,
                xattr,
            } => self.read_dir_plus(*ino, after.as_deref(), *limit, xattr.as_deref()),
            NsQuery::ReadLink { ino } => {
                let target = self.inode(*ino)?.target.clone();
                target.map(NsReply::Link).ok_or(FsError::Invalid)
            }
            NsQuery::GetXattr { ino, name } => {
                self.inode(*ino)?;
                let key = (*ino, name.clone());
                let value = self.xattrs.get(&key).ok_or(FsError::NoData)?;
                Ok(NsReply::Xattr(value.clone()))
            }
            NsQuery::ListXattr { ino } => {
                self.inode(*ino)?;
                let names = self
                    .xattrs_of(*ino)
                    .map(|((_, name), _)| name.clone())
                    .collect();
                Ok(NsReply::XattrNames(names))
            }
            NsQuery::Resolve { path, follow_last } => {
                self.resolve(path, *follow_last).map(NsReply::Attr)
            }
            NsQuery::ResolveXattr { path, xattr } => {
                let attr = self.resolve(path, false)?;
                let value = self.xattrs.get(&(attr.ino, xattr.clone())).cloned();
                Ok(NsReply::AttrXattr(attr, value))
            }
            NsQuery::Stats => Ok(NsReply::Stats(NsStats {
                inodes: self.inodes.len() as u64,
                file_bytes: self.file_bytes,
            })),
        }
    }

    /// Lock and session ops (`None` for every other op).
    fn lock_op(&mut self, op: &NsOp, now: i64) -> Option<Result<NsResult, FsError>> {
        Some(match op {
            NsOp::RenewSession { session, ttl_ms } => {
                self.expire_sessions(now);
                let until = now.saturating_add(i64::from(*ttl_ms) * 1_000_000);
                self.sessions.insert(*session, until);
                Ok(NsResult::Done)
            }
            NsOp::EndSession { session } => {
                self.sessions.remove(session);
                self.retain_locks(|l| l.session != *session);
                self.expire_sessions(now);
                Ok(NsResult::Done)
            }
            NsOp::SetLock { ino, lock, kind } => self.set_lock(*ino, lock, *kind, now),
            NsOp::TestLock { ino, lock, kind } => self
                .check_lock(*ino, lock)
                .map(|()| NsResult::LockTest(self.lock_conflict(*ino, lock, *kind, now))),
            _ => return None,
        })
    }

    fn session_alive(&self, session: u64, now: i64) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|&until| until >= now)
    }

    fn check_lock(&self, ino: Ino, lock: &LockSpec) -> Result<(), FsError> {
        self.inode(ino)?;
        if lock.start > lock.end {
            return Err(FsError::Invalid);
        }
        Ok(())
    }

    /// The first live lock of another owner on `ino` that overlaps `lock` and is incompatible
    /// with `kind`.
    fn lock_conflict(
        &self,
        ino: Ino,
        lock: &LockSpec,
        kind: LockKind,
        now: i64,
    ) -> Option<HeldLock> {
        self.locks.get(&ino)?.iter().copied().find(|held| {
            (held.session, held.owner) != (lock.session, lock.owner)
                && held.start <= lock.end
                && lock.start <= held.end
                && (kind == LockKind::Exclusive || held.kind == LockKind::Exclusive)
                && self.session_alive(held.session, now)
        })
    }

    fn set_lock(
        &mut self,
        ino: Ino,
        lock: &LockSpec,
        kind: Option<LockKind>,
        now: i64,
    ) -> Result<NsResult, FsError> {
        self.check_lock(ino, lock)?;
        if !self.session_alive(lock.session, now) {
            return Err(FsError::Stale);
        }
        if let Some(kind) = kind {
            if self.lock_conflict(ino, lock, kind, now).is_some() {
                return Err(FsError::WouldBlock);
            }
        }
        self.expire_sessions(now);
        let held = self.locks.entry(ino).or_default();
        // The owner's own locks on the range give way: those overlapping it are cut around it.
        let mut kept = Vec::with_capacity(held.len() + 2);
        for l in held.drain(..) {
            let mine = (l.session, l.owner) == (lock.session, lock.owner);
            if !mine || l.end < lock.start || lock.end < l.start {
                kept.push(l);
                continue;
            }
            if l.start < lock.start {
                kept.push(HeldLock {
                    end: lock.start - 1,
                    ..l
                });
            }
            if l.end > lock.end {
                kept.push(HeldLock {
                    start: lock.end + 1,
                    ..l
                });
            }
        }
        if let Some(kind) = kind {
            kept.push(HeldLock {
                kind,
                session: lock.session,
                owner: lock.owner,
                pid: lock.pid,
                start: lock.start,
                end: lock.end,
            });
        }
        *held = kept;
        if held.is_empty() {
            self.locks.remove(&ino);
        }
        Ok(NsResult::Done)
    }

    /// Forget sessions that expired before `now`, and their locks.
    fn expire_sessions(&mut self, now: i64) {
        let before = self.sessions.len();
        self.sessions.retain(|_, until| *until >= now);
        if self.sessions.len() != before {
            let sessions = std::mem::take(&mut self.sessions);
            self.retain_locks(|l| sessions.contains_key(&l.session));
            self.sessions = sessions;
        }
    }

    fn retain_locks(&mut self, keep: impl Fn(&HeldLock) -> bool) {
        self.locks.retain(|_, held| {
            held.retain(&keep);
            !held.is_empty()
        });
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::Stale)
    }

    fn dir(&self, ino: Ino) -> Result<&Inode, FsError> {
        let inode = self.inode(ino)?;
        if inode.attr.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(inode)
    }

    fn child(&self, dir: Ino, name: &str) -> Option<Ino> {
        self.entries.get(&(dir, name.to_string())).copied()
    }

    /// Entries of `dir` from the first one after `after` (or the first one) on, in name order.
    fn entries_of<'a>(
        &'a self,
        dir: Ino,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, Ino)> + 'a {
        // No valid name is empty, so `(dir, "")` sorts before all of the directory's entries.
        let start = match after {
            Some(name) => Bound::Excluded((dir, name.to_string())),
            None => Bound::Included((dir, String::new())),
        };
        self.entries
            .range((start, Bound::Unbounded))
            .take_while(move |((parent, _), _)| *parent == dir)
            .map(|((_, name), ino)| (name.as_str(), *ino))
    }

    fn is_empty_dir(&self, dir: Ino) -> bool {
        self.entries_of(dir, None).next().is_none()
    }

    fn xattrs_of(&self, ino: Ino) -> impl Iterator<Item = (&(Ino, String), &Vec<u8>)> {
        self.xattrs
            .range((ino, String::new())..)
            .take_while(move |((owner, _), _)| *owner == ino)
    }

    /// Whether directory `dir` is `ancestor` or lies below it.
    fn is_within(&self, dir: Ino, ancestor: Ino) -> bool {
        let mut cur = dir;
        loop {
            if cur == ancestor {
                return true;
            }
            match self.inodes.get(&cur).and_then(|i| i.parent) {
                Some(parent) if cur != ROOT_INO => cur = parent,
                _ => return false,
            }
        }
    }

    /// The pool new files in `dir` store their data in: that of the nearest pinned directory on
    /// the way up to the root.
    fn inherited_pool(&self, dir: Ino) -> Option<PoolId> {
        let mut cur = dir;
        loop {
            let inode = self.inodes.get(&cur)?;
            if inode.attr.pool.is_some() || cur == ROOT_INO {
                return inode.attr.pool;
            }
            cur = inode.parent?;
        }
    }

    fn lookup(&self, parent: Ino, name: &str) -> Result<InodeAttr, FsError> {
        let dir = self.dir(parent)?;
        let ino = match name {
            "." => parent,
            ".." => dir.parent.unwrap_or(ROOT_INO),
            _ => {
                check_name(name)?;
                self.child(parent, name).ok_or(FsError::NotFound)?
            }
        };
        Ok(self.inode(ino)?.attr.clone())
    }

    fn read_dir(&self, ino: Ino, after: Option<&str>, limit: u32) -> Result<NsReply, FsError> {
        self.dir(ino)?;
        let limit = limit.clamp(1, READDIR_MAX) as usize;
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for (name, child) in self.entries_of(ino, after) {
            if entries.len() == limit {
                more = true;
                break;
            }
            entries.push(DirEntry {
                name: name.to_string(),
                ino: child,
                kind: self.inode(child)?.attr.kind,
            });
        }
        Ok(NsReply::Dir { entries, more })
    }

    fn read_dir_plus(
        &self,
        ino: Ino,
        after: Option<&str>,
        limit: u32,
        xattr: Option<&str>,
    ) -> Result<NsReply, FsError> {
        self.dir(ino)?;
        let limit = limit.clamp(1, READDIRPLUS_MAX) as usize;
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for (name, child) in self.entries_of(ino, after) {
            if entries.len() == limit {
                more = true;
                break;
            }
            let value = xattr.and_then(|x| self.xattrs.get(&(child, x.to_string())).cloned());
            entries.push(DirEntryPlus {
                name: name.to_string(),
                attr: self.inode(child)?.attr.clone(),
                xattr: value,
            });
        }
        Ok(NsReply::DirPlus { entries, more })
    }

    fn resolve(&self, path: &str, follow_last: bool) -> Result<InodeAttr, FsError> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(FsError::Invalid);
        }
        if path.len() >= PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        // A trailing slash means "a directory": the last symlink is followed and checked.
        let mut must_be_dir = path.len() > 1 && path.ends_with('/');
        let follow_last = follow_last || must_be_dir;
        // Components still to walk, the next one last.
        let mut todo: Vec<&str> = components(path).rev().collect();
        let mut cur = ROOT_INO;
        let mut followed = 0;
        while let Some(component) = todo.pop() {
            let dir = self.dir(cur)?;
            if component == ".." {
                cur = dir.parent.unwrap_or(ROOT_INO);
                continue;
            }
            if component.len() > NAME_MAX {
                return Err(FsError::NameTooLong);
            }
            let child = self.child(cur, component).ok_or(FsError::NotFound)?;
            let inode = self.inode(child)?;
            match &inode.target {
                Some(target) if follow_last || !todo.is_empty() => {
                    followed += 1;
                    if followed > SYMLOOP_MAX {
                        return Err(FsError::Loop);
                    }
                    if todo.is_empty() && target.ends_with('/') {
                        must_be_dir = true;
                    }
                    if target.starts_with('/') {
                        cur = ROOT_INO;
                    }
                    todo.extend(components(target).rev());
                }
                _ => cur = child,
            }
        }
        let attr = &self.inode(cur)?.attr;
        if must_be_dir && attr.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(attr.clone())
    }
}

/// The components of a path that move: no empty ones, no ".".
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// A directory entry name: not empty, ".", "..", no '/' or NUL, at most [`NAME_MAX`] bytes.
fn check_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FsError::Invalid);
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// A symlink target: not empty (Linux says `ENOENT`), no NUL, shorter than [`PATH_MAX`].
fn check_target(target: &str) -> Result<(), FsError> {
    if target.is_empty() {
        return Err(FsError::NotFound);
    }
    if target.contains('\0') {
        return Err(FsError::Invalid);
    }
    if target.len() >= PATH_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// An extended-attribute name and value within Linux's limits.
fn check_xattr(name: &str, value: Option<&[u8]>) -> Result<(), FsError> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    if value.is_some_and(|v| v.len() > XATTR_SIZE_MAX) {
        return Err(FsError::TooBig);
    }
    Ok(())
}

/// The previous value of a key a [`Txn`] wrote.
enum Undo {
    Inode(Ino, Option<Inode>),
    Entry((Ino, String), Option<Ino>),
    Xattr((Ino, String), Option<Vec<u8>>),
}

/// One op being applied: every write goes through here and is logged, so [`Txn::rollback`] can
/// restore the namespace exactly.
struct Txn<'a> {
    ns: &'a mut Namespace,
    now: i64,
    undo: Vec<Undo>,
    /// `next_ino`, `next_generation` and `file_bytes` before the op.
    counters: (Ino, u64, u64),
}

impl<'a> Txn<'a> {
    fn new(ns: &'a mut Namespace, now: i64) -> Txn<'a> {
        let counters = (ns.next_ino, ns.next_generation, ns.file_bytes);
        Txn {
            ns,
            now,
            undo: Vec::new(),
            counters,
        }
    }

    fn rollback(self) {
        for undo in self.undo.into_iter().rev() {
            match undo {
                Undo::Inode(ino, Some(old)) => {
                    self.ns.inodes.insert(ino, old);
                }
                Undo::Inode(ino, None) => {
                    self.ns.inodes.remove(&ino);
                }
                Undo::Entry(key, Some(old)) => {
                    self.ns.entries.insert(key, old);
                }
                Undo::Entry(key, None) => {
                    self.ns.entries.remove(&key);
                }
                Undo::Xattr(key, Some(old)) => {
                    self.ns.xattrs.insert(key, old);
                }
                Undo::Xattr(key, None) => {
                    self.ns.xattrs.remove(&key);
                }
            }
        }
        (
            self.ns.next_ino,
            self.ns.next_generation,
            self.ns.file_bytes,
        ) = self.counters;
    }

    // ---------------------------------------------------------------- logged writes

    fn insert_inode(&mut self, inode: Inode) {
        if inode.attr.kind == FileKind::File {
            self.ns.file_bytes = self.ns.file_bytes.wrapping_add(inode.attr.size);
        }
        let ino = inode.attr.ino;
        let old = self.ns.inodes.insert(ino, inode);
        self.undo.push(Undo::Inode(ino, old));
    }

    /// Remove an inode and its extended attributes.
    fn remove_inode(&mut self, ino: Ino) {
        let old = self.ns.inodes.remove(&ino);
        if let Some(inode) = &old {
            if inode.attr.kind == FileKind::File {
                self.ns.file_bytes = self.ns.file_bytes.wrapping_sub(inode.attr.size);
            }
        }
        self.undo.push(Undo::Inode(ino, old));
        let names: Vec<(Ino, String)> = self.ns.xattrs_of(ino).map(|(k, _)| k.clone()).collect();
        for key in names {
            self.set_xattr(key, None);
        }
    }

    /// Change an inode in place, keeping the file-size sum right.
    fn modify<R>(&mut self, ino: Ino, f: impl FnOnce(&mut Inode) -> R) -> Result<R, FsError> {
        let inode = self.ns.inodes.get_mut(&ino).ok_or(FsError::Stale)?;
        self.undo.push(Undo::Inode(ino, Some(inode.clone())));
        let old_size = inode.attr.size;
        let result = f(inode);
        if inode.attr.kind == FileKind::File {
            self.ns.file_bytes = self
                .ns
                .file_bytes
                .wrapping_sub(old_size)
                .wrapping_add(inode.attr.size);
        }
        Ok(result)
    }

    fn set_entry(&mut self, dir: Ino, name: &str, ino: Option<Ino>) {
        let key = (dir, name.to_string());
        let old = match ino {
            Some(ino) => self.ns.entries.insert(key.clone(), ino),
            None => self.ns.entries.remove(&key),
        };
        self.undo.push(Undo::Entry(key, old));
    }

    fn set_xattr(&mut self, key: (Ino, String), value: Option<Vec<u8>>) {
        let old = match value {
            Some(value) => self.ns.xattrs.insert(key.clone(), value),
            None => self.ns.xattrs.remove(&key),
        };
        self.undo.push(Undo::Xattr(key, old));
    }

    /// A directory's contents changed: mtime and ctime become now, its link count moves by
    /// `subdirs` (a subdirectory came or went).
    fn dir_changed(&mut self, dir: Ino, subdirs: i32) -> Result<(), FsError> {
        let now = self.now;
        self.modify(dir, |d| {
            d.attr.nlink = d.attr.nlink.saturating_add_signed(subdirs);
            d.attr.mtime_ns = now;
            d.attr.ctime_ns = now;
        })
    }

    fn touch_ctime(&mut self, ino: Ino) -> Result<(), FsError> {
        let now = self.now;
        self.modify(ino, |i| i.attr.ctime_ns = now)
    }

    /// Fail if directory `dir` cannot take one more subdirectory.
    fn check_room_for_subdir(&self, dir: Ino) -> Result<(), FsError> {
        if self.ns.inode(dir)?.attr.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        Ok(())
    }

    /// Drop one link of a file or symlink; the inode goes with its last link.
    fn drop_link(&mut self, ino: Ino) -> Result<Option<FreedFile>, FsError> {
        let now = self.now;
        let attr = self.modify(ino, |i| {
            i.attr.nlink = i.attr.nlink.saturating_sub(1);
            i.attr.ctime_ns = now;
            i.attr.clone()
        })?;
        if attr.nlink > 0 {
            return Ok(None);
        }
        self.remove_inode(ino);
        Ok((attr.kind == FileKind::File).then_some(FreedFile {
            ino,
            size: attr.size,
            pool: attr.pool,
            chunk_size: attr.chunk_size,
        }))
    }

    // ---------------------------------------------------------------- ops

    fn op(&mut self, op: &NsOp) -> Result<NsResult, FsError> {
        match op {
            NsOp::Create {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
                target,
                exclusive,
            } => self.create(
                *parent,
                name,
                *kind,
                (*mode, *uid, *gid),
                target.as_deref(),
                *exclusive,
            ),
            NsOp::Link {
                ino,
                new_parent,
                new_name,
            } => self.link(*ino, *new_parent, new_name),
            NsOp::Unlink { parent, name } => self.unlink(*parent, name),
            NsOp::Rmdir { parent, name } => self.rmdir(*parent, name),
            NsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                noreplace,
                exchange,
            } => self.rename(
                (*parent, name),
                (*new_parent, new_name),
                *noreplace,
                *exchange,
            ),
            NsOp::SetAttr {
                ino,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => self.set_attr(*ino, (*mode, *uid, *gid), *size, *atime, *mtime),
            NsOp::SetXattr {
                ino,
                name,
                value,
                flags,
            } => self.set_xattr_op(*ino, name, value, *flags),
            NsOp::RemoveXattr { ino, name } => {
                check_xattr(name, None)?;
                self.ns.inode(*ino)?;
                let key = (*ino, name.clone());
                if !self.ns.xattrs.contains_key(&key) {
                    return Err(FsError::NoData);
                }
                self.set_xattr(key, None);
                self.touch_ctime(*ino)?;
                Ok(NsResult::Done)
            }
            NsOp::Pin { ino, pool } => {
                self.ns.dir(*ino)?;
                let now = self.now;
                let attr = self.modify(*ino, |d| {
                    d.attr.pool = *pool;
                    d.attr.ctime_ns = now;
                    d.attr.clone()
                })?;
                Ok(NsResult::Attr(attr))
            }
            NsOp::Extend { ino, size } => {
                if self.ns.inode(*ino)?.attr.kind != FileKind::File {
                    return Err(FsError::Invalid);
                }
                if *size > MAX_FILE_SIZE {
                    return Err(FsError::FileTooBig);
                }
                let now = self.now;
                let attr = self.modify(*ino, |i| {
                    i.attr.size = i.attr.size.max(*size);
                    i.attr.mtime_ns = now;
                    i.attr.ctime_ns = now;
                    i.attr.clone()
                })?;
                Ok(NsResult::Attr(attr))
            }
            // Only reached inside a batch: `Namespace::apply` takes them before any `Txn`.
            NsOp::RenewSession { .. }
            | NsOp::EndSession { .. }
            | NsOp::SetLock { .. }
            | NsOp::TestLock { .. } => Err(FsError::Invalid),
            NsOp::Batch(ops) => ops
                .iter()
                .map(|op| self.op(op))
                .collect::<Result<_, _>>()
                .map(NsResult::Batch),
        }
    }

    fn create(
        &mut self,
        parent: Ino,
        name: &str,
        kind: FileKind,
        (mode, uid, gid): (u32, u32, u32),
        target: Option<&str>,
        exclusive: bool,
    ) -> Result<NsResult, FsError> {
        check_name(name)?;
        match (kind, target) {
            (FileKind::Symlink, Some(target)) => check_target(target)?,
            (FileKind::Symlink, None) | (_, Some(_)) => return Err(FsError::Invalid),
            _ => {}
        }
        let dir = self.ns.dir(parent)?;
        let (dir_mode, dir_gid) = (dir.attr.mode, dir.attr.gid);
        if let Some(existing) = self.ns.child(parent, name) {
            let attr = &self.ns.inode(existing)?.attr;
            return match (kind, exclusive, attr.kind) {
                (FileKind::File, false, FileKind::File) => Ok(NsResult::Entry {
                    attr: attr.clone(),
                    created: false,
                }),
                (FileKind::File, false, FileKind::Dir) => Err(FsError::IsDir),
                _ => Err(FsError::Exists),
            };
        }
        if kind == FileKind::Dir {
            self.check_room_for_subdir(parent)?;
        }
        let setgid_dir = dir_mode & S_ISGID != 0;
        let gid = if setgid_dir { dir_gid } else { gid };
        let mode = match kind {
            FileKind::Symlink => 0o777,
            FileKind::Dir if setgid_dir => (mode | S_ISGID) & 0o7777,
            _ => mode & 0o7777,
        };
        let ino = self.ns.next_ino;
        let generation = self.ns.next_generation;
        self.ns.next_ino += 1;
        self.ns.next_generation += 1;
        let attr = InodeAttr {
            ino,
            kind,
            mode,
            uid,
            gid,
            size: target.map_or(0, |t| t.len() as u64),
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            atime_ns: self.now,
            mtime_ns: self.now,
            ctime_ns: self.now,
            generation,
            pool: match kind {
                FileKind::File => self.ns.inherited_pool(parent),
                _ => None,
            },
            chunk_size: match kind {
                FileKind::File => DEFAULT_CHUNK_SIZE,
                _ => 0,
            },
        };
        self.insert_inode(Inode {
            attr: attr.clone(),
            parent: (kind == FileKind::Dir).then_some(parent),
            target: target.map(str::to_string),
        });
        self.set_entry(parent, name, Some(ino));
        self.dir_changed(parent, i32::from(kind == FileKind::Dir))?;
        Ok(NsResult::Entry {
            attr,
            created: true,
        })
    }

    fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &str) -> Result<NsResult, FsError> {
        check_name(new_name)?;
        let inode = self.ns.inode(ino)?;
        let (kind, nlink) = (inode.attr.kind, inode.attr.nlink);
        self.ns.dir(new_parent)?;
        if self.ns.child(new_parent, new_name).is_some() {
            return Err(FsError::Exists);
        }
        if kind == FileKind::Dir {
            return Err(FsError::NotPermitted);
        }
        if nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        self.set_entry(new_parent, new_name, Some(ino));
        let now = self.now;
        let attr = self.modify(ino, |i| {
            i.attr.nlink += 1;
            i.attr.ctime_ns = now;
            i.attr.clone()
        })?;
        self.dir_changed(new_parent, 0)?;
        Ok(NsResult::Entry {
            attr,
            created: true,
        })
    }

    fn unlink(&mut self, parent: Ino, name: &str) -> Result<NsResult, FsError> {
        check_name(name)?;
        self.ns.dir(parent)?;
        let ino = self.ns.child(parent, name).ok_or(FsError::NotFound)?;
        if self.ns.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        self.set_entry(parent, name, None);
        self.dir_changed(parent, 0)?;
        let freed = self.drop_link(ino)?;
        Ok(NsResult::Unlinked { freed })
    }

    fn rmdir(&mut self, parent: Ino, name: &str) -> Result<NsResult, FsError> {
        check_name(name)?;
        self.ns.dir(parent)?;
        let ino = self.ns.child(parent, name).ok_or(FsError::NotFound)?;
        self.ns.dir(ino)?;
        if !self.ns.is_empty_dir(ino) {
            return Err(FsError::NotEmpty);
        }
        self.set_entry(parent, name, None);
        self.remove_inode(ino);
        self.dir_changed(parent, -1)?;
        Ok(NsResult::Unlinked { freed: None })
    }

    fn rename(
        &mut self,
        (parent, name): (Ino, &str),
        (new_parent, new_name): (Ino, &str),
        noreplace: bool,
        exchange: bool,
    ) -> Result<NsResult, FsError> {
        check_name(name)?;
        check_name(new_name)?;
        if noreplace && exchange {
            return Err(FsError::Invalid);
        }
        self.ns.dir(parent)?;
        self.ns.dir(new_parent)?;
        let src = self.ns.child(parent, name).ok_or(FsError::NotFound)?;
        let dst = self.ns.child(new_parent, new_name);
        match dst {
            Some(_) if noreplace => return Err(FsError::Exists),
            None if exchange => return Err(FsError::NotFound),
            // Two links of one inode: POSIX says rename does nothing.
            Some(dst) if dst == src => {
                return Ok(NsResult::Renamed {
                    replaced_freed: None,
                })
            }
            _ => {}
        }
        let src_is_dir = self.ns.inode(src)?.attr.kind == FileKind::Dir;
        if src_is_dir && self.ns.is_within(new_parent, src) {
            return Err(FsError::Invalid);
        }
        let mut replaced_freed = None;
        if let Some(dst) = dst {
            let dst_is_dir = self.ns.inode(dst)?.attr.kind == FileKind::Dir;
            if exchange {
                if dst_is_dir && self.ns.is_within(parent, dst) {
                    return Err(FsError::Invalid);
                }
                return self.exchange((parent, name, src), (new_parent, new_name, dst));
            }
            match (src_is_dir, dst_is_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.ns.is_empty_dir(dst) => return Err(FsError::NotEmpty),
                (true, true) => {
                    self.remove_inode(dst);
                    self.dir_changed(new_parent, -1)?;
                }
                (false, false) => replaced_freed = self.drop_link(dst)?,
            }
        }
        self.set_entry(parent, name, None);
        self.set_entry(new_parent, new_name, Some(src));
        self.touch_ctime(src)?;
        if parent == new_parent {
            self.dir_changed(parent, 0)?;
        } else {
            // A directory's parent counts it as a link (its `..`), which moves with it.
            let moved = i32::from(src_is_dir);
            if src_is_dir {
                self.check_room_for_subdir(new_parent)?;
                self.modify(src, |d| d.parent = Some(new_parent))?;
            }
            self.dir_changed(parent, -moved)?;
            self.dir_changed(new_parent, moved)?;
        }
        Ok(NsResult::Renamed { replaced_freed })
    }

    /// `RENAME_EXCHANGE`, once checked: `a` and `b` swap places.
    fn exchange(
        &mut self,
        (a_parent, a_name, a): (Ino, &str, Ino),
        (b_parent, b_name, b): (Ino, &str, Ino),
    ) -> Result<NsResult, FsError> {
        self.set_entry(a_parent, a_name, Some(b));
        self.set_entry(b_parent, b_name, Some(a));
        self.touch_ctime(a)?;
        self.touch_ctime(b)?;
        if a_parent == b_parent {
            self.dir_changed(a_parent, 0)?;
        } else {
            let a_is_dir = self.ns.inode(a)?.attr.kind == FileKind::Dir;
            let b_is_dir = self.ns.inode(b)?.attr.kind == FileKind::Dir;
            // Each directory's `..` link moves with it: `a`'s parent gains b's and loses a's.
            let gain = i32::from(b_is_dir) - i32::from(a_is_dir);
            if gain > 0 {
                self.check_room_for_subdir(a_parent)?;
            } else if gain < 0 {
                self.check_room_for_subdir(b_parent)?;
            }
            if a_is_dir {
                self.modify(a, |d| d.parent = Some(b_parent))?;
            }
            if b_is_dir {
                self.modify(b, |d| d.parent = Some(a_parent))?;
            }
            self.dir_changed(a_parent, gain)?;
            self.dir_changed(b_parent, -gain)?;
        }
        Ok(NsResult::Renamed {
            replaced_freed: None,
        })
    }

    fn set_attr(
        &mut self,
        ino: Ino,
        (mode, uid, gid): (Option<u32>, Option<u32>, Option<u32>),
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<NsResult, FsError> {
        let kind = self.ns.inode(ino)?.attr.kind;
        if let Some(size) = size {
            match kind {
                FileKind::Dir => return Err(FsError::IsDir),
                FileKind::Symlink => return Err(FsError::Invalid),
                FileKind::File if size > MAX_FILE_SIZE => return Err(FsError::FileTooBig),
                FileKind::File => {}
            }
        }
        let now = self.now;
        let at = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(ns) => ns,
        };
        let attr = self.modify(ino, |i| {
            let a = &mut i.attr;
            if let Some(mode) = mode {
                a.mode = mode & 0o7777;
            }
            if let Some(uid) = uid {
                a.uid = uid;
            }
            if let Some(gid) = gid {
                a.gid = gid;
            }
            if let Some(size) = size {
                a.size = size;
                a.mtime_ns = now;
            }
            if let Some(t) = atime {
                a.atime_ns = at(t);
            }
            if let Some(t) = mtime {
                a.mtime_ns = at(t);
            }
            a.ctime_ns = now;
            a.clone()
        })?;
        Ok(NsResult::Attr(attr))
    }

    fn set_xattr_op(
        &mut self,
        ino: Ino,
        name: &str,
        value: &[u8],
        flags: XattrFlag,
    ) -> Result<NsResult, FsError> {
        check_xattr(name, Some(value))?;
        self.ns.inode(ino)?;
        let key = (ino, name.to_string());
        match (flags, self.ns.xattrs.contains_key(&key)) {
            (XattrFlag::CreateOnly, true) => return Err(FsError::Exists),
            (XattrFlag::ReplaceOnly, false) => return Err(FsError::NoData),
            _ => {}
        }
        self.set_xattr(key, Some(value.to_vec()));
        self.touch_ctime(ino)?;
        Ok(NsResult::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::fs::FileKind::{Dir, File, Symlink};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeSet, VecDeque};

    const T0: i64 = 1_000_000;

    fn create_op(parent: Ino, name: &str, kind: FileKind) -> NsOp {
        NsOp::Create {
            parent,
            name: name.into(),
            kind,
            mode: if kind == Dir { 0o755 } else { 0o644 },
            uid: 1000,
            gid: 100,
            target: (kind == Symlink).then(|| "target".to_string()),
            exclusive: true,
        }
    }

    fn entry_attr(r: NsResult) -> InodeAttr {
        match r {
            NsResult::Entry { attr, .. } => attr,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    fn mk(ns: &mut Namespace, parent: Ino, name: &str, kind: FileKind) -> Ino {
        entry_attr(ns.apply(&create_op(parent, name, kind), T0).unwrap()).ino
    }

    fn symlink(ns: &mut Namespace, parent: Ino, name: &str, target: &str) -> Ino {
        let op = NsOp::Create {
            parent,
            name: name.into(),
            kind: Symlink,
            mode: 0,
            uid: 0,
            gid: 0,
            target: Some(target.into()),
            exclusive: true,
        };
        entry_attr(ns.apply(&op, T0).unwrap()).ino
    }

    fn attr(ns: &Namespace, ino: Ino) -> InodeAttr {
        match ns.query(&NsQuery::GetAttr { ino }) {
            Ok(NsReply::Attr(a)) => a,
            other => panic!("getattr {ino}: {other:?}"),
        }
    }

    fn lookup(ns: &Namespace, parent: Ino, name: &str) -> Result<Ino, FsError> {
        let q = NsQuery::Lookup {
            parent,
            name: name.into(),
        };
        match ns.query(&q)? {
            NsReply::Attr(a) => Ok(a.ino),
            other => panic!("lookup: {other:?}"),
        }
    }

    fn resolve(ns: &Namespace, path: &str, follow_last: bool) -> Result<Ino, FsError> {
        let q = NsQuery::Resolve {
            path: path.into(),
            follow_last,
        };
        match ns.query(&q)? {
            NsReply::Attr(a) => Ok(a.ino),
            other => panic!("resolve: {other:?}"),
        }
    }

    /// Every entry of a directory, read in pages of `page`.
    fn list(ns: &Namespace, ino: Ino, page: u32) -> Result<Vec<DirEntry>, FsError> {
        let mut all: Vec<DirEntry> = Vec::new();
        loop {
            let q = NsQuery::ReadDir {
                ino,
                after: all.last().map(|e| e.name.clone()),
                limit: page,
            };
            match ns.query(&q)? {
                NsReply::Dir { entries, more } => {
                    assert!(entries.len() <= page.max(1) as usize);
                    assert!(!more || !entries.is_empty());
                    all.extend(entries);
                    if !more {
                        return Ok(all);
                    }
                }
                other => panic!("readdir: {other:?}"),
            }
        }
    }

    fn names(ns: &Namespace, ino: Ino) -> Vec<String> {
        list(ns, ino, 2)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn unlink(parent: Ino, name: &str) -> NsOp {
        NsOp::Unlink {
            parent,
            name: name.into(),
        }
    }

    fn rmdir(parent: Ino, name: &str) -> NsOp {
        NsOp::Rmdir {
            parent,
            name: name.into(),
        }
    }

    fn link(ino: Ino, new_parent: Ino, new_name: &str) -> NsOp {
        NsOp::Link {
            ino,
            new_parent,
            new_name: new_name.into(),
        }
    }

    fn rename(p: Ino, n: &str, np: Ino, nn: &str) -> NsOp {
        rename_flags(p, n, np, nn, false, false)
    }

    fn rename_flags(p: Ino, n: &str, np: Ino, nn: &str, noreplace: bool, exchange: bool) -> NsOp {
        NsOp::Rename {
            parent: p,
            name: n.into(),
            new_parent: np,
            new_name: nn.into(),
            noreplace,
            exchange,
        }
    }

    fn set_size(ino: Ino, size: u64) -> NsOp {
        NsOp::SetAttr {
            ino,
            mode: None,
            uid: None,
            gid: None,
            size: Some(size),
            atime: None,
            mtime: None,
        }
    }

    fn set_xattr(ino: Ino, name: &str, value: &[u8], flags: XattrFlag) -> NsOp {
        NsOp::SetXattr {
            ino,
            name: name.into(),
            value: value.to_vec(),
            flags,
        }
    }

    /// `op` fails with `err` and changes nothing.
    fn fails(ns: &mut Namespace, op: &NsOp, err: FsError) {
        let before = ns.clone();
        assert_eq!(ns.apply(op, T0 + 999), Err(err), "{op:?}");
        assert_eq!(*ns, before, "failed op {op:?} changed the namespace");
    }

    fn stats(ns: &Namespace) -> NsStats {
        match ns.query(&NsQuery::Stats) {
            Ok(NsReply::Stats(s)) => s,
            other => panic!("stats: {other:?}"),
        }
    }

    /// Structural invariants: no dangling entry, no leaked or unreachable inode, link counts,
    /// parent pointers, the file-size sum, unique generations.
    fn check_invariants(ns: &Namespace) {
        let mut incoming: BTreeMap<Ino, u32> = BTreeMap::new();
        let mut subdirs: BTreeMap<Ino, u32> = BTreeMap::new();
        for ((dir, name), ino) in &ns.entries {
            assert_eq!(check_name(name), Ok(()));
            assert_eq!(
                ns.inodes[dir].attr.kind, Dir,
                "entry {name:?} in a non-directory"
            );
            let child = ns
                .inodes
                .get(ino)
                .unwrap_or_else(|| panic!("dangling entry {dir}/{name}"));
            *incoming.entry(*ino).or_default() += 1;
            if child.attr.kind == Dir {
                assert_eq!(child.parent, Some(*dir), "parent of {ino}");
                *subdirs.entry(*dir).or_default() += 1;
            }
        }
        let mut file_bytes = 0u64;
        let mut generations = BTreeSet::new();
        for (ino, inode) in &ns.inodes {
            let a = &inode.attr;
            assert_eq!(a.ino, *ino);
            assert!(*ino < ns.next_ino && a.generation < ns.next_generation);
            assert!(generations.insert(a.generation), "generation reused");
            let links = incoming.get(ino).copied().unwrap_or(0);
            match a.kind {
                Dir => {
                    assert_eq!(links, u32::from(*ino != ROOT_INO), "links to dir {ino}");
                    assert_eq!(a.nlink, 2 + subdirs.get(ino).copied().unwrap_or(0));
                    // Up the parents to the root, in fewer steps than there are inodes.
                    let (mut cur, mut steps) = (*ino, 0);
                    while cur != ROOT_INO {
                        cur = ns.inodes[&cur].parent.expect("directory without parent");
                        steps += 1;
                        assert!(
                            steps < ns.inodes.len(),
                            "directory {ino} not below the root"
                        );
                    }
                }
                File | Symlink => {
                    assert!(links > 0, "leaked inode {ino}");
                    assert_eq!(a.nlink, links, "nlink of {ino}");
                    assert_eq!(inode.parent, None);
                    assert_eq!(inode.target.is_some(), a.kind == Symlink);
                    if a.kind == File {
                        file_bytes += a.size;
                    } else {
                        assert_eq!(inode.target.as_ref().map(|t| t.len() as u64), Some(a.size));
                    }
                }
            }
        }
        assert_eq!(file_bytes, ns.file_bytes);
        for (ino, _) in ns.xattrs.keys() {
            assert!(ns.inodes.contains_key(ino), "xattr of dead inode {ino}");
        }
    }

    // ---------------------------------------------------------------- create

    #[test]
    fn new_namespace_has_only_the_root() {
        let ns = Namespace::new(T0);
        let root = attr(&ns, ROOT_INO);
        assert_eq!((root.kind, root.mode, root.nlink), (Dir, 0o755, 2));
        assert_eq!((root.atime_ns, root.mtime_ns, root.ctime_ns), (T0, T0, T0));
        assert_eq!(lookup(&ns, ROOT_INO, ".."), Ok(ROOT_INO));
        assert_eq!(lookup(&ns, ROOT_INO, "."), Ok(ROOT_INO));
        assert!(names(&ns, ROOT_INO).is_empty());
        assert_eq!(
            stats(&ns),
            NsStats {
                inodes: 1,
                file_bytes: 0
            }
        );
        check_invariants(&ns);
    }

    #[test]
    fn create_sets_attributes_and_touches_the_parent() {
        let mut ns = Namespace::new(T0);
        let now = T0 + 5;
        let mut made = Vec::new();
        for (name, kind) in [("f", File), ("d", Dir), ("l", Symlink)] {
            let mut op = create_op(ROOT_INO, name, kind);
            if let NsOp::Create { mode, .. } = &mut op {
                *mode |= 0o170_000; // file-type bits from a FUSE mknod are ignored
            }
            match ns.apply(&op, now).unwrap() {
                NsResult::Entry { attr, created } => {
                    assert!(created);
                    made.push(attr);
                }
                other => panic!("{other:?}"),
            }
        }
        let [f, d, l] = &made[..] else { panic!() };
        assert_eq!((f.kind, f.mode, f.nlink, f.size), (File, 0o644, 1, 0));
        assert_eq!(
            (f.uid, f.gid, f.chunk_size, f.pool),
            (1000, 100, DEFAULT_CHUNK_SIZE, None)
        );
        assert_eq!((d.kind, d.mode, d.nlink, d.chunk_size), (Dir, 0o755, 2, 0));
        assert_eq!((l.kind, l.mode, l.nlink, l.size), (Symlink, 0o777, 1, 6));
        for (a, name) in made.iter().zip(["f", "d", "l"]) {
            assert_eq!((a.atime_ns, a.mtime_ns, a.ctime_ns), (now, now, now));
            assert_eq!(attr(&ns, a.ino), *a);
            assert_eq!(lookup(&ns, ROOT_INO, name), Ok(a.ino));
        }
        assert!(f.ino < d.ino && d.ino < l.ino);
        assert!(f.generation != d.generation && d.generation != l.generation);
        let root = attr(&ns, ROOT_INO);
        assert_eq!((root.nlink, root.mtime_ns, root.ctime_ns), (3, now, now));
        assert_eq!(names(&ns, ROOT_INO), ["d", "f", "l"]);
        check_invariants(&ns);
    }

    #[test]
    fn names_are_validated_by_every_op() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let long = "n".repeat(NAME_MAX + 1);
        let bad = [
            ("", FsError::Invalid),
            (".", FsError::Invalid),
            ("..", FsError::Invalid),
            ("a/b", FsError::Invalid),
            ("a\0b", FsError::Invalid),
            (long.as_str(), FsError::NameTooLong),
        ];
        for (name, err) in bad {
            fails(&mut ns, &create_op(ROOT_INO, name, File), err);
            fails(&mut ns, &create_op(ROOT_INO, name, Dir), err);
            fails(&mut ns, &link(f, ROOT_INO, name), err);
            fails(&mut ns, &unlink(ROOT_INO, name), err);
            fails(&mut ns, &rmdir(ROOT_INO, name), err);
            fails(&mut ns, &rename(ROOT_INO, "f", ROOT_INO, name), err);
            fails(&mut ns, &rename(ROOT_INO, name, ROOT_INO, "g"), err);
            if !name.starts_with('.') {
                assert_eq!(lookup(&ns, ROOT_INO, name), Err(err), "{name:?}");
            }
        }
        let longest = "n".repeat(NAME_MAX);
        mk(&mut ns, ROOT_INO, &longest, File);
        assert!(lookup(&ns, ROOT_INO, &longest).is_ok());
        check_invariants(&ns);
    }

    #[test]
    fn create_errors() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        mk(&mut ns, ROOT_INO, "l", Symlink);
        fails(&mut ns, &create_op(999, "x", File), FsError::Stale);
        fails(&mut ns, &create_op(f, "x", File), FsError::NotDir);
        for name in ["f", "d", "l"] {
            for kind in [File, Dir, Symlink] {
                fails(&mut ns, &create_op(ROOT_INO, name, kind), FsError::Exists);
            }
        }
        let non_exclusive = |name: &str, kind| {
            let mut op = create_op(ROOT_INO, name, kind);
            if let NsOp::Create { exclusive, .. } = &mut op {
                *exclusive = false;
            }
            op
        };
        // A non-exclusive file create finds the file, changing nothing.
        let before = ns.clone();
        assert_eq!(
            ns.apply(&non_exclusive("f", File), T0 + 7),
            Ok(NsResult::Entry {
                attr: attr(&ns, f),
                created: false
            })
        );
        assert_eq!(ns, before);
        fails(&mut ns, &non_exclusive("d", File), FsError::IsDir);
        fails(&mut ns, &non_exclusive("l", File), FsError::Exists);
        fails(&mut ns, &non_exclusive("d", Dir), FsError::Exists);
        fails(&mut ns, &non_exclusive("f", Symlink), FsError::Exists);
        // Targets: required for symlinks only, not empty, no NUL, shorter than PATH_MAX.
        let with_target = |kind, target: Option<&str>| NsOp::Create {
            parent: d,
            name: "t".into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            target: target.map(str::to_string),
            exclusive: true,
        };
        fails(&mut ns, &with_target(Symlink, None), FsError::Invalid);
        fails(&mut ns, &with_target(File, Some("x")), FsError::Invalid);
        fails(&mut ns, &with_target(Dir, Some("x")), FsError::Invalid);
        fails(&mut ns, &with_target(Symlink, Some("")), FsError::NotFound);
        fails(
            &mut ns,
            &with_target(Symlink, Some("a\0b")),
            FsError::Invalid,
        );
        let too_long = "x".repeat(PATH_MAX);
        fails(
            &mut ns,
            &with_target(Symlink, Some(&too_long)),
            FsError::NameTooLong,
        );
        let longest = "x".repeat(PATH_MAX - 1);
        assert!(ns.apply(&with_target(Symlink, Some(&longest)), T0).is_ok());
        check_invariants(&ns);
    }

    #[test]
    fn setgid_directory_passes_on_its_group() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let chmod = NsOp::SetAttr {
            ino: d,
            mode: Some(0o2775),
            uid: None,
            gid: Some(50),
            size: None,
            atime: None,
            mtime: None,
        };
        ns.apply(&chmod, T0).unwrap();
        let f = mk(&mut ns, d, "f", File);
        let sub = mk(&mut ns, d, "sub", Dir);
        let (f, sub) = (attr(&ns, f), attr(&ns, sub));
        assert_eq!((f.gid, f.mode), (50, 0o644));
        assert_eq!((sub.gid, sub.mode), (50, 0o2755));
        let plain = mk(&mut ns, ROOT_INO, "plain", Dir);
        let plain = attr(&ns, plain);
        assert_eq!((plain.gid, plain.mode), (100, 0o755));
    }

    #[test]
    fn link_count_limits_are_emlink() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        for i in 1..LINK_MAX {
            ns.apply(&link(f, ROOT_INO, &format!("l{i}")), T0).unwrap();
        }
        assert_eq!(attr(&ns, f).nlink, LINK_MAX);
        fails(
            &mut ns,
            &link(f, ROOT_INO, "one-more"),
            FsError::TooManyLinks,
        );

        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        for i in 2..LINK_MAX {
            mk(&mut ns, d, &format!("s{i}"), Dir);
        }
        assert_eq!(attr(&ns, d).nlink, LINK_MAX);
        fails(
            &mut ns,
            &create_op(d, "one-more", Dir),
            FsError::TooManyLinks,
        );
        mk(&mut ns, d, "a-file-still-fits", File);
        let outside = mk(&mut ns, ROOT_INO, "outside", Dir);
        fails(
            &mut ns,
            &rename(ROOT_INO, "outside", d, "in"),
            FsError::TooManyLinks,
        );
        // Exchanging a directory into `d` for a file out of it gains `d` a link too.
        fails(
            &mut ns,
            &rename_flags(d, "a-file-still-fits", ROOT_INO, "outside", false, true),
            FsError::TooManyLinks,
        );
        assert_eq!(lookup(&ns, ROOT_INO, "outside"), Ok(outside));
    }

    // ---------------------------------------------------------------- unlink, rmdir, link

    #[test]
    fn unlink_frees_the_last_link_only() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let f = mk(&mut ns, d, "f", File);
        ns.apply(&set_size(f, 10 << 20), T0).unwrap();
        ns.apply(&link(f, ROOT_INO, "g"), T0).unwrap();
        assert_eq!(attr(&ns, f).nlink, 2);
        assert_eq!(
            ns.apply(&unlink(d, "f"), T0 + 1),
            Ok(NsResult::Unlinked { freed: None })
        );
        let a = attr(&ns, f);
        assert_eq!((a.nlink, a.ctime_ns), (1, T0 + 1));
        assert_eq!(attr(&ns, d).mtime_ns, T0 + 1);
        assert_eq!(stats(&ns).file_bytes, 10 << 20);
        assert_eq!(
            ns.apply(&unlink(ROOT_INO, "g"), T0 + 2),
            Ok(NsResult::Unlinked {
                freed: Some(FreedFile {
                    ino: f,
                    size: 10 << 20,
                    pool: None,
                    chunk_size: DEFAULT_CHUNK_SIZE
                })
            })
        );
        assert_eq!(ns.query(&NsQuery::GetAttr { ino: f }), Err(FsError::Stale));
        assert_eq!(
            stats(&ns),
            NsStats {
                inodes: 2,
                file_bytes: 0
            }
        );
        symlink(&mut ns, d, "l", "f");
        assert_eq!(
            ns.apply(&unlink(d, "l"), T0),
            Ok(NsResult::Unlinked { freed: None })
        );
        fails(&mut ns, &unlink(d, "missing"), FsError::NotFound);
        fails(&mut ns, &unlink(ROOT_INO, "d"), FsError::IsDir);
        let file = mk(&mut ns, d, "file", File);
        fails(&mut ns, &unlink(file, "x"), FsError::NotDir);
        fails(&mut ns, &unlink(999, "x"), FsError::Stale);
        check_invariants(&ns);
    }

    #[test]
    fn rmdir_rules() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let e = mk(&mut ns, d, "e", Dir);
        mk(&mut ns, e, "f", File);
        ns.apply(&set_xattr(e, "user.k", b"v", XattrFlag::Either), T0)
            .unwrap();
        fails(&mut ns, &rmdir(ROOT_INO, "d"), FsError::NotEmpty);
        fails(&mut ns, &rmdir(e, "f"), FsError::NotDir);
        fails(&mut ns, &rmdir(d, "missing"), FsError::NotFound);
        fails(&mut ns, &rmdir(999, "e"), FsError::Stale);
        assert_eq!(attr(&ns, d).nlink, 3);
        ns.apply(&unlink(e, "f"), T0).unwrap();
        assert_eq!(
            ns.apply(&rmdir(d, "e"), T0 + 3),
            Ok(NsResult::Unlinked { freed: None })
        );
        let da = attr(&ns, d);
        assert_eq!((da.nlink, da.mtime_ns, da.ctime_ns), (2, T0 + 3, T0 + 3));
        assert_eq!(ns.query(&NsQuery::GetAttr { ino: e }), Err(FsError::Stale));
        assert!(ns.xattrs.is_empty(), "xattrs outlived their directory");
        check_invariants(&ns);
    }

    #[test]
    fn hard_links() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let l = symlink(&mut ns, ROOT_INO, "l", "f");
        let r = entry_attr(ns.apply(&link(f, d, "g"), T0 + 4).unwrap());
        assert_eq!((r.ino, r.nlink, r.ctime_ns), (f, 2, T0 + 4));
        assert_eq!(attr(&ns, d).mtime_ns, T0 + 4);
        assert_eq!(lookup(&ns, d, "g"), Ok(f));
        assert_eq!(attr(&ns, d).nlink, 2, "a file link is not a subdirectory");
        ns.apply(&link(l, d, "l2"), T0).unwrap();
        assert_eq!(attr(&ns, l).nlink, 2);
        fails(&mut ns, &link(d, ROOT_INO, "d2"), FsError::NotPermitted);
        fails(&mut ns, &link(f, d, "g"), FsError::Exists);
        fails(&mut ns, &link(d, ROOT_INO, "f"), FsError::Exists);
        fails(&mut ns, &link(f, f, "x"), FsError::NotDir);
        fails(&mut ns, &link(999, d, "x"), FsError::Stale);
        fails(&mut ns, &link(f, 999, "x"), FsError::Stale);
        check_invariants(&ns);
    }

    // ---------------------------------------------------------------- rename

    #[test]
    fn rename_moves_across_directories() {
        let mut ns = Namespace::new(T0);
        let a = mk(&mut ns, ROOT_INO, "a", Dir);
        let b = mk(&mut ns, ROOT_INO, "b", Dir);
        let f = mk(&mut ns, a, "f", File);
        let sub = mk(&mut ns, a, "sub", Dir);
        mk(&mut ns, sub, "inner", File);
        let now = T0 + 10;
        assert_eq!(
            ns.apply(&rename(a, "f", b, "g"), now),
            Ok(NsResult::Renamed {
                replaced_freed: None
            })
        );
        assert_eq!(lookup(&ns, a, "f"), Err(FsError::NotFound));
        assert_eq!(lookup(&ns, b, "g"), Ok(f));
        assert_eq!(attr(&ns, f).ctime_ns, now);
        ns.apply(&rename(a, "sub", b, "sub2"), now).unwrap();
        assert_eq!((attr(&ns, a).nlink, attr(&ns, b).nlink), (2, 3));
        assert_eq!(lookup(&ns, sub, ".."), Ok(b));
        assert_eq!(
            resolve(&ns, "/b/sub2/inner", false),
            lookup(&ns, sub, "inner")
        );
        for dir in [a, b] {
            let da = attr(&ns, dir);
            assert_eq!((da.mtime_ns, da.ctime_ns), (now, now));
        }
        // Within one directory, a rename of a directory leaves the link count alone.
        ns.apply(&rename(b, "sub2", b, "sub3"), now).unwrap();
        assert_eq!(attr(&ns, b).nlink, 3);
        fails(&mut ns, &rename(a, "missing", b, "x"), FsError::NotFound);
        fails(&mut ns, &rename(999, "g", b, "x"), FsError::Stale);
        fails(&mut ns, &rename(b, "g", 999, "x"), FsError::Stale);
        fails(&mut ns, &rename(f, "g", b, "x"), FsError::NotDir);
        fails(&mut ns, &rename(b, "g", f, "x"), FsError::NotDir);
        check_invariants(&ns);
    }

    #[test]
    fn rename_over_existing_targets() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let g = mk(&mut ns, d, "g", File);
        ns.apply(&set_size(g, 3), T0).unwrap();
        // File over file: the replaced file's last link goes.
        assert_eq!(
            ns.apply(&rename(ROOT_INO, "f", d, "g"), T0),
            Ok(NsResult::Renamed {
                replaced_freed: Some(FreedFile {
                    ino: g,
                    size: 3,
                    pool: None,
                    chunk_size: DEFAULT_CHUNK_SIZE
                })
            })
        );
        assert_eq!(lookup(&ns, d, "g"), Ok(f));
        // Over a file with another link: that link stays.
        let h = mk(&mut ns, ROOT_INO, "h", File);
        let k = mk(&mut ns, ROOT_INO, "k", File);
        ns.apply(&link(k, d, "k2"), T0).unwrap();
        assert_eq!(
            ns.apply(&rename(ROOT_INO, "h", ROOT_INO, "k"), T0 + 1),
            Ok(NsResult::Renamed {
                replaced_freed: None
            })
        );
        assert_eq!(lookup(&ns, ROOT_INO, "k"), Ok(h));
        let ka = attr(&ns, k);
        assert_eq!((ka.nlink, ka.ctime_ns), (1, T0 + 1));
        // Directory over empty directory.
        let x = mk(&mut ns, ROOT_INO, "x", Dir);
        mk(&mut ns, x, "inside", File);
        let empty = mk(&mut ns, d, "empty", Dir);
        assert_eq!(attr(&ns, d).nlink, 3);
        ns.apply(&rename(ROOT_INO, "x", d, "empty"), T0).unwrap();
        assert_eq!(lookup(&ns, d, "empty"), Ok(x));
        assert_eq!(
            ns.query(&NsQuery::GetAttr { ino: empty }),
            Err(FsError::Stale)
        );
        assert_eq!(attr(&ns, d).nlink, 3);
        assert_eq!(attr(&ns, ROOT_INO).nlink, 3);
        // The refusals.
        let y = mk(&mut ns, ROOT_INO, "y", Dir);
        fails(
            &mut ns,
            &rename(ROOT_INO, "y", d, "empty"),
            FsError::NotEmpty,
        );
        fails(&mut ns, &rename(ROOT_INO, "y", d, "g"), FsError::NotDir);
        fails(&mut ns, &rename(d, "g", ROOT_INO, "y"), FsError::IsDir);
        assert_eq!(lookup(&ns, ROOT_INO, "y"), Ok(y));
        check_invariants(&ns);
    }

    #[test]
    fn rename_into_own_subtree_is_einval() {
        let mut ns = Namespace::new(T0);
        let a = mk(&mut ns, ROOT_INO, "a", Dir);
        let b = mk(&mut ns, a, "b", Dir);
        let c = mk(&mut ns, b, "c", Dir);
        fails(&mut ns, &rename(ROOT_INO, "a", a, "x"), FsError::Invalid);
        fails(&mut ns, &rename(ROOT_INO, "a", c, "x"), FsError::Invalid);
        fails(&mut ns, &rename(a, "b", c, "b"), FsError::Invalid);
        // Onto an ancestor: the ancestor holds the source, so it is not empty.
        fails(&mut ns, &rename(b, "c", ROOT_INO, "a"), FsError::NotEmpty);
        let f = mk(&mut ns, c, "f", File);
        fails(&mut ns, &rename(c, "f", ROOT_INO, "a"), FsError::IsDir);
        // A file may go anywhere, and a directory up.
        ns.apply(&rename(c, "f", ROOT_INO, "f"), T0).unwrap();
        ns.apply(&rename(b, "c", ROOT_INO, "c"), T0).unwrap();
        assert_eq!(resolve(&ns, "/c", false), Ok(c));
        assert_eq!(resolve(&ns, "/f", false), Ok(f));
        check_invariants(&ns);
    }

    #[test]
    fn rename_onto_itself_does_nothing() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        ns.apply(&link(f, ROOT_INO, "g"), T0).unwrap();
        mk(&mut ns, ROOT_INO, "d", Dir);
        let before = ns.clone();
        for op in [
            rename(ROOT_INO, "f", ROOT_INO, "g"),
            rename(ROOT_INO, "f", ROOT_INO, "f"),
            rename(ROOT_INO, "d", ROOT_INO, "d"),
            rename_flags(ROOT_INO, "f", ROOT_INO, "g", false, true),
        ] {
            assert_eq!(
                ns.apply(&op, T0 + 50),
                Ok(NsResult::Renamed {
                    replaced_freed: None
                })
            );
            assert_eq!(ns, before, "{op:?}");
        }
        // With noreplace the existing target is an error first, as on Linux.
        fails(
            &mut ns,
            &rename_flags(ROOT_INO, "f", ROOT_INO, "g", true, false),
            FsError::Exists,
        );
    }

    #[test]
    fn rename_noreplace() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        mk(&mut ns, ROOT_INO, "g", File);
        mk(&mut ns, ROOT_INO, "d", Dir);
        for target in ["g", "d"] {
            fails(
                &mut ns,
                &rename_flags(ROOT_INO, "f", ROOT_INO, target, true, false),
                FsError::Exists,
            );
        }
        ns.apply(&rename_flags(ROOT_INO, "f", ROOT_INO, "h", true, false), T0)
            .unwrap();
        assert_eq!(lookup(&ns, ROOT_INO, "h"), Ok(f));
        fails(
            &mut ns,
            &rename_flags(ROOT_INO, "h", ROOT_INO, "g", true, true),
            FsError::Invalid,
        );
    }

    #[test]
    fn rename_exchange() {
        let mut ns = Namespace::new(T0);
        let a = mk(&mut ns, ROOT_INO, "a", Dir);
        let b = mk(&mut ns, ROOT_INO, "b", Dir);
        let f = mk(&mut ns, a, "f", File);
        let sub = mk(&mut ns, b, "sub", Dir);
        mk(&mut ns, sub, "deep", File);
        let xchg = |p, n: &str, np, nn: &str| rename_flags(p, n, np, nn, false, true);
        let now = T0 + 20;
        ns.apply(&xchg(a, "f", b, "sub"), now).unwrap();
        assert_eq!(
            (lookup(&ns, a, "f"), lookup(&ns, b, "sub")),
            (Ok(sub), Ok(f))
        );
        assert_eq!((attr(&ns, a).nlink, attr(&ns, b).nlink), (3, 2));
        assert_eq!(lookup(&ns, sub, ".."), Ok(a));
        assert_eq!(resolve(&ns, "/a/f/deep", false).map(|i| i > 0), Ok(true));
        assert_eq!((attr(&ns, f).ctime_ns, attr(&ns, sub).ctime_ns), (now, now));
        // Two directories across parents: each parent keeps its count.
        let c = mk(&mut ns, b, "c", Dir);
        ns.apply(&xchg(a, "f", b, "c"), now).unwrap();
        assert_eq!(
            (lookup(&ns, c, ".."), lookup(&ns, sub, "..")),
            (Ok(a), Ok(b))
        );
        assert_eq!((attr(&ns, a).nlink, attr(&ns, b).nlink), (3, 3));
        fails(&mut ns, &xchg(a, "f", b, "missing"), FsError::NotFound);
        fails(&mut ns, &xchg(a, "missing", b, "sub"), FsError::NotFound);
        // A directory and its own descendant cannot swap, whichever side names which.
        let inner = mk(&mut ns, c, "inner", Dir);
        fails(&mut ns, &xchg(ROOT_INO, "a", c, "inner"), FsError::Invalid);
        fails(&mut ns, &xchg(c, "inner", ROOT_INO, "a"), FsError::Invalid);
        assert_eq!(lookup(&ns, inner, ".."), Ok(c));
        check_invariants(&ns);
    }

    // ---------------------------------------------------------------- attributes

    #[test]
    fn set_attr_and_truncate() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let l = symlink(&mut ns, ROOT_INO, "l", "f");
        let a = match ns.apply(&set_size(f, 12345), T0 + 1).unwrap() {
            NsResult::Attr(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (a.size, a.mtime_ns, a.ctime_ns, a.atime_ns),
            (12345, T0 + 1, T0 + 1, T0)
        );
        assert_eq!(stats(&ns).file_bytes, 12345);
        ns.apply(&set_size(f, 100), T0 + 2).unwrap();
        assert_eq!(stats(&ns).file_bytes, 100);
        let all = NsOp::SetAttr {
            ino: f,
            mode: Some(0o104_600),
            uid: Some(7),
            gid: Some(8),
            size: None,
            atime: Some(SetTime::At(-42)),
            mtime: Some(SetTime::Now),
        };
        let a = match ns.apply(&all, T0 + 3).unwrap() {
            NsResult::Attr(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!((a.mode, a.uid, a.gid, a.size), (0o4600, 7, 8, 100));
        assert_eq!((a.atime_ns, a.mtime_ns, a.ctime_ns), (-42, T0 + 3, T0 + 3));
        assert_eq!(attr(&ns, f), a);
        // An explicit mtime wins over the truncation's "now".
        let both = NsOp::SetAttr {
            ino: f,
            mode: None,
            uid: None,
            gid: None,
            size: Some(0),
            atime: None,
            mtime: Some(SetTime::At(5)),
        };
        ns.apply(&both, T0 + 4).unwrap();
        let a = attr(&ns, f);
        assert_eq!((a.size, a.mtime_ns, a.ctime_ns), (0, 5, T0 + 4));
        fails(&mut ns, &set_size(d, 0), FsError::IsDir);
        fails(&mut ns, &set_size(l, 0), FsError::Invalid);
        fails(
            &mut ns,
            &set_size(f, MAX_FILE_SIZE + 1),
            FsError::FileTooBig,
        );
        fails(&mut ns, &set_size(999, 0), FsError::Stale);
        ns.apply(&set_size(f, MAX_FILE_SIZE), T0).unwrap();
        check_invariants(&ns);
    }

    #[test]
    fn xattrs() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let get = |ns: &Namespace, name: &str| {
            ns.query(&NsQuery::GetXattr {
                ino: f,
                name: name.into(),
            })
        };
        assert_eq!(
            ns.apply(&set_xattr(f, "user.b", b"1", XattrFlag::CreateOnly), T0 + 1),
            Ok(NsResult::Done)
        );
        assert_eq!(attr(&ns, f).ctime_ns, T0 + 1);
        ns.apply(&set_xattr(f, "user.a", b"2", XattrFlag::Either), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_xattr(f, "user.a", b"3", XattrFlag::CreateOnly),
            FsError::Exists,
        );
        fails(
            &mut ns,
            &set_xattr(f, "user.c", b"3", XattrFlag::ReplaceOnly),
            FsError::NoData,
        );
        ns.apply(&set_xattr(f, "user.a", b"4", XattrFlag::ReplaceOnly), T0)
            .unwrap();
        ns.apply(&set_xattr(f, "user.b", b"", XattrFlag::Either), T0)
            .unwrap();
        assert_eq!(get(&ns, "user.a"), Ok(NsReply::Xattr(b"4".to_vec())));
        assert_eq!(get(&ns, "user.b"), Ok(NsReply::Xattr(Vec::new())));
        assert_eq!(get(&ns, "user.c"), Err(FsError::NoData));
        assert_eq!(
            ns.query(&NsQuery::ListXattr { ino: f }),
            Ok(NsReply::XattrNames(vec!["user.a".into(), "user.b".into()]))
        );
        let remove = |name: &str| NsOp::RemoveXattr {
            ino: f,
            name: name.into(),
        };
        assert_eq!(ns.apply(&remove("user.a"), T0 + 2), Ok(NsResult::Done));
        assert_eq!(attr(&ns, f).ctime_ns, T0 + 2);
        fails(&mut ns, &remove("user.a"), FsError::NoData);
        assert_eq!(get(&ns, "user.a"), Err(FsError::NoData));
        // Limits: name 1..=255 bytes (ERANGE), value at most 64 KiB (E2BIG).
        let long = "n".repeat(XATTR_NAME_MAX + 1);
        fails(
            &mut ns,
            &set_xattr(f, "", b"", XattrFlag::Either),
            FsError::Range,
        );
        fails(
            &mut ns,
            &set_xattr(f, &long, b"", XattrFlag::Either),
            FsError::Range,
        );
        fails(&mut ns, &remove(&long), FsError::Range);
        let big = vec![7u8; XATTR_SIZE_MAX + 1];
        fails(
            &mut ns,
            &set_xattr(f, "user.big", &big, XattrFlag::Either),
            FsError::TooBig,
        );
        let max = vec![7u8; XATTR_SIZE_MAX];
        ns.apply(&set_xattr(f, &long[1..], &max, XattrFlag::Either), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_xattr(999, "user.a", b"", XattrFlag::Either),
            FsError::Stale,
        );
        assert_eq!(
            ns.query(&NsQuery::ListXattr { ino: 999 }),
            Err(FsError::Stale)
        );
        // They go with the inode.
        ns.apply(&unlink(ROOT_INO, "f"), T0).unwrap();
        assert!(ns.xattrs.is_empty());
        check_invariants(&ns);
    }

    #[test]
    fn new_files_take_the_nearest_pinned_pool() {
        let mut ns = Namespace::new(T0);
        let a = mk(&mut ns, ROOT_INO, "a", Dir);
        let b = mk(&mut ns, a, "b", Dir);
        let c = mk(&mut ns, b, "c", Dir);
        let pin = |ino, pool: Option<u32>| NsOp::Pin {
            ino,
            pool: pool.map(PoolId),
        };
        let pool_of = |ns: &mut Namespace, dir, name: &str| {
            let f = mk(ns, dir, name, File);
            attr(ns, f).pool
        };
        assert_eq!(pool_of(&mut ns, c, "f0"), None);
        match ns.apply(&pin(a, Some(7)), T0 + 1).unwrap() {
            NsResult::Attr(attr) => {
                assert_eq!((attr.pool, attr.ctime_ns), (Some(PoolId(7)), T0 + 1))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool_of(&mut ns, c, "f1"), Some(PoolId(7)));
        assert_eq!(pool_of(&mut ns, a, "f1"), Some(PoolId(7)));
        ns.apply(&pin(b, Some(9)), T0).unwrap();
        assert_eq!(pool_of(&mut ns, c, "f2"), Some(PoolId(9)));
        assert_eq!(pool_of(&mut ns, a, "f2"), Some(PoolId(7)));
        ns.apply(&pin(b, None), T0).unwrap();
        assert_eq!(pool_of(&mut ns, c, "f3"), Some(PoolId(7)));
        assert_eq!(pool_of(&mut ns, ROOT_INO, "f3"), None);
        // Existing files keep their pool; a symlink and a new directory have none.
        let f1 = lookup(&ns, c, "f1").unwrap();
        assert_eq!(attr(&ns, f1).pool, Some(PoolId(7)));
        let l = symlink(&mut ns, c, "l", "f1");
        let d = mk(&mut ns, c, "d", Dir);
        assert_eq!((attr(&ns, l).pool, attr(&ns, d).pool), (None, None));
        assert_eq!(attr(&ns, f1).chunk_size, DEFAULT_CHUNK_SIZE);
        fails(&mut ns, &pin(f1, Some(1)), FsError::NotDir);
        fails(&mut ns, &pin(999, Some(1)), FsError::Stale);
    }

    // ---------------------------------------------------------------- reads

    #[test]
    fn lookup_dot_and_dotdot() {
        let mut ns = Namespace::new(T0);
        let a = mk(&mut ns, ROOT_INO, "a", Dir);
        let f = mk(&mut ns, a, "f", File);
        assert_eq!(lookup(&ns, a, "."), Ok(a));
        assert_eq!(lookup(&ns, a, ".."), Ok(ROOT_INO));
        assert_eq!(lookup(&ns, a, "f"), Ok(f));
        assert_eq!(lookup(&ns, a, "g"), Err(FsError::NotFound));
        assert_eq!(lookup(&ns, f, "."), Err(FsError::NotDir));
        assert_eq!(lookup(&ns, f, "x"), Err(FsError::NotDir));
        assert_eq!(lookup(&ns, 999, "x"), Err(FsError::Stale));
    }

    #[test]
    fn resolve_paths() {
        let mut ns = Namespace::new(T0);
        let a = mk(&mut ns, ROOT_INO, "a", Dir);
        let b = mk(&mut ns, a, "b", Dir);
        let f = mk(&mut ns, b, "f", File);
        let rel = symlink(&mut ns, a, "rel", "b/f");
        let up = symlink(&mut ns, b, "up", "../b/./f");
        let abs = symlink(&mut ns, ROOT_INO, "abs", "/a/rel");
        let to_dir = symlink(&mut ns, ROOT_INO, "to_dir", "/a/b/");
        let dangling = symlink(&mut ns, ROOT_INO, "dangling", "nowhere");
        assert_eq!(resolve(&ns, "/", true), Ok(ROOT_INO));
        assert_eq!(resolve(&ns, "/a/b/f", true), Ok(f));
        assert_eq!(resolve(&ns, "//a/./b/../b//f", false), Ok(f));
        assert_eq!(resolve(&ns, "/..", false), Ok(ROOT_INO));
        assert_eq!(resolve(&ns, "/a/", false), Ok(a));
        assert_eq!(resolve(&ns, "/a/rel", true), Ok(f));
        assert_eq!(resolve(&ns, "/a/rel", false), Ok(rel));
        assert_eq!(resolve(&ns, "/a/b/up", true), Ok(f));
        assert_eq!(resolve(&ns, "/a/b/up", false), Ok(up));
        assert_eq!(resolve(&ns, "/abs", true), Ok(f));
        assert_eq!(resolve(&ns, "/abs", false), Ok(abs));
        assert_eq!(resolve(&ns, "/to_dir/f", false), Ok(f));
        assert_eq!(resolve(&ns, "/to_dir", true), Ok(b));
        assert_eq!(resolve(&ns, "/to_dir", false), Ok(to_dir));
        assert_eq!(resolve(&ns, "/to_dir/", false), Ok(b));
        assert_eq!(resolve(&ns, "/to_dir/..", false), Ok(a));
        assert_eq!(resolve(&ns, "/dangling", false), Ok(dangling));
        assert_eq!(resolve(&ns, "/dangling", true), Err(FsError::NotFound));
        assert_eq!(resolve(&ns, "/a/missing", true), Err(FsError::NotFound));
        assert_eq!(resolve(&ns, "/a/b/f/x", true), Err(FsError::NotDir));
        assert_eq!(resolve(&ns, "/a/b/f/..", true), Err(FsError::NotDir));
        assert_eq!(resolve(&ns, "/a/b/f/", false), Err(FsError::NotDir));
        assert_eq!(resolve(&ns, "/a/rel/", false), Err(FsError::NotDir));
        assert_eq!(resolve(&ns, "a/b", true), Err(FsError::Invalid));
        assert_eq!(resolve(&ns, "", true), Err(FsError::Invalid));
        assert_eq!(resolve(&ns, "/a\0", true), Err(FsError::Invalid));
        let long_component = format!("/{}", "n".repeat(NAME_MAX + 1));
        assert_eq!(
            resolve(&ns, &long_component, true),
            Err(FsError::NameTooLong)
        );
        let long_path = "/a".repeat(PATH_MAX / 2);
        assert_eq!(resolve(&ns, &long_path, true), Err(FsError::NameTooLong));
    }

    #[test]
    fn symlink_loops_are_eloop() {
        let mut ns = Namespace::new(T0);
        let me = symlink(&mut ns, ROOT_INO, "me", "me");
        symlink(&mut ns, ROOT_INO, "ping", "/pong/x");
        symlink(&mut ns, ROOT_INO, "pong", "ping");
        assert_eq!(resolve(&ns, "/me", true), Err(FsError::Loop));
        assert_eq!(resolve(&ns, "/me", false), Ok(me));
        assert_eq!(resolve(&ns, "/me/x", false), Err(FsError::Loop));
        assert_eq!(resolve(&ns, "/ping", true), Err(FsError::Loop));
        // A chain of exactly SYMLOOP_MAX links resolves; one more is a loop.
        let f = mk(&mut ns, ROOT_INO, "l0", File);
        for i in 1..=SYMLOOP_MAX + 1 {
            symlink(&mut ns, ROOT_INO, &format!("l{i}"), &format!("l{}", i - 1));
        }
        assert_eq!(resolve(&ns, &format!("/l{SYMLOOP_MAX}"), true), Ok(f));
        let too_many = format!("/l{}", SYMLOOP_MAX + 1);
        assert_eq!(resolve(&ns, &too_many, true), Err(FsError::Loop));
    }

    #[test]
    fn readlink() {
        let mut ns = Namespace::new(T0);
        let l = symlink(&mut ns, ROOT_INO, "l", "../some/where");
        let f = mk(&mut ns, ROOT_INO, "f", File);
        assert_eq!(
            ns.query(&NsQuery::ReadLink { ino: l }),
            Ok(NsReply::Link("../some/where".into()))
        );
        assert_eq!(attr(&ns, l).size, 13);
        assert_eq!(
            ns.query(&NsQuery::ReadLink { ino: f }),
            Err(FsError::Invalid)
        );
        assert_eq!(
            ns.query(&NsQuery::ReadLink { ino: 999 }),
            Err(FsError::Stale)
        );
    }

    #[test]
    fn readdir_pages_in_name_order() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        for name in ["c", "a", "e", "b", "d"] {
            mk(&mut ns, d, name, if name == "b" { Dir } else { File });
        }
        // Entries of a neighbouring directory never leak into the listing.
        mk(&mut ns, ROOT_INO, "zz", File);
        let next = mk(&mut ns, ROOT_INO, "next", Dir);
        mk(&mut ns, next, "0", File);
        let page = |ns: &Namespace, after: Option<&str>, limit| {
            ns.query(&NsQuery::ReadDir {
                ino: d,
                after: after.map(str::to_string),
                limit,
            })
        };
        let Ok(NsReply::Dir { entries, more }) = page(&ns, None, 2) else {
            panic!()
        };
        let got: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!((got, more), (vec![("a", File), ("b", Dir)], true));
        // `after` need not exist: a page continues after a deleted name.
        ns.apply(&unlink(d, "c"), T0).unwrap();
        let Ok(NsReply::Dir { entries, more }) = page(&ns, Some("c"), 10) else {
            panic!()
        };
        let got: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!((got, more), (vec!["d", "e"], false));
        let Ok(NsReply::Dir { entries, more }) = page(&ns, Some("d"), 1) else {
            panic!()
        };
        assert_eq!(
            (entries.len(), more),
            (1, false),
            "a full last page has no more"
        );
        let Ok(NsReply::Dir { entries, more }) = page(&ns, None, 0) else {
            panic!()
        };
        assert_eq!((entries.len(), more), (1, true), "limit 0 reads one");
        assert_eq!(names(&ns, d), ["a", "b", "d", "e"]);
        assert_eq!(names(&ns, next), ["0"]);
        let f = lookup(&ns, d, "a").unwrap();
        let q = |ino| NsQuery::ReadDir {
            ino,
            after: None,
            limit: 10,
        };
        assert_eq!(ns.query(&q(f)), Err(FsError::NotDir));
        assert_eq!(ns.query(&q(999)), Err(FsError::Stale));
    }

    #[test]
    fn readdir_pages_over_100k_entries() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "big", Dir);
        let mut expected = BTreeSet::new();
        for i in 0..100_000u32 {
            // Unpadded numbers, so name order differs from creation order.
            let name = format!("f{i}");
            mk(&mut ns, d, &name, File);
            expected.insert(name);
        }
        let listed = list(&ns, d, 1000).unwrap();
        let listed: Vec<String> = listed.into_iter().map(|e| e.name).collect();
        assert_eq!(listed.len(), 100_000);
        assert!(
            listed.windows(2).all(|w| w[0] < w[1]),
            "not in order or repeated"
        );
        assert_eq!(listed, expected.into_iter().collect::<Vec<_>>());
        // A limit above the cap still gives bounded pages.
        let q = NsQuery::ReadDir {
            ino: d,
            after: None,
            limit: u32::MAX,
        };
        let Ok(NsReply::Dir { entries, more }) = ns.query(&q) else {
            panic!()
        };
        assert_eq!((entries.len(), more), (READDIR_MAX as usize, true));
    }

    // ---------------------------------------------------------------- batches, snapshots

    fn spec(session: u64, owner: u64, start: u64, end: u64) -> LockSpec {
        LockSpec {
            session,
            owner,
            pid: 7,
            start,
            end,
        }
    }

    fn set_lock(ino: Ino, lock: LockSpec, kind: Option<LockKind>) -> NsOp {
        NsOp::SetLock { ino, lock, kind }
    }

    fn test_lock(
        ns: &mut Namespace,
        ino: Ino,
        lock: LockSpec,
        kind: LockKind,
        now: i64,
    ) -> Option<HeldLock> {
        match ns.apply(&NsOp::TestLock { ino, lock, kind }, now) {
            Ok(NsResult::LockTest(held)) => held,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn locks_conflict_between_owners_and_sessions_only() {
        use LockKind::{Exclusive, Shared};
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let renew = |session| NsOp::RenewSession {
            session,
            ttl_ms: 1_000,
        };
        // No session yet: ESTALE.
        fails(
            &mut ns,
            &set_lock(f, spec(1, 1, 0, 9), Some(Exclusive)),
            FsError::Stale,
        );
        ns.apply(&renew(1), T0).unwrap();
        ns.apply(&renew(2), T0).unwrap();
        ns.apply(&set_lock(f, spec(1, 1, 0, 9), Some(Shared)), T0)
            .unwrap();
        // Shared locks share; exclusive ones conflict with another owner, also in another session.
        ns.apply(&set_lock(f, spec(2, 1, 5, 20), Some(Shared)), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_lock(f, spec(1, 2, 8, 8), Some(Exclusive)),
            FsError::WouldBlock,
        );
        fails(
            &mut ns,
            &set_lock(f, spec(2, 1, 0, 0), Some(Exclusive)),
            FsError::WouldBlock,
        );
        // The owner's own lock is upgraded in place.
        ns.apply(&set_lock(f, spec(2, 1, 10, 20), Some(Exclusive)), T0)
            .unwrap();
        let held = test_lock(&mut ns, f, spec(1, 1, 12, 12), Shared, T0).unwrap();
        assert_eq!(
            (held.session, held.start, held.end, held.kind),
            (2, 10, 20, Exclusive)
        );
        assert_eq!(
            test_lock(&mut ns, f, spec(1, 1, 21, u64::MAX), Exclusive, T0),
            None
        );
        // Unlocking the middle splits a lock.
        ns.apply(&set_lock(f, spec(2, 1, 12, 15), None), T0)
            .unwrap();
        assert_eq!(
            test_lock(&mut ns, f, spec(1, 1, 12, 15), Exclusive, T0),
            None
        );
        let held = test_lock(&mut ns, f, spec(1, 9, 16, 16), Shared, T0).unwrap();
        assert_eq!((held.start, held.end, held.pid), (16, 20, 7));
        let held = test_lock(&mut ns, f, spec(1, 9, 0, 11), Exclusive, T0).unwrap();
        assert!(held.start <= 11 && held.end >= 5, "{held:?}");
        // Bad ranges and inodes.
        fails(
            &mut ns,
            &set_lock(f, spec(1, 1, 9, 3), Some(Shared)),
            FsError::Invalid,
        );
        fails(
            &mut ns,
            &set_lock(99, spec(1, 1, 0, 3), Some(Shared)),
            FsError::Stale,
        );
        // Lock ops cannot be batched.
        fails(&mut ns, &NsOp::Batch(vec![renew(3)]), FsError::Invalid);
        // Ending a session drops its locks.
        ns.apply(&NsOp::EndSession { session: 2 }, T0).unwrap();
        ns.apply(&set_lock(f, spec(1, 2, 0, u64::MAX), Some(Shared)), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_lock(f, spec(2, 1, 0, 0), Some(Shared)),
            FsError::Stale,
        );
    }

    #[test]
    fn expired_sessions_stop_conflicting_and_lose_their_locks() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let ttl_ns = 1_000 * 1_000_000;
        for s in [1, 2] {
            let op = NsOp::RenewSession {
                session: s,
                ttl_ms: 1_000,
            };
            ns.apply(&op, T0).unwrap();
        }
        ns.apply(
            &set_lock(f, spec(1, 1, 0, u64::MAX), Some(LockKind::Exclusive)),
            T0,
        )
        .unwrap();
        fails(
            &mut ns,
            &set_lock(f, spec(2, 1, 0, 0), Some(LockKind::Shared)),
            FsError::WouldBlock,
        );
        // Session 2 renews, session 1 does not: once 1 expires its lock no longer blocks.
        let later = T0 + ttl_ns / 2;
        ns.apply(
            &NsOp::RenewSession {
                session: 2,
                ttl_ms: 1_000,
            },
            later,
        )
        .unwrap();
        let after = T0 + ttl_ns + 1;
        assert!(test_lock(&mut ns, f, spec(2, 1, 0, 0), LockKind::Exclusive, after).is_none());
        ns.apply(
            &set_lock(f, spec(2, 1, 0, 0), Some(LockKind::Exclusive)),
            after,
        )
        .unwrap();
        assert!(!ns.sessions.contains_key(&1));
        assert!(ns.locks[&f].iter().all(|l| l.session == 2));
    }

    #[test]
    fn extend_only_grows() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        ns.apply(&NsOp::Extend { ino: f, size: 100 }, T0 + 1)
            .unwrap();
        ns.apply(&NsOp::Extend { ino: f, size: 50 }, T0 + 2)
            .unwrap();
        let a = attr(&ns, f);
        assert_eq!((a.size, a.mtime_ns), (100, T0 + 2));
        assert_eq!(stats(&ns).file_bytes, 100);
        fails(&mut ns, &NsOp::Extend { ino: d, size: 1 }, FsError::Invalid);
        fails(
            &mut ns,
            &NsOp::Extend {
                ino: f,
                size: u64::MAX,
            },
            FsError::FileTooBig,
        );
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        ns.apply(&set_xattr(f, "user.x", b"1", XattrFlag::Either), T0)
            .unwrap();
        let next = ns.next_ino;
        // Every kind of write, then a failure: nothing stays, not even the inode numbers.
        let failing = NsOp::Batch(vec![
            create_op(ROOT_INO, "d", Dir),
            create_op(next, "inner", File),
            set_size(f, 99),
            set_xattr(f, "user.x", b"2", XattrFlag::Either),
            NsOp::RemoveXattr {
                ino: f,
                name: "user.x".into(),
            },
            rename(ROOT_INO, "f", next, "moved"),
            NsOp::Batch(vec![unlink(next, "inner")]),
            unlink(ROOT_INO, "missing"),
        ]);
        fails(&mut ns, &failing, FsError::NotFound);
        check_invariants(&ns);
        let ok = NsOp::Batch(vec![
            create_op(ROOT_INO, "d", Dir),
            create_op(next, "inner", File),
            NsOp::Batch(vec![rename(ROOT_INO, "f", next, "moved")]),
        ]);
        let NsResult::Batch(results) = ns.apply(&ok, T0).unwrap() else {
            panic!()
        };
        assert_eq!(results.len(), 3);
        assert_eq!(entry_attr(results[0].clone()).ino, next);
        assert_eq!(
            results[2],
            NsResult::Batch(vec![NsResult::Renamed {
                replaced_freed: None
            }])
        );
        assert_eq!(resolve(&ns, "/d/moved", false), Ok(f));
        assert_eq!(
            ns.apply(&NsOp::Batch(Vec::new()), T0),
            Ok(NsResult::Batch(Vec::new()))
        );
        check_invariants(&ns);
    }

    #[test]
    fn serde_round_trip_of_a_populated_namespace() {
        let mut ns = Namespace::new(T0);
        let d = mk(&mut ns, ROOT_INO, "d", Dir);
        let f = mk(&mut ns, d, "f", File);
        ns.apply(&link(f, ROOT_INO, "f2"), T0).unwrap();
        ns.apply(&set_size(f, 1 << 30), T0).unwrap();
        symlink(&mut ns, d, "l", "../f2");
        ns.apply(&set_xattr(d, "user.k", &[0, 1, 255], XattrFlag::Either), T0)
            .unwrap();
        ns.apply(
            &NsOp::Pin {
                ino: d,
                pool: Some(PoolId(3)),
            },
            T0,
        )
        .unwrap();
        mk(&mut ns, d, "pinned", File);
        let bytes = bincode::serialize(&ns).unwrap();
        let mut back: Namespace = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, ns);
        // The restored replica goes on exactly like the original.
        let op = create_op(d, "after", File);
        assert_eq!(back.apply(&op, T0 + 1), ns.apply(&op, T0 + 1));
        assert_eq!(back, ns);
        check_invariants(&back);
    }

    // ---------------------------------------------------------------- model test

    /// The reference: paths ("" is the root, "/a/b" below it) to what they name, and file sizes.
    /// It knows nothing of entries, link counts or undo logs, so it checks them from outside.
    #[derive(Clone)]
    struct Model {
        paths: BTreeMap<String, (FileKind, Ino)>,
        sizes: BTreeMap<Ino, u64>,
    }

    fn model_name(name: &str) -> Result<(), FsError> {
        match name {
            "" | "." | ".." => Err(FsError::Invalid),
            _ if name.contains('/') || name.contains('\0') => Err(FsError::Invalid),
            _ if name.len() > 255 => Err(FsError::NameTooLong),
            _ => Ok(()),
        }
    }

    fn is_in_tree(path: &str, tree: &str) -> bool {
        path == tree || path.starts_with(&format!("{tree}/"))
    }

    impl Model {
        fn new() -> Model {
            Model {
                paths: BTreeMap::from([(String::new(), (Dir, ROOT_INO))]),
                sizes: BTreeMap::new(),
            }
        }

        fn find(&self, ino: Ino) -> Option<(String, FileKind)> {
            let (path, (kind, _)) = self.paths.iter().find(|(_, (_, i))| *i == ino)?;
            Some((path.clone(), *kind))
        }

        fn dir_path(&self, ino: Ino) -> Result<String, FsError> {
            match self.find(ino) {
                None => Err(FsError::Stale),
                Some((path, Dir)) => Ok(path),
                Some(_) => Err(FsError::NotDir),
            }
        }

        fn children(&self, dir: &str) -> Vec<(String, FileKind, Ino)> {
            let prefix = format!("{dir}/");
            self.paths
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .filter(|(p, _)| !p[prefix.len()..].contains('/'))
                .map(|(p, (k, i))| (p[prefix.len()..].to_string(), *k, *i))
                .collect()
        }

        fn take_tree(&mut self, tree: &str) -> Vec<(String, (FileKind, Ino))> {
            let paths: Vec<String> = self
                .paths
                .keys()
                .filter(|p| is_in_tree(p, tree))
                .cloned()
                .collect();
            paths
                .into_iter()
                .map(|p| {
                    let v = self.paths.remove(&p).unwrap();
                    (p, v)
                })
                .collect()
        }

        fn put_tree(&mut self, taken: Vec<(String, (FileKind, Ino))>, from: &str, to: &str) {
            for (p, v) in taken {
                self.paths.insert(format!("{to}{}", &p[from.len()..]), v);
            }
        }

        /// A path went: if it was the last link of a file, the file is freed.
        fn unlinked(&mut self, kind: FileKind, ino: Ino, freed: &mut Vec<(Ino, u64)>) {
            if kind == File && !self.paths.values().any(|(_, i)| *i == ino) {
                freed.push((ino, self.sizes.remove(&ino).unwrap()));
            }
        }

        /// Apply `op`; new inode numbers come from `created` (what the namespace assigned).
        fn apply(
            &mut self,
            op: &NsOp,
            created: &mut VecDeque<Ino>,
            freed: &mut Vec<(Ino, u64)>,
        ) -> Result<(), FsError> {
            match op {
                NsOp::Create {
                    parent,
                    name,
                    kind,
                    exclusive,
                    ..
                } => {
                    model_name(name)?;
                    let path = format!("{}/{name}", self.dir_path(*parent)?);
                    if let Some(&(existing, _)) = self.paths.get(&path) {
                        return match (kind, exclusive, existing) {
                            (File, false, File) => Ok(()),
                            (File, false, Dir) => Err(FsError::IsDir),
                            _ => Err(FsError::Exists),
                        };
                    }
                    let ino = created.pop_front().unwrap_or(Ino::MAX);
                    self.paths.insert(path, (*kind, ino));
                    if *kind == File {
                        self.sizes.insert(ino, 0);
                    }
                }
                NsOp::Link {
                    ino,
                    new_parent,
                    new_name,
                } => {
                    model_name(new_name)?;
                    let (_, kind) = self.find(*ino).ok_or(FsError::Stale)?;
                    let path = format!("{}/{new_name}", self.dir_path(*new_parent)?);
                    if self.paths.contains_key(&path) {
                        return Err(FsError::Exists);
                    }
                    if kind == Dir {
                        return Err(FsError::NotPermitted);
                    }
                    self.paths.insert(path, (kind, *ino));
                }
                NsOp::Unlink { parent, name } | NsOp::Rmdir { parent, name } => {
                    model_name(name)?;
                    let path = format!("{}/{name}", self.dir_path(*parent)?);
                    let &(kind, ino) = self.paths.get(&path).ok_or(FsError::NotFound)?;
                    match (op, kind) {
                        (NsOp::Unlink { .. }, Dir) => return Err(FsError::IsDir),
                        (NsOp::Rmdir { .. }, File | Symlink) => return Err(FsError::NotDir),
                        (NsOp::Rmdir { .. }, Dir) if !self.children(&path).is_empty() => {
                            return Err(FsError::NotEmpty)
                        }
                        _ => {}
                    }
                    self.paths.remove(&path);
                    self.unlinked(kind, ino, freed);
                }
                NsOp::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    noreplace,
                    exchange,
                } => {
                    model_name(name)?;
                    model_name(new_name)?;
                    if *noreplace && *exchange {
                        return Err(FsError::Invalid);
                    }
                    let dir = self.dir_path(*parent)?;
                    let new_dir = self.dir_path(*new_parent)?;
                    let from = format!("{dir}/{name}");
                    let to = format!("{new_dir}/{new_name}");
                    let &(kind, ino) = self.paths.get(&from).ok_or(FsError::NotFound)?;
                    let dst = self.paths.get(&to).copied();
                    match dst {
                        Some(_) if *noreplace => return Err(FsError::Exists),
                        None if *exchange => return Err(FsError::NotFound),
                        Some((_, d)) if d == ino => return Ok(()),
                        _ => {}
                    }
                    if kind == Dir && is_in_tree(&new_dir, &from) {
                        return Err(FsError::Invalid);
                    }
                    match dst {
                        Some((dst_kind, _)) if *exchange => {
                            if dst_kind == Dir && is_in_tree(&dir, &to) {
                                return Err(FsError::Invalid);
                            }
                            let a = self.take_tree(&from);
                            let b = self.take_tree(&to);
                            self.put_tree(a, &from, &to);
                            self.put_tree(b, &to, &from);
                            return Ok(());
                        }
                        Some((dst_kind, dst_ino)) => {
                            match (kind == Dir, dst_kind == Dir) {
                                (true, false) => return Err(FsError::NotDir),
                                (false, true) => return Err(FsError::IsDir),
                                (true, true) if !self.children(&to).is_empty() => {
                                    return Err(FsError::NotEmpty)
                                }
                                _ => {}
                            }
                            self.paths.remove(&to);
                            self.unlinked(dst_kind, dst_ino, freed);
                        }
                        None => {}
                    }
                    let tree = self.take_tree(&from);
                    self.put_tree(tree, &from, &to);
                }
                NsOp::SetAttr { ino, size, .. } => {
                    let (_, kind) = self.find(*ino).ok_or(FsError::Stale)?;
                    if let Some(size) = size {
                        match kind {
                            Dir => return Err(FsError::IsDir),
                            Symlink => return Err(FsError::Invalid),
                            File if *size > MAX_FILE_SIZE => return Err(FsError::FileTooBig),
                            File => {
                                self.sizes.insert(*ino, *size);
                            }
                        }
                    }
                }
                NsOp::Batch(ops) => {
                    let mut scratch = self.clone();
                    for op in ops {
                        scratch.apply(op, created, freed)?;
                    }
                    *self = scratch;
                }
                other => panic!("the model does not generate {other:?}"),
            }
            Ok(())
        }

        /// The namespace agrees with the model on every listing (and so, from the root down,
        /// on every path), link count and size, holds no inode the model does not, and resolves
        /// a few sampled paths to the model's inodes.
        fn check(&self, ns: &Namespace, rng: &mut StdRng) {
            check_invariants(ns);
            let mut links: BTreeMap<Ino, u32> = BTreeMap::new();
            for (_, ino) in self.paths.values() {
                *links.entry(*ino).or_default() += 1;
            }
            for (path, &(kind, ino)) in &self.paths {
                let a = attr(ns, ino);
                assert_eq!(a.kind, kind, "{path}");
                if kind == Dir {
                    let children = self.children(path);
                    let subdirs = children.iter().filter(|c| c.1 == Dir).count() as u32;
                    assert_eq!(a.nlink, 2 + subdirs, "nlink of {path}/");
                    let listed: Vec<(String, FileKind, Ino)> = list(ns, ino, 7)
                        .unwrap()
                        .into_iter()
                        .map(|e| (e.name, e.kind, e.ino))
                        .collect();
                    assert_eq!(listed, children, "listing of {path}/");
                } else {
                    assert_eq!(a.nlink, links[&ino], "nlink of {path}");
                }
                if kind == File {
                    assert_eq!(a.size, self.sizes[&ino], "size of {path}");
                }
            }
            for _ in 0..3 {
                let (path, &(_, ino)) = gen_path(self, rng);
                let shown = if path.is_empty() { "/" } else { path.as_str() };
                assert_eq!(resolve(ns, shown, false), Ok(ino), "{shown}");
            }
            assert_eq!(
                stats(ns),
                NsStats {
                    inodes: links.len() as u64,
                    file_bytes: self.sizes.values().sum(),
                }
            );
        }
    }

    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    fn gen_name(rng: &mut StdRng) -> String {
        if rng.gen_ratio(1, 50) {
            let bad = ["", ".", "..", "x/y", "x\0y"];
            return match rng.gen_range(0..=bad.len()) {
                i if i < bad.len() => bad[i].to_string(),
                _ => "n".repeat(NAME_MAX + 1),
            };
        }
        NAMES[rng.gen_range(0..NAMES.len())].to_string()
    }

    fn gen_path<'m>(m: &'m Model, rng: &mut StdRng) -> (&'m String, &'m (FileKind, Ino)) {
        m.paths.iter().nth(rng.gen_range(0..m.paths.len())).unwrap()
    }

    /// Mostly a directory; sometimes a file, or any inode number ever handed out (dead or not).
    fn gen_dir(m: &Model, rng: &mut StdRng, handed_out: Ino) -> Ino {
        match rng.gen_range(0..100) {
            0..=4 => rng.gen_range(ROOT_INO..handed_out + 1),
            5..=14 => gen_path(m, rng).1 .1,
            _ => {
                let dirs: Vec<Ino> = m
                    .paths
                    .values()
                    .filter(|(k, _)| *k == Dir)
                    .map(|(_, i)| *i)
                    .collect();
                dirs[rng.gen_range(0..dirs.len())]
            }
        }
    }

    /// Mostly an existing entry; sometimes any name in any directory.
    fn gen_entry(m: &Model, rng: &mut StdRng, handed_out: Ino) -> (Ino, String) {
        if m.paths.len() > 1 && rng.gen_ratio(4, 5) {
            let (path, _) = loop {
                let p = gen_path(m, rng);
                if !p.0.is_empty() {
                    break p;
                }
            };
            let cut = path.rfind('/').unwrap();
            (m.paths[&path[..cut]].1, path[cut + 1..].to_string())
        } else {
            (gen_dir(m, rng, handed_out), gen_name(rng))
        }
    }

    fn gen_op(m: &Model, rng: &mut StdRng, handed_out: Ino, nested: bool) -> NsOp {
        match rng.gen_range(0..100) {
            0..=36 => {
                let kind = match rng.gen_range(0..37) {
                    0..=19 => File,
                    20..=31 => Dir,
                    _ => Symlink,
                };
                NsOp::Create {
                    parent: gen_dir(m, rng, handed_out),
                    name: gen_name(rng),
                    kind,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    target: (kind == Symlink).then(|| "t".to_string()),
                    exclusive: rng.gen_bool(0.5),
                }
            }
            37..=44 => {
                let ino = if rng.gen_ratio(1, 10) {
                    rng.gen_range(ROOT_INO..handed_out + 1)
                } else {
                    gen_path(m, rng).1 .1
                };
                link(ino, gen_dir(m, rng, handed_out), &gen_name(rng))
            }
            45..=56 => {
                let (p, n) = gen_entry(m, rng, handed_out);
                unlink(p, &n)
            }
            57..=65 => {
                let (p, n) = gen_entry(m, rng, handed_out);
                rmdir(p, &n)
            }
            66..=87 => {
                let (p, n) = gen_entry(m, rng, handed_out);
                let (np, nn) = if rng.gen_bool(0.5) {
                    gen_entry(m, rng, handed_out)
                } else {
                    (gen_dir(m, rng, handed_out), gen_name(rng))
                };
                let flags = rng.gen_range(0..20);
                rename_flags(p, &n, np, &nn, flags < 3 || flags == 19, flags >= 16)
            }
            r if r <= 95 || nested => {
                let ino = gen_path(m, rng).1 .1;
                let size = if rng.gen_ratio(1, 30) {
                    u64::MAX
                } else {
                    rng.gen_range(0..1 << 24)
                };
                set_size(ino, size)
            }
            _ => {
                let n = rng.gen_range(2..=4);
                NsOp::Batch((0..n).map(|_| gen_op(m, rng, handed_out, true)).collect())
            }
        }
    }

    /// Inode numbers a successful op created, in order.
    fn created_inos(op: &NsOp, result: &NsResult, out: &mut VecDeque<Ino>) {
        match (op, result) {
            (
                NsOp::Create { .. },
                NsResult::Entry {
                    attr,
                    created: true,
                },
            ) => out.push_back(attr.ino),
            (NsOp::Batch(ops), NsResult::Batch(results)) => {
                for (op, result) in ops.iter().zip(results) {
                    created_inos(op, result, out);
                }
            }
            _ => {}
        }
    }

    fn freed_files(result: &NsResult, out: &mut Vec<(Ino, u64)>) {
        match result {
            NsResult::Unlinked { freed: Some(f) }
            | NsResult::Renamed {
                replaced_freed: Some(f),
            } => {
                out.push((f.ino, f.size));
            }
            NsResult::Batch(results) => results.iter().for_each(|r| freed_files(r, out)),
            _ => {}
        }
    }

    #[test]
    fn random_ops_match_a_reference_model() {
        for seed in [1, 2, 3, 4] {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ns = Namespace::new(T0);
            let mut model = Model::new();
            let mut log = Vec::new();
            let (mut oks, mut errs) = (0, 0);
            for step in 0..1_500i64 {
                let op = gen_op(&model, &mut rng, ns.next_ino, false);
                let now = T0 + step;
                let before = ns.clone();
                let result = ns.apply(&op, now);
                let mut created = VecDeque::new();
                if let Ok(r) = &result {
                    created_inos(&op, r, &mut created);
                }
                let mut expected = model.clone();
                let mut expected_freed = Vec::new();
                let outcome = expected.apply(&op, &mut created, &mut expected_freed);
                let ctx = format!("seed {seed} step {step}: {op:?}");
                match (&result, outcome) {
                    (Ok(r), Ok(())) => {
                        let mut freed = Vec::new();
                        freed_files(r, &mut freed);
                        assert_eq!(freed, expected_freed, "{ctx}");
                        assert!(created.is_empty(), "{ctx}: created more than the model");
                        model = expected;
                        oks += 1;
                    }
                    (Err(got), Err(want)) => {
                        assert_eq!(*got, want, "{ctx}");
                        assert_eq!(ns, before, "{ctx}: a failed op changed the namespace");
                        errs += 1;
                    }
                    (got, want) => panic!("{ctx}: namespace {got:?}, model {want:?}"),
                }
                log.push((op, now));
                model.check(&ns, &mut rng);
            }
            // Both outcomes must have been exercised for the comparison to mean anything.
            assert!(
                oks > 400 && errs > 200,
                "seed {seed}: {oks} ok, {errs} errors"
            );
            // Another replica applying the same log ends in the same state.
            let mut replica = Namespace::new(T0);
            for (op, now) in &log {
                let _ = replica.apply(op, *now);
            }
            assert_eq!(replica, ns, "seed {seed}: replicas diverged");
        }
    }
}
