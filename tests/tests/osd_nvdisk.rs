//! An OSD whose write journal is an nvdisk (`cairn osd --journal nvdisk:…`), killed with
//! SIGKILL in the middle of a stream of small writes to a pool of size 1: no replica can fill in,
//! so every write acknowledged before the kill must come back from the OSD's own journal.

use bytes::Bytes;
use cairn_client::PoolSpec;
use cairn_proto::Oid;
use cairn_tests::{bounded_async, free_port, ClusterOpts, Daemon, ProcCluster, ShmCleanup};
use rand::Rng;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `records` of the last "journal replayed" line in the OSD's log (0 if none).
fn replayed_records(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Drop ANSI colour sequences: ESC '[' … a letter.
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("journal replayed"))
        .filter_map(|l| {
            let at = l.find("records=")? + "records=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .next_back()
        .unwrap_or(0)
}

async fn kill9_loses_no_acknowledged_write(journal: &str) -> anyhow::Result<()> {
    let mut c = ProcCluster::start(ClusterOpts {
        metas: 1,
        osds: 0,
        ..Default::default()
    })
    .await?;
    let _shm = ShmCleanup::for_cluster(&c);
    let addr = format!("127.0.0.1:{}", free_port());
    let data_dir = c.osd_dir(0);
    let args = vec![
        "osd".into(),
        "--listen".into(),
        addr.clone(),
        "--data".into(),
        data_dir.display().to_string(),
        "--meta".into(),
        c.meta_addrs.join(","),
        "--journal".into(),
        journal.into(),
    ];
    c.osds.push(Daemon::spawn("osd.0", args, c.dir.path())?);
    c.osd_addrs.push(addr);
    let log = c.dir.path().join("osd.0.log");
    c.wait_map(Duration::from_secs(60), |m| {
        m.osds.len() == 1 && m.osds.values().all(|o| o.up && o.in_cluster)
    })
    .await?;
    let cl = c.client().await?;
    let mut spec = PoolSpec::new("p");
    spec.size = 1;
    spec.min_size = 1;
    spec.pg_num = 8;
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
                let mut data = format!("writer {w} object {n} ").repeat(200).into_bytes();
                data.truncate(4096);
                let data = Bytes::from(data);
                // A write the kill interrupts may fail; only acknowledged ones are promised.
                if io.write_full(oid, data.clone()).await.is_ok() {
                    acked.lock().unwrap().push((oid, data));
                }
                n += 1;
            }
        }));
    }
    // Kill at a random point of the stream, well past the first checkpoints.
    let kill_after = 300 + rand::thread_rng().gen_range(0..300);
    let t = Instant::now();
    while acked.lock().unwrap().len() < kill_after {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "only {} writes acknowledged\n{}",
            acked.lock().unwrap().len(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.osds[0].kill9();
    let at_kill = acked.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    let replays_before = replayed_records(&log);
    c.osds[0].start()?;
    // Writes in flight at the kill are retried by the client and may be acknowledged now.
    for w in writers {
        tokio::time::timeout(Duration::from_secs(90), w).await??;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= at_kill);
    for (oid, data) in &acked {
        let got = io.get(*oid).await?;
        assert!(
            got == data,
            "acknowledged write of {oid} lost or wrong after kill -9 ({} of {} bytes back)\n{}",
            got.len(),
            data.len(),
            c.logs()
        );
    }
    // The kill hit unsynced store state: the restart replayed it from the nvdisk journal.
    let replayed = replayed_records(&log);
    assert!(
        replayed > 0 && replays_before == 0,
        "no journal replay logged after the kill ({replays_before} before)\n{}",
        c.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shm_journal_osd_kill9_loses_no_acknowledged_write() {
    bounded_async(
        300,
        kill9_loses_no_acknowledged_write("nvdisk:shm,size=32M"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_journal_osd_kill9_loses_no_acknowledged_write() {
    bounded_async(
        300,
        kill9_loses_no_acknowledged_write("nvdisk:sync,size=32M"),
    )
    .await;
}
