//! The purge queue under kills (issue 12): 1,000 small files are removed through a FUSE mount
//! while the metadata leader and then the mount itself die with SIGKILL; after both come back
//! and the rest are removed, the OSDs must hold no object of any removed file (the space comes
//! back, nothing leaks) and every live file must read back byte for byte.
//!
//! The mount runs with a 100 ms free grace, so its reaper is busy forgetting and purging while
//! the kills land, and a 2 s lock session, so the dead mount's orphans reach the purge queue
//! soon after it dies. An OSD is paused (SIGSTOP) for the second before the mount dies, so
//! deletes of removed files' objects are in flight when it does: before the purge queue, a
//! mount that had already told the namespace to forget those files (`Forget`) took the only
//! record of their objects with it.

use anyhow::{bail, ensure, Result};
use cairn_proto::PieceKind;
use cairn_tests::{bounded, pattern, send_signal, serial, start_fs_cluster, ClusterOpts};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Files removed under the kills.
const DOOMED: usize = 1000;
/// How long the OSDs may take to lose the removed files' objects once everything is back.
const PURGE_WAIT: Duration = Duration::from_secs(45);

const MOUNT_FLAGS: [&str; 4] = ["--lock-ttl-ms", "2000", "--free-grace-ms", "100"];

/// Live files: name → bytes. Sizes cover an empty file, a partial object, an object boundary
/// and files of several objects (the default chunk is 4 MiB).
fn live_files() -> BTreeMap<String, Vec<u8>> {
    [0usize, 1, 4096, 100_000, (4 << 20) + 3, 9 << 20]
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("live{i}"), pattern(len, 77 + i as u64)))
        .collect()
}

/// Make `n` files of 4 KiB in `dir` (one python process, so it takes seconds, not minutes);
/// returns their inode numbers by index.
fn make_doomed(dir: &Path, n: usize) -> Result<Vec<u64>> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             d, n = sys.argv[1], int(sys.argv[2])\n\
             for i in range(n):\n\
             \x20   p = f'{d}/f{i}'\n\
             \x20   fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)\n\
             \x20   os.write(fd, i.to_bytes(4, 'little') * 1024)\n\
             \x20   os.close(fd)\n\
             \x20   print(os.stat(p).st_ino)\n",
        )
        .arg(dir)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "making the files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inos: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse())
        .collect::<Result<_, _>>()?;
    ensure!(inos.len() == n, "made {} of {n} files", inos.len());
    Ok(inos)
}

/// Start removing `dir/f0..f{n}` in order in a child process that prints the index of each
/// removal done, and stops at the first error (the mount dying under it). ENOENT is not one:
/// an unlink whose answer was lost in the leader's failover is sent again by the client and
/// finds the file gone.
fn start_unlinking(dir: &Path, n: usize) -> Result<std::process::Child> {
    Ok(Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             d, n = sys.argv[1], int(sys.argv[2])\n\
             for i in range(n):\n\
             \x20   try:\n\
             \x20       os.unlink(f'{d}/f{i}')\n\
             \x20   except FileNotFoundError:\n\
             \x20       pass\n\
             \x20   except OSError as e:\n\
             \x20       print('error', i, e, flush=True)\n\
             \x20       sys.exit(0)\n\
             \x20   print(i, flush=True)\n",
        )
        .arg(dir)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?)
}

/// Inode numbers of the data objects in the `default` pool, with how many objects each has.
async fn file_objects(c: &cairn_client::Cluster) -> Result<BTreeMap<u64, usize>> {
    let io = c.pool_io("default").await?;
    let mut owners = BTreeMap::new();
    for (oid, _) in io.list().await? {
        if let Some((PieceKind::File, ino, _)) = oid.piece() {
            *owners.entry(ino).or_insert(0) += 1;
        }
    }
    Ok(owners)
}

#[test]
fn removed_files_leave_no_objects_through_kills_of_the_mount_and_the_metadata_leader() {
    let _s = serial();
    let started = Instant::now();
    let (rt, mut c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let mut m = c.mount("m", &MOUNT_FLAGS).expect("mount");
    let live = live_files();
    let mut live_inos = BTreeMap::new();
    for (name, data) in &live {
        let p = m.path(name);
        std::fs::write(&p, data).expect("write a live file");
        live_inos.insert(std::fs::metadata(&p).expect("stat").ino(), name.clone());
    }
    let doomed_dir = m.path("doomed");
    let inos = make_doomed(&doomed_dir, DOOMED).expect("make the files to remove");
    let doomed: BTreeSet<u64> = inos.iter().copied().collect();
    let before = rt
        .block_on(async { file_objects(&c.client().await?).await })
        .expect("list objects");
    let missing: Vec<u64> = doomed
        .iter()
        .chain(live_inos.keys())
        .filter(|i| !before.contains_key(i))
        .copied()
        .collect();
    // A file of 0 bytes has no object.
    ensure_only_empty(&missing, &live_inos, &live).expect("objects before the removals");
    let leader = rt.block_on(c.meta_leader_index()).expect("leader");

    // Remove them. A quarter of the way in an OSD pauses (SIGSTOP; every group has all three
    // OSDs): deletes of removed files' objects hang from then on, while removals (metadata
    // only) go on. A third of the way in the metadata leader dies, half way the mount does.
    let mut rm = start_unlinking(&doomed_dir, DOOMED).expect("start removing");
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (progress, out) = (progress.clone(), rm.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match line.trim().parse::<usize>() {
                    Ok(i) => progress.store(i + 1, Ordering::SeqCst),
                    Err(_) => eprintln!("remover: {line}"),
                }
            }
        })
    };
    wait_for_progress(&mut rm, &progress, DOOMED / 4).expect("removals under way");
    let osd = c.osds[1].pid().expect("osd pid");
    send_signal(osd, libc::SIGSTOP);
    let paused = Instant::now();
    let r = wait_for_progress(&mut rm, &progress, DOOMED / 3);
    if r.is_err() {
        send_signal(osd, libc::SIGCONT);
    }
    r.expect("removals go on while an OSD is paused");
    c.metas[leader].kill9();
    let r = wait_for_progress(&mut rm, &progress, DOOMED / 2);
    // Well past the free grace, so files removed since the pause are being purged.
    std::thread::sleep(Duration::from_millis(400).saturating_sub(paused.elapsed()));
    m.kill9();
    send_signal(osd, libc::SIGCONT);
    r.expect("removals go on after the leader died");
    let _ = rm.wait();
    let _ = reader.join();
    assert!(
        progress.load(Ordering::SeqCst) < DOOMED,
        "the removals ended before the mount died: the test would prove nothing"
    );
    eprintln!(
        "leader and mount killed; {} of {DOOMED} removed by then ({:?} in)",
        progress.load(Ordering::SeqCst),
        started.elapsed()
    );

    // Everything comes back; the rest are removed through a new mount.
    c.metas[leader]
        .start()
        .expect("restart the metadata replica");
    drop(m);
    let m = c.mount("m", &MOUNT_FLAGS).expect("mount again");
    let doomed_dir = m.path("doomed");
    let rest = bounded(120, move || -> Result<usize> {
        let mut n = 0;
        for i in 0..DOOMED {
            match std::fs::remove_file(doomed_dir.join(format!("f{i}"))) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("removing f{i} after the restart: {e}"),
            }
        }
        Ok(n)
    })
    .expect("remove the rest");
    eprintln!(
        "{rest} removed after the restart ({:?} in)",
        started.elapsed()
    );

    // No object of a removed file stays behind; every live file keeps all of its own.
    let r = rt.block_on(async {
        let cl = c.client().await?;
        let deadline = Instant::now() + PURGE_WAIT;
        loop {
            let owners = file_objects(&cl).await?;
            let left: Vec<u64> = owners
                .keys()
                .filter(|i| doomed.contains(i))
                .copied()
                .collect();
            for (ino, name) in &live_inos {
                let want = live[name].len().div_ceil(4 << 20);
                ensure!(
                    owners.get(ino).copied().unwrap_or(0) == want,
                    "live file {name} has {:?} objects, not {want}",
                    owners.get(ino)
                );
            }
            if left.is_empty() {
                return anyhow::Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} removed files still have objects {PURGE_WAIT:?} after the restart: {:?}...",
                    left.len(),
                    &left[..left.len().min(10)]
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    if let Err(e) = r {
        panic!(
            "{e:#}\n{}\n--- mount ---\n{}",
            c.logs(),
            m.daemon.log_tail()
        );
    }
    for (name, data) in &live {
        let got = std::fs::read(m.path(name)).expect("read a live file");
        assert!(
            got == *data,
            "live file {name} changed: {} bytes, {} expected",
            got.len(),
            data.len()
        );
    }
    eprintln!("purged and checked in {:?}", started.elapsed());
}

/// Of the files without objects, only empty live files may be.
fn ensure_only_empty(
    missing: &[u64],
    live_inos: &BTreeMap<u64, String>,
    live: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    for ino in missing {
        match live_inos.get(ino) {
            Some(name) if live[name].is_empty() => {}
            _ => bail!("file {ino} has no object before its removal"),
        }
    }
    Ok(())
}

/// Wait until the remover has removed `n` files; fail if it stops first or stalls.
fn wait_for_progress(rm: &mut std::process::Child, progress: &AtomicUsize, n: usize) -> Result<()> {
    let start = Instant::now();
    loop {
        let done = progress.load(Ordering::SeqCst);
        if done >= n {
            return Ok(());
        }
        if let Ok(Some(status)) = rm.try_wait() {
            bail!(
                "the remover stopped after {done} files ({status}): the kill would prove nothing"
            );
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the removals stalled at {done}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
