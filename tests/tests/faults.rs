//! Failures on a multi-process cluster: kill -9 of the metadata leader and of OSDs in the middle of
//! acknowledged writes, OSDs coming back, and garbage on every port.

use bytes::Bytes;
use cairn_client::PoolSpec;
use cairn_proto::msg::{MetaRequest, MetaResponse};
use cairn_proto::Oid;
use cairn_tests::{bounded_async, ClusterOpts, ProcCluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_leader_kill_loses_nothing() {
    bounded_async(240, async {
        let mut c = ProcCluster::start(ClusterOpts {
            osds: 1,
            ..Default::default()
        })
        .await?;
        let cl = c.client().await?;
        for i in 0..5 {
            let mut s = PoolSpec::new(&format!("before-{i}"));
            s.size = 1;
            s.min_size = 1;
            cl.create_pool(s).await?;
        }
        let li = c.meta_leader_index().await?;
        c.metas[li].kill9();
        let killed_at = Instant::now();
        // A new leader serves within a few seconds and still has every committed pool.
        let cl2 = cairn_client::Cluster::connect(c.meta_addrs.clone()).await?;
        let map = cl2.refresh_map().await?;
        let took = killed_at.elapsed();
        assert!(took < Duration::from_secs(15), "failover took {took:?}");
        for i in 0..5 {
            assert!(
                map.pool_by_name(&format!("before-{i}")).is_some(),
                "pool before-{i} lost"
            );
        }
        assert_ne!(map.meta_leader, Some(li as u64 + 1));
        let mut s = PoolSpec::new("after");
        s.size = 1;
        s.min_size = 1;
        cl2.create_pool(s).await?;
        // The old leader comes back and catches up.
        c.metas[li].start()?;
        let rpc = cairn_proto::rpc::RpcClient::new();
        let start = Instant::now();
        loop {
            let r = rpc
                .call(
                    &c.meta_addrs[li],
                    cairn_proto::Request::Meta(MetaRequest::Status),
                    Duration::from_secs(2),
                )
                .await;
            if let Ok(cairn_proto::Response::Meta(MetaResponse::Status(st))) = r {
                let leader_commit = {
                    let m = cl2.meta().call(MetaRequest::Status).await?;
                    match m {
                        MetaResponse::Status(s) => s.commit,
                        _ => 0,
                    }
                };
                if st.applied >= leader_commit && leader_commit > 0 {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "restarted replica did not catch up\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn osd_kill9_during_writes_loses_no_acknowledged_write() {
    bounded_async(300, async {
        let mut c = ProcCluster::start(ClusterOpts::default()).await?;
        let cl = c.client().await?;
        let mut spec = PoolSpec::new("p");
        spec.pg_num = 16;
        cl.create_pool(spec).await?;
        let io = cl.pool_io("p").await?;
        let acked: Arc<Mutex<Vec<(Oid, Bytes)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u128 {
            let (io, acked, stop) = (io.clone(), acked.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0u128;
                while !stop.load(Ordering::Relaxed) {
                    let oid = Oid((w << 64) | n);
                    // Every fourth object is large enough to be placed (its data written
                    // straight into the store, only a small record journaled).
                    let data = if n.is_multiple_of(4) {
                        Bytes::from(format!("writer {w} object {n} ").repeat(8000))
                    } else {
                        Bytes::from(format!("writer {w} object {n} ").repeat(50))
                    };
                    io.write_full(oid, data.clone()).await?;
                    acked.lock().unwrap().push((oid, data));
                    n += 1;
                }
                anyhow::Ok(n)
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = acked.lock().unwrap().len();
        c.osds[1].kill9();
        // Writes go on while the OSD is dead (after the map marks it down).
        let t = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if acked.lock().unwrap().len() > before + 200 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "writes stalled after the OSD died\n{}",
                c.logs()
            );
        }
        // It comes back and catches up while the writes continue.
        c.osds[1].start()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            if let Err(e) = w.await? {
                panic!("a writer failed: {e:#}\n{}", c.logs());
            }
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() > before + 200);
        for (oid, data) in &acked {
            match io.get(*oid).await {
                Ok(d) => assert_eq!(&d, data, "acknowledged write of {oid} changed"),
                Err(e) => {
                    let pg = io.pool().pg_of(*oid);
                    let map = cl.refresh_map().await?;
                    panic!(
                        "acknowledged write of {oid} (pg {pg}, set {:?}) lost: {e}\n{}",
                        map.pg_osds(pg),
                        c.logs()
                    );
                }
            }
        }
        // Every placement group returns to active+clean.
        let t = Instant::now();
        loop {
            if let MetaResponse::Status(s) = cl.meta().call(MetaRequest::Status).await? {
                let map = cl.refresh_map().await?;
                let total: u32 = map.pools.values().map(|p| p.pg_num).sum();
                let clean = s
                    .pgs
                    .iter()
                    .filter(|(_, st)| *st == cairn_proto::PgState::ActiveClean)
                    .count();
                if clean as u32 == total {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "placement groups not clean\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Now kill a different OSD: the returned one must hold current data for its groups.
        c.osds[0].kill9();
        for (oid, data) in acked.iter().step_by(7) {
            assert_eq!(
                &io.get(*oid).await?,
                data,
                "{oid} wrong after second failure"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_every_port_leaves_daemons_serving() {
    bounded_async(180, async {
        let c = ProcCluster::start(ClusterOpts {
            osds: 1,
            ..Default::default()
        })
        .await?;
        let mut targets = c.meta_addrs.clone();
        targets.extend(c.osd_addrs.clone());
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff; 64],                   // bad magic
            b"CRN1\x01\x00\x00\x03".to_vec(), // truncated header, then hang up
            {
                // valid magic, bad header checksum
                let mut v = b"CRN1\x01\x00\x00\x03".to_vec();
                v.extend_from_slice(&[0u8; 20]);
                v
            },
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ];
        for addr in &targets {
            for case in &cases {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(case).await?;
                let _ = s.shutdown().await;
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
            }
        }
        // Everyone still serves.
        let cl = c.client().await?;
        let mut s = PoolSpec::new("after-garbage");
        s.size = 1;
        s.min_size = 1;
        cl.create_pool(s).await?;
        let io = cl.pool_io("after-garbage").await?;
        io.write_full(Oid(5), Bytes::from_static(b"still here"))
            .await?;
        assert_eq!(io.get(Oid(5)).await?, Bytes::from_static(b"still here"));
        Ok(())
    })
    .await;
}
