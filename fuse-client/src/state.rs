//! What a mount remembers between requests: open files and directories by handle, and per inode
//! the open count, the size the metadata service has, the high-water mark of writes past it
//! that are not yet committed, and the data of a file unlinked while open.
//!
//! Everything sits behind one std `Mutex` that is never held across an `.await`.

use cairn_proto::fs::{DirEntry, FreedFile, Ino, InodeAttr};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Per-inode state of this mount.
#[derive(Debug, Default)]
struct InodeState {
    /// Open file handles of this mount on the inode.
    open: u32,
    /// The size as the metadata service last reported it.
    committed: u64,
    /// Largest end of a write past `committed` not yet extended in the namespace.
    pending: Option<u64>,
    /// Data was written since the last size/mtime commit.
    dirty: bool,
    /// (size, mtime) the kernel was last told, to tell whether its cache is still good.
    told: Option<(u64, i64)>,
    /// The file lost its last link while open here: its data, freed on the last close.
    freed: Option<FreedFile>,
}

/// One open directory: a snapshot of its listing, loaded page by page.
#[derive(Debug)]
pub(crate) struct DirListing {
    pub ino: Ino,
    pub parent: Ino,
    pub entries: Vec<DirEntry>,
    /// The metadata service has entries after the last loaded one.
    pub more: bool,
}

/// A size change this mount must commit: grow to `size` (0: only touch mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingSize {
    pub size: u64,
}

#[derive(Default)]
struct Tables {
    next_fh: u64,
    files: HashMap<u64, InodeAttr>,
    dirs: HashMap<u64, DirListing>,
    inodes: HashMap<Ino, InodeState>,
    /// (inode, lock owner) pairs that took a lock through this mount and may still hold one.
    lockers: HashSet<(Ino, u64)>,
    /// Inodes found without `security.capability`, and when: the kernel asks before every
    /// write (FUSE clears `SB_NOSEC`), so the answer is kept for the attribute TTL.
    no_caps: HashMap<Ino, std::time::Instant>,
    /// Directories as a change of this mount left them (create, unlink, ...), and when the
    /// answer came: the kernel drops its cached attributes of a directory after every change
    /// in it, and with `default_permissions` asks for them again at the next path walk
    /// through it, which this answers without a round trip.
    changed_dirs: HashMap<Ino, (InodeAttr, std::time::Instant)>,
}

#[derive(Default)]
pub(crate) struct Handles {
    t: Mutex<Tables>,
}

impl Handles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.t.lock().expect("handles lock")
    }

    /// The attributes to report for a fresh `attr` from the metadata service: its size grown to
    /// this mount's pending writes. Remembers what the kernel is told.
    pub fn view(&self, mut attr: InodeAttr) -> InodeAttr {
        let mut t = self.lock();
        if let Some(st) = t.inodes.get_mut(&attr.ino) {
            st.committed = attr.size;
            if let Some(p) = st.pending {
                if p <= attr.size {
                    st.pending = None;
                } else {
                    attr.size = p;
                }
            }
            st.told = Some((attr.size, attr.mtime_ns));
        }
        attr
    }

    /// Open a file; returns its handle and whether the kernel's cached view of it is stale
    /// (size or mtime differ from what it was last told).
    pub fn open_file(&self, attr: InodeAttr) -> (u64, InodeAttr, bool) {
        let mut t = self.lock();
        t.next_fh += 1;
        let fh = t.next_fh;
        let st = t.inodes.entry(attr.ino).or_default();
        st.open += 1;
        st.committed = attr.size;
        let mut shown = attr.clone();
        if let Some(p) = st.pending {
            shown.size = shown.size.max(p);
        }
        let now = (shown.size, shown.mtime_ns);
        let stale = st.told.is_some_and(|told| told != now);
        st.told = Some(now);
        t.files.insert(fh, attr);
        (fh, shown, stale)
    }

    /// The inode attributes (layout: pool, chunk size) an open file handle was opened with.
    pub fn file(&self, fh: u64) -> Option<InodeAttr> {
        self.lock().files.get(&fh).cloned()
    }

    /// The attributes any open handle of `ino` was opened with.
    pub fn any_file(&self, ino: Ino) -> Option<InodeAttr> {
        self.lock().files.values().find(|a| a.ino == ino).cloned()
    }

    /// The size reads of `ino` are bounded by.
    pub fn read_size(&self, ino: Ino) -> Option<u64> {
        let t = self.lock();
        let st = t.inodes.get(&ino)?;
        Some(st.pending.map_or(st.committed, |p| p.max(st.committed)))
    }

    /// Bytes up to `end` were written to `ino`.
    pub fn wrote(&self, ino: Ino, end: u64) {
        let mut t = self.lock();
        let st = t.inodes.entry(ino).or_default();
        st.dirty = true;
        if end > st.committed {
            st.pending = Some(st.pending.map_or(end, |p| p.max(end)));
        }
    }

    /// Take the uncommitted size change of `ino`, if any (put it back with
    /// [`Handles::restore`] when committing fails).
    pub fn take_pending(&self, ino: Ino) -> Option<PendingSize> {
        let mut t = self.lock();
        let st = t.inodes.get_mut(&ino)?;
        if !st.dirty {
            return None;
        }
        st.dirty = false;
        Some(PendingSize {
            size: st.pending.unwrap_or(0),
        })
    }

    pub fn restore(&self, ino: Ino, p: PendingSize) {
        if p.size > 0 {
            self.wrote(ino, p.size);
        } else {
            self.lock().inodes.entry(ino).or_default().dirty = true;
        }
    }

    /// The size of `ino` was set (truncate, or a committed extension): pending writes below it
    /// are committed.
    pub fn sized(&self, ino: Ino, size: u64, truncated: bool) {
        let mut t = self.lock();
        if let Some(st) = t.inodes.get_mut(&ino) {
            st.committed = size;
            if truncated || st.pending.is_some_and(|p| p <= size) {
                st.pending = None;
            }
        }
    }

    /// A file lost its last link. Returns it back when nothing here has it open (free it now);
    /// otherwise keeps it for the last close.
    pub fn unlinked(&self, f: FreedFile) -> Option<FreedFile> {
        let mut t = self.lock();
        match t.inodes.get_mut(&f.ino) {
            Some(st) if st.open > 0 => {
                st.freed = Some(f);
                None
            }
            _ => Some(f),
        }
    }

    /// Close a file handle; returns the file's data to free if this was the last close of a
    /// file without links.
    pub fn close_file(&self, fh: u64) -> Option<FreedFile> {
        let mut t = self.lock();
        let ino = t.files.remove(&fh)?.ino;
        let st = t.inodes.get_mut(&ino)?;
        st.open = st.open.saturating_sub(1);
        if st.open > 0 {
            return None;
        }
        let freed = st.freed.take();
        // Keep what the kernel was told (for the next open's cache decision) unless the file is
        // gone.
        if freed.is_some() {
            t.inodes.remove(&ino);
        }
        freed
    }

    /// Whether `ino` was found without `security.capability` less than `ttl` ago.
    pub fn known_without_caps(&self, ino: Ino, ttl: std::time::Duration) -> bool {
        self.lock()
            .no_caps
            .get(&ino)
            .is_some_and(|at| at.elapsed() < ttl)
    }

    /// `ino` has no `security.capability` (as of now), or its xattrs changed (`false`).
    pub fn set_without_caps(&self, ino: Ino, without: bool) {
        let mut t = self.lock();
        if without {
            if t.no_caps.len() >= 100_000 {
                t.no_caps.clear();
            }
            t.no_caps.insert(ino, std::time::Instant::now());
        } else {
            t.no_caps.remove(&ino);
        }
    }

    /// A change of this mount left directory `dir` so (the newest change wins: answers of
    /// concurrent changes may come in any order).
    pub fn dir_changed(&self, dir: InodeAttr) {
        let mut t = self.lock();
        if t.changed_dirs.len() >= 10_000 {
            t.changed_dirs.clear();
        }
        let now = std::time::Instant::now();
        match t.changed_dirs.get_mut(&dir.ino) {
            Some(known) if known.0.ctime_ns > dir.ctime_ns => {}
            Some(known) => *known = (dir, now),
            None => {
                t.changed_dirs.insert(dir.ino, (dir, now));
            }
        }
    }

    /// The attributes of directory `ino` as a change of this mount left it less than `ttl`
    /// ago, and how much longer they may be cached, so that they are never older than `ttl`
    /// when the kernel stops trusting them.
    pub fn changed_dir(
        &self,
        ino: Ino,
        ttl: std::time::Duration,
    ) -> Option<(InodeAttr, std::time::Duration)> {
        let t = self.lock();
        let (attr, at) = t.changed_dirs.get(&ino)?;
        let left = ttl.checked_sub(at.elapsed()).filter(|d| !d.is_zero())?;
        Some((attr.clone(), left))
    }

    /// Directory `ino` changed in a way whose outcome this mount was not told (a rename, an
    /// attribute change): ask the metadata service next time.
    pub fn forget_dir(&self, ino: Ino) {
        self.lock().changed_dirs.remove(&ino);
    }

    /// `owner` took a lock on `ino`.
    pub fn locked(&self, ino: Ino, owner: u64) {
        self.lock().lockers.insert((ino, owner));
    }

    /// Whether `owner` may hold locks on `ino` (forgetting it: the caller releases them).
    pub fn take_locker(&self, ino: Ino, owner: u64) -> bool {
        self.lock().lockers.remove(&(ino, owner))
    }

    pub fn open_dir(&self, listing: DirListing) -> u64 {
        let mut t = self.lock();
        t.next_fh += 1;
        let fh = t.next_fh;
        t.dirs.insert(fh, listing);
        fh
    }

    /// Work on an open directory's listing.
    pub fn with_dir<R>(&self, fh: u64, f: impl FnOnce(&mut DirListing) -> R) -> Option<R> {
        self.lock().dirs.get_mut(&fh).map(f)
    }

    pub fn close_dir(&self, fh: u64) {
        self.lock().dirs.remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::fs::FileKind;

    fn attr(ino: Ino, size: u64, mtime_ns: i64) -> InodeAttr {
        InodeAttr {
            ino,
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            atime_ns: 0,
            mtime_ns,
            ctime_ns: 0,
            generation: ino,
            pool: None,
            chunk_size: 4 << 20,
        }
    }

    #[test]
    fn pending_writes_grow_the_reported_size_until_committed() {
        let h = Handles::default();
        let (fh, _, stale) = h.open_file(attr(5, 10, 1));
        assert!(!stale);
        h.wrote(5, 4);
        assert_eq!(h.read_size(5), Some(10));
        h.wrote(5, 100);
        assert_eq!(h.view(attr(5, 10, 1)).size, 100);
        let p = h.take_pending(5).unwrap();
        assert_eq!(p.size, 100);
        assert_eq!(h.take_pending(5), None);
        h.sized(5, 100, false);
        assert_eq!(h.view(attr(5, 100, 2)).size, 100);
        // A truncate drops pending growth.
        h.wrote(5, 200);
        h.sized(5, 0, true);
        assert_eq!(h.read_size(5), Some(0));
        assert_eq!(h.close_file(fh), None);
    }

    #[test]
    fn an_absent_capability_xattr_is_remembered_for_the_ttl_only() {
        let h = Handles::default();
        let ttl = std::time::Duration::from_millis(50);
        assert!(!h.known_without_caps(3, ttl));
        h.set_without_caps(3, true);
        assert!(h.known_without_caps(3, ttl));
        assert!(!h.known_without_caps(4, ttl));
        // An xattr change through this mount forgets it at once; time forgets it too.
        h.set_without_caps(3, false);
        assert!(!h.known_without_caps(3, ttl));
        h.set_without_caps(3, true);
        std::thread::sleep(ttl * 2);
        assert!(!h.known_without_caps(3, ttl));
    }

    #[test]
    fn a_changed_directory_is_answered_for_what_is_left_of_the_ttl() {
        let h = Handles::default();
        let ttl = std::time::Duration::from_millis(200);
        let mut d = attr(3, 0, 10);
        d.kind = FileKind::Dir;
        d.ctime_ns = 10;
        assert!(h.changed_dir(3, ttl).is_none());
        h.dir_changed(d.clone());
        let (got, left) = h.changed_dir(3, ttl).unwrap();
        assert_eq!(got, d);
        assert!(left <= ttl);
        // An older answer arriving late does not replace a newer one.
        let mut older = d.clone();
        older.ctime_ns = 5;
        h.dir_changed(older);
        assert_eq!(h.changed_dir(3, ttl).unwrap().0.ctime_ns, 10);
        // Forgotten on a change this mount was not told the outcome of, and aged out.
        h.forget_dir(3);
        assert!(h.changed_dir(3, ttl).is_none());
        h.dir_changed(d);
        std::thread::sleep(ttl);
        assert!(h.changed_dir(3, ttl).is_none());
    }

    #[test]
    fn reopen_detects_changes_made_elsewhere() {
        let h = Handles::default();
        let (fh, _, _) = h.open_file(attr(7, 10, 1));
        h.close_file(fh);
        let (fh, _, stale) = h.open_file(attr(7, 10, 1));
        assert!(!stale);
        h.close_file(fh);
        let (_, shown, stale) = h.open_file(attr(7, 20, 2));
        assert!(stale);
        assert_eq!(shown.size, 20);
    }

    #[test]
    fn data_of_a_file_unlinked_while_open_is_freed_on_last_close() {
        let h = Handles::default();
        let (a, _, _) = h.open_file(attr(9, 10, 1));
        let (b, _, _) = h.open_file(attr(9, 10, 1));
        let f = FreedFile {
            ino: 9,
            size: 10,
            pool: None,
            chunk_size: 4 << 20,
        };
        assert_eq!(h.unlinked(f), None);
        assert_eq!(h.close_file(a), None);
        assert_eq!(h.close_file(b), Some(f));
        // Not open at all: free at once.
        assert_eq!(h.unlinked(f), Some(f));
    }
}
