//! The NFSv3 export (`cairn nfs`) checked with libnfs's `nfs-ls` and `nfs-cp` against a FUSE
//! mount of the same cluster: a file written over NFS reads back through FUSE and the other way
//! round. Fails (does not skip) when libnfs-utils or FUSE is missing.

use anyhow::ensure;
use cairn_tests::{bounded, run_cmd, serial, start_fs_cluster, ClusterOpts};
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn require_libnfs() {
    let found = Command::new("nfs-ls")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "nfs-ls is missing: NFS tests need libnfs-utils (apt-get install libnfs-utils)"
    );
}

/// A libnfs URL of `path` on the export (the MOUNT service shares the NFS port).
fn url(port: u16, path: &str) -> String {
    format!("nfs://127.0.0.1/{path}?version=3&nfsport={port}&mountport={port}")
}

#[test]
fn nfs_and_fuse_share_files() {
    require_libnfs();
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &[]).expect("mount");
    let (_nfs, port) = c.nfs_export().expect("nfs export");
    let root = m.dir.clone();
    let scratch = c.dir.path().join("scratch");
    bounded(240, move || {
        fs::create_dir_all(&scratch)?;
        // FUSE → NFS.
        fs::create_dir(root.join("dir"))?;
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 123u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        fs::write(root.join("dir/from-fuse.bin"), &data)?;
        let listing = run_cmd(Command::new("nfs-ls").arg(url(port, "dir")))?;
        ensure!(listing.contains("from-fuse.bin"), "nfs-ls: {listing}");
        ensure!(
            listing.contains(&data.len().to_string()),
            "size in nfs-ls: {listing}"
        );
        let got = scratch.join("got.bin");
        run_cmd(
            Command::new("nfs-cp")
                .arg(url(port, "dir/from-fuse.bin"))
                .arg(&got),
        )?;
        ensure!(
            fs::read(&got)? == data,
            "NFS read differs from what FUSE wrote"
        );

        // NFS → FUSE, at the top level and in a directory, then overwritten smaller.
        let up: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
        let local = scratch.join("up.bin");
        fs::write(&local, &up)?;
        run_cmd(
            Command::new("nfs-cp")
                .arg(&local)
                .arg(url(port, "/from-nfs.bin")),
        )?;
        run_cmd(
            Command::new("nfs-cp")
                .arg(&local)
                .arg(url(port, "dir/from-nfs.bin")),
        )?;
        let start = Instant::now();
        loop {
            let a = fs::read(root.join("from-nfs.bin")).unwrap_or_default();
            let b = fs::read(root.join("dir/from-nfs.bin")).unwrap_or_default();
            if a == up && b == up {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "FUSE reads {} and {} bytes of a {}-byte file written over NFS",
                a.len(),
                b.len(),
                up.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let top = run_cmd(Command::new("nfs-ls").arg(url(port, "")))?;
        ensure!(
            top.contains("from-nfs.bin") && top.contains("dir"),
            "nfs-ls /: {top}"
        );
        // A missing path is an error, not an empty file.
        let missing = Command::new("nfs-cp")
            .arg(url(port, "dir/none"))
            .arg(scratch.join("none"))
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        ensure!(!missing.success(), "nfs-cp of a missing file succeeded");
        Ok(())
    })
    .expect("nfs and fuse");
}
