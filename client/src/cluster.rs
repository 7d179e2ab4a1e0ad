//! The cluster handle: a cached cluster map, the metadata client, and the retry loop that sends an
//! object request to its placement group's primary.

use crate::error::{ClientError, Result};
use cairn_proto::map::{FailureDomain, WriteMode};
use cairn_proto::meta_client::MetaClient;
use cairn_proto::msg::{MetaCommand, MetaResult, OsdRequest, OsdResponse, Request, Response};
use cairn_proto::rpc::{RpcClient, RpcError};
use cairn_proto::{ClusterMap, OsdId, PgId, Pool, WireError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Tunables of the client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one operation keeps retrying through failovers before giving up.
    pub op_deadline: Duration,
    /// How long one attempt waits for an answer.
    pub attempt_timeout: Duration,
    /// Size of the pieces large objects are streamed in.
    pub io_chunk: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            op_deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(20),
            io_chunk: 4 << 20,
        }
    }
}

/// A connection to a cairn cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    meta: MetaClient,
    rpc: RpcClient,
    map: RwLock<Arc<ClusterMap>>,
    refresh: tokio::sync::Mutex<()>,
    opts: ClientOptions,
}

impl Cluster {
    /// Connect to the metadata service at any of `meta_addrs` and fetch the cluster map.
    pub async fn connect(meta_addrs: Vec<String>) -> Result<Cluster> {
        Cluster::connect_with(meta_addrs, ClientOptions::default()).await
    }

    pub async fn connect_with(meta_addrs: Vec<String>, opts: ClientOptions) -> Result<Cluster> {
        let rpc = RpcClient::new();
        let meta = MetaClient::new(rpc.clone(), meta_addrs);
        let map = meta.get_map().await?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                meta,
                rpc,
                map: RwLock::new(Arc::new(map)),
                refresh: tokio::sync::Mutex::new(()),
                opts,
            }),
        })
    }

    pub fn meta(&self) -> &MetaClient {
        &self.inner.meta
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.inner.rpc
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The cached map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.inner.map.read().expect("map lock").clone()
    }

    /// Fetch the map from the metadata service. Concurrent callers share one fetch.
    pub async fn refresh_map(&self) -> Result<Arc<ClusterMap>> {
        let before = self.map().epoch;
        let _g = self.inner.refresh.lock().await;
        let cur = self.map();
        if cur.epoch > before {
            return Ok(cur);
        }
        let m = Arc::new(self.inner.meta.get_map().await?);
        let mut slot = self.inner.map.write().expect("map lock");
        // Keep the map's stats fresh even when the epoch did not move.
        if m.epoch >= slot.epoch {
            *slot = m.clone();
        }
        Ok(slot.clone())
    }

    /// Look up a pool by name, refreshing the map once if it is not known yet.
    pub async fn pool(&self, name: &str) -> Result<Pool> {
        if let Some(p) = self.map().pool_by_name(name) {
            return Ok(p.clone());
        }
        self.refresh_map()
            .await?
            .pool_by_name(name)
            .cloned()
            .ok_or_else(|| ClientError::NoSuchPool(name.to_string()))
    }

    /// Create a pool; answers `Exists` through the error if it is there already.
    pub async fn create_pool(&self, spec: PoolSpec) -> Result<Pool> {
        let r = self
            .inner
            .meta
            .command(MetaCommand::CreatePool {
                name: spec.name.clone(),
                size: spec.size,
                min_size: spec.min_size,
                pg_num: spec.pg_num,
                mode: spec.mode,
                failure_domain: spec.failure_domain,
            })
            .await?;
        match r {
            MetaResult::Pool(_) | MetaResult::Done => self.pool_fresh(&spec.name).await,
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    async fn pool_fresh(&self, name: &str) -> Result<Pool> {
        self.refresh_map()
            .await?
            .pool_by_name(name)
            .cloned()
            .ok_or_else(|| ClientError::NoSuchPool(name.to_string()))
    }

    /// Send `make(epoch)` to the primary of `pg` and retry through map changes and failovers until
    /// the operation deadline. Returns the OSD's response.
    pub async fn call_primary(
        &self,
        pg: PgId,
        make: impl Fn(u64) -> OsdRequest,
    ) -> Result<OsdResponse> {
        let start = Instant::now();
        let opts = &self.inner.opts;
        let mut backoff = Duration::from_millis(10);
        loop {
            let map = self.map();
            let err = match map.pg_primary(pg) {
                None => RpcError::Remote(WireError::Degraded {
                    pg,
                    up: 0,
                    min_size: 1,
                }),
                Some(osd) => match self.call_osd(&map, osd, make(map.epoch)).await {
                    Ok(r) => return Ok(r),
                    Err(e) => e,
                },
            };
            if !err.is_transient() {
                return Err(err.into());
            }
            if start.elapsed() >= opts.op_deadline {
                return Err(ClientError::GaveUp {
                    secs: start.elapsed().as_secs(),
                    last: err,
                });
            }
            tracing::debug!(%pg, error = %err, "retrying");
            let need_map = match &err {
                // The OSD knows a newer map: fetch it at once.
                RpcError::Remote(WireError::StaleEpoch { ours, theirs }) => ours > theirs,
                RpcError::Remote(WireError::NotPrimary { .. }) => true,
                RpcError::Remote(WireError::Degraded { .. }) => true,
                RpcError::Connect { .. }
                | RpcError::Disconnected { .. }
                | RpcError::Timeout { .. } => true,
                _ => false,
            };
            let epoch = map.epoch;
            if need_map {
                // A failed metadata fetch is retried with the operation.
                let _ = self.refresh_map().await;
            }
            if !need_map || self.map().epoch == epoch {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }

    /// One attempt at one OSD.
    pub async fn call_osd(
        &self,
        map: &ClusterMap,
        osd: OsdId,
        req: OsdRequest,
    ) -> std::result::Result<OsdResponse, RpcError> {
        let addr = map.osd_addr(osd).ok_or_else(|| RpcError::Connect {
            addr: osd.to_string(),
            detail: "not in the map".into(),
        })?;
        match self
            .inner
            .rpc
            .call(addr, Request::Osd(req), self.inner.opts.attempt_timeout)
            .await?
        {
            Response::Osd(r) => Ok(r),
            other => Err(RpcError::Remote(WireError::invalid(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }
}

/// What `create_pool` makes.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub name: String,
    pub size: u8,
    pub min_size: u8,
    pub pg_num: u32,
    pub mode: WriteMode,
    pub failure_domain: FailureDomain,
}

impl PoolSpec {
    /// Ceph-like defaults: 3 copies, 2 needed, 64 placement groups, synchronous.
    pub fn new(name: &str) -> PoolSpec {
        PoolSpec {
            name: name.to_string(),
            size: 3,
            min_size: 2,
            pg_num: 64,
            mode: WriteMode::Sync,
            failure_domain: FailureDomain::Osd,
        }
    }
}
