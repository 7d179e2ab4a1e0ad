//! The POSIX namespace on the wire: inode attributes, directory entries, the mutations the
//! metadata service replicates ([`NsOp`] → [`NsResult`]), the reads it answers ([`NsQuery`] →
//! [`NsReply`]), and the errors of both ([`FsError`], which carry Linux errno numbers so FUSE,
//! NFS and S3 front ends can map them without a libc dependency here).
//!
//! Inodes are named by [`Ino`]; numbers are never reused, and each inode also gets a
//! `generation` unique across the namespace, so an NFS handle `(ino, generation)` can never
//! name a different file. A file's data lives in objects `Oid::for_piece(File, ino, index)` of
//! `chunk_size` bytes in its `pool`; the namespace records only sizes. When the last link of a
//! file goes, the same raft entry puts the file on the namespace's purge queue ([`FreedFile`]:
//! which objects to delete), and purgers delete its data in the background
//! ([`NsQuery::Purgeable`], [`NsOp::Purged`]), so no process's death can leak it.

use crate::ids::PoolId;
use serde::{Deserialize, Serialize};

/// An inode number. Never reused within a namespace.
pub type Ino = u64;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`, so FUSE needs no translation).
pub const ROOT_INO: Ino = 1;

/// Bytes per data object of a new file.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// Longest name of a directory entry, in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Longest path or symlink target, in bytes, counting a terminating NUL (Linux `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// Most symlinks one path resolution follows before failing with [`FsError::Loop`] (Linux
/// `MAXSYMLINKS`).
pub const SYMLOOP_MAX: u32 = 40;

/// Most links to one inode; for a directory that is 2 plus its subdirectories (ext4's value).
pub const LINK_MAX: u32 = 65_000;

/// Longest extended-attribute name, in bytes (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;

/// Largest extended-attribute value, in bytes (Linux `XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 64 << 10;

/// Largest file size: the largest `off_t`, so every size is a valid offset for FUSE and NFS.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Most entries one [`NsQuery::ReadDir`] page returns, whatever `limit` asks for, so one reply
/// stays a bounded frame.
pub const READDIR_MAX: u32 = 10_000;

/// Most entries one [`NsQuery::ReadDirPlus`] page returns (each carries attributes and a value).
pub const READDIRPLUS_MAX: u32 = 2_000;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
}

/// The attributes of an inode, as `stat` reports them plus cairn's data placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeAttr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits only (`0o7777`); the file type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of data for a file, the target's length for a symlink, 0 for a directory.
    pub size: u64,
    /// Hard links to a file or symlink; 2 plus the number of subdirectories for a directory.
    pub nlink: u32,
    /// Nanoseconds since the Unix epoch.
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Unique across the namespace, for NFS file handles.
    pub generation: u64,
    /// For a file, the pool holding its data (`None`: the default file pool), fixed when it is
    /// created. For a directory, the pool it is pinned to (`None`: inherit from its parent).
    /// Always `None` for a symlink.
    pub pool: Option<PoolId>,
    /// Bytes per data object of a file (its striping unit); 0 for directories and symlinks.
    pub chunk_size: u32,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub ino: Ino,
    pub kind: FileKind,
}

/// One entry of a [`NsQuery::ReadDirPlus`] listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntryPlus {
    pub name: String,
    pub attr: InodeAttr,
    /// The asked-for extended attribute, when the entry has it.
    pub xattr: Option<Vec<u8>>,
}

/// A time to set with [`NsOp::SetAttr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The time the operation is applied (`UTIME_NOW`): the proposer's clock, the same on every
    /// replica.
    Now,
    /// Nanoseconds since the Unix epoch.
    At(i64),
}

/// How [`NsOp::SetXattr`] treats an existing attribute (`setxattr` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrFlag {
    /// Create or replace.
    Either,
    /// `XATTR_CREATE`: fail with [`FsError::Exists`] if the attribute exists.
    CreateOnly,
    /// `XATTR_REPLACE`: fail with [`FsError::NoData`] if the attribute does not exist.
    ReplaceOnly,
}

/// A namespace mutation. Each one is applied atomically, as one raft entry: it either takes
/// full effect or fails and changes nothing. Permission checks are the caller's job: the
/// namespace has no notion of credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsOp {
    /// Make a file, directory or symlink named `name` in directory `parent`. In a directory whose
    /// mode has the set-group-id bit the new inode takes the directory's group, and a new
    /// directory keeps the bit (as Linux does). A new file's pool is that of its nearest pinned
    /// ancestor directory.
    Create {
        parent: Ino,
        name: String,
        kind: FileKind,
        /// Permission bits; bits outside `0o7777` are ignored. Symlinks are always `0o777`.
        mode: u32,
        uid: u32,
        gid: u32,
        /// The symlink's target: required for a symlink, refused for anything else.
        target: Option<String>,
        /// For a file: whether an existing entry is an error (`O_EXCL`) or, when it is a file,
        /// the answer ([`NsResult::Entry`] with `created: false`). A directory or symlink that
        /// exists is always an error.
        exclusive: bool,
    },
    /// Add a hard link `new_name` in `new_parent` to file or symlink `ino`.
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: String,
    },
    /// Remove a file or symlink entry; the inode goes with its last link, and a file's data
    /// onto the purge queue (see [`NsQuery::Purgeable`]).
    Unlink { parent: Ino, name: String },
    /// Remove an empty directory.
    Rmdir { parent: Ino, name: String },
    /// Move entry `name` of `parent` to `new_name` of `new_parent` (`renameat2`), replacing what is
    /// there unless `noreplace`; with `exchange` the two entries, which must both exist, swap.
    Rename {
        parent: Ino,
        name: String,
        new_parent: Ino,
        new_name: String,
        /// `RENAME_NOREPLACE`: fail with [`FsError::Exists`] if `new_name` exists.
        noreplace: bool,
        /// `RENAME_EXCHANGE`: swap the entries atomically. Cannot be combined with `noreplace`.
        exchange: bool,
    },
    /// Change attributes; each `Some` is set, and the ctime always becomes now. Setting `size`
    /// truncates or extends a file (the caller deletes data objects past a smaller size) and sets
    /// its mtime to now unless `mtime` says otherwise.
    SetAttr {
        ino: Ino,
        /// Permission bits; bits outside `0o7777` are ignored.
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    },
    /// Set extended attribute `name` of `ino`.
    SetXattr {
        ino: Ino,
        name: String,
        value: Vec<u8>,
        flags: XattrFlag,
    },
    /// Remove extended attribute `name` of `ino`.
    RemoveXattr { ino: Ino, name: String },
    /// Pin directory `ino` to a pool (`None` unpins it). Files created below it afterwards, down
    /// to the next pinned directory, store their data there; existing files keep their pool until
    /// a background migration moves them.
    Pin { ino: Ino, pool: Option<PoolId> },
    /// Grow file `ino` to at least `size` (a write past the end of file): a larger size is set,
    /// with mtime and ctime now; a smaller or equal one leaves the size alone but still sets the
    /// times. Unlike `SetAttr { size }` it never shrinks, so writers racing to extend a file
    /// cannot cut each other's data off.
    Extend { ino: Ino, size: u64 },
    /// Start or renew lock session `session` (one per mount or gateway, a random number chosen by
    /// it): its locks stay valid until `ttl_ms` after this op. A session not renewed in time
    /// expires: its locks stop conflicting at once and are dropped by the next lock op.
    RenewSession { session: u64, ttl_ms: u32 },
    /// End a session and drop all of its locks (a clean unmount).
    EndSession { session: u64 },
    /// Take, change or release (`kind: None`) an advisory byte-range lock of `owner` in `session`
    /// on bytes `start..=end` of `ino` (POSIX `fcntl` semantics: an owner's own locks are
    /// replaced or split, never conflict; `flock` maps to the whole range). Fails with
    /// [`FsError::WouldBlock`] on a conflicting lock of another owner (callers wanting to wait
    /// poll), and with [`FsError::Stale`] when the session is unknown or expired.
    SetLock {
        ino: Ino,
        lock: LockSpec,
        kind: Option<LockKind>,
    },
    /// Which lock, if any, would block `kind` on `lock` (`F_GETLK`). An op rather than a query so
    /// that session expiry is judged by the same clock as [`NsOp::SetLock`].
    TestLock {
        ino: Ino,
        lock: LockSpec,
        kind: LockKind,
    },
    /// Apply every op in order, all or none: the first failure is the batch's error and undoes the
    /// ops before it. Lock and session ops cannot be batched ([`FsError::Invalid`]).
    Batch(Vec<NsOp>),
    /// A blocking lock request (`F_SETLKW`, `flock` without `LOCK_NB`): [`NsOp::SetLock`] that
    /// takes a lock, except that when it must wait, `owner` is recorded as waiting for the
    /// holder of the conflicting lock until `wait_ms` after this op (the caller asks again
    /// before then), and a wait that would close a cycle of owners waiting for each other fails
    /// with [`FsError::Deadlock`] instead of [`FsError::WouldBlock`] (as Linux does for POSIX
    /// locks, across every session).
    WaitLock {
        ino: Ino,
        lock: LockSpec,
        kind: LockKind,
        wait_ms: u32,
    },
    /// `owner` of `session` no longer waits for a lock (its request was interrupted).
    StopWait { session: u64, owner: u64 },
    /// Apply `op` (not a lock or session op) for `session`: a file that loses its last link in
    /// it is kept, with no links, as an orphan of the session, because the session has it open
    /// (or may: POSIX keeps a removed file until its last descriptor closes). Its attributes,
    /// size and extended attributes stay usable by inode number until the session lets go of
    /// it ([`NsOp::Forget`]) or ends (then it goes, as an unmount closes everything); either
    /// way its data then goes onto the purge queue. The result names it in `freed` as usual.
    AsSession { session: u64, op: Box<NsOp> },
    /// `session` lets go of these orphans: each goes, its data onto the purge queue (inodes
    /// that are not orphans of the session are left alone).
    Forget { session: u64, inos: Vec<Ino> },
    /// The data of these files on the purge queue ([`NsQuery::Purgeable`]) was deleted: take
    /// them off it. Numbers not on the queue are ignored, so sending it twice is harmless.
    Purged { inos: Vec<Ino> },
}

/// Shared (read) or exclusive (write) advisory lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Who asks for which bytes in a lock op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    /// The lock session (mount) of the owner.
    pub session: u64,
    /// The owner inside its session (FUSE's `lock_owner`).
    pub owner: u64,
    /// The process asking, reported to `F_GETLK` callers.
    pub pid: u32,
    /// First and last byte, inclusive (`u64::MAX`: to the end of file, whatever it becomes).
    pub start: u64,
    pub end: u64,
}

/// A lock held, as [`NsOp::TestLock`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    pub kind: LockKind,
    pub session: u64,
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
}

/// The data of a file whose last link went: its objects are
/// `Oid::for_piece(File, ino, 0..ceil(size / chunk_size))` in `pool`. An entry of the purge
/// queue, and what [`NsResult::Unlinked`] and [`NsResult::Renamed`] report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreedFile {
    pub ino: Ino,
    pub size: u64,
    pub pool: Option<PoolId>,
    pub chunk_size: u32,
}

/// The outcome of a successful [`NsOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsResult {
    /// The inode's attributes after the change ([`NsOp::SetAttr`], [`NsOp::Pin`]).
    Attr(InodeAttr),
    /// The inode a directory entry now names ([`NsOp::Create`], [`NsOp::Link`]). `created` is
    /// false only when a non-exclusive file create found the file already there. `dir`: the
    /// directory holding the entry as the op left it, when the op changed it (a mount answers
    /// the kernel's next look at the directory with it instead of asking again).
    Entry {
        attr: InodeAttr,
        created: bool,
        dir: Option<InodeAttr>,
    },
    /// An entry went ([`NsOp::Unlink`], [`NsOp::Rmdir`]); `freed` is set when it was the last link
    /// of a file: the file is on the purge queue (or an orphan of the session the op ran for).
    /// `dir`: the directory as the op left it.
    Unlinked {
        freed: Option<FreedFile>,
        dir: Option<InodeAttr>,
    },
    /// [`NsOp::Rename`] took effect; `replaced_freed` is set when the replaced entry was the last
    /// link of a file.
    Renamed { replaced_freed: Option<FreedFile> },
    /// The change took effect and has nothing to report ([`NsOp::SetXattr`],
    /// [`NsOp::RemoveXattr`]).
    Done,
    /// One result per op of an [`NsOp::Batch`], in order.
    Batch(Vec<NsResult>),
    /// [`NsOp::TestLock`]: the first conflicting lock, or `None` when the lock could be taken.
    LockTest(Option<HeldLock>),
}

/// A namespace read. Reads do not change atime; callers that want it set it with
/// [`NsOp::SetAttr`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsQuery {
    /// The inode `name` names in directory `parent`; `"."` is `parent` itself and `".."` its
    /// parent (the root's parent is the root).
    Lookup {
        parent: Ino,
        name: String,
    },
    GetAttr {
        ino: Ino,
    },
    /// Entries of directory `ino` in byte order of their names, starting after `after` (which need
    /// not exist any more), at most `limit` (capped at [`READDIR_MAX`], at least 1). `"."` and
    /// `".."` are not listed: callers add them ([`NsQuery::Lookup`] of `".."` gives the parent).
    ReadDir {
        ino: Ino,
        after: Option<String>,
        limit: u32,
    },
    /// Like [`NsQuery::ReadDir`], with each entry's attributes and the value of extended
    /// attribute `xattr` (when named and set): one round trip for a listing that needs sizes and
    /// times (S3 ListObjects, NFS READDIRPLUS). At most [`READDIRPLUS_MAX`] entries a page.
    ReadDirPlus {
        ino: Ino,
        after: Option<String>,
        limit: u32,
        xattr: Option<String>,
    },
    /// The target of symlink `ino`.
    ReadLink {
        ino: Ino,
    },
    GetXattr {
        ino: Ino,
        name: String,
    },
    /// Names of the extended attributes of `ino`, in byte order.
    ListXattr {
        ino: Ino,
    },
    /// The inode an absolute path names. Empty components and `"."` are skipped, `".."` goes up,
    /// symlinks in the middle are followed (relative targets from the symlink's directory), the
    /// last one only if `follow_last`; a trailing `/` follows the last component and requires a
    /// directory. More than [`SYMLOOP_MAX`] symlinks fail with [`FsError::Loop`].
    Resolve {
        path: String,
        follow_last: bool,
    },
    /// [`NsQuery::Resolve`] (not following the last symlink) plus the value of extended
    /// attribute `xattr` of the inode found, in one round trip.
    ResolveXattr {
        path: String,
        xattr: String,
    },
    /// Counts over the whole namespace.
    Stats,
    /// Up to `limit` files of the purge queue, lowest inode numbers first: files gone from
    /// the namespace whose data may still be on the OSDs. A purger deletes their objects (an
    /// object already gone is fine: purging is idempotent and inode numbers are never reused)
    /// and then sends [`NsOp::Purged`].
    Purgeable {
        limit: u32,
    },
}

/// Counts over the whole namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsStats {
    /// Inodes of every kind, the root included.
    pub inodes: u64,
    /// Sum of the sizes of all files.
    pub file_bytes: u64,
}

/// The answer to an [`NsQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsReply {
    /// [`NsQuery::Lookup`], [`NsQuery::GetAttr`], [`NsQuery::Resolve`].
    Attr(InodeAttr),
    /// [`NsQuery::ReadDir`]: one page; `more` says whether entries follow the last one.
    Dir { entries: Vec<DirEntry>, more: bool },
    /// [`NsQuery::ResolveXattr`]: the inode and the attribute's value, if set.
    AttrXattr(InodeAttr, Option<Vec<u8>>),
    /// [`NsQuery::ReadDirPlus`]: one page; `more` says whether entries follow the last one.
    DirPlus {
        entries: Vec<DirEntryPlus>,
        more: bool,
    },
    /// [`NsQuery::ReadLink`]: the target.
    Link(String),
    /// [`NsQuery::GetXattr`]: the value.
    Xattr(Vec<u8>),
    /// [`NsQuery::ListXattr`]: the names.
    XattrNames(Vec<String>),
    /// [`NsQuery::Stats`].
    Stats(NsStats),
    /// [`NsQuery::Purgeable`].
    Purgeable(Vec<FreedFile>),
}

/// A POSIX error of a namespace operation. [`FsError::errno`] gives the Linux number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum FsError {
    #[error("operation not permitted (EPERM)")]
    NotPermitted,
    #[error("no such file or directory (ENOENT)")]
    NotFound,
    #[error("argument list too long: value too large (E2BIG)")]
    TooBig,
    #[error("bad file handle (EBADF)")]
    BadHandle,
    #[error("permission denied (EACCES)")]
    AccessDenied,
    #[error("file exists (EEXIST)")]
    Exists,
    #[error("cross-device link (EXDEV)")]
    CrossDevice,
    #[error("not a directory (ENOTDIR)")]
    NotDir,
    #[error("is a directory (EISDIR)")]
    IsDir,
    #[error("invalid argument (EINVAL)")]
    Invalid,
    #[error("file too large (EFBIG)")]
    FileTooBig,
    #[error("no space left on device (ENOSPC)")]
    NoSpace,
    #[error("too many links (EMLINK)")]
    TooManyLinks,
    #[error("result out of range (ERANGE)")]
    Range,
    #[error("file name too long (ENAMETOOLONG)")]
    NameTooLong,
    #[error("directory not empty (ENOTEMPTY)")]
    NotEmpty,
    #[error("too many levels of symbolic links (ELOOP)")]
    Loop,
    #[error("no data available: no such attribute (ENODATA)")]
    NoData,
    #[error("stale file handle: no such inode (ESTALE)")]
    Stale,
    #[error("resource temporarily unavailable: conflicting lock (EAGAIN)")]
    WouldBlock,
    #[error("resource deadlock would occur (EDEADLK)")]
    Deadlock,
}

impl FsError {
    /// The Linux errno number (`EPERM` is 1, `ENOENT` 2, ...).
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotPermitted => 1,
            FsError::NotFound => 2,
            FsError::TooBig => 7,
            FsError::BadHandle => 9,
            FsError::AccessDenied => 13,
            FsError::Exists => 17,
            FsError::CrossDevice => 18,
            FsError::NotDir => 20,
            FsError::IsDir => 21,
            FsError::Invalid => 22,
            FsError::FileTooBig => 27,
            FsError::NoSpace => 28,
            FsError::TooManyLinks => 31,
            FsError::Range => 34,
            FsError::NameTooLong => 36,
            FsError::NotEmpty => 39,
            FsError::Loop => 40,
            FsError::NoData => 61,
            FsError::Stale => 116,
            FsError::WouldBlock => 11,
            FsError::Deadlock => 35,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_numbers_are_linux() {
        let table = [
            (FsError::NotPermitted, 1),
            (FsError::NotFound, 2),
            (FsError::TooBig, 7),
            (FsError::BadHandle, 9),
            (FsError::AccessDenied, 13),
            (FsError::Exists, 17),
            (FsError::CrossDevice, 18),
            (FsError::NotDir, 20),
            (FsError::IsDir, 21),
            (FsError::Invalid, 22),
            (FsError::FileTooBig, 27),
            (FsError::NoSpace, 28),
            (FsError::TooManyLinks, 31),
            (FsError::Range, 34),
            (FsError::NameTooLong, 36),
            (FsError::NotEmpty, 39),
            (FsError::Loop, 40),
            (FsError::NoData, 61),
            (FsError::Stale, 116),
            (FsError::WouldBlock, 11),
            (FsError::Deadlock, 35),
        ];
        for (e, n) in table {
            assert_eq!(e.errno(), n, "{e}");
        }
    }

    #[test]
    fn ops_round_trip_through_bincode() {
        let op = NsOp::Batch(vec![
            NsOp::Create {
                parent: ROOT_INO,
                name: "a".into(),
                kind: FileKind::Symlink,
                mode: 0o777,
                uid: 1,
                gid: 2,
                target: Some("../b".into()),
                exclusive: true,
            },
            NsOp::SetAttr {
                ino: 7,
                mode: None,
                uid: Some(3),
                gid: None,
                size: Some(10),
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::At(-5)),
            },
        ]);
        let bytes = bincode::serialize(&op).unwrap();
        assert_eq!(bincode::deserialize::<NsOp>(&bytes).unwrap(), op);
        let err = FsError::NotEmpty;
        let bytes = bincode::serialize(&err).unwrap();
        assert_eq!(bincode::deserialize::<FsError>(&bytes).unwrap(), err);
    }
}
