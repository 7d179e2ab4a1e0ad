//! OSDs serving through the RPC server with a metadata service: single-node serving,
//! replication, failures, recovery, re-replication, full disks, corruption and scrub.

mod common;

use bytes::Bytes;
use cairn_proto::map::WriteMode;
use cairn_proto::msg::{OsdRequest, OsdResponse, Request, Response};
use cairn_proto::object::Filter;
use cairn_proto::{ObjOp, Oid, Value, WireError};
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn timeout<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(300), f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_osd_serves_object_operations() {
    timeout(async {
        let c = Cluster::start(1, |_| {}).await;
        let pool = c.create_pool("p", 1, 1, 8, WriteMode::Sync).await;
        c.wait_clean().await;
        let oid = Oid::from_name("a");
        c.put(pool, oid, b"hello world").await.unwrap();
        assert_eq!(c.read(pool, oid, 6, 100).await.unwrap(), &b"world"[..]);
        // Writes at offsets, holes read as zeros.
        c.mutate(
            pool,
            oid,
            ObjOp::Write {
                offset: 20,
                data: Bytes::from_static(b"!"),
            },
        )
        .await
        .unwrap();
        let all = c.read(pool, oid, 0, 1000).await.unwrap();
        assert_eq!(&all[..11], b"hello world");
        assert!(all[11..20].iter().all(|b| *b == 0));
        assert_eq!(all.len(), 21);
        // Stat, typed fields and a query on the device.
        let fields: BTreeMap<String, Value> = [
            ("age".to_string(), Value::I64(33)),
            ("name".to_string(), Value::Str("bob".into())),
        ]
        .into();
        c.mutate(
            pool,
            oid,
            ObjOp::SetTyped {
                otype: "person".into(),
                fields: fields.clone(),
            },
        )
        .await
        .unwrap();
        let st = match c
            .call(pool, oid, |epoch| OsdRequest::Stat {
                epoch,
                pool,
                oid,
                fence: None,
            })
            .await
            .unwrap()
        {
            OsdResponse::Stat(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(st.size, 21);
        assert_eq!(st.fields, fields);
        let map = c.map().await;
        let pgs: Vec<_> = map.pools[&pool].pgs().collect();
        let filter = Filter::parse("age >= 30 AND name prefix 'b'").unwrap();
        let req = OsdRequest::Query {
            epoch: map.epoch,
            pgs: pgs.clone(),
            otype: "person".into(),
            filter: filter.clone(),
            after: None,
            limit: 10,
        };
        let r = c
            .rpc
            .call(c.osd(0).addr(), Request::Osd(req), Duration::from_secs(10))
            .await
            .unwrap();
        let Response::Osd(OsdResponse::Hits { hits, more }) = r else {
            panic!("{r:?}")
        };
        assert!(!more);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].oid, oid);
        // A stale epoch is refused, and an unknown object is an error, not empty data.
        let r = c
            .rpc
            .call(
                c.osd(0).addr(),
                Request::Osd(OsdRequest::Stat {
                    epoch: map.epoch - 1,
                    pool,
                    oid,
                    fence: None,
                }),
                Duration::from_secs(10),
            )
            .await;
        assert!(matches!(
            r,
            Err(cairn_proto::rpc::RpcError::Remote(
                WireError::StaleEpoch { .. }
            ))
        ));
        let missing = Oid::from_name("nope");
        assert!(matches!(
            c.read(pool, missing, 0, 10).await,
            Err(WireError::NoSuchObject { .. })
        ));
        c.mutate(pool, oid, ObjOp::Delete).await.unwrap();
        assert!(matches!(
            c.read(pool, oid, 0, 10).await,
            Err(WireError::NoSuchObject { .. })
        ));
        // Status reports counters.
        let r = c
            .rpc
            .call(
                c.osd(0).addr(),
                Request::Osd(OsdRequest::Status),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let Response::Osd(OsdResponse::Status(s)) = r else {
            panic!("{r:?}")
        };
        assert!(s.stats.writes >= 4);
        assert_eq!(s.pgs.len(), 8);
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_and_keeps_acknowledged_writes() {
    timeout(async {
        let mut c = Cluster::start(1, |_| {}).await;
        let pool = c.create_pool("p", 1, 1, 4, WriteMode::Sync).await;
        c.wait_clean().await;
        for i in 0..20u64 {
            c.put(pool, Oid(u128::from(i)), &content(i, 100_000))
                .await
                .unwrap();
        }
        let id = c.osd(0).id();
        // No final checkpoint: the journal holds the writes.
        c.kill(0).await;
        c.restart(0, |_| {}).await;
        assert_eq!(c.osd(0).id(), id, "the id persists across restarts");
        c.wait_clean().await;
        for i in 0..20u64 {
            assert_eq!(
                c.read(pool, Oid(u128::from(i)), 0, 200_000).await.unwrap(),
                content(i, 100_000)
            );
        }
        c.shutdown().await;
    })
    .await
    .unwrap();
}

/// Every OSD in the object's set holds it at the primary's version with the primary's bytes.
async fn assert_replicated(c: &Cluster, pool: cairn_proto::PoolId, oid: Oid, want: &[u8]) {
    let map = c.map().await;
    let pg = map.pools[&pool].pg_of(oid);
    let set = map.pg_osds(pg);
    assert_eq!(set.len(), usize::from(map.pools[&pool].size));
    let mut version = None;
    for id in set {
        let h = c.by_id(id).expect("member running");
        let st = h
            .store()
            .stat(pg, oid)
            .unwrap()
            .unwrap_or_else(|| panic!("{oid} missing on {id}"));
        assert_eq!(
            *version.get_or_insert(st.version),
            st.version,
            "{oid} on {id}"
        );
        let data = h.store().read(pg, oid, 0, u64::MAX).unwrap();
        assert!(data == want, "{oid} differs on {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_osds_replicate_writes_and_reads() {
    timeout(async {
        let c = Cluster::start(3, |_| {}).await;
        let pool = c.create_pool("p", 3, 2, 16, WriteMode::Sync).await;
        c.wait_clean().await;
        let sizes = [0usize, 10, 65_536, 65_537, 300_000, 5 << 20];
        for (i, size) in sizes.iter().enumerate() {
            let oid = Oid(i as u128 + 1);
            c.put(pool, oid, &content(i as u64, *size)).await.unwrap();
        }
        for (i, size) in sizes.iter().enumerate() {
            let oid = Oid(i as u128 + 1);
            let want = content(i as u64, *size);
            let got = c.read(pool, oid, 0, u32::MAX).await.unwrap();
            assert!(got == want, "object {i}");
            assert_replicated(&c, pool, oid, &want).await;
        }
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_misses_writes_then_catches_up_from_the_log() {
    timeout(async {
        let mut c = Cluster::start(3, |_| {}).await;
        let pool = c.create_pool("p", 3, 2, 8, WriteMode::Sync).await;
        c.wait_clean().await;
        let n = 60u64;
        let mut latest: BTreeMap<Oid, u64> = BTreeMap::new();
        for i in 0..n {
            c.put(pool, Oid(u128::from(i)), &content(i, 2000))
                .await
                .unwrap();
            latest.insert(Oid(u128::from(i)), i);
        }
        // Kill OSD 2 while a stream of writes is running.
        let victim = 2;
        let victim_id = c.osd(victim).id();
        let mut since_kill = std::collections::BTreeSet::new();
        let mut seed = 1000;
        for step in 0..40u64 {
            if step == 10 {
                c.kill(victim).await;
            }
            let oid = Oid(u128::from((step * 7) % 20));
            seed += 1;
            c.put(pool, oid, &content(seed, 3000)).await.unwrap();
            latest.insert(oid, seed);
            if step >= 10 {
                since_kill.insert(oid);
            }
        }
        // Every acknowledged write reads back.
        for (oid, s) in &latest {
            let len = if *s >= 1000 { 3000 } else { 2000 };
            assert_eq!(
                c.read(pool, *oid, 0, 10_000).await.unwrap(),
                content(*s, len)
            );
        }
        let recovered_before: u64 = c
            .osds
            .iter()
            .flatten()
            .map(|h| h.stats().objects_recovered)
            .sum();
        c.restart(victim, |_| {}).await;
        assert_eq!(c.osd(victim).id(), victim_id);
        c.wait_clean().await;
        let recovered: u64 = c
            .osds
            .iter()
            .flatten()
            .map(|h| h.stats().objects_recovered)
            .sum::<u64>()
            - recovered_before;
        // Only objects changed while it was away were copied (the write in flight at the kill
        // may or may not have reached it).
        assert!(
            recovered >= since_kill.len() as u64 - 1,
            "{recovered} < {}",
            since_kill.len()
        );
        assert!(
            recovered <= since_kill.len() as u64 + 1,
            "{recovered} > {}",
            since_kill.len()
        );
        for (oid, s) in &latest {
            let len = if *s >= 1000 { 3000 } else { 2000 };
            assert_replicated(&c, pool, *oid, &content(*s, len)).await;
        }
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_an_osd_out_rereplicates_its_objects() {
    timeout(async {
        let c = Cluster::start(4, |_| {}).await;
        let pool = c.create_pool("p", 3, 2, 16, WriteMode::Sync).await;
        c.wait_clean().await;
        for i in 0..40u64 {
            c.put(pool, Oid(u128::from(i) * 31), &content(i, 5000))
                .await
                .unwrap();
        }
        let out = c.osd(1).id();
        c.mc.command(cairn_proto::msg::MetaCommand::SetOsdState {
            id: out,
            up: None,
            in_cluster: Some(false),
        })
        .await
        .unwrap();
        c.wait_clean().await;
        let map = c.map().await;
        for i in 0..40u64 {
            let oid = Oid(u128::from(i) * 31);
            assert!(!map.pg_osds(map.pools[&pool].pg_of(oid)).contains(&out));
            assert_replicated(&c, pool, oid, &content(i, 5000)).await;
        }
        // The out OSD drops its copies once their PGs are clean elsewhere.
        let store = c.osd(1).store();
        eventually("stray copies removed", || store.pgs().unwrap().is_empty()).await;
        assert_eq!(store.used_bytes(), 0);
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_no_space_and_keeps_data() {
    timeout(async {
        let c = Cluster::start(3, |cfg| cfg.capacity = 1 << 20).await;
        let pool = c.create_pool("p", 3, 2, 4, WriteMode::Sync).await;
        c.wait_clean().await;
        let mut stored = Vec::new();
        let mut refused = None;
        for i in 0..40u64 {
            match c.put(pool, Oid(u128::from(i)), &content(i, 100_000)).await {
                Ok(_) => stored.push(i),
                Err(WireError::NoSpace { .. }) => {
                    refused = Some(i);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let refused = refused.expect("capacity must run out");
        assert!(stored.len() >= 5);
        // The refused object does not exist anywhere, the stored ones are intact.
        let map = c.map().await;
        let pg = map.pools[&pool].pg_of(Oid(u128::from(refused)));
        for h in c.osds.iter().flatten() {
            assert!(h
                .store()
                .stat(pg, Oid(u128::from(refused)))
                .unwrap()
                .is_none());
        }
        for i in &stored {
            assert_eq!(
                c.read(pool, Oid(u128::from(*i)), 0, 200_000).await.unwrap(),
                content(*i, 100_000)
            );
        }
        // Deleting frees space for new writes.
        c.mutate(pool, Oid(u128::from(stored[0])), ObjOp::Delete)
            .await
            .unwrap();
        c.put(pool, Oid(u128::from(refused)), &content(refused, 100_000))
            .await
            .unwrap();
        c.shutdown().await;
    })
    .await
    .unwrap();
}

/// The OSD holding `oid` as `role` (0: primary) and its data file for it.
async fn copy_of(
    c: &Cluster,
    pool: cairn_proto::PoolId,
    oid: Oid,
    role: usize,
) -> (usize, std::path::PathBuf) {
    let map = c.map().await;
    let id = map.pg_osds(map.pools[&pool].pg_of(oid))[role];
    let i = c
        .osds
        .iter()
        .position(|h| h.as_ref().is_some_and(|h| h.id() == id))
        .unwrap();
    let name = oid.to_string();
    let file = data_files(&c.dirs[i])
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&name))
        .expect("data file");
    (i, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_primary_copy_is_repaired_on_read() {
    timeout(async {
        let c = Cluster::start(3, |_| {}).await;
        let pool = c.create_pool("p", 3, 2, 8, WriteMode::Sync).await;
        c.wait_clean().await;
        let oid = Oid::from_name("precious");
        let data = content(5, 300_000);
        c.put(pool, oid, &data).await.unwrap();
        let (i, file) = copy_of(&c, pool, oid, 0).await;
        let map = c.map().await;
        let pg = map.pools[&pool].pg_of(oid);
        c.osd(i).store().sync().unwrap();
        flip_byte(&file, 70_000);
        assert!(matches!(
            c.osd(i).store().read(pg, oid, 0, u64::MAX),
            Err(cairn_osd::Error::Corrupt { offset: 65_536, .. })
        ));
        assert_eq!(c.read(pool, oid, 0, u32::MAX).await.unwrap(), data);
        assert!(c.osd(i).stats().repairs >= 1);
        assert!(c.osd(i).stats().checksum_errors >= 1);
        // The bad copy was rewritten.
        c.osd(i).store().verify(pg, oid).unwrap();
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_and_repairs_damage_without_a_read() {
    timeout(async {
        let c = Cluster::start(3, |cfg| cfg.scrub_interval_ms = 3_600_000).await;
        let pool = c.create_pool("p", 3, 2, 8, WriteMode::Sync).await;
        c.wait_clean().await;
        let oid = Oid::from_name("quiet");
        let data = content(6, 200_000);
        c.put(pool, oid, &data).await.unwrap();
        let (i, file) = copy_of(&c, pool, oid, 2).await;
        c.osd(i).store().sync().unwrap();
        flip_byte(&file, 150_000);
        let pg = c.map().await.pools[&pool].pg_of(oid);
        assert!(c.osd(i).store().verify(pg, oid).is_err());
        c.osd(i).scrub_now();
        let h = c.osd(i);
        eventually("scrub repair", || h.stats().repairs >= 1).await;
        assert!(h.stats().scrub_errors >= 1);
        assert!(h.stats().objects_scrubbed >= 1);
        h.store().verify(pg, oid).unwrap();
        assert_replicated(&c, pool, oid, &data).await;
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_semi_sync_pools_reach_every_replica() {
    timeout(async {
        let c = Cluster::start(3, |_| {}).await;
        let a = c.create_pool("a", 3, 1, 4, WriteMode::Async).await;
        let s = c
            .create_pool("s", 3, 1, 4, WriteMode::SemiSync { window: 2 })
            .await;
        c.wait_clean().await;
        for i in 0..30u64 {
            let oid = Oid(u128::from(i));
            c.put(a, oid, &content(i, 1000)).await.unwrap();
            // Overwrites of one object arrive in order.
            c.mutate(
                s,
                Oid(1),
                ObjOp::Write {
                    offset: i * 10,
                    data: Bytes::from(content(i, 10)),
                },
            )
            .await
            .unwrap();
        }
        let mut want = Vec::new();
        for i in 0..30u64 {
            want.extend(content(i, 10));
        }
        let map = c.map().await;
        for pool in [a, s] {
            let pg_of = |o: Oid| map.pools[&pool].pg_of(o);
            let objs: Vec<(Oid, Vec<u8>)> = if pool == a {
                (0..30u64)
                    .map(|i| (Oid(u128::from(i)), content(i, 1000)))
                    .collect()
            } else {
                vec![(Oid(1), want.clone())]
            };
            for (oid, data) in objs {
                for id in map.pg_osds(pg_of(oid)) {
                    let store = c.by_id(id).unwrap().store();
                    let pg = pg_of(oid);
                    eventually("replica write", || {
                        store.read(pg, oid, 0, u64::MAX).is_ok_and(|d| d == data)
                    })
                    .await;
                }
            }
        }
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_osd_beyond_the_log_is_backfilled() {
    timeout(async {
        let mut c = Cluster::start(3, |cfg| cfg.pg_log_keep = 5).await;
        let pool = c.create_pool("p", 3, 2, 4, WriteMode::Sync).await;
        c.wait_clean().await;
        for i in 0..30u64 {
            c.put(pool, Oid(u128::from(i)), &content(i, 1500))
                .await
                .unwrap();
        }
        c.stop(1).await;
        // Far more changes per PG than the logs keep: overwrites, deletes, new objects.
        for i in 0..10u64 {
            c.put(pool, Oid(u128::from(i)), &content(i + 100, 1500))
                .await
                .unwrap();
        }
        for i in 10..20u64 {
            c.mutate(pool, Oid(u128::from(i)), ObjOp::Delete)
                .await
                .unwrap();
        }
        for i in 30..40u64 {
            c.put(pool, Oid(u128::from(i)), &content(i, 1500))
                .await
                .unwrap();
        }
        c.restart(1, |cfg| cfg.pg_log_keep = 5).await;
        c.wait_clean().await;
        let map = c.map().await;
        for i in 0..40u64 {
            let oid = Oid(u128::from(i));
            match i {
                0..10 => assert_replicated(&c, pool, oid, &content(i + 100, 1500)).await,
                10..20 => {
                    let pg = map.pools[&pool].pg_of(oid);
                    for h in c.osds.iter().flatten() {
                        assert!(
                            h.store().stat(pg, oid).unwrap().is_none(),
                            "{oid} on {}",
                            h.id()
                        );
                    }
                }
                _ => assert_replicated(&c, pool, oid, &content(i, 1500)).await,
            }
        }
        c.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_to_one_pg_stay_in_version_order() {
    timeout(async {
        let c = std::sync::Arc::new(Cluster::start(3, |_| {}).await);
        let pool = c.create_pool("p", 3, 2, 1, WriteMode::Sync).await;
        c.wait_clean().await;
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..15u64 {
                    let oid = Oid(u128::from(t * 100 + i % 4));
                    let v = c
                        .mutate(
                            pool,
                            oid,
                            ObjOp::Write {
                                offset: i * 7,
                                data: Bytes::from(content(t * 1000 + i, 7)),
                            },
                        )
                        .await
                        .unwrap();
                    versions.push(v);
                }
                versions
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        // Every acknowledged write got its own version, and every member saw all of them.
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 90);
        let map = c.map().await;
        let pg = map.pools[&pool].pg_of(Oid(0));
        for id in map.pg_osds(pg) {
            let info = c.by_id(id).unwrap().store().pg_info(pg).unwrap();
            assert_eq!(info.last_update, *all.last().unwrap(), "{id}");
            assert_eq!(info.last_complete, info.last_update, "{id}");
        }
        for t in 0..6u64 {
            for k in 0..4u64 {
                let oid = Oid(u128::from(t * 100 + k));
                let primary = c.read(pool, oid, 0, 1000).await.unwrap();
                assert_replicated(&c, pool, oid, &primary).await;
            }
        }
        match std::sync::Arc::try_unwrap(c) {
            Ok(c) => c.shutdown().await,
            Err(_) => panic!("cluster still shared"),
        }
    })
    .await
    .unwrap();
}

/// One acknowledged write of the model test: which object, where, its version, and what the
/// writer read back right after the acknowledgement.
struct Acked {
    oid: Oid,
    offset: u64,
    cells: u64,
    version: u64,
    seen: Bytes,
}

/// Bytes of the model test's objects: 2-byte cells, each holding the id of the write that put
/// it there (0: never written).
const MODEL_LEN: u64 = 512;

fn cell(buf: &[u8], i: u64) -> u16 {
    let i = i as usize * 2;
    match buf.get(i..i + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_writes_read_back_as_the_version_order_model() {
    use rand::{Rng, SeedableRng};
    timeout(async {
        let c = std::sync::Arc::new(Cluster::start(3, |_| {}).await);
        // One PG, so every write of every object is ordered by the same primary.
        let pool = c.create_pool("p", 3, 2, 1, WriteMode::Sync).await;
        c.wait_clean().await;
        let objects = [Oid(7), Oid(8)];
        let mut tasks = Vec::new();
        for w in 0..8u16 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(w));
                let mut out = Vec::new();
                for i in 0..24u16 {
                    let id = w * 100 + i + 1;
                    // Most writes hit the shared object, the rest the other one.
                    let oid = objects[usize::from(rng.gen_bool(0.25))];
                    let cells = rng.gen_range(1..=64u64);
                    let offset = rng.gen_range(0..=MODEL_LEN / 2 - cells);
                    let data: Vec<u8> = (0..cells).flat_map(|_| id.to_be_bytes()).collect();
                    let version = c
                        .mutate(
                            pool,
                            oid,
                            ObjOp::Write {
                                offset: offset * 2,
                                data: Bytes::from(data),
                            },
                        )
                        .await
                        .unwrap();
                    let seen = c.read(pool, oid, 0, MODEL_LEN as u32).await.unwrap();
                    out.push((
                        id,
                        Acked {
                            oid,
                            offset,
                            cells,
                            version,
                            seen,
                        },
                    ));
                }
                out
            }));
        }
        let mut acked = BTreeMap::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        let covers = |a: &Acked, oid: Oid, i: u64| {
            a.oid == oid && (a.offset..a.offset + a.cells).contains(&i)
        };
        // Right after each acknowledgement, each cell of the write holds it or a later write
        // over that cell; every other cell holds some write over it, or nothing.
        for (id, a) in &acked {
            for i in 0..MODEL_LEN / 2 {
                let got = cell(&a.seen, i);
                if covers(a, a.oid, i) {
                    let later = acked
                        .get(&got)
                        .is_some_and(|b| b.version >= a.version && covers(b, a.oid, i));
                    assert!(later, "write {id} (v{}), cell {i}: holds {got}", a.version);
                } else if got != 0 {
                    assert!(
                        acked.get(&got).is_some_and(|b| covers(b, a.oid, i)),
                        "write {id}, cell {i}: holds {got}, which never wrote there"
                    );
                }
            }
        }
        // Afterwards every object on every member is the writes applied in version order.
        let mut versions: Vec<u64> = acked.values().map(|a| a.version).collect();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), acked.len(), "two writes got one version");
        for oid in objects {
            let mut model = vec![0u16; (MODEL_LEN / 2) as usize];
            let mut order: Vec<(&u16, &Acked)> =
                acked.iter().filter(|(_, a)| a.oid == oid).collect();
            order.sort_by_key(|(_, a)| a.version);
            for (id, a) in order {
                for i in a.offset..a.offset + a.cells {
                    model[i as usize] = *id;
                }
            }
            let last = model.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
            let want: Vec<u8> = model[..last].iter().flat_map(|x| x.to_be_bytes()).collect();
            let got = c.read(pool, oid, 0, MODEL_LEN as u32).await.unwrap();
            assert_eq!(got, want, "{oid}: not the version-order model");
            assert_replicated(&c, pool, oid, &want).await;
        }
        match std::sync::Arc::try_unwrap(c) {
            Ok(c) => c.shutdown().await,
            Err(_) => panic!("cluster still shared"),
        }
    })
    .await
    .unwrap();
}
