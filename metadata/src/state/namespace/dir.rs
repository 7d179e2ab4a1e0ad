//! Directory entries: a directory's entries as one name-ordered range, paging (READDIR,
//! READDIRPLUS), LOOKUP with `.` and `..`, path resolution with symlinks, and name checks.

use super::*;

impl Namespace {
    pub(super) fn child(&self, dir: Ino, name: &str) -> Option<Ino> {
        self.entries.get(&(dir, name.to_string())).copied()
    }

    /// Entries of `dir` from the first one after `after` (or the first one) on, in name order.
    pub(super) fn entries_of<'a>(
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

    pub(super) fn is_empty_dir(&self, dir: Ino) -> bool {
        self.entries_of(dir, None).next().is_none()
    }

    /// Whether directory `dir` is `ancestor` or lies below it.
    pub(super) fn is_within(&self, dir: Ino, ancestor: Ino) -> bool {
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

    pub(super) fn lookup(&self, parent: Ino, name: &str) -> Result<InodeAttr, FsError> {
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

    pub(super) fn read_dir(
        &self,
        ino: Ino,
        after: Option<&str>,
        limit: u32,
    ) -> Result<NsReply, FsError> {
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

    pub(super) fn read_dir_plus(
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

    pub(super) fn resolve(&self, path: &str, follow_last: bool) -> Result<InodeAttr, FsError> {
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
pub(super) fn check_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FsError::Invalid);
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// A symlink target: not empty (Linux says `ENOENT`), no NUL, shorter than [`PATH_MAX`].
pub(super) fn check_target(target: &str) -> Result<(), FsError> {
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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

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
}
