//! Crash tests: a child process (this test binary, re-run with `NVDISK_CRASH_CHILD` set) writes
//! and flushes while the parent kills it with SIGKILL at random moments, or while a failpoint
//! aborts it inside one of the committer's three steps, in a status mark, in the middle of a
//! journal, WAL or pool-log record. The parent then opens the device itself — that is the
//! recovery under test — and checks that every acknowledged write is there, that no slot holds a
//! torn write, and that no slot went back in time. Each mode runs for a bounded time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_nvdisk::NvDisk;
use common::{config_at, Dirs, Mode, Rng};

const CHILD_ENV: &str = "NVDISK_CRASH_CHILD";
const FAILPOINT_ENV: &str = "CAIRN_NVDISK_FAILPOINT";
const SIZE: u64 = 512 << 10;
const SLOTS: u64 = 64;
const SLOT_LEN: usize = 5000;
/// Slots straddle page boundaries: 5120-byte stride from byte 100.
fn slot_offset(slot: u64) -> u64 {
    100 + slot * 5120
}

/// Opens the device, waiting out a lock that a sibling test's child holds for the instant
/// between its fork and exec (flock locks follow the open file into the forked copy).
fn open(cfg: &cairn_nvdisk::Config) -> cairn_nvdisk::Result<NvDisk> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match NvDisk::open(cfg.clone()) {
            Err(cairn_nvdisk::Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

/// The exact bytes write `i` puts in `slot`.
fn pattern(i: u64, slot: u64) -> Vec<u8> {
    let mut v = vec![0u8; SLOT_LEN];
    v[0..8].copy_from_slice(&i.to_be_bytes());
    v[8..16].copy_from_slice(&slot.to_be_bytes());
    Rng::new(i.wrapping_mul(1_000_003) ^ slot).fill(&mut v[16..]);
    v
}

const FAILPOINTS: [&str; 11] = [
    "step1.mid",
    "step1.done",
    "step2.mid",
    "step2.done",
    "step3.mid",
    "step3.done",
    "status.tmp",
    "flush.end",
    "pool.log.mid",
    "pool.apply.mid",
    "wal.mid",
];

fn child_config(spec: &str) -> (Mode, cairn_nvdisk::Config, u64, u64) {
    let parts: Vec<&str> = spec.split('|').collect();
    let mode = Mode::parse(parts[0]);
    let mut cfg = config_at(Path::new(parts[1]), Path::new(parts[2]), mode, SIZE);
    cfg.flush_interval_ms = 10;
    (
        mode,
        cfg,
        parts[3].parse().unwrap(),
        parts[4].parse().unwrap(),
    )
}

/// The child: writes slots forever (until killed), reporting on stdout `W i slot` before write
/// `i`, `A i` once `write` returned in modes that acknowledge on return, and `F i` once a flush
/// after write `i` returned.
fn child(spec: &str) -> ! {
    let (mode, cfg, start, seed) = child_config(spec);
    // libtest has printed "test NAME ... " without a newline; start reports on a line of their own.
    println!();
    let disk = open(&cfg).expect("child open");
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = start;
    while Instant::now() < deadline {
        let slot = rng.below(SLOTS);
        println!("W {i} {slot}");
        disk.write(slot_offset(slot), &pattern(i, slot))
            .expect("child write");
        if mode.acks_on_write() {
            println!("A {i}");
        }
        if rng.below(12) == 0 {
            disk.flush().expect("child flush");
            println!("F {i}");
        }
        i += 1;
    }
    std::process::exit(3)
}

/// What the parent knows of the writes so far.
#[derive(Default)]
struct History {
    /// Write index -> slot, for every write the child started.
    issued: BTreeMap<u64, u64>,
    /// Per slot: the newest write that must be visible (acknowledged, or seen after a restart).
    floor: BTreeMap<u64, u64>,
    next: u64,
}

impl History {
    /// Takes in one run's report; its writes start at `start`.
    fn absorb(&mut self, mode: Mode, start: u64, lines: &[String]) {
        let mut acked = BTreeSet::new();
        let mut flushed = None;
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match (f.first().copied(), f.len()) {
                (Some("W"), 3) => {
                    let (i, slot) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                    self.issued.insert(i, slot);
                    self.next = self.next.max(i + 1);
                }
                (Some("A"), 2) => {
                    acked.insert(f[1].parse::<u64>().unwrap());
                }
                (Some("F"), 2) => flushed = Some(f[1].parse::<u64>().unwrap()),
                _ => {}
            }
        }
        let durable = |i: u64| {
            (mode.acks_on_write() && acked.contains(&i)) || flushed.is_some_and(|f| i <= f)
        };
        let fresh: Vec<(u64, u64)> = self.issued.range(start..).map(|(&i, &s)| (i, s)).collect();
        for (i, slot) in fresh {
            if durable(i) {
                let floor = self.floor.entry(slot).or_insert(i);
                *floor = (*floor).max(i);
            }
        }
    }

    /// Opens the device (recovery) and checks every slot.
    fn verify(&mut self, cfg: &cairn_nvdisk::Config, what: &str) {
        let disk = open(cfg).unwrap_or_else(|e| panic!("{what}: recovery: {e}"));
        let mut buf = vec![0u8; SLOT_LEN];
        for slot in 0..SLOTS {
            disk.read(slot_offset(slot), &mut buf).unwrap();
            let floor = self.floor.get(&slot).copied();
            if buf.iter().all(|&b| b == 0) {
                assert!(floor.is_none(), "{what}: slot {slot} lost write {floor:?}");
                continue;
            }
            let i = u64::from_be_bytes(buf[0..8].try_into().unwrap());
            assert_eq!(
                self.issued.get(&i),
                Some(&slot),
                "{what}: slot {slot} holds write {i}, never issued there"
            );
            assert!(
                buf == pattern(i, slot),
                "{what}: slot {slot}: write {i} is torn"
            );
            if let Some(f) = floor {
                assert!(
                    i >= f,
                    "{what}: slot {slot} holds {i}, older than durable write {f}"
                );
            }
            // What a restart showed stays: it may only be overwritten by newer writes.
            self.floor.insert(slot, i);
        }
        disk.close()
            .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    }
}

/// One run: start the child, kill it (after `kill_after`, or when the failpoint aborts it), then
/// recover and verify. Returns whether the failpoint fired.
fn run_once(
    mode: Mode,
    dirs: &Dirs,
    history: &mut History,
    seed: u64,
    failpoint: Option<(&str, u64)>,
    kill_after: Duration,
) -> bool {
    let start = history.next;
    let spec = format!(
        "{}|{}|{}|{}|{}",
        mode.name(),
        dirs.backup.path().display(),
        dirs.pool_path().display(),
        history.next,
        seed
    );
    let test_name = format!("crash_{}", mode.name().replace('-', "_"));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        test_name.as_str(),
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, spec)
    .env_remove(FAILPOINT_ENV)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some((name, n)) = failpoint {
        cmd.env(FAILPOINT_ENV, format!("{name}:{n}"));
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut s).ok();
        s
    });
    let deadline = Instant::now() + kill_after;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.is_none() {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let lines = reader.join().unwrap();
    let errors = errors.join().unwrap();
    let fired = status.is_some_and(|s| s.signal() == Some(libc_sigabrt()));
    if let Some(s) = status {
        assert!(
            s.signal() == Some(libc_sigabrt()),
            "child ended on its own: {s:?}; stderr: {errors}"
        );
    }
    history.absorb(mode, start, &lines);
    let what = format!("{mode:?} seed {seed} failpoint {failpoint:?}");
    history.verify(&child_config_of(mode, dirs), &what);
    fired
}

fn libc_sigabrt() -> i32 {
    6
}

fn child_config_of(mode: Mode, dirs: &Dirs) -> cairn_nvdisk::Config {
    let mut cfg = config_at(dirs.backup.path(), &dirs.pool_path(), mode, SIZE);
    cfg.flush_interval_ms = 10;
    cfg
}

/// Every failpoint that can fire in `mode` (at a random hit), then random SIGKILLs, until the
/// time budget is spent.
fn crash_test(mode: Mode) {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let started = Instant::now();
    let budget = Duration::from_secs(12);
    let dirs = Dirs::new();
    let mut history = History::default();
    let mut rng = Rng::new(0xc0ffee ^ mode as u64);
    let mut fired = BTreeSet::new();
    let points: Vec<&str> = FAILPOINTS
        .iter()
        .copied()
        .filter(|p| *p != "wal.mid" || matches!(mode, Mode::Sync | Mode::ShmSync))
        .collect();
    let mut runs = 0;
    for round in 0..2 {
        for &point in &points {
            let n = 1 + rng.below(3) + round;
            if run_once(
                mode,
                &dirs,
                &mut history,
                rng.next_u64(),
                Some((point, n)),
                Duration::from_secs(5),
            ) {
                fired.insert(point);
            }
            runs += 1;
        }
    }
    while started.elapsed() < budget {
        let after = Duration::from_millis(5 + rng.below(150));
        run_once(mode, &dirs, &mut history, rng.next_u64(), None, after);
        runs += 1;
    }
    let missing: Vec<_> = points.iter().filter(|p| !fired.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "{mode:?}: failpoints never fired: {missing:?}"
    );
    assert!(
        history.next > 200,
        "{mode:?}: only {} writes in {runs} runs",
        history.next
    );
    eprintln!(
        "{mode:?}: {runs} crashes, {} writes, {:.1}s",
        history.next,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn crash_anon() {
    crash_test(Mode::Anon);
}

#[test]
fn crash_shm() {
    crash_test(Mode::Shm);
}

#[test]
fn crash_sync() {
    crash_test(Mode::Sync);
}

#[test]
fn crash_shm_sync() {
    crash_test(Mode::ShmSync);
}

/// The journal's child: appends records whose payload follows from their sequence number,
/// printing `A seq` once `append` returned, and every 16 appends trims, printing `t seq` before
/// and `T seq` after `trim_through` returned.
fn journal_child(spec: &str) -> ! {
    let (_, cfg, _, _) = child_config(spec);
    println!();
    let disk = std::sync::Arc::new(open(&cfg).expect("child open"));
    let journal = cairn_nvdisk::Journal::open(disk).expect("child journal");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let seq = journal.next_seq();
        assert_eq!(journal.append(&record(seq)).expect("append"), seq);
        println!("A {seq}");
        if seq.is_multiple_of(16) {
            println!("t {}", seq - 8);
            journal.trim_through(seq - 8).expect("trim");
            println!("T {}", seq - 8);
        }
    }
    std::process::exit(3)
}

fn record(seq: u64) -> Vec<u8> {
    let mut v = vec![0u8; 100 + (seq * 7919 % 3000) as usize];
    Rng::new(seq).fill(&mut v);
    v
}

#[derive(Default)]
struct JournalHistory {
    acked: u64,
    trim_acked: u64,
    trim_asked: u64,
}

fn crash_journal_test(mode: Mode) {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        journal_child(&spec);
    }
    let started = Instant::now();
    let dirs = Dirs::new();
    let cfg = child_config_of(mode, &dirs);
    let mut h = JournalHistory::default();
    let mut rng = Rng::new(0x10ca1 ^ mode as u64);
    let test_name = format!("crash_journal_{}", mode.name().replace('-', "_"));
    let (mut runs, mut aborts) = (0, 0);
    while started.elapsed() < Duration::from_secs(8) || runs < 20 {
        let failpoint = match runs % 4 {
            0 if mode == Mode::Sync => Some(format!("wal.mid:{}", 2 + rng.below(40))),
            1 if mode == Mode::Shm => Some(format!("pool.log.mid:{}", 2 + rng.below(40))),
            _ => None,
        };
        let spec = format!(
            "{}|{}|{}|0|0",
            mode.name(),
            dirs.backup.path().display(),
            dirs.pool_path().display()
        );
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            test_name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .env_remove(FAILPOINT_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(f) = &failpoint {
            cmd.env(FAILPOINT_ENV, f);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let deadline = Instant::now() + Duration::from_millis(20 + rng.below(200));
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        if child.wait().unwrap().signal() == Some(libc_sigabrt()) {
            aborts += 1;
        }
        for line in reader.join().unwrap() {
            let f: Vec<&str> = line.split(' ').collect();
            let n = || f[1].parse::<u64>().unwrap();
            match (f[0], f.len()) {
                ("A", 2) => h.acked = h.acked.max(n()),
                ("t", 2) => h.trim_asked = h.trim_asked.max(n()),
                ("T", 2) => h.trim_acked = h.trim_acked.max(n()),
                _ => {}
            }
        }
        runs += 1;

        let what = format!("{mode:?} run {runs} failpoint {failpoint:?}");
        let disk = std::sync::Arc::new(open(&cfg).unwrap());
        let journal = cairn_nvdisk::Journal::open(std::sync::Arc::clone(&disk))
            .unwrap_or_else(|e| panic!("{what}: journal open: {e}"));
        let records: Vec<(u64, Vec<u8>)> = journal
            .replay()
            .collect::<cairn_nvdisk::Result<_>>()
            .unwrap_or_else(|e| panic!("{what}: replay: {e}"));
        let first = records.first().map_or(journal.next_seq(), |r| r.0);
        let last = journal.next_seq() - 1;
        assert!(
            first > h.trim_acked && first <= h.trim_asked + 1,
            "{what}: head {first} outside trims ({}, {}]",
            h.trim_acked,
            h.trim_asked + 1
        );
        assert!(
            last >= h.acked,
            "{what}: acked record {} lost (last {last})",
            h.acked
        );
        for (k, (seq, payload)) in records.iter().enumerate() {
            assert_eq!(*seq, first + k as u64, "{what}: gap in seqs");
            assert!(*payload == record(*seq), "{what}: record {seq} differs");
        }
        // What recovery kept is now the history: a torn, unacked tail is gone for good.
        h.acked = last;
        h.trim_acked = h.trim_acked.max(first - 1);
        drop(journal);
        std::sync::Arc::try_unwrap(disk)
            .ok()
            .unwrap()
            .close()
            .unwrap();
    }
    assert!(
        h.acked > 100,
        "{mode:?}: only {} records in {runs} runs",
        h.acked
    );
    assert!(aborts > 0, "{mode:?}: no failpoint fired in {runs} runs");
    eprintln!(
        "journal {mode:?}: {runs} crashes ({aborts} at failpoints), {} records",
        h.acked
    );
}

#[test]
fn crash_journal_sync() {
    crash_journal_test(Mode::Sync);
}

#[test]
fn crash_journal_shm() {
    crash_journal_test(Mode::Shm);
}
