//! cairn-metadata: the metadata service, a raft-replicated state machine holding the cluster map.
//!
//! Parts, and how a request flows through them:
//!
//! - `service`: the RPC [`Handler`](cairn_proto::rpc::Handler). Followers redirect to the leader;
//!   the leader turns commands into proposals, reads into ReadIndex requests, and keeps OSD
//!   heartbeats in `liveness`.
//! - `node`: the raft task, sole owner of the raft-rs `RawNode`. It steps messages, proposes,
//!   handles each `Ready` in the documented order, applies committed entries to `state`, answers
//!   the waiting requests, and takes snapshots.
//! - `storage`: the raft log, hard state and snapshots on sled, implementing `raft::Storage`.
//! - `state`: the replicated state machine, one module per command family: the cluster map's
//!   `osd`, `pool` and `members`, block `volume`s, `iscsi` targets and reservations, S3 `user`s,
//!   the POSIX `namespace` (itself split by concern: inodes, directories, links, xattrs, locks)
//!   and the data `migrate` moves. Rebuilt on restart from the latest snapshot plus the log after
//!   it.
//! - `transport`: per-peer queues and sender tasks carrying raft messages over `RpcClient`.
//! - `liveness`: the leader's in-memory heartbeat table and its periodic down/out duty.
//! - [`config`], [`error`]: [`MetaConfig`] and [`MetaError`] (mapped onto `WireError`).
//!
//! Start a replica with [`run`] (until a shutdown signal) or [`MetaNode::start`] (returns a
//! [`MetaHandle`] once the listener is bound and the store is open).

pub mod config;
pub mod error;
mod liveness;
mod logger;
mod node;
mod service;
mod state;
mod storage;
mod transport;

pub use config::MetaConfig;
pub use error::MetaError;
pub use node::NodeInfo;

use cairn_proto::rpc::RpcClient;
use cairn_proto::ClusterMap;
use node::{Node, NodeRef};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Run a metadata replica until `shutdown` turns true (or its sender is dropped). Returns an error
/// if the configuration is invalid, the listener cannot bind, or the raft task hits a store or
/// apply failure (the replica stops rather than serve inconsistent state).
pub async fn run(cfg: MetaConfig, shutdown: watch::Receiver<bool>) -> Result<(), MetaError> {
    cfg.validate()?;
    let listener = bind(&cfg.listen).await?;
    let started = Started::open(cfg, listener).await?;
    started.serve(shutdown).await
}

async fn bind(addr: &str) -> Result<TcpListener, MetaError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetaError::Io {
            op: "bind the listen address",
            source,
        })
}

/// Starts replicas in the background.
pub struct MetaNode;

impl MetaNode {
    /// Bind `cfg.listen`, open the store and start serving in the background.
    pub async fn start(cfg: MetaConfig) -> Result<MetaHandle, MetaError> {
        cfg.validate()?;
        let listener = bind(&cfg.listen).await?;
        MetaNode::start_on(cfg, listener).await
    }

    /// Like [`MetaNode::start`] on a listener the caller bound (so it knew the port first);
    /// `cfg.listen` is not used.
    pub async fn start_on(cfg: MetaConfig, listener: TcpListener) -> Result<MetaHandle, MetaError> {
        cfg.validate()?;
        let started = Started::open(cfg, listener).await?;
        let addr = started.addr;
        let node = started.node_ref.clone();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(started.serve(stop_rx));
        Ok(MetaHandle {
            addr,
            stop,
            task,
            node,
        })
    }
}

/// A replica running in the background.
pub struct MetaHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), MetaError>>,
    node: NodeRef,
}

impl MetaHandle {
    /// The address the RPC server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This replica's raft state.
    pub fn info(&self) -> NodeInfo {
        self.node.info()
    }

    /// The map as applied on this replica (not linearizable; `GetMap` on the leader is).
    pub fn map(&self) -> Arc<ClusterMap> {
        self.node.local_map()
    }

    /// Whether the replica stopped by itself (a fatal error); [`MetaHandle::stop`] returns it.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stop serving, wait for every task of the replica to end, and return how it ended.
    pub async fn stop(self) -> Result<(), MetaError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(MetaError::Panicked(e.to_string())),
        }
    }
}

/// A replica with its store open and raft node built, not yet serving.
struct Started {
    addr: SocketAddr,
    listener: TcpListener,
    cfg: Arc<MetaConfig>,
    node: Node,
    inbox: tokio::sync::mpsc::Receiver<node::Msg>,
    node_ref: NodeRef,
    /// Stops the transport's sender tasks, the server and the duties when the raft task ends.
    internal_stop: watch::Sender<bool>,
}

impl Started {
    async fn open(cfg: MetaConfig, listener: TcpListener) -> Result<Started, MetaError> {
        let addr = listener.local_addr().map_err(|source| MetaError::Io {
            op: "read the bound address",
            source,
        })?;
        let self_addr = if !cfg.advertise.is_empty() {
            cfg.advertise.clone()
        } else if let Some(a) = cfg.peers.get(&cfg.id) {
            a.clone()
        } else {
            addr.to_string()
        };
        let dir = cfg.data_dir.clone();
        // sled's open reads files and may wait out a lock: keep it off the async workers.
        let store = tokio::task::spawn_blocking(move || storage::RaftStore::open(&dir))
            .await
            .map_err(|e| MetaError::Panicked(e.to_string()))??;
        let (internal_stop, internal_rx) = watch::channel(false);
        let (node, ch) = Node::new(&cfg, store, self_addr, internal_rx)?;
        let node_ref = NodeRef::new(&ch);
        tracing::info!(id = cfg.id, %addr, "metadata replica started");
        Ok(Started {
            addr,
            listener,
            cfg: Arc::new(cfg),
            node,
            inbox: ch.inbox_rx,
            node_ref,
            internal_stop,
        })
    }

    async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), MetaError> {
        let stop_rx = self.internal_stop.subscribe();
        let live = Arc::new(Mutex::new(liveness::Liveness::new()));
        let service = service::Service::new(
            self.node_ref.clone(),
            live.clone(),
            RpcClient::new(),
            Duration::from_millis(self.cfg.pg_report_ttl_ms),
        );
        let server = tokio::spawn(cairn_proto::rpc::serve(
            self.listener,
            Arc::new(service),
            stop_rx.clone(),
        ));
        let duties = tokio::spawn(liveness::run_duties(
            self.node_ref.clone(),
            live,
            self.cfg.clone(),
            stop_rx.clone(),
        ));
        let mut raft = tokio::spawn(self.node.run(self.inbox, stop_rx));
        let id = self.cfg.id;
        let result = tokio::select! {
            r = &mut raft => Some(r),
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let _ = self.internal_stop.send(true);
        let result = match result {
            Some(r) => r,
            None => raft.await,
        };
        let _ = server.await;
        let _ = duties.await;
        let result = result.unwrap_or_else(|e| Err(MetaError::Panicked(e.to_string())));
        match &result {
            Ok(()) => tracing::info!(id, "metadata replica stopped"),
            Err(e) => tracing::error!(id, error = %e, "metadata replica failed"),
        }
        result
    }
}
