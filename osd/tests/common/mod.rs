//! Test harness: a real metadata service (one raft replica), OSDs in-process, and a small
//! client that routes requests to placement-group primaries and retries through map changes.

use bytes::Bytes;
use cairn_metadata::{MetaConfig, MetaHandle, MetaNode};
use cairn_osd::{Osd, OsdConfig, OsdHandle};
use cairn_proto::map::{FailureDomain, WriteMode};
use cairn_proto::meta_client::MetaClient;
use cairn_proto::msg::{MetaCommand, MetaResult, OsdRequest, OsdResponse, Request, Response};
use cairn_proto::rpc::{RpcClient, RpcError};
use cairn_proto::{ClusterMap, ObjOp, Oid, OsdId, PgState, PoolId, WireError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct MetaService {
    pub addr: String,
    handle: MetaHandle,
}

/// A one-replica metadata service that marks silent OSDs down after `down_after`.
pub async fn start_meta(dir: PathBuf, down_after: Duration) -> MetaService {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cfg = MetaConfig {
        id: 1,
        listen: addr.clone(),
        data_dir: dir,
        peers: BTreeMap::from([(1, addr.clone())]),
        tick_ms: 50,
        osd_down_after_ms: down_after.as_millis() as u64,
        ..MetaConfig::default()
    };
    let handle = MetaNode::start_on(cfg, l).await.unwrap();
    MetaService { addr, handle }
}

// ------------------------------------------------------------------ cluster

pub struct Cluster {
    pub meta: MetaService,
    pub mc: MetaClient,
    pub rpc: RpcClient,
    pub osds: Vec<Option<OsdHandle>>,
    pub dirs: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

pub fn osd_config(dir: PathBuf, meta: &str) -> OsdConfig {
    OsdConfig {
        data_dir: dir,
        listen: "127.0.0.1:0".into(),
        meta: vec![meta.to_string()],
        heartbeat_ms: 200,
        scrub_interval_ms: 0,
        recovery_bytes_per_sec: 0,
        checkpoint_interval_ms: 1000,
        peer_timeout_ms: 2000,
        down_wait_ms: 20000,
        capacity: 1 << 40,
        ..Default::default()
    }
}

impl Cluster {
    /// `n` OSDs; `tweak` adjusts each OSD's config.
    pub async fn start(n: usize, tweak: impl Fn(&mut OsdConfig)) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let meta = start_meta(tmp.path().join("meta"), Duration::from_millis(1500)).await;
        let rpc = RpcClient::new();
        let mc = MetaClient::new(rpc.clone(), vec![meta.addr.clone()]);
        let mut c = Cluster {
            meta,
            mc,
            rpc,
            osds: Vec::new(),
            dirs: Vec::new(),
            _tmp: tmp,
        };
        for i in 0..n {
            let dir = c._tmp.path().join(format!("osd{i}"));
            c.dirs.push(dir.clone());
            let mut cfg = osd_config(dir, &c.meta.addr);
            tweak(&mut cfg);
            c.osds.push(Some(Osd::start(cfg).await.unwrap()));
        }
        c
    }

    pub async fn restart(&mut self, i: usize, tweak: impl Fn(&mut OsdConfig)) {
        let mut cfg = osd_config(self.dirs[i].clone(), &self.meta.addr);
        tweak(&mut cfg);
        self.osds[i] = Some(Osd::start(cfg).await.unwrap());
    }

    pub fn osd(&self, i: usize) -> &OsdHandle {
        self.osds[i].as_ref().expect("osd running")
    }

    /// The handle of the OSD with this id.
    pub fn by_id(&self, id: OsdId) -> Option<&OsdHandle> {
        self.osds.iter().flatten().find(|h| h.id() == id)
    }

    pub async fn create_pool(
        &self,
        name: &str,
        size: u8,
        min_size: u8,
        pg_num: u32,
        mode: WriteMode,
    ) -> PoolId {
        match self
            .mc
            .command(MetaCommand::CreatePool {
                name: name.into(),
                size,
                min_size,
                pg_num,
                mode,
                failure_domain: FailureDomain::Osd,
            })
            .await
            .unwrap()
        {
            MetaResult::Pool(p) => p,
            other => panic!("{other:?}"),
        }
    }

    pub async fn map(&self) -> ClusterMap {
        self.mc.get_map().await.unwrap()
    }

    /// Wait until every PG of every pool is active+clean on its primary (per the OSDs' own
    /// reports) under the current map.
    pub async fn wait_clean(&self) {
        self.wait_states(|s| s == PgState::ActiveClean).await
    }

    pub async fn wait_states(&self, ok: impl Fn(PgState) -> bool) {
        let start = Instant::now();
        loop {
            let map = self.map().await;
            let mut all = true;
            for pool in map.pools.values() {
                for pg in pool.pgs() {
                    let state = map
                        .pg_primary(pg)
                        .and_then(|p| self.by_id(p))
                        .filter(|h| h.epoch() == map.epoch)
                        .and_then(|h| h.pg_states().into_iter().find(|(p, _)| *p == pg))
                        .map(|(_, s)| s);
                    if !state.is_some_and(&ok) {
                        all = false;
                    }
                }
            }
            if all {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "PGs did not settle");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Send an object request to the primary, retrying retryable errors until the deadline.
    pub async fn call(
        &self,
        pool: PoolId,
        oid: Oid,
        mk: impl Fn(u64) -> OsdRequest,
    ) -> Result<OsdResponse, WireError> {
        let start = Instant::now();
        loop {
            let map = self.map().await;
            let pg = map.pools[&pool].pg_of(oid);
            let err = match map.pg_primary(pg).and_then(|p| map.osd_addr(p)) {
                None => WireError::Degraded {
                    pg,
                    up: 0,
                    min_size: 1,
                },
                Some(addr) => {
                    match self
                        .rpc
                        .call(addr, Request::Osd(mk(map.epoch)), Duration::from_secs(30))
                        .await
                    {
                        Ok(Response::Osd(r)) => return Ok(r),
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(RpcError::Remote(e)) if !e.is_retryable() => return Err(e),
                        Err(RpcError::Remote(e)) => e,
                        Err(e) => WireError::Io {
                            detail: e.to_string(),
                        },
                    }
                }
            };
            if start.elapsed() > DEADLINE {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn mutate(&self, pool: PoolId, oid: Oid, op: ObjOp) -> Result<u64, WireError> {
        match self
            .call(pool, oid, |epoch| OsdRequest::Mutate {
                epoch,
                pool,
                oid,
                op: op.clone(),
                fence: None,
            })
            .await?
        {
            OsdResponse::Mutated { version } => Ok(version),
            other => panic!("{other:?}"),
        }
    }

    pub async fn put(&self, pool: PoolId, oid: Oid, data: &[u8]) -> Result<u64, WireError> {
        self.mutate(
            pool,
            oid,
            ObjOp::WriteFull {
                data: Bytes::copy_from_slice(data),
            },
        )
        .await
    }

    pub async fn read(
        &self,
        pool: PoolId,
        oid: Oid,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, WireError> {
        match self
            .call(pool, oid, |epoch| OsdRequest::Read {
                epoch,
                pool,
                oid,
                offset,
                len,
                fence: None,
            })
            .await?
        {
            OsdResponse::Data(d) => Ok(d),
            other => panic!("{other:?}"),
        }
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(h) = self.osds[i].take() {
            h.stop().await;
        }
    }

    pub async fn kill(&mut self, i: usize) {
        if let Some(h) = self.osds[i].take() {
            h.kill().await;
        }
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.osds.len() {
            self.stop(i).await;
        }
        self.meta.handle.stop().await.unwrap();
    }
}

/// Wait for a condition, polling.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deterministic content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Data files of one OSD (`store/objects/*/*`).
pub fn data_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(subs) = std::fs::read_dir(dir.join("store/objects")) else {
        return out;
    };
    for sub in subs {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

pub fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}
