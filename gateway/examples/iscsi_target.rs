//! Serves one LUN over iSCSI for scripts and benchmarks.
//!
//! Usage: iscsi_target [--port P] [--size-mib N] [--file PATH] [--block-size B]
//!                     [--iqn IQN] [--chap USER:SECRET] [--mutual USER:SECRET]
//! Prints `iscsi://127.0.0.1:P/IQN/0` once listening; stops on SIGINT or SIGTERM.

use std::sync::Arc;

use cairn_gateway::{
    serve, BlockDevice, ChapConfig, ChapCredentials, FileDevice, InMemoryRegistry, IscsiOptions,
    MemDevice, TargetConfig,
};

fn creds(v: &str) -> ChapCredentials {
    let (user, secret) = v.split_once(':').unwrap_or((v, ""));
    ChapCredentials {
        user: user.to_string(),
        secret: secret.to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut port = 3260u16;
    let mut size_mib = 128u64;
    let mut file: Option<String> = None;
    let mut block_size = 512u32;
    let mut iqn = "iqn.2024-01.io.cairn:target0".to_string();
    let mut chap = ChapConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--port" => port = val()?.parse()?,
            "--size-mib" => size_mib = val()?.parse()?,
            "--file" => file = Some(val()?),
            "--block-size" => block_size = val()?.parse()?,
            "--iqn" => iqn = val()?,
            "--chap" => chap.initiator = Some(creds(&val()?)),
            "--mutual" => chap.target = Some(creds(&val()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let size = size_mib << 20;
    let dev: Arc<dyn BlockDevice> = match &file {
        Some(p) => Arc::new(FileDevice::open(
            p.as_ref(),
            size,
            block_size,
            "cairn-file-0",
        )?),
        None => Arc::new(MemDevice::new(size, block_size, "cairn-mem-0")),
    };
    let registry = Arc::new(InMemoryRegistry::new());
    registry.add_target(TargetConfig::new(&iqn).with_lun(0, dev).with_chap(chap));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    println!("iscsi://127.0.0.1:{port}/{iqn}/0");
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        let _ = tx.send(true);
    });
    serve(listener, registry, IscsiOptions::default(), rx).await?;
    Ok(())
}
