//! LUNs that are replicated cluster volumes, configured with the CLI and served by `cairn gateway`
//! processes: real libiscsi tools, data written through one gateway read through another, a
//! gateway killed with -9, an OSD killed meanwhile, and UNMAP freeing objects.

#[path = "../iscsi/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use cairn_tests::{free_port, ClusterOpts, Daemon, ProcCluster};
use common::{read10, run, write10, RawInitiator};

const IQN: &str = "iqn.2026-11.org.cairn.test:vol";
const BLOCK: usize = 512;

fn unmap(lba: u64, blocks: u32) -> ([u8; 10], Vec<u8>) {
    let mut param = vec![0u8; 24];
    param[0..2].copy_from_slice(&22u16.to_be_bytes());
    param[2..4].copy_from_slice(&16u16.to_be_bytes());
    param[8..16].copy_from_slice(&lba.to_be_bytes());
    param[16..20].copy_from_slice(&blocks.to_be_bytes());
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&(param.len() as u16).to_be_bytes());
    (c, param)
}

fn pattern(lba: u32, blocks: usize) -> Vec<u8> {
    (0..blocks * BLOCK)
        .map(|i| ((lba as usize * 7 + i / BLOCK * 13 + i) % 251) as u8)
        .collect()
}

fn gateway(c: &ProcCluster, name: &str, port: u16) -> Daemon {
    let args = vec![
        "gateway".into(),
        "--meta".into(),
        c.meta_addrs.join(","),
        "--iscsi".into(),
        format!("127.0.0.1:{port}"),
        // NFS and S3 are not under test here; two gateways must not both take their ports.
        "--nfs".into(),
        String::new(),
        "--s3".into(),
        String::new(),
    ];
    Daemon::spawn(name, args, c.dir.path()).expect("spawn gateway")
}

async fn wait_portal(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gateway portal 127.0.0.1:{port} never opened");
}

async fn setup() -> ProcCluster {
    let c = ProcCluster::start(ClusterOpts::default())
        .await
        .expect("cluster");
    c.cli(&["pool", "create", "default", "--size", "3", "--pg-num", "32"])
        .unwrap();
    c.cli(&["vol", "create", "v1", "16M"]).unwrap();
    c.cli(&["vol", "create", "thin", "1G"]).unwrap();
    c.cli(&["iscsi", "target", "create", IQN]).unwrap();
    c.cli(&["iscsi", "lun", "add", IQN, "v1"]).unwrap();
    c.cli(&["iscsi", "lun", "add", IQN, "thin", "--lun", "1"])
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_through_two_gateways_survive_gateway_and_osd_kills() {
    tokio::time::timeout(Duration::from_secs(400), async {
        let mut c = setup().await;
        let (pa, pb) = (free_port(), free_port());
        let mut ga = gateway(&c, "gw.a", pa);
        let _gb = gateway(&c, "gw.b", pb);
        wait_portal(pa).await;
        wait_portal(pb).await;

        // Standard initiator tools see the target and the volume's size.
        let ls = run(
            "iscsi-ls",
            &["-s", &format!("iscsi://127.0.0.1:{pa}")],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert!(ls.ok && ls.stdout.contains(IQN), "iscsi-ls: {}", ls.stdout);
        let url = format!("iscsi://127.0.0.1:{pa}/{IQN}/0");
        let inq = run("iscsi-inq", &[&url], &[], Duration::from_secs(30)).await;
        assert!(inq.ok, "iscsi-inq failed: {}", inq.stdout);
        let cap = run(
            "iscsi-readcapacity16",
            &[&url],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert!(
            cap.ok
                && cap
                    .stdout
                    .contains(&(16u64 * 1024 * 1024 / 512 - 1).to_string()),
            "readcapacity16: {}",
            cap.stdout
        );

        // Write the whole 16 MiB volume through gateway A, every other chunk with FUA.
        let chunk_blocks = 512u16; // 256 KiB
        let total_blocks = (16 << 20) / BLOCK as u32;
        let mut a = RawInitiator::login(
            &format!("127.0.0.1:{pa}"),
            IQN,
            "iqn.2026-11.org.cairn.test:host-a",
            1,
        )
        .await;
        let mut lba = 0u32;
        let mut i = 0;
        while lba < total_blocks {
            let r = a
                .command(
                    0,
                    &write10(lba, chunk_blocks, i % 2 == 0),
                    &pattern(lba, chunk_blocks as usize),
                    0,
                )
                .await;
            assert_eq!(r.status, 0, "write at {lba} failed: sense {:?}", r.sense);
            lba += u32::from(chunk_blocks);
            i += 1;
        }
        // Gateway A dies hard; an OSD dies too.
        ga.kill9();
        c.osds[2].kill9();

        // Everything reads back through gateway B.
        let mut b = RawInitiator::login(
            &format!("127.0.0.1:{pb}"),
            IQN,
            "iqn.2026-11.org.cairn.test:host-b",
            2,
        )
        .await;
        let mut lba = 0u32;
        while lba < total_blocks {
            let r = b
                .command(
                    0,
                    &read10(lba, chunk_blocks),
                    &[],
                    u32::from(chunk_blocks) * BLOCK as u32,
                )
                .await;
            assert_eq!(r.status, 0, "read at {lba} failed: sense {:?}", r.sense);
            assert!(
                r.data == pattern(lba, chunk_blocks as usize),
                "data at lba {lba} differs"
            );
            lba += u32::from(chunk_blocks);
        }

        // A thin volume reads zeros where nothing was written, far into it.
        let r = b
            .command(1, &read10(1_000_000, 8), &[], 8 * BLOCK as u32)
            .await;
        assert_eq!(r.status, 0);
        assert!(r.data.iter().all(|x| *x == 0));

        // UNMAP the first 8 MiB of v1: it reads as zeros and its objects are gone.
        let before = c.cli(&["obj", "ls"]).unwrap().lines().count();
        let (cdb, param) = unmap(0, (8 << 20) / BLOCK as u32);
        let r = b.command(0, &cdb, &param, 0).await;
        assert_eq!(r.status, 0, "unmap failed: {:?}", r.sense);
        let r = b.command(0, &read10(100, 16), &[], 16 * BLOCK as u32).await;
        assert!(
            r.data.iter().all(|x| *x == 0),
            "unmapped range does not read as zeros"
        );
        let after = c.cli(&["obj", "ls"]).unwrap().lines().count();
        assert_eq!(
            before - after,
            2,
            "8 MiB of 4 MiB objects should free 2 objects ({before} -> {after})"
        );

        // Gateway A comes back and serves the same data.
        ga.start().unwrap();
        wait_portal(pa).await;
        let mut a2 = RawInitiator::login(
            &format!("127.0.0.1:{pa}"),
            IQN,
            "iqn.2026-11.org.cairn.test:host-a",
            3,
        )
        .await;
        let lba = 20_001u32; // past the unmapped first 8 MiB
        let r = a2
            .command(0, &read10(lba, 32), &[], 32 * BLOCK as u32)
            .await;
        assert_eq!(r.status, 0);
        assert!(
            r.data
                == pattern(lba - lba % u32::from(chunk_blocks), chunk_blocks as usize)
                    [((lba % u32::from(chunk_blocks)) as usize * BLOCK)..][..32 * BLOCK]
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chap_from_the_metadata_service() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let c = setup().await;
        c.cli(&[
            "iscsi",
            "chap",
            "set",
            IQN,
            "--user",
            "alice",
            "--secret",
            "sixteen-chars-ok",
        ])
        .unwrap();
        let p = free_port();
        let _g = gateway(&c, "gw", p);
        wait_portal(p).await;
        let inq = "iscsi-inq";
        let good = run(
            inq,
            &[&format!(
                "iscsi://alice%sixteen-chars-ok@127.0.0.1:{p}/{IQN}/0"
            )],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert!(good.ok, "right secret refused: {}", good.stdout);
        let bad = run(
            inq,
            &[&format!(
                "iscsi://alice%wrong-secret-123@127.0.0.1:{p}/{IQN}/0"
            )],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert!(!bad.ok, "wrong secret accepted");
        let none = run(
            inq,
            &[&format!("iscsi://127.0.0.1:{p}/{IQN}/0")],
            &[],
            Duration::from_secs(30),
        )
        .await;
        assert!(!none.ok, "no credentials accepted");
    })
    .await
    .expect("test timed out");
}

/// Real passes (skips apart) of `iscsi-test-cu -t ALL` against a volume of a size-3 pool served
/// by `cairn gateway`. Only ever raise it.
const CLUSTER_TEST_CU_PASSED_FLOOR: usize = 204;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iscsi_test_cu_on_a_cluster_volume() {
    tokio::time::timeout(Duration::from_secs(1500), async {
        let c = ProcCluster::start(ClusterOpts::default())
            .await
            .expect("cluster");
        c.cli(&["pool", "create", "default", "--size", "3", "--pg-num", "32"])
            .unwrap();
        c.cli(&["vol", "create", "cu", "64M"]).unwrap();
        c.cli(&["iscsi", "target", "create", IQN]).unwrap();
        c.cli(&["iscsi", "lun", "add", IQN, "cu"]).unwrap();
        let p = free_port();
        let _g = gateway(&c, "gw", p);
        wait_portal(p).await;
        let url = format!("iscsi://127.0.0.1:{p}/{IQN}/0");
        // Two paths for the MultipathIO tests; PR tests use both initiator names.
        let out = run(
            "iscsi-test-cu",
            &["--dataloss", "-t", "ALL", &url, &url],
            &[],
            Duration::from_secs(1400),
        )
        .await;
        let text = format!("{}\n{}", out.stdout, out.stderr);
        let log = std::env::temp_dir().join("cairn-iscsi-test-cu-cluster.txt");
        std::fs::write(&log, &text).unwrap();
        let s = common::parse_test_cu(&text);
        println!(
            "iscsi-test-cu on a cluster volume: {} passed, {} skipped, {} failed (output in {})",
            s.passed.len(),
            s.skipped.len(),
            s.failed.len(),
            log.display()
        );
        assert!(
            s.failed.is_empty(),
            "failed: {:?}; output in {}",
            s.failed,
            log.display()
        );
        assert!(
            s.passed.len() >= CLUSTER_TEST_CU_PASSED_FLOOR,
            "only {} passed (floor {CLUSTER_TEST_CU_PASSED_FLOOR}); output in {}",
            s.passed.len(),
            log.display()
        );
        // BLOCK ERASE deallocates the volume; GET LBA STATUS must then show it whole as
        // deallocated in the 15 descriptors the test asks for (the volume has 16 objects).
        let out = run(
            "iscsi-test-cu",
            &[
                "--dataloss",
                "--allow-sanitize",
                "-t",
                "ALL.Sanitize.BlockErase",
                &url,
            ],
            &[],
            Duration::from_secs(300),
        )
        .await;
        let text = format!("{}\n{}", out.stdout, out.stderr);
        let s = common::parse_test_cu(&text);
        assert!(
            s.failed.is_empty() && s.passed.len() == 1,
            "Sanitize.BlockErase on a cluster volume: {s:?}\n{text}"
        );
    })
    .await
    .expect("test timed out");
}

fn pr_out(service_action: u8, pr_type: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut param = vec![0u8; 24];
    param[0..8].copy_from_slice(&key.to_be_bytes());
    param[8..16].copy_from_slice(&sa_key.to_be_bytes());
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = service_action;
    c[2] = pr_type;
    c[5..9].copy_from_slice(&(param.len() as u32).to_be_bytes());
    (c, param)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_reservations_apply_across_gateways() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let c = setup().await;
        let (pa, pb) = (free_port(), free_port());
        let _ga = gateway(&c, "gw.a", pa);
        let _gb = gateway(&c, "gw.b", pb);
        wait_portal(pa).await;
        wait_portal(pb).await;
        let mut x = RawInitiator::login(
            &format!("127.0.0.1:{pa}"),
            IQN,
            "iqn.2026-11.org.cairn.test:x",
            1,
        )
        .await;
        let mut y = RawInitiator::login(
            &format!("127.0.0.1:{pb}"),
            IQN,
            "iqn.2026-11.org.cairn.test:y",
            2,
        )
        .await;
        // Y writes freely before any reservation.
        let r = y.command(0, &write10(0, 1, false), &pattern(0, 1), 0).await;
        assert_eq!(r.status, 0);
        // X registers key 0xAB and takes a Write Exclusive reservation through gateway A.
        let (cdb, p) = pr_out(0x00, 0, 0, 0xAB);
        assert_eq!(x.command(0, &cdb, &p, 0).await.status, 0, "REGISTER");
        let (cdb, p) = pr_out(0x01, 0x01, 0xAB, 0);
        assert_eq!(x.command(0, &cdb, &p, 0).await.status, 0, "RESERVE");
        // Through gateway B, Y sees the key and gets RESERVATION CONFLICT on writes.
        let mut keys = [0u8; 10];
        keys[0] = 0x5E;
        keys[7..9].copy_from_slice(&64u16.to_be_bytes());
        let r = y.command(0, &keys, &[], 64).await;
        assert_eq!(r.status, 0);
        assert_eq!(
            u32::from_be_bytes(r.data[4..8].try_into().unwrap()),
            8,
            "one key listed"
        );
        assert_eq!(u64::from_be_bytes(r.data[8..16].try_into().unwrap()), 0xAB);
        let mut conflict = false;
        for _ in 0..50 {
            let r = y.command(0, &write10(8, 1, false), &pattern(8, 1), 0).await;
            if r.status == 0x18 {
                conflict = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(conflict, "gateway B never enforced gateway A's reservation");
        // Reads stay allowed under Write Exclusive, and X (the holder) still writes through A.
        assert_eq!(y.command(0, &read10(0, 1), &[], 512).await.status, 0);
        assert_eq!(
            x.command(0, &write10(16, 1, true), &pattern(16, 1), 0)
                .await
                .status,
            0
        );
    })
    .await
    .expect("test timed out");
}
