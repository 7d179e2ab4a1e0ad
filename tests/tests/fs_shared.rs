//! Two FUSE mounts of one cluster: close-to-open coherence, advisory locks across mounts
//! (`flock` from util-linux and `fcntl` through python3 as the contenders), atomic rename under
//! concurrent readers, and real tools (git clone + status, tar, cp -a, rsync).

use anyhow::{ensure, Context, Result};
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

/// Holds byte `argv[2]` of `argv[1]` (F_SETLKW), says `held`, and on a line from stdin asks
/// for byte `argv[3]` the same way: prints `granted` or the errno name, and the seconds it
/// took; then waits for stdin to close. With `argv[4]` = `alarm`, a SIGALRM 2 s into the second
/// request interrupts it (the handler raises, so Python does not retry the call).
const LOCKER: &str = r#"
import errno, fcntl, os, signal, sys, time
class Alarm(Exception):
    pass
def on_alarm(signum, frame):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
if sys.argv[2] != "-":
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[2]))
print("held", flush=True)
sys.stdin.readline()
t = time.time()
if len(sys.argv) > 4:
    signal.alarm(2)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[3]))
    r = "granted"
except Alarm:
    r = "EINTR"
except OSError as e:
    r = errno.errorcode.get(e.errno, str(e.errno))
signal.alarm(0)
print(r, round(time.time() - t, 2), flush=True)
sys.stdin.read()
"#;

struct Locker {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Locker {
    fn start(file: &Path, hold: &str, want: &str, alarm: bool) -> Result<Locker> {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(LOCKER).arg(file).arg(hold).arg(want);
        if alarm {
            cmd.arg("alarm");
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut l = Locker { child, out };
        ensure!(l.line()? == "held", "locker did not take its first lock");
        Ok(l)
    }

    fn line(&mut self) -> Result<String> {
        use std::io::BufRead;
        let mut s = String::new();
        self.out.read_line(&mut s)?;
        Ok(s.trim().to_string())
    }

    /// Make the second request.
    fn go(&mut self) -> Result<()> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// The second request's outcome and how long it took.
    fn outcome(&mut self) -> Result<(String, f64)> {
        let l = self.line()?;
        let (r, secs) = l
            .split_once(' ')
            .with_context(|| format!("locker said {l:?}"))?;
        Ok((r.to_string(), secs.parse()?))
    }

    /// Close stdin (the locker exits, its locks go with its descriptor) and wait for the exit.
    fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        wait_exit(&mut self.child, 20)
    }
}

/// Wait for `child` to exit; fail naming its state (D: stuck in the kernel) if it does not.
fn wait_exit(child: &mut std::process::Child, secs: u64) -> Result<()> {
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            let _ = child.kill();
            anyhow::bail!(
                "process {} still there after {secs} s, state {state:?}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn blocking_locks_detect_deadlocks_and_end_on_signals() {
    let _s = serial();
    let (_rt, _c, a, b) = two_mounts(&[]);
    let (ra, rb) = (a.dir.clone(), b.dir.clone());
    bounded(180, move || {
        // A (on mount a) holds byte 0 and waits for byte 1; B (on mount b) holds byte 1 and
        // asks for byte 0: B gets EDEADLK at once, as on a local file system, and once B is
        // gone A gets its lock.
        fs::write(ra.join("dl"), b"0123456789")?;
        let mut pa = Locker::start(&ra.join("dl"), "0", "1", false)?;
        let mut pb = Locker::start(&rb.join("dl"), "1", "0", false)?;
        pa.go()?;
        std::thread::sleep(Duration::from_millis(500));
        pb.go()?;
        let (r, secs) = pb.outcome()?;
        eprintln!("deadlock answered {r} after {secs} s");
        // Python names errno 35 EDEADLOCK, its other name.
        ensure!(
            r == "EDEADLK" || r == "EDEADLOCK",
            "the second waiter got {r}, not EDEADLK"
        );
        // Generous for a loaded machine: the answer is one metadata round trip.
        ensure!(secs < 3.0, "EDEADLK took {secs} s");
        pb.finish()?;
        let (r, _) = pa.outcome()?;
        ensure!(
            r == "granted",
            "the first waiter got {r} once the other left"
        );
        pa.finish()?;

        // A blocked F_SETLKW ends with EINTR when a signal comes (alarm at 2 s).
        let holder = Locker::start(&rb.join("dl"), "5", "9", false)?;
        let mut w = Locker::start(&ra.join("dl"), "-", "5", true)?;
        w.go()?;
        let (r, secs) = w.outcome()?;
        eprintln!("interrupted wait answered {r} after {secs} s");
        ensure!(r == "EINTR", "an interrupted F_SETLKW got {r}");
        ensure!(secs < 10.0, "EINTR only after {secs} s");
        w.finish()?;
        // A waiter killed with SIGKILL dies (it is not left in state D).
        let mut k = Locker::start(&ra.join("dl"), "-", "5", false)?;
        k.go()?;
        std::thread::sleep(Duration::from_millis(500));
        ensure!(k.child.try_wait()?.is_none(), "the waiter did not wait");
        k.child.kill()?;
        wait_exit(&mut k.child, 10)?;
        // The interrupted and killed waiters left nothing behind: once the holder goes, the
        // byte is free for a non-blocking request.
        holder.finish()?;
        let got = fcntl_try(&ra.join("dl"), 5, 1)?;
        ensure!(
            got == "locked",
            "byte 5 still taken after every holder and waiter left: {got}"
        );
        Ok(())
    })
    .expect("deadlock and signals");
}
