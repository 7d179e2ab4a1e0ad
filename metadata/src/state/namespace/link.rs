//! The ops that add and remove names: create (files, directories, symlinks), link, unlink,
//! rmdir, rename (with `noreplace`) and exchange, with Linux's error order.

use super::*;

impl Txn<'_> {
    pub(super) fn create(
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
                    dir: None,
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
        let dir = self.dir_changed(parent, i32::from(kind == FileKind::Dir))?;
        Ok(NsResult::Entry {
            attr,
            created: true,
            dir: Some(dir),
        })
    }

    pub(super) fn link(
        &mut self,
        ino: Ino,
        new_parent: Ino,
        new_name: &str,
    ) -> Result<NsResult, FsError> {
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
        if nlink == 0 {
            // An orphan (open, but removed): Linux refuses to link it back too.
            return Err(FsError::NotFound);
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
        let dir = self.dir_changed(new_parent, 0)?;
        Ok(NsResult::Entry {
            attr,
            created: true,
            dir: Some(dir),
        })
    }

    pub(super) fn unlink(&mut self, parent: Ino, name: &str) -> Result<NsResult, FsError> {
        check_name(name)?;
        self.ns.dir(parent)?;
        let ino = self.ns.child(parent, name).ok_or(FsError::NotFound)?;
        if self.ns.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        self.set_entry(parent, name, None);
        let dir = self.dir_changed(parent, 0)?;
        let freed = self.drop_link(ino)?;
        Ok(NsResult::Unlinked {
            freed,
            dir: Some(dir),
        })
    }

    pub(super) fn rmdir(&mut self, parent: Ino, name: &str) -> Result<NsResult, FsError> {
        check_name(name)?;
        self.ns.dir(parent)?;
        let ino = self.ns.child(parent, name).ok_or(FsError::NotFound)?;
        self.ns.dir(ino)?;
        if !self.ns.is_empty_dir(ino) {
            return Err(FsError::NotEmpty);
        }
        self.set_entry(parent, name, None);
        self.remove_inode(ino);
        let dir = self.dir_changed(parent, -1)?;
        Ok(NsResult::Unlinked {
            freed: None,
            dir: Some(dir),
        })
    }

    pub(super) fn rename(
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
    pub(super) fn exchange(
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
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

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
                NsResult::Entry { attr, created, dir } => {
                    assert!(created);
                    assert_eq!(dir, Some(super::super::testutil::attr(&ns, ROOT_INO)));
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
                created: false,
                dir: None
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
    fn a_file_removed_for_a_session_stays_until_it_lets_go() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let g = mk(&mut ns, ROOT_INO, "g", File);
        let h = mk(&mut ns, ROOT_INO, "h", File);
        ns.apply(&set_size(f, 100), T0).unwrap();
        ns.apply(&set_xattr(f, "user.x", b"1", XattrFlag::Either), T0)
            .unwrap();
        let renew = |session| NsOp::RenewSession {
            session,
            ttl_ms: 1_000,
        };
        ns.apply(&renew(5), T0).unwrap();
        let as5 = |op| NsOp::AsSession {
            session: 5,
            op: Box::new(op),
        };
        let purgeable = |ns: &Namespace| match ns.query(&NsQuery::Purgeable { limit: 10 }) {
            Ok(NsReply::Purgeable(f)) => f.iter().map(|f| f.ino).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let r = ns.apply(&as5(unlink(ROOT_INO, "f")), T0 + 1).unwrap();
        assert!(
            matches!(r, NsResult::Unlinked { freed: Some(ff), .. } if ff.ino == f && ff.size == 100)
        );
        // Gone from the directory, still there by number: stat, truncate, xattrs, locks.
        assert_eq!(lookup(&ns, ROOT_INO, "f"), Err(FsError::NotFound));
        assert_eq!((attr(&ns, f).nlink, attr(&ns, f).size), (0, 100));
        ns.apply(&set_size(f, 50), T0 + 2).unwrap();
        ns.apply(&NsOp::Extend { ino: f, size: 70 }, T0 + 2)
            .unwrap();
        assert_eq!(attr(&ns, f).size, 70);
        assert!(ns
            .query(&NsQuery::GetXattr {
                ino: f,
                name: "user.x".into()
            })
            .is_ok());
        // It cannot be linked back (as on Linux).
        fails(&mut ns, &link(f, ROOT_INO, "back"), FsError::NotFound);
        // A rename over a file keeps the replaced one the same way.
        let r = ns
            .apply(&as5(rename(ROOT_INO, "g", ROOT_INO, "h")), T0 + 3)
            .unwrap();
        assert!(matches!(r, NsResult::Renamed { replaced_freed: Some(ff) } if ff.ino == h));
        assert_eq!(attr(&ns, h).nlink, 0);
        check_invariants(&ns);
        // A failed op inside leaves nothing behind.
        let failing = as5(NsOp::Batch(vec![
            unlink(ROOT_INO, "h"),
            unlink(ROOT_INO, "nope"),
        ]));
        fails(&mut ns, &failing, FsError::NotFound);
        assert_eq!(lookup(&ns, ROOT_INO, "h"), Ok(g));
        // Nothing of an orphan is on the purge queue while it is kept.
        assert!(purgeable(&ns).is_empty());
        // Forget by another session does nothing; by the owner, the inode goes and its data
        // onto the purge queue, in the same op.
        ns.apply(
            &NsOp::Forget {
                session: 6,
                inos: vec![f],
            },
            T0 + 4,
        )
        .unwrap();
        assert_eq!(attr(&ns, f).size, 70);
        assert!(purgeable(&ns).is_empty());
        ns.apply(
            &NsOp::Forget {
                session: 5,
                inos: vec![f, g],
            },
            T0 + 4,
        )
        .unwrap();
        assert_eq!(ns.query(&NsQuery::GetAttr { ino: f }), Err(FsError::Stale));
        assert_eq!(attr(&ns, g).nlink, 1, "a linked file is not an orphan");
        assert_eq!(purgeable(&ns), vec![f]);
        assert_eq!(ns.purge[&f].size, 70, "the size the orphan had last");
        // Purged takes it off; sent again (a purger racing another), it changes nothing.
        ns.apply(&NsOp::Purged { inos: vec![f] }, T0 + 5).unwrap();
        assert!(purgeable(&ns).is_empty());
        let before = ns.clone();
        ns.apply(&NsOp::Purged { inos: vec![f, 999] }, T0 + 6)
            .unwrap();
        assert_eq!(ns, before);
        check_invariants(&ns);
        // When the session expires its orphans go with it, onto the queue.
        let later = T0 + 2_000 * 1_000_000;
        ns.apply(&renew(6), later).unwrap();
        assert_eq!(ns.query(&NsQuery::GetAttr { ino: h }), Err(FsError::Stale));
        assert!(ns.orphans.is_empty());
        check_invariants(&ns);
        assert_eq!(purgeable(&ns), vec![h]);
        ns.apply(&NsOp::Purged { inos: vec![h] }, later).unwrap();
        assert!(purgeable(&ns).is_empty());
        // Without a live session (or with none) the inode goes at once, onto the queue.
        let k = mk(&mut ns, ROOT_INO, "k", File);
        ns.apply(&as5(unlink(ROOT_INO, "k")), later).unwrap();
        assert_eq!(ns.query(&NsQuery::GetAttr { ino: k }), Err(FsError::Stale));
        assert_eq!(purgeable(&ns), vec![k]);
        // Lock ops cannot be wrapped.
        fails(
            &mut ns,
            &as5(NsOp::EndSession { session: 5 }),
            FsError::Invalid,
        );
        check_invariants(&ns);
    }

    #[test]
    fn the_entry_that_drops_a_files_last_link_puts_it_on_the_purge_queue() {
        let mut ns = Namespace::new(T0);
        let queue = |ns: &Namespace| ns.purge.values().copied().collect::<Vec<_>>();
        let f = mk(&mut ns, ROOT_INO, "f", File);
        ns.apply(&set_size(f, 9 << 20), T0).unwrap();
        ns.apply(&link(f, ROOT_INO, "f2"), T0).unwrap();
        mk(&mut ns, ROOT_INO, "g", File);
        let h = mk(&mut ns, ROOT_INO, "h", File);
        symlink(&mut ns, ROOT_INO, "l", "f");
        // Not the last link, a symlink, a directory: nothing to purge.
        ns.apply(&unlink(ROOT_INO, "f"), T0).unwrap();
        ns.apply(&unlink(ROOT_INO, "l"), T0).unwrap();
        mk(&mut ns, ROOT_INO, "d", Dir);
        ns.apply(&rmdir(ROOT_INO, "d"), T0).unwrap();
        assert!(queue(&ns).is_empty());
        // The last link: the answer and the queue name the same data.
        let r = ns.apply(&unlink(ROOT_INO, "f2"), T0 + 1).unwrap();
        let NsResult::Unlinked {
            freed: Some(ff), ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((ff.ino, ff.size), (f, 9 << 20));
        assert_eq!(queue(&ns), vec![ff]);
        // A rename over a file's last link too.
        ns.apply(&rename(ROOT_INO, "g", ROOT_INO, "h"), T0 + 2)
            .unwrap();
        assert_eq!(ns.purge.keys().copied().collect::<Vec<_>>(), vec![f, h]);
        check_invariants(&ns);
        // A failed batch leaves the queue as it was.
        let before = ns.clone();
        let failing = NsOp::Batch(vec![unlink(ROOT_INO, "h"), unlink(ROOT_INO, "nope")]);
        fails(&mut ns, &failing, FsError::NotFound);
        assert_eq!(ns, before);
        // Purgeable lists the lowest numbers first, `limit` at most; Purged takes them off.
        let listed = |ns: &Namespace, limit| match ns.query(&NsQuery::Purgeable { limit }) {
            Ok(NsReply::Purgeable(files)) => files.iter().map(|f| f.ino).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(listed(&ns, 1), vec![f]);
        ns.apply(&NsOp::Purged { inos: vec![f] }, T0 + 3).unwrap();
        assert_eq!(listed(&ns, 10), vec![h]);
        check_invariants(&ns);
    }

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
            Ok(NsResult::Unlinked {
                freed: None,
                dir: Some(attr(&ns, d))
            })
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
                }),
                dir: Some(attr(&ns, ROOT_INO))
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
            Ok(NsResult::Unlinked {
                freed: None,
                dir: Some(attr(&ns, d))
            })
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
            Ok(NsResult::Unlinked {
                freed: None,
                dir: Some(attr(&ns, d))
            })
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
}
