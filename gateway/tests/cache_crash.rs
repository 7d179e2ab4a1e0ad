//! The write-back cache behind a real iSCSI session: a target in a child process is killed with
//! SIGKILL and every FUA'd or synced write must be in the file.

#[path = "../iscsi/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_gateway::{CacheConfig, WriteBackCache};
use cairn_iscsi::{BlockDevice, FileDevice, TargetConfig};
use common::{RawInitiator, Target, IQN};

/// Set in the child process of [`cache_crash_keeps_fua_and_synced_writes`]: the file to serve.
const CRASH_CHILD_ENV: &str = "CAIRN_CACHE_CRASH_CHILD_FILE";
const CRASH_LUN_SIZE: u64 = 8 << 20;

/// The child: serves a file through a write-back cache that never flushes by itself, prints
/// its port and waits to be killed.
async fn crash_child(path: &str) {
    let file: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(path.as_ref(), CRASH_LUN_SIZE, 512, "crash-0").unwrap());
    let cfg = CacheConfig {
        flush_interval: Duration::from_secs(3600),
        high_watermark: u64::MAX,
        ..CacheConfig::default()
    };
    let dev: Arc<dyn BlockDevice> = Arc::new(WriteBackCache::new(file, cfg));
    let target = Target::start(vec![TargetConfig::new(IQN).with_lun(0, dev)]).await;
    println!("port {}", target.port);
    tokio::time::sleep(Duration::from_secs(120)).await;
    panic!("crash child was not killed within 120 s");
}

/// Writes through the cache with FUA on some writes and SYNCHRONIZE CACHE after others, kills
/// the gateway with SIGKILL, and checks every FUA'd or synced write is in the file (and that
/// the cache really held the rest, so the check could fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_crash_keeps_fua_and_synced_writes() {
    if let Ok(path) = std::env::var(CRASH_CHILD_ENV) {
        crash_child(&path).await;
        return;
    }
    use rand::{Rng, SeedableRng};
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cache_crash_keeps_fua_and_synced_writes",
            "--nocapture",
        ])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let port = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("port ").map(|p| p.parse::<u16>().unwrap()))
    });
    let port = tokio::time::timeout(Duration::from_secs(60), port)
        .await
        .expect("child did not report its port within 60 s")
        .unwrap()
        .expect("child exited before listening");
    let portal = format!("127.0.0.1:{port}");
    let mut ini = RawInitiator::login(&portal, IQN, "iqn.2024-01.io.cairn.test:crash", 1).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Each write gets its own 8-block slot; (lba, data) of the writes that must survive.
    let mut durable: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut unsynced: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut slots: Vec<u64> = (0..(CRASH_LUN_SIZE / 4096)).collect();
    for round in 0..12 {
        for _ in 0..rng.gen_range(2..10) {
            let slot = slots.swap_remove(rng.gen_range(0..slots.len()));
            let lba = slot * 8;
            let blocks = rng.gen_range(1..=8u16);
            let data: Vec<u8> = (0..blocks as usize * 512).map(|_| rng.gen()).collect();
            let fua = rng.gen_bool(0.3);
            let mut cdb = [0u8; 10];
            cdb[0] = 0x2a;
            cdb[1] = if fua { 0x08 } else { 0 };
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            let r = ini.command(0, &cdb, &data, 0).await;
            assert_eq!(r.status, 0, "write failed: {:?}", r.sense);
            if fua {
                durable.push((lba, data));
            } else {
                unsynced.push((lba, data));
            }
        }
        if round < 11 {
            // SYNCHRONIZE CACHE(10): everything acknowledged so far must survive.
            let r = ini
                .command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
                .await;
            assert_eq!(r.status, 0, "SYNCHRONIZE CACHE failed: {:?}", r.sense);
            durable.append(&mut unsynced);
        }
    }
    assert!(!unsynced.is_empty(), "the last round left nothing unsynced");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let file = std::fs::read(&path).unwrap();
    for (lba, data) in &durable {
        let at = (*lba * 512) as usize;
        assert!(
            file[at..at + data.len()] == data[..],
            "acknowledged FUA / synced write at LBA {lba} is missing after kill -9"
        );
    }
    let lost = unsynced
        .iter()
        .filter(|(lba, d)| file[(*lba * 512) as usize..][..d.len()] != d[..])
        .count();
    assert!(
        lost > 0,
        "every unsynced write reached the file: the cache did not hold any back"
    );
}
