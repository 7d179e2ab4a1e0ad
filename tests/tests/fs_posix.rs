//! POSIX operations through a real FUSE mount (`cairn mount`) of a multi-process cluster:
//! files, directories, links, attributes, xattrs, append, mmap, truncate, sparse files, large
//! directories, and the errno of every bad request. Fails (does not skip) without FUSE.

use anyhow::{ensure, Context, Result};
use cairn_client::FsClient;
use cairn_proto::fs::{FileKind, NsOp, ROOT_INO};
use cairn_proto::{Oid, PieceKind};
use cairn_tests::{bounded, run_cmd, serial, start_fs_cluster, ClusterOpts};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// Wait (up to 30 s) until objects `0..n` of file `ino` are gone; `what` names the file.
async fn objects_go(io: &cairn_client::PoolIo, ino: u64, n: u64, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = Vec::new();
        for i in 0..n {
            if io
                .stat(Oid::for_piece(PieceKind::File, ino, i))
                .await
                .is_ok()
            {
                left.push(i);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "objects of {what} remain: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn python(script: &str, args: &[&Path]) -> Result<String> {
    run_cmd(Command::new("python3").arg("-c").arg(script).args(args))
}

#[test]
fn files_directories_links_and_attributes() {
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &[]).expect("mount");
    let root = m.dir.clone();
    bounded(180, move || {
        // Directories and files.
        fs::create_dir_all(root.join("a/b/c"))?;
        fs::write(root.join("a/f"), b"hello world")?;
        assert_eq!(fs::read(root.join("a/f"))?, b"hello world");
        let mut names: Vec<String> = fs::read_dir(root.join("a"))?
            .map(|e| e.map(|e| e.file_name().into_string().unwrap()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        assert_eq!(names, ["b", "f"]);
        let md = fs::metadata(root.join("a/f"))?;
        assert!(md.is_file());
        assert_eq!(md.len(), 11);
        assert_eq!(fs::metadata(root.join("a"))?.nlink(), 3, "a has one subdirectory");

        // chmod, chown, times.
        fs::set_permissions(root.join("a/f"), fs::Permissions::from_mode(0o600))?;
        assert_eq!(fs::metadata(root.join("a/f"))?.mode() & 0o7777, 0o600);
        std::os::unix::fs::chown(root.join("a/f"), Some(1234), Some(4321))?;
        let md = fs::metadata(root.join("a/f"))?;
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        let t = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        File::options()
            .write(true)
            .open(root.join("a/f"))?
            .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
        assert_eq!(fs::metadata(root.join("a/f"))?.modified()?, t);
        run_cmd(Command::new("touch").arg(root.join("a/f")))?;
        let age = SystemTime::now().duration_since(fs::metadata(root.join("a/f"))?.modified()?);
        assert!(age.map_or(true, |d| d < Duration::from_secs(60)), "touch");

        // Hard links share the inode; the data outlives the first name.
        fs::hard_link(root.join("a/f"), root.join("a/b/hard"))?;
        let (m1, m2) = (fs::metadata(root.join("a/f"))?, fs::metadata(root.join("a/b/hard"))?);
        assert_eq!((m1.ino(), m1.nlink()), (m2.ino(), 2));
        fs::remove_file(root.join("a/f"))?;
        assert_eq!(fs::read(root.join("a/b/hard"))?, b"hello world");
        assert_eq!(fs::metadata(root.join("a/b/hard"))?.nlink(), 1);

        // Symlinks, relative and absolute.
        std::os::unix::fs::symlink("b/hard", root.join("a/rel"))?;
        std::os::unix::fs::symlink(root.join("a/b"), root.join("a/abs"))?;
        assert_eq!(fs::read_link(root.join("a/rel"))?, Path::new("b/hard"));
        assert_eq!(fs::read(root.join("a/rel"))?, b"hello world");
        assert!(fs::symlink_metadata(root.join("a/rel"))?.file_type().is_symlink());
        assert_eq!(fs::read(root.join("a/abs/hard"))?, b"hello world");

        // Rename across directories and over an existing target.
        fs::write(root.join("a/b/c/new"), b"new")?;
        fs::write(root.join("a/old"), b"old")?;
        fs::rename(root.join("a/b/c/new"), root.join("a/old"))?;
        assert_eq!(fs::read(root.join("a/old"))?, b"new");
        assert!(!root.join("a/b/c/new").exists());
        fs::rename(root.join("a/b/c"), root.join("c2"))?;
        assert!(root.join("c2").is_dir());

        // Extended attributes.
        let out = python(
            "import os,sys; p=sys.argv[1]; os.setxattr(p,'user.k',b'v1'); \
             os.setxattr(p,'user.e',b''); os.removexattr(p,'user.e'); \
             print(os.getxattr(p,'user.k').decode(), sorted(os.listxattr(p)))",
            &[&root.join("a/old")],
        )?;
        assert_eq!(out.trim(), "v1 ['user.k']");

        // O_APPEND from two handles.
        let p = root.join("log");
        for line in ["one\n", "two\n", "three\n"] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)?
                .write_all(line.as_bytes())?;
        }
        assert_eq!(fs::read_to_string(&p)?, "one\ntwo\nthree\n");

        // Writes past the end, reads across chunk boundaries, fsync, mmap.
        let p = root.join("data");
        let payload: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut f = File::create(&p)?;
        f.write_all(&payload)?;
        f.sync_all()?;
        assert_eq!(f.metadata()?.len(), payload.len() as u64);
        drop(f);
        let mut f = File::open(&p)?;
        f.seek(SeekFrom::Start(4 * 1024 * 1024 - 10))?;
        let mut buf = vec![0u8; 20];
        f.read_exact(&mut buf)?;
        assert_eq!(buf, payload[4 * 1024 * 1024 - 10..4 * 1024 * 1024 + 10]);
        let sum = python(
            "import mmap,sys,hashlib; f=open(sys.argv[1],'rb'); \
             m=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ); print(hashlib.md5(m[:]).hexdigest())",
            &[&p],
        )?;
        let want = run_cmd(Command::new("md5sum").arg(&p))?;
        assert_eq!(sum.trim(), want.split_whitespace().next().unwrap());

        // statfs from cluster capacity.
        let df = run_cmd(Command::new("stat").args(["-f", "-c", "%b %S"]).arg(&root))?;
        let mut it = df.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        let (blocks, bsize) = (it.next().unwrap(), it.next().unwrap());
        ensure!(blocks * bsize > 1 << 20, "statfs reports {blocks} blocks of {bsize}");

        // find and du see the tree.
        let found = run_cmd(Command::new("find").arg(&root).args(["-type", "f"]))?;
        assert_eq!(found.lines().count(), 4, "{found}");
        run_cmd(Command::new("du").arg("-s").arg(&root))?;
        Ok(())
    })
    .expect("posix operations");
}

#[test]
fn bad_requests_get_the_right_errno() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &[]).expect("mount");
    let root = m.dir.clone();
    bounded(120, move || {
        fs::create_dir_all(root.join("d/sub"))?;
        fs::write(root.join("d/file"), b"x")?;
        assert_eq!(errno_of(File::open(root.join("missing"))), libc::ENOENT);
        assert_eq!(errno_of(fs::create_dir(root.join("d"))), libc::EEXIST);
        let long = "n".repeat(256);
        assert_eq!(errno_of(File::create(root.join(&long))), libc::ENAMETOOLONG);
        File::create(root.join("n".repeat(255)))?;
        assert_eq!(errno_of(fs::remove_dir(root.join("d"))), libc::ENOTEMPTY);
        assert_eq!(errno_of(fs::remove_file(root.join("d/sub"))), libc::EISDIR);
        assert_eq!(errno_of(fs::remove_dir(root.join("d/file"))), libc::ENOTDIR);
        assert_eq!(
            errno_of(fs::rename(root.join("d"), root.join("d/sub/inside"))),
            libc::EINVAL
        );
        assert_eq!(
            errno_of(fs::rename(root.join("d/file"), root.join("d/sub"))),
            libc::EISDIR
        );
        assert_eq!(
            errno_of(fs::hard_link(root.join("d"), root.join("dlink"))),
            libc::EPERM
        );
        std::os::unix::fs::symlink("loop2", root.join("loop1"))?;
        std::os::unix::fs::symlink("loop1", root.join("loop2"))?;
        assert_eq!(errno_of(File::open(root.join("loop1"))), libc::ELOOP);
        assert_eq!(
            errno_of(File::options().write(true).create_new(true).open(root.join("d/file"))),
            libc::EEXIST
        );
        assert_eq!(
            errno_of(File::options()
                .write(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(root.join("d/file"))),
            libc::ENOTDIR
        );
        let out = python(
            "import os,sys\ntry:\n os.getxattr(sys.argv[1],'user.none')\nexcept OSError as e:\n print(e.errno)",
            &[&root.join("d/file")],
        )?;
        assert_eq!(out.trim(), libc::ENODATA.to_string());
        Ok(())
    })
    .expect("errno checks");
    // Names no path can carry ('/' and NUL) are refused by the namespace itself.
    rt.block_on(async {
        let fs = FsClient::new(c.client().await?);
        for bad in ["a/b", "a\0b", ".", ".."] {
            let e = fs
                .mknod(ROOT_INO, bad, FileKind::File, 0o644, 0, 0, true)
                .await
                .expect_err(bad);
            assert_eq!(e.errno(), libc::EINVAL, "{bad:?}");
        }
        anyhow::Ok(())
    })
    .expect("bad names");
}

#[test]
fn sparse_files_truncate_and_data_deletion() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &["--free-grace-ms", "0"]).expect("mount");
    let root = m.dir.clone();
    let (ino, big_ino, huge_ino) = bounded(240, move || {
        let p = root.join("sparse");
        // One byte at 10 GiB: the hole reads as zeros, only one object exists.
        let mut f = File::create(&p)?;
        f.seek(SeekFrom::Start(10 << 30))?;
        f.write_all(b"Z")?;
        drop(f);
        assert_eq!(fs::metadata(&p)?.len(), (10 << 30) + 1);
        let mut f = File::open(&p)?;
        let mut buf = vec![1u8; 4096];
        f.seek(SeekFrom::Start(5 << 30))?;
        f.read_exact(&mut buf)?;
        assert!(buf.iter().all(|&b| b == 0));
        f.seek(SeekFrom::Start(10 << 30))?;
        let mut z = Vec::new();
        f.read_to_end(&mut z)?;
        assert_eq!(z, b"Z");

        // A file the size of a large disk with one byte far in: truncating it down visits the
        // objects that exist, not the 2^28 it spans (that ran the mount out of memory).
        let h = root.join("huge");
        let f = File::create(&h)?;
        f.set_len(1 << 50)?;
        std::os::unix::fs::FileExt::write_all_at(&f, b"Q", (1 << 49) + 5)?;
        f.sync_all()?;
        f.set_len(1)?;
        drop(f);
        assert_eq!(fs::metadata(&h)?.len(), 1);
        let huge_ino = fs::metadata(&h)?.ino();

        // Truncate down then up: the cut bytes read back as zeros.
        let q = root.join("trunc");
        let data: Vec<u8> = (0..10 * 1024 * 1024u32)
            .map(|i| (i % 253) as u8 + 1)
            .collect();
        fs::write(&q, &data)?;
        let f = File::options().write(true).open(&q)?;
        f.set_len(5 * 1024 * 1024 + 7)?;
        f.set_len(12 * 1024 * 1024)?;
        drop(f);
        let back = fs::read(&q)?;
        assert_eq!(back.len(), 12 * 1024 * 1024);
        assert_eq!(back[..5 * 1024 * 1024 + 7], data[..5 * 1024 * 1024 + 7]);
        assert!(back[5 * 1024 * 1024 + 7..].iter().all(|&b| b == 0));
        let ino = fs::metadata(&q)?.ino();

        // A file of a few hundred MiB streams through (written and read in 1 MiB blocks).
        let big = root.join("big");
        run_cmd(
            Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", big.display()))
                .args(["bs=1M", "count=300", "conv=fsync"]),
        )?;
        assert_eq!(fs::metadata(&big)?.len(), 300 << 20);
        let big_ino = fs::metadata(&big)?.ino();
        run_cmd(
            Command::new("dd")
                .arg(format!("if={}", big.display()))
                .args(["of=/dev/null", "bs=1M"]),
        )?;
        fs::remove_file(&big)?;
        Ok((ino, big_ino, huge_ino))
    })
    .expect("sparse and truncate");
    // Objects past the end were deleted by the truncate; the removed file's objects are gone.
    rt.block_on(async {
        let cl = c.client().await?;
        let io = cl.pool_io("default").await?;
        let chunk = 4u64 << 20;
        assert!(io
            .stat(Oid::for_piece(PieceKind::File, ino, 1))
            .await
            .is_ok());
        let far = Oid::for_piece(PieceKind::File, huge_ino, (1 << 49) / chunk);
        assert!(
            io.stat(far).await.is_err(),
            "the truncate left the far object"
        );
        objects_go(&io, big_ino, (300u64 << 20) / chunk, "a removed file").await
    })
    .expect("object checks");
}

#[test]
fn a_directory_of_100k_entries_lists_in_pages() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    const N: usize = 100_000;
    rt.block_on(async {
        let fs = FsClient::new(c.client().await?);
        let (dir, _) = fs
            .mknod(ROOT_INO, "big", FileKind::Dir, 0o755, 0, 0, true)
            .await?;
        for batch in 0..N / 1000 {
            let ops = (0..1000)
                .map(|i| NsOp::Create {
                    parent: dir.ino,
                    name: format!("f{:06}", batch * 1000 + i),
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    target: None,
                    exclusive: true,
                })
                .collect();
            fs.apply(NsOp::Batch(ops)).await?;
        }
        anyhow::Ok(())
    })
    .expect("populate");
    let m = c.mount("m", &[]).expect("mount");
    let dir = m.path("big");
    bounded(300, move || {
        let start = Instant::now();
        let mut n = 0;
        let mut last = String::new();
        for e in fs::read_dir(&dir)? {
            let name = e?.file_name().into_string().unwrap();
            ensure!(name > last, "listing out of order: {name} after {last}");
            last = name;
            n += 1;
        }
        ensure!(n == N, "listed {n} of {N}");
        eprintln!("listed {N} entries through FUSE in {:?}", start.elapsed());
        let md = fs::metadata(dir.join("f099999")).context("stat the last entry")?;
        ensure!(md.is_file());
        Ok(())
    })
    .expect("list");
}

/// What a program sees through descriptors of files removed while open (unlink, and a rename
/// over one), run in a local directory and on the mount: the two must agree step by step.
/// Prints a JSON list of (step, result or errno name), then the inode numbers involved.
const OPEN_UNLINKED: &str = r#"
import errno, fcntl, json, os, sys, termios, time
d = sys.argv[1]
out = []
def rec(name, f):
    try:
        out.append([name, repr(f())])
    except OSError as e:
        out.append([name, errno.errorcode.get(e.errno, str(e.errno))])
p, q = os.path.join(d, "victim"), os.path.join(d, "other")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"hello world" * 1000)
fd2 = os.open(p, os.O_RDONLY)
ino = os.fstat(fd).st_ino
os.unlink(p)
rec("exists", lambda: os.path.exists(p))
rec("fstat", lambda: (os.fstat(fd).st_size, os.fstat(fd).st_nlink))
rec("pread", lambda: os.pread(fd, 11, 0))
rec("pwrite", lambda: os.pwrite(fd, b"XYZ", 5))
rec("fsync", lambda: os.fsync(fd))
rec("pread-after-write", lambda: os.pread(fd, 11, 0))
rec("pread-other-fd", lambda: os.pread(fd2, 11, 0))
rec("ftruncate", lambda: os.ftruncate(fd, 20))
rec("size", lambda: os.fstat(fd).st_size)
rec("fchmod", lambda: os.fchmod(fd, 0o600))
rec("mode", lambda: oct(os.fstat(fd).st_mode & 0o777))
rec("lockf", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
rec("fallocate", lambda: os.posix_fallocate(fd, 0, 65536))
rec("size-after-fallocate", lambda: os.fstat(fd).st_size)
rec("tail", lambda: os.pread(fd, 4, 65532))
rec("pwrite-far", lambda: os.pwrite(fd, b"end", 100000))
rec("fsync2", lambda: os.fsync(fd))
rec("link-count", lambda: os.fstat(fd).st_nlink)
# An ioctl the file system does not know (a terminal's): ENOTTY.
rec("ioctl", lambda: fcntl.ioctl(fd, termios.TCGETS, bytes(64)))
# Longer than the mount's grace for removed files.
time.sleep(float(sys.argv[2]))
rec("later-fstat", lambda: os.fstat(fd).st_size)
rec("later-pread", lambda: os.pread(fd, 8, 99998))
rec("close2", lambda: os.close(fd2))
rec("close", lambda: os.close(fd))
# A rename over an open file keeps the replaced file for its descriptor.
with open(q, "wb") as f:
    f.write(b"new contents")
with open(p, "wb") as f:
    f.write(b"old contents")
fd = os.open(p, os.O_RDWR)
ino2 = os.fstat(fd).st_ino
os.rename(q, p)
rec("renamed-over-read", lambda: os.pread(fd, 12, 0))
rec("renamed-over-write", lambda: os.pwrite(fd, b"OLD", 0))
rec("renamed-over-close", lambda: os.close(fd))
rec("path-now", lambda: open(p, "rb").read())
print(json.dumps(out))
print(ino, ino2)
"#;

#[test]
fn files_removed_while_open_live_until_their_last_close() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let m = c.mount("m", &["--free-grace-ms", "1000"]).expect("mount");
    let root = m.dir.clone();
    let local = tempfile::tempdir().expect("tempdir");
    let fs = FsClient::new(rt.block_on(c.client()).expect("client"));
    let r = bounded(180, move || {
        let run = |dir: &Path| -> Result<(String, Vec<u64>)> {
            let out = run_cmd(
                Command::new("python3")
                    .arg("-c")
                    .arg(OPEN_UNLINKED)
                    .arg(dir)
                    .arg("1.5"),
            )?;
            let mut lines = out.lines();
            let steps = lines.next().context("no steps")?.to_string();
            let inos = lines
                .next()
                .context("no inodes")?
                .split_whitespace()
                .map(|n| n.parse().context("inode"))
                .collect::<Result<_>>()?;
            Ok((steps, inos))
        };
        let (want, _) = run(local.path())?;
        let (got, inos) = run(&root)?;
        eprintln!("local: {want}\ncairn: {got}");
        let want: Vec<(String, String)> = serde_json::from_str(&want)?;
        let got: Vec<(String, String)> = serde_json::from_str(&got)?;
        for (w, g) in want.iter().zip(&got) {
            ensure!(w == g, "step {}: local {} but cairn {}", w.0, w.1, g.1);
        }
        ensure!(want.len() == got.len(), "steps differ");
        Ok(inos)
    });
    let inos = r.expect("open files after unlink");
    let log = m.daemon.log();
    assert!(
        !log.contains("ioctl"),
        "the mount logged ioctls:\n{}",
        m.daemon.log_tail()
    );
    // After the last close (and the grace) the namespace lets go of both inodes.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        for ino in inos {
            loop {
                match fs.getattr(ino).await {
                    Err(e) if e.fs() == Some(cairn_proto::fs::FsError::Stale) => break,
                    r => {
                        assert!(Instant::now() < deadline, "inode {ino} still there: {r:?}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    });
}

#[test]
fn a_dead_mounts_removed_open_files_are_purged_by_another_mount() {
    let _s = serial();
    let (rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let mut a = c.mount("a", &["--lock-ttl-ms", "2000"]).expect("mount a");
    let root = a.dir.clone();
    // A process on mount a writes a file, keeps it open and removes it; then mount a dies.
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg("import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\nos.write(fd, b'x' * (9 << 20)); os.fsync(fd)\nprint(os.fstat(fd).st_ino, flush=True)\nos.unlink(sys.argv[1])\nprint('removed', flush=True)\ntime.sleep(600)")
        .arg(root.join("doomed"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let mut out = std::io::BufReader::new(holder.stdout.take().expect("stdout"));
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line).expect("inode");
    let ino: u64 = line.trim().parse().expect("inode number");
    line.clear();
    out.read_line(&mut line).expect("removed");
    assert_eq!(line.trim(), "removed");
    a.kill9();
    let _ = holder.kill();
    let _ = holder.wait();
    drop(a);
    rt.block_on(async {
        let cl = c.client().await?;
        let io = cl.pool_io("default").await?;
        let obj = |i| Oid::for_piece(PieceKind::File, ino, i);
        ensure!(
            io.stat(obj(2)).await.is_ok(),
            "the open file's data went with its name"
        );
        anyhow::Ok(())
    })
    .expect("data kept while open");
    // Its session expires (2 s, noticed at the next lock op: another mount renews its own);
    // a mount's reaper then deletes the data nobody else will.
    let _b = c.mount("b", &["--lock-ttl-ms", "2000"]).expect("mount b");
    std::thread::sleep(Duration::from_secs(4));
    let _c2 = c.mount("c", &[]).expect("mount c");
    rt.block_on(async {
        let cl = c.client().await?;
        let io = cl.pool_io("default").await?;
        objects_go(&io, ino, 3, "the dead mount's file").await
    })
    .expect("purged");
}
