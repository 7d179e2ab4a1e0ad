//! The namespace against a reference model: random ops, the same outcome, invariants after each
//! op, and replicas that replay the log agree.

use super::testutil::*;

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
                ..
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
        NsResult::Unlinked { freed: Some(f), .. }
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
                    // No session here: every freed file is on the purge queue at once.
                    for (ino, size) in &freed {
                        assert_eq!(ns.purge.get(ino).map(|f| f.size), Some(*size), "{ctx}");
                    }
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
