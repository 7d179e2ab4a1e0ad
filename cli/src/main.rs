//! The `cairn` command: every daemon and every tool in one binary. `main` parses the command
//! line (clap) and hands each subcommand to its module:
//!
//! ```text
//!  cairn server | meta | osd | gateway ──> daemons   cairn-metadata, cairn-osd, cairn-gateway
//!  cairn mount                         ──> mount     cairn-fuse
//!  cairn nfs                           ──> nfs       cairn-nfs
//!  cairn status                        ──> status
//!  cairn obj | pool                    ──> obj       cairn-client's PoolIo
//!  cairn vol | iscsi                   ──> vol       volumes, targets, LUNs, CHAP
//!  cairn fs                            ──> fs        pins, stat, migrate by namespace path
//!  cairn user | key | bucket           ──> user      S3 users, keys, bucket permissions
//!  cairn bench obj | s3                ──> bench, bench_s3
//! ```
//!
//! `util` holds the helpers the subcommands share.

mod bench;
mod bench_s3;
mod daemons;
mod fs;
mod mount;
mod nfs;
mod obj;
mod status;
mod user;
mod util;
mod vol;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn", version, about = "cairn: a scale-out storage cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the metadata service is.
#[derive(Args, Clone)]
pub struct MetaAddrs {
    /// Metadata service addresses (any of the replicas), comma separated.
    #[arg(
        long = "meta",
        global = true,
        env = "CAIRN_META",
        default_value = "127.0.0.1:7000",
        value_delimiter = ','
    )]
    pub addrs: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole local cluster (metadata replicas and OSDs) with no configuration.
    Server(daemons::ServerArgs),
    /// Run one metadata replica, or change the replica set (`cairn meta add|remove`).
    Meta(daemons::MetaArgs),
    /// Run one object storage device.
    Osd(daemons::OsdArgs),
    /// Run a gateway (iSCSI target, S3 API, NFS export) on the cluster.
    Gateway(daemons::GatewayArgs),
    /// Print the cluster map: metadata leader and members, OSDs, pools and placement-group states.
    Status {
        #[command(flatten)]
        meta: MetaAddrs,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Object API: put/get/stat/rm/ls/set/query objects by 128-bit id or name.
    Obj {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: obj::ObjCmd,
    },
    /// Pools: create and list.
    Pool {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: obj::PoolCmd,
    },
    /// Block volumes: create, ls, resize, rm.
    Vol {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: vol::VolCmd,
    },
    /// iSCSI targets, LUNs and CHAP.
    Iscsi {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: vol::IscsiCmd,
    },
    /// Mount the uniform namespace with FUSE (until unmounted, Ctrl-C or SIGTERM).
    Mount {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(flatten)]
        args: mount::MountArgs,
    },
    /// Export the uniform namespace over NFSv3 (NFS and MOUNT on one port).
    Nfs {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(flatten)]
        args: nfs::NfsArgs,
    },
    /// Namespace administration: pin a directory to a pool, stat a path.
    Fs {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: fs::FsCmd,
    },
    /// S3 users: create (with a first access key), ls, rm.
    User {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: user::UserCmd,
    },
    /// S3 access keys: create, rm.
    Key {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: user::KeyCmd,
    },
    /// S3 bucket permissions: ls, allow, revoke, public, chown.
    Bucket {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: user::BucketCmd,
    },
    /// Benchmarks: `cairn bench obj` measures the object API beside the disk.
    Bench {
        #[command(flatten)]
        meta: MetaAddrs,
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

fn main() {
    let cli = Cli::parse();
    util::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: Result<()> = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(a) => daemons::run_server(a).await,
            Cmd::Meta(a) => daemons::run_meta(a).await,
            Cmd::Osd(a) => daemons::run_osd(a).await,
            Cmd::Gateway(a) => daemons::run_gateway(a).await,
            Cmd::Vol { meta, cmd } => vol::run_vol(meta.addrs, cmd).await,
            Cmd::Iscsi { meta, cmd } => vol::run_iscsi(meta.addrs, cmd).await,
            Cmd::Status { meta, json } => status::run(meta.addrs, json).await,
            Cmd::Obj { meta, cmd } => obj::run(meta.addrs, cmd).await,
            Cmd::Pool { meta, cmd } => obj::run_pool(meta.addrs, cmd).await,
            Cmd::Mount { meta, args } => mount::run_mount(meta.addrs, args).await,
            Cmd::Nfs { meta, args } => nfs::run_nfs(meta.addrs, args).await,
            Cmd::Bench { meta, cmd } => bench::run(meta.addrs, cmd).await,
            Cmd::Fs { meta, cmd } => fs::run(meta.addrs, cmd).await,
            Cmd::User { meta, cmd } => user::run_user(meta.addrs, cmd).await,
            Cmd::Key { meta, cmd } => user::run_key(meta.addrs, cmd).await,
            Cmd::Bucket { meta, cmd } => user::run_bucket(meta.addrs, cmd).await,
        }
    });
    if let Err(e) = result {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
}
