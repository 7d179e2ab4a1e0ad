//! 4 KiB random writes that are durable when acknowledged: nvdisk in each mode against
//! pwrite + fdatasync on a file on the same disk. Prints IOPS and p50/p99 latency, the median of
//! `--runs` runs interleaved case by case, and ratios against the first row: fio --fsync=1 on
//! the same disk when fio is installed, else an in-process pwrite + fdatasync loop.
//!
//! ```text
//! cargo run --release -p cairn-nvdisk --example nvbench -- [--dir DIR] [--shm DIR]
//!     [--seconds S] [--runs N] [--size BYTES]
//! ```
//! `--dir` must be on the disk under test (backups, WAL, baseline file); `--shm` is where a file
//! pool goes (default /dev/shm).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_nvdisk::{Config, NvDisk, PoolMode};

const BLOCK: usize = 4096;

/// One timed operation on a block index.
type Op = Arc<dyn Fn(u64) + Send + Sync>;

struct Args {
    dir: PathBuf,
    shm: PathBuf,
    seconds: f64,
    runs: usize,
    size: u64,
}

fn args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir().join("nvbench"),
        shm: PathBuf::from("/dev/shm"),
        seconds: 3.0,
        runs: 3,
        size: 256 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--dir" => a.dir = value.into(),
            "--shm" => a.shm = value.into(),
            "--seconds" => a.seconds = value.parse().unwrap_or_else(|_| usage(&flag)),
            "--runs" => a.runs = value.parse().unwrap_or_else(|_| usage(&flag)),
            "--size" => a.size = value.parse().unwrap_or_else(|_| usage(&flag)),
            _ => usage(&flag),
        }
    }
    a
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "nvbench: bad flag {flag}; flags: --dir DIR --shm DIR --seconds S --runs N --size BYTES"
    );
    std::process::exit(2)
}

/// xorshift, one per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy)]
struct Result {
    iops: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `op(block_index)` from `threads` threads for `seconds`; collects every latency.
fn measure(threads: usize, seconds: f64, blocks: u64, op: Op) -> Result {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = Arc::clone(&op);
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 7919));
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let block = rng.next() % blocks;
                    let t0 = Instant::now();
                    op(block);
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Result {
        iops: lat.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fresh_dir(p: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(p);
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

fn nvdisk(a: &Args, name: &str, pool: PoolMode, sync: bool) -> Arc<NvDisk> {
    let cfg = Config {
        pool,
        size: a.size,
        page_size: BLOCK as u32,
        backup_dir: fresh_dir(&a.dir.join(name)),
        flush_interval_ms: 1000,
        sync,
        pool_sync: false,
        snapshot_buffer: 16 << 20,
        wal_segment_size: 64 << 20,
    };
    Arc::new(NvDisk::open(cfg).expect("open nvdisk"))
}

/// One benchmark case: a timed operation, or fio run as a child process.
enum Kind {
    Op(Op),
    Fio { sync: &'static str, file: PathBuf },
}

struct Case {
    name: &'static str,
    threads: usize,
    kind: Kind,
    runs: Vec<Result>,
}

fn fio_run(sync: &str, file: &Path, a: &Args) -> Option<Result> {
    let out = std::process::Command::new("fio")
        .args([
            "--name=nvbench",
            &format!("--filename={}", file.display()),
            &format!("--size={}", a.size),
            "--rw=randwrite",
            "--bs=4k",
            "--ioengine=psync",
            &format!("--{sync}=1"),
            "--time_based",
            &format!("--runtime={}", a.seconds.ceil() as u64),
            "--output-format=json",
        ])
        .output()
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &json["jobs"][0];
    // An acknowledged write is the write plus its sync: add the two latencies' percentiles.
    let pct = |p: &str| {
        let w = job["write"]["clat_ns"]["percentile"][p]
            .as_f64()
            .unwrap_or(0.0);
        let s = job["sync"]["lat_ns"]["percentile"][p]
            .as_f64()
            .unwrap_or(0.0);
        (w + s) / 1000.0
    };
    Some(Result {
        iops: job["write"]["iops"].as_f64()?,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
    })
}

fn main() {
    let a = args();
    let blocks = a.size / BLOCK as u64;
    let shm_pool = a.shm.join(format!("nvbench-pool-{}", std::process::id()));
    let dir = fresh_dir(&a.dir);

    let base = {
        let path = dir.join("baseline.dat");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        // Written, not sparse, as fio lays out its file: overwrites need no allocation.
        let zeros = vec![0u8; 1 << 20];
        for i in 0..a.size / (1 << 20) {
            f.write_all_at(&zeros, i << 20).unwrap();
        }
        f.sync_all().unwrap();
        let f = Arc::new(f);
        let op: Op = Arc::new(move |b| {
            f.write_all_at(&[0xa5u8; BLOCK], b * BLOCK as u64).unwrap();
            f.sync_data().unwrap();
        });
        op
    };
    let sync = nvdisk(&a, "sync", PoolMode::Anon, true);
    let shm = nvdisk(&a, "shm", PoolMode::File(shm_pool.clone()), false);
    let anon = nvdisk(&a, "anon", PoolMode::Anon, false);
    let mut cases = vec![
        case("file pwrite+fdatasync", 1, Kind::Op(base)),
        case(
            "nvdisk sync (WAL, power-loss safe)",
            1,
            write_op(&sync, false),
        ),
        case(
            "nvdisk sync (WAL, power-loss safe)",
            4,
            write_op(&sync, false),
        ),
        case("nvdisk shm (process-crash safe)", 1, write_op(&shm, false)),
        case("nvdisk anon + flush() per write", 1, write_op(&anon, true)),
    ];
    let have_fio = std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_fio {
        for sync in ["fsync", "fdatasync"] {
            let name = if sync == "fsync" {
                "fio --fsync=1"
            } else {
                "fio --fdatasync=1"
            };
            let file = dir.join("fio.dat");
            cases.insert(0, case(name, 1, Kind::Fio { sync, file }));
        }
        cases.swap(0, 1);
    }

    // Rounds interleave the cases so that a noisy neighbour on the disk hits them alike.
    for round in 0..a.runs {
        for c in cases.iter_mut() {
            let r = match &c.kind {
                Kind::Op(op) => Some(measure(c.threads, a.seconds, blocks, Arc::clone(op))),
                Kind::Fio { sync, file } => fio_run(sync, file, &a),
            };
            match r {
                Some(r) => c.runs.push(r),
                None => eprintln!("nvbench: round {round}: {} failed", c.name),
            }
        }
    }

    println!(
        "4 KiB random writes, durable on ack; median of {} interleaved runs of {:.1}s; dir {}",
        a.runs,
        a.seconds,
        a.dir.display()
    );
    println!(
        "{:<38} {:>3} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "case", "thr", "iops", "p50_us", "p99_us", "iops/base", "p50/base", "p99/base"
    );
    let mut base: Option<(f64, f64, f64)> = None;
    for c in cases.iter().filter(|c| !c.runs.is_empty()) {
        let iops = median(c.runs.iter().map(|r| r.iops).collect());
        let p50 = median(c.runs.iter().map(|r| r.p50_us).collect());
        let p99 = median(c.runs.iter().map(|r| r.p99_us).collect());
        let (bi, b50, b99) = *base.get_or_insert((iops, p50, p99));
        println!(
            "{:<38} {:>3} {iops:>10.0} {p50:>9.1} {p99:>9.1} {:>9.2}x {:>8.3}x {:>8.3}x",
            c.name,
            c.threads,
            iops / bi,
            p50 / b50,
            p99 / b99
        );
    }
    println!("(base = the first row: fio --fsync=1 when fio is installed)");
    drop(cases);
    for disk in [sync, shm, anon] {
        if let Ok(disk) = Arc::try_unwrap(disk) {
            disk.close().unwrap();
        }
    }
    let _ = std::fs::remove_file(&shm_pool);
    let _ = std::fs::remove_dir_all(&a.dir);
}

fn case(name: &'static str, threads: usize, kind: Kind) -> Case {
    Case {
        name,
        threads,
        kind,
        runs: Vec::new(),
    }
}

fn write_op(disk: &Arc<NvDisk>, flush_each: bool) -> Kind {
    let d = Arc::clone(disk);
    Kind::Op(Arc::new(move |b| {
        d.write(b * BLOCK as u64, &[0x5au8; BLOCK]).unwrap();
        if flush_each {
            d.flush().unwrap();
        }
    }))
}
