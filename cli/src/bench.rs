//! `cairn bench obj`: PUT and GET throughput and latency of the object API, beside the disk's own
//! limits measured with fio in the same run, reported as ratios.

use crate::util::{connect, human_bytes, parse_size};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use cairn_client::{Cluster, PoolIo, PoolSpec};
use cairn_proto::Oid;
use clap::Subcommand;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// PUT and GET objects through the native client.
    Obj {
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Object sizes, comma separated.
        #[arg(long, default_value = "4k,1M", value_delimiter = ',')]
        sizes: Vec<String>,
        /// Concurrency levels, comma separated.
        #[arg(long, default_value = "1,16", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Replication sizes of the pools to test (pools `bench-sN` are created as needed).
        #[arg(long, default_value = "1,3", value_delimiter = ',')]
        pool_sizes: Vec<u8>,
        /// Run fio in this directory (on the cluster's disk) for the disk's limits.
        #[arg(long)]
        fio_dir: Option<String>,
        /// Also print the results as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// PUT and GET through a gateway's S3 API beside the native object API, in one run.
    S3(crate::bench_s3::S3BenchArgs),
}

/// Latency samples and totals of one phase.
pub struct PhaseResult {
    pub name: String,
    pub ops: u64,
    pub bytes: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
}

impl PhaseResult {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Run `op(worker, seq)` from `conc` workers for `secs` seconds, with a progress line on stderr.
pub async fn run_phase<F, Fut>(
    name: &str,
    conc: usize,
    secs: u64,
    bytes_per_op: u64,
    op: F,
) -> PhaseResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lats = Arc::new(Mutex::new(Vec::<u64>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (op, stop, done, errors, lats) = (
            op.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
            lats.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match op(w, seq).await {
                    Ok(()) => {
                        mine.push(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("\n{e:#}");
                        }
                    }
                }
                seq += 1;
            }
            lats.lock().expect("lats").extend(mine);
        }));
    }
    let deadline = start + Duration::from_secs(secs);
    // A live line only on a terminal: logs and pipes get one line per phase.
    let tty = std::io::stderr().is_terminal();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
        if !tty {
            continue;
        }
        let n = done.load(Ordering::Relaxed);
        let el = start.elapsed().as_secs_f64();
        eprint!(
            "\r  {name:<28} {:>5.1}s {:>9} ops {:>10.0} ops/s {:>9.1} MB/s   ",
            el,
            n,
            n as f64 / el,
            (n * bytes_per_op) as f64 / el / 1e6
        );
        let _ = std::io::stderr().flush();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let secs_f = start.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *lats.lock().expect("lats"));
    l.sort_unstable();
    let ops = l.len() as u64;
    eprintln!(
        "{}  {name:<28} {:>10.0} ops/s {:>9.1} MB/s  p50 {} µs  p99 {} µs  errors {}",
        if tty { "\r" } else { "" },
        ops as f64 / secs_f,
        (ops * bytes_per_op) as f64 / secs_f / 1e6,
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        errors.load(Ordering::Relaxed)
    );
    PhaseResult {
        name: name.to_string(),
        ops,
        bytes: ops * bytes_per_op,
        secs: secs_f,
        p50_us: percentile(&l, 0.50),
        p99_us: percentile(&l, 0.99),
        max_us: l.last().copied().unwrap_or(0),
        errors: errors.load(Ordering::Relaxed),
    }
}

async fn bench_pool(cluster: &Cluster, size: u8) -> Result<PoolIo> {
    let name = format!("bench-s{size}");
    if cluster.pool(&name).await.is_err() {
        let mut spec = PoolSpec::new(&name);
        spec.size = size;
        spec.min_size = if size >= 3 { 2 } else { 1 };
        spec.pg_num = 32;
        match cluster.create_pool(spec).await {
            Ok(_) => {}
            Err(e) if cluster.pool(&name).await.is_ok() => tracing::debug!("pool raced: {e}"),
            Err(e) => return Err(e).context("create bench pool"),
        }
    }
    Ok(cluster.pool_io(&name).await?)
}

fn oid_for(size_tag: u64, w: usize, seq: u64) -> Oid {
    Oid((u128::from(size_tag) << 96) | ((w as u128) << 64) | u128::from(seq))
}

/// fio figures: MB/s of 1 MiB sequential writes and IOPS of 4 KiB random writes with fsync.
struct FioResult {
    seq_write_mbs: f64,
    randwrite_fsync_iops: f64,
    randwrite_fsync_p50_us: f64,
}

fn run_fio(dir: &str) -> Result<FioResult> {
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let out = std::process::Command::new("fio")
            .args(args)
            .arg(format!("--directory={dir}"))
            .arg("--output-format=json")
            .output()
            .context("run fio (apt-get install fio)")?;
        if !out.status.success() {
            bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let seq = json(&[
        "--name=seqw",
        "--rw=write",
        "--bs=1M",
        "--size=1G",
        "--ioengine=psync",
        "--direct=1",
        "--end_fsync=1",
        "--unlink=1",
    ])?;
    let rnd = json(&[
        "--name=randw",
        "--rw=randwrite",
        "--bs=4k",
        "--size=64M",
        "--ioengine=psync",
        "--fsync=1",
        "--runtime=5",
        "--time_based",
        "--unlink=1",
    ])?;
    let w = |v: &serde_json::Value, k: &str| v["jobs"][0]["write"][k].as_f64().unwrap_or(0.0);
    Ok(FioResult {
        seq_write_mbs: w(&seq, "bw_bytes") / 1e6,
        randwrite_fsync_iops: w(&rnd, "iops"),
        randwrite_fsync_p50_us: rnd["jobs"][0]["sync"]["lat_ns"]["percentile"]["50.000000"]
            .as_f64()
            .unwrap_or(0.0)
            / 1000.0,
    })
}

pub async fn run(meta: Vec<String>, cmd: BenchCmd) -> Result<()> {
    let (seconds, sizes, concurrency, pool_sizes, fio_dir, json) = match cmd {
        BenchCmd::Obj {
            seconds,
            sizes,
            concurrency,
            pool_sizes,
            fio_dir,
            json,
        } => (seconds, sizes, concurrency, pool_sizes, fio_dir, json),
        BenchCmd::S3(a) => return crate::bench_s3::run(meta, a).await,
    };
    if let Some(d) = &fio_dir {
        std::fs::create_dir_all(d).with_context(|| format!("create --fio-dir {d}"))?;
    }
    let cluster = connect(meta).await?;
    let sizes: Vec<u64> = sizes.iter().map(|s| parse_size(s)).collect::<Result<_>>()?;
    let mut results: Vec<(u8, u64, usize, PhaseResult)> = Vec::new();
    for &psize in &pool_sizes {
        let io = bench_pool(&cluster, psize).await?;
        for &size in &sizes {
            let data = Bytes::from(vec![0x5au8; size as usize]);
            for &conc in &concurrency {
                let tag = (u64::from(psize) << 40) ^ (size << 8) ^ conc as u64;
                // Objects each worker wrote (worker w wrote seq 0..written[w]).
                let written: Arc<Vec<AtomicU64>> =
                    Arc::new((0..conc).map(|_| AtomicU64::new(0)).collect());
                let (io2, data2, w2) = (io.clone(), data.clone(), written.clone());
                let name = format!("put {} c{} size{}", human_bytes(size), conc, psize);
                let put = run_phase(&name, conc, seconds, size, move |w, seq| {
                    let (io, data, written) = (io2.clone(), data2.clone(), w2.clone());
                    async move {
                        io.write_full(oid_for(tag, w, seq), data).await?;
                        written[w].fetch_max(seq + 1, Ordering::Relaxed);
                        Ok(())
                    }
                })
                .await;
                let (io2, w2) = (io.clone(), written.clone());
                let name = format!("get {} c{} size{}", human_bytes(size), conc, psize);
                let get = run_phase(&name, conc, seconds, size, move |w, seq| {
                    let (io, written) = (io2.clone(), w2.clone());
                    async move {
                        let n = written[w].load(Ordering::Relaxed).max(1);
                        let d = io.read(oid_for(tag, w, seq % n), 0, size).await?;
                        if d.len() as u64 != size {
                            bail!("short read: {} of {size}", d.len());
                        }
                        Ok(())
                    }
                })
                .await;
                results.push((psize, size, conc, put));
                results.push((psize, size, conc, get));
            }
        }
    }
    let fio = match &fio_dir {
        Some(d) => Some(run_fio(d)?),
        None => None,
    };
    println!();
    println!(
        "{:<30} {:>9} {:>10} {:>9} {:>9} {:>9} {:>6}  vs disk (fio)",
        "phase", "ops/s", "MB/s", "p50 µs", "p99 µs", "max µs", "errors"
    );
    for (psize, size, conc, r) in &results {
        let ratio = match &fio {
            // A pool of size p writes every byte p times to the one disk.
            Some(f) if r.name.starts_with("put") && *size >= 1 << 20 => {
                let disk = f.seq_write_mbs / f64::from((*psize).max(1));
                format!(
                    "{:.2}x of {:.0} MB/s (direct seq write / {psize})",
                    r.mb_per_sec() / disk,
                    disk
                )
            }
            Some(f) if r.name.starts_with("put") && *conc == 1 => format!(
                "{:.2}x of {:.0} IOPS 4k write+fsync",
                r.ops_per_sec() / f.randwrite_fsync_iops,
                f.randwrite_fsync_iops
            ),
            Some(f) if r.name.starts_with("put") => format!(
                "{:.2}x of {:.0} IOPS 4k write+fsync (QD1)",
                r.ops_per_sec() / f.randwrite_fsync_iops,
                f.randwrite_fsync_iops
            ),
            _ => String::new(),
        };
        println!(
            "{:<30} {:>9.0} {:>10.1} {:>9} {:>9} {:>9} {:>6}  {}",
            r.name,
            r.ops_per_sec(),
            r.mb_per_sec(),
            r.p50_us,
            r.p99_us,
            r.max_us,
            r.errors,
            ratio
        );
        if json {
            println!(
                "{}",
                serde_json::json!({"phase": r.name, "ops_per_sec": r.ops_per_sec(), "mb_per_sec": r.mb_per_sec(),
                    "p50_us": r.p50_us, "p99_us": r.p99_us, "max_us": r.max_us, "errors": r.errors})
            );
        }
    }
    if let Some(f) = &fio {
        println!();
        println!(
            "disk (fio in {}): 1 MiB direct sequential write {:.0} MB/s; 4 KiB random write + fsync {:.0} IOPS (p50 {:.0} µs)",
            fio_dir.as_deref().unwrap_or(""),
            f.seq_write_mbs,
            f.randwrite_fsync_iops,
            f.randwrite_fsync_p50_us
        );
        println!(
            "note: a size-3 pool on one machine writes every byte three times to the same disk."
        );
    }
    Ok(())
}
