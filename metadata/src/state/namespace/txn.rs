//! [`Txn`]: one op being applied, every write logged so a failure rolls back exactly, and the
//! dispatch of each [`NsOp`] to the file that implements it.

use super::*;

/// The previous value of a key a [`Txn`] wrote.
enum Undo {
    Inode(Ino, Option<Inode>),
    Entry((Ino, String), Option<Ino>),
    Xattr((Ino, String), Option<Vec<u8>>),
    Orphan(Ino, Option<u64>),
    Purge(Ino, Option<FreedFile>),
}

/// One op being applied: every write goes through here and is logged, so [`Txn::rollback`] can
/// restore the namespace exactly.
pub(super) struct Txn<'a> {
    pub(super) ns: &'a mut Namespace,
    pub(super) now: i64,
    undo: Vec<Undo>,
    /// `next_ino`, `next_generation` and `file_bytes` before the op.
    counters: (Ino, u64, u64),
    /// Inside [`NsOp::AsSession`]: files losing their last link become orphans of this session.
    keep_for: Option<u64>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(ns: &'a mut Namespace, now: i64) -> Txn<'a> {
        let counters = (ns.next_ino, ns.next_generation, ns.file_bytes);
        Txn {
            ns,
            now,
            undo: Vec::new(),
            counters,
            keep_for: None,
        }
    }
}

impl Txn<'_> {
    pub(super) fn rollback(self) {
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
                Undo::Orphan(ino, Some(session)) => {
                    self.ns.orphans.insert(ino, session);
                }
                Undo::Orphan(ino, None) => {
                    self.ns.orphans.remove(&ino);
                }
                Undo::Purge(ino, Some(f)) => {
                    self.ns.purge.insert(ino, f);
                }
                Undo::Purge(ino, None) => {
                    self.ns.purge.remove(&ino);
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

    pub(super) fn insert_inode(&mut self, inode: Inode) {
        if inode.attr.kind == FileKind::File {
            self.ns.file_bytes = self.ns.file_bytes.wrapping_add(inode.attr.size);
        }
        let ino = inode.attr.ino;
        let old = self.ns.inodes.insert(ino, inode);
        self.undo.push(Undo::Inode(ino, old));
    }

    /// Remove an inode and its extended attributes.
    pub(super) fn remove_inode(&mut self, ino: Ino) {
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
    pub(super) fn modify<R>(
        &mut self,
        ino: Ino,
        f: impl FnOnce(&mut Inode) -> R,
    ) -> Result<R, FsError> {
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

    pub(super) fn set_entry(&mut self, dir: Ino, name: &str, ino: Option<Ino>) {
        let key = (dir, name.to_string());
        let old = match ino {
            Some(ino) => self.ns.entries.insert(key.clone(), ino),
            None => self.ns.entries.remove(&key),
        };
        self.undo.push(Undo::Entry(key, old));
    }

    pub(super) fn set_orphan(&mut self, ino: Ino, session: Option<u64>) {
        let old = match session {
            Some(s) => self.ns.orphans.insert(ino, s),
            None => self.ns.orphans.remove(&ino),
        };
        self.undo.push(Undo::Orphan(ino, old));
    }

    pub(super) fn set_purge(&mut self, ino: Ino, f: Option<FreedFile>) {
        let old = match f {
            Some(f) => self.ns.purge.insert(ino, f),
            None => self.ns.purge.remove(&ino),
        };
        self.undo.push(Undo::Purge(ino, old));
    }

    pub(super) fn set_xattr(&mut self, key: (Ino, String), value: Option<Vec<u8>>) {
        let old = match value {
            Some(value) => self.ns.xattrs.insert(key.clone(), value),
            None => self.ns.xattrs.remove(&key),
        };
        self.undo.push(Undo::Xattr(key, old));
    }

    /// A directory's contents changed: mtime and ctime become now, its link count moves by
    /// `subdirs` (a subdirectory came or went). Returns its attributes after the change.
    pub(super) fn dir_changed(&mut self, dir: Ino, subdirs: i32) -> Result<InodeAttr, FsError> {
        let now = self.now;
        self.modify(dir, |d| {
            d.attr.nlink = d.attr.nlink.saturating_add_signed(subdirs);
            d.attr.mtime_ns = now;
            d.attr.ctime_ns = now;
            d.attr.clone()
        })
    }

    pub(super) fn touch_ctime(&mut self, ino: Ino) -> Result<(), FsError> {
        let now = self.now;
        self.modify(ino, |i| i.attr.ctime_ns = now)
    }

    /// Fail if directory `dir` cannot take one more subdirectory.
    pub(super) fn check_room_for_subdir(&self, dir: Ino) -> Result<(), FsError> {
        if self.ns.inode(dir)?.attr.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        Ok(())
    }

    /// Drop one link of a file or symlink; the inode goes with its last link. A file's data
    /// then goes on the purge queue in this same op, unless the file is kept as an orphan of
    /// the session the op runs for (it goes on the queue when the session forgets it or ends).
    pub(super) fn drop_link(&mut self, ino: Ino) -> Result<Option<FreedFile>, FsError> {
        let now = self.now;
        let attr = self.modify(ino, |i| {
            i.attr.nlink = i.attr.nlink.saturating_sub(1);
            i.attr.ctime_ns = now;
            i.attr.clone()
        })?;
        if attr.nlink > 0 {
            return Ok(None);
        }
        if attr.kind != FileKind::File {
            self.remove_inode(ino);
            return Ok(None);
        }
        let freed = freed_file(&attr);
        match self.keep_for {
            Some(session) => self.set_orphan(ino, Some(session)),
            None => {
                self.remove_inode(ino);
                self.set_purge(ino, Some(freed));
            }
        }
        Ok(Some(freed))
    }

    /// An orphan of `session` goes: its data onto the purge queue. Anything else is left alone.
    fn forget(&mut self, session: u64, ino: Ino) {
        if self.ns.orphans.get(&ino) != Some(&session) {
            return;
        }
        self.set_orphan(ino, None);
        if let Some(inode) = self.ns.inodes.get(&ino) {
            let freed = freed_file(&inode.attr);
            self.remove_inode(ino);
            self.set_purge(ino, Some(freed));
        }
    }

    // ---------------------------------------------------------------- ops

    pub(super) fn op(&mut self, op: &NsOp) -> Result<NsResult, FsError> {
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
            NsOp::AsSession { session, op } => {
                if is_lock_op(op) {
                    return Err(FsError::Invalid);
                }
                // A session that is not there would never let go of its orphans.
                let alive = self.ns.session_alive(*session, self.now);
                let outer = std::mem::replace(&mut self.keep_for, alive.then_some(*session));
                let r = self.op(op);
                self.keep_for = outer;
                r
            }
            NsOp::Forget { session, inos } => {
                for ino in inos {
                    self.forget(*session, *ino);
                }
                Ok(NsResult::Done)
            }
            NsOp::Purged { inos } => {
                for ino in inos {
                    self.set_purge(*ino, None);
                }
                Ok(NsResult::Done)
            }
            // Only reached inside a batch: `Namespace::apply` takes them before any `Txn`.
            NsOp::RenewSession { .. }
            | NsOp::EndSession { .. }
            | NsOp::SetLock { .. }
            | NsOp::TestLock { .. }
            | NsOp::WaitLock { .. }
            | NsOp::StopWait { .. } => Err(FsError::Invalid),
            NsOp::Batch(ops) => ops
                .iter()
                .map(|op| self.op(op))
                .collect::<Result<_, _>>()
                .map(NsResult::Batch),
        }
    }
}

/// What the purge queue keeps of a file: where its objects are.
pub(super) fn freed_file(a: &InodeAttr) -> FreedFile {
    FreedFile {
        ino: a.ino,
        size: a.size,
        pool: a.pool,
        chunk_size: a.chunk_size,
    }
}

/// Lock and session ops: applied outside any [`Txn`], never batched.
pub(super) fn is_lock_op(op: &NsOp) -> bool {
    matches!(
        op,
        NsOp::RenewSession { .. }
            | NsOp::EndSession { .. }
            | NsOp::SetLock { .. }
            | NsOp::TestLock { .. }
            | NsOp::WaitLock { .. }
            | NsOp::StopWait { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

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
}
