//! Crash tests of the OSD's placed writes (issue 12, "data written once"): a whole-object write
//! of a new object of at least 128 KiB writes its data straight into the store and journals only
//! a small record. An OSD process is killed (aborted by `CAIRN_FAILPOINT`, as kill -9 there
//! would) at each step: after the data is durable and before its record is written
//! (`placed`), and after the record is durable and before it is applied (`journaled`). After a
//! restart every acknowledged write reads back, the interrupted write is all there (its record
//! was durable) or not there at all (it was not), nothing else changed, and the object can be
//! written again.

use anyhow::Context;
use bytes::Bytes;
use cairn_client::{ClientError, PoolSpec};
use cairn_proto::Oid;
use cairn_tests::{bounded_async, pattern, ClusterOpts, ProcCluster};
use std::collections::BTreeMap;
use std::time::Duration;

async fn wait_up(c: &ProcCluster) -> anyhow::Result<()> {
    c.wait_map(Duration::from_secs(60), |m| m.osds.values().all(|o| o.up))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_osd_killed_at_each_step_of_a_placed_write_keeps_every_acknowledged_write() {
    bounded_async(300, async {
        for point in ["placed", "journaled"] {
            let opts = ClusterOpts {
                metas: 1,
                osds: 1,
                ..Default::default()
            };
            let mut c = ProcCluster::start(opts).await?;
            let cl = c.client().await?;
            let mut spec = PoolSpec::new("p");
            (spec.size, spec.min_size, spec.pg_num) = (1, 1, 8);
            cl.create_pool(spec).await?;
            let io = cl.pool_io("p").await?;
            // Acknowledged before the crash: placed objects, small ones, a placed object
            // deleted and placed again, a placed object overwritten whole and in part.
            let mut acked: BTreeMap<Oid, Bytes> = BTreeMap::new();
            for i in 0..8u128 {
                let len = if i % 2 == 0 { 300 << 10 } else { 3000 };
                let data = Bytes::from(pattern(len, i as u64));
                io.write_full(Oid(i), data.clone()).await?;
                acked.insert(Oid(i), data);
            }
            io.delete(Oid(0)).await?;
            let again = Bytes::from(pattern(500 << 10, 99));
            io.write_full(Oid(0), again.clone()).await?;
            acked.insert(Oid(0), again);
            let over = Bytes::from(pattern(200 << 10, 98));
            io.write_full(Oid(2), over.clone()).await?;
            io.write(Oid(2), 1000, Bytes::from_static(b"patched"))
                .await?;
            let mut o2 = over.to_vec();
            o2[1000..1007].copy_from_slice(b"patched");
            acked.insert(Oid(2), Bytes::from(o2));

            c.osds[0].stop();
            c.osds[0].set_env("CAIRN_FAILPOINT", Some(point));
            c.osds[0].start()?;
            wait_up(&c).await?;
            let victim = Oid(1000);
            let vdata = Bytes::from(pattern(400 << 10, 7));
            let (io2, v2) = (io.clone(), vdata.clone());
            let w = tokio::spawn(async move { io2.write_full(victim, v2).await });
            let exited =
                tokio::task::block_in_place(|| c.osds[0].wait_exit(Duration::from_secs(30)));
            w.abort();
            assert!(
                exited,
                "the OSD did not reach failpoint {point}\n{}",
                c.logs()
            );
            assert!(
                c.osds[0]
                    .log()
                    .contains(&format!("failpoint {point}: aborting")),
                "the OSD ended elsewhere than at {point}\n{}",
                c.logs()
            );
            c.osds[0].set_env("CAIRN_FAILPOINT", None);
            c.osds[0].start()?;
            wait_up(&c).await?;

            for (oid, data) in &acked {
                let got = io
                    .get(*oid)
                    .await
                    .with_context(|| format!("{point}: acknowledged {oid} lost"))?;
                assert!(got == *data, "{point}: acknowledged {oid} changed");
            }
            let mut want: Vec<Oid> = acked.keys().copied().collect();
            match (point, io.get(victim).await) {
                ("placed", Err(e)) => assert!(
                    matches!(e, ClientError::NotFound(o) if o == victim),
                    "placed: the interrupted write's object: {e}"
                ),
                ("placed", Ok(_)) => panic!("placed: a write whose record never landed exists"),
                (_, Ok(got)) => {
                    assert!(got == vdata, "journaled: the replayed write is not whole");
                    want.push(victim);
                }
                (_, Err(e)) => panic!("journaled: a durable record was not replayed: {e}"),
            }
            let mut listed: Vec<Oid> = io.list().await?.into_iter().map(|(o, _)| o).collect();
            listed.sort();
            want.sort();
            assert_eq!(listed, want, "{point}: objects appeared or vanished");
            let next = Bytes::from(pattern(640 << 10, 5));
            io.write_full(victim, next.clone()).await?;
            assert!(
                io.get(victim).await? == next,
                "{point}: rewrite after the crash"
            );
            io.delete(victim).await?;
            io.write_full(victim, vdata.clone()).await?;
            assert!(
                io.get(victim).await? == vdata,
                "{point}: placed again after a delete"
            );
        }
        Ok(())
    })
    .await;
}
