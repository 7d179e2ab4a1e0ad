//! Client operations on the primary, replication to the other members, and the replica side of
//! every peer message.
//!
//! A mutation: epoch and primary checks → the PG lock → version = last_update + 1 → then, in a
//! synchronous pool, the local journal commit and a `SubOp` to every other up member all at
//! once (what could make the local commit refuse the op is checked before any is sent); in the
//! asynchronous modes the local commit first, then the sub-ops in the background as the
//! pool's write mode says. A replica whose copy is not at the op's `prior` version answers `Missing` and gets the
//! whole object pushed. An unreachable replica is reported to the metadata service and the write
//! waits (bounded) for the map to mark it down before it stops counting on it.
//!
//! Reads verify checksums; a corrupt local copy is replaced by a good one pulled from a replica
//! before the read is answered.

use crate::error::{Error, Result};
use crate::server::Shared;
use crate::stats::Stats;
use crate::store::{log_entry, now_micros, Mutation};
use cairn_proto::map::{Access, MoveFence, MoveRefusal, WriteMode};
use cairn_proto::msg::{LogEntry, ObjectPiece, OsdRequest, OsdResponse, PeerRequest, PeerResponse};
use cairn_proto::object::QueryHit;
use cairn_proto::rpc::RpcError;
use cairn_proto::{ClusterMap, ObjOp, Oid, OsdId, PgId, Pool, PoolId, WireError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Largest piece of an object moved in one message.
pub const PIECE: u64 = 4 << 20;
/// Largest page of a listing or query.
const MAX_PAGE: u32 = 10_000;
/// How long a replica holds a sub-op back for the one the primary ordered before it.
const SUBOP_ORDER_WAIT: Duration = Duration::from_secs(2);

pub(crate) async fn handle_client(
    sh: &Arc<Shared>,
    req: OsdRequest,
) -> Result<OsdResponse, WireError> {
    match req {
        OsdRequest::Mutate {
            epoch,
            pool,
            oid,
            op,
            fence,
        } => mutate(sh, epoch, pool, oid, op, fence)
            .await
            .map(|version| OsdResponse::Mutated { version }),
        OsdRequest::Read {
            epoch,
            pool,
            oid,
            offset,
            len,
            fence,
        } => {
            let (_, pg, at) = locate(sh, epoch, pool, oid).await?;
            check_moving(&sh.map(), pool, oid, fence, Access::Read)?;
            Stats::inc(&sh.stats.reads);
            let data = read_repairing(sh, pg, oid, offset, u64::from(len), false)
                .await
                .map_err(|e| sh.wire(e))?;
            still_at(sh, at)?;
            Ok(OsdResponse::Data(data))
        }
        OsdRequest::Stat {
            epoch,
            pool,
            oid,
            fence,
        } => {
            let (_, pg, at) = locate(sh, epoch, pool, oid).await?;
            check_moving(&sh.map(), pool, oid, fence, Access::Read)?;
            let stat = sh.store.stat(pg, oid).map_err(|e| sh.wire(e))?;
            still_at(sh, at)?;
            match stat {
                Some(s) => Ok(OsdResponse::Stat(s)),
                None => Err(WireError::NoSuchObject { oid }),
            }
        }
        OsdRequest::Digest {
            epoch,
            pool,
            oid,
            fence,
        } => {
            let (_, pg, at) = locate(sh, epoch, pool, oid).await?;
            check_moving(&sh.map(), pool, oid, fence, Access::Read)?;
            let d = digest(sh, pg, oid).await?;
            still_at(sh, at)?;
            Ok(d)
        }
        OsdRequest::List {
            epoch,
            pg,
            after,
            limit,
        } => {
            let map = sh.check_epoch(epoch).await?;
            check_serving(sh, &map, pg)?;
            let limit = limit.clamp(1, MAX_PAGE) as usize;
            // Wait out a mutation that passed its checks under an older map: a listing made
            // after a map change (a file move beginning) must include every write accepted
            // before it.
            let slot = sh.pgs.get(pg);
            let _order = slot.lock.write().await;
            let (objects, more) = sh
                .blocking(move |s| s.list(pg, after, limit))
                .await
                .map_err(|e| sh.wire(e))?;
            Ok(OsdResponse::List { objects, more })
        }
        OsdRequest::Query {
            epoch,
            pgs,
            otype,
            filter,
            after,
            limit,
        } => {
            let map = sh.check_epoch(epoch).await?;
            for pg in &pgs {
                check_serving(sh, &map, *pg)?;
            }
            filter
                .validate()
                .map_err(|e| WireError::invalid(e.to_string()))?;
            let limit = limit.clamp(1, MAX_PAGE) as usize;
            let (hits, more) = sh
                .blocking(move |s| {
                    let mut all: Vec<QueryHit> = Vec::new();
                    let mut more = false;
                    for pg in pgs {
                        let (h, m) = s.query(pg, &otype, &filter, after, limit)?;
                        more |= m;
                        all.extend(h);
                    }
                    all.sort_by_key(|h| h.oid);
                    if all.len() > limit {
                        all.truncate(limit);
                        more = true;
                    }
                    Ok((all, more))
                })
                .await
                .map_err(|e| sh.wire(e))?;
            Ok(OsdResponse::Hits { hits, more })
        }
        OsdRequest::Peer(_) | OsdRequest::Status => {
            Err(WireError::invalid("not a client operation"))
        }
    }
}

/// Epoch and primary checks for a client op on one object; returns its pool and PG, and the
/// epoch of the map it was checked against.
async fn locate(
    sh: &Arc<Shared>,
    epoch: u64,
    pool: PoolId,
    oid: Oid,
) -> Result<(Pool, PgId, u64), WireError> {
    let map = sh.check_epoch(epoch).await?;
    let pool = map.pools.get(&pool).cloned().ok_or(WireError::NotFound {
        kind: "pool".into(),
        name: pool.to_string(),
    })?;
    let pg = pool.pg_of(oid);
    check_serving(sh, &map, pg)?;
    Ok((pool, pg, map.epoch))
}

/// Refuse what the map's file moves forbid (see `ClusterMap::check_move`): a client then reads
/// the file's attributes again and follows them; a migrator whose fence is stale stops.
fn check_moving(
    map: &ClusterMap,
    pool: PoolId,
    oid: Oid,
    fence: Option<MoveFence>,
    access: Access,
) -> Result<(), WireError> {
    map.check_move(pool, oid, fence, access)
        .map_err(|r| match r {
            MoveRefusal::Moved { ino } => WireError::Moved { ino },
            MoveRefusal::Fenced { ino } => WireError::Fenced { ino },
        })
}

/// A read checked against our map of `epoch` must not answer if the map changed while it read:
/// a step of a file move (the old objects deleted once the file switched) may have run in
/// between, and the client must see the new map's refusal rather than a hole. (Mutations are
/// checked under the PG lock instead.)
fn still_at(sh: &Shared, epoch: u64) -> Result<(), WireError> {
    let ours = sh.map().epoch;
    if ours != epoch {
        return Err(WireError::StaleEpoch {
            ours,
            theirs: epoch,
        });
    }
    Ok(())
}

/// Size and crc32 of an object's bytes, read (and checksum-verified, repaired if need be) in
/// pieces on this OSD.
async fn digest(sh: &Arc<Shared>, pg: PgId, oid: Oid) -> Result<OsdResponse, WireError> {
    let size = match sh.store.stat(pg, oid).map_err(|e| sh.wire(e))? {
        Some(s) => s.size,
        None => return Err(WireError::NoSuchObject { oid }),
    };
    let mut crc = crc32fast::Hasher::new();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(PIECE);
        let piece = read_repairing(sh, pg, oid, off, n, false)
            .await
            .map_err(|e| sh.wire(e))?;
        if piece.is_empty() {
            break;
        }
        crc.update(&piece);
        off += piece.len() as u64;
    }
    Ok(OsdResponse::Digest {
        size: off,
        crc32: crc.finalize(),
    })
}

/// We must be the primary, done peering.
fn check_serving(sh: &Shared, map: &ClusterMap, pg: PgId) -> Result<(), WireError> {
    sh.check_primary(map, pg)?;
    if !sh.pgs.get(pg).active_for(map) {
        sh.peering_kick.notify_one();
        return Err(WireError::Busy { pg });
    }
    Ok(())
}

async fn mutate(
    sh: &Arc<Shared>,
    epoch: u64,
    pool_id: PoolId,
    oid: Oid,
    op: ObjOp,
    fence: Option<MoveFence>,
) -> Result<u64, WireError> {
    let (pool, pg, _) = locate(sh, epoch, pool_id, oid).await?;
    let slot = sh.pgs.get(pg);
    // Held shared for the whole mutation: what needs the group quiet (peering, recovery pushes,
    // listings) takes it exclusively. The order lock is held only while the version is given
    // out, the journal record written and the sub-ops sent.
    let _in_flight = slot.lock.read().await;
    let order = slot.order.lock().await;
    // The map may have moved while we waited.
    let map = sh.map();
    crate::server::epoch_ok(&map, epoch)?;
    check_serving(sh, &map, pg)?;
    let access = match op {
        ObjOp::Delete => Access::Delete,
        _ => Access::Write,
    };
    check_moving(&map, pool_id, oid, fence, access)?;
    let up = map.pg_up(pg);
    if up.len() < usize::from(pool.min_size) {
        return Err(WireError::Degraded {
            pg,
            up: up.len() as u8,
            min_size: pool.min_size,
        });
    }
    let (version, after) = sh.durable.next_version(pg).map_err(|e| sh.wire(e))?;
    let mtime = now_micros();
    let mutation = Mutation::Apply {
        version,
        op: op.clone(),
        mtime,
    };
    let replicas: Vec<OsdId> = up.into_iter().filter(|o| *o != sh.id).collect();
    if pool.mode != WriteMode::Sync || replicas.is_empty() {
        // Local commit first; the asynchronous modes then replicate in the background, one
        // sub-op after another.
        let prior = sh
            .durable
            .commit(pg, oid, mutation)
            .await
            .map_err(|e| sh.wire(e))?;
        Stats::inc(&sh.stats.writes);
        let sub = SubOp {
            epoch,
            pg,
            version,
            prior,
            after: 0,
            oid,
            op,
            mtime,
        };
        match pool.mode {
            WriteMode::Sync => {}
            WriteMode::Async => replicate_background(sh, sub, replicas, None),
            WriteMode::SemiSync { window } => {
                let permit = semi_sync_permit(sh, pg, window).await;
                replicate_background(sh, sub, replicas, Some(permit));
            }
        }
        return Ok(version);
    }
    // Synchronous replication, pipelined: the journal record is written (not yet synced) and
    // the sub-ops sent in version order under the order lock; then the local sync and apply
    // and the replicas' round trips run at once, while the next mutations of the group go
    // ahead. Whatever could make the local commit refuse the op is checked before any sub-op
    // is sent; if it still fails later (a disk error), the group peers again before it
    // serves, which settles whichever members applied it.
    sh.durable.validate(&mutation).map_err(|e| sh.wire(e))?;
    let staged = sh
        .durable
        .stage(pg, oid, mutation)
        .await
        .map_err(|e| sh.wire(e))?;
    let sub = SubOp {
        epoch,
        pg,
        version,
        prior: staged.prior(),
        after,
        oid,
        op,
        mtime,
    };
    let (local_tx, local_rx) = tokio::sync::watch::channel(LocalCommit::Pending);
    let sends = send_subops(sh, &sub, &replicas, &local_rx);
    drop(order);
    let local = async {
        let r = sh.durable.finish(staged).await;
        let _ = local_tx.send(if r.is_ok() {
            LocalCommit::Done
        } else {
            LocalCommit::Failed
        });
        r
    };
    let (local, remote) = tokio::join!(local, replicas_acked(sh, &pool, &sub, sends));
    if let Err(e) = local {
        tracing::warn!(%pg, %oid, version, error = %e, "local commit failed after its sub-ops were sent; peering again");
        slot.rt().peered_epoch = None;
        sh.peering_kick.notify_one();
        return Err(sh.wire(e));
    }
    Stats::inc(&sh.stats.writes);
    remote?;
    Ok(version)
}

/// How the primary's own commit of a mutation replicated in parallel went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LocalCommit {
    Pending,
    Done,
    Failed,
}

/// A replicated mutation.
#[derive(Clone)]
struct SubOp {
    epoch: u64,
    pg: PgId,
    version: u64,
    prior: u64,
    after: u64,
    oid: Oid,
    op: ObjOp,
    mtime: i64,
}

impl SubOp {
    fn request(&self) -> PeerRequest {
        PeerRequest::SubOp {
            epoch: self.epoch,
            pg: self.pg,
            version: self.version,
            prior: self.prior,
            after: self.after,
            oid: self.oid,
            op: self.op.clone(),
            mtime: self.mtime,
        }
    }

    fn entry(&self) -> LogEntry {
        log_entry(self.version, self.oid, &self.op, self.prior)
    }
}

/// How sending one sub-op to one replica ended.
enum Sent {
    Acked,
    Unreachable,
    /// The replica's map is newer than ours.
    Stale,
    Failed(WireError),
}

/// `local`: the primary's own commit, when it runs in parallel; a replica that lacks the
/// object's prior version is pushed the primary's copy, so that waits for it.
async fn send_subop(
    sh: &Arc<Shared>,
    to: OsdId,
    sub: &SubOp,
    local: Option<tokio::sync::watch::Receiver<LocalCommit>>,
) -> Sent {
    match sh.peer(to, sub.request(), sh.peer_timeout()).await {
        Ok(PeerResponse::Applied) => Sent::Acked,
        Ok(PeerResponse::Missing) => {
            Stats::inc(&sh.stats.missing_pushes);
            if let Some(mut local) = local {
                match local.wait_for(|c| *c != LocalCommit::Pending).await {
                    Ok(c) if *c == LocalCommit::Done => {}
                    _ => return Sent::Failed(WireError::ShuttingDown),
                }
            }
            // Push a settled copy: no new mutation of the group is ordered meanwhile, and the
            // ones of this object already in flight are applied first.
            let slot = sh.pgs.get(sub.pg);
            let _order = slot.order.lock().await;
            sh.durable.settle(sub.pg, sub.oid).await;
            match push_object(sh, sub.pg, sub.oid, to, Some(sub.entry())).await {
                Ok(_) => Sent::Acked,
                Err(e) => classify(sh, e),
            }
        }
        Ok(other) => Sent::Failed(WireError::invalid(format!("unexpected reply {other:?}"))),
        Err(e) => classify(sh, e),
    }
}

fn classify(sh: &Shared, e: Error) -> Sent {
    match e {
        Error::Rpc(RpcError::Remote(WireError::StaleEpoch { ours, theirs })) if ours > theirs => {
            Sent::Stale
        }
        Error::Rpc(
            RpcError::Connect { .. } | RpcError::Disconnected { .. } | RpcError::Timeout { .. },
        ) => Sent::Unreachable,
        Error::Rpc(RpcError::Remote(w)) => Sent::Failed(w),
        e => Sent::Failed(sh.wire(e)),
    }
}

/// Start a sub-op to every replica (spawned now, so they leave in the order they are started).
fn send_subops(
    sh: &Arc<Shared>,
    sub: &SubOp,
    replicas: &[OsdId],
    local: &tokio::sync::watch::Receiver<LocalCommit>,
) -> tokio::task::JoinSet<(OsdId, Sent)> {
    let mut set = tokio::task::JoinSet::new();
    for &r in replicas {
        let (sh, sub, local) = (sh.clone(), sub.clone(), local.clone());
        set.spawn(async move { (r, send_subop(&sh, r, &sub, Some(local)).await) });
    }
    set
}

/// Wait for the replicas' answers: every up replica has the write durably, or the ones that
/// did not answer are marked down and enough copies remain.
async fn replicas_acked(
    sh: &Arc<Shared>,
    pool: &Pool,
    sub: &SubOp,
    mut set: tokio::task::JoinSet<(OsdId, Sent)>,
) -> Result<(), WireError> {
    let mut acked = 0usize;
    let mut unreachable = Vec::new();
    let mut failure = None;
    let mut stale = false;
    while let Some(r) = set.join_next().await {
        let Ok((r, sent)) = r else {
            return Err(WireError::ShuttingDown);
        };
        match sent {
            Sent::Acked => acked += 1,
            Sent::Unreachable => unreachable.push(r),
            Sent::Stale => stale = true,
            Sent::Failed(w) => failure = Some(w),
        }
    }
    if stale {
        let map = sh.refresh_map().await.map_err(|e| sh.wire(e))?;
        return Err(WireError::StaleEpoch {
            ours: map.epoch,
            theirs: sub.epoch,
        });
    }
    if let Some(w) = failure {
        return Err(w);
    }
    if !unreachable.is_empty() {
        wait_marked_down(sh, &unreachable).await?;
    }
    let copies = 1 + acked;
    if copies < usize::from(pool.min_size) {
        return Err(WireError::Degraded {
            pg: sub.pg,
            up: copies as u8,
            min_size: pool.min_size,
        });
    }
    Ok(())
}

/// Report unreachable replicas and wait until the map marks them down (then the write no longer
/// counts on them); `Timeout` if that takes longer than `down_wait_ms`.
async fn wait_marked_down(sh: &Arc<Shared>, osds: &[OsdId]) -> Result<(), WireError> {
    for o in osds {
        sh.report_failure(*o).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(sh.cfg.down_wait_ms);
    loop {
        let map = sh.map();
        if osds.iter().all(|o| map.osds.get(o).is_none_or(|i| !i.up)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WireError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = sh.refresh_map().await {
            tracing::debug!(error = %e, "map refresh while waiting for a down mark");
        }
    }
}

/// Window of unacknowledged remote writes for a semi-synchronous PG.
async fn semi_sync_permit(sh: &Arc<Shared>, pg: PgId, window: u32) -> OwnedSemaphorePermit {
    let sem = sh.pgs.get(pg).window(window.max(1));
    sem.acquire_owned()
        .await
        .expect("window semaphores are never closed")
}

/// Send a sub-op to the replicas in the background, in PG order (the per-PG sender queue keeps
/// versions in order per replica), releasing `permit` when every replica has it.
fn replicate_background(
    sh: &Arc<Shared>,
    sub: SubOp,
    replicas: Vec<OsdId>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let slot = sh.pgs.get(sub.pg);
    let mut queue = slot.sender();
    let sh = sh.clone();
    let prev = queue.take();
    let next = tokio::spawn(async move {
        // Wait for the previous sub-op of this PG so replicas see versions in order.
        if let Some(prev) = prev {
            let _ = prev.await;
        }
        let mut unreachable = Vec::new();
        for r in replicas {
            match send_subop(&sh, r, &sub, None).await {
                Sent::Acked => {}
                Sent::Unreachable => unreachable.push(r),
                // The replica catches up through peering on the next map.
                Sent::Stale | Sent::Failed(_) => {
                    tracing::debug!(pg = %sub.pg, replica = %r, "background sub-op not applied");
                }
            }
        }
        for r in unreachable {
            sh.report_failure(r).await;
        }
        drop(permit);
    });
    *queue = Some(next);
}

/// Push our copy of an object to `to` (removing theirs if we have none). The caller holds the
/// PG lock so the copy is consistent. Returns the bytes sent.
pub(crate) async fn push_object(
    sh: &Arc<Shared>,
    pg: PgId,
    oid: Oid,
    to: OsdId,
    entry: Option<LogEntry>,
) -> Result<u64> {
    let epoch = sh.map().epoch;
    let Some(stat) = sh.store.stat(pg, oid)? else {
        let r = sh
            .peer(
                to,
                PeerRequest::PushRemove { epoch, pg, oid },
                sh.peer_timeout(),
            )
            .await?;
        return expect_applied(r);
    };
    let size = stat.size;
    let mut offset = 0;
    loop {
        let n = PIECE.min(size - offset);
        let data = read_repairing(sh, pg, oid, offset, n, true).await?;
        let last = offset + n >= size;
        let req = PeerRequest::Push {
            epoch,
            pg,
            oid,
            piece: ObjectPiece {
                stat: stat.clone(),
                offset,
                data,
            },
            first: offset == 0,
            last,
            entry: if last { entry.clone() } else { None },
        };
        expect_applied(sh.peer(to, req, sh.peer_timeout() * 4).await?)?;
        offset += n;
        if last {
            return Ok(size);
        }
    }
}

fn expect_applied(r: PeerResponse) -> Result<u64> {
    match r {
        PeerResponse::Applied => Ok(0),
        other => Err(Error::Wire(WireError::invalid(format!(
            "unexpected push reply {other:?}"
        )))),
    }
}

/// Read, repairing a corrupt local copy from a replica first. `locked`: the caller holds the
/// PG lock already.
pub(crate) async fn read_repairing(
    sh: &Arc<Shared>,
    pg: PgId,
    oid: Oid,
    offset: u64,
    len: u64,
    locked: bool,
) -> Result<bytes::Bytes> {
    match sh.blocking(move |s| s.read(pg, oid, offset, len)).await {
        Err(Error::Corrupt { offset: bad, .. }) => {
            Stats::inc(&sh.stats.checksum_errors);
            tracing::warn!(osd = %sh.id, %pg, %oid, offset = bad, "checksum mismatch; repairing from a replica");
            repair_from_replica(sh, pg, oid, locked).await?;
            sh.blocking(move |s| s.read(pg, oid, offset, len)).await
        }
        r => r,
    }
}

/// Replace the local copy of an object by a replica's copy of the same version, under the PG
/// lock (so no write slips in between) unless the caller holds it (`locked`).
pub(crate) async fn repair_from_replica(
    sh: &Arc<Shared>,
    pg: PgId,
    oid: Oid,
    locked: bool,
) -> Result<()> {
    let slot = sh.pgs.get(pg);
    let _g = if locked {
        None
    } else {
        Some(slot.lock.write().await)
    };
    if sh.blocking(move |s| s.verify(pg, oid)).await.is_ok() {
        // Repaired by someone else while we waited for the lock.
        return Ok(());
    }
    let map = sh.map();
    let mine = sh.store.stat(pg, oid)?;
    let version = mine.as_ref().map_or(0, |s| s.version);
    for from in map.pg_up(pg).into_iter().filter(|o| *o != sh.id) {
        match pull_object(sh, pg, oid, from, Some(version)).await {
            Ok(true) => {
                if sh.blocking(move |s| s.verify(pg, oid)).await.is_ok() {
                    Stats::inc(&sh.stats.repairs);
                    tracing::warn!(osd = %sh.id, %pg, %oid, %from, "repaired a corrupt copy");
                    return Ok(());
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(%from, error = %e, "replica could not serve a repair"),
        }
    }
    Err(Error::Corrupt { oid, offset: 0 })
}

/// Copy an object from `from` into the local store (removing ours if `from` has none).
/// `want_version`: only accept that version (repairs); returns whether a copy was installed.
pub(crate) async fn pull_object(
    sh: &Arc<Shared>,
    pg: PgId,
    oid: Oid,
    from: OsdId,
    want_version: Option<u64>,
) -> Result<bool> {
    let epoch = sh.map().epoch;
    let mut offset = 0;
    let mut version = None;
    loop {
        let req = PeerRequest::Pull {
            epoch,
            pg,
            oid,
            offset,
            len: PIECE as u32,
        };
        let piece = match sh.peer(from, req, sh.peer_timeout() * 4).await? {
            PeerResponse::Piece(p) => p,
            PeerResponse::Absent => {
                if want_version.is_some() {
                    return Ok(false);
                }
                sh.durable.commit(pg, oid, Mutation::Remove).await?;
                return Ok(true);
            }
            other => {
                return Err(Error::Wire(WireError::invalid(format!(
                    "unexpected pull reply {other:?}"
                ))))
            }
        };
        if want_version.is_some_and(|v| v != piece.stat.version) {
            return Ok(false);
        }
        match version {
            None => version = Some(piece.stat.version),
            // The object changed between pieces: start over.
            Some(v) if v != piece.stat.version => {
                offset = 0;
                version = None;
                continue;
            }
            Some(_) => {}
        }
        let size = piece.stat.size;
        let n = piece.data.len() as u64;
        let first = offset == 0;
        sh.durable
            .commit(
                pg,
                oid,
                Mutation::Install {
                    piece,
                    first,
                    entry: None,
                },
            )
            .await?;
        offset += n;
        if offset >= size || n == 0 {
            return Ok(true);
        }
    }
}

/// The replica side of every peer message.
pub(crate) async fn handle_peer(
    sh: &Arc<Shared>,
    req: PeerRequest,
) -> Result<PeerResponse, WireError> {
    let w = |e: Error| sh.wire(e);
    match req {
        PeerRequest::SubOp {
            epoch,
            pg,
            version,
            prior,
            after,
            oid,
            op,
            mtime,
        } => {
            sh.check_peer_epoch(epoch).await?;
            let slot = sh.pgs.get(pg);
            let _in_flight = slot.lock.read().await;
            // Apply in the primary's order: requests may overtake each other on the way.
            if !sh.durable.wait_staged(pg, after, SUBOP_ORDER_WAIT).await {
                tracing::debug!(%pg, version, after, "sub-op went ahead of one that did not come");
            }
            let order = slot.order.lock().await;
            // A peering primary may have made us adopt a newer placement meanwhile.
            crate::server::epoch_ok(&sh.map(), epoch)?;
            let cur = sh.durable.version_of(pg, oid).map_err(w)?;
            if cur == version && !matches!(op, ObjOp::Delete) {
                // A retry: answer once the first attempt is durable.
                drop(order);
                sh.durable.settle(pg, oid).await;
                return Ok(PeerResponse::Applied);
            }
            // A delete's outcome does not depend on what it replaces.
            if cur != prior && !matches!(op, ObjOp::Delete) {
                sh.durable.passed(pg, version);
                return Ok(PeerResponse::Missing);
            }
            let staged = sh
                .durable
                .stage(pg, oid, Mutation::Apply { version, op, mtime })
                .await
                .map_err(w)?;
            drop(order);
            sh.durable.finish(staged).await.map_err(w)?;
            Ok(PeerResponse::Applied)
        }
        PeerRequest::PgInfos { epoch, pgs } => {
            // Adopt the peering primary's map first: from then on this OSD refuses mutations of
            // older epochs. Then wait for each group's mutation in flight (it may still be
            // acknowledged under the old map) so the answer includes every write acknowledged
            // before the new primary took over.
            sh.check_peer_epoch(epoch).await?;
            let held = sh.store.pgs().map_err(w)?;
            let mut out = Vec::new();
            for pg in pgs {
                if held.binary_search(&pg).is_ok() {
                    let slot = sh.pgs.get(pg);
                    let _quiesced = slot.lock.write().await;
                    out.push((pg, sh.store.pg_info(pg).map_err(w)?));
                }
            }
            Ok(PeerResponse::Infos(out))
        }
        PeerRequest::PgLog { pg, since, .. } => match sh.store.pg_log(pg, since) {
            Ok(entries) => Ok(PeerResponse::Log(Some(entries))),
            Err(Error::LogTrimmed { .. }) => Ok(PeerResponse::Log(None)),
            Err(e) => Err(w(e)),
        },
        PeerRequest::PgScan {
            pg, after, limit, ..
        } => {
            let limit = limit.clamp(1, MAX_PAGE) as usize;
            let (objects, more) = sh
                .blocking(move |s| s.scan(pg, after, limit))
                .await
                .map_err(w)?;
            Ok(PeerResponse::Scan { objects, more })
        }
        PeerRequest::Pull {
            pg,
            oid,
            offset,
            len,
            ..
        } => {
            // No PG lock: a repairing replica may hold its own while it pulls from us, and we
            // may be waiting on it with ours. The store reads stat and data consistently; the
            // puller checks versions across pieces.
            let len = u64::from(len).min(PIECE);
            match sh
                .blocking(move |s| s.read_piece(pg, oid, offset, len))
                .await
                .map_err(w)?
            {
                Some(p) => Ok(PeerResponse::Piece(p)),
                None => Ok(PeerResponse::Absent),
            }
        }
        PeerRequest::Push {
            epoch,
            pg,
            oid,
            piece,
            first,
            entry,
            ..
        } => {
            sh.check_peer_epoch(epoch).await?;
            let slot = sh.pgs.get(pg);
            let _g = slot.lock.write().await;
            sh.durable
                .commit(
                    pg,
                    oid,
                    Mutation::Install {
                        piece,
                        first,
                        entry,
                    },
                )
                .await
                .map_err(w)?;
            Ok(PeerResponse::Applied)
        }
        PeerRequest::PushRemove { epoch, pg, oid } => {
            sh.check_peer_epoch(epoch).await?;
            let slot = sh.pgs.get(pg);
            let _g = slot.lock.write().await;
            sh.durable
                .commit(pg, oid, Mutation::Remove)
                .await
                .map_err(w)?;
            Ok(PeerResponse::Applied)
        }
        PeerRequest::PgActivate {
            epoch,
            pg,
            last_update,
            log,
            backfilled,
        } => {
            sh.check_peer_epoch(epoch).await?;
            let slot = sh.pgs.get(pg);
            let _g = slot.lock.write().await;
            sh.blocking(move |s| {
                s.activate(pg, last_update, &log, backfilled)?;
                s.sync()
            })
            .await
            .map_err(w)?;
            Ok(PeerResponse::Applied)
        }
        PeerRequest::PgNotify { epoch, pg, info } => {
            let map = sh.refresh_map_to(epoch).await.map_err(w)?;
            sh.check_primary(&map, pg)?;
            let slot = sh.pgs.get(pg);
            let state = slot.state(&map, pg);
            let mine = sh.store.pg_info(pg).map_err(w)?;
            if info.last_update > mine.last_update {
                // A copy outside the set knows more than we do: peer again, including it.
                slot.rt().repeer = true;
                sh.peering_kick.notify_one();
            }
            Ok(PeerResponse::PgStatus {
                state,
                last_update: mine.last_update,
            })
        }
    }
}
