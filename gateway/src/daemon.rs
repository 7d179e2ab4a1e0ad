//! The gateway daemon: its configuration and the servers it runs on a cairn cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use cairn_client::Cluster;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::MetaRegistry;
use crate::error::GatewayError;
use crate::iscsi::IscsiOptions;

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
    /// NFSv3 (and MOUNT) address (`ip:port`, one port for both); empty disables NFS.
    pub nfs_listen: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            meta: vec!["127.0.0.1:7000".into()],
            iscsi_listen: "127.0.0.1:3260".into(),
            iscsi: IscsiOptions::default(),
            nfs_listen: "127.0.0.1:2049".into(),
        }
    }
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.meta.is_empty() {
            return Err(GatewayError::InvalidOption {
                field: "meta",
                reason: "needs at least one address",
            });
        }
        self.iscsi.validate()
    }
}

/// A running gateway.
pub struct GatewayHandle {
    pub iscsi_addr: Option<SocketAddr>,
    /// The NFSv3 port, when NFS is served.
    pub nfs_port: Option<u16>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), GatewayError>>>,
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
    if !cfg.iscsi_listen.is_empty() {
        let l = TcpListener::bind(&cfg.iscsi_listen).await?;
        iscsi_addr = Some(l.local_addr()?);
        let registry = Arc::new(MetaRegistry::new(cluster.clone()));
        tasks.push(tokio::spawn(crate::iscsi::serve(
            l,
            registry,
            cfg.iscsi.clone(),
            rx.clone(),
        )));
    }
    let mut nfs_port = None;
    if !cfg.nfs_listen.is_empty() {
        let (ptx, prx) = tokio::sync::oneshot::channel();
        let (cluster, addr, rx) = (cluster.clone(), cfg.nfs_listen.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            crate::nfs::serve_nfs(cluster, &addr, rx, move |port| {
                let _ = ptx.send(port);
            })
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
        stop,
        tasks,
    })
}
