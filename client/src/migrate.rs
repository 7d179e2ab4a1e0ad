//! Moving file data to the pool its directory is pinned to, in the background.
//!
//! `cairn fs pin DIR POOL` changes where new files below `DIR` go and queues `DIR` in the
//! metadata service. A [`Migrator`] (run by a gateway, or by `cairn fs migrate`) sweeps each
//! queued directory and moves every file whose data is not in the pool of its nearest pinned
//! ancestor, in batches (up to [`MigrateOptions::batch_files`] files and
//! [`MigrateOptions::batch_bytes`]). For each batch:
//!
//! 1. `Begin`: the files enter the cluster map's `moving` set, owned by this migrator (one new
//!    epoch). OSDs refuse every operation but reads on their objects in the old pool from then
//!    on, and every operation on their objects in the new pool that does not carry this
//!    migrator's fence ([`MoveFence`]); clients that tried to write wait for the copy.
//! 2. The files' objects in the old pool are listed, placement group by placement group. The
//!    listing carries the new epoch, so each primary has the new map before it answers, and it
//!    waits out any write that passed its checks under the old map: every acknowledged write is
//!    in the listing. Leftovers of an earlier, abandoned copy are deleted from the new pool;
//!    each object is copied, and the copy is verified (size and crc32 computed by its new
//!    primary against the bytes read from the old one); the new pool is listed again and must
//!    hold exactly the old pool's objects of the file.
//! 3. `Switch` (one raft entry, one epoch for the batch): each verified file's inode names the
//!    new pool. OSDs now refuse everything but deletes on the old objects, so a client still
//!    holding the old pool is told to read the attributes again. A file whose copy failed is
//!    not switched: its move is aborted (`Abort`) and it stays, usable, where it was; the
//!    failure names it by path.
//! 4. The old objects are deleted (both copies for a file that went), and after the grace
//!    period (longer than clients trust a remembered layout, [`crate::fs::LAYOUT_TTL`]) the
//!    moves end and leave the map (one `End` for many).
//!
//! **Only the owner of a move acts on its copy.** Migrators take turns through an advisory
//! lock on the root directory's last byte, held in a lock session that a background task renews
//! while the migrator lives. A migrator that finds moves still copying (its own from an
//! interrupted pass, or those of one that died or lost the lock) takes them over with `Claim`
//! (a new epoch), after which the OSDs refuse the old owner's fenced requests and the metadata
//! service its `Switch`: a paused migrator that wakes up after losing its lock can change
//! nothing. So the inode names the new pool only after every object of the file was copied and
//! verified there by the migrator that owns the move.
//!
//! Files with more than one hard link stay where they are (their links may lie under different
//! pins).

use crate::error::{ClientError, Result};
use crate::fs::{FsClient, DEFAULT_FILE_POOL};
use crate::objects::PoolIo;
use cairn_proto::fs::{FileKind, FsError, Ino, LockKind, LockSpec, READDIRPLUS_MAX, ROOT_INO};
use cairn_proto::map::{FileMove, MoveFence, MovePhase};
use cairn_proto::msg::{
    MetaCommand, MetaRead, MetaRequest, MetaResponse, MetaResult, MigrateCommand, MigrateFile,
    MigrationStatus, SwitchFile, SwitchOutcome,
};
use cairn_proto::{ClusterMap, Oid, PieceKind, PoolId, WireError};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the old objects of a moved file keep refusing operations before the move ends.
pub const MOVE_GRACE: Duration = Duration::from_secs(120);

/// The byte of the root directory the running migrator holds an exclusive lock on.
const LOCK_BYTE: u64 = u64::MAX - 1;

/// The migrator's lock session: its time to live, and how often it is renewed.
const SESSION_TTL_MS: u32 = 30_000;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Objects copied at once.
const PARALLEL: usize = 8;

/// Most moves in the cluster map at once (each stays there for its grace): bounds the map every
/// client and OSD fetches at each step. A sweep waits for older moves to end past this.
const MAX_MOVING: usize = 16_384;

/// Inodes further apart than this are listed separately (see [`Migrator::objects_of`]).
const LIST_GAP: u64 = 64;

/// Most files one metadata step names (the metadata service's bound).
const STEP_FILES: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub struct MigrateOptions {
    /// See [`MOVE_GRACE`]; shorter than [`crate::fs::LAYOUT_TTL`] only in tests.
    pub grace: Duration,
    /// Most files and bytes one batch moves (one `Begin` and one `Switch`: a writer to one of
    /// its files waits for the batch's copy).
    pub batch_files: usize,
    pub batch_bytes: u64,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            grace: MOVE_GRACE,
            batch_files: 512,
            batch_bytes: 256 << 20,
        }
    }
}

/// A file whose move failed: it stays in its old pool, unchanged and usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveFailure {
    pub ino: Ino,
    /// Its namespace path, where the migrator knows it.
    pub path: Option<String>,
    pub from: PoolId,
    pub to: PoolId,
    pub error: String,
}

impl fmt::Display for MoveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{p} (inode {})", self.ino)?,
            None => write!(f, "the file with inode {}", self.ino)?,
        }
        write!(
            f,
            ": moving its data from pool {} to pool {} failed: {}; it stays in pool {}, \
             unchanged and usable (the next pass tries again)",
            self.from, self.to, self.error, self.from
        )
    }
}

/// What passes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub files_moved: u64,
    pub bytes_copied: u64,
    /// Files left where they are (more than one link, or a pool is gone).
    pub files_skipped: u64,
    pub dirs_swept: u64,
    /// Files whose move waits for an earlier move of theirs to end (their directory stays
    /// queued).
    pub files_deferred: u64,
    pub failures: Vec<MoveFailure>,
}

impl std::ops::AddAssign for MigrateReport {
    fn add_assign(&mut self, o: MigrateReport) {
        self.files_moved += o.files_moved;
        self.bytes_copied += o.bytes_copied;
        self.files_skipped += o.files_skipped;
        self.dirs_swept += o.dirs_swept;
        self.files_deferred += o.files_deferred;
        self.failures.extend(o.failures);
    }
}

/// What is left to move below the queued directories ([`Migrator::plan`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigratePlan {
    pub files: u64,
    pub bytes: u64,
    /// Files that will stay where they are (more than one link).
    pub skipped: u64,
}

/// A file found in the wrong pool.
#[derive(Clone, Debug)]
struct Misplaced {
    file: MigrateFile,
    path: String,
    size: u64,
    nlink: u32,
}

/// Walks the files below a directory depth first, a directory page at a time, and yields those
/// whose data is not in the pool their pins say.
struct Walk {
    stack: Vec<(Ino, Option<PoolId>, String)>,
    page: Option<(Ino, Option<PoolId>, String, Option<String>)>,
    default: Option<PoolId>,
}

impl Walk {
    async fn next(&mut self, fs: &FsClient) -> Result<Option<Vec<Misplaced>>> {
        loop {
            let (d, eff, path, after) = match self.page.take() {
                Some(p) => p,
                None => match self.stack.pop() {
                    Some((d, eff, path)) => (d, eff, path, None),
                    None => return Ok(None),
                },
            };
            let (page, more) = match fs.readdir_plus(d, after, READDIRPLUS_MAX, None).await {
                Ok(p) => p,
                Err(e) if is_gone(&e) || e.fs() == Some(FsError::NotDir) => continue,
                Err(e) => return Err(e),
            };
            if more {
                if let Some(last) = page.last() {
                    self.page = Some((d, eff, path.clone(), Some(last.name.clone())));
                }
            }
            let mut out = Vec::new();
            for e in page {
                let a = e.attr;
                let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                match a.kind {
                    FileKind::Dir => self.stack.push((a.ino, a.pool.or(eff), child)),
                    FileKind::File => {
                        let (Some(from), Some(to)) = (a.pool.or(self.default), eff) else {
                            continue;
                        };
                        if from != to {
                            out.push(Misplaced {
                                file: MigrateFile {
                                    ino: a.ino,
                                    expect: a.pool,
                                    from,
                                    to,
                                },
                                path: child,
                                size: a.size,
                                nlink: a.nlink,
                            });
                        }
                    }
                    FileKind::Symlink => {}
                }
            }
            return Ok(Some(out));
        }
    }
}

/// Moves file data between pools; see the module documentation.
pub struct Migrator {
    fs: FsClient,
    opts: MigrateOptions,
    /// This migrator's id: the owner of the moves it begins or claims, and its lock session.
    id: u64,
    /// Moves whose old objects this migrator deleted (so later passes only wait for the grace).
    cleaned: Mutex<HashSet<Ino>>,
    /// Paths of the files this migrator began moving, for what it reports.
    paths: Mutex<HashMap<Ino, String>>,
}

/// A lock session id no other client picks (std's hasher keys are random per process).
fn random_id() -> u64 {
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

/// Whether an error means this migrator no longer owns the move (nothing to undo).
fn is_fenced(e: &ClientError) -> bool {
    matches!(e.wire(), Some(WireError::Fenced { .. }))
}

/// Renews a lock session in the background until dropped.
struct SessionKeeper(tokio::task::JoinHandle<()>);

impl Drop for SessionKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Migrator {
    pub fn new(fs: FsClient, opts: MigrateOptions) -> Migrator {
        Migrator {
            fs,
            opts,
            id: random_id(),
            cleaned: Mutex::default(),
            paths: Mutex::default(),
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

    /// A step answering the inodes it applied to.
    async fn step_inos(&self, c: MigrateCommand) -> Result<Vec<Ino>> {
        match self.step(c).await? {
            MetaResult::Migrating(inos) => Ok(inos),
            other => Err(unexpected(other)),
        }
    }

    /// Object I/O on `pool` as `map` names it (`None`: the pool is gone).
    async fn io(&self, map: &ClusterMap, pool: PoolId) -> Result<Option<PoolIo>> {
        match map.pools.get(&pool) {
            Some(p) => Ok(Some(self.fs.cluster().pool_io(&p.name).await?)),
            None => Ok(None),
        }
    }

    /// Start the lock session and keep it alive while the returned keeper lives (a pass may
    /// take much longer than the session's time to live).
    async fn keep_session(&self) -> Result<SessionKeeper> {
        self.fs.renew_session(self.id, SESSION_TTL_MS).await?;
        let (fs, id) = (self.fs.clone(), self.id);
        Ok(SessionKeeper(tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Err(e) = fs.renew_session(id, SESSION_TTL_MS).await {
                    tracing::warn!(error = %e, "could not renew the migrator's lock session");
                }
            }
        })))
    }

    /// Take the migrator lock in this migrator's lock session. False when another migrator
    /// holds it.
    pub async fn try_lock(&self) -> Result<bool> {
        let lock = LockSpec {
            session: self.id,
            owner: self.id,
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
        let keeper = self.keep_session().await?;
        let r = self.run_locked(&mut progress).await;
        drop(keeper);
        let _ = self.fs.end_session(self.id).await;
        r
    }

    async fn run_locked(
        &self,
        progress: &mut impl FnMut(&MigrateReport, &MigrationStatus),
    ) -> Result<MigrateReport> {
        let mut total = MigrateReport::default();
        loop {
            let locked = self.try_lock().await?;
            tracing::debug!(locked, "migrator lock");
            let mut idle_pass = true;
            if locked {
                let r = self.pass().await?;
                idle_pass = r.files_moved == 0 && r.dirs_swept == 0 && r.failures.is_empty();
                total += r;
            }
            let st = self.status().await?;
            progress(&total, &st);
            if st.queued_dirs.is_empty() && st.moving.is_empty() {
                return Ok(total);
            }
            // Waiting for a grace or for another migrator: no need to ask often.
            let wait = if locked && !idle_pass {
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
        let mut keeper = None;
        loop {
            let r: Result<()> = async {
                if keeper.is_none() {
                    keeper = Some(self.keep_session().await?);
                }
                if self.try_lock().await? {
                    let r = self.pass().await?;
                    if r.files_moved > 0 || r.dirs_swept > 0 {
                        tracing::info!(
                            moved = r.files_moved,
                            bytes = r.bytes_copied,
                            dirs = r.dirs_swept,
                            "migration pass"
                        );
                    }
                    for f in &r.failures {
                        tracing::warn!("{f}");
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

    /// One pass: take over and finish moves still copying, clean up moved ones, sweep every
    /// queued directory, end the moves whose grace is over.
    pub async fn pass(&self) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let st = self.status().await?;
        // Copying moves: ours from an interrupted pass, or another migrator's that died or
        // lost the lock (we hold it now). Claim them, so their old owner can change nothing.
        let copying: Vec<Ino> = st
            .moving
            .iter()
            .filter(|(_, m)| m.phase == MovePhase::Copying)
            .map(|(i, _)| *i)
            .collect();
        for chunk in copying.chunks(self.opts.batch_files.clamp(1, STEP_FILES)) {
            let claimed = self
                .step_inos(MigrateCommand::Claim {
                    inos: chunk.to_vec(),
                    owner: self.id,
                })
                .await?;
            let map = self.fs.cluster().refresh_map().await?;
            let moves = claimed
                .iter()
                .filter_map(|i| map.moving.get(i).map(|m| (*i, *m)))
                .collect();
            report += self.copy_batch(moves).await?;
        }
        for (ino, m) in &st.moving {
            if m.phase == MovePhase::Moved {
                self.clean(*ino, *m, None).await?;
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
        for chunk in done.chunks(STEP_FILES) {
            self.step(MigrateCommand::End {
                inos: chunk.to_vec(),
            })
            .await?;
        }
        let mut c = self.cleaned.lock().expect("cleaned lock");
        let mut p = self.paths.lock().expect("paths lock");
        for i in &done {
            c.remove(i);
            p.remove(i);
        }
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

    /// The namespace path of directory `dir` (for what the migrator reports).
    async fn dir_path(&self, dir: Ino) -> Result<String> {
        let mut names = Vec::new();
        let mut ino = dir;
        for _ in 0..4096 {
            if ino == ROOT_INO {
                names.reverse();
                return Ok(format!("/{}", names.join("/")));
            }
            let parent = self.fs.lookup(ino, "..").await?.ino;
            let mut after = None;
            let name = loop {
                let (page, more) = self
                    .fs
                    .readdir_plus(parent, after, READDIRPLUS_MAX, None)
                    .await?;
                if let Some(e) = page.iter().find(|e| e.attr.ino == ino) {
                    break e.name.clone();
                }
                match page.last() {
                    Some(last) if more => after = Some(last.name.clone()),
                    _ => return Err(FsError::NotFound.into()),
                }
            };
            names.push(name);
            ino = parent;
        }
        Err(FsError::Loop.into())
    }

    /// A walk of the files below `dir` that are not where its pins say (`None`: `dir` is no
    /// directory any more).
    async fn walk(&self, dir: Ino) -> Result<Option<Walk>> {
        match self.fs.getattr(dir).await {
            Ok(a) if a.kind == FileKind::Dir => {}
            Ok(_) => return Ok(None),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        let default = self
            .fs
            .cluster()
            .refresh_map()
            .await?
            .pool_by_name(DEFAULT_FILE_POOL)
            .map(|p| p.id);
        let (top, path) = match (
            self.effective_pool(dir, default).await,
            self.dir_path(dir).await,
        ) {
            (Ok(p), Ok(path)) => (p, path),
            (Err(e), _) | (_, Err(e)) if is_gone(&e) => return Ok(None),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        Ok(Some(Walk {
            stack: vec![(dir, top, path)],
            page: None,
            default,
        }))
    }

    /// What is left to move below the queued directories (a read-only walk).
    pub async fn plan(&self) -> Result<MigratePlan> {
        let mut plan = MigratePlan::default();
        let mut seen = HashSet::new();
        for dir in self.status().await?.queued_dirs {
            let Some(mut walk) = self.walk(dir).await? else {
                continue;
            };
            while let Some(page) = walk.next(&self.fs).await? {
                for f in page {
                    if !seen.insert(f.file.ino) {
                        continue;
                    }
                    if f.nlink > 1 {
                        plan.skipped += 1;
                    } else {
                        plan.files += 1;
                        plan.bytes += f.size;
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Move every file below `dir` that is not where its pins say, then take `dir` off the
    /// queue (unless its pin changed meanwhile, or some of its files wait for an earlier move
    /// of theirs to end).
    async fn sweep(&self, dir: Ino) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let pin = match self.fs.getattr(dir).await {
            Ok(a) => a.pool,
            Err(e) if is_gone(&e) => None,
            Err(e) => return Err(e),
        };
        let Some(mut walk) = self.walk(dir).await? else {
            return self.swept(dir, None, report).await;
        };
        let mut batch: Vec<Misplaced> = Vec::new();
        let mut batch_bytes = 0u64;
        while let Some(page) = walk.next(&self.fs).await? {
            for f in page {
                if f.nlink > 1 {
                    report.files_skipped += 1;
                    continue;
                }
                batch_bytes += f.size;
                batch.push(f);
                if batch.len() >= self.opts.batch_files.clamp(1, STEP_FILES)
                    || batch_bytes >= self.opts.batch_bytes
                {
                    report += self.move_batch(std::mem::take(&mut batch)).await?;
                    batch_bytes = 0;
                }
            }
        }
        if !batch.is_empty() {
            report += self.move_batch(batch).await?;
        }
        if report.files_deferred > 0 || !report.failures.is_empty() {
            // Swept again by a later pass.
            return Ok(report);
        }
        self.swept(dir, pin, report).await
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

    async fn move_batch(&self, files: Vec<Misplaced>) -> Result<MigrateReport> {
        // End the moves whose grace is over, and wait for room in the map.
        loop {
            if self.end_expired().await? + files.len() <= MAX_MOVING {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1).min(self.opts.grace)).await;
        }
        let mut report = MigrateReport::default();
        let started = self
            .step_inos(MigrateCommand::Begin {
                files: files.iter().map(|f| f.file).collect(),
                owner: self.id,
            })
            .await?;
        // Our next requests must carry the epoch that shows the moves.
        let map = self.fs.cluster().refresh_map().await?;
        let started: HashSet<Ino> = started.into_iter().collect();
        {
            let mut paths = self.paths.lock().expect("paths lock");
            for f in &files {
                if started.contains(&f.file.ino) {
                    paths.insert(f.file.ino, f.path.clone());
                } else if map.moving.contains_key(&f.file.ino) {
                    // Still in the grace of an earlier move: later.
                    report.files_deferred += 1;
                }
            }
        }
        let moves = files
            .iter()
            .filter(|f| started.contains(&f.file.ino))
            .filter_map(|f| map.moving.get(&f.file.ino).map(|m| (f.file.ino, *m)))
            .collect();
        report += self.copy_batch(moves).await?;
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
        for v in out.values_mut() {
            v.sort_unstable();
        }
        Ok(out)
    }

    /// Copy, verify and switch the files of `moves` (this migrator owns them), then delete
    /// what they leave behind. A file whose copy fails is given up (`Abort`) and reported.
    async fn copy_batch(&self, moves: Vec<(Ino, FileMove)>) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let mut groups: BTreeMap<(PoolId, PoolId), Vec<(Ino, FileMove)>> = BTreeMap::new();
        for (ino, m) in moves {
            groups.entry((m.from, m.to)).or_default().push((ino, m));
        }
        for ((from, to), moves) in groups {
            report += self.copy_group(from, to, moves).await?;
        }
        Ok(report)
    }

    async fn copy_group(
        &self,
        from: PoolId,
        to: PoolId,
        moves: Vec<(Ino, FileMove)>,
    ) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let inos: Vec<Ino> = moves.iter().map(|(i, _)| *i).collect();
        let map = self.fs.cluster().refresh_map().await?;
        let (Some(from_io), Some(to_io)) = (self.io(&map, from).await?, self.io(&map, to).await?)
        else {
            // A pool went: nothing can be copied; give the moves up (the data stays).
            self.abort(&inos).await?;
            report.files_skipped += inos.len() as u64;
            return Ok(report);
        };
        let old = self.objects_of(&from_io, &inos).await?;
        let stale = self.objects_of(&to_io, &inos).await?;
        let fence = |ino| MoveFence {
            ino,
            owner: self.id,
        };
        // One job per object: delete a leftover of an abandoned copy, or copy and verify.
        let mut jobs: Vec<(Ino, Oid, bool)> = Vec::new();
        for ino in &inos {
            let keep: HashSet<&Oid> = old.get(ino).into_iter().flatten().collect();
            for oid in stale.get(ino).into_iter().flatten() {
                if !keep.contains(oid) {
                    jobs.push((*ino, *oid, false));
                }
            }
            for oid in old.get(ino).into_iter().flatten() {
                jobs.push((*ino, *oid, true));
            }
        }
        let results: Vec<(Ino, Result<u64>)> = stream::iter(jobs)
            .map(|(ino, oid, copy)| {
                let (src, dst) = (from_io.fenced(fence(ino)), to_io.fenced(fence(ino)));
                async move {
                    let r = if copy {
                        copy_verified(&src, &dst, oid).await
                    } else {
                        delete(&dst, oid).await.map(|()| 0)
                    };
                    (ino, r)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut bytes: HashMap<Ino, u64> = HashMap::new();
        let mut failed: BTreeMap<Ino, String> = BTreeMap::new();
        let mut lost: HashSet<Ino> = HashSet::new();
        for (ino, r) in results {
            match r {
                Ok(n) => *bytes.entry(ino).or_default() += n,
                Err(e) if is_fenced(&e) => {
                    lost.insert(ino);
                }
                Err(e) => {
                    failed.entry(ino).or_insert_with(|| e.to_string());
                }
            }
        }
        // The new pool must now hold exactly the old pool's objects of each file.
        let copied = self.objects_of(&to_io, &inos).await?;
        for ino in &inos {
            if failed.contains_key(ino) || lost.contains(ino) {
                continue;
            }
            let want = old.get(ino).map_or(&[][..], Vec::as_slice);
            let have = copied.get(ino).map_or(&[][..], Vec::as_slice);
            if want != have {
                failed.insert(
                    *ino,
                    format!(
                        "the new pool holds {} objects of the file after the copy, not {}",
                        have.len(),
                        want.len()
                    ),
                );
            }
        }
        if !lost.is_empty() {
            tracing::info!(files = lost.len(), "moves taken over by another migrator");
        }
        // Failed copies: delete what was copied, then give the moves up.
        if !failed.is_empty() {
            for ino in failed.keys() {
                for oid in copied.get(ino).into_iter().flatten() {
                    if let Err(e) = delete(&to_io.fenced(fence(*ino)), *oid).await {
                        tracing::debug!(ino, error = %e, "could not delete a failed copy");
                    }
                }
            }
            let aborted = self
                .abort(&failed.keys().copied().collect::<Vec<_>>())
                .await?;
            let paths = self.paths.lock().expect("paths lock");
            for ino in aborted {
                report.failures.push(MoveFailure {
                    ino,
                    path: paths.get(&ino).cloned(),
                    from,
                    to,
                    error: failed.get(&ino).cloned().unwrap_or_default(),
                });
            }
        }
        let verified: Vec<SwitchFile> = inos
            .iter()
            .filter(|i| !failed.contains_key(i) && !lost.contains(i))
            .map(|i| SwitchFile {
                ino: *i,
                bytes: bytes.get(i).copied().unwrap_or(0),
            })
            .collect();
        let by_ino: HashMap<Ino, FileMove> = moves.into_iter().collect();
        for chunk in verified.chunks(STEP_FILES) {
            let outcomes = match self
                .step(MigrateCommand::Switch {
                    files: chunk.to_vec(),
                    owner: self.id,
                })
                .await?
            {
                MetaResult::Switched(v) => v,
                other => return Err(unexpected(other)),
            };
            for (ino, outcome) in outcomes {
                match outcome {
                    SwitchOutcome::Switched => {
                        report.files_moved += 1;
                        report.bytes_copied += bytes.get(&ino).copied().unwrap_or(0);
                    }
                    SwitchOutcome::Kept => report.files_skipped += 1,
                    SwitchOutcome::Gone | SwitchOutcome::NotOwner => {}
                }
                if let Some(m) = by_ino.get(&ino) {
                    self.clean(ino, *m, Some(outcome)).await?;
                }
            }
        }
        Ok(report)
    }

    /// Give up our copying moves of `inos`; returns those given up.
    async fn abort(&self, inos: &[Ino]) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        for chunk in inos.chunks(STEP_FILES) {
            out.extend(
                self.step_inos(MigrateCommand::Abort {
                    inos: chunk.to_vec(),
                    owner: self.id,
                })
                .await?,
            );
        }
        Ok(out)
    }

    /// Delete what a move leaves behind: the old objects of a switched file; for a file that
    /// went, both copies; for a file that stayed, the new copy. `outcome` is how the switch
    /// went (`None`: a move found past copying, whose inode says).
    async fn clean(&self, ino: Ino, m: FileMove, outcome: Option<SwitchOutcome>) -> Result<()> {
        if self.cleaned.lock().expect("cleaned lock").contains(&ino) {
            return Ok(());
        }
        let (old, new) = match outcome {
            Some(SwitchOutcome::Switched) => (true, false),
            Some(SwitchOutcome::Gone) => (true, true),
            Some(SwitchOutcome::Kept) => (false, true),
            Some(SwitchOutcome::NotOwner) => return Ok(()),
            None => match self.fs.getattr(ino).await {
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
        if outcome != Some(SwitchOutcome::Kept) {
            self.cleaned.lock().expect("cleaned lock").insert(ino);
        }
        Ok(())
    }
}

/// Copy one object and check the copy: the size and crc32 its new primary computes must be
/// those of the bytes read from the old one. Returns the bytes copied.
async fn copy_verified(src: &PoolIo, dst: &PoolIo, oid: Oid) -> Result<u64> {
    let data = match src.get(oid).await {
        Ok(d) => d,
        // The old objects cannot change while the move is copying: one that vanished means
        // something else acts on them; never switch over a hole.
        Err(ClientError::NotFound(_)) => return Err(ClientError::Vanished { oid }),
        Err(e) => return Err(e),
    };
    let crc = crc32fast::hash(&data);
    let n = dst.put_stream(oid, &data[..]).await?;
    let (size, got) = dst.digest(oid).await?;
    if size != data.len() as u64 || got != crc || n != size {
        return Err(ClientError::CopyMismatch {
            oid,
            size,
            crc: got,
            want_size: data.len() as u64,
            want_crc: crc,
        });
    }
    Ok(size)
}

async fn delete(io: &PoolIo, oid: Oid) -> Result<()> {
    match io.delete(oid).await {
        Ok(()) | Err(ClientError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// When the grace of the last moved file in `st` ends, in milliseconds from now (`None`: no
/// moved file waits).
pub fn grace_left_ms(st: &MigrationStatus, grace: Duration) -> Option<u64> {
    let now = now_ms();
    st.moving
        .iter()
        .filter(|(_, m)| m.phase == MovePhase::Moved)
        .map(|(_, m)| (m.since_ms + grace.as_millis() as u64).saturating_sub(now))
        .max()
}
