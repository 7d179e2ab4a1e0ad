//! Model test: random writes, reads, flushes and restarts against an in-memory reference image,
//! for every mode and several seeds. A short flush interval and a small snapshot buffer make the
//! committer run during the writes and make writers wait for the buffer.

mod common;

use std::time::{Duration, Instant};

use cairn_nvdisk::NvDisk;
use common::{config, Dirs, Mode, Rng};

const SIZE: usize = 512 << 10;

fn run(mode: Mode, seed: u64, ops: usize, pool_sync: bool) {
    let dirs = Dirs::new();
    let mut cfg = config(&dirs, mode, SIZE as u64);
    cfg.flush_interval_ms = 1 + seed % 17;
    cfg.snapshot_buffer = 64 << 10;
    cfg.pool_sync = pool_sync;
    let mut disk = NvDisk::open(cfg.clone()).unwrap();
    let mut model = vec![0u8; SIZE];
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    let (mut restarts, mut flushes) = (0, 0);
    let started = Instant::now();
    for op in 0..ops {
        let what = format!("{mode:?} seed {seed} op {op}");
        match rng.below(100) {
            0..=54 => {
                let len = match rng.below(10) {
                    0 => 4096,
                    1 => 100_000 + rng.below(50_000) as usize, // spans several atomic pieces
                    _ => 1 + rng.below(12_000) as usize,
                };
                let off = match rng.below(3) {
                    0 => rng.below((SIZE - len) as u64 / 4096) * 4096,
                    _ => rng.below((SIZE - len) as u64),
                } as usize;
                buf.resize(len, 0);
                rng.fill(&mut buf);
                disk.write(off as u64, &buf).unwrap();
                model[off..off + len].copy_from_slice(&buf);
            }
            55..=89 => {
                let len = 1 + rng.below(20_000) as usize;
                let off = rng.below((SIZE - len) as u64) as usize;
                buf.resize(len, 0);
                disk.read(off as u64, &mut buf).unwrap();
                assert!(
                    buf == model[off..off + len],
                    "{what}: read {off}+{len} differs"
                );
            }
            90..=95 => {
                disk.flush().unwrap();
                flushes += 1;
            }
            _ => {
                disk.close().unwrap();
                disk = NvDisk::open(cfg.clone()).unwrap();
                restarts += 1;
            }
        }
    }
    let mut all = vec![0u8; SIZE];
    disk.read(0, &mut all).unwrap();
    assert!(all == model, "{mode:?} seed {seed}: final image differs");
    disk.close().unwrap();
    let disk = NvDisk::open(cfg).unwrap();
    disk.read(0, &mut all).unwrap();
    assert!(
        all == model,
        "{mode:?} seed {seed}: image differs after the last restart"
    );
    assert!(
        restarts > 0 && flushes > 0,
        "{mode:?} seed {seed}: op mix never restarted"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{mode:?} seed {seed}: took {:?}",
        started.elapsed()
    );
}

#[test]
fn model_anon() {
    for seed in [1, 2, 3] {
        run(Mode::Anon, seed, 500, false);
    }
}

#[test]
fn model_shm() {
    for seed in [11, 12, 13] {
        run(Mode::Shm, seed, 500, false);
    }
}

#[test]
fn model_shm_with_pool_msync() {
    run(Mode::Shm, 21, 300, true);
}

#[test]
fn model_sync() {
    for seed in [31, 32, 33] {
        run(Mode::Sync, seed, 400, false);
    }
}

#[test]
fn model_shm_sync() {
    for seed in [41, 42] {
        run(Mode::ShmSync, seed, 400, false);
    }
}
