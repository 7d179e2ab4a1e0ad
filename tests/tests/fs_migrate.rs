//! Moving file data after `cairn fs pin`: existing files below a pinned directory end up with
//! their data in the pool's objects (and none left in the old pool), byte for byte the same,
//! while other mounts keep reading and writing them; a migrator killed mid-copy is resumed, and
//! the OSDs hold writers off the old objects until the copy is done.

use anyhow::{ensure, Context, Result};
use cairn_client::Cluster;
use cairn_proto::map::MovePhase;
use cairn_proto::PieceKind;
use cairn_tests::{bounded, cairn_bin, field, pattern, serial, start_fs_cluster, ClusterOpts};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many objects of file `ino` pool `pool` holds.
fn objects_in(rt: &tokio::runtime::Runtime, c: &Cluster, pool: &str, ino: u64) -> Result<usize> {
    rt.block_on(async {
        let io = c.pool_io(pool).await?;
        let all = io.list().await?;
        Ok(all
            .iter()
            .filter(|(o, _)| {
                o.piece()
                    .is_some_and(|(k, i, _)| k == PieceKind::File && i == ino)
            })
            .count())
    })
}

fn read_all(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).with_context(|| p.display().to_string())
}

#[test]
fn pinned_data_moves_under_readers_and_writers_and_survives_a_killed_migrator() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    c.cli(&["pool", "create", "fast", "--size", "1", "--min-size", "1"])
        .expect("pool fast");
    let m1 = c.mount("m1", &[]).expect("mount m1");
    let m2 = c.mount("m2", &[]).expect("mount m2");
    let (a, b) = (m1.dir.clone(), m2.dir.clone());
    let meta = c.meta_addrs.join(",");
    let cli = {
        let meta = meta.clone();
        move |args: &[&str]| -> Result<String> {
            cairn_tests::run_cmd(
                Command::new(cairn_bin())
                    .args(args)
                    .env("CAIRN_META", &meta),
            )
        }
    };
    let cluster = rt.block_on(c.client()).expect("client");
    bounded(600, move || {
        let rt = tokio::runtime::Runtime::new()?;
        // Files of every shape below /hot, and some that must stay where they are.
        fs::create_dir_all(a.join("hot/sub"))?;
        let small = pattern(1000, 1);
        fs::write(a.join("hot/small.txt"), &small)?;
        let mut big = pattern(32 << 20, 2);
        fs::write(a.join("hot/big.bin"), &big)?;
        let sparse_tail = pattern(5000, 3);
        {
            let f = fs::File::create(a.join("hot/sub/sparse.bin"))?;
            f.write_all_at(&sparse_tail, 9 << 20)?;
        }
        fs::write(a.join("hot/empty"), b"")?;
        fs::write(a.join("hot/linked"), b"two names")?;
        fs::hard_link(a.join("hot/linked"), a.join("outside-link"))?;
        fs::write(a.join("cold.bin"), b"not pinned")?;
        std::os::unix::fs::symlink("small.txt", a.join("hot/ln"))?;
        let ino =
            |p: &str| -> Result<u64> { Ok(field(&cli(&["fs", "stat", p])?, "inode").parse()?) };
        let big_ino = ino("/hot/big.bin")?;
        ensure!(objects_in(&rt, &cluster, "default", big_ino)? == 8);

        // A reader on the other mount opens the big file before anything moves.
        let mut reader = fs::File::open(b.join("hot/big.bin"))?;
        let mut head = vec![0u8; 4096];
        reader.read_exact(&mut head)?;
        ensure!(head == big[..4096]);

        eprintln!("fs_migrate: pinned");
        let out = cli(&["fs", "pin", "/hot", "fast"])?;
        ensure!(out.contains("background"), "{out}");

        // A migrator that dies while the big file is being copied.
        let mut first = Command::new(cairn_bin())
            .args(["fs", "migrate", "--grace-secs", "20"])
            .env("CAIRN_META", &meta)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let start = Instant::now();
        loop {
            let map = rt.block_on(cluster.refresh_map())?;
            if map
                .moving
                .get(&big_ino)
                .is_some_and(|m| m.phase == MovePhase::Copying)
            {
                first.kill()?;
                first.wait()?;
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "the big file never started moving"
            );
            ensure!(first.try_wait()?.is_none(), "cairn fs migrate ended early");
            std::thread::sleep(Duration::from_millis(5));
        }
        let map = rt.block_on(cluster.refresh_map())?;
        ensure!(
            map.moving.get(&big_ino).map(|m| m.phase) == Some(MovePhase::Copying),
            "the migrator was killed after the copy: {:?}",
            map.moving.get(&big_ino)
        );

        // The move stays half done: a writer on the first mount is held off the old objects
        // once the OSDs know the map that shows the move (their next heartbeat, at most a
        // second; the dead migrator may not have sent them anything with it). A write before
        // that is safe anyway: the next migrator lists the objects again before copying.
        std::thread::sleep(Duration::from_millis(2500));
        // (A process of its own: a thread of this one blocked in FUSE can stall our forks.)
        let patch = vec![0xABu8; 4096];
        let patch_file = std::env::temp_dir().join(format!("cairn-patch-{}", std::process::id()));
        fs::write(&patch_file, &patch)?;
        let mut writer = Command::new("dd")
            .arg(format!("if={}", patch_file.display()))
            .arg(format!("of={}", a.join("hot/big.bin").display()))
            .args(["bs=4096", "seek=256", "conv=notrunc,fsync", "status=none"])
            .stdin(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(1500));
        ensure!(
            writer.try_wait()?.is_none(),
            "a write to a file being copied was acknowledged before the copy finished"
        );

        eprintln!("fs_migrate: killed the first migrator; writer blocked");
        // A new migrator takes over (once the dead one's lock session expires) and finishes.
        let second = Command::new(cairn_bin())
            .args(["fs", "migrate", "--grace-secs", "20"])
            .env("CAIRN_META", &meta)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let start = Instant::now();
        while field(&cli(&["fs", "stat", "/hot/big.bin"])?, "pool") != "fast" {
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "the second migrator did not switch the big file"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let start = Instant::now();
        let status = loop {
            if let Some(st) = writer.try_wait()? {
                break st;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "the writer is still held off after the switch"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = fs::remove_file(&patch_file);
        ensure!(status.success(), "dd into the moving file failed: {status}");
        big[1 << 20..(1 << 20) + 4096].copy_from_slice(&patch);

        eprintln!("fs_migrate: switched; writer done");
        // In the grace period: the reader opened before the move still reads every byte (its
        // old pool is refused by the OSDs and it follows the file), the patch included.
        reader.seek(SeekFrom::Start(0))?;
        let mut seen = Vec::new();
        reader.read_to_end(&mut seen)?;
        ensure!(seen.len() == big.len(), "reader saw {} bytes", seen.len());
        ensure!(
            seen == big,
            "the reader opened before the move read other bytes"
        );

        eprintln!("fs_migrate: reader checked");
        let mut second = second;
        let start = Instant::now();
        while second.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(180) {
                second.kill()?;
                let out = second.wait_with_output()?;
                anyhow::bail!(
                    "cairn fs migrate did not finish: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = second.wait_with_output()?;
        ensure!(
            out.status.success(),
            "cairn fs migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(report.contains("left in place"), "{report}");

        eprintln!("fs_migrate: second migrator done");
        // Where everything is now.
        for (p, pool) in [
            ("/hot/small.txt", "fast"),
            ("/hot/big.bin", "fast"),
            ("/hot/sub/sparse.bin", "fast"),
            ("/hot/empty", "fast"),
            ("/hot/linked", "default"),
            ("/cold.bin", "default"),
        ] {
            let st = cli(&["fs", "stat", p])?;
            ensure!(field(&st, "pool") == pool, "{p}: {st}");
            ensure!(!st.contains("moving"), "{p} still moving: {st}");
        }
        for p in ["/hot/small.txt", "/hot/big.bin", "/hot/sub/sparse.bin"] {
            let i = ino(p)?;
            ensure!(
                objects_in(&rt, &cluster, "default", i)? == 0,
                "{p}: old objects left"
            );
            ensure!(
                objects_in(&rt, &cluster, "fast", i)? > 0,
                "{p}: no objects in fast"
            );
        }
        ensure!(objects_in(&rt, &cluster, "fast", big_ino)? == 8);
        let map = rt.block_on(cluster.refresh_map())?;
        ensure!(map.moving.is_empty(), "moves left: {:?}", map.moving);

        // The same bytes through both mounts.
        for root in [&a, &b] {
            ensure!(read_all(&root.join("hot/small.txt"))? == small);
            ensure!(read_all(&root.join("hot/big.bin"))? == big);
            let sparse = read_all(&root.join("hot/sub/sparse.bin"))?;
            ensure!(sparse.len() == (9 << 20) + 5000);
            ensure!(sparse[..9 << 20].iter().all(|&x| x == 0));
            ensure!(sparse[9 << 20..] == sparse_tail[..]);
            ensure!(read_all(&root.join("hot/empty"))?.is_empty());
            ensure!(read_all(&root.join("hot/ln"))? == small);
            ensure!(read_all(&root.join("outside-link"))? == b"two names");
        }
        eprintln!("fs_migrate: checked placement and bytes");
        // Files keep working in their new pool: append, truncate, unlink.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(a.join("hot/small.txt"))?;
        f.write_all(b"more")?;
        f.sync_all()?;
        drop(f);
        ensure!(read_all(&b.join("hot/small.txt"))?.ends_with(b"more"));
        fs::OpenOptions::new()
            .write(true)
            .open(a.join("hot/big.bin"))?
            .set_len(5 << 20)?;
        ensure!(objects_in(&rt, &cluster, "fast", big_ino)? == 2);
        fs::remove_file(a.join("hot/big.bin"))?;
        drop(reader);
        let start = Instant::now();
        while objects_in(&rt, &cluster, "fast", big_ino)? != 0 {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "unlinked data stays"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Nothing left to do.
        let out = cli(&["fs", "migrate"])?;
        ensure!(out.contains("moved 0 files"), "{out}");
        Ok(())
    })
    .expect("migration");
}

#[test]
fn a_gateway_moves_pinned_data_in_the_background_and_back_after_unpin() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    c.cli(&["pool", "create", "fast", "--size", "1", "--min-size", "1"])
        .expect("pool fast");
    let m = c.mount("m", &[]).expect("mount");
    let (_gw, _) = c
        .s3_gateway("gw", &["--migrate-grace-secs", "1"])
        .expect("gateway");
    let root = m.dir.clone();
    let meta = c.meta_addrs.join(",");
    let cli = move |args: &[&str]| -> Result<String> {
        cairn_tests::run_cmd(
            Command::new(cairn_bin())
                .args(args)
                .env("CAIRN_META", &meta),
        )
    };
    let cluster = rt.block_on(c.client()).expect("client");
    bounded(300, move || {
        let rt = tokio::runtime::Runtime::new()?;
        fs::create_dir_all(root.join("d/e"))?;
        let files: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| {
                let dir = if i % 2 == 0 { "d" } else { "d/e" };
                (format!("{dir}/f{i}"), pattern(1000 + i * 7000, i as u64))
            })
            .collect();
        for (p, data) in &files {
            fs::write(root.join(p), data)?;
        }
        let wait_all_in = |pool: &str| -> Result<()> {
            let start = Instant::now();
            for (p, _) in &files {
                loop {
                    let st = cli(&["fs", "stat", &format!("/{p}")])?;
                    if field(&st, "pool") == pool && !st.contains("moving") {
                        break;
                    }
                    ensure!(
                        start.elapsed() < Duration::from_secs(120),
                        "{p} not moved to {pool}: {st}"
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            Ok(())
        };
        cli(&["fs", "pin", "/d", "fast"])?;
        wait_all_in("fast")?;
        for (p, data) in &files {
            ensure!(read_all(&root.join(p))? == *data, "{p} changed");
            let i: u64 = field(&cli(&["fs", "stat", &format!("/{p}")])?, "inode").parse()?;
            ensure!(
                objects_in(&rt, &cluster, "default", i)? == 0,
                "{p}: old objects left"
            );
        }
        // Unpinned, the files follow the pin of the parent again: the default pool.
        cli(&["fs", "unpin", "/d"])?;
        wait_all_in("default")?;
        for (p, data) in &files {
            ensure!(
                read_all(&root.join(p))? == *data,
                "{p} changed on the way back"
            );
            let i: u64 = field(&cli(&["fs", "stat", &format!("/{p}")])?, "inode").parse()?;
            ensure!(
                objects_in(&rt, &cluster, "fast", i)? == 0,
                "{p}: objects left in fast"
            );
        }
        Ok(())
    })
    .expect("background migration");
}
