//! cairn-tests: harnesses for multi-process clusters on 127.0.0.1.
//!
//! [`ProcCluster`] runs every metadata replica and OSD as its own `cairn` process (the binary the
//! workspace builds), each with a directory under one temporary root, so tests can `kill -9` any
//! one of them, restart it on the same port and directory, and check what survived. Every child is
//! killed when the cluster is dropped.

use anyhow::{bail, Context, Result};
use cairn_client::Cluster;
use cairn_proto::msg::{OsdRequest, OsdResponse, Request, Response};
use cairn_proto::{ClusterMap, OsdId};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `cairn` binary: `$CAIRN_BIN`, or `cairn` beside the test binary's `deps/` folder
/// (`cargo build` puts it there; `scripts/test.sh` builds it before running the tests).
pub fn cairn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .expect("deps dir")
        .parent()
        .expect("profile dir");
    let bin = dir.join("cairn");
    assert!(
        bin.exists(),
        "the cairn binary is missing at {}: run `cargo build -p cairn` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1: bound and released, and never handed out twice by this process.
/// (A released port is free again at once, so without the memory a daemon that has not bound
/// its port yet could see it given to the next daemon.)
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The first of `n` consecutive free TCP ports on 127.0.0.1, for daemons that take a base port
/// and count up from it. Taken below the kernel's ephemeral range (32768 and up by default), so
/// no client connection of another test holds one of them, each one checked by binding it, and
/// never handed out twice by this process.
pub fn free_port_run(n: u16) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut rng_state = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    loop {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let base = 20_000 + (rng_state % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if (base..base + n).any(|p| given.contains(&p)) {
            continue;
        }
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            given.extend(base..base + n);
            return base;
        }
    }
}

/// One daemon process that can be killed and restarted with the same arguments.
pub struct Daemon {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Extra environment for the next starts (e.g. `CAIRN_FAILPOINT`).
    env: Vec<(String, String)>,
}

impl Daemon {
    pub fn spawn(name: &str, args: Vec<String>, log_dir: &Path) -> Result<Daemon> {
        let mut d = Daemon {
            name: name.to_string(),
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            env: Vec::new(),
        };
        d.start()?;
        Ok(d)
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(cairn_bin())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Set (or with `None` remove) an environment variable for the daemon's next starts.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    /// Wait (at most `limit`) for the process to end by itself; true if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = &mut self.child {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return true;
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(c.id(), libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Send signal `sig` to process `pid` (kill(2) through nix: the workspace forbids unsafe code).
/// The `kill` command is not used: procps-ng 4.0.2's `kill -18` spun for a long time without
/// resuming a stopped daemon while a FUSE request of the test was waiting.
pub fn send_signal(pid: u32, sig: i32) {
    use nix::sys::signal::{kill, Signal};
    let (Ok(pid), Ok(sig)) = (i32::try_from(pid), Signal::try_from(sig)) else {
        return;
    };
    let _ = kill(nix::unistd::Pid::from_raw(pid), sig);
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Knobs of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub metas: usize,
    pub osds: usize,
    /// Milliseconds without heartbeats before an OSD is marked down / out.
    pub osd_down_after_ms: u64,
    pub osd_out_after_ms: u64,
    /// Per-OSD capacity limit in bytes (0: the file system's).
    pub osd_capacity: u64,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            metas: 3,
            osds: 3,
            osd_down_after_ms: 4000,
            osd_out_after_ms: 600_000,
            osd_capacity: 0,
        }
    }
}

/// A cluster of `cairn meta` and `cairn osd` processes on 127.0.0.1.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub metas: Vec<Daemon>,
    pub osds: Vec<Daemon>,
    pub meta_addrs: Vec<String>,
    pub osd_addrs: Vec<String>,
    pub opts: ClusterOpts,
}

impl ProcCluster {
    pub async fn start(opts: ClusterOpts) -> Result<ProcCluster> {
        let dir = tempfile::Builder::new().prefix("cairn-test-").tempdir()?;
        let meta_addrs: Vec<String> = (0..opts.metas)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = meta_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let mut metas = Vec::new();
        for (i, addr) in meta_addrs.iter().enumerate() {
            let args = vec![
                "meta".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addr.clone(),
                "--data".into(),
                dir.path()
                    .join(format!("meta.{}", i + 1))
                    .display()
                    .to_string(),
                "--peers".into(),
                peers.join(","),
                "--osd-down-after-ms".into(),
                opts.osd_down_after_ms.to_string(),
                "--osd-out-after-ms".into(),
                opts.osd_out_after_ms.to_string(),
            ];
            metas.push(Daemon::spawn(&format!("meta.{}", i + 1), args, dir.path())?);
        }
        let mut c = ProcCluster {
            dir,
            metas,
            osds: Vec::new(),
            meta_addrs,
            osd_addrs: Vec::new(),
            opts: opts.clone(),
        };
        for _ in 0..opts.osds {
            c.add_osd()?;
        }
        c.wait_map(Duration::from_secs(60), |m| {
            m.osds.len() == opts.osds && m.osds.values().all(|o| o.up && o.in_cluster)
        })
        .await
        .context("waiting for every OSD to boot")?;
        Ok(c)
    }

    /// Start one more OSD process; returns its index in `osds`.
    pub fn add_osd(&mut self) -> Result<usize> {
        let i = self.osds.len();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "osd".into(),
            "--listen".into(),
            addr.clone(),
            "--data".into(),
            self.dir
                .path()
                .join(format!("osd.{i}"))
                .display()
                .to_string(),
            "--meta".into(),
            self.meta_addrs.join(","),
        ];
        if self.opts.osd_capacity > 0 {
            args.push("--capacity".into());
            args.push(self.opts.osd_capacity.to_string());
        }
        self.osds
            .push(Daemon::spawn(&format!("osd.{i}"), args, self.dir.path())?);
        self.osd_addrs.push(addr);
        Ok(i)
    }

    pub fn osd_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("osd.{i}"))
    }

    /// Index in `metas` of the metadata replica the map names as leader.
    pub async fn meta_leader_index(&self) -> Result<usize> {
        let map = self.client().await?.refresh_map().await?;
        let leader = map
            .meta_leader
            .ok_or_else(|| anyhow::anyhow!("no metadata leader in the map"))?;
        Ok(leader as usize - 1)
    }

    pub async fn client(&self) -> Result<Cluster> {
        Ok(Cluster::connect(self.meta_addrs.clone()).await?)
    }

    /// Index in `osds` of the OSD that `map` calls `id` (matched by address: the map's ids are
    /// given out by the metadata service in boot order, which need not be the order of `osds`).
    pub fn osd_index(&self, map: &ClusterMap, id: OsdId) -> Option<usize> {
        let addr = map.osd_addr(id)?;
        self.osd_addrs.iter().position(|a| a == addr)
    }

    /// One request to the OSD at index `i` of `osds`, with no retry: how a test asks a given
    /// OSD (a replica, not the primary the client would pick) about its own copy.
    pub async fn osd_call(&self, i: usize, req: OsdRequest) -> Result<OsdResponse> {
        let rpc = cairn_proto::rpc::RpcClient::new();
        match rpc
            .call(
                &self.osd_addrs[i],
                Request::Osd(req),
                Duration::from_secs(10),
            )
            .await?
        {
            Response::Osd(r) => Ok(r),
            other => bail!("osd.{i} answered {other:?}"),
        }
    }

    /// Poll the map until `cond` holds.
    pub async fn wait_map(
        &self,
        timeout: Duration,
        cond: impl Fn(&ClusterMap) -> bool,
    ) -> Result<ClusterMap> {
        let start = Instant::now();
        let mut last_err = String::new();
        while start.elapsed() < timeout {
            match Cluster::connect(self.meta_addrs.clone()).await {
                Ok(c) => {
                    let m = (*c.map()).clone();
                    if cond(&m) {
                        return Ok(m);
                    }
                    last_err = format!(
                        "epoch {} osds {:?}",
                        m.epoch,
                        m.osds
                            .values()
                            .map(|o| (o.id.0, o.up, o.in_cluster))
                            .collect::<Vec<_>>()
                    );
                }
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "condition not met within {timeout:?}; last: {last_err}\n{}",
            self.logs()
        )
    }

    /// The last lines of every daemon's log (for failure messages).
    pub fn logs(&self) -> String {
        self.metas
            .iter()
            .chain(self.osds.iter())
            .map(|d| format!("--- {} ---\n{}", d.name, d.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Run the cairn CLI against this cluster; returns stdout, fails with stderr on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(cairn_bin())
            .args(args)
            .env("CAIRN_META", self.meta_addrs.join(","))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "cairn {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

// ---------------------------------------------------------------- file-system mounts

/// Fail (not skip) when a real FUSE mount cannot work here.
pub fn require_fuse() -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: FUSE tests need it (load the fuse module / run with --device /dev/fuse)");
    }
    let found = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        bail!("fusermount3 is missing: FUSE tests need it (apt-get install fuse3)");
    }
    Ok(())
}

/// Whether `dir` is a mount point right now (from /proc/self/mounts).
pub fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

/// A `cairn mount` process and its mount point. Dropping it unmounts (SIGTERM, then a lazy
/// `fusermount3 -u -z` in case the process was killed).
pub struct Mounted {
    pub dir: PathBuf,
    pub daemon: Daemon,
}

impl Mounted {
    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Kill the mount process with SIGKILL (the kernel mount stays until unmounted).
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q", "--"])
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

impl ProcCluster {
    /// Create the `default` pool files store their data in (size 3 / min 2 with 3 OSDs or
    /// more, else as many copies as OSDs).
    pub fn create_file_pool(&self) -> Result<()> {
        let size = self.opts.osds.clamp(1, 3);
        let min = if size >= 3 { 2 } else { 1 };
        self.cli(&[
            "pool",
            "create",
            "default",
            "--size",
            &size.to_string(),
            "--min-size",
            &min.to_string(),
        ])?;
        Ok(())
    }

    /// Mount the namespace with `cairn mount` at a new directory `name` under the cluster's
    /// directory, with `extra` flags; waits until the kernel shows the mount.
    pub fn mount(&self, name: &str, extra: &[&str]) -> Result<Mounted> {
        require_fuse()?;
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let mut args = vec![
            "mount".to_string(),
            dir.display().to_string(),
            "--meta".into(),
            self.meta_addrs.join(","),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Daemon::spawn(&format!("mount.{name}"), args, self.dir.path())?;
        let start = Instant::now();
        while !is_mounted(&dir) {
            if !daemon.is_running() || start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "cairn mount at {} did not come up:\n{}",
                    dir.display(),
                    daemon.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Mounted { dir, daemon })
    }

    /// Export the namespace over NFSv3 with `cairn nfs`; returns the daemon and its port once
    /// the port answers.
    pub fn nfs_export(&self) -> Result<(Daemon, u16)> {
        let port = free_port();
        let args = vec![
            "nfs".to_string(),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
            "--meta".into(),
            self.meta_addrs.join(","),
        ];
        let mut daemon = Daemon::spawn("nfs", args, self.dir.path())?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if !daemon.is_running() || start.elapsed() > Duration::from_secs(30) {
                bail!("cairn nfs did not come up:\n{}", daemon.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((daemon, port))
    }
}

/// Removes, when dropped (however the test ends), the /dev/shm pool files of the daemons of a
/// cluster: their names contain the cluster directory's name.
pub struct ShmCleanup(String);

impl ShmCleanup {
    pub fn for_cluster(c: &ProcCluster) -> ShmCleanup {
        ShmCleanup(
            c.dir
                .path()
                .file_name()
                .expect("temp dir name")
                .to_string_lossy()
                .into_owned(),
        )
    }
}

impl Drop for ShmCleanup {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(&self.0) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// S3 credentials: an access key id and its secret.
#[derive(Clone, Debug)]
pub struct S3Key {
    pub access_key: String,
    pub secret: String,
}

impl ProcCluster {
    /// A gateway serving only S3 (`cairn gateway --s3`, plus `extra` flags); returns it and its
    /// port once the port answers.
    pub fn s3_gateway(&self, name: &str, extra: &[&str]) -> Result<(Daemon, u16)> {
        let port = free_port();
        let mut args = vec![
            "gateway".to_string(),
            "--meta".into(),
            self.meta_addrs.join(","),
            "--iscsi".into(),
            String::new(),
            "--nfs".into(),
            String::new(),
            "--s3".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Daemon::spawn(name, args, self.dir.path())?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if !daemon.is_running() || start.elapsed() > Duration::from_secs(30) {
                bail!("cairn gateway (S3) did not come up:\n{}", daemon.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((daemon, port))
    }

    /// Create S3 user `name` (an administrator when `admin`) with `cairn user create`; its key.
    pub fn s3_user(&self, name: &str, admin: bool) -> Result<S3Key> {
        let mut args = vec!["user", "create", name];
        if admin {
            args.push("--admin");
        }
        let out = self.cli(&args)?;
        let field = |label: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(label).map(|v| v.trim().to_string()))
                .with_context(|| format!("no {label:?} in `cairn user create` output: {out}"))
        };
        Ok(S3Key {
            access_key: field("access key")?,
            secret: field("secret key")?,
        })
    }
}

/// Run blocking test code on its own thread and fail if it takes longer than `secs` (a hung
/// file-system call cannot be cancelled, but the test still ends).
pub fn bounded<T: Send + 'static>(
    secs: u64,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(r) => r,
        Err(_) => bail!("timed out after {secs} s"),
    }
}

/// Run an async test body and panic if it fails or takes longer than `secs`.
pub async fn bounded_async(secs: u64, f: impl std::future::Future<Output = Result<()>>) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
        .expect("test failed");
}

/// Run a command; its stdout, or an error with its stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A cluster with the `default` file pool for file-system tests, and the runtime that drives
/// async calls against it.
pub fn start_fs_cluster(opts: ClusterOpts) -> Result<(tokio::runtime::Runtime, ProcCluster)> {
    require_fuse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let c = rt.block_on(ProcCluster::start(opts))?;
    c.create_file_pool()?;
    Ok((rt, c))
}

/// The value of line `name` in the output of a `cairn ... stat` command (`"pool        fast"`
/// gives `"fast"` for `"pool"`); empty when there is no such line.
pub fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Deterministic bytes that differ at every offset (xorshift from `seed`).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One test at a time in a test binary: each starts a whole cluster, and two cores do not run
/// several well.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
