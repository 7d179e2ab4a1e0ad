//! The nvdisk under iSCSI, with real `cairn gateway` processes killed with SIGKILL:
//! - nvdisk volumes (`cairn vol create --nvdisk SIZE`) exported as LUNs keep every write the
//!   gateway acknowledged (shm, sync) or flushed (anon) across a kill -9 and restart;
//! - a cluster-volume LUN behind a LUN cache journaled on an nvdisk (`--lun-cache nvdisk:shm`)
//!   keeps acknowledged writes that were still only in the cache, and the restarted gateway
//!   writes them to the cluster.

#[path = "../iscsi/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use cairn_client::VolumeIo;
use cairn_proto::msg::{MetaRead, MetaRequest, MetaResponse};
use cairn_tests::{free_port, ClusterOpts, Daemon, ProcCluster, ShmCleanup};
use common::{parse_test_cu, read10, run, write10, RawInitiator};

const IQN: &str = "iqn.2026-11.org.cairn.test:nv";
const BLOCK: usize = 512;

const SYNCHRONIZE_CACHE10: [u8; 10] = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn pattern(lun: u64, lba: u32, blocks: usize) -> Vec<u8> {
    (0..blocks * BLOCK)
        .map(|i| ((lun as usize * 101 + lba as usize * 7 + i / BLOCK * 13 + i) % 251) as u8)
        .collect()
}

fn gateway(c: &ProcCluster, port: u16, extra: &[&str]) -> Daemon {
    let mut args: Vec<String> = vec![
        "gateway".into(),
        "--meta".into(),
        c.meta_addrs.join(","),
        "--iscsi".into(),
        format!("127.0.0.1:{port}"),
        "--nfs".into(),
        String::new(),
        "--s3".into(),
        String::new(),
        "--name".into(),
        "gw1".into(),
        "--data".into(),
        c.dir.path().join("gw1").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::spawn("gw1", args, c.dir.path()).expect("spawn gateway")
}

async fn wait_portal(port: u16, gw: &mut Daemon) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(gw.is_running(), "gateway exited:\n{}", gw.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "gateway portal 127.0.0.1:{port} never opened:\n{}",
        gw.log_tail()
    );
}

async fn login(port: u16, isid: u8) -> RawInitiator {
    RawInitiator::login(
        &format!("127.0.0.1:{port}"),
        IQN,
        "iqn.2026-11.org.cairn.test:host",
        isid,
    )
    .await
}

/// Writes `total_blocks` of LUN `lun` in 128 KiB commands.
async fn write_lun(ini: &mut RawInitiator, lun: u64, total_blocks: u32) {
    let chunk = 256u16;
    let mut lba = 0u32;
    while lba < total_blocks {
        let r = ini
            .command(
                lun,
                &write10(lba, chunk, false),
                &pattern(lun, lba, chunk.into()),
                0,
            )
            .await;
        assert_eq!(r.status, 0, "lun {lun} write at {lba}: sense {:?}", r.sense);
        lba += u32::from(chunk);
    }
}

async fn check_lun(ini: &mut RawInitiator, lun: u64, total_blocks: u32) {
    let chunk = 256u16;
    let mut lba = 0u32;
    while lba < total_blocks {
        let r = ini
            .command(
                lun,
                &read10(lba, chunk),
                &[],
                u32::from(chunk) * BLOCK as u32,
            )
            .await;
        assert_eq!(r.status, 0, "lun {lun} read at {lba}: sense {:?}", r.sense);
        assert!(
            r.data == pattern(lun, lba, chunk.into()),
            "lun {lun}: data at lba {lba} lost or wrong after kill -9"
        );
        lba += u32::from(chunk);
    }
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nvdisk_volumes_keep_acknowledged_writes_across_gateway_kill9() {
    tokio::time::timeout(Duration::from_secs(400), async {
        let c = ProcCluster::start(ClusterOpts {
            metas: 1,
            osds: 0,
            ..Default::default()
        })
        .await
        .expect("cluster");
        let _shm = ShmCleanup::for_cluster(&c);
        let gw = "--gateway";
        c.cli(&["vol", "create", "nv-shm", "--nvdisk", "8M", gw, "gw1"])
            .unwrap();
        c.cli(&[
            "vol",
            "create",
            "nv-sync",
            "--nvdisk",
            "8M",
            "--nvdisk-mode",
            "sync",
            gw,
            "gw1",
        ])
        .unwrap();
        c.cli(&[
            "vol",
            "create",
            "nv-anon",
            "--nvdisk",
            "8M",
            "--nvdisk-mode",
            "anon",
            gw,
            "gw1",
        ])
        .unwrap();
        // Held by another gateway: gw1 must not serve it.
        c.cli(&["vol", "create", "nv-other", "--nvdisk", "8M", gw, "gw2"])
            .unwrap();
        let ls = c.cli(&["vol", "ls"]).unwrap();
        assert!(ls.contains("nvdisk:shm on gateway gw1"), "{ls}");
        assert!(ls.contains("nvdisk:sync on gateway gw1"), "{ls}");
        assert!(
            c.cli(&["vol", "resize", "nv-shm", "16M"]).is_err(),
            "an nvdisk volume cannot be resized"
        );
        c.cli(&["iscsi", "target", "create", IQN]).unwrap();
        for (lun, vol) in ["nv-shm", "nv-sync", "nv-anon", "nv-other"]
            .iter()
            .enumerate()
        {
            c.cli(&["iscsi", "lun", "add", IQN, vol, "--lun", &lun.to_string()])
                .unwrap();
        }

        let port = free_port();
        let mut g = gateway(&c, port, &[]);
        wait_portal(port, &mut g).await;
        let url = format!("iscsi://127.0.0.1:{port}/{IQN}/0");
        let cap = run(
            "iscsi-readcapacity16",
            &[&url],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert!(
            cap.ok && cap.stdout.contains(&((8u64 << 20) / 512 - 1).to_string()),
            "readcapacity16: {} {}",
            cap.stdout,
            cap.stderr
        );

        let blocks = ((8 << 20) / BLOCK) as u32;
        let mut ini = login(port, 1).await;
        // LUN 3 belongs to gw2.
        assert_ne!(ini.tur(3).await, 0, "gw1 serves gw2's nvdisk volume");
        for lun in 0..3 {
            write_lun(&mut ini, lun, blocks).await;
        }
        // anon keeps acknowledged writes in memory only until SYNCHRONIZE CACHE.
        let r = ini.command(2, &SYNCHRONIZE_CACHE10, &[], 0).await;
        assert_eq!(r.status, 0, "synchronize cache: {:?}", r.sense);
        drop(ini);
        g.kill9();
        g.start().unwrap();
        wait_portal(port, &mut g).await;
        let mut ini = login(port, 2).await;
        for lun in 0..3 {
            check_lun(&mut ini, lun, blocks).await;
        }
        drop(ini);

        // libiscsi's own initiator and checks against the recovered device (destructive).
        let out = run(
            "iscsi-test-cu",
            &[
                "--dataloss",
                "-t",
                "SCSI.Read10,SCSI.Write10,SCSI.WriteSame10,SCSI.Unmap,SCSI.SynchronizeCache10",
                &url,
            ],
            &[],
            Duration::from_secs(300),
        )
        .await;
        let s = parse_test_cu(&format!("{}\n{}", out.stdout, out.stderr));
        assert!(
            s.failed.is_empty() && s.passed.len() >= 10,
            "iscsi-test-cu on an nvdisk LUN: passed {:?} failed {:?}\n{}",
            s.passed,
            s.failed,
            out.stdout
        );
    })
    .await
    .expect("test timed out");
}

async fn volume_info(c: &ProcCluster, name: &str) -> cairn_proto::volume::VolumeInfo {
    let cl = c.client().await.unwrap();
    match cl
        .meta()
        .call(MetaRequest::Read(MetaRead::Volume { name: name.into() }))
        .await
        .unwrap()
    {
        MetaResponse::Volume(v) => v,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nvdisk_lun_cache_keeps_acknowledged_writes_across_gateway_kill9() {
    tokio::time::timeout(Duration::from_secs(400), async {
        let c = ProcCluster::start(ClusterOpts {
            metas: 1,
            osds: 1,
            ..Default::default()
        })
        .await
        .expect("cluster");
        let _shm = ShmCleanup::for_cluster(&c);
        c.cli(&["pool", "create", "default", "--size", "1", "--pg-num", "8"])
            .unwrap();
        c.cli(&["vol", "create", "v1", "16M"]).unwrap();
        c.cli(&["iscsi", "target", "create", IQN]).unwrap();
        c.cli(&["iscsi", "lun", "add", IQN, "v1", "--lun", "0"])
            .unwrap();
        let port = free_port();
        // Dirty data would wait ten minutes: everything written stays in the cache.
        let cache = [
            "--lun-cache",
            "nvdisk:shm,size=16M",
            "--lun-cache-flush-ms",
            "600000",
        ];
        let mut g = gateway(&c, port, &cache);
        wait_portal(port, &mut g).await;
        let blocks = ((2 << 20) / BLOCK) as u32;
        let mut ini = login(port, 1).await;
        write_lun(&mut ini, 0, blocks).await;
        drop(ini);

        // The cluster has none of it yet: the writes were acknowledged from the cache.
        let cl = c.client().await.unwrap();
        let vol = VolumeIo::open(&cl, volume_info(&c, "v1").await)
            .await
            .unwrap();
        let before = vol.read(0, 2 << 20).await.unwrap();
        assert!(
            before.iter().all(|&b| b == 0),
            "the cache wrote back early; the test would prove nothing"
        );
        g.kill9();
        let after_kill = vol.read(0, 2 << 20).await.unwrap();
        assert!(after_kill.iter().all(|&b| b == 0));

        // The restarted gateway replays its journal into the cluster before it serves.
        g.start().unwrap();
        wait_portal(port, &mut g).await;
        let log = c.dir.path().join("gw1.log");
        assert!(
            log_has(&log, "LUN cache journal replayed"),
            "{}",
            g.log_tail()
        );
        let back = vol.read(0, 2 << 20).await.unwrap();
        let mut lba = 0u32;
        while lba < blocks {
            let at = lba as usize * BLOCK;
            assert!(
                back[at..at + 256 * BLOCK] == pattern(0, lba, 256)[..],
                "acknowledged write at lba {lba} did not reach the cluster after kill -9"
            );
            lba += 256;
        }
        let mut ini = login(port, 2).await;
        check_lun(&mut ini, 0, blocks).await;
    })
    .await
    .expect("test timed out");
}
