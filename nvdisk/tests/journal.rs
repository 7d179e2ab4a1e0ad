//! The record journal on an nvdisk: append, replay, trim, the torn tail, corruption, a full ring,
//! group commit.

mod common;

use std::sync::Arc;

use cairn_nvdisk::{Config, Error, Journal, NvDisk};
use common::{config, Dirs, Mode, Rng};

/// Byte where the ring starts (block 0 is the superblock) and the record header size.
const RING: u64 = 4096;
const REC_HEADER: u64 = 24;

fn record_size(len: usize) -> u64 {
    REC_HEADER + (len as u64).div_ceil(8) * 8
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seq).fill(&mut v);
    v
}

fn replay_all(j: &Journal) -> Vec<(u64, Vec<u8>)> {
    j.replay().collect::<Result<Vec<_>, _>>().unwrap()
}

fn reopen(j: Journal, cfg: &Config) -> Journal {
    let disk = Arc::clone(j.disk());
    drop(j);
    Arc::try_unwrap(disk).ok().unwrap().close().unwrap();
    Journal::open(Arc::new(NvDisk::open(cfg.clone()).unwrap())).unwrap()
}

#[test]
fn append_replay_trim_and_reopen() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Shm, 256 << 10);
    let j = Journal::open(Arc::new(NvDisk::open(cfg.clone()).unwrap())).unwrap();
    let lens = [0usize, 1, 7, 8, 100, 4000, 9000, 3, 64, 5];
    for (i, &len) in lens.iter().enumerate() {
        assert_eq!(j.append(&payload(i as u64 + 1, len)).unwrap(), i as u64 + 1);
    }
    let all = replay_all(&j);
    assert_eq!(all.len(), lens.len());
    for (i, (seq, p)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(*p, payload(*seq, lens[i]));
    }
    let free_before = j.free();
    j.trim_through(4).unwrap();
    assert_eq!(
        j.free() - free_before,
        lens[..4].iter().map(|&l| record_size(l)).sum::<u64>()
    );
    let seqs: Vec<u64> = replay_all(&j).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>());

    let j = reopen(j, &cfg);
    let after: Vec<(u64, Vec<u8>)> = replay_all(&j);
    assert_eq!(after.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    assert_eq!(after[5].1, payload(10, 5));
    assert_eq!(j.next_seq(), 11);
    assert_eq!(j.append(b"eleven").unwrap(), 11);
}

#[test]
fn torn_tail_is_dropped_and_overwritten() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Sync, 128 << 10);
    let j = Journal::open(Arc::new(NvDisk::open(cfg.clone()).unwrap())).unwrap();
    for seq in 1..=3 {
        j.append(&payload(seq, 1000)).unwrap();
    }
    // Tear record 3 as a crash inside its write would: header there, payload half zeros.
    let third = RING + 2 * record_size(1000);
    j.disk()
        .write(third + REC_HEADER + 500, &[0u8; 500])
        .unwrap();
    let j = reopen(j, &cfg);
    let seqs: Vec<u64> = replay_all(&j).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(j.append(b"new three").unwrap(), 3);
    let all = replay_all(&j);
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].1, b"new three");
    let j = reopen(j, &cfg);
    assert_eq!(replay_all(&j).len(), 3);
}

#[test]
fn corrupt_record_in_the_middle_is_an_error_not_an_end() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Shm, 128 << 10);
    let j = Journal::open(Arc::new(NvDisk::open(cfg.clone()).unwrap())).unwrap();
    for seq in 1..=3 {
        j.append(&payload(seq, 200)).unwrap();
    }
    // Flip one payload byte of record 2.
    let second = RING + record_size(200);
    let mut b = [0u8; 1];
    j.disk().read(second + REC_HEADER + 17, &mut b).unwrap();
    j.disk()
        .write(second + REC_HEADER + 17, &[b[0] ^ 0x40])
        .unwrap();
    let items: Vec<_> = j.replay().collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_ref().unwrap().0, 1);
    assert!(
        matches!(items[1], Err(Error::Corrupt { .. })),
        "{:?}",
        items[1]
    );

    let disk = Arc::clone(j.disk());
    drop(j);
    assert!(matches!(Journal::open(disk), Err(Error::Corrupt { .. })));
}

#[test]
fn full_ring_refuses_until_trimmed_and_wraps() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Shm, 64 << 10);
    let j = Journal::open(Arc::new(NvDisk::open(cfg.clone()).unwrap())).unwrap();
    let ring_len = (64 << 10) - RING;
    let mut rng = Rng::new(5);
    let mut live: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut fulls = 0;
    // Several laps: append until full, trim the older half, repeat.
    for _ in 0..12 {
        loop {
            let len = 500 + rng.below(2500) as usize;
            let p = payload(rng.next_u64(), len);
            match j.append(&p) {
                Ok(seq) => live.push((seq, p)),
                Err(Error::Full { needed, free }) => {
                    assert!(needed > free);
                    assert_eq!(free, j.free());
                    fulls += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let used: u64 = live.iter().map(|(_, p)| record_size(p.len())).sum();
        assert_eq!(used + j.free(), ring_len);
        let cut = live[live.len() / 2].0;
        j.trim_through(cut).unwrap();
        live.retain(|(s, _)| *s > cut);
        assert_eq!(replay_all(&j), live);
    }
    assert_eq!(fulls, 12);
    assert!(live.last().unwrap().0 > 60, "never wrapped");
    let j = reopen(j, &cfg);
    assert_eq!(replay_all(&j), live);
    assert!(matches!(
        j.append(&vec![0u8; ring_len as usize]),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn a_device_with_other_data_is_not_a_journal() {
    let dirs = Dirs::new();
    let disk = NvDisk::open(config(&dirs, Mode::Anon, 64 << 10)).unwrap();
    disk.write(0, b"some filesystem").unwrap();
    assert!(matches!(
        Journal::open(Arc::new(disk)),
        Err(Error::NotAJournal)
    ));
}

#[test]
fn concurrent_appends_get_unique_contiguous_seqs_and_share_syncs() {
    let dirs = Dirs::new();
    let cfg = config(&dirs, Mode::Sync, 1 << 20);
    let j = Arc::new(Journal::open(Arc::new(NvDisk::open(cfg.clone()).unwrap())).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| {
                        let p = payload(t * 1000 + i, 300);
                        (j.append(&p).unwrap(), p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut appended: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    appended.sort();
    assert_eq!(
        appended.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    assert_eq!(replay_all(&j), appended);
    let syncs = j.disk().stats().wal_syncs;
    assert!(
        syncs < 200,
        "no group commit: {syncs} syncs for 200 appends"
    );
    let j = Arc::try_unwrap(j).ok().unwrap();
    let j = reopen(j, &cfg);
    assert_eq!(replay_all(&j), appended);
}
