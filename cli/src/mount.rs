//! `cairn mount MOUNTPOINT`: the uniform namespace as a FUSE file system, served by this
//! process until it is unmounted (`fusermount3 -u MOUNTPOINT`), interrupted (Ctrl-C) or sent
//! SIGTERM; on a signal it unmounts first, so the mount point never stays behind "disconnected".

use anyhow::{Context, Result};
use cairn_fuse::MountOptions;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Args, Clone, Debug)]
pub struct MountArgs {
    /// Directory to mount the namespace on.
    pub mountpoint: PathBuf,
    /// How long the kernel may cache attributes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub attr_ttl_ms: u64,
    /// How long the kernel may cache name lookups, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub entry_ttl_ms: u64,
    /// Lifetime of the mount's lock session: the locks of a mount that dies are released this
    /// long after its last renewal.
    #[arg(long, default_value_t = 30_000)]
    pub lock_ttl_ms: u64,
    /// Do not try `allow_other,auto_unmount` (they need root or `user_allow_other`).
    #[arg(long)]
    pub no_allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// How long the data of a removed file outlives its last name, in milliseconds (for readers
    /// on other mounts that opened it just before).
    #[arg(long, default_value_t = 5_000)]
    pub free_grace_ms: u64,
    /// Writes the mount may buffer before they reach the OSDs, in MiB over all files (0: off,
    /// every write waits for the cluster). Close and fsync write a file's buffer out.
    #[arg(long, default_value_t = 64)]
    pub write_behind_mib: usize,
    /// Buffered writes older than this, in milliseconds, are started without waiting for a
    /// close or fsync.
    #[arg(long, default_value_t = 2_000)]
    pub write_behind_age_ms: u64,
    /// How long a buffered write keeps being retried while the cluster does not answer (OSDs
    /// stopped, overloaded or failing over), in seconds; only then does it count as lost and
    /// fail the file's next fsync or close.
    #[arg(long, default_value_t = 600)]
    pub write_retry_secs: u64,
    /// How long one cluster operation keeps retrying (timeouts, failovers) before the call
    /// that made it fails, in milliseconds; one attempt waits at most 20 s.
    #[arg(long, default_value_t = 60_000)]
    pub op_deadline_ms: u64,
}

impl MountArgs {
    fn options(&self) -> MountOptions {
        MountOptions {
            attr_ttl: Duration::from_millis(self.attr_ttl_ms),
            entry_ttl: Duration::from_millis(self.entry_ttl_ms),
            lock_ttl: Duration::from_millis(self.lock_ttl_ms.max(300)),
            allow_other: !self.no_allow_other,
            read_only: self.read_only,
            free_grace: Duration::from_millis(self.free_grace_ms),
            write_behind: self.write_behind_mib.saturating_mul(1 << 20),
            write_behind_age: Duration::from_millis(self.write_behind_age_ms),
            write_retry: Duration::from_secs(self.write_retry_secs),
            ..MountOptions::default()
        }
    }
}

/// Mount and serve until unmounted or signalled.
pub async fn run_mount(meta: Vec<String>, args: MountArgs) -> Result<()> {
    let copts = cairn_client::ClientOptions {
        op_deadline: Duration::from_millis(args.op_deadline_ms.max(100)),
        ..Default::default()
    };
    let cluster = cairn_client::Cluster::connect_with(meta.clone(), copts)
        .await
        .with_context(|| format!("cannot reach the metadata service at {}", meta.join(",")))?;
    if cluster.pool(cairn_client::DEFAULT_FILE_POOL).await.is_err() {
        tracing::warn!(
            pool = cairn_client::DEFAULT_FILE_POOL,
            "the file data pool does not exist yet: writes fail until it is created \
             (cairn pool create default)"
        );
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        signalled().await;
        let _ = tx.send(true);
    });
    cairn_fuse::run(cluster, &args.mountpoint, args.options(), rx)
        .await
        .with_context(|| format!("mount at {}", args.mountpoint.display()))
}

/// SIGINT or SIGTERM.
pub async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
