//! Inodes and their attributes: lookups by inode number, what a file or directory points at
//! (its pool), SETATTR with truncate, and the pool a new inode inherits.

use super::*;

impl Namespace {
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

    pub(super) fn inode(&self, ino: Ino) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::Stale)
    }

    pub(super) fn dir(&self, ino: Ino) -> Result<&Inode, FsError> {
        let inode = self.inode(ino)?;
        if inode.attr.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(inode)
    }

    /// The pool new files in `dir` store their data in: that of the nearest pinned directory on
    /// the way up to the root.
    pub(super) fn inherited_pool(&self, dir: Ino) -> Option<PoolId> {
        let mut cur = dir;
        loop {
            let inode = self.inodes.get(&cur)?;
            if inode.attr.pool.is_some() || cur == ROOT_INO {
                return inode.attr.pool;
            }
            cur = inode.parent?;
        }
    }
}

impl Txn<'_> {
    pub(super) fn set_attr(
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
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

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
}
