//! The gateway daemon: its configuration and the servers it runs on a cairn cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_client::Cluster;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cairn_iscsi::IscsiOptions;
use cairn_s3::S3Options;

use crate::cluster::{GatewayLocal, MetaRegistry};
use crate::error::GatewayError;
use crate::lun_cache::LunCacheSpec;

/// Configuration of `cairn gateway` (a TOML file; flags override it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Metadata service addresses (any of the replicas).
    pub meta: Vec<String>,
    /// iSCSI portal (`ip:port`); empty disables iSCSI.
    pub iscsi_listen: String,
    /// iSCSI target tunables.
    pub iscsi: IscsiOptions,
    /// This gateway's name: nvdisk volumes record the gateway that holds and serves them
    /// (`cairn vol create --nvdisk SIZE --gateway NAME`). Default: the host name.
    pub name: String,
    /// Where the gateway keeps its local state: the nvdisks of its nvdisk volumes
    /// (`DATA/nvdisk/`) and the journals of its LUN caches (`DATA/lun-cache/`).
    pub data_dir: PathBuf,
    /// Write-back cache in front of cluster-volume LUNs: `"off"`, `"memory"` (acknowledged
    /// writes are lost with the gateway unless FUA / SYNCHRONIZE CACHE) or `"nvdisk:shm"`,
    /// `"nvdisk:sync"`, `"nvdisk:shm,sync"` with an optional `,size=64M` (each write journaled
    /// on an nvdisk first: it survives a gateway crash, with `sync` power loss too, and is
    /// written to the cluster when the gateway starts again). See [`crate::lun_cache`].
    pub lun_cache: LunCacheSpec,
    /// Milliseconds dirty data may wait in a LUN cache before it is written to the cluster.
    pub lun_cache_flush_ms: u64,
    /// NFSv3 (and MOUNT) address (`ip:port`, one port for both); empty disables NFS.
    pub nfs_listen: String,
    /// S3 HTTP address (`ip:port`); empty disables S3.
    pub s3_listen: String,
    /// S3 tunables.
    pub s3: S3Options,
    /// Run the background migrator: it moves the data of files below a directory pinned to a
    /// pool (`cairn fs pin`) into that pool. Gateways take turns through a lock, so any number
    /// may have it on.
    pub migrate: bool,
    /// Milliseconds between migration passes.
    pub migrate_interval_ms: u64,
    /// Seconds the old objects of a moved file keep refusing clients before they are forgotten;
    /// keep it above the 30 s clients trust a file's remembered pool.
    pub migrate_grace_secs: u64,
    /// Milliseconds between drains of the namespace's purge queue (the data of removed files
    /// that the mount or gateway that removed them did not get to delete); the gateway also
    /// drains it at start. 0 turns draining off (files NFS and S3 remove here are still purged).
    pub purge_interval_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            meta: vec!["127.0.0.1:7000".into()],
            iscsi_listen: "127.0.0.1:3260".into(),
            iscsi: IscsiOptions::default(),
            name: default_name(),
            data_dir: PathBuf::from("cairn-gateway"),
            lun_cache: LunCacheSpec::Off,
            lun_cache_flush_ms: 500,
            nfs_listen: "127.0.0.1:2049".into(),
            s3_listen: "127.0.0.1:9000".into(),
            s3: S3Options::default(),
            migrate: true,
            migrate_interval_ms: 5000,
            migrate_grace_secs: cairn_client::migrate::MOVE_GRACE.as_secs(),
            purge_interval_ms: cairn_client::PURGE_EVERY.as_millis() as u64,
        }
    }
}

/// This machine's host name, else "localhost".
pub fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.name.is_empty()
            || self.name.len() > 128
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(GatewayError::InvalidOption {
                field: "name",
                reason: "use 1-128 of [A-Za-z0-9-_.]",
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(GatewayError::InvalidOption {
                field: "data_dir",
                reason: "must be set",
            });
        }
        if self.lun_cache_flush_ms == 0 {
            return Err(GatewayError::InvalidOption {
                field: "lun_cache_flush_ms",
                reason: "must be at least 1",
            });
        }
        if self.migrate_interval_ms == 0 {
            return Err(GatewayError::InvalidOption {
                field: "migrate_interval_ms",
                reason: "must be at least 1",
            });
        }
        if self.meta.is_empty() {
            return Err(GatewayError::InvalidOption {
                field: "meta",
                reason: "needs at least one address",
            });
        }
        self.iscsi.validate()?;
        Ok(self.s3.validate()?)
    }
}

/// A running gateway.
pub struct GatewayHandle {
    pub iscsi_addr: Option<SocketAddr>,
    /// The NFSv3 port, when NFS is served.
    pub nfs_port: Option<u16>,
    /// The S3 address, when S3 is served.
    pub s3_addr: Option<SocketAddr>,
    /// Whether S3 is served over TLS.
    pub s3_tls: bool,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), GatewayError>>>,
    registry: Option<Arc<MetaRegistry>>,
}

impl GatewayHandle {
    /// Stop every server and wait for them.
    pub async fn stop(self) -> Result<(), GatewayError> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            match t.await {
                Ok(r) => r?,
                Err(e) => tracing::error!(error = %e, "gateway task panicked"),
            }
        }
        if let Some(r) = self.registry {
            // Write back what LUN caches hold, so a clean stop leaves no journal to replay.
            r.flush_caches().await?;
        }
        Ok(())
    }
}

/// Connect to the cluster, bind every configured portal, and serve in the background.
pub async fn start(cfg: GatewayConfig) -> Result<GatewayHandle, GatewayError> {
    cfg.validate()?;
    let cluster =
        Cluster::connect(cfg.meta.clone())
            .await
            .map_err(|_| GatewayError::Unavailable {
                service: "metadata service",
            })?;
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut iscsi_addr = None;
    let mut registry = None;
    if !cfg.iscsi_listen.is_empty() {
        // Absolute, so /dev/shm pool names made from it are the same whatever the cwd. It is
        // created only when something is kept there (an nvdisk volume, a LUN cache journal).
        let data_dir = match cfg.data_dir.canonicalize() {
            Ok(d) => d,
            Err(_) => std::path::absolute(&cfg.data_dir)?,
        };
        let reg = Arc::new(MetaRegistry::with_local(
            cluster.clone(),
            GatewayLocal {
                name: cfg.name.clone(),
                data_dir,
                lun_cache: cfg.lun_cache.clone(),
                lun_cache_flush: std::time::Duration::from_millis(cfg.lun_cache_flush_ms),
            },
        ));
        // Before the portal opens: LUN cache journals left by a crash reach the cluster, and
        // this gateway's nvdisk volumes are rebuilt from their backups.
        reg.recover().await?;
        let l = TcpListener::bind(&cfg.iscsi_listen).await?;
        iscsi_addr = Some(l.local_addr()?);
        registry = Some(Arc::clone(&reg));
        let (opts, rx) = (cfg.iscsi.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            Ok(cairn_iscsi::serve(l, reg, opts, rx).await?)
        }));
    }
    let mut s3_addr = None;
    if !cfg.s3_listen.is_empty() {
        // A bad certificate stops the gateway here, not in a background task.
        cfg.s3.tls()?;
        let (l, a) = cairn_s3::bind(&cfg.s3_listen).await?;
        s3_addr = Some(a);
        let (cluster, opts, rx) = (cluster.clone(), cfg.s3.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            Ok(cairn_s3::serve(l, cluster, opts, rx).await?)
        }));
    }
    if cfg.migrate {
        let migrator = cairn_client::migrate::Migrator::new(
            cairn_client::FsClient::new(cluster.clone()),
            cairn_client::migrate::MigrateOptions {
                grace: std::time::Duration::from_secs(cfg.migrate_grace_secs),
                ..Default::default()
            },
        );
        let interval = std::time::Duration::from_millis(cfg.migrate_interval_ms);
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = migrator.run(interval) => {}
                _ = rx.wait_for(|stop| *stop) => {}
            }
            Ok(())
        }));
    }
    // Deletes what NFS removes here and, every `purge_interval_ms`, whatever else is on the
    // purge queue. Its worker ends when the NFS server and this task let go of it.
    let every = (cfg.purge_interval_ms > 0)
        .then(|| std::time::Duration::from_millis(cfg.purge_interval_ms));
    let (purger, purge_worker) =
        cairn_client::Purger::start(cairn_client::FsClient::new(cluster.clone()), every);
    {
        let (purger, mut rx) = (purger.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = rx.wait_for(|stop| *stop).await;
            drop(purger);
            purge_worker.abort();
            Ok(())
        }));
    }
    let mut nfs_port = None;
    if !cfg.nfs_listen.is_empty() {
        let (ptx, prx) = tokio::sync::oneshot::channel();
        let (cluster, addr, rx) = (cluster.clone(), cfg.nfs_listen.clone(), rx.clone());
        let purger = purger.clone();
        tasks.push(tokio::spawn(async move {
            cairn_nfs::serve_nfs_with(
                cluster,
                &addr,
                rx,
                move |port| {
                    let _ = ptx.send(port);
                },
                purger,
            )
            .await
            .map_err(GatewayError::Io)
        }));
        match prx.await {
            Ok(p) => nfs_port = Some(p),
            Err(_) => {
                // The server ended before binding: its task holds the reason.
                let _ = stop.send(true);
                let mut first_err = GatewayError::Unavailable {
                    service: "NFS listener",
                };
                for t in tasks {
                    if let Ok(Err(e)) = t.await {
                        first_err = e;
                    }
                }
                return Err(first_err);
            }
        }
    }
    Ok(GatewayHandle {
        iscsi_addr,
        nfs_port,
        s3_addr,
        s3_tls: cfg.s3.tls_cert.is_some(),
        stop,
        tasks,
        registry,
    })
}
