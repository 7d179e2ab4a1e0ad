//! The FUSE mount's write-behind under the rules it must keep: what a write buffered, the writing
//! mount sees at once (size, truncate, read back); fsync and `O_SYNC`/`O_DIRECT` put data and
//! size in the cluster before they return (checked with a client that bypasses the mount);
//! another mount sees a closed file whole; random overlapping writes through a small buffer land
//! in order; a deferred write that fails (the OSDs are full) fails the fsync or close; and the
//! mount's memory stays bounded by its buffer cap.

use anyhow::{ensure, Context, Result};
use cairn_client::FsClient;
use cairn_proto::fs::InodeAttr;
use cairn_tests::{bounded, run_cmd, serial, start_fs_cluster, ClusterOpts};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command;

fn python(script: &str, args: &[&str]) -> Result<String> {
    run_cmd(Command::new("python3").arg("-c").arg(script).args(args))
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
        .collect()
}

/// Size and bytes of `/name` as the cluster has them, read around any mount.
fn in_cluster(rt: &tokio::runtime::Runtime, fs: &FsClient, name: &str) -> Result<(u64, Vec<u8>)> {
    rt.block_on(async {
        let attr = fs.resolve(&format!("/{name}"), true).await?;
        let data = fs.read(&attr, 0, attr.size).await?;
        Ok((attr.size, data.to_vec()))
    })
}

#[test]
fn buffered_writes_keep_posix_and_cluster_rules() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &[]).expect("mount");
    let n = c.mount("n", &[]).expect("second mount");
    let fs = FsClient::new(rt.block_on(c.client()).expect("client"));
    let (root, other) = (m.dir.clone(), n.dir.clone());
    bounded(240, move || {
        // The writing mount sees buffered writes: size, read back, truncate down and up.
        let p = root.join("buffered");
        let data = pattern(9 * 1024 * 1024 + 77, 1);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)?;
        f.write_all(&data)?;
        ensure!(
            f.metadata()?.len() == data.len() as u64,
            "fstat after writes"
        );
        ensure!(
            fs::metadata(&p)?.len() == data.len() as u64,
            "stat after writes"
        );
        let mut back = vec![0u8; 1 << 20];
        f.read_exact_at(&mut back, 4 << 20)?;
        ensure!(back == data[4 << 20..5 << 20], "read back before close");
        f.write_all_at(b"tail", 20 << 20)?;
        f.set_len(3 * 1024 * 1024 + 5)?;
        ensure!(f.metadata()?.len() == 3 * 1024 * 1024 + 5, "truncate down");
        f.write_all_at(b"XY", 6 << 20)?;
        ensure!(f.metadata()?.len() == (6 << 20) + 2, "write after truncate");
        drop(f);
        let mut want = data[..3 * 1024 * 1024 + 5].to_vec();
        want.resize(6 << 20, 0);
        want.extend_from_slice(b"XY");
        ensure!(fs::read(&p)? == want, "contents after truncate and rewrite");
        ensure!(
            fs::read(other.join("buffered"))? == want,
            "other mount after close"
        );

        // fsync puts data and size in the cluster while the file stays open.
        let data = pattern(5 * 1024 * 1024 + 3, 2);
        let mut f = File::create(root.join("synced"))?;
        f.write_all(&data)?;
        f.sync_all()?;
        let (size, got) = in_cluster(&rt, &fs, "synced")?;
        ensure!(
            size == data.len() as u64 && got == data,
            "fsync'ed data not in the cluster"
        );
        drop(f);

        // O_SYNC and O_DIRECT writes go through before write returns.
        for (name, flags) in [("osync", libc::O_SYNC), ("odirect", libc::O_DIRECT)] {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .custom_flags(flags)
                .open(root.join(name))?;
            let data = pattern(1 << 20, 3);
            f.write_all(&data)?;
            // The bytes are on the OSDs (read past whatever size the namespace has yet).
            let attr = rt.block_on(fs.resolve(&format!("/{name}"), true))?;
            let len = data.len() as u64;
            let whole = InodeAttr {
                size: len,
                ..attr.clone()
            };
            let raw = rt.block_on(fs.read(&whole, 0, len))?;
            ensure!(
                raw == data,
                "{name}: data not on the OSDs when write returned"
            );
            // O_SYNC commits the size too; for O_DIRECT it follows at close, as for any write.
            ensure!(
                flags != libc::O_SYNC || attr.size == len,
                "{name}: size not committed"
            );
        }

        // Close-to-open across mounts with sizes that do and do not change, many times.
        for round in 0..6u32 {
            let len = (3 << 20) + (round as usize % 2) * 1_234_567;
            let data = pattern(len, 10 + round);
            let (w, r) = if round % 2 == 0 {
                (&root, &other)
            } else {
                (&other, &root)
            };
            let mut f = File::create(w.join("ping"))?;
            for part in data.chunks(100_000) {
                f.write_all(part)?;
            }
            drop(f);
            ensure!(
                fs::read(r.join("ping"))? == data,
                "round {round}: stale read"
            );
        }
        Ok(())
    })
    .expect("write-behind rules");
}

#[test]
fn random_overlapping_writes_through_a_small_buffer_land_in_order() {
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c
        .mount(
            "m",
            &["--write-behind-mib", "2", "--write-behind-age-ms", "50"],
        )
        .expect("mount");
    let root = m.dir.clone();
    let model = c.dir.path().join("model");
    bounded(240, move || {
        // Every write goes to the mount and to a local model file; reads compare along the way.
        let out = python(
            r#"
import os, random, sys
mnt, model = sys.argv[1], sys.argv[2]
rnd = random.Random(42)
a = os.open(mnt, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
b = os.open(model, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
span = 12 << 20
for i in range(1500):
    off = rnd.randrange(span)
    n = rnd.choice([1, 100, 4096, 65536, 300000, 1 << 20])
    buf = bytes([rnd.randrange(256)]) * n
    os.pwrite(a, buf, off); os.pwrite(b, buf, off)
    if i % 97 == 0:
        o = rnd.randrange(span); k = rnd.randrange(1, 2 << 20)
        if os.pread(a, k, o) != os.pread(b, k, o):
            print("mismatch at", i); sys.exit(1)
    if i % 400 == 399:
        os.fsync(a)
        if os.fstat(a).st_size != os.fstat(b).st_size:
            print("size mismatch at", i); sys.exit(1)
os.close(a); os.close(b)
print("ok")
"#,
            &[
                root.join("rand").to_str().context("path")?,
                model.to_str().context("path")?,
            ],
        )?;
        ensure!(out.trim() == "ok", "{out}");
        ensure!(
            fs::read(root.join("rand"))? == fs::read(&model)?,
            "final contents differ"
        );
        Ok(())
    })
    .expect("random writes");
}

#[test]
fn a_failed_deferred_write_fails_fsync_or_close() {
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts {
        osd_capacity: 48 << 20,
        ..ClusterOpts::default()
    })
    .expect("cluster");
    let m = c.mount("m", &[]).expect("mount");
    let root = m.dir.clone();
    bounded(240, move || {
        // 96 MiB into OSDs of 48 MiB: the writes are buffered and answered; the OSDs refuse
        // them later. The errno must reach the application through fsync, or through close.
        let script = r#"
import os, sys
p, how = sys.argv[1], sys.argv[2]
fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
buf = b"z" * (1 << 20)
res = []
try:
    for i in range(96):
        os.write(fd, buf)
    res.append("writes ok")
except OSError as e:
    res.append(f"write {e.errno}")
if how == "fsync":
    try:
        os.fsync(fd); res.append("fsync ok")
    except OSError as e:
        res.append(f"fsync {e.errno}")
try:
    os.close(fd); res.append("close ok")
except OSError as e:
    res.append(f"close {e.errno}")
print(", ".join(res))
"#;
        let enospc = libc::ENOSPC.to_string();
        let out = python(
            script,
            &[root.join("f1").to_str().context("path")?, "fsync"],
        )?;
        eprintln!("fsync case: {out}");
        ensure!(
            out.contains(&format!("write {enospc}")) || out.contains(&format!("fsync {enospc}")),
            "fsync: {out}"
        );
        let out = python(
            script,
            &[root.join("f2").to_str().context("path")?, "close"],
        )?;
        eprintln!("close case: {out}");
        ensure!(
            out.contains(&format!("write {enospc}")) || out.contains(&format!("close {enospc}")),
            "close: {out}"
        );
        Ok(())
    })
    .expect("errors of deferred writes");
}

#[test]
fn a_paused_osd_delays_buffered_writes_but_fails_none() {
    let _s = serial();
    // The paused OSD is never marked down (no failover): writes must wait for it.
    let (rt, c) = start_fs_cluster(ClusterOpts {
        osd_down_after_ms: 300_000,
        ..ClusterOpts::default()
    })
    .expect("cluster");
    // One cluster call gives up after 3 s here, so the 30 s pause outlasts many of them: only
    // the mount's own retries of its buffered writes keep them.
    let m = c.mount("m", &["--op-deadline-ms", "3000"]).expect("mount");
    let root = m.dir.clone();
    let fs = FsClient::new(rt.block_on(c.client()).expect("client"));
    let osd = c.osds[1].pid().expect("osd pid");
    let data = pattern(24 << 20, 7);
    let want = data.clone();
    cairn_tests::send_signal(osd, libc::SIGSTOP);
    let paused = std::time::Instant::now();
    let r = bounded(240, move || {
        let resume = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            cairn_tests::send_signal(osd, libc::SIGCONT);
        });
        let mut f = File::create(root.join("paused"))?;
        f.write_all(&data)?;
        // Buffered: answered at once. fsync waits for the OSD to come back, then succeeds.
        f.sync_all().context("fsync after the OSD came back")?;
        drop(f);
        resume.join().expect("resume thread");
        Ok(())
    });
    // Never leave the OSD stopped, whatever happened.
    cairn_tests::send_signal(osd, libc::SIGCONT);
    if let Err(e) = r {
        panic!(
            "writes through a paused OSD: {e:#}\nmount:\n{}\ncluster:\n{}",
            m.daemon.log_tail(),
            c.logs()
        );
    }
    let waited = paused.elapsed();
    eprintln!("fsync returned {waited:?} after the pause began");
    assert!(
        waited.as_secs() >= 29,
        "fsync did not wait for the paused OSD"
    );
    let (size, got) = in_cluster(&rt, &fs, "paused").expect("read back");
    assert_eq!(size, want.len() as u64);
    assert!(got == want, "data read back differs");
    let log = m.daemon.log();
    let retried = log.contains("deferred write delayed; retrying");
    let failed = log.contains("deferred write failed");
    assert!(
        retried && !failed,
        "the mount did not retry (or gave up):\n{}",
        m.daemon.log_tail()
    );
}

/// Peak resident memory of a process in KiB.
fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    line.split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()
        .context("VmHWM number")
}

#[test]
fn the_buffers_stay_within_their_cap() {
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &["--write-behind-mib", "8"]).expect("mount");
    let pid = m.daemon.pid().expect("mount pid");
    let root = m.dir.clone();
    bounded(240, move || {
        let before = vm_hwm_kib(pid)?;
        // 256 MiB without fsync from four writers at once: with nothing bounding the buffers
        // the mount would hold most of it.
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let p = root.join(format!("w{i}"));
                std::thread::spawn(move || -> Result<()> {
                    let mut f = File::create(&p)?;
                    let block = pattern(1 << 20, i);
                    for _ in 0..64 {
                        f.write_all(&block)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer")?;
        }
        let grew = vm_hwm_kib(pid)?.saturating_sub(before);
        ensure!(
            grew < 128 * 1024,
            "the mount grew by {grew} KiB writing 256 MiB with an 8 MiB buffer cap"
        );
        for i in 0..4 {
            let got = fs::read(root.join(format!("w{i}")))?;
            ensure!(got.len() == 64 << 20, "w{i}: {} bytes", got.len());
            ensure!(got[..1 << 20] == pattern(1 << 20, i), "w{i}: wrong data");
        }
        Ok(())
    })
    .expect("bounded buffers");
}
