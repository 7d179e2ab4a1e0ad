//! Serves one LUN over iSCSI for scripts and benchmarks.
//!
//! Usage: iscsi_target [--port P] [--size-mib N] [--file PATH] [--block-size B]
//!                     [--physical-block-size B (memory LUN only)]
//!                     [--iqn IQN] [--chap USER:SECRET] [--mutual USER:SECRET]
//!                     [--sanitize-bytes-per-sec N] [--cache]
//!                     [--nvdisk DIR [--nvdisk-mode anon|shm|sync|shm-sync]]
//! `--cache` puts a write-back cache in front of the LUN (WCE=1: writes are acknowledged from
//! memory until FUA or SYNCHRONIZE CACHE; everything is flushed on SIGINT / SIGTERM).
//! `--nvdisk DIR` serves an nvdisk of the LUN's size instead, its backups and logs in DIR (on the
//! disk under test), its pool per `--nvdisk-mode` (default sync: every acknowledged write is in
//! an fdatasync'ed log; shm pools go to /dev/shm and are removed on exit).
//! Prints `iscsi://127.0.0.1:P/IQN/0` once listening; stops on SIGINT or SIGTERM.

use std::sync::Arc;

use cairn_gateway::nvdisk::{shm_pool_path, NvDiskDevice};
use cairn_gateway::{CacheConfig, WriteBackCache};
use cairn_iscsi::{
    serve, BlockDevice, ChapConfig, ChapCredentials, FileDevice, InMemoryRegistry, IscsiOptions,
    MemDevice, TargetConfig,
};
use cairn_nvdisk::{Config as NvConfig, NvDisk, PoolMode};
use cairn_proto::volume::NvDiskMode;

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
    let mut physical_block_size: Option<u32> = None;
    let mut iqn = "iqn.2024-01.io.cairn:target0".to_string();
    let mut chap = ChapConfig::default();
    let mut opts = IscsiOptions::default();
    let mut cache = false;
    let mut nvdisk: Option<std::path::PathBuf> = None;
    let mut nvmode = NvDiskMode::Sync;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--port" => port = val()?.parse()?,
            "--size-mib" => size_mib = val()?.parse()?,
            "--file" => file = Some(val()?),
            "--block-size" => block_size = val()?.parse()?,
            "--physical-block-size" => physical_block_size = Some(val()?.parse()?),
            "--iqn" => iqn = val()?,
            "--chap" => chap.initiator = Some(creds(&val()?)),
            "--mutual" => chap.target = Some(creds(&val()?)),
            "--sanitize-bytes-per-sec" => opts.sanitize_bytes_per_sec = val()?.parse()?,
            "--cache" => cache = true,
            "--nvdisk" => nvdisk = Some(val()?.into()),
            "--nvdisk-mode" => nvmode = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let size = size_mib << 20;
    let mut shm_pool = None;
    let dev: Arc<dyn BlockDevice> = match (&nvdisk, &file) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir)?;
            let dir = dir.canonicalize()?;
            let pool = match nvmode {
                NvDiskMode::Anon | NvDiskMode::Sync => PoolMode::Anon,
                NvDiskMode::Shm | NvDiskMode::ShmSync => {
                    let p = shm_pool_path("cairn-bench", &dir);
                    shm_pool = Some(p.clone());
                    PoolMode::File(p)
                }
            };
            let cfg = NvConfig {
                pool,
                size,
                page_size: 4096,
                backup_dir: dir,
                sync: matches!(nvmode, NvDiskMode::Sync | NvDiskMode::ShmSync),
                ..NvConfig::default()
            };
            let disk = Arc::new(NvDisk::open(cfg)?);
            Arc::new(NvDiskDevice::new(disk, block_size, "cairn-nv-0")?)
        }
        (None, Some(p)) => Arc::new(FileDevice::open(
            p.as_ref(),
            size,
            block_size,
            "cairn-file-0",
        )?),
        (None, None) => Arc::new(
            MemDevice::new(size, block_size, "cairn-mem-0")
                .with_physical_block_size(physical_block_size.unwrap_or(block_size)),
        ),
    };
    let dev: Arc<dyn BlockDevice> = if cache {
        Arc::new(WriteBackCache::new(dev, CacheConfig::default()))
    } else {
        dev
    };
    let registry = Arc::new(InMemoryRegistry::new());
    registry.add_target(
        TargetConfig::new(&iqn)
            .with_lun(0, Arc::clone(&dev))
            .with_chap(chap),
    );
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
    serve(listener, registry, opts, rx).await?;
    dev.flush().await?;
    drop(dev);
    if let Some(p) = shm_pool {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
