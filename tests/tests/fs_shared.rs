//! Two FUSE mounts of one cluster: close-to-open coherence, advisory locks across mounts
//! (`flock` from util-linux and `fcntl` through python3 as the contenders), atomic rename under
//! concurrent readers, and real tools (git clone + status, tar, cp -a, rsync).

use anyhow::{ensure, Result};
use cairn_tests::{bounded, run_cmd, serial, start_fs_cluster, ClusterOpts, Mounted};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Poll `f` until it holds or `secs` pass.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !f() {
        ensure!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn two_mounts(
    extra: &[&str],
) -> (
    tokio::runtime::Runtime,
    cairn_tests::ProcCluster,
    Mounted,
    Mounted,
) {
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let a = c.mount("a", extra).expect("mount a");
    let b = c.mount("b", extra).expect("mount b");
    (rt, c, a, b)
}

#[test]
fn two_mounts_see_each_others_changes() {
    let _s = serial();
    let (_rt, _c, a, b) = two_mounts(&[]);
    let (ra, rb) = (a.dir.clone(), b.dir.clone());
    bounded(120, move || {
        // Close-to-open: what one mount closed, the other reads whole on its next open, also
        // when the size does not change.
        for round in 0..5u8 {
            let len = 1000 + usize::from(round % 2) * 5000;
            let data = vec![b'a' + round; len];
            let (w, r) = if round % 2 == 0 {
                (&ra, &rb)
            } else {
                (&rb, &ra)
            };
            fs::write(w.join("shared"), &data)?;
            ensure!(
                fs::read(r.join("shared"))? == data,
                "round {round}: stale read"
            );
        }
        let data = vec![b'q'; 1000];
        fs::write(ra.join("same-size"), &data)?;
        ensure!(fs::read(rb.join("same-size"))? == data);
        let data = vec![b'r'; 1000];
        fs::write(ra.join("same-size"), &data)?;
        ensure!(
            fs::read(rb.join("same-size"))? == data,
            "same-size overwrite not seen"
        );
        // Names appear and go within the entry TTL.
        fs::create_dir(ra.join("dir"))?;
        fs::write(ra.join("dir/x"), b"x")?;
        eventually(5, "mkdir seen", || rb.join("dir/x").exists())?;
        fs::remove_file(rb.join("dir/x"))?;
        eventually(5, "unlink seen", || !ra.join("dir/x").exists())?;
        fs::rename(ra.join("dir"), ra.join("moved"))?;
        eventually(5, "rename seen", || {
            rb.join("moved").is_dir() && !rb.join("dir").exists()
        })?;
        Ok(())
    })
    .expect("coherence");
}

/// `flock -n FILE true` (exit 1 when the lock is held elsewhere).
fn flock_free(p: &Path) -> Result<bool> {
    let st = Command::new("flock")
        .arg("-n")
        .arg(p)
        .arg("true")
        .status()?;
    Ok(st.success())
}

const FCNTL_TRY: &str = "import fcntl,os,sys
fd=os.open(sys.argv[1],os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX|fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2])); print('locked')
except OSError as e:
    print('errno', e.errno)";

fn fcntl_try(p: &Path, start: u64, len: u64) -> Result<String> {
    let out = run_cmd(
        Command::new("python3")
            .args(["-c", FCNTL_TRY])
            .arg(p)
            .arg(start.to_string())
            .arg(len.to_string()),
    )?;
    Ok(out.trim().to_string())
}

#[test]
fn locks_hold_across_mounts() {
    let _s = serial();
    let (_rt, _c, a, mut b) = two_mounts(&["--lock-ttl-ms", "3000"]);
    let (ra, rb) = (a.dir.clone(), b.dir.clone());
    // flock: held on A, refused on B without waiting, granted to a waiter on B once A lets go.
    let r = bounded(120, {
        let (ra, rb) = (ra.clone(), rb.clone());
        move || {
            fs::write(ra.join("lk"), b"")?;
            let mut holder = Command::new("flock")
                .arg(ra.join("lk"))
                .args(["sleep", "3"])
                .spawn()?;
            eventually(10, "holder locks", || {
                !flock_free(&rb.join("lk")).unwrap_or(true)
            })?;
            ensure!(
                !flock_free(&rb.join("lk"))?,
                "flock -n on B got a lock A holds"
            );
            let t = Instant::now();
            run_cmd(Command::new("flock").arg(rb.join("lk")).arg("true"))?;
            ensure!(
                t.elapsed() > Duration::from_millis(500),
                "B did not wait for A"
            );
            holder.wait()?;
            ensure!(flock_free(&rb.join("lk"))?, "released lock still held");

            // fcntl byte ranges: A holds bytes 0..10 exclusively; B may lock 10.. but not 5..
            let script = "import fcntl,os,sys,time
fd=os.open(sys.argv[1],os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX|fcntl.LOCK_NB, 10, 0)
print('held', flush=True)
time.sleep(float(sys.argv[2]))";
            let mut holder = Command::new("python3")
                .args(["-c", script])
                .arg(ra.join("lk"))
                .arg("4")
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
                &mut line,
            )?;
            ensure!(line.trim() == "held", "holder: {line}");
            ensure!(fcntl_try(&rb.join("lk"), 5, 10)? == format!("errno {}", libc::EAGAIN));
            ensure!(fcntl_try(&rb.join("lk"), 10, 10)? == "locked");
            holder.wait()?;
            ensure!(
                fcntl_try(&rb.join("lk"), 0, 10)? == "locked",
                "released by exit"
            );

            // A lock of a mount that dies goes when its session expires (3 s here).
            // Its own process group, so the test can end flock and its `sleep` child together.
            let holder = Command::new("flock")
                .arg(rb.join("lk"))
                .args(["sleep", "600"])
                .process_group(0)
                .spawn()?;
            eventually(10, "B holds", || {
                !flock_free(&ra.join("lk")).unwrap_or(true)
            })?;
            Ok(holder)
        }
    });
    let mut holder = r.expect("locks");
    b.kill9();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", holder.id())])
        .status();
    let _ = holder.wait();
    bounded(60, move || {
        let t = Instant::now();
        eventually(30, "lock of a dead mount released", || {
            flock_free(&ra.join("lk")).unwrap_or(false)
        })?;
        eprintln!("lock of the killed mount released after {:?}", t.elapsed());
        Ok(())
    })
    .expect("dead mount's lock");
}

#[test]
fn rename_over_a_path_is_atomic_for_readers() {
    let _s = serial();
    let (_rt, _c, a, b) = two_mounts(&[]);
    let (ra, rb) = (a.dir.clone(), b.dir.clone());
    bounded(180, move || {
        let version = |i: u32| format!("version {i:04} ").repeat(300);
        fs::write(ra.join("cur"), version(0))?;
        eventually(5, "first version visible on B", || rb.join("cur").exists())?;
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = [ra.clone(), ra.clone(), rb.clone()]
            .into_iter()
            .map(|root| {
                let stop = stop.clone();
                std::thread::spawn(move || -> Result<u32> {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let got = fs::read_to_string(root.join("cur"))
                            .map_err(|e| anyhow::anyhow!("read of cur failed: {e}"))?;
                        let head = got.get(..13).unwrap_or_default().to_string();
                        ensure!(
                            got.len() == 13 * 300 && got == head.repeat(300),
                            "torn or mixed content ({} bytes, starts {head:?})",
                            got.len()
                        );
                        reads += 1;
                    }
                    Ok(reads)
                })
            })
            .collect();
        for i in 1..=60 {
            fs::write(ra.join(".cur.tmp"), version(i))?;
            fs::rename(ra.join(".cur.tmp"), ra.join("cur"))?;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let n = r.join().expect("reader thread")?;
            ensure!(n > 0, "a reader never read");
        }
        ensure!(fs::read_to_string(ra.join("cur"))? == version(60));
        Ok(())
    })
    .expect("atomic rename");
}

#[test]
fn git_tar_cp_and_rsync_work_on_the_mount() {
    let _s = serial();
    let (_rt, _c, a, b) = two_mounts(&[]);
    let (ra, rb) = (a.dir.clone(), b.dir.clone());
    bounded(600, move || {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
        // git: clone this repository, status is clean on both mounts, and a commit works.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        run_cmd(
            Command::new("git")
                .args(["clone", "-q", "--no-hardlinks"])
                .arg(&repo)
                .arg(ra.join("repo")),
        )?;
        for root in [&ra, &rb] {
            let st = run_cmd(
                Command::new("git")
                    .arg("-C")
                    .arg(root.join("repo"))
                    .args(["status", "--porcelain"]),
            )?;
            ensure!(st.is_empty(), "git status not clean:\n{st}");
        }
        run_cmd(
            Command::new("git")
                .arg("-C")
                .arg(ra.join("repo"))
                .args(["fsck", "--strict"]),
        )?;
        fs::write(ra.join("repo/NEWFILE"), b"new\n")?;
        run_cmd(
            Command::new("git")
                .arg("-C")
                .arg(ra.join("repo"))
                .args(["add", "NEWFILE"]),
        )?;
        run_cmd(Command::new("git").arg("-C").arg(ra.join("repo")).args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "x",
        ]))?;
        let log = run_cmd(Command::new("git").arg("-C").arg(rb.join("repo")).args([
            "log",
            "--oneline",
            "-1",
        ]))?;
        ensure!(log.contains(" x"), "commit not seen from B: {log}");

        // tar round trip: pack on A, unpack on B, compare with the source.
        let tarball = ra.join("proto.tar");
        run_cmd(
            Command::new("tar")
                .arg("cf")
                .arg(&tarball)
                .arg("-C")
                .arg(src.parent().unwrap())
                .arg("proto"),
        )?;
        fs::create_dir(rb.join("untar"))?;
        run_cmd(
            Command::new("tar")
                .arg("xf")
                .arg(rb.join("proto.tar"))
                .arg("-C")
                .arg(rb.join("untar")),
        )?;
        run_cmd(
            Command::new("diff")
                .arg("-r")
                .arg(&src)
                .arg(rb.join("untar/proto")),
        )?;

        // cp -a keeps modes and times; rsync -a finds nothing to do the second time.
        run_cmd(Command::new("cp").arg("-a").arg(&src).arg(ra.join("cpa")))?;
        run_cmd(Command::new("diff").arg("-r").arg(&src).arg(rb.join("cpa")))?;
        let m1 = fs::metadata(src.join("Cargo.toml"))?.modified()?;
        ensure!(
            fs::metadata(rb.join("cpa/Cargo.toml"))?.modified()? == m1,
            "cp -a times"
        );
        let rsync = Command::new("rsync")
            .arg("--version")
            .stdout(Stdio::null())
            .status();
        ensure!(
            rsync.is_ok(),
            "rsync is not installed (apt-get install rsync)"
        );
        let mut dst = ra.join("rs").display().to_string();
        dst.push('/');
        let from = format!("{}/", src.display());
        run_cmd(Command::new("rsync").args(["-a", &from, &dst]))?;
        let again = run_cmd(Command::new("rsync").args(["-ai", &from, &dst]))?;
        ensure!(
            again.trim().is_empty(),
            "rsync found changes the second time:\n{again}"
        );
        run_cmd(Command::new("diff").arg("-r").arg(&src).arg(rb.join("rs")))?;
        Ok(())
    })
    .expect("tools");
}
