//! `cairn fs pin`: files created below a pinned directory keep their data in its pool (checked
//! on the OSDs of that pool, not just in the namespace), files made before stay where they are,
//! and bad requests get clear errors.

use anyhow::{ensure, Result};
use cairn_proto::{Oid, PieceKind};
use cairn_tests::{bounded, field, serial, start_fs_cluster, ClusterOpts};
use std::fs;

#[test]
fn pinned_directories_place_new_files_in_their_pool() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    c.cli(&["pool", "create", "fast", "--size", "1", "--min-size", "1"])
        .expect("pool fast");
    let m = c.mount("m", &[]).expect("mount");
    let root = m.dir.clone();
    let cli = {
        let meta = c.meta_addrs.join(",");
        move |args: &[&str]| -> Result<String> {
            let mut full = args.to_vec();
            full.extend_from_slice(&["--meta", meta.as_str()]);
            cairn_tests::run_cmd(std::process::Command::new(cairn_tests::cairn_bin()).args(&full))
        }
    };
    let cluster = rt.block_on(c.client()).expect("client");
    bounded(180, move || {
        fs::create_dir_all(root.join("hot/sub-before"))?;
        fs::write(root.join("hot/before.bin"), vec![1u8; 100_000])?;
        let out = cli(&["fs", "pin", "/hot", "fast"])?;
        ensure!(out.contains("pool fast"), "{out}");
        ensure!(field(&cli(&["fs", "stat", "/hot"])?, "pool") == "fast");
        // New files below it, also in subdirectories old and new, go to `fast`.
        fs::create_dir_all(root.join("hot/sub-after/deeper"))?;
        for p in [
            "hot/after.bin",
            "hot/sub-before/x.bin",
            "hot/sub-after/deeper/y.bin",
        ] {
            fs::write(root.join(p), vec![7u8; 200_000])?;
            let st = cli(&["fs", "stat", &format!("/{p}")])?;
            ensure!(field(&st, "pool") == "fast", "{p}: {st}");
        }
        // A file made before the pin keeps its pool.
        ensure!(field(&cli(&["fs", "stat", "/hot/before.bin"])?, "pool") == "default");
        // The data really is in the pool's objects.
        let ino: u64 = field(&cli(&["fs", "stat", "/hot/after.bin"])?, "inode").parse()?;
        let rt = tokio::runtime::Runtime::new()?;
        let (fast, default) = rt.block_on(async {
            let fast = cluster.pool_io("fast").await?;
            let default = cluster.pool_io("default").await?;
            anyhow::Ok((fast, default))
        })?;
        let oid = Oid::for_piece(PieceKind::File, ino, 0);
        let in_fast = rt.block_on(fast.read(oid, 0, 200_000))?;
        ensure!(
            in_fast.len() == 200_000 && in_fast.iter().all(|&b| b == 7),
            "data not in pool fast"
        );
        ensure!(
            rt.block_on(default.stat(oid)).is_err(),
            "data also in the default pool"
        );
        // Unpinning: new files inherit again.
        cli(&["fs", "unpin", "/hot"])?;
        fs::write(root.join("hot/later.bin"), b"x")?;
        ensure!(field(&cli(&["fs", "stat", "/hot/later.bin"])?, "pool") == "default");
        // Errors: a file, an unknown pool, a relative path.
        for bad in [
            vec!["fs", "pin", "/hot/after.bin", "fast"],
            vec!["fs", "pin", "/hot", "nosuchpool"],
            vec!["fs", "pin", "hot", "fast"],
            vec!["fs", "stat", "/no/such/path"],
        ] {
            ensure!(cli(&bad).is_err(), "{bad:?} succeeded");
        }
        Ok(())
    })
    .expect("pinning");
}
