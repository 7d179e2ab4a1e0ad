//! Issue 18's report as a test: thousands of files of known content are moved to another pool
//! while a gateway's background migrator and `cairn fs migrate` run at once, a subdirectory is
//! pinned elsewhere and unpinned again during the move, a writer rewrites files on one mount and
//! readers check files on both. Afterwards every file's bytes are compared with a reference copy
//! through FUSE (both mounts), S3 and NFS, the old pool holds no file data, and the migration
//! added few map epochs.
//!
//! Seeds: `CAIRN_MIGRATE_SEEDS` (comma separated; default `1,2`); `bench/migrate_race.sh` runs
//! many more by hand.

use anyhow::{bail, ensure, Context, Result};
use cairn_client::Cluster;
use cairn_proto::PieceKind;
use cairn_tests::{bounded, cairn_bin, free_port, run_cmd, serial, start_fs_cluster, ClusterOpts};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fs/migrate_load.py")
}

/// Files (relative paths) below `dir`, sorted.
fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Inodes of the file data objects in `pool`.
fn file_inos_in(rt: &tokio::runtime::Runtime, c: &Cluster, pool: &str) -> Result<BTreeSet<u64>> {
    rt.block_on(async {
        let io = c.pool_io(pool).await?;
        Ok(io
            .list()
            .await?
            .iter()
            .filter_map(|(o, _)| match o.piece() {
                Some((PieceKind::File, ino, _)) => Some(ino),
                _ => None,
            })
            .collect())
    })
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// A child that is killed when dropped (however the test ends).
struct Kid(Option<Child>);

impl Kid {
    fn wait_output(mut self, secs: u64) -> Result<(bool, String)> {
        let mut c = self.0.take().context("no child")?;
        let start = Instant::now();
        while c.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(secs) {
                let _ = c.kill();
                let out = c.wait_with_output()?;
                bail!(
                    "still running after {secs} s: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = c.wait_with_output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command) -> Result<Kid> {
    Ok(Kid(Some(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?,
    )))
}

/// Write the reference tree: `small` files of 0–16 KiB and `medium` of 64 KiB–1 MiB in eight
/// directories (two levels), and ten files under `w/` for the writer.
fn make_reference(ref_dir: &Path, seed: u64, small: usize, medium: usize) -> Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut total = 0u64;
    for i in 0..small + medium {
        let dir = ref_dir.join(format!("d{}/s{}", i % 8, i % 3));
        fs::create_dir_all(&dir)?;
        let len = if i < small {
            rng.gen_range(0..16 << 10)
        } else {
            rng.gen_range(64 << 10..1 << 20)
        };
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        fs::write(dir.join(format!("f{i}.bin")), &data)?;
        total += len as u64;
    }
    fs::create_dir_all(ref_dir.join("w"))?;
    for j in 0..10 {
        let mut data = vec![0u8; 4096];
        rng.fill(&mut data[..]);
        fs::write(ref_dir.join(format!("w/w{j}")), &data)?;
    }
    Ok(total)
}

/// Every difference between the reference tree and `root` (a mount's view of it).
fn compare_tree(ref_dir: &Path, root: &Path, what: &str) -> Result<Vec<String>> {
    let mut bad = Vec::new();
    let want = files_below(ref_dir)?;
    for rel in &want {
        let expect = fs::read(ref_dir.join(rel))?;
        match fs::read(root.join(rel)) {
            Ok(got) if got == expect => {}
            Ok(got) => {
                let zeros = got
                    .iter()
                    .zip(&expect)
                    .filter(|(g, e)| g != e && **g == 0)
                    .count();
                bad.push(format!(
                    "{what}: {} differs ({} bytes, {} expected, {zeros} bytes zero that are not)",
                    rel.display(),
                    got.len(),
                    expect.len()
                ));
            }
            Err(e) => bad.push(format!("{what}: {}: {e}", rel.display())),
        }
    }
    let have = files_below(root)?;
    if have != want {
        bad.push(format!(
            "{what}: {} files, {} expected",
            have.len(),
            want.len()
        ));
    }
    Ok(bad)
}

fn run_seed(seed: u64) -> Result<()> {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default())?;
    c.cli(&["pool", "create", "fast", "--size", "1", "--min-size", "1"])?;
    let m1 = c.mount("m1", &[])?;
    let m2 = c.mount("m2", &[])?;
    let (nfs_port, s3_port) = (free_port(), free_port());
    // The gateway serves S3 and NFS and runs the background migrator.
    let gw_args: Vec<String> = [
        "gateway",
        "--meta",
        &c.meta_addrs.join(","),
        "--iscsi",
        "",
        "--nfs",
        &format!("127.0.0.1:{nfs_port}"),
        "--s3",
        &format!("127.0.0.1:{s3_port}"),
        "--migrate-grace-secs",
        "31",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _gw = cairn_tests::Daemon::spawn("gw", gw_args, c.dir.path())?;
    for port in [nfs_port, s3_port] {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "gateway port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let admin = c.s3_user("root", true)?;
    let cluster = rt.block_on(c.client())?;
    let meta = c.meta_addrs.join(",");
    let ref_dir = c.dir.path().join("ref");
    let stop = c.dir.path().join("stop");
    let (a, b) = (m1.dir.clone(), m2.dir.clone());
    let meta_dirs: Vec<PathBuf> = (1..=3)
        .map(|i| c.dir.path().join(format!("meta.{i}")))
        .collect();
    let cli = {
        let meta = meta.clone();
        move |args: &[&str]| -> Result<String> {
            run_cmd(
                Command::new(cairn_bin())
                    .args(args)
                    .env("CAIRN_META", &meta),
            )
        }
    };

    bounded(1500, move || {
        let bytes = make_reference(&ref_dir, seed, 1500, 40)?;
        let tree = a.join("tree");
        fs::create_dir(&tree)?;
        run_cmd(
            Command::new("cp")
                .arg("-r")
                .arg(format!("{}/.", ref_dir.display()))
                .arg(&tree),
        )?;
        let bad = compare_tree(&ref_dir, &b.join("tree"), "before the move, mount 2")?;
        ensure!(bad.is_empty(), "before any move: {bad:?}");
        let epoch0 = rt.block_on(cluster.refresh_map())?.epoch;
        let meta0 = dir_bytes(&meta_dirs[0]);
        eprintln!(
            "seed {seed}: {} files, {bytes} bytes; epoch {epoch0}; metadata replica {meta0} bytes",
            files_below(&ref_dir)?.len()
        );

        let load = |mode: &str, mount: &Path, s: u64| -> Result<Kid> {
            spawn(
                Command::new("python3")
                    .arg(script())
                    .arg(mode)
                    .arg(mount.join("tree"))
                    .arg(&ref_dir)
                    .arg(&stop)
                    .arg(s.to_string()),
            )
        };
        let writer = load("writer", &a, seed)?;
        let readers = [load("reader", &b, seed + 1)?, load("reader", &a, seed + 2)?];

        let started = Instant::now();
        cli(&["fs", "pin", "/tree", "fast"])?;
        let fg = spawn(
            Command::new(cairn_bin())
                .args(["fs", "migrate", "--grace-secs", "31"])
                .env("CAIRN_META", &meta),
        )?;
        // Once a tenth of the files moved: pin a subdirectory back to the default pool, and a
        // few seconds later unpin it (its files follow /tree's pin again).
        let want = files_below(&ref_dir)?.len() / 10;
        let start = Instant::now();
        while file_inos_in(&rt, &cluster, "fast")?.len() < want {
            ensure!(
                start.elapsed() < Duration::from_secs(300),
                "a tenth of the files did not move within 300 s"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        cli(&["fs", "pin", "/tree/d1", "default"])?;
        std::thread::sleep(Duration::from_secs(4));
        cli(&["fs", "unpin", "/tree/d1"])?;

        let (ok, out) = fg.wait_output(900)?;
        let mut errors = Vec::new();
        if !ok {
            errors.push(format!("cairn fs migrate failed: {out}"));
        }
        // The gateway (or this) finishes what the unpin queued.
        let (ok, out) = spawn(
            Command::new(cairn_bin())
                .args(["fs", "migrate", "--grace-secs", "31"])
                .env("CAIRN_META", &meta),
        )?
        .wait_output(900)?;
        if !ok {
            errors.push(format!("the second cairn fs migrate failed: {out}"));
        }
        let took = started.elapsed();
        fs::write(&stop, b"")?;
        let (ok, out) = writer.wait_output(120)?;
        if !ok {
            errors.push(format!("writer: {out}"));
        }
        eprintln!("seed {seed}: writer: {}", out.trim());
        for r in readers {
            let (ok, out) = r.wait_output(120)?;
            if !ok {
                errors.push(format!("reader: {out}"));
            }
            eprintln!("seed {seed}: reader: {}", out.lines().last().unwrap_or(""));
        }

        // Where the data is.
        let left = file_inos_in(&rt, &cluster, "default")?;
        if !left.is_empty() {
            errors.push(format!(
                "{} files still have objects in the default pool",
                left.len()
            ));
        }
        let map = rt.block_on(cluster.refresh_map())?;
        if !map.moving.is_empty() {
            errors.push(format!("{} moves left in the map", map.moving.len()));
        }
        let epochs = map.epoch - epoch0;
        let meta1 = dir_bytes(&meta_dirs[0]);
        eprintln!(
            "seed {seed}: migration took {took:?}, {epochs} map epochs; metadata replica \
             {meta0} -> {meta1} bytes"
        );
        // A file move costs no epoch of its own: a few per batch of files.
        let files = files_below(&ref_dir)?.len() as u64;
        if epochs > files / 20 {
            errors.push(format!("{epochs} map epochs for moving {files} files"));
        }

        // Every byte, through both mounts, S3 and NFS.
        errors.extend(compare_tree(&ref_dir, &a.join("tree"), "mount 1")?);
        errors.extend(compare_tree(&ref_dir, &b.join("tree"), "mount 2")?);
        let (ok, out) = spawn(
            Command::new("python3")
                .arg(script())
                .args(["s3verify", "tree"])
                .arg(&ref_dir)
                .env("CAIRN_S3_ENDPOINT", format!("http://127.0.0.1:{s3_port}"))
                .env("CAIRN_S3_AK", &admin.access_key)
                .env("CAIRN_S3_SK", &admin.secret),
        )?
        .wait_output(600)?;
        if !ok {
            errors.push(format!("S3: {out}"));
        }
        let list = files_below(&ref_dir)?
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let nfs = format!(
            "while read -r f; do \
               nfs-cat \"nfs://127.0.0.1/tree/$f?version=3&nfsport={nfs_port}&mountport={nfs_port}\" \
                 | cmp -s - \"{}/$f\" || echo \"NFS MISMATCH $f\"; \
             done",
            ref_dir.display()
        );
        let list_file = ref_dir.with_extension("list");
        fs::write(&list_file, list)?;
        let out = run_cmd(
            Command::new("bash")
                .arg("-c")
                .arg(format!("{nfs} < {}", list_file.display())),
        )?;
        errors.extend(out.lines().map(str::to_string));
        ensure!(
            errors.is_empty(),
            "seed {seed}: {} problems:\n{}",
            errors.len(),
            errors[..errors.len().min(40)].join("\n")
        );
        Ok(())
    })
}

#[test]
fn two_migrators_pins_and_writers_lose_no_byte() {
    let seeds = std::env::var("CAIRN_MIGRATE_SEEDS").unwrap_or_else(|_| "1,2".into());
    for s in seeds.split(',').filter(|s| !s.is_empty()) {
        let seed: u64 = s.trim().parse().expect("CAIRN_MIGRATE_SEEDS: numbers");
        run_seed(seed).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
    }
}
