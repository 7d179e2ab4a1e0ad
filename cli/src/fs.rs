//! `cairn fs`: namespace administration by namespace path (`/dir/file`, as S3 and NFS see it,
//! not a local mount path): pin a directory to a pool, move existing data there, and show where
//! a file's data lives.

use anyhow::{bail, Context, Result};
use cairn_client::migrate::{self, MigrateOptions, Migrator};
use cairn_client::FsClient;
use cairn_proto::fs::{FileKind, NsOp, NsResult};
use cairn_proto::map::MovePhase;
use clap::Subcommand;
use std::time::{Duration, Instant};

use crate::util::{connect, human_bytes};

#[derive(Subcommand)]
pub enum FsCmd {
    /// Pin a directory to a pool: files created below it (down to the next pinned directory)
    /// keep their data there, and the data of existing files moves there in the background (a
    /// gateway's migrator, or `cairn fs migrate`).
    Pin { path: String, pool: String },
    /// Remove a directory's pin: files below it go back to the pool of its parent's pin.
    Unpin { path: String },
    /// Move file data to where pins say now, and wait until every move is over (taking turns
    /// with gateways' migrators: if one is at work, follow its progress).
    Migrate {
        /// Seconds the old objects of a moved file keep refusing clients before the move ends
        /// (keep it above the 30 s clients trust a file's remembered pool).
        #[arg(long, default_value_t = cairn_client::migrate::MOVE_GRACE.as_secs())]
        grace_secs: u64,
    },
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
                NsResult::Attr(_) => println!(
                    "{path}: new files go to pool {pool}; existing files move there in the \
                     background (cairn fs migrate waits for it)"
                ),
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
            println!("{path}: unpinned; its files move back in the background");
        }
        FsCmd::Migrate { grace_secs } => migrate_until_idle(fs, grace_secs).await?,
        FsCmd::Stat { path } => {
            dir_of(&path)?;
            let attr = fs
                .resolve(&path, false)
                .await
                .with_context(|| path.clone())?;
            let map = cluster.refresh_map().await?;
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
                if let Some(m) = map.moving.get(&attr.ino) {
                    let name = |id| {
                        map.pools
                            .get(&id)
                            .map_or_else(|| id.to_string(), |p: &cairn_proto::Pool| p.name.clone())
                    };
                    println!(
                        "moving      {} -> {} ({:?})",
                        name(m.from),
                        name(m.to),
                        m.phase
                    );
                }
            }
        }
    }
    Ok(())
}

/// `cairn fs migrate`: move what the pins say, showing progress against what was left to do
/// when it started; every file that could not be moved is named, and makes the exit status 1.
async fn migrate_until_idle(fs: FsClient, grace_secs: u64) -> Result<()> {
    let grace = Duration::from_secs(grace_secs);
    if grace < cairn_client::LAYOUT_TTL {
        eprintln!(
            "warning: a grace under {} s lets a client that remembered a moved file's old pool \
             read holes after the move ends",
            cairn_client::LAYOUT_TTL.as_secs()
        );
    }
    let m = Migrator::new(
        fs,
        MigrateOptions {
            grace,
            ..Default::default()
        },
    );
    let plan = m.plan().await?;
    let st0 = m.status().await?;
    eprintln!(
        "to move: {} files, {}{}",
        plan.files,
        human_bytes(plan.bytes),
        if plan.skipped > 0 {
            format!(
                "; {} files with more than one link stay where they are",
                plan.skipped
            )
        } else {
            String::new()
        }
    );
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    let mut line = String::new();
    let total = m
        .run_until_idle(|_, st| {
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            last = Some(Instant::now());
            let files = st.files_moved.saturating_sub(st0.files_moved);
            let bytes = st.bytes_moved.saturating_sub(st0.bytes_moved);
            let secs = start.elapsed().as_secs_f64().max(0.001);
            let copying = st
                .moving
                .iter()
                .filter(|(_, m)| m.phase == MovePhase::Copying)
                .count();
            let waiting = st.moving.len() - copying;
            let ends = migrate::grace_left_ms(st, grace)
                .map(|ms| format!(" (the last ends in {} s)", ms.div_ceil(1000)))
                .unwrap_or_default();
            let now = format!(
                "moved {files} of {} files, {} of {} ({}/s); {} directories queued, {copying} \
                 copying, {waiting} in their grace period{ends}",
                plan.files,
                human_bytes(bytes),
                human_bytes(plan.bytes),
                human_bytes((bytes as f64 / secs) as u64),
                st.queued_dirs.len(),
            );
            if now != line {
                eprintln!("{now}");
                line = now;
            }
        })
        .await?;
    // Moves done meanwhile by anyone (a gateway's migrator may have held the lock throughout).
    let all = m
        .status()
        .await?
        .files_moved
        .saturating_sub(st0.files_moved)
        .max(total.files_moved);
    let by_others = if all > total.files_moved {
        format!(
            " ({} of them by this command, the rest by a gateway's migrator)",
            total.files_moved
        )
    } else {
        String::new()
    };
    println!(
        "moved {all} files in {:.1} s{by_others}; {} copied here; {} left in place (hard links \
         or a pool gone); {} directories swept",
        start.elapsed().as_secs_f64(),
        human_bytes(total.bytes_copied),
        total.files_skipped,
        total.dirs_swept
    );
    if !total.failures.is_empty() {
        for f in &total.failures {
            eprintln!("{f}");
        }
        bail!(
            "{} files could not be moved (named above); each stays where it was",
            total.failures.len()
        );
    }
    Ok(())
}
