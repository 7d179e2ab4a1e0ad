//! An in-process metadata cluster on 127.0.0.1: each replica on its own ephemeral port and temp dir.

use cairn_metadata::{MetaConfig, MetaHandle, MetaNode, NodeInfo};
use cairn_proto::meta_client::MetaClient;
use cairn_proto::msg::{MetaCommand, MetaRequest, MetaResponse, Request, Response};
use cairn_proto::rpc::{RpcClient, RpcError};
use cairn_proto::{ClusterMap, NodeId, WireError};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Upper bound for any one test.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cfgs: BTreeMap<NodeId, MetaConfig>,
    pub nodes: BTreeMap<NodeId, MetaHandle>,
    /// Where clients and other replicas reach each replica: its listener, or its proxy.
    pub addrs: BTreeMap<NodeId, String>,
    pub proxies: BTreeMap<NodeId, Proxy>,
    pub rpc: RpcClient,
}

/// A TCP proxy in front of one replica that can cut it off: while cut, connections through it
/// are closed and new ones are closed on arrival.
pub struct Proxy {
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> (Proxy, String) {
        let (l, addr) = bind_any().await;
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        (Proxy { cut }, addr)
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

pub fn base_config() -> MetaConfig {
    MetaConfig {
        tick_ms: 50,
        election_ticks: 10,
        heartbeat_ticks: 2,
        ..MetaConfig::default()
    }
}

async fn bind_any() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

impl Cluster {
    /// Start `n` replicas (ids 1..=n) as a new cluster; `tweak` adjusts each config.
    pub async fn start(n: u64, tweak: impl Fn(&mut MetaConfig)) -> Cluster {
        Cluster::start_with(n, false, tweak).await
    }

    /// Like [`Cluster::start`]; with `proxied`, every replica is reached through a [`Proxy`].
    pub async fn start_with(n: u64, proxied: bool, tweak: impl Fn(&mut MetaConfig)) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = BTreeMap::new();
        let mut peers = BTreeMap::new();
        let mut proxies = BTreeMap::new();
        for id in 1..=n {
            let (l, a) = bind_any().await;
            listeners.insert(id, (l, a.clone()));
            if proxied {
                let (p, pa) = Proxy::start(a).await;
                proxies.insert(id, p);
                peers.insert(id, pa);
            } else {
                peers.insert(id, a);
            }
        }
        let mut c = Cluster {
            dir,
            cfgs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            addrs: peers.clone(),
            proxies,
            rpc: RpcClient::new(),
        };
        for (id, (l, listen)) in listeners {
            let mut cfg = base_config();
            cfg.id = id;
            cfg.listen = listen;
            cfg.data_dir = c.dir.path().join(format!("m{id}"));
            cfg.peers = peers.clone();
            tweak(&mut cfg);
            c.cfgs.insert(id, cfg.clone());
            c.nodes
                .insert(id, MetaNode::start_on(cfg, l).await.unwrap());
        }
        c
    }

    /// Start a replica that joins empty (no peers); it is not a member until `AddMember`.
    pub async fn start_joiner(&mut self, id: NodeId, tweak: impl Fn(&mut MetaConfig)) -> String {
        let (l, a) = bind_any().await;
        let mut cfg = base_config();
        cfg.id = id;
        cfg.listen = a.clone();
        cfg.data_dir = self.dir.path().join(format!("m{id}"));
        cfg.join = true;
        tweak(&mut cfg);
        self.cfgs.insert(id, cfg.clone());
        self.addrs.insert(id, a.clone());
        self.nodes
            .insert(id, MetaNode::start_on(cfg, l).await.unwrap());
        a
    }

    pub fn addr(&self, id: NodeId) -> String {
        self.addrs[&id].clone()
    }

    pub fn client(&self) -> MetaClient {
        MetaClient::new(self.rpc.clone(), self.addrs.values().cloned().collect())
    }

    /// Cut a proxied replica off from everyone (or reconnect it).
    pub fn cut(&self, id: NodeId, cut: bool) {
        self.proxies[&id].set_cut(cut);
    }

    pub fn info(&self, id: NodeId) -> NodeInfo {
        self.nodes[&id].info()
    }

    pub async fn stop(&mut self, id: NodeId) {
        let h = self.nodes.remove(&id).expect("running replica");
        h.stop().await.unwrap();
    }

    /// Restart a stopped replica from its directory on its old address.
    pub async fn restart(&mut self, id: NodeId) {
        let cfg = self.cfgs[&id].clone();
        let l = TcpListener::bind(&cfg.listen).await.unwrap();
        self.nodes
            .insert(id, MetaNode::start_on(cfg, l).await.unwrap());
    }

    /// Wait until one running replica leads and every running member agrees on it.
    pub async fn wait_leader(&self, within: Duration) -> NodeId {
        wait_for(within, "a leader every replica agrees on", || async {
            let infos: Vec<NodeInfo> = self
                .nodes
                .values()
                .map(|h| h.info())
                .filter(|i| !i.removed && i.members.contains_key(&i.id))
                .collect();
            let leader = infos.iter().find(|i| i.is_leader)?.id;
            infos
                .iter()
                .all(|i| i.leader == Some(leader))
                .then_some(leader)
        })
        .await
    }

    /// Wait until every running member has applied the same map as `reference`.
    pub async fn wait_converged(&self, reference: &ClusterMap, within: Duration) {
        let want = strip(reference);
        wait_for(within, "replicas to converge on the map", || async {
            self.nodes
                .values()
                .filter(|h| !h.info().removed)
                .all(|h| *h.map() == want)
                .then_some(())
        })
        .await
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    pub async fn call(&self, id: NodeId, req: MetaRequest) -> Result<MetaResponse, RpcError> {
        match self
            .rpc
            .call(&self.addr(id), Request::Meta(req), Duration::from_secs(10))
            .await?
        {
            Response::Meta(r) => Ok(r),
            other => Err(RpcError::Remote(WireError::invalid(format!("{other:?}")))),
        }
    }
}

/// The map without the fields that are not replicated.
pub fn strip(m: &ClusterMap) -> ClusterMap {
    ClusterMap {
        meta_leader: None,
        ..m.clone()
    }
}

/// Poll `check` until it yields a value; panic naming `what` after `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn pool(name: &str) -> MetaCommand {
    MetaCommand::CreatePool {
        name: name.into(),
        size: 3,
        min_size: 2,
        pg_num: 32,
        mode: Default::default(),
        failure_domain: Default::default(),
    }
}

pub fn boot(addr: &str) -> MetaCommand {
    MetaCommand::OsdBoot {
        id: None,
        addr: addr.into(),
        host: "host-a".into(),
        weight: 1.0,
        capacity: 1 << 30,
    }
}
