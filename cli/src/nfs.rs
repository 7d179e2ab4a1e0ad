//! `cairn nfs [--bind IP:PORT]`: export the uniform namespace over NFSv3. NFS and MOUNT share
//! the one port and nothing registers with a portmapper, so clients name the port (Linux:
//! `mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,nolock HOST:/ DIR`; libnfs:
//! `nfs://HOST/?version=3&nfsport=P&mountport=P`).

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::watch;

#[derive(Args, Clone, Debug)]
pub struct NfsArgs {
    /// Address to serve NFSv3 and MOUNT on.
    #[arg(long, default_value = "0.0.0.0:2049")]
    pub bind: String,
}

/// Serve until SIGINT or SIGTERM.
pub async fn run_nfs(meta: Vec<String>, args: NfsArgs) -> Result<()> {
    let cluster = crate::util::connect(meta).await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::mount::signalled().await;
        let _ = tx.send(true);
    });
    cairn_nfs::serve_nfs(cluster, &args.bind, rx, |port| {
        println!("nfs: serving NFSv3 and MOUNT on port {port}");
    })
    .await
    .with_context(|| format!("NFS export on {}", args.bind))
}
