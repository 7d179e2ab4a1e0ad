//! Per-placement-group runtime state on one OSD: the locks that order its mutations and keep
//! it quiet for recovery, and (on the primary) how far peering and recovery have got.

use cairn_proto::{ClusterMap, OsdId, PgId, PgState};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// One placement group's slot.
#[derive(Default)]
pub struct PgSlot {
    /// Held shared by each mutation from its checks until it is acknowledged (on the primary)
    /// or applied (on a replica); held exclusively by what needs the group quiet: each
    /// recovery push, peering, a listing, a repair.
    pub lock: tokio::sync::RwLock<()>,
    /// Orders a group's mutations: held while one is given its version, journaled (not yet
    /// synced) and sent to the replicas; the syncs and round trips then overlap with the next.
    pub order: tokio::sync::Mutex<()>,
    pub rt: Mutex<PgRt>,
    /// Semi-synchronous mode: permits for unacknowledged remote writes (and the window size).
    window: Mutex<Option<(u32, Arc<Semaphore>)>>,
    /// Asynchronous modes: the last background replication task, which the next one waits for.
    sender: Mutex<Option<JoinHandle<()>>>,
}

/// What the primary knows about a placement group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgRt {
    /// The map epoch peering last started from (`None`: not peered as primary). A map with a
    /// placement change after it means a new peering round (an intermediate map we never saw
    /// may have had another primary); maps that changed only other things (file moves) do not
    /// (see `ClusterMap::same_interval`).
    pub peered_epoch: Option<u64>,
    pub peering: bool,
    /// Members being brought up to date.
    pub recovering: BTreeSet<OsdId>,
    /// Set when someone asked for a new peering round (a stray that is ahead, a failed round).
    pub repeer: bool,
}

impl PgRt {
    /// Whether the last peering still holds under `map` (same placement interval).
    pub fn peered_for(&self, map: &ClusterMap) -> bool {
        self.peered_epoch.is_some_and(|p| map.same_interval(p))
    }
}

impl PgSlot {
    pub fn rt(&self) -> std::sync::MutexGuard<'_, PgRt> {
        self.rt.lock().expect("pg runtime lock")
    }

    /// Whether the primary may serve client I/O under `map`.
    pub fn active_for(&self, map: &ClusterMap) -> bool {
        let rt = self.rt();
        !rt.peering && rt.peered_for(map)
    }

    /// The semaphore bounding unacknowledged remote writes to `window`.
    pub fn window(&self, window: u32) -> Arc<Semaphore> {
        let mut w = self.window.lock().expect("window lock");
        match &*w {
            Some((n, s)) if *n == window => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(window as usize));
                *w = Some((window, s.clone()));
                s
            }
        }
    }

    /// The tail of this PG's background replication chain.
    pub fn sender(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.sender.lock().expect("sender lock")
    }

    /// The state the primary reports.
    pub fn state(&self, map: &ClusterMap, pg: PgId) -> PgState {
        let Some(pool) = map.pools.get(&pg.pool) else {
            return PgState::Inactive;
        };
        let up = map.pg_up(pg);
        if up.len() < usize::from(pool.min_size) {
            return PgState::Inactive;
        }
        let rt = self.rt();
        if rt.peering || !rt.peered_for(map) {
            return PgState::Peering;
        }
        if !rt.recovering.is_empty() {
            return PgState::Recovering;
        }
        if up.len() < usize::from(pool.size) || map.pg_osds(pg).len() < usize::from(pool.size) {
            return PgState::Degraded;
        }
        PgState::ActiveClean
    }
}

/// Every slot this OSD has touched.
#[derive(Default)]
pub struct Pgs {
    slots: Mutex<HashMap<PgId, Arc<PgSlot>>>,
}

impl Pgs {
    pub fn get(&self, pg: PgId) -> Arc<PgSlot> {
        self.slots
            .lock()
            .expect("pgs lock")
            .entry(pg)
            .or_default()
            .clone()
    }

    pub fn known(&self) -> Vec<(PgId, Arc<PgSlot>)> {
        self.slots
            .lock()
            .expect("pgs lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}
