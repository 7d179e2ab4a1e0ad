//! Faults under a FUSE mount: an OSD or the metadata leader killed with SIGKILL in the middle of
//! a copy (the copy goes on; everything fsync'ed before and after is there), and a mount killed
//! and remounted (the files it closed are whole, a clean SIGTERM unmounts).

use anyhow::{ensure, Result};
use cairn_tests::{bounded, is_mounted, run_cmd, serial, start_fs_cluster, ClusterOpts};
use std::fs::{self, File};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

fn md5(p: &std::path::Path) -> Result<String> {
    let out = run_cmd(Command::new("md5sum").arg(p))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Which daemon dies in the middle of the copy.
#[derive(Clone, Copy)]
enum Victim {
    Osd,
    MetaLeader,
}

#[test]
fn osd_killed_during_a_copy() {
    killed_during_a_copy(Victim::Osd);
}

#[test]
fn metadata_leader_killed_during_a_copy() {
    killed_during_a_copy(Victim::MetaLeader);
}

fn killed_during_a_copy(victim: Victim) {
    let _s = serial();
    let (rt, mut c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &[]).expect("mount");
    let root = m.dir.clone();
    let src = c.dir.path().join("src.bin");
    let mut f = File::create(&src).expect("src");
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for i in 0..200u32 {
        let mut b = block.clone();
        b[..4].copy_from_slice(&i.to_le_bytes());
        f.write_all(&b).expect("write src");
    }
    drop(f);
    // Something fsync'ed before the fault.
    let before: Vec<u8> = (0..3_000_000u32).map(|i| (i % 199) as u8).collect();
    {
        let mut f = File::create(root.join("before.bin")).expect("before");
        f.write_all(&before).expect("write before");
        f.sync_all().expect("fsync before");
    }
    let leader = rt.block_on(c.meta_leader_index()).expect("leader");
    let (src2, root2) = (src.clone(), root.clone());
    let copy = std::thread::spawn(move || {
        run_cmd(
            Command::new("dd")
                .arg(format!("if={}", src2.display()))
                .arg(format!("of={}", root2.join("copy.bin").display()))
                .args(["bs=1M", "conv=fsync"]),
        )
    });
    // Kill once the copy is under way: as soon as some of it reached the mount (at most 1.5 s).
    // A fixed wait stopped working when the write path got faster than the wait.
    let copied = root.join("copy.bin");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500)
        && fs::metadata(&copied).map_or(0, |m| m.len()) < 4 << 20
        && !copy.is_finished()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !copy.is_finished(),
        "the copy ended before the kill: the test would prove nothing"
    );
    match victim {
        Victim::Osd => c.osds[1].kill9(),
        Victim::MetaLeader => c.metas[leader].kill9(),
    }
    let r = bounded(300, move || {
        copy.join().expect("copy thread")?;
        ensure!(
            md5(&src)? == md5(&root.join("copy.bin"))?,
            "copy differs after the kill"
        );
        ensure!(
            fs::read(root.join("before.bin"))? == before,
            "fsync'ed data lost"
        );
        // The namespace still takes changes (a new leader serves them).
        let after = root.join("after.txt");
        fs::write(&after, b"after the kill")?;
        ensure!(fs::read(&after)? == b"after the kill");
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e:#}\n{}", c.logs());
    }
    match victim {
        Victim::Osd => c.osds[1].start().expect("restart osd"),
        Victim::MetaLeader => c.metas[leader].start().expect("restart metadata replica"),
    }
}

#[test]
fn mount_killed_and_remounted() {
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let mut m = c.mount("m", &[]).expect("mount");
    let data = vec![7u8; 2_500_000];
    {
        let mut f = File::create(m.path("closed.bin")).expect("create");
        f.write_all(&data).expect("write");
    }
    m.kill9();
    let dir = m.dir.clone();
    drop(m);
    let m = c.mount("m", &[]).expect("remount");
    let got = fs::read(m.path("closed.bin")).expect("read after remount");
    assert!(
        got == data,
        "a closed file lost data with its mount: {} bytes",
        got.len()
    );
    // SIGTERM unmounts cleanly.
    let mut m = m;
    m.daemon.stop();
    assert!(!is_mounted(&dir), "still mounted after SIGTERM");
}
