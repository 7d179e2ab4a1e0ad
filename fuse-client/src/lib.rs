//! cairn-fuse: the uniform namespace as a FUSE file system (fuser 0.16, pure-Rust mount through
//! `fusermount3`).
//!
//! ```text
//!  kernel ──/dev/fuse──> fuser session loop (one thread, never blocks)
//!                          └─> fs::CairnFs (fuser::Filesystem): each request becomes a tokio task
//!                                ├─ namespace ops/queries ──> FsClient ──> metadata leader (raft)
//!                                ├─ data read ───────────────> FsClient ──> OSDs (striped objects)
//!                                ├─ data write ──> writeback::WriteBack (per-inode buffers,
//!                                │                 capped per mount) ──> FsClient ──> OSDs,
//!                                │                 object-sized pieces, many in flight
//!                                └─ state::Handles: open files, per-inode pending sizes,
//!                                   directory listings, files unlinked while open
//!  lease task: renews the mount's lock session; Ctrl-C/SIGTERM/shutdown: unmount, end session
//!  age task: starts writes buffered longer than `write_behind_age`
//! ```
//!
//! Consistency between mounts (and with NFS and other clients) is close-to-open:
//! - `open` fetches fresh attributes from the metadata leader; when they differ from what this
//!   mount last told the kernel, the kernel's cached attributes and pages of that file are
//!   invalidated, so a file closed by another mount reads back whole after this open.
//! - Otherwise the kernel caches attributes and directory entries for [`MountOptions::attr_ttl`]
//!   / [`MountOptions::entry_ttl`] (1 s by default), so `stat` of a file another mount is changing
//!   may be up to that old; with `FUSE_AUTO_INVAL_DATA` a read after that revalidates.
//! - Writes are buffered ([`MountOptions::write_behind`] bytes per mount at most) and answered at
//!   once; close (flush), fsync, a truncate, and a read of the same file write them out first, a
//!   full buffer or [`MountOptions::write_behind_age`] start them early. A deferred write the
//!   cluster does not answer is retried for [`MountOptions::write_retry`] (10 min), so a slow or
//!   paused OSD delays close and fsync but fails nothing; a write the cluster refuses (ENOSPC)
//!   or that outlived its retries is lost, and fails the next close or fsync of the file
//!   (once: the error is reported, then cleared, as Linux reports writeback errors). Files opened
//!   `O_DIRECT`, `O_SYNC` or `O_DSYNC` are written through: durable when `write` returns.
//! - Sizes: a write past the end of file does not go to the metadata service at once; the mount
//!   keeps a high-water mark per inode and extends the size on flush (close), fsync and release,
//!   alongside writing the buffer out; both are done when they answer. `getattr` here reports
//!   the larger of the two, so this mount always sees its own writes. fsync makes data and size
//!   durable.
//! - Advisory locks (`fcntl` and `flock`) live in the metadata service, so they hold across
//!   mounts. Each mount has a lock session renewed every third of [`MountOptions::lock_ttl`]; a
//!   mount that dies loses its locks when the session expires. Blocking requests (`F_SETLKW`,
//!   `flock`) poll every [`MountOptions::lock_poll`] and are counted as waiting by the metadata
//!   service, which refuses a wait that would deadlock (`EDEADLK`, across mounts); a signal to
//!   the waiting process ends the wait with `EINTR` (FUSE INTERRUPT), so it can be killed.
//! - A file removed (unlink, or renamed over) while this mount has it open stays usable through
//!   its open descriptors as on a local file system: `fstat`, reads, writes, `ftruncate`,
//!   `fchmod`, locks. The metadata service keeps its inode, without links, as an orphan of this
//!   mount's session; the last close here lets go of it, and [`MountOptions::free_grace`]
//!   later it goes on the namespace's purge queue and this mount deletes its data. A mount that
//!   dies loses its orphans with its session, onto the purge queue; every mount (and gateway)
//!   drains the queue at start and every [`MountOptions::purge_every`], so whatever a dead
//!   process left there is deleted by another. Other mounts do not know what this one
//!   has open: a file removed elsewhere stays readable here for `free_grace` after that removal,
//!   then reads as zeros and `fstat` says ESTALE; writes to it here fail the next fsync or close
//!   with ESTALE (and what they stored is deleted again), never succeed silently.

mod fs;
mod state;
mod writeback;

use cairn_client::{Cluster, FsClient};
use fuser::MountOption;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

pub use fs::CairnFs;

/// Errors of a mount.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount at {path} (is /dev/fuse there and fusermount3 installed?): {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("FUSE session failed: {0}")]
    Session(std::io::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] cairn_client::ClientError),
}

/// How a mount behaves. Every field has a default (see [`MountOptions::default`]).
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel may cache an inode's attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache a name → inode lookup.
    pub entry_ttl: Duration,
    /// Lifetime of the mount's lock session; renewed every third of it. Locks of a mount that
    /// dies are released this long after its last renewal.
    pub lock_ttl: Duration,
    /// Poll interval of a blocking lock request (`F_SETLKW`, `flock` without `LOCK_NB`).
    pub lock_poll: Duration,
    /// Let every user use the mount (`allow_other`) and unmount when this process dies
    /// (`auto_unmount`, which needs `allow_other`). Falls back to a plain mount when refused.
    pub allow_other: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// How long the data of a removed file outlives its last name, for readers on other mounts
    /// that opened it just before (this mount keeps it while it has the file open anyway).
    pub free_grace: Duration,
    /// Bytes of writes the mount may hold before they reach the OSDs, over all files; 0 turns
    /// write-behind off (every write waits for its replicated OSD write). At least 2 MiB when on.
    pub write_behind: usize,
    /// How often the mount drains the namespace's purge queue (deletes the data of removed
    /// files that the mount or gateway that removed them did not get to), besides at start.
    pub purge_every: Duration,
    /// Buffered writes older than this are started without waiting for a close or fsync.
    pub write_behind_age: Duration,
    /// A buffered write the cluster does not answer (a stopped or overloaded OSD, a failover)
    /// is retried this long before it counts as lost; errors the cluster gives (no space, a
    /// removed file) are not retried.
    pub write_retry: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            lock_ttl: Duration::from_secs(30),
            lock_poll: Duration::from_millis(100),
            allow_other: true,
            read_only: false,
            free_grace: Duration::from_secs(5),
            purge_every: cairn_client::PURGE_EVERY,
            write_behind: 64 << 20,
            write_behind_age: Duration::from_secs(2),
            write_retry: Duration::from_secs(600),
        }
    }
}

fn mount_options(opts: &MountOptions, allow_other: bool) -> Vec<MountOption> {
    let mut o = vec![
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
        MountOption::DefaultPermissions,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if allow_other {
        o.push(MountOption::AllowOther);
        o.push(MountOption::AutoUnmount);
    }
    o
}

/// Mount the namespace of `cluster` at `mountpoint` and serve it until `shutdown` turns true
/// or the file system is unmounted from outside (`fusermount3 -u`). Unmounts and releases the
/// mount's locks before returning.
pub async fn run(
    cluster: Cluster,
    mountpoint: &Path,
    opts: MountOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FuseError> {
    let meta = std::fs::metadata(mountpoint).map_err(|source| FuseError::MountPoint {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FuseError::MountPoint {
            path: mountpoint.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let client = FsClient::new(cluster);
    // A random session id: mounts never need to agree on one, only to differ.
    let session_id: u64 = rand::random::<u64>() | 1;
    client
        .renew_session(session_id, ttl_ms(opts.lock_ttl))
        .await?;
    let notifier = Arc::new(OnceLock::new());
    let (reaper_tx, reaper_rx) = tokio::sync::mpsc::unbounded_channel();
    let reaper = tokio::spawn(fs::reap(
        client.clone(),
        session_id,
        reaper_rx,
        opts.free_grace,
        opts.purge_every,
    ));
    let make_fs = || {
        CairnFs::new(
            client.clone(),
            tokio::runtime::Handle::current(),
            session_id,
            opts.clone(),
            notifier.clone(),
            reaper_tx.clone(),
        )
    };
    let mut session = match fuser::Session::new(
        make_fs(),
        mountpoint,
        &mount_options(&opts, opts.allow_other),
    ) {
        Ok(s) => s,
        Err(e) if opts.allow_other => {
            tracing::warn!(error = %e, "allow_other/auto_unmount refused; mounting without");
            fuser::Session::new(make_fs(), mountpoint, &mount_options(&opts, false)).map_err(
                |source| FuseError::Mount {
                    path: mountpoint.to_path_buf(),
                    source,
                },
            )?
        }
        Err(source) => {
            return Err(FuseError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            })
        }
    };
    let _ = notifier.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cairn-fuse".into())
        .spawn(move || {
            let r = session.run();
            // Dropping the session unmounts (if still mounted) and calls `destroy`.
            drop(session);
            let _ = done_tx.send(r);
        })
        .map_err(FuseError::Session)?;
    tracing::info!(mountpoint = %mountpoint.display(), session = session_id, "mounted");
    let renew_every = opts.lock_ttl / 3;
    let mut renew = tokio::time::interval(renew_every.max(Duration::from_millis(100)));
    renew.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut done_rx => {
                // Unmounted from outside, or the session failed.
                break match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(FuseError::Session(e)),
                    Err(_) => Ok(()),
                };
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    tracing::info!("unmounting");
                    lazy_unmount(mountpoint).await;
                    let _ = unmounter.unmount();
                    // The session loop ends once the kernel lets go of the mount.
                    let _ = tokio::time::timeout(Duration::from_secs(10), &mut done_rx).await;
                    break Ok(());
                }
            }
            _ = renew.tick() => {
                if let Err(e) = client.renew_session(session_id, ttl_ms(opts.lock_ttl)).await {
                    tracing::warn!(error = %e, "could not renew the lock session");
                }
            }
        }
    };
    // The file system (and with it every sender) is gone once the session ended: the reaper
    // deletes what is left and stops.
    drop(reaper_tx);
    let _ = tokio::time::timeout(Duration::from_secs(60), reaper).await;
    if let Err(e) = client.end_session(session_id).await {
        tracing::warn!(error = %e, "could not end the lock session; its locks expire by themselves");
    }
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    result
}

/// Detach the mount (`fusermount3 -u -z`): the kernel ends the session, which ends the session
/// loop, even while files are open. fuser's own unmount relies on fusermount3's auto-unmount
/// watchdog when `auto_unmount` is on, and that watchdog is not always there.
async fn lazy_unmount(mountpoint: &Path) {
    let status = tokio::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(mountpoint)
        .status()
        .await;
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(%s, "fusermount3 -u failed"),
        Err(e) => tracing::warn!(error = %e, "cannot run fusermount3"),
    }
}

pub(crate) fn ttl_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
