//! OSD liveness, kept by the leader in memory (not replicated): when each OSD last heartbeated,
//! its usage and the states of its placement groups.
//!
//! [`run_duties`] is the leader's periodic worker: an up OSD silent for `osd_down_after_ms` is
//! proposed down; a down OSD whose `down_since_ms` is `osd_out_after_ms` old is proposed out. The
//! table belongs to one leadership term: a new leader starts a fresh one, which gives every OSD a
//! full grace period before it can be marked down.

use crate::config::MetaConfig;
use crate::node::{now_ms, NodeRef};
use cairn_proto::msg::{MetaCommand, OsdHeartbeat};
use cairn_proto::{OsdId, PgId, PgState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

struct Seen {
    at: Instant,
    used: u64,
    capacity: u64,
    pgs: Vec<(PgId, PgState)>,
}

pub(crate) struct Liveness {
    /// The leadership term this table belongs to (0: none yet).
    term: u64,
    /// When this replica started leading in `term`: the earliest any OSD counts as seen.
    grace_start: Instant,
    seen: HashMap<OsdId, Seen>,
    /// OSDs whose mark-up proposal is in flight, so concurrent heartbeats propose it once.
    marking_up: HashSet<OsdId>,
}

impl Liveness {
    pub fn new() -> Liveness {
        Liveness {
            term: 0,
            grace_start: Instant::now(),
            seen: HashMap::new(),
            marking_up: HashSet::new(),
        }
    }

    /// Start a fresh table when leadership moved to a new term.
    pub fn enter_term(&mut self, term: u64, now: Instant) {
        if self.term != term {
            *self = Liveness {
                term,
                grace_start: now,
                ..Liveness::new()
            };
        }
    }

    pub fn record(&mut self, hb: &OsdHeartbeat, now: Instant) {
        self.seen.insert(
            hb.id,
            Seen {
                at: now,
                used: hb.used,
                capacity: hb.capacity,
                pgs: hb.pgs.clone(),
            },
        );
    }

    /// Count an OSD as alive now (it just booted through this leader).
    pub fn touch(&mut self, id: OsdId, now: Instant) {
        match self.seen.get_mut(&id) {
            Some(s) => s.at = now,
            None => {
                self.seen.insert(
                    id,
                    Seen {
                        at: now,
                        used: 0,
                        capacity: 0,
                        pgs: Vec::new(),
                    },
                );
            }
        }
    }

    fn last_seen(&self, id: OsdId) -> Instant {
        self.seen
            .get(&id)
            .map_or(self.grace_start, |s| s.at.max(self.grace_start))
    }

    /// Latest reported (used, capacity) of an OSD that has heartbeated this term.
    pub fn usage(&self, id: OsdId) -> Option<(u64, u64)> {
        self.seen
            .get(&id)
            .filter(|s| s.capacity > 0 || s.used > 0)
            .map(|s| (s.used, s.capacity))
    }

    /// Placement-group states from reports younger than `ttl`, in PG order.
    pub fn pg_states(&self, ttl: Duration, now: Instant) -> Vec<(PgId, PgState)> {
        let mut out = BTreeMap::new();
        for s in self.seen.values() {
            if now.duration_since(s.at) < ttl {
                out.extend(s.pgs.iter().copied());
            }
        }
        out.into_iter().collect()
    }

    /// Claim the right to propose marking `id` up; false if a proposal is already in flight.
    pub fn begin_mark_up(&mut self, id: OsdId) -> bool {
        self.marking_up.insert(id)
    }

    pub fn end_mark_up(&mut self, id: OsdId) {
        self.marking_up.remove(&id);
    }
}

/// What the leader should propose now: OSDs to mark down, then OSDs to mark out.
fn due(
    live: &Liveness,
    map: &cairn_proto::ClusterMap,
    down_after: Duration,
    out_after_ms: u64,
    now: Instant,
    wall_ms: u64,
) -> Vec<MetaCommand> {
    let mut cmds = Vec::new();
    for o in map.osds.values() {
        if o.up {
            if now.duration_since(live.last_seen(o.id)) >= down_after {
                cmds.push(MetaCommand::SetOsdState {
                    id: o.id,
                    up: Some(false),
                    in_cluster: None,
                });
            }
        } else if o.in_cluster
            && o.down_since_ms
                .is_some_and(|t| wall_ms.saturating_sub(t) >= out_after_ms)
        {
            cmds.push(MetaCommand::SetOsdState {
                id: o.id,
                up: None,
                in_cluster: Some(false),
            });
        }
    }
    cmds
}

/// The leader's periodic liveness checks; idle on followers.
pub(crate) async fn run_duties(
    node: NodeRef,
    live: Arc<Mutex<Liveness>>,
    cfg: Arc<MetaConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let down_after = Duration::from_millis(cfg.osd_down_after_ms);
    let period = (down_after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let info = node.info();
        if !info.is_leader {
            continue;
        }
        let map = node.local_map();
        let now = Instant::now();
        let cmds = {
            let mut live = live.lock().expect("liveness lock");
            live.enter_term(info.term, now);
            due(&live, &map, down_after, cfg.osd_out_after_ms, now, now_ms())
        };
        for cmd in cmds {
            tracing::info!(?cmd, "osd liveness timeout");
            if let Err(e) = node.propose(cmd).await {
                tracing::warn!(error = %e, "could not propose an osd state change");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::map::OsdInfo;
    use cairn_proto::ClusterMap;

    fn map_with(osds: &[(u32, bool, bool, Option<u64>)]) -> ClusterMap {
        let mut m = ClusterMap::default();
        for &(id, up, inc, down_since_ms) in osds {
            m.osds.insert(
                OsdId(id),
                OsdInfo {
                    id: OsdId(id),
                    addr: String::new(),
                    host: String::new(),
                    weight: 1.0,
                    capacity: 0,
                    used: 0,
                    up,
                    in_cluster: inc,
                    down_since_ms,
                },
            );
        }
        m
    }

    fn hb(id: u32) -> OsdHeartbeat {
        OsdHeartbeat {
            id: OsdId(id),
            epoch: 1,
            capacity: 100,
            used: 7,
            pgs: vec![(PgId::new(cairn_proto::PoolId(1), id), PgState::Degraded)],
        }
    }

    #[test]
    fn silent_osds_go_down_after_the_grace_period_and_down_ones_go_out() {
        let t0 = Instant::now();
        let mut live = Liveness::new();
        live.enter_term(3, t0);
        let map = map_with(&[
            (0, true, true, None),
            (1, true, true, None),
            (2, false, true, Some(1_000)),
            (3, false, false, Some(0)),
        ]);
        let down = Duration::from_secs(5);
        // Within the grace period nothing is due, however old the reports are.
        assert!(due(
            &live,
            &map,
            down,
            60_000,
            t0 + Duration::from_secs(1),
            2_000
        )
        .is_empty());
        live.record(&hb(0), t0 + Duration::from_secs(4));
        let cmds = due(
            &live,
            &map,
            down,
            60_000,
            t0 + Duration::from_secs(6),
            61_000,
        );
        assert_eq!(
            cmds,
            vec![
                MetaCommand::SetOsdState {
                    id: OsdId(1),
                    up: Some(false),
                    in_cluster: None
                },
                MetaCommand::SetOsdState {
                    id: OsdId(2),
                    up: None,
                    in_cluster: Some(false)
                },
            ]
        );
        assert_eq!(live.usage(OsdId(0)), Some((7, 100)));
        assert_eq!(live.pg_states(down, t0 + Duration::from_secs(5)).len(), 1);
        assert!(live
            .pg_states(down, t0 + Duration::from_secs(10))
            .is_empty());
        // A new term forgets the reports and restarts the grace period.
        live.enter_term(4, t0 + Duration::from_secs(10));
        assert_eq!(live.usage(OsdId(0)), None);
        assert!(due(&live, &map, down, u64::MAX, t0 + Duration::from_secs(14), 0).is_empty());
        assert!(live.begin_mark_up(OsdId(1)));
        assert!(!live.begin_mark_up(OsdId(1)));
        live.end_mark_up(OsdId(1));
        assert!(live.begin_mark_up(OsdId(1)));
    }
}
