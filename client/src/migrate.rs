//! Moving file data to the pool its directory is pinned to, in the background.
//!
//! `cairn fs pin DIR POOL` changes where new files below `DIR` go and queues `DIR` in the
//! metadata service. A [`Migrator`] (run by a gateway, or by `cairn fs migrate`) sweeps each
//! queued directory and moves every file whose data is not in the pool of its nearest pinned
//! ancestor, in batches. For each batch:
//!
//! 1. `Begin`: the files enter the cluster map's `moving` set (one new epoch). OSDs refuse every
//!    operation but reads on their objects in the old pool from then on; clients that tried
//!    wait for the copy.
//! 2. Each file's objects in the old pool are listed, placement group by placement group. The
//!    listing carries the new epoch, so each primary has the new map before it answers, and it
//!    waits out any write that passed its checks under the old map: every acknowledged write is
//!    in the listing. Leftovers of an earlier, abandoned copy are deleted from the new pool,
//!    then each object is copied.
//! 3. `Switch`: the inode names the new pool (one raft entry; a file that went meanwhile does not
//!    switch). OSDs now refuse everything but deletes on the old objects, so a client still
//!    holding the old pool is told to read the attributes again.
//! 4. The old objects are deleted (both copies for a file that went), and after the grace
//!    period (longer than clients trust a remembered layout, [`crate::fs::LAYOUT_TTL`]) the move
//!    ends and leaves the map.
//!
//! Every step is recorded in the metadata service before the next begins, so a migrator that
//! dies is resumed by the next pass of any migrator. Only one runs at a time: they take an
//! advisory lock on the root directory's last byte in a lock session of their own.
//!
//! Files with more than one hard link stay where they are (their links may lie under different
//! pins).

use crate::error::{ClientError, Result};
use crate::fs::{FsClient, DEFAULT_FILE_POOL};
use crate::objects::PoolIo;
use cairn_proto::fs::{FileKind, FsError, Ino, LockKind, LockSpec, READDIRPLUS_MAX, ROOT_INO};
use cairn_proto::map::{FileMove, MovePhase};
use cairn_proto::msg::{
    MetaCommand, MetaRead, MetaRequest, MetaResponse, MetaResult, MigrateCommand, MigrateFile,
    MigrationStatus,
};
use cairn_proto::{ClusterMap, Oid, PieceKind, PoolId};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the old objects of a moved file keep refusing operations before the move ends.
pub const MOVE_GRACE: Duration = Duration::from_secs(120);

/// The byte of the root directory the running migrator holds an exclusive lock on.
const LOCK_BYTE: u64 = u64::MAX - 1;

/// Objects copied at once.
const PARALLEL: usize = 4;

/// Most moves in the cluster map at once (each stays there for its grace): bounds the map every
/// client and OSD fetches at each step. A sweep waits for older moves to end past this.
const MAX_MOVING: usize = 4096;

/// Inodes further apart than this are listed separately (see [`Migrator::objects_of`]).
const LIST_GAP: u64 = 64;

#[derive(Clone, Copy, Debug)]
pub struct MigrateOptions {
    /// See [`MOVE_GRACE`]; shorter than [`crate::fs::LAYOUT_TTL`] only in tests.
    pub grace: Duration,
    /// Most files and bytes one batch moves.
    pub batch_files: usize,
    pub batch_bytes: u64,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            grace: MOVE_GRACE,
            batch_files: 64,
            batch_bytes: 256 << 20,
        }
    }
}

/// What passes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub files_moved: u64,
    pub bytes_copied: u64,
    /// Files left where they are (more than one link, or their pool is gone).
    pub files_skipped: u64,
    pub dirs_swept: u64,
}

impl std::ops::AddAssign for MigrateReport {
    fn add_assign(&mut self, o: MigrateReport) {
        self.files_moved += o.files_moved;
        self.bytes_copied += o.bytes_copied;
        self.files_skipped += o.files_skipped;
        self.dirs_swept += o.dirs_swept;
    }
}

/// Moves file data between pools; see the module documentation.
pub struct Migrator {
    fs: FsClient,
    opts: MigrateOptions,
    /// Moves whose old objects this migrator deleted (so later passes only wait for the grace).
    cleaned: Mutex<HashSet<Ino>>,
}

/// A lock session id no other client picks (std's hasher keys are random per process).
fn random_session() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now_ms()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unexpected(what: impl std::fmt::Debug) -> ClientError {
    ClientError::Protocol(format!("unexpected migration reply: {what:?}"))
}

fn is_gone(e: &ClientError) -> bool {
    matches!(e.fs(), Some(FsError::NotFound | FsError::Stale))
}

impl Migrator {
    pub fn new(fs: FsClient, opts: MigrateOptions) -> Migrator {
        Migrator {
            fs,
            opts,
            cleaned: Mutex::default(),
        }
    }

    /// Queued directories and moves under way.
    pub async fn status(&self) -> Result<MigrationStatus> {
        match self
            .fs
            .cluster()
            .meta()
            .call(MetaRequest::Read(MetaRead::Migrations))
            .await?
        {
            MetaResponse::Migrations(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    async fn step(&self, c: MigrateCommand) -> Result<MetaResult> {
        Ok(self
            .fs
            .cluster()
            .meta()
            .command(MetaCommand::Migrate(c))
            .await?)
    }

    /// Object I/O on `pool` as `map` names it (`None`: the pool is gone).
    async fn io(&self, map: &ClusterMap, pool: PoolId) -> Result<Option<PoolIo>> {
        match map.pools.get(&pool) {
            Some(p) => Ok(Some(self.fs.cluster().pool_io(&p.name).await?)),
            None => Ok(None),
        }
    }

    /// Take the migrator lock in lock session `session` (renewed by the caller). False when
    /// another migrator holds it.
    pub async fn try_lock(&self, session: u64) -> Result<bool> {
        let lock = LockSpec {
            session,
            owner: session,
            pid: std::process::id(),
            start: LOCK_BYTE,
            end: LOCK_BYTE,
        };
        match self
            .fs
            .set_lock(ROOT_INO, lock, Some(LockKind::Exclusive))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.fs() == Some(FsError::WouldBlock) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Run passes until nothing is queued or moving (waiting out the grace of the last moves),
    /// holding the migrator lock; `progress` hears each pass's report and the status after it.
    /// If another migrator holds the lock, waits for it to finish the work instead.
    pub async fn run_until_idle(
        &self,
        mut progress: impl FnMut(&MigrateReport, &MigrationStatus),
    ) -> Result<MigrateReport> {
        let session = random_session();
        let fs = self.fs.clone();
        let renew = tokio::spawn(async move {
            loop {
                let _ = fs.renew_session(session, 30_000).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let r = self.run_locked(session, &mut progress).await;
        renew.abort();
        let _ = self.fs.end_session(session).await;
        r
    }

    async fn run_locked(
        &self,
        session: u64,
        progress: &mut impl FnMut(&MigrateReport, &MigrationStatus),
    ) -> Result<MigrateReport> {
        self.fs.renew_session(session, 30_000).await?;
        let mut total = MigrateReport::default();
        loop {
            let locked = self.try_lock(session).await?;
            tracing::debug!(locked, "migrator lock");
            if locked {
                total += self.pass().await?;
            }
            let st = self.status().await?;
            progress(&total, &st);
            if st.queued_dirs.is_empty() && st.moving.is_empty() {
                return Ok(total);
            }
            let wait = if locked {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            tokio::time::sleep(wait.min(self.opts.grace)).await;
        }
    }

    /// Run passes every `interval` for ever (a gateway's background task), taking turns with
    /// other migrators through the lock. Errors are logged and the next pass tries again.
    pub async fn run(self, interval: Duration) {
        let session = random_session();
        loop {
            let r: Result<()> = async {
                self.fs.renew_session(session, 30_000).await?;
                if self.try_lock(session).await? {
                    let r = self.pass().await?;
                    if r.files_moved > 0 || r.dirs_swept > 0 {
                        tracing::info!(
                            moved = r.files_moved,
                            bytes = r.bytes_copied,
                            dirs = r.dirs_swept,
                            "migration pass"
                        );
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "migration pass failed");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One pass: resume moves under way, sweep every queued directory, end the moves whose
    /// grace is over.
    pub async fn pass(&self) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let st = self.status().await?;
        for (ino, m) in &st.moving {
            match m.phase {
                MovePhase::Copying => report += self.copy_and_switch(*ino, *m).await?,
                MovePhase::Moved => self.clean(*ino, *m, None).await?,
            }
        }
        for dir in st.queued_dirs {
            report += self.sweep(dir).await?;
        }
        self.end_expired().await?;
        Ok(report)
    }

    /// End the moves whose grace is over; returns how many moves stay in the map.
    async fn end_expired(&self) -> Result<usize> {
        let st = self.status().await?;
        let now = now_ms();
        let grace = self.opts.grace.as_millis() as u64;
        let done: Vec<Ino> = st
            .moving
            .iter()
            .filter(|(ino, m)| {
                m.phase == MovePhase::Moved
                    && now.saturating_sub(m.since_ms) >= grace
                    && self.cleaned.lock().expect("cleaned lock").contains(ino)
            })
            .map(|(ino, _)| *ino)
            .collect();
        if done.is_empty() {
            return Ok(st.moving.len());
        }
        self.step(MigrateCommand::End { inos: done.clone() })
            .await?;
        let mut c = self.cleaned.lock().expect("cleaned lock");
        done.iter().for_each(|i| {
            c.remove(i);
        });
        Ok(st.moving.len() - done.len())
    }

    /// The pool new files in directory `dir` go to: its pin, else its nearest pinned
    /// ancestor's, else the default file pool.
    async fn effective_pool(&self, dir: Ino, default: Option<PoolId>) -> Result<Option<PoolId>> {
        let mut ino = dir;
        for _ in 0..4096 {
            let a = self.fs.getattr(ino).await?;
            if a.pool.is_some() {
                return Ok(a.pool);
            }
            if ino == ROOT_INO {
                return Ok(default);
            }
            ino = self.fs.lookup(ino, "..").await?.ino;
        }
        Err(FsError::Loop.into())
    }

    /// Move every file below `dir` that is not where its pins say, then take `dir` off the
    /// queue (unless its pin changed meanwhile).
    async fn sweep(&self, dir: Ino) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let attr = match self.fs.getattr(dir).await {
            Ok(a) if a.kind == FileKind::Dir => a,
            Ok(_) => return self.swept(dir, None, report).await,
            Err(e) if is_gone(&e) => return self.swept(dir, None, report).await,
            Err(e) => return Err(e),
        };
        let default = self
            .fs
            .cluster()
            .refresh_map()
            .await?
            .pool_by_name(DEFAULT_FILE_POOL)
            .map(|p| p.id);
        let top = match self.effective_pool(dir, default).await {
            Ok(p) => p,
            Err(e) if is_gone(&e) => return self.swept(dir, attr.pool, report).await,
            Err(e) => return Err(e),
        };
        let mut stack = vec![(dir, top)];
        let mut batch: Vec<MigrateFile> = Vec::new();
        let mut batch_bytes = 0u64;
        while let Some((d, eff)) = stack.pop() {
            let mut after = None;
            loop {
                let (page, more) = match self.fs.readdir_plus(d, after, READDIRPLUS_MAX, None).await
                {
                    Ok(p) => p,
                    Err(e) if is_gone(&e) || e.fs() == Some(FsError::NotDir) => break,
                    Err(e) => return Err(e),
                };
                after = page.last().map(|e| e.name.clone());
                for e in page {
                    let a = e.attr;
                    match a.kind {
                        FileKind::Dir => stack.push((a.ino, a.pool.or(eff))),
                        FileKind::File => {
                            let (Some(from), Some(to)) = (a.pool.or(default), eff) else {
                                continue;
                            };
                            if from == to {
                                continue;
                            }
                            if a.nlink > 1 {
                                report.files_skipped += 1;
                                continue;
                            }
                            batch.push(MigrateFile {
                                ino: a.ino,
                                expect: a.pool,
                                from,
                                to,
                            });
                            batch_bytes += a.size;
                            if batch.len() >= self.opts.batch_files
                                || batch_bytes >= self.opts.batch_bytes
                            {
                                report += self.move_batch(std::mem::take(&mut batch)).await?;
                                batch_bytes = 0;
                            }
                        }
                        FileKind::Symlink => {}
                    }
                }
                if !more || after.is_none() {
                    break;
                }
            }
        }
        if !batch.is_empty() {
            report += self.move_batch(batch).await?;
        }
        self.swept(dir, attr.pool, report).await
    }

    async fn swept(
        &self,
        dir: Ino,
        pin: Option<PoolId>,
        mut report: MigrateReport,
    ) -> Result<MigrateReport> {
        self.step(MigrateCommand::Swept { dir, pin }).await?;
        report.dirs_swept += 1;
        Ok(report)
    }

    async fn move_batch(&self, files: Vec<MigrateFile>) -> Result<MigrateReport> {
        // End the moves whose grace is over, and wait for room in the map.
        loop {
            if self.end_expired().await? + files.len() <= MAX_MOVING {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1).min(self.opts.grace)).await;
        }
        let mut report = MigrateReport::default();
        let started = match self
            .step(MigrateCommand::Begin {
                files: files.clone(),
            })
            .await?
        {
            MetaResult::Migrating(inos) => inos,
            other => return Err(unexpected(other)),
        };
        // Our next requests must carry the epoch that shows the moves.
        let map = self.fs.cluster().refresh_map().await?;
        for ino in started {
            if let Some(m) = map.moving.get(&ino) {
                report += self.copy_and_switch(ino, *m).await?;
            }
        }
        Ok(report)
    }

    /// The objects of the files `inos` (each a file's pieces) in `io`'s pool. Nearby inodes
    /// (files made together) are listed in one range per placement group.
    async fn objects_of(&self, io: &PoolIo, inos: &[Ino]) -> Result<BTreeMap<Ino, Vec<Oid>>> {
        let mut sorted = inos.to_vec();
        sorted.sort_unstable();
        let mut runs: Vec<(Ino, Ino)> = Vec::new();
        for ino in sorted {
            match runs.last_mut() {
                Some((_, hi)) if ino - *hi <= LIST_GAP => *hi = ino,
                _ => runs.push((ino, ino)),
            }
        }
        let wanted: HashSet<Ino> = inos.iter().copied().collect();
        let mut out: BTreeMap<Ino, Vec<Oid>> = BTreeMap::new();
        for (lo, hi) in runs {
            let first = Oid::for_piece(PieceKind::File, lo, 0);
            let after = Oid(first.0.wrapping_sub(1));
            let last = Oid::for_piece(PieceKind::File, hi, u64::MAX);
            let pages: Vec<Vec<(Oid, u64)>> = stream::iter(io.pool().pgs())
                .map(|pg| io.list_range(pg, Some(after), last))
                .buffer_unordered(PARALLEL)
                .try_collect()
                .await?;
            for (oid, _) in pages.into_iter().flatten() {
                if let Some((PieceKind::File, owner, _)) = oid.piece() {
                    if wanted.contains(&owner) {
                        out.entry(owner).or_default().push(oid);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn copy_and_switch(&self, ino: Ino, m: FileMove) -> Result<MigrateReport> {
        tracing::debug!(ino, from = %m.from, to = %m.to, "copying");
        let mut report = MigrateReport::default();
        let map = self.fs.cluster().refresh_map().await?;
        let (Some(from), Some(to)) = (self.io(&map, m.from).await?, self.io(&map, m.to).await?)
        else {
            // A pool went: nothing can be copied; give the move up (the data stays).
            self.step(MigrateCommand::End { inos: vec![ino] }).await?;
            report.files_skipped += 1;
            return Ok(report);
        };
        let objects = self.objects_of(&from, &[ino]).await?.remove(&ino);
        let objects = objects.unwrap_or_default();
        let keep: HashSet<Oid> = objects.iter().copied().collect();
        let stale = self.objects_of(&to, &[ino]).await?.remove(&ino);
        for oid in stale.unwrap_or_default() {
            if !keep.contains(&oid) {
                delete(&to, oid).await?;
            }
        }
        let copied: Vec<u64> = stream::iter(objects)
            .map(|oid| {
                let (from, to) = (&from, &to);
                async move {
                    let data = match from.get(oid).await {
                        Ok(d) => d,
                        Err(ClientError::NotFound(_)) => return Ok(0),
                        Err(e) => return Err(e),
                    };
                    to.put_stream(oid, &data[..]).await
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        report.bytes_copied += copied.iter().sum::<u64>();
        tracing::debug!(ino, bytes = report.bytes_copied, "copied");
        let switched = match self.step(MigrateCommand::Switch { ino }).await? {
            MetaResult::Switched(s) => s,
            other => return Err(unexpected(other)),
        };
        if switched {
            report.files_moved += 1;
        }
        self.clean(ino, m, Some(switched)).await?;
        Ok(report)
    }

    /// Delete what a move leaves behind: the old objects of a switched file; for a file that
    /// went, both copies; for a file that stayed (its new pool went), the new copy.
    async fn clean(&self, ino: Ino, m: FileMove, switched: Option<bool>) -> Result<()> {
        if self.cleaned.lock().expect("cleaned lock").contains(&ino) {
            return Ok(());
        }
        // Resumed: the inode says how the switch went.
        let (old, new) = match switched {
            Some(true) => (true, false),
            _ => match self.fs.getattr(ino).await {
                Ok(a) if a.pool == Some(m.to) => (true, false),
                Ok(_) => (false, true),
                Err(e) if is_gone(&e) => (true, true),
                Err(e) => return Err(e),
            },
        };
        let map = self.fs.cluster().refresh_map().await?;
        for (yes, pool) in [(old, m.from), (new, m.to)] {
            if !yes {
                continue;
            }
            if let Some(io) = self.io(&map, pool).await? {
                let objects = self.objects_of(&io, &[ino]).await?.remove(&ino);
                stream::iter(objects.unwrap_or_default())
                    .map(|oid| {
                        let io = &io;
                        async move { delete(io, oid).await }
                    })
                    .buffer_unordered(PARALLEL)
                    .try_collect::<Vec<()>>()
                    .await?;
            }
        }
        self.cleaned.lock().expect("cleaned lock").insert(ino);
        Ok(())
    }
}

async fn delete(io: &PoolIo, oid: Oid) -> Result<()> {
    match io.delete(oid).await {
        Ok(()) | Err(ClientError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One line on where migration stands, for progress output.
pub fn describe(st: &MigrationStatus) -> String {
    let copying = st
        .moving
        .iter()
        .filter(|(_, m)| m.phase == MovePhase::Copying)
        .count();
    format!(
        "{} directories queued, {} files copying, {} moved files in their grace period",
        st.queued_dirs.len(),
        copying,
        st.moving.len() - copying
    )
}
