//! Helpers shared by the namespace's tests: op builders, queries, and the structural invariants
//! every test checks.

pub(super) use super::*;
pub(super) use cairn_proto::fs::FileKind::{Dir, File, Symlink};
pub(super) use rand::rngs::StdRng;
pub(super) use rand::{Rng, SeedableRng};
pub(super) use std::collections::{BTreeSet, VecDeque};

pub(super) const T0: i64 = 1_000_000;

pub(super) fn create_op(parent: Ino, name: &str, kind: FileKind) -> NsOp {
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

pub(super) fn entry_attr(r: NsResult) -> InodeAttr {
    match r {
        NsResult::Entry { attr, .. } => attr,
        other => panic!("expected an entry, got {other:?}"),
    }
}

pub(super) fn mk(ns: &mut Namespace, parent: Ino, name: &str, kind: FileKind) -> Ino {
    entry_attr(ns.apply(&create_op(parent, name, kind), T0).unwrap()).ino
}

pub(super) fn symlink(ns: &mut Namespace, parent: Ino, name: &str, target: &str) -> Ino {
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

pub(super) fn attr(ns: &Namespace, ino: Ino) -> InodeAttr {
    match ns.query(&NsQuery::GetAttr { ino }) {
        Ok(NsReply::Attr(a)) => a,
        other => panic!("getattr {ino}: {other:?}"),
    }
}

pub(super) fn lookup(ns: &Namespace, parent: Ino, name: &str) -> Result<Ino, FsError> {
    let q = NsQuery::Lookup {
        parent,
        name: name.into(),
    };
    match ns.query(&q)? {
        NsReply::Attr(a) => Ok(a.ino),
        other => panic!("lookup: {other:?}"),
    }
}

pub(super) fn resolve(ns: &Namespace, path: &str, follow_last: bool) -> Result<Ino, FsError> {
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
pub(super) fn list(ns: &Namespace, ino: Ino, page: u32) -> Result<Vec<DirEntry>, FsError> {
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

pub(super) fn names(ns: &Namespace, ino: Ino) -> Vec<String> {
    list(ns, ino, 2)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

pub(super) fn unlink(parent: Ino, name: &str) -> NsOp {
    NsOp::Unlink {
        parent,
        name: name.into(),
    }
}

pub(super) fn rmdir(parent: Ino, name: &str) -> NsOp {
    NsOp::Rmdir {
        parent,
        name: name.into(),
    }
}

pub(super) fn link(ino: Ino, new_parent: Ino, new_name: &str) -> NsOp {
    NsOp::Link {
        ino,
        new_parent,
        new_name: new_name.into(),
    }
}

pub(super) fn rename(p: Ino, n: &str, np: Ino, nn: &str) -> NsOp {
    rename_flags(p, n, np, nn, false, false)
}

pub(super) fn rename_flags(
    p: Ino,
    n: &str,
    np: Ino,
    nn: &str,
    noreplace: bool,
    exchange: bool,
) -> NsOp {
    NsOp::Rename {
        parent: p,
        name: n.into(),
        new_parent: np,
        new_name: nn.into(),
        noreplace,
        exchange,
    }
}

pub(super) fn set_size(ino: Ino, size: u64) -> NsOp {
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

pub(super) fn set_xattr(ino: Ino, name: &str, value: &[u8], flags: XattrFlag) -> NsOp {
    NsOp::SetXattr {
        ino,
        name: name.into(),
        value: value.to_vec(),
        flags,
    }
}

/// `op` fails with `err` and changes nothing.
pub(super) fn fails(ns: &mut Namespace, op: &NsOp, err: FsError) {
    let before = ns.clone();
    assert_eq!(ns.apply(op, T0 + 999), Err(err), "{op:?}");
    assert_eq!(*ns, before, "failed op {op:?} changed the namespace");
}

pub(super) fn stats(ns: &Namespace) -> NsStats {
    match ns.query(&NsQuery::Stats) {
        Ok(NsReply::Stats(s)) => s,
        other => panic!("stats: {other:?}"),
    }
}

/// Structural invariants: no dangling entry, no leaked or unreachable inode, link counts,
/// parent pointers, the file-size sum, unique generations.
pub(super) fn check_invariants(ns: &Namespace) {
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
            File if links == 0 => {
                // An orphan: kept for the session that has it open.
                assert!(ns.orphans.contains_key(ino), "leaked inode {ino}");
                assert_eq!(a.nlink, 0, "nlink of orphan {ino}");
                file_bytes += a.size;
            }
            File | Symlink => {
                assert!(links > 0, "leaked inode {ino}");
                assert!(!ns.orphans.contains_key(ino), "orphan {ino} with links");
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
    for ino in ns.purge.keys() {
        assert!(
            !ns.inodes.contains_key(ino),
            "purgeable {ino} still an inode"
        );
    }
    for (ino, session) in &ns.orphans {
        assert!(ns.inodes.contains_key(ino), "orphan {ino} without inode");
        assert!(
            ns.sessions.contains_key(session),
            "orphan {ino} of a gone session"
        );
    }
    for (ino, _) in ns.xattrs.keys() {
        assert!(ns.inodes.contains_key(ino), "xattr of dead inode {ino}");
    }
}
