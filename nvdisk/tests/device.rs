//! NvDisk behaviour: the block API, restarts in each mode, the snapshot buffer, recovery sources
//! and refusals.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_nvdisk::{Durability, Error, NvDisk};
use common::{config, Dirs, Mode, Rng};

#[test]
fn write_read_round_trip_across_pages() {
    let dirs = Dirs::new();
    let disk = NvDisk::open(config(&dirs, Mode::Anon, 1 << 20)).unwrap();
    assert_eq!(disk.len(), 1 << 20);
    assert_eq!(disk.block_size(), 4096);
    let mut rng = Rng::new(1);
    let mut data = vec![0u8; 10_000];
    rng.fill(&mut data);
    disk.write(4000, &data).unwrap();
    let mut back = vec![0u8; 10_000];
    disk.read(4000, &mut back).unwrap();
    assert_eq!(back, data);
    let first = disk.read_zero_copy(4000, 16, |b| b.to_vec()).unwrap();
    assert_eq!(first, data[..16]);
    let mut zero = vec![1u8; 100];
    disk.read(0, &mut zero).unwrap();
    assert!(zero.iter().all(|&b| b == 0));
    disk.close().unwrap();
}

#[test]
fn out_of_range_is_refused() {
    let dirs = Dirs::new();
    let disk = NvDisk::open(config(&dirs, Mode::Anon, 64 << 10)).unwrap();
    assert!(matches!(
        disk.write((64 << 10) - 1, &[1, 2]),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        disk.read(u64::MAX, &mut [0u8; 1]),
        Err(Error::OutOfRange { .. })
    ));
    disk.write((64 << 10) - 2, &[1, 2]).unwrap();
}

#[test]
fn durability_is_reported_per_mode() {
    let expect = [
        (Mode::Anon, Durability::AfterFlush),
        (Mode::Shm, Durability::ProcessCrash),
        (Mode::Sync, Durability::PowerLoss),
        (Mode::ShmSync, Durability::PowerLoss),
    ];
    for (mode, durability) in expect {
        let dirs = Dirs::new();
        let disk = NvDisk::open(config(&dirs, mode, 64 << 10)).unwrap();
        assert_eq!(disk.durability(), durability, "{mode:?}");
    }
}

#[test]
fn data_survives_close_and_reopen_in_every_mode() {
    for mode in Mode::ALL {
        let dirs = Dirs::new();
        let cfg = config(&dirs, mode, 256 << 10);
        let mut rng = Rng::new(7);
        let mut data = vec![0u8; 20_000];
        rng.fill(&mut data);
        {
            let disk = NvDisk::open(cfg.clone()).unwrap();
            disk.write(12_345, &data).unwrap();
            disk.close().unwrap();
        }
        let disk = NvDisk::open(cfg.clone()).unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read(12_345, &mut back).unwrap();
        assert!(back == data, "{mode:?}: data lost over a restart");
        disk.close().unwrap();
    }
}

#[test]
fn backups_alone_rebuild_the_image_when_the_pool_file_is_gone() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Shm, 256 << 10);
    let disk = NvDisk::open(cfg.clone()).unwrap();
    for i in 0..40u64 {
        disk.write(i * 4096 + 7, &[i as u8 + 1; 300]).unwrap();
        if i % 10 == 9 {
            disk.flush().unwrap();
        }
    }
    disk.close().unwrap();
    // A reboot clears /dev/shm.
    std::fs::remove_file(dirs.pool_path()).unwrap();
    let disk = NvDisk::open(cfg).unwrap();
    for i in 0..40u64 {
        let mut b = [0u8; 300];
        disk.read(i * 4096 + 7, &mut b).unwrap();
        assert_eq!(b, [i as u8 + 1; 300], "page {i}");
    }
}

#[test]
fn flush_makes_anon_writes_durable_and_roles_alternate() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Anon, 256 << 10);
    let disk = NvDisk::open(cfg.clone()).unwrap();
    for round in 0..4u8 {
        disk.write(u64::from(round) * 8192, &[round + 1; 5000])
            .unwrap();
        disk.flush().unwrap();
    }
    let stats = disk.stats();
    assert!(stats.transactions >= 4, "{stats:?}");
    // From the second transaction on, step 1 copies the previous delta onto the other disk.
    assert!(stats.redo_pages >= 3, "{stats:?}");
    // Drop without close: the committer still finishes; reopen reads the backups only.
    drop(disk);
    let disk = NvDisk::open(cfg).unwrap();
    for round in 0..4u8 {
        let mut b = vec![0u8; 5000];
        disk.read(u64::from(round) * 8192, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == round + 1), "round {round}");
    }
}

#[test]
fn writes_during_a_flush_go_to_the_snapshot_buffer_and_stay_readable() {
    let dirs = Dirs::new();
    let mut cfg = config(&dirs, Mode::Anon, 4 << 20);
    cfg.flush_interval_ms = 1;
    let disk = Arc::new(NvDisk::open(cfg).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rng = Rng::new(3);
    let mut model = vec![0u8; 4 << 20];
    let mut buf = vec![0u8; 4096];
    // Keep writing and reading back until some writes have landed in the snapshot buffer.
    while disk.stats().snapshot_writes < 50 {
        assert!(
            Instant::now() < deadline,
            "no write ever met a running transaction"
        );
        let off = rng.below((4 << 20) - 4096);
        rng.fill(&mut buf);
        disk.write(off, &buf).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&buf);
        let check = rng.below((4 << 20) - 8192) as usize;
        let mut got = vec![0u8; 8192];
        disk.read(check as u64, &mut got).unwrap();
        assert!(
            got == model[check..check + 8192],
            "read at {check} is stale"
        );
    }
    disk.flush().unwrap();
    let mut all = vec![0u8; 4 << 20];
    disk.read(0, &mut all).unwrap();
    assert!(all == model);
}

#[test]
fn a_second_open_of_the_same_dirs_is_refused() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Shm, 64 << 10);
    let _disk = NvDisk::open(cfg.clone()).unwrap();
    assert!(matches!(NvDisk::open(cfg), Err(Error::Locked { .. })));
}

#[test]
fn geometry_changes_are_refused_not_reformatted() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Shm, 64 << 10);
    let disk = NvDisk::open(cfg.clone()).unwrap();
    disk.write(0, b"keep me").unwrap();
    disk.close().unwrap();
    let mut bigger = cfg.clone();
    bigger.size = 128 << 10;
    assert!(matches!(NvDisk::open(bigger), Err(Error::Mismatch { .. })));
    let disk = NvDisk::open(cfg).unwrap();
    let mut b = [0u8; 7];
    disk.read(0, &mut b).unwrap();
    assert_eq!(&b, b"keep me");
}

#[test]
fn concurrent_sync_writers_share_fdatasyncs() {
    let dirs = Dirs::new();
    let disk = Arc::new(NvDisk::open(config(&dirs, Mode::Sync, 1 << 20)).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let disk = Arc::clone(&disk);
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let off = (t * 50 + i) * 4096;
                    disk.write(off, &[(t * 50 + i) as u8; 4096]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for n in 0..200u64 {
        let mut b = [0u8; 4096];
        disk.read(n * 4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == n as u8), "block {n}");
    }
    let stats = disk.stats();
    assert_eq!(stats.writes, 200);
    assert!(
        stats.wal_syncs < 200,
        "no two of 200 concurrent writes shared an fdatasync: {stats:?}"
    );
}

#[test]
fn large_writes_are_split_into_atomic_pieces() {
    let dirs = Dirs::new();
    let disk = NvDisk::open(config(&dirs, Mode::Sync, 2 << 20)).unwrap();
    let max = disk.max_atomic_write();
    assert!((128 << 10..256 << 10).contains(&max), "{max}");
    let mut rng = Rng::new(9);
    let mut data = vec![0u8; 3 * max + 100];
    rng.fill(&mut data);
    disk.write(5, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read(5, &mut back).unwrap();
    assert!(back == data);
}
