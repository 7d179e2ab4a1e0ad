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
//! - orphans: files that lost their last link while a session (a mount) has them open, kept by
//!   inode number until it lets go or ends (`orphans`: ino → session).
//! - the purge queue (`purge`: ino → [`FreedFile`]): files gone from the namespace whose objects
//!   may still be on the OSDs. The op that drops a file's last link puts it there (or, for an
//!   orphan, the op that forgets it, or the expiry of its session), so the data of a removed
//!   file is always either reachable from an inode or on the queue, whatever process dies;
//!   purgers list it ([`NsQuery::Purgeable`]), delete the objects and take the files off it
//!   ([`NsOp::Purged`]).
//! - advisory locks: `locks` (ino → held byte-range locks), `waiting` (owners blocked in a
//!   waiting lock request, for deadlock detection) and `sessions` (lock session → expiry
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
//!
//! The code is split by what a reader looks for:
//! - `inode.rs`: inodes and attributes (lookups by number, SETATTR, truncate, pools);
//! - `dir.rs`: directory entries, paging (READDIR, READDIRPLUS), name and path resolution;
//! - `link.rs`: the ops that add and remove names: create, link, unlink, rmdir, rename, exchange;
//! - `xattr.rs`: extended attributes;
//! - `lock.rs`: advisory locks and lock sessions;
//! - `statfs.rs`: the whole-namespace counters;
//! - `txn.rs`: [`Txn`], the undo log every mutation goes through, and the op dispatch.
//!
//! Each file carries the tests of its code; `testutil.rs` holds their shared helpers and
//! invariant check, `model_test.rs` the random-op test against a reference model.

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

mod dir;
mod inode;
mod link;
mod lock;
mod statfs;
mod txn;
mod xattr;

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod testutil;

use dir::{check_name, check_target};
use txn::Txn;
use xattr::check_xattr;

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
    /// Owners `(session, owner)` waiting for a lock ([`NsOp::WaitLock`]), for deadlock detection.
    waiting: BTreeMap<(u64, u64), Waiter>,
    /// Files without links kept for the session that has them open ([`NsOp::AsSession`]).
    orphans: BTreeMap<Ino, u64>,
    /// The purge queue: files gone from the namespace (their last link dropped, or orphans
    /// forgotten or left by a session that ended), their data still on the OSDs until a purger
    /// deletes it ([`NsQuery::Purgeable`], [`NsOp::Purged`]).
    purge: BTreeMap<Ino, FreedFile>,
}

/// A blocking lock request that had to wait: what it asked for, and until when it counts
/// (the waiter asks again before then, or has given up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Waiter {
    ino: Ino,
    lock: LockSpec,
    kind: LockKind,
    until: i64,
}

/// The namespace as codec version 4 (and earlier) wrote it: no lock waiters, orphans or purge list.
#[derive(Deserialize)]
pub(crate) struct NamespaceV4 {
    inodes: BTreeMap<Ino, Inode>,
    entries: BTreeMap<(Ino, String), Ino>,
    xattrs: BTreeMap<(Ino, String), Vec<u8>>,
    next_ino: Ino,
    next_generation: u64,
    file_bytes: u64,
    locks: BTreeMap<Ino, Vec<HeldLock>>,
    sessions: BTreeMap<u64, i64>,
}

impl Namespace {
    /// What codec version 4 would have written for this namespace (for the upgrade tests).
    #[cfg(test)]
    pub(crate) fn as_v4(&self) -> impl Serialize + '_ {
        (
            &self.inodes,
            &self.entries,
            &self.xattrs,
            self.next_ino,
            self.next_generation,
            self.file_bytes,
            &self.locks,
            &self.sessions,
        )
    }
}

impl From<NamespaceV4> for Namespace {
    fn from(n: NamespaceV4) -> Namespace {
        Namespace {
            inodes: n.inodes,
            entries: n.entries,
            xattrs: n.xattrs,
            next_ino: n.next_ino,
            next_generation: n.next_generation,
            file_bytes: n.file_bytes,
            locks: n.locks,
            sessions: n.sessions,
            waiting: BTreeMap::new(),
            orphans: BTreeMap::new(),
            purge: BTreeMap::new(),
        }
    }
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
            waiting: BTreeMap::new(),
            orphans: BTreeMap::new(),
            purge: BTreeMap::new(),
        }
    }

    /// Apply one mutation at time `now_ns` (the proposer's clock, carried in the raft entry).
    /// On error nothing changed, except that [`NsOp::WaitLock`] records (`WouldBlock`) or ends
    /// (`Deadlock`) its owner's wait, and lock ops drop expired sessions.
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
            NsQuery::Stats => Ok(NsReply::Stats(self.stats())),
            NsQuery::Purgeable { limit } => Ok(NsReply::Purgeable(
                self.purge.values().take(*limit as usize).copied().collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;

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
}
