//! Peering, recovery, backfill and stray cleanup.
//!
//! **Peering** (primary, every new map): ask every up OSD for its info of the PGs we are primary
//! of; if someone is more complete than us (higher `last_complete`), pull from them first — from
//! their log when it reaches back to our `last_complete` (only the objects its entries name),
//! else by a full scan. Client I/O answers `Busy` meanwhile. Members behind us are then queued
//! for recovery and the PG serves again.
//!
//! **Recovery** (primary, background, throttled): bring one member up to date — from our log
//! when it reaches back to the member's `last_complete` (push only the objects named since,
//! plus any the member changed on its own since then), else backfill: compare both object lists
//! and push what differs, remove what we do not have. Each object is pushed under the PG lock so
//! it cannot interleave with a client write. Finally `PgActivate` marks the member complete.
//! Backfill keeps a cursor, so an interrupted pass resumes where it stopped.
//!
//! **Strays**: an OSD holding a PG outside its set asks the primary (`PgNotify`) and drops its
//! copy once the PG is clean and the primary has everything it has.

use crate::error::{Error, Result};
use crate::replication::{pull_object, push_object};
use crate::server::Shared;
use crate::store::Mutation;
use crate::worker::{WorkState, Worker};
use cairn_proto::msg::{LogEntry, PeerRequest, PeerResponse, PgInfo, ScanItem};
use cairn_proto::{ClusterMap, Oid, OsdId, PgId, PgState, WireError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const SCAN_PAGE: u32 = 512;

/// Runs peering for the PGs we are primary of, and stray cleanup.
pub(crate) struct PeeringWorker {
    sh: Arc<Shared>,
    map_rx: watch::Receiver<Arc<ClusterMap>>,
}

impl PeeringWorker {
    pub fn new(sh: Arc<Shared>) -> PeeringWorker {
        let map_rx = sh.subscribe_map();
        PeeringWorker { sh, map_rx }
    }
}

impl Worker for PeeringWorker {
    fn name(&self) -> String {
        "peering".into()
    }

    async fn work(&mut self) -> Result<WorkState> {
        let sh = &self.sh;
        let map = sh.map();
        let mut todo = Vec::new();
        for pool in map.pools.values() {
            for pg in pool.pgs() {
                let slot = sh.pgs.get(pg);
                let mut rt = slot.rt();
                if map.pg_primary(pg) != Some(sh.id) {
                    rt.peered_epoch = None;
                    rt.recovering.clear();
                    continue;
                }
                if !rt.peered_for(&map) || rt.repeer {
                    todo.push(pg);
                }
            }
        }
        if !todo.is_empty() {
            let (infos, silent) = gather_infos(sh, &map, &todo).await;
            for pg in todo {
                let peers = infos.get(&pg).cloned().unwrap_or_default();
                // An up member that did not answer may hold the newest acknowledged writes:
                // serving without its word could lose them, so wait for it (or for the map to
                // mark it down).
                let r = match map.pg_up(pg).into_iter().find(|m| silent.contains(m)) {
                    Some(m) => Err(Error::Wire(WireError::Busy { pg })).inspect_err(|_| {
                        tracing::debug!(osd = %sh.id, %pg, member = %m, "member silent; peering later")
                    }),
                    None => peer_pg(sh, &map, pg, &peers).await,
                };
                if let Err(e) = r {
                    tracing::warn!(osd = %sh.id, %pg, error = %e, "peering failed; will retry");
                    sh.pgs.get(pg).rt().repeer = true;
                }
            }
        }
        clean_strays(sh, &map).await?;
        // Failed rounds (`repeer`) are retried after the idle pause, not in a hot loop.
        Ok(if sh.map().epoch != map.epoch {
            WorkState::Busy
        } else {
            WorkState::Idle
        })
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = self.map_rx.changed() => {}
            _ = self.sh.peering_kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// One `PgInfos` request per up OSD, for all of `pgs`. Also returns the OSDs that did not answer.
async fn gather_infos(
    sh: &Arc<Shared>,
    map: &ClusterMap,
    pgs: &[PgId],
) -> (HashMap<PgId, Vec<(OsdId, PgInfo)>>, BTreeSet<OsdId>) {
    let mut set = tokio::task::JoinSet::new();
    for (id, info) in &map.osds {
        if *id == sh.id || !info.up {
            continue;
        }
        let (sh, id, pgs) = (sh.clone(), *id, pgs.to_vec());
        let epoch = map.epoch;
        set.spawn(async move {
            let r = sh
                .peer(id, PeerRequest::PgInfos { epoch, pgs }, sh.peer_timeout())
                .await;
            (id, r)
        });
    }
    let mut out: HashMap<PgId, Vec<(OsdId, PgInfo)>> = HashMap::new();
    let mut silent = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((id, Ok(PeerResponse::Infos(infos)))) => {
                for (pg, info) in infos {
                    out.entry(pg).or_default().push((id, info));
                }
            }
            Ok((id, Ok(other))) => {
                tracing::debug!(%id, ?other, "unexpected info reply");
                silent.insert(id);
            }
            Ok((id, Err(e))) => {
                tracing::debug!(%id, error = %e, "no pg infos");
                silent.insert(id);
            }
            Err(_) => {}
        }
    }
    (out, silent)
}

async fn peer_pg(
    sh: &Arc<Shared>,
    map: &ClusterMap,
    pg: PgId,
    peers: &[(OsdId, PgInfo)],
) -> Result<()> {
    let slot = sh.pgs.get(pg);
    {
        let mut rt = slot.rt();
        rt.peering = true;
        rt.repeer = false;
    }
    let r = peer_pg_locked(sh, map, pg, peers).await;
    let mut rt = slot.rt();
    rt.peering = false;
    match r {
        Ok(recovering) => {
            rt.peered_epoch = Some(map.epoch);
            rt.recovering = recovering;
            if !rt.recovering.is_empty() {
                sh.recovery_kick.notify_one();
            }
            Ok(())
        }
        Err(e) => {
            rt.peered_epoch = None;
            Err(e)
        }
    }
}

/// Peering proper, under the PG lock. Returns the members to recover.
async fn peer_pg_locked(
    sh: &Arc<Shared>,
    map: &ClusterMap,
    pg: PgId,
    peers: &[(OsdId, PgInfo)],
) -> Result<BTreeSet<OsdId>> {
    let slot = sh.pgs.get(pg);
    let _g = slot.lock.write().await;
    check_still(sh, map)?;
    let mine = sh.store.pg_info(pg)?;
    let best = peers
        .iter()
        .filter(|(_, i)| i.last_complete > mine.last_complete)
        .max_by_key(|(o, i)| (i.last_complete, i.last_update, std::cmp::Reverse(*o)));
    if let Some((from, theirs)) = best {
        tracing::info!(osd = %sh.id, %pg, %from, ours = mine.last_complete,
            theirs = theirs.last_complete, "pulling newer objects before serving");
        pull_pg(sh, pg, *from, mine, *theirs).await?;
    }
    let now = sh.store.pg_info(pg)?;
    let infos: HashMap<OsdId, PgInfo> = peers.iter().copied().collect();
    let mut recovering = BTreeSet::new();
    for m in map.pg_up(pg) {
        if m == sh.id {
            continue;
        }
        let t = infos.get(&m).copied().unwrap_or_default();
        if t.last_complete < now.last_update || t.last_update > now.last_update {
            recovering.insert(m);
        }
    }
    Ok(recovering)
}

/// Bring our copy of `pg` up to `from`'s.
async fn pull_pg(
    sh: &Arc<Shared>,
    pg: PgId,
    from: OsdId,
    mine: PgInfo,
    theirs: PgInfo,
) -> Result<()> {
    let epoch = sh.map().epoch;
    let since = overlap_since(mine.last_complete, theirs.log_tail);
    let log = match sh
        .peer(
            from,
            PeerRequest::PgLog { epoch, pg, since },
            sh.peer_timeout(),
        )
        .await?
    {
        PeerResponse::Log(l) => l,
        other => {
            return Err(Error::Wire(WireError::invalid(format!(
                "unexpected log reply {other:?}"
            ))))
        }
    };
    match log {
        Some(entries) => {
            let own = sh.store.pg_log(pg, since).ok();
            let oids = differing(&entries, own.as_deref(), mine.last_complete);
            for oid in oids {
                if pull_object(sh, pg, oid, from, None).await? {
                    count_recovered(sh, pg, oid);
                }
            }
            let last = theirs.last_update;
            sh.blocking(move |s| {
                s.activate(pg, last, &entries, false)?;
                s.sync()
            })
            .await
        }
        None => {
            let theirs_list = scan_all(sh, from, pg).await?;
            let mine_list = local_scan(sh, pg).await?;
            for (oid, item) in &theirs_list {
                let same = mine_list
                    .get(oid)
                    .is_some_and(|m| m.version == item.version && m.digest == item.digest);
                if !same && pull_object(sh, pg, *oid, from, None).await? {
                    count_recovered(sh, pg, *oid);
                }
            }
            for oid in mine_list.keys().filter(|o| !theirs_list.contains_key(o)) {
                sh.durable.commit(pg, *oid, Mutation::Remove).await?;
            }
            let last = theirs.last_update;
            sh.blocking(move |s| {
                s.activate(pg, last, &[], true)?;
                s.sync()
            })
            .await
        }
    }
}

/// How far below a member's `last_complete` logs are compared. A primary that dies with a write
/// in flight keeps that (never acknowledged) entry, and the next primary gives the same version
/// to a different write: the versions match but the entries do not, so "entries after
/// last_complete" would miss an acknowledged write. Comparing the last few entries version by
/// version finds such divergence (sync pools diverge by at most one entry per group; semi-sync
/// and async by at most their window).
const DIVERGENCE_WINDOW: u64 = 256;

/// Where to start reading a source's log for a member at `last_complete`: a window below it,
/// but not below what the source's log still holds (`log_tail`).
fn overlap_since(last_complete: u64, log_tail: u64) -> u64 {
    if log_tail > last_complete {
        // The log does not reach back: the caller gets `None` and backfills.
        return last_complete;
    }
    last_complete
        .saturating_sub(DIVERGENCE_WINDOW)
        .max(log_tail)
}

/// Objects to copy from the source's log `src` to a member whose own log is `own` (same start),
/// complete through `last_complete`: everything past it, and below it every version where the two
/// logs name different objects (both objects: the source's copy or absence wins). Without the
/// member's log, everything in the window.
fn differing(src: &[LogEntry], own: Option<&[LogEntry]>, last_complete: u64) -> BTreeSet<Oid> {
    let own_at: HashMap<u64, Oid> = own
        .unwrap_or(&[])
        .iter()
        .map(|e| (e.version, e.oid))
        .collect();
    let src_at: HashMap<u64, Oid> = src.iter().map(|e| (e.version, e.oid)).collect();
    let mut oids = BTreeSet::new();
    for e in src {
        if e.version > last_complete || own.is_none() || own_at.get(&e.version) != Some(&e.oid) {
            oids.insert(e.oid);
        }
    }
    for e in own.unwrap_or(&[]) {
        if e.version > last_complete || src_at.get(&e.version) != Some(&e.oid) {
            oids.insert(e.oid);
        }
    }
    oids
}

fn count_recovered(sh: &Shared, pg: PgId, oid: Oid) {
    sh.stats.objects_recovered.fetch_add(1, Ordering::Relaxed);
    if let Ok(Some(s)) = sh.store.stat(pg, oid) {
        sh.stats
            .bytes_recovered
            .fetch_add(s.size, Ordering::Relaxed);
    }
}

/// Every object of `pg` on `osd`, by id.
pub(crate) async fn scan_all(
    sh: &Arc<Shared>,
    osd: OsdId,
    pg: PgId,
) -> Result<BTreeMap<Oid, ScanItem>> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let req = PeerRequest::PgScan {
            epoch: sh.map().epoch,
            pg,
            after,
            limit: SCAN_PAGE,
        };
        match sh.peer(osd, req, sh.peer_timeout()).await? {
            PeerResponse::Scan { objects, more } => {
                after = objects.last().map(|o| o.oid);
                out.extend(objects.into_iter().map(|o| (o.oid, o)));
                if !more {
                    return Ok(out);
                }
            }
            other => {
                return Err(Error::Wire(WireError::invalid(format!(
                    "unexpected scan reply {other:?}"
                ))))
            }
        }
    }
}

async fn local_scan(sh: &Arc<Shared>, pg: PgId) -> Result<BTreeMap<Oid, ScanItem>> {
    sh.blocking(move |s| {
        let mut out = BTreeMap::new();
        let mut after = None;
        loop {
            let (items, more) = s.scan(pg, after, SCAN_PAGE as usize)?;
            after = items.last().map(|o| o.oid);
            out.extend(items.into_iter().map(|o| (o.oid, o)));
            if !more {
                return Ok(out);
            }
        }
    })
    .await
}

/// Drop PGs we hold outside their sets once their primary says they are clean.
async fn clean_strays(sh: &Arc<Shared>, map: &ClusterMap) -> Result<()> {
    let held = sh.store.pgs()?;
    let mut removed = false;
    for pg in held {
        if !map.pools.contains_key(&pg.pool) {
            tracing::info!(osd = %sh.id, %pg, "removing a PG of a deleted pool");
            sh.blocking(move |s| s.remove_pg(pg)).await?;
            removed = true;
            continue;
        }
        if map.pg_osds(pg).contains(&sh.id) {
            continue;
        }
        let Some(primary) = map.pg_primary(pg) else {
            continue;
        };
        let info = sh.store.pg_info(pg)?;
        let req = PeerRequest::PgNotify {
            epoch: map.epoch,
            pg,
            info,
        };
        match sh.peer(primary, req, sh.peer_timeout()).await {
            Ok(PeerResponse::PgStatus { state, last_update })
                if state == PgState::ActiveClean && last_update >= info.last_update =>
            {
                tracing::info!(osd = %sh.id, %pg, "removing a stray copy; the PG is clean");
                let slot = sh.pgs.get(pg);
                let _g = slot.lock.write().await;
                sh.blocking(move |s| s.remove_pg(pg)).await?;
                removed = true;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%pg, error = %e, "stray notify failed"),
        }
    }
    if removed {
        // Nothing left in the journal may bring a removed PG back on replay.
        sh.durable.checkpoint().await?;
    }
    Ok(())
}

/// Brings members queued by peering up to date, one at a time.
pub(crate) struct RecoveryWorker {
    sh: Arc<Shared>,
    /// Backfill cursors: where a pass stopped.
    cursors: HashMap<(PgId, OsdId), Oid>,
    note: String,
}

impl RecoveryWorker {
    pub fn new(sh: Arc<Shared>) -> RecoveryWorker {
        RecoveryWorker {
            sh,
            cursors: HashMap::new(),
            note: String::new(),
        }
    }
}

impl Worker for RecoveryWorker {
    fn name(&self) -> String {
        "recovery".into()
    }

    async fn work(&mut self) -> Result<WorkState> {
        let sh = self.sh.clone();
        let map = sh.map();
        let mut jobs = Vec::new();
        for (pg, slot) in sh.pgs.known() {
            if !slot.active_for(&map) {
                continue;
            }
            for t in slot.rt().recovering.iter() {
                jobs.push((pg, *t));
            }
        }
        if jobs.is_empty() {
            self.note = "idle".into();
            return Ok(WorkState::Idle);
        }
        let mut failed = None;
        for (pg, target) in jobs {
            self.note = format!("{pg} -> {target}");
            match recover_member(&sh, &map, pg, target, &mut self.cursors).await {
                Ok(()) => {
                    self.cursors.remove(&(pg, target));
                    let slot = sh.pgs.get(pg);
                    let mut rt = slot.rt();
                    if rt.peered_for(&sh.map()) {
                        rt.recovering.remove(&target);
                    }
                }
                Err(e) => failed = Some(e),
            }
            if !sh.map().same_interval(map.epoch) {
                break;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(WorkState::Busy),
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = self.sh.recovery_kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }

    fn progress(&self) -> String {
        self.note.clone()
    }
}

async fn recover_member(
    sh: &Arc<Shared>,
    map: &ClusterMap,
    pg: PgId,
    target: OsdId,
    cursors: &mut HashMap<(PgId, OsdId), Oid>,
) -> Result<()> {
    let epoch = map.epoch;
    let t = match sh
        .peer(
            target,
            PeerRequest::PgInfos {
                epoch,
                pgs: vec![pg],
            },
            sh.peer_timeout(),
        )
        .await?
    {
        PeerResponse::Infos(i) => i.first().map(|(_, i)| *i).unwrap_or_default(),
        other => {
            return Err(Error::Wire(WireError::invalid(format!(
                "unexpected info reply {other:?}"
            ))))
        }
    };
    let slot = sh.pgs.get(pg);
    let mine = sh.store.pg_info(pg)?;
    let by_log = t.last_complete >= mine.log_tail && !cursors.contains_key(&(pg, target));
    if by_log {
        let since = overlap_since(t.last_complete, mine.log_tail);
        let entries = sh.store.pg_log(pg, since)?;
        let theirs = match sh
            .peer(
                target,
                PeerRequest::PgLog { epoch, pg, since },
                sh.peer_timeout(),
            )
            .await
        {
            Ok(PeerResponse::Log(Some(l))) => Some(l),
            _ => None,
        };
        let oids = differing(&entries, theirs.as_deref(), t.last_complete);
        tracing::info!(osd = %sh.id, %pg, %target, objects = oids.len(), since = t.last_complete,
            "recovering a member from the log");
        for oid in oids {
            let _g = slot.lock.write().await;
            check_still(sh, map)?;
            let bytes = push_object(sh, pg, oid, target, None).await?;
            drop(_g);
            count_push(sh, bytes);
            sh.throttle.take(bytes.max(1)).await;
        }
        let _g = slot.lock.write().await;
        check_still(sh, map)?;
        let now = sh.store.pg_info(pg)?;
        let log = sh.store.pg_log(pg, since)?;
        activate(sh, target, pg, now.last_update, log, false).await
    } else {
        tracing::info!(osd = %sh.id, %pg, %target, "backfilling a member");
        let theirs = scan_all(sh, target, pg).await?;
        loop {
            let after = cursors.get(&(pg, target)).copied();
            let (items, more) = sh
                .blocking(move |s| s.scan(pg, after, SCAN_PAGE as usize))
                .await?;
            for item in &items {
                let same = theirs
                    .get(&item.oid)
                    .is_some_and(|t| t.version == item.version && t.digest == item.digest);
                if !same {
                    let _g = slot.lock.write().await;
                    check_still(sh, map)?;
                    let bytes = push_object(sh, pg, item.oid, target, None).await?;
                    drop(_g);
                    count_push(sh, bytes);
                    sh.throttle.take(bytes.max(1)).await;
                }
                cursors.insert((pg, target), item.oid);
            }
            if !more {
                break;
            }
        }
        for oid in theirs.keys() {
            let _g = slot.lock.write().await;
            check_still(sh, map)?;
            if sh.store.stat(pg, *oid)?.is_none() {
                push_object(sh, pg, *oid, target, None).await?;
            }
        }
        let _g = slot.lock.write().await;
        check_still(sh, map)?;
        let now = sh.store.pg_info(pg)?;
        activate(sh, target, pg, now.last_update, Vec::new(), true).await
    }
}

fn count_push(sh: &Shared, bytes: u64) {
    sh.stats.objects_recovered.fetch_add(1, Ordering::Relaxed);
    sh.stats.bytes_recovered.fetch_add(bytes, Ordering::Relaxed);
}

/// Stop peering or recovering under a map whose placement interval is over.
fn check_still(sh: &Shared, map: &ClusterMap) -> Result<()> {
    let now = sh.map();
    if !now.same_interval(map.epoch) {
        return Err(Error::Wire(WireError::StaleEpoch {
            ours: now.epoch,
            theirs: map.epoch,
        }));
    }
    Ok(())
}

async fn activate(
    sh: &Arc<Shared>,
    target: OsdId,
    pg: PgId,
    last_update: u64,
    log: Vec<cairn_proto::msg::LogEntry>,
    backfilled: bool,
) -> Result<()> {
    let req = PeerRequest::PgActivate {
        epoch: sh.map().epoch,
        pg,
        last_update,
        log,
        backfilled,
    };
    match sh.peer(target, req, sh.peer_timeout()).await? {
        PeerResponse::Applied => {
            tracing::info!(osd = %sh.id, %pg, %target, last_update, "member recovered");
            Ok(())
        }
        other => Err(Error::Wire(WireError::invalid(format!(
            "unexpected activate reply {other:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::msg::LogOp;

    fn e(version: u64, oid: u128) -> LogEntry {
        LogEntry {
            version,
            oid: Oid(oid),
            op: LogOp::Modify,
            prior: 0,
        }
    }

    #[test]
    fn a_divergent_entry_at_the_same_version_is_copied_both_ways() {
        // The member (old primary) wrote object 9 as version 3 and died before anyone else had
        // it; the new primary gave version 3 to object 7, then wrote 8 as version 4.
        let src = [e(1, 1), e(2, 2), e(3, 7), e(4, 8)];
        let own = [e(1, 1), e(2, 2), e(3, 9)];
        let got: Vec<u128> = differing(&src, Some(&own), 3)
            .into_iter()
            .map(|o| o.0)
            .collect();
        assert_eq!(got, vec![7, 8, 9]);
        // Without the member's log, the whole window.
        assert_eq!(differing(&src, None, 3).len(), 4);
    }

    #[test]
    fn the_window_stays_inside_the_source_log() {
        assert_eq!(overlap_since(1000, 0), 1000 - DIVERGENCE_WINDOW);
        assert_eq!(overlap_since(1000, 900), 900);
        assert_eq!(overlap_since(10, 0), 0);
        assert_eq!(overlap_since(5, 9), 5);
    }
}
