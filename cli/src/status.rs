//! `cairn status`: the cluster map as tables or JSON.

use crate::util::{connect, human_bytes};
use anyhow::Result;
use cairn_proto::msg::{MetaRequest, MetaResponse, MetaStatus};
use cairn_proto::{ClusterMap, PgId, PgState};
use std::collections::BTreeMap;

#[derive(serde::Serialize)]
struct StatusJson<'a> {
    map: &'a ClusterMap,
    meta: &'a MetaStatus,
    pg_states: BTreeMap<String, &'static str>,
    pg_summary: BTreeMap<&'static str, usize>,
}

/// The state of every placement group of every pool: reported by its primary, or inferred from the
/// map when no report arrived yet.
pub fn pg_states(map: &ClusterMap, reports: &[(PgId, PgState)]) -> BTreeMap<PgId, PgState> {
    let reported: BTreeMap<PgId, PgState> = reports.iter().copied().collect();
    let mut out = BTreeMap::new();
    for pool in map.pools.values() {
        for pg in pool.pgs() {
            let up = map.pg_up(pg).len();
            let st = match reported.get(&pg) {
                Some(s) => *s,
                None if up < usize::from(pool.min_size) => PgState::Inactive,
                None if up < usize::from(pool.size) => PgState::Degraded,
                None => PgState::Peering,
            };
            out.insert(pg, st);
        }
    }
    out
}

pub async fn run(meta: Vec<String>, json: bool) -> Result<()> {
    let cluster = connect(meta).await?;
    let map = cluster.refresh_map().await?;
    let status = match cluster.meta().call(MetaRequest::Status).await? {
        MetaResponse::Status(s) => s,
        other => anyhow::bail!("unexpected status reply {other:?}"),
    };
    let states = pg_states(&map, &status.pgs);
    let mut summary: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in states.values() {
        *summary.entry(s.as_str()).or_default() += 1;
    }
    if json {
        let j = StatusJson {
            map: &map,
            meta: &status,
            pg_states: states
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_str()))
                .collect(),
            pg_summary: summary,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("cluster epoch {}", map.epoch);
    println!();
    println!(
        "metadata (raft term {}, commit {})",
        status.term, status.commit
    );
    for (id, addr) in &map.meta_members {
        let role = if Some(*id) == map.meta_leader {
            "leader"
        } else {
            "follower"
        };
        println!("  {id:<4} {addr:<22} {role}");
    }
    println!();
    println!(
        "{:<8} {:<22} {:<12} {:>6} {:>12} {:>12} {:<5} {:<4}",
        "OSD", "ADDRESS", "HOST", "WEIGHT", "CAPACITY", "USED", "UP", "IN"
    );
    for o in map.osds.values() {
        println!(
            "{:<8} {:<22} {:<12} {:>6.2} {:>12} {:>12} {:<5} {:<4}",
            o.id.to_string(),
            o.addr,
            o.host,
            o.weight,
            human_bytes(o.capacity),
            human_bytes(o.used),
            if o.up { "up" } else { "down" },
            if o.in_cluster { "in" } else { "out" }
        );
    }
    println!();
    println!(
        "{:<16} {:>4} {:>4} {:>8} {:>6}  MODE",
        "POOL", "ID", "SIZE", "MIN_SIZE", "PGS"
    );
    for p in map.pools.values() {
        println!(
            "{:<16} {:>4} {:>4} {:>8} {:>6}  {:?}",
            p.name, p.id.0, p.size, p.min_size, p.pg_num, p.mode
        );
    }
    println!();
    let parts: Vec<String> = summary.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "placement groups: {}",
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    );
    Ok(())
}
