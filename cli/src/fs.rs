//! `cairn fs`: namespace administration by namespace path (`/dir/file`, as S3 and NFS see it,
//! not a local mount path): pin a directory to a pool, and show where a file's data lives.

use anyhow::{bail, Context, Result};
use cairn_client::FsClient;
use cairn_proto::fs::{FileKind, NsOp, NsResult};
use clap::Subcommand;

use crate::util::connect;

#[derive(Subcommand)]
pub enum FsCmd {
    /// Pin a directory to a pool: files created below it from now on (down to the next pinned
    /// directory) keep their data there. Existing files stay where they are.
    Pin { path: String, pool: String },
    /// Remove a directory's pin: new files below it inherit from its parent again.
    Unpin { path: String },
    /// Show an inode's kind, size and the pool its data (file) or new files (directory) use.
    Stat { path: String },
}

pub async fn run(meta: Vec<String>, cmd: FsCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    let fs = FsClient::new(cluster.clone());
    let dir_of = |path: &str| {
        if !path.starts_with('/') {
            bail!("{path:?}: give a namespace path starting with '/' (the root of every mount)");
        }
        Ok(())
    };
    match cmd {
        FsCmd::Pin { path, pool } => {
            dir_of(&path)?;
            let p = cluster
                .pool(&pool)
                .await
                .with_context(|| format!("no pool {pool:?} (cairn pool ls)"))?;
            let attr = fs
                .resolve(&path, true)
                .await
                .with_context(|| path.clone())?;
            if attr.kind != FileKind::Dir {
                bail!("{path} is not a directory: only directories are pinned");
            }
            match fs
                .apply(NsOp::Pin {
                    ino: attr.ino,
                    pool: Some(p.id),
                })
                .await?
            {
                NsResult::Attr(_) => println!("{path}: new files go to pool {pool}"),
                other => bail!("unexpected reply {other:?}"),
            }
        }
        FsCmd::Unpin { path } => {
            dir_of(&path)?;
            let attr = fs
                .resolve(&path, true)
                .await
                .with_context(|| path.clone())?;
            if attr.kind != FileKind::Dir {
                bail!("{path} is not a directory");
            }
            fs.apply(NsOp::Pin {
                ino: attr.ino,
                pool: None,
            })
            .await?;
            println!("{path}: unpinned");
        }
        FsCmd::Stat { path } => {
            dir_of(&path)?;
            let attr = fs
                .resolve(&path, false)
                .await
                .with_context(|| path.clone())?;
            let map = cluster.map();
            let pool = match attr.pool {
                Some(id) => map
                    .pools
                    .get(&id)
                    .map_or_else(|| format!("{id} (deleted)"), |p| p.name.clone()),
                None if attr.kind == FileKind::Dir => "inherited".to_string(),
                None => cairn_client::DEFAULT_FILE_POOL.to_string(),
            };
            println!("path        {path}");
            println!("inode       {}", attr.ino);
            println!("kind        {:?}", attr.kind);
            println!("size        {}", attr.size);
            println!("pool        {pool}");
            if attr.kind == FileKind::File {
                println!("chunk size  {}", attr.chunk_size);
            }
        }
    }
    Ok(())
}
