//! Placement: object → placement group → ordered OSD set, by weighted rendezvous hashing (straw2).
//!
//! For each OSD that is in and has weight, draw `ln(u) / weight` where `u ∈ (0, 1]` is a hash of
//! (pool, pg seed, osd id); the set is the OSDs with the largest draws, skipping any whose failure
//! domain is taken while other domains remain. Adding or removing one OSD only moves the placement
//! groups in which it wins or loses a place, and each OSD's share is proportional to its weight.
//! Down OSDs stay in the set (the group is degraded, data does not move) until they are marked out.

use crate::ids::{OsdId, PgId};
use crate::map::{ClusterMap, FailureDomain, Pool};

fn draw(pg: PgId, osd: OsdId, weight: f64) -> f64 {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&pg.to_be_bytes());
    key[8..].copy_from_slice(&osd.0.to_be_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&key);
    // u in (0, 1]: never ln(0).
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    u.ln() / weight
}

/// The ordered OSD set of `pg`: up to `pool.size` OSDs.
pub fn pg_osds(map: &ClusterMap, pool: &Pool, pg: PgId) -> Vec<OsdId> {
    let mut cands: Vec<(f64, OsdId, &str)> = map
        .osds
        .values()
        .filter(|o| o.in_cluster && o.weight > 0.0)
        .map(|o| (draw(pg, o.id, o.weight), o.id, o.host.as_str()))
        .collect();
    // Largest draw first; ties (vanishingly rare) broken by id so every node agrees.
    cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let want = usize::from(pool.size);
    let mut out: Vec<OsdId> = Vec::with_capacity(want);
    let mut hosts: Vec<&str> = Vec::new();
    if pool.failure_domain == FailureDomain::Host {
        for (_, id, host) in &cands {
            if out.len() == want {
                break;
            }
            if !hosts.contains(host) {
                hosts.push(host);
                out.push(*id);
            }
        }
    }
    // Osd domain, or not enough hosts: fill with the best remaining OSDs.
    for (_, id, _) in &cands {
        if out.len() == want {
            break;
        }
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PoolId;
    use crate::map::{OsdInfo, WriteMode};

    fn map(n: u32) -> ClusterMap {
        let mut m = ClusterMap::default();
        for i in 0..n {
            m.osds.insert(
                OsdId(i),
                OsdInfo {
                    id: OsdId(i),
                    addr: format!("127.0.0.1:{}", 7100 + i),
                    host: format!("h{}", i % 2),
                    weight: 1.0,
                    capacity: 1 << 30,
                    used: 0,
                    up: true,
                    in_cluster: true,
                    down_since_ms: None,
                },
            );
        }
        m
    }

    fn pool(size: u8, fd: FailureDomain) -> Pool {
        Pool {
            id: PoolId(1),
            name: "p".into(),
            size,
            min_size: 1,
            pg_num: 256,
            mode: WriteMode::Sync,
            failure_domain: fd,
        }
    }

    #[test]
    fn sets_are_distinct_and_full() {
        let m = map(5);
        let p = pool(3, FailureDomain::Osd);
        for pg in p.pgs() {
            let s = pg_osds(&m, &p, pg);
            assert_eq!(s.len(), 3);
            let mut d = s.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
    }

    #[test]
    fn host_domain_spreads_over_hosts() {
        let m = map(4);
        let p = pool(2, FailureDomain::Host);
        for pg in p.pgs() {
            let s = pg_osds(&m, &p, pg);
            assert_ne!(s[0].0 % 2, s[1].0 % 2, "{s:?} share a host");
        }
    }

    #[test]
    fn removing_an_osd_moves_only_its_groups() {
        let m = map(6);
        let p = pool(3, FailureDomain::Osd);
        let mut m2 = m.clone();
        m2.osds.get_mut(&OsdId(2)).unwrap().in_cluster = false;
        for pg in p.pgs() {
            let before = pg_osds(&m, &p, pg);
            let after = pg_osds(&m2, &p, pg);
            if !before.contains(&OsdId(2)) {
                assert_eq!(before, after);
            } else {
                let kept: Vec<_> = before.iter().filter(|o| **o != OsdId(2)).collect();
                assert!(kept.iter().all(|o| after.contains(o)));
            }
        }
    }

    #[test]
    fn shares_follow_weights() {
        let mut m = map(3);
        m.osds.get_mut(&OsdId(0)).unwrap().weight = 2.0;
        let p = Pool {
            pg_num: 4000,
            ..pool(1, FailureDomain::Osd)
        };
        let mut counts = [0u32; 3];
        for pg in p.pgs() {
            counts[pg_osds(&m, &p, pg)[0].0 as usize] += 1;
        }
        // Expect 2:1:1 → 2000/1000/1000 give or take sampling noise.
        assert!((1800..2200).contains(&counts[0]), "{counts:?}");
        assert!((850..1150).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn down_osds_stay_in_set_but_not_primary() {
        let mut m = map(4);
        let p = pool(3, FailureDomain::Osd);
        m.pools.insert(p.id, p.clone());
        let pg = PgId::new(p.id, 3);
        let set = m.pg_osds(pg);
        m.osds.get_mut(&set[0]).unwrap().up = false;
        assert_eq!(m.pg_osds(pg), set);
        assert_eq!(m.pg_primary(pg), Some(set[1]));
    }
}
