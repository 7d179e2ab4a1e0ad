//! `cairn meta`, `cairn osd` and `cairn server`: run daemons from a TOML file and flags, or a whole
//! local cluster with no configuration at all.

use crate::util::parse_size;
use anyhow::{bail, Context, Result};
use cairn_client::{Cluster, PoolSpec};
use cairn_gateway::daemon::GatewayConfig;
use cairn_metadata::{MetaConfig, MetaNode};
use cairn_osd::{Osd, OsdConfig};
use cairn_proto::msg::{MetaRequest, MetaResponse};
use cairn_proto::NodeId;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct MetaArgs {
    /// TOML configuration (see deploy/meta.toml); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Raft node id of this replica (non-zero).
    #[arg(long)]
    id: Option<NodeId>,
    /// Address to listen on (ip:port).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Initial voters: `1=ip:port,2=ip:port,...` (this replica included).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Start empty and wait to be added with `cairn meta add`.
    #[arg(long)]
    join: bool,
    #[arg(long)]
    osd_down_after_ms: Option<u64>,
    #[arg(long)]
    osd_out_after_ms: Option<u64>,
    #[command(subcommand)]
    action: Option<MetaAction>,
}

#[derive(Subcommand)]
pub enum MetaAction {
    /// Add a running replica (started with --join) to the metadata service.
    Add {
        id: NodeId,
        addr: String,
        /// Metadata service to change (any replica), comma separated.
        #[arg(
            long = "cluster",
            env = "CAIRN_META",
            default_value = "127.0.0.1:7000",
            value_delimiter = ','
        )]
        cluster: Vec<String>,
    },
    /// Remove a replica from the metadata service.
    Remove {
        id: NodeId,
        #[arg(
            long = "cluster",
            env = "CAIRN_META",
            default_value = "127.0.0.1:7000",
            value_delimiter = ','
        )]
        cluster: Vec<String>,
    },
}

#[derive(Args)]
pub struct OsdArgs {
    /// TOML configuration (see deploy/osd.toml); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on (ip:port).
    #[arg(long)]
    listen: Option<String>,
    /// Metadata service addresses, comma separated.
    #[arg(long, env = "CAIRN_META", value_delimiter = ',')]
    meta: Vec<String>,
    /// Host name (failure domain); default: this machine's.
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    weight: Option<f64>,
    /// Capacity limit (e.g. 100G); default: the file system's size.
    #[arg(long)]
    capacity: Option<String>,
    /// Write journal: `file` (DATA/journal; the default), `nvdisk:shm` (memory pool in /dev/shm,
    /// survives kill -9), `nvdisk:sync` (fdatasync'ed nvdisk log, survives power loss) or
    /// `nvdisk:file=/path/pool,size=256M[,sync]`.
    #[arg(long, value_name = "SPEC")]
    journal: Option<String>,
}

#[derive(Args)]
pub struct GatewayArgs {
    /// TOML configuration (see deploy/gateway.toml); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Metadata service addresses, comma separated.
    #[arg(long, env = "CAIRN_META", value_delimiter = ',')]
    meta: Vec<String>,
    /// iSCSI portal address (ip:port); empty disables iSCSI.
    #[arg(long)]
    iscsi: Option<String>,
    /// NFSv3 address (ip:port, NFS and MOUNT on one port); empty disables NFS.
    #[arg(long)]
    nfs: Option<String>,
    /// This gateway's name, which nvdisk volumes record (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Directory of the gateway's local state: nvdisk volumes and LUN cache journals.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write-back cache of cluster-volume LUNs: `off`, `memory`, or `nvdisk:shm` /
    /// `nvdisk:sync` / `nvdisk:shm,sync` [`,size=64M`] (journaled on an nvdisk: acknowledged
    /// writes survive a gateway crash and reach the cluster when it restarts).
    #[arg(long, value_name = "SPEC")]
    lun_cache: Option<String>,
    /// Milliseconds dirty data may wait in a LUN cache.
    #[arg(long)]
    lun_cache_flush_ms: Option<u64>,
    /// S3 HTTP address (ip:port); empty disables S3.
    #[arg(long)]
    s3: Option<String>,
    /// PEM certificate chain: serve S3 over HTTPS (with --s3-tls-key).
    #[arg(long)]
    s3_tls_cert: Option<PathBuf>,
    /// PEM private key for --s3-tls-cert.
    #[arg(long)]
    s3_tls_key: Option<PathBuf>,
    /// Do not run the background migrator (which moves file data into the pools directories
    /// are pinned to; gateways take turns running it).
    #[arg(long)]
    no_migrate: bool,
    /// Seconds the old objects of a moved file keep refusing clients (default 120; keep it
    /// above the 30 s clients trust a file's remembered pool).
    #[arg(long)]
    migrate_grace_secs: Option<u64>,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Directory holding every daemon's data (created if missing).
    #[arg(long, default_value = "cairn-data")]
    data: PathBuf,
    /// Number of metadata replicas.
    #[arg(long = "meta", default_value_t = 3)]
    metas: usize,
    /// Number of OSDs.
    #[arg(long, default_value_t = 3)]
    osds: usize,
    /// IP address every endpoint binds.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// First metadata port (replica i listens on port + i).
    #[arg(long, default_value_t = 7000)]
    meta_port: u16,
    /// First OSD port (OSD i listens on port + i).
    #[arg(long, default_value_t = 7100)]
    osd_port: u16,
    /// iSCSI portal port.
    #[arg(long, default_value_t = 3260)]
    iscsi_port: u16,
    /// NFSv3 port (NFS and MOUNT share it; 0 disables NFS).
    #[arg(long, default_value_t = 2049)]
    nfs_port: u16,
    /// Write-back cache of cluster-volume LUNs (see `cairn gateway --lun-cache`).
    #[arg(long, value_name = "SPEC", default_value = "off")]
    lun_cache: String,
    /// S3 HTTP port (0 disables S3).
    #[arg(long, default_value_t = 9000)]
    s3_port: u16,
    /// PEM certificate chain: serve S3 over HTTPS (with --s3-tls-key).
    #[arg(long)]
    s3_tls_cert: Option<PathBuf>,
    /// PEM private key for --s3-tls-cert.
    #[arg(long)]
    s3_tls_key: Option<PathBuf>,
    /// Replication size of the `default` pool (default: min(3, OSDs)).
    #[arg(long)]
    pool_size: Option<u8>,
    /// Seconds without heartbeats before an OSD is marked down.
    #[arg(long, default_value_t = 6)]
    osd_down_after: u64,
    /// Seconds down before an OSD is marked out and its data re-replicated.
    #[arg(long, default_value_t = 600)]
    osd_out_after: u64,
    /// Write large object data through the page cache instead of with O_DIRECT (see the OSD's
    /// `direct_io` setting; for comparing the two).
    #[arg(long)]
    osd_buffered: bool,
}

fn read_toml<T: serde::de::DeserializeOwned + Default>(path: &Option<PathBuf>) -> Result<T> {
    match path {
        None => Ok(T::default()),
        Some(p) => {
            let s = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str(&s).with_context(|| format!("parse {}", p.display()))
        }
    }
}

fn parse_peers(items: &[String]) -> Result<BTreeMap<NodeId, String>> {
    let mut out = BTreeMap::new();
    for i in items {
        let (id, addr) = i
            .split_once('=')
            .with_context(|| format!("peer must be id=ip:port, got {i:?}"))?;
        let id: NodeId = id
            .parse()
            .with_context(|| format!("bad peer id in {i:?}"))?;
        out.insert(id, addr.to_string());
    }
    Ok(out)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn run_meta(args: MetaArgs) -> Result<()> {
    if let Some(action) = args.action {
        let (cluster, req) = match action {
            MetaAction::Add { id, addr, cluster } => (cluster, MetaRequest::AddMember { id, addr }),
            MetaAction::Remove { id, cluster } => (cluster, MetaRequest::RemoveMember { id }),
        };
        let mc =
            cairn_proto::meta_client::MetaClient::new(cairn_proto::rpc::RpcClient::new(), cluster);
        match mc.call(req).await? {
            MetaResponse::Done | MetaResponse::Applied(_) => {
                println!("done");
                return Ok(());
            }
            other => bail!("unexpected reply {other:?}"),
        }
    }
    let mut cfg: MetaConfig = read_toml(&args.config)?;
    if let Some(id) = args.id {
        cfg.id = id;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    if !args.peers.is_empty() {
        cfg.peers = parse_peers(&args.peers)?;
    }
    if args.join {
        cfg.join = true;
    }
    if let Some(v) = args.osd_down_after_ms {
        cfg.osd_down_after_ms = v;
    }
    if let Some(v) = args.osd_out_after_ms {
        cfg.osd_out_after_ms = v;
    }
    cfg.validate()?;
    let node = MetaNode::start(cfg).await?;
    tracing::info!(addr = %node.addr(), "metadata replica serving");
    shutdown_signal().await;
    node.stop().await?;
    Ok(())
}

pub async fn run_osd(args: OsdArgs) -> Result<()> {
    let mut cfg: OsdConfig = read_toml(&args.config)?;
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if !args.meta.is_empty() {
        cfg.meta = args.meta;
    }
    if let Some(h) = args.host {
        cfg.host = h;
    }
    if let Some(w) = args.weight {
        cfg.weight = w;
    }
    if let Some(c) = args.capacity {
        cfg.capacity = parse_size(&c)?;
    }
    if let Some(j) = args.journal {
        cfg.journal = j.parse()?;
    }
    cfg.validate()?;
    let osd = Osd::start(cfg).await?;
    tracing::info!(id = %osd.id(), addr = %osd.addr(), "osd serving");
    shutdown_signal().await;
    osd.stop().await;
    Ok(())
}

pub async fn run_gateway(args: GatewayArgs) -> Result<()> {
    let mut cfg: GatewayConfig = read_toml(&args.config)?;
    if !args.meta.is_empty() {
        cfg.meta = args.meta;
    }
    if let Some(i) = args.iscsi {
        cfg.iscsi_listen = i;
    }
    if let Some(n) = args.nfs {
        cfg.nfs_listen = n;
    }
    if let Some(n) = args.name {
        cfg.name = n;
    }
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    if let Some(c) = args.lun_cache {
        cfg.lun_cache = c.parse()?;
    }
    if let Some(ms) = args.lun_cache_flush_ms {
        cfg.lun_cache_flush_ms = ms;
    }
    if let Some(a) = args.s3 {
        cfg.s3_listen = a;
    }
    if args.s3_tls_cert.is_some() || args.s3_tls_key.is_some() {
        cfg.s3.tls_cert = args.s3_tls_cert;
        cfg.s3.tls_key = args.s3_tls_key;
    }
    if args.no_migrate {
        cfg.migrate = false;
    }
    if let Some(g) = args.migrate_grace_secs {
        cfg.migrate_grace_secs = g;
    }
    let gw = cairn_gateway::daemon::start(cfg).await?;
    if let Some(a) = gw.iscsi_addr {
        tracing::info!(addr = %a, "iSCSI portal serving");
        println!("iscsi     iscsi://{a}");
    }
    if let Some(p) = gw.nfs_port {
        println!("nfs       port {p} (NFSv3 and MOUNT)");
    }
    if let Some(a) = gw.s3_addr {
        let scheme = if gw.s3_tls { "https" } else { "http" };
        println!("s3        {scheme}://{a}");
    }
    shutdown_signal().await;
    gw.stop().await?;
    Ok(())
}

/// The `admin` S3 user's first key, made on the cluster's first start.
async fn admin_key(cluster: &Cluster) -> Result<(String, String)> {
    let db = crate::user::users(cluster).await?;
    if let Some(k) = db.users.get("admin").and_then(|u| u.keys.first()) {
        return Ok((k.access_key.clone(), k.secret.clone()));
    }
    if !db.users.contains_key("admin") {
        cluster
            .meta()
            .command(cairn_proto::msg::MetaCommand::User(
                cairn_proto::user::UserCommand::CreateUser {
                    name: "admin".into(),
                    admin: true,
                },
            ))
            .await
            .context("create the S3 admin user")?;
    }
    crate::user::add_key(cluster, "admin").await
}

pub async fn run_server(args: ServerArgs) -> Result<()> {
    if args.metas == 0 || args.osds == 0 {
        bail!("--meta and --osds must be at least 1");
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("create {}", args.data.display()))?;
    let data = args.data.canonicalize()?;
    let peers: BTreeMap<NodeId, String> = (0..args.metas)
        .map(|i| {
            (
                i as NodeId + 1,
                format!("{}:{}", args.bind, args.meta_port as usize + i),
            )
        })
        .collect();
    let mut metas = Vec::new();
    for (id, addr) in &peers {
        let cfg = MetaConfig {
            id: *id,
            listen: addr.clone(),
            data_dir: data.join(format!("meta.{id}")),
            peers: peers.clone(),
            osd_down_after_ms: args.osd_down_after * 1000,
            osd_out_after_ms: args.osd_out_after * 1000,
            ..MetaConfig::default()
        };
        cfg.validate()?;
        metas.push(
            MetaNode::start(cfg)
                .await
                .with_context(|| format!("start metadata replica {id} on {addr}"))?,
        );
    }
    let meta_addrs: Vec<String> = peers.values().cloned().collect();
    let host = hostname();
    let mut osds = Vec::new();
    for i in 0..args.osds {
        let addr = format!("{}:{}", args.bind, args.osd_port as usize + i);
        let cfg = OsdConfig {
            data_dir: data.join(format!("osd.{i}")),
            listen: addr.clone(),
            meta: meta_addrs.clone(),
            host: host.clone(),
            direct_io: !args.osd_buffered,
            ..OsdConfig::default()
        };
        cfg.validate()?;
        osds.push(
            Osd::start(cfg)
                .await
                .with_context(|| format!("start osd {i} on {addr}"))?,
        );
    }
    let cluster = Cluster::connect(meta_addrs.clone()).await?;
    if cluster.pool("default").await.is_err() {
        let mut spec = PoolSpec::new("default");
        spec.size = args.pool_size.unwrap_or(args.osds.min(3) as u8);
        spec.min_size = if spec.size >= 3 { 2 } else { 1 };
        cluster
            .create_pool(spec)
            .await
            .context("create the default pool")?;
    }
    let gw = cairn_gateway::daemon::start(GatewayConfig {
        meta: meta_addrs.clone(),
        iscsi_listen: format!("{}:{}", args.bind, args.iscsi_port),
        nfs_listen: if args.nfs_port == 0 {
            String::new()
        } else {
            format!("{}:{}", args.bind, args.nfs_port)
        },
        s3_listen: if args.s3_port == 0 {
            String::new()
        } else {
            format!("{}:{}", args.bind, args.s3_port)
        },
        s3: cairn_s3::S3Options {
            tls_cert: args.s3_tls_cert.clone(),
            tls_key: args.s3_tls_key.clone(),
            ..Default::default()
        },
        data_dir: data.join("gateway"),
        lun_cache: args.lun_cache.parse()?,
        ..GatewayConfig::default()
    })
    .await
    .context("start the gateway")?;
    println!("cairn cluster running; data under {}", data.display());
    println!("  metadata  {}", meta_addrs.join(" "));
    for o in &osds {
        println!("  {:<9} {}", o.id().to_string(), o.addr());
    }
    println!("  pool      default");
    if let Some(a) = gw.iscsi_addr {
        println!("  iscsi     iscsi://{a}  (cairn vol create, cairn iscsi target/lun ...)");
    }
    if let Some(p) = gw.nfs_port {
        println!(
            "  nfs       nfs://{}/?version=3&nfsport={p}&mountport={p}  (mount -t nfs -o vers=3,proto=tcp,port={p},mountport={p},nolock {}:/ DIR)",
            args.bind, args.bind
        );
    }
    if let Some(a) = gw.s3_addr {
        let (ak, sk) = admin_key(&cluster).await?;
        let scheme = if gw.s3_tls { "https" } else { "http" };
        println!("  s3        {scheme}://{a}  (user admin: access key {ak}, secret key {sk})");
    }
    println!("try: cairn status --meta {}", meta_addrs.join(","));
    println!("Ctrl-C stops the cluster.");
    shutdown_signal().await;
    eprintln!("stopping...");
    let mut failed = Vec::new();
    if let Err(e) = gw.stop().await {
        failed.push(format!("gateway: {e}"));
    }
    for o in osds {
        o.stop().await;
    }
    for m in metas {
        if let Err(e) = m.stop().await {
            failed.push(format!("metadata: {e}"));
        }
    }
    if !failed.is_empty() {
        bail!("unclean stop: {}", failed.join("; "));
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples in deploy/ are documentation users copy: they must parse and validate.
    #[test]
    fn deploy_examples_parse() {
        let m: MetaConfig = toml::from_str(include_str!("../../deploy/meta.toml")).unwrap();
        m.validate().unwrap();
        assert_eq!(m.peers.len(), 3);
        let o: OsdConfig = toml::from_str(include_str!("../../deploy/osd.toml")).unwrap();
        o.validate().unwrap();
        let g: GatewayConfig = toml::from_str(include_str!("../../deploy/gateway.toml")).unwrap();
        g.validate().unwrap();
        assert_eq!(g.iscsi.max_clients, 256);
        assert_eq!(g.s3.domains, ["s3.example.com"]);
        assert_eq!(g.s3_listen, "0.0.0.0:9000");
    }

    #[test]
    fn peers_parse() {
        let p = parse_peers(&["1=a:1".into(), "2=b:2".into()]).unwrap();
        assert_eq!(p.get(&2).map(String::as_str), Some("b:2"));
        assert!(parse_peers(&["x=a:1".into()]).is_err());
        assert!(parse_peers(&["1".into()]).is_err());
    }
}
