//! The iSCSI target against real initiators: libiscsi's tools and a raw PDU initiator.
//!
//! Every test starts its own target in-process on 127.0.0.1 with an ephemeral port and bounds
//! its time. The libiscsi tools (package libiscsi-bin) are required: a missing tool fails the
//! test with a message saying what to install.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_iscsi::pdu::{self, op, Pdu};
use cairn_iscsi::{
    BlockDevice, ChapConfig, ChapCredentials, FileDevice, IscsiOptions, MemDevice, TargetConfig,
};
use common::{parse_test_cu, run, CuSummary, RawInitiator, Target, IQN};
use tokio::io::AsyncWriteExt;

/// iscsi-test-cu passes on this target: the floor only rises. No test may fail.
const TEST_CU_PASSED_FLOOR: usize = 204;

fn mem_lun(mib: u64, serial: &str) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new(mib << 20, 512, serial))
}

/// Runs iscsi-test-cu with `args` then `urls`, keeps its output in `log_name` under the temp
/// dir and returns the counts with the log's path.
async fn test_cu(args: &[&str], urls: &[&str], log_name: &str) -> (CuSummary, String) {
    let mut all = args.to_vec();
    all.extend(urls);
    let out = run("iscsi-test-cu", &all, &[], Duration::from_secs(15 * 60)).await;
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let log = std::env::temp_dir().join(log_name);
    std::fs::write(&log, &text).unwrap();
    let s = parse_test_cu(&text);
    println!(
        "iscsi-test-cu {args:?}: {} passed, {} skipped, {} failed (output in {})",
        s.passed.len(),
        s.skipped.len(),
        s.failed.len(),
        log.display()
    );
    println!("failed: {}", s.failed.join(", "));
    println!("skipped: {}", s.skipped.join(", "));
    (s, log.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_test_cu_all() {
    let target = Target::start(vec![TargetConfig::new(IQN).with_lun(0, mem_lun(64, "cu-0"))]).await;
    let url = target.url(IQN, 0);
    // The second URL is the second path of the MultipathIO tests; PR tests log in with both
    // initiator names (-i / -I, the defaults differ). SANITIZE runs apart (below): with a
    // second path, Sanitize.Reservations leaves its RESERVE(6) held on that path and
    // Sanitize.Reset then rightly gets RESERVATION CONFLICT.
    let (s, log) = test_cu(
        &["--dataloss", "-t", "ALL"],
        &[&url, &url],
        "cairn-iscsi-test-cu.txt",
    )
    .await;
    assert!(
        s.passed.len() + s.skipped.len() + s.failed.len() >= 200,
        "iscsi-test-cu ran too few tests; output in {log}"
    );
    assert!(
        s.passed.len() >= TEST_CU_PASSED_FLOOR,
        "only {} iscsi-test-cu tests passed (floor {TEST_CU_PASSED_FLOOR}); failed: {:?}",
        s.passed.len(),
        s.failed
    );
    assert!(
        s.failed.is_empty(),
        "{} iscsi-test-cu tests failed: {:?}; output in {log}",
        s.failed.len(),
        s.failed
    );
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_test_cu_sanitize() {
    // Sanitize.Reset needs an OVERWRITE that outlasts its ~5 s of resets and reconnects:
    // 64 MiB at 8 MiB/s takes 8 s.
    let opts = IscsiOptions {
        sanitize_bytes_per_sec: 8 << 20,
        ..IscsiOptions::default()
    };
    let target = Target::start_with(
        vec![TargetConfig::new(IQN).with_lun(0, mem_lun(64, "cu-san"))],
        opts,
    )
    .await;
    let (s, log) = test_cu(
        &["--dataloss", "--allow-sanitize", "-t", "ALL.Sanitize"],
        &[&target.url(IQN, 0)],
        "cairn-iscsi-test-cu-sanitize.txt",
    )
    .await;
    assert!(
        s.failed.is_empty() && s.skipped.is_empty() && s.passed.len() == 11,
        "Sanitize: {s:?}; output in {log}"
    );
    target.stop().await;
}

/// The unaligned WRITE SAME and short-data COMPARE AND WRITE tests need at least two logical
/// blocks per physical block, with which GetLBAStatus.UnmapSingle cannot pass (it expects the
/// status of LBA i+1 to start at i + blocks-per-physical-block). They run here on a 512e LUN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libiscsi_test_cu_512e_lun() {
    let dev: Arc<dyn BlockDevice> =
        Arc::new(MemDevice::new(16 << 20, 512, "cu-512e").with_physical_block_size(4096));
    let target = Target::start(vec![TargetConfig::new(IQN).with_lun(0, dev)]).await;
    let url = target.url(IQN, 0);
    for (suite, tests) in [
        ("ALL.CompareAndWrite", 5),
        ("ALL.WriteSame10", 10),
        ("ALL.WriteSame16", 10),
    ] {
        let (s, log) = test_cu(
            &["--dataloss", "-t", suite],
            &[&url],
            "cairn-iscsi-test-cu-512e.txt",
        )
        .await;
        assert!(
            s.failed.is_empty() && s.skipped.is_empty() && s.passed.len() == tests,
            "{suite} on a 512e LUN: {s:?}; output in {log}"
        );
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_inquiry_and_capacity_through_libiscsi() {
    let second = "iqn.2024-01.io.cairn.test:target1";
    let target = Target::start(vec![
        TargetConfig::new(IQN)
            .with_lun(0, mem_lun(8, "ls-0"))
            .with_lun(3, mem_lun(4, "ls-3")),
        TargetConfig::new(second).with_lun(0, mem_lun(1, "ls-t1")),
    ])
    .await;
    let t = Duration::from_secs(60);
    let ls = run(
        "iscsi-ls",
        &["-s", &format!("iscsi://{}", target.portal())],
        &[],
        t,
    )
    .await;
    assert!(ls.ok, "iscsi-ls failed: {}", ls.stderr);
    assert!(
        ls.stdout
            .contains(&format!("Target:{IQN} Portal:{},1", target.portal())),
        "{}",
        ls.stdout
    );
    assert!(ls.stdout.contains(second), "{}", ls.stdout);
    assert!(ls.stdout.contains("Lun:3"), "{}", ls.stdout);

    let inq = run("iscsi-inq", &[&target.url(IQN, 0)], &[], t).await;
    assert!(inq.ok, "iscsi-inq failed: {}", inq.stderr);
    assert!(inq.stdout.contains("Vendor:CAIRN"), "{}", inq.stdout);
    assert!(
        inq.stdout.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{}",
        inq.stdout
    );
    let serial = run(
        "iscsi-inq",
        &["-e", "1", "-c", "128", &target.url(IQN, 3)],
        &[],
        t,
    )
    .await;
    assert!(
        serial.ok && serial.stdout.contains("ls-3"),
        "{}{}",
        serial.stdout,
        serial.stderr
    );

    let cap = run("iscsi-readcapacity16", &[&target.url(IQN, 3)], &[], t).await;
    assert!(cap.ok, "{}", cap.stderr);
    assert!(cap.stdout.contains("Total size:4194304"), "{}", cap.stdout);

    let missing = run(
        "iscsi-inq",
        &[&target.url("iqn.2024-01.io.cairn.test:nope", 0)],
        &[],
        t,
    )
    .await;
    assert!(!missing.ok, "login to an unknown target succeeded");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_lun_write_read_verify_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun0.img");
    let size: u64 = 4 << 20;
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&path, size, 512, "file-0").unwrap());
    let target = Target::start(vec![TargetConfig::new(IQN).with_lun(0, dev)]).await;
    let pattern: Vec<u8> = (0..size)
        .map(|i| ((i * 31 + i / 512) % 251) as u8)
        .collect();
    let mut ini =
        RawInitiator::login(&target.portal(), IQN, "iqn.2024-01.io.cairn.test:raw", 1).await;
    // WRITE(16) of 1 MiB at a time: immediate data, then R2T-solicited bursts.
    let chunk = 1u64 << 20;
    for off in (0..size).step_by(chunk as usize) {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8a;
        cdb[2..10].copy_from_slice(&(off / 512).to_be_bytes());
        cdb[10..14].copy_from_slice(&((chunk / 512) as u32).to_be_bytes());
        let r = ini
            .command(0, &cdb, &pattern[off as usize..(off + chunk) as usize], 0)
            .await;
        assert_eq!(r.status, 0, "write at {off} failed: sense {:?}", r.sense);
    }
    // SYNCHRONIZE CACHE(10), then the bytes must be on disk.
    assert_eq!(
        ini.command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
            .await
            .status,
        0
    );
    assert!(
        std::fs::read(&path).unwrap() == pattern,
        "file content differs from what was written"
    );
    // Read everything back with READ(10) and compare.
    for off in (0..size).step_by(chunk as usize) {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&((off / 512) as u32).to_be_bytes());
        cdb[7..9].copy_from_slice(&((chunk / 512) as u16).to_be_bytes());
        let r = ini.command(0, &cdb, &[], chunk as u32).await;
        assert_eq!(r.status, 0);
        assert!(
            r.data == pattern[off as usize..(off + chunk) as usize],
            "read-back mismatch at {off}"
        );
    }
    // VERIFY(16) with BYTCHK=1 compares on the target side; a flipped byte is a MISCOMPARE.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8f;
    cdb[1] = 0x02;
    cdb[13] = 8;
    assert_eq!(ini.command(0, &cdb, &pattern[..4096], 0).await.status, 0);
    let mut wrong = pattern[..4096].to_vec();
    wrong[700] ^= 0xff;
    let r = ini.command(0, &cdb, &wrong, 0).await;
    assert_eq!(r.status, 2);
    assert_eq!((r.sense[2] & 0x0f, r.sense[12]), (0x0e, 0x1d));
    assert_eq!(&r.sense[3..7], &700u32.to_be_bytes(), "miscompare offset");
    // libiscsi reads the whole LUN too.
    let perf = run(
        "iscsi-perf",
        &["-t", "2", "-b", "8", "-m", "4", &target.url(IQN, 0)],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert!(perf.ok, "iscsi-perf failed: {}{}", perf.stdout, perf.stderr);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_one_way_and_mutual() {
    let one_way = "iqn.2024-01.io.cairn.test:chap1";
    let mutual = "iqn.2024-01.io.cairn.test:chap2";
    let user = |u: &str, s: &str| ChapCredentials {
        user: u.into(),
        secret: s.into(),
    };
    let target = Target::start(vec![
        TargetConfig::new(one_way)
            .with_lun(0, mem_lun(1, "c1"))
            .with_chap(ChapConfig {
                initiator: Some(user("alice", "alice-secret-1")),
                target: None,
            }),
        TargetConfig::new(mutual)
            .with_lun(0, mem_lun(1, "c2"))
            .with_chap(ChapConfig {
                initiator: Some(user("bob", "bob-secret-12")),
                target: Some(user("tgt", "target-secret-1")),
            }),
    ])
    .await;
    let t = Duration::from_secs(60);
    let p = target.portal();
    let inq = |url: String, env: Vec<(&'static str, &'static str)>| async move {
        run("iscsi-inq", &[&url], &env, t).await
    };
    let good = inq(
        format!("iscsi://alice%alice-secret-1@{p}/{one_way}/0"),
        vec![],
    )
    .await;
    assert!(
        good.ok,
        "one-way CHAP with the right secret failed: {}",
        good.stderr
    );
    let bad = inq(
        format!("iscsi://alice%wrong-secret@{p}/{one_way}/0"),
        vec![],
    )
    .await;
    assert!(!bad.ok, "one-way CHAP with a wrong secret was accepted");
    let none = inq(format!("iscsi://{p}/{one_way}/0"), vec![]).await;
    assert!(!none.ok, "login without CHAP was accepted by a CHAP target");

    let url = format!("iscsi://bob%bob-secret-12@{p}/{mutual}/0");
    let ok = inq(
        url.clone(),
        vec![
            ("LIBISCSI_CHAP_TARGET_USERNAME", "tgt"),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", "target-secret-1"),
        ],
    )
    .await;
    assert!(ok.ok, "mutual CHAP failed: {}", ok.stderr);
    let wrong_target = inq(
        url.clone(),
        vec![
            ("LIBISCSI_CHAP_TARGET_USERNAME", "tgt"),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", "not-the-secret"),
        ],
    )
    .await;
    assert!(
        !wrong_target.ok,
        "initiator accepted a target with the wrong mutual secret"
    );
    let wrong_initiator = inq(
        format!("iscsi://bob%nope-nope-nope@{p}/{mutual}/0"),
        vec![
            ("LIBISCSI_CHAP_TARGET_USERNAME", "tgt"),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", "target-secret-1"),
        ],
    )
    .await;
    assert!(
        !wrong_initiator.ok,
        "mutual CHAP with a wrong initiator secret was accepted"
    );
    target.stop().await;
}

/// Sends `bytes` on a fresh, logged-in connection and returns what came back: a Reject's
/// reason, or `None` if the target closed the connection without one.
async fn misbehave(target: &Target, isid: u8, bytes: &[u8], close_after: bool) -> Option<u8> {
    let mut bad =
        RawInitiator::login(&target.portal(), IQN, "iqn.2024-01.io.cairn.test:bad", isid).await;
    bad.send_raw(bytes).await;
    if close_after {
        bad.stream.shutdown().await.ok();
        return None;
    }
    match bad.recv().await {
        None => None,
        Some(p) if p.opcode() == op::REJECT => Some(p.bhs[2]),
        Some(p) => panic!(
            "unexpected answer to a malformed PDU: opcode {:#x}",
            p.opcode()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_are_rejected_while_other_sessions_go_on() {
    let target = Target::start(vec![TargetConfig::new(IQN).with_lun(0, mem_lun(4, "bad-0"))]).await;
    let mut good =
        RawInitiator::login(&target.portal(), IQN, "iqn.2024-01.io.cairn.test:good", 1).await;
    assert_eq!(good.tur(0).await, 0);

    // An opcode no initiator may send: a Reject with "command not supported".
    let mut p = Pdu::new(0x1c);
    p.set_itt(77);
    let mut wire = bytes::BytesMut::new();
    p.encode(&mut wire, pdu::Digests::default());
    assert_eq!(
        misbehave(&target, 2, &wire, false).await,
        Some(pdu::reject::COMMAND_NOT_SUPPORTED)
    );
    assert_eq!(good.tur(0).await, 0);

    // A data segment far beyond the declared MaxRecvDataSegmentLength: Reject, then close.
    let mut p = Pdu::new(op::NOP_OUT);
    p.bhs[0] |= 0x40;
    p.set_itt(pdu::RESERVED_TAG);
    p.set_u32(20, pdu::RESERVED_TAG);
    p.bhs[5..8].copy_from_slice(&[0x80, 0, 0]); // 8 MiB announced, never sent
    assert_eq!(
        misbehave(&target, 3, &p.bhs, false).await,
        Some(pdu::reject::PROTOCOL_ERROR)
    );
    assert_eq!(good.tur(0).await, 0);

    // A truncated header followed by a close: the target just drops the connection.
    assert_eq!(
        misbehave(&target, 4, &[0x01, 0x80, 0, 0, 0, 0], true).await,
        None
    );

    // Garbage before login: the target answers with a failed login or closes, never panics.
    let mut raw = tokio::net::TcpStream::connect(target.portal())
        .await
        .unwrap();
    raw.write_all(&[0xffu8; 100]).await.unwrap();
    raw.shutdown().await.ok();

    // The good session still works, data included, and so do new logins.
    let data = vec![0x5au8; 4096];
    let w = good
        .command(0, &[0x2a, 0, 0, 0, 0, 16, 0, 0, 8, 0], &data, 0)
        .await;
    assert_eq!(w.status, 0);
    let r = good
        .command(0, &[0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0], &[], 4096)
        .await;
    assert_eq!(r.data, data);
    let inq = run(
        "iscsi-inq",
        &[&target.url(IQN, 0)],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert!(inq.ok, "{}", inq.stderr);
    target.stop().await;
}
