//! Many concurrent writers to one object and to one placement group of a size-3 pool, on a
//! multi-process cluster, checked against a model (issue 12): with every OSD up, with a replica
//! killed -9 mid-stream, and with the group's primary killed -9 mid-stream (each restarted once
//! writes go on without it); then the primary killed while both replicas are stopped, and a
//! replica or the primary killed and started again before the map can mark it down.
//!
//! Twelve writer tasks write overlapping ranges of three objects of one placement group through
//! the cluster client. Objects are 8-byte cells; a write stamps each cell it covers with its own
//! id and the cell's index, so every cell read back names exactly one write (or reads as zeros,
//! never written) and anything else is garbage. Each object has a region all writers share
//! (small writes and some of 128 KiB or more, which take the OSD's direct-write path) and a
//! private range per writer that only that writer writes, one write after another.
//!
//! A logical clock ticks before each request is sent and after its answer arrives, so "A was
//! acknowledged before B was sent" is `A.end < B.start`. The versions the primary gives out
//! order the acknowledged writes; the checks:
//! - no two acknowledged writes share a version, and real-time order holds: a write
//!   acknowledged before another was sent has the smaller version;
//! - every read (the writer's own range right after each acknowledgement, and now and then the
//!   whole object) shows in each cell a write over that cell that had been sent before the read
//!   ended, never older than the newest acknowledged write over the cell that was acknowledged
//!   before the read was sent (so a writer always reads its own private range back exactly);
//! - at the end each cell holds the acknowledged write of the highest version over it (or a
//!   write whose outcome the client never learnt); a write acknowledged with nothing overlapping
//!   it that was not acknowledged before it was sent reads back exactly;
//! - the three OSDs' copies (read from each OSD with the recovery protocol's `Pull`, and the
//!   group's `PgScan`) are identical: same objects, versions and bytes.
//!
//! Every write must succeed: the client retries through one OSD's failure. A failing run names
//! its seed (`WRITE_MODEL_SEED` repeats the writers' choices, not the timing) and copies the
//! daemons' logs out of the cluster's directory before it goes.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use cairn_client::{PoolIo, PoolSpec};
use cairn_proto::msg::{OsdRequest, OsdResponse, PeerRequest, PeerResponse};
use cairn_proto::{ObjOp, Oid, PgId, PgState};
use cairn_tests::{bounded_async, send_signal, serial, ClusterOpts, ProcCluster};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CELL: u64 = 8;
const WRITERS: u32 = 12;
/// Cells every writer may write.
const SHARED: u32 = 24_576;
/// Cells of one writer's private range (after the shared region).
const PRIVATE: u32 = 1_024;
const OBJECT_CELLS: u32 = SHARED + WRITERS * PRIVATE;
/// A write this long or longer goes to the OSD's direct (`O_DIRECT`) path: 128 KiB.
const LARGE: u32 = 16_384;
const OBJECTS: usize = 3;
/// Bounds of one writer's stream.
const MAX_OPS: u32 = 600;
const MAX_RUN: Duration = Duration::from_secs(60);
/// Acknowledged writes to wait for in each phase of a run.
const PHASE_ACKS: u64 = 250;

/// A write's id: writer and sequence, never 0 (0 is a cell never written).
fn write_id(w: u32, seq: u32) -> u32 {
    ((w + 1) << 20) | seq
}

fn id_parts(id: u32) -> (usize, usize) {
    (((id >> 20) - 1) as usize, (id & 0xf_ffff) as usize)
}

/// The bytes of write `id` over cells `off..off + len`.
fn stamp(id: u32, off: u32, len: u32) -> Bytes {
    let mut v = Vec::with_capacity((len as u64 * CELL) as usize);
    for c in off..off + len {
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&c.to_be_bytes());
    }
    Bytes::from(v)
}

/// What cell `c` (absolute) of an object holds in `buf`, a read that started at cell `first`:
/// `Ok(0)` never written (or beyond the end), `Ok(id)`, or `Err` with the raw bytes (garbage).
fn cell_at(buf: &[u8], first: u32, c: u32) -> Result<u32, [u8; 8]> {
    let i = ((c - first) as u64 * CELL) as usize;
    let Some(b) = buf.get(i..i + CELL as usize) else {
        return Ok(0);
    };
    let raw: [u8; 8] = b.try_into().expect("8 bytes");
    let id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let idx = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    match (id, idx) {
        (0, 0) => Ok(0),
        (0, _) => Err(raw),
        (id, idx) if idx == c => Ok(id),
        _ => Err(raw),
    }
}

/// One write as its writer saw it. `end` and `version` are `None` when the client answered an
/// error: then the write may or may not have been applied, at any time after `start`.
#[derive(Clone, Debug)]
struct WriteRec {
    id: u32,
    obj: usize,
    off: u32,
    len: u32,
    start: u64,
    end: Option<u64>,
    version: Option<u64>,
}

impl WriteRec {
    fn covers(&self, obj: usize, c: u32) -> bool {
        self.obj == obj && (self.off..self.off + self.len).contains(&c)
    }

    fn overlaps(&self, o: &WriteRec) -> bool {
        self.obj == o.obj && self.off < o.off + o.len && o.off < self.off + self.len
    }
}

/// One read and what it returned.
struct ReadRec {
    obj: usize,
    off: u32,
    len: u32,
    start: u64,
    end: u64,
    data: Bytes,
}

/// What one writer task did.
#[derive(Default)]
struct Stream {
    writes: Vec<WriteRec>,
    reads: Vec<ReadRec>,
    errors: Vec<String>,
}

/// Shared by the writers and the test: the logical clock, the stop flag, acknowledgements so far.
#[derive(Default)]
struct Shared {
    clock: AtomicU64,
    stop: AtomicBool,
    acked: AtomicU64,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

/// Where writer `w` writes next: (object, first cell, cells).
fn pick(rng: &mut rand::rngs::StdRng, w: u32) -> (usize, u32, u32) {
    // Most writes go to the first object: one object with many writers is the hard case.
    let obj = if rng.gen_bool(0.6) {
        0
    } else {
        rng.gen_range(1..OBJECTS)
    };
    let r: f64 = rng.gen();
    let (off, len) = if r < 0.3 {
        let len = rng.gen_range(1..=PRIVATE / 4);
        (SHARED + w * PRIVATE + rng.gen_range(0..=PRIVATE - len), len)
    } else if r < 0.34 {
        let len = rng.gen_range(LARGE..=SHARED);
        (rng.gen_range(0..=SHARED - len), len)
    } else {
        let len = rng.gen_range(1..=512);
        (rng.gen_range(0..=SHARED - len), len)
    };
    (obj, off, len)
}

async fn read_rec(
    io: &PoolIo,
    sh: &Shared,
    oids: &[Oid],
    obj: usize,
    off: u32,
    len: u32,
) -> Result<ReadRec, cairn_client::ClientError> {
    let start = sh.tick();
    let data = io
        .read(oids[obj], u64::from(off) * CELL, u64::from(len) * CELL)
        .await?;
    let end = sh.tick();
    Ok(ReadRec {
        obj,
        off,
        len,
        start,
        end,
        data,
    })
}

/// One writer: writes until told to stop (or its bounds), reading its own range back after
/// every acknowledgement and the whole object now and then.
async fn writer(
    w: u32,
    seed: u64,
    io: PoolIo,
    oids: Vec<Oid>,
    sh: Arc<Shared>,
    deadline: Instant,
) -> Stream {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(w).wrapping_mul(0x9e37_79b9));
    let mut out = Stream::default();
    for seq in 0..MAX_OPS {
        if sh.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        let (obj, off, len) = pick(&mut rng, w);
        let id = write_id(w, seq);
        let op = ObjOp::Write {
            offset: u64::from(off) * CELL,
            data: stamp(id, off, len),
        };
        let start = sh.tick();
        let r = io.mutate(oids[obj], op).await;
        let end = sh.tick();
        let mut rec = WriteRec {
            id,
            obj,
            off,
            len,
            start,
            end: None,
            version: None,
        };
        match r {
            Ok(v) => {
                rec.end = Some(end);
                rec.version = Some(v);
                sh.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => out.errors.push(format!("write {id}: {e}")),
        }
        let acked = rec.end.is_some();
        out.writes.push(rec);
        if !acked {
            continue;
        }
        match read_rec(&io, &sh, &oids, obj, off, len).await {
            Ok(r) => out.reads.push(r),
            Err(e) => out.errors.push(format!("read after write {id}: {e}")),
        }
        if seq % 8 == 7 {
            match read_rec(&io, &sh, &oids, obj, 0, OBJECT_CELLS).await {
                Ok(r) => out.reads.push(r),
                Err(e) => out.errors.push(format!("read of object {obj}: {e}")),
            }
        }
    }
    out
}

/// Everything the writers did, indexed by writer and sequence (a write's id names both).
struct History {
    by_writer: Vec<Vec<WriteRec>>,
    reads: Vec<ReadRec>,
    errors: Vec<String>,
}

impl History {
    fn write(&self, id: u32) -> Option<&WriteRec> {
        let (w, seq) = id_parts(id);
        self.by_writer.get(w)?.get(seq).filter(|r| r.id == id)
    }

    fn writes(&self) -> impl Iterator<Item = &WriteRec> {
        self.by_writer.iter().flatten()
    }

    fn acked(&self) -> impl Iterator<Item = &WriteRec> {
        self.writes().filter(|w| w.end.is_some())
    }
}

/// Collects what broke (the first few in full, and a count).
#[derive(Default)]
struct Violations {
    list: Vec<String>,
    count: usize,
}

impl Violations {
    fn push(&mut self, v: String) {
        self.count += 1;
        if self.list.len() < 20 {
            self.list.push(v);
        }
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.count > 0 {
            bail!(
                "{what}: {} violations, first:\n{}",
                self.count,
                self.list.join("\n")
            );
        }
        Ok(())
    }
}

/// Acknowledged writes have distinct versions, ordered as they were in real time.
fn check_versions(h: &History) -> Result<()> {
    let mut v = Violations::default();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for w in h.acked() {
        let ver = w.version.expect("acked");
        if let Some(other) = seen.insert(ver, w.id) {
            v.push(format!(
                "writes {other} and {} both acknowledged as v{ver}",
                w.id
            ));
        }
    }
    let mut by_end: Vec<&WriteRec> = h.acked().collect();
    by_end.sort_by_key(|w| w.end);
    let mut by_start: Vec<&WriteRec> = h.acked().collect();
    by_start.sort_by_key(|w| w.start);
    // Sweep the writes in order of sending, keeping the newest version of those already
    // acknowledged by then.
    let mut i = 0;
    let mut newest: Option<&WriteRec> = None;
    for b in by_start {
        while i < by_end.len() && by_end[i].end.expect("acked") < b.start {
            if newest.is_none_or(|n| n.version < by_end[i].version) {
                newest = Some(by_end[i]);
            }
            i += 1;
        }
        if let Some(a) = newest {
            if a.version >= b.version {
                v.push(format!(
                    "write {} (v{:?}) was acknowledged before write {} was sent, which got v{:?}",
                    a.id, a.version, b.id, b.version
                ));
            }
        }
    }
    v.check("versions")
}

/// Every read returned, in each cell, a write over that cell that had been sent before the read
/// ended and was not older than the newest acknowledged one before the read was sent.
fn check_reads(h: &History) -> Result<(usize, usize)> {
    let mut v = Violations::default();
    let mut acked: Vec<&WriteRec> = h.acked().collect();
    acked.sort_by_key(|w| w.end);
    let mut reads: Vec<&ReadRec> = h.reads.iter().collect();
    reads.sort_by_key(|r| r.start);
    // Per object and cell, the newest version acknowledged so far in the sweep (0: none).
    let mut floor = vec![vec![0u64; OBJECT_CELLS as usize]; OBJECTS];
    let mut i = 0;
    let mut cells = 0;
    for r in &reads {
        while i < acked.len() && acked[i].end.expect("acked") < r.start {
            let w = acked[i];
            let ver = w.version.expect("acked");
            for f in &mut floor[w.obj][w.off as usize..(w.off + w.len) as usize] {
                *f = (*f).max(ver);
            }
            i += 1;
        }
        for c in r.off..r.off + r.len {
            cells += 1;
            let must = floor[r.obj][c as usize];
            let what = |got: String| {
                format!(
                    "read of object {} cells {}..{} (ticks {}..{}), cell {c}: {got}",
                    r.obj,
                    r.off,
                    r.off + r.len,
                    r.start,
                    r.end
                )
            };
            match cell_at(&r.data, r.off, c) {
                Err(raw) => v.push(what(format!("garbage {raw:02x?}"))),
                Ok(0) if must > 0 => v.push(what(format!(
                    "never written, though v{must} over it was acknowledged before the read"
                ))),
                Ok(0) => {}
                Ok(id) => match h.write(id) {
                    None => v.push(what(format!("names write {id}, which was never sent"))),
                    Some(x) if !x.covers(r.obj, c) => {
                        v.push(what(format!("holds write {id}, which did not write there")))
                    }
                    Some(x) if x.start > r.end => v.push(what(format!(
                        "holds write {id}, sent at tick {} after the read ended",
                        x.start
                    ))),
                    Some(x) if x.version.is_some_and(|xv| xv < must) => v.push(what(format!(
                        "holds write {id} (v{:?}), older than v{must} acknowledged before the read",
                        x.version
                    ))),
                    Some(_) => {}
                },
            }
        }
    }
    v.check("reads")?;
    Ok((reads.len(), cells))
}

/// The final bytes of object `obj` are the acknowledged writes applied in version order (a
/// write whose outcome is unknown may stand over any cell it covers); returns how many writes
/// with nothing concurrent over them were checked to read back exactly.
fn check_final(h: &History, obj: usize, data: &[u8]) -> Result<usize> {
    let mut v = Violations::default();
    let mut top = vec![(0u64, 0u32); OBJECT_CELLS as usize];
    let mut unknown: Vec<&WriteRec> = Vec::new();
    for w in h.writes().filter(|w| w.obj == obj) {
        match w.version {
            Some(ver) => {
                for t in &mut top[w.off as usize..(w.off + w.len) as usize] {
                    if ver > t.0 {
                        *t = (ver, w.id);
                    }
                }
            }
            None => unknown.push(w),
        }
    }
    ensure!(
        data.len() as u64 <= u64::from(OBJECT_CELLS) * CELL,
        "object {obj} is {} bytes, more than any write reaches",
        data.len()
    );
    for c in 0..OBJECT_CELLS {
        let want = top[c as usize].1;
        match cell_at(data, 0, c) {
            Err(raw) => v.push(format!("object {obj} cell {c}: garbage {raw:02x?}")),
            Ok(got) if got == want => {}
            Ok(got) if unknown.iter().any(|u| u.id == got && u.covers(obj, c)) => {}
            Ok(got) => v.push(format!(
                "object {obj} cell {c}: holds {got} ({:?}), the model says {want} (v{})",
                h.write(got),
                top[c as usize].0
            )),
        }
    }
    // Independent of versions: a write whose every overlapping write was acknowledged before it
    // was sent has nothing that could stand over it, so it reads back exactly.
    let writes: Vec<&WriteRec> = h.writes().filter(|w| w.obj == obj).collect();
    let mut exact = 0;
    for w in writes.iter().filter(|w| w.end.is_some()) {
        let alone = writes
            .iter()
            .all(|o| o.id == w.id || !o.overlaps(w) || o.end.is_some_and(|e| e < w.start));
        if !alone {
            continue;
        }
        exact += 1;
        for c in w.off..w.off + w.len {
            if cell_at(data, 0, c) != Ok(w.id) {
                v.push(format!(
                    "object {obj}: write {} (cells {}..{}) had nothing after it, yet cell {c} \
                     holds {:?}",
                    w.id,
                    w.off,
                    w.off + w.len,
                    cell_at(data, 0, c)
                ));
                break;
            }
        }
    }
    v.check("final content")?;
    Ok(exact)
}

/// The first `n` objects of placement group `pg` (ids counted up from 1).
fn objects_of(io: &PoolIo, pg: PgId, n: usize) -> Vec<Oid> {
    (1u128..)
        .map(Oid)
        .filter(|o| io.pool().pg_of(*o) == pg)
        .take(n)
        .collect()
}

/// Wait until `pg`'s primary (asked directly) reports it active+clean with every OSD up.
async fn wait_clean(c: &ProcCluster, pg: PgId, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let cl = c.client().await?;
        let map = cl.refresh_map().await?;
        if map.pg_up(pg).len() == 3 {
            let primary = map.pg_primary(pg).expect("an up member");
            let i = c
                .osd_index(&map, primary)
                .context("primary not in the cluster")?;
            match c.osd_call(i, OsdRequest::Status).await {
                Ok(OsdResponse::Status(st)) => {
                    let state = st.pgs.iter().find(|(p, _)| *p == pg).map(|(_, s)| *s);
                    if state == Some(PgState::ActiveClean) {
                        return Ok(());
                    }
                    last = format!("primary osd.{i} says {state:?}");
                }
                other => last = format!("primary osd.{i}: {other:?}"),
            }
        } else {
            last = format!("up: {:?}", map.pg_up(pg));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("{pg} not clean within {timeout:?}: {last}")
}

/// Each OSD's own copy of every object of the group: the group's scan (oid, version, digest)
/// and each model object's stat version and bytes.
async fn replica_copies(
    c: &ProcCluster,
    pg: PgId,
    oids: &[Oid],
) -> Result<Vec<(Vec<(Oid, u64, u32)>, Vec<(u64, Bytes)>)>> {
    let mut out = Vec::new();
    for i in 0..c.osds.len() {
        let scan = match c
            .osd_call(
                i,
                OsdRequest::Peer(PeerRequest::PgScan {
                    epoch: 0,
                    pg,
                    after: None,
                    limit: 1000,
                }),
            )
            .await?
        {
            OsdResponse::Peer(PeerResponse::Scan { objects, more }) => {
                ensure!(!more, "osd.{i} holds more than 1000 objects of {pg}");
                objects
                    .into_iter()
                    .map(|s| (s.oid, s.version, s.digest))
                    .collect()
            }
            other => bail!("osd.{i} answered the scan with {other:?}"),
        };
        let mut copies = Vec::new();
        for oid in oids {
            match c
                .osd_call(
                    i,
                    OsdRequest::Peer(PeerRequest::Pull {
                        epoch: 0,
                        pg,
                        oid: *oid,
                        offset: 0,
                        len: (u64::from(OBJECT_CELLS) * CELL) as u32,
                    }),
                )
                .await?
            {
                OsdResponse::Peer(PeerResponse::Piece(p)) => {
                    ensure!(
                        p.data.len() as u64 == p.stat.size,
                        "osd.{i}: a pull of {oid} returned {} of {} bytes",
                        p.data.len(),
                        p.stat.size
                    );
                    copies.push((p.stat.version, p.data));
                }
                other => bail!("osd.{i} answered the pull of {oid} with {other:?}"),
            }
        }
        out.push((scan, copies));
    }
    Ok(out)
}

/// The three OSDs end with identical copies (polled for a while: a replica may still be applying
/// what it acknowledged as durable), equal to what the client reads, at the newest version any
/// write of the object was acknowledged with.
async fn check_replicas(
    c: &ProcCluster,
    pg: PgId,
    oids: &[Oid],
    read: &[Bytes],
    newest: &[Option<u64>],
) -> Result<()> {
    let start = Instant::now();
    loop {
        let copies = replica_copies(c, pg, oids).await?;
        let mut diffs = Vec::new();
        for (i, (scan, objs)) in copies.iter().enumerate().skip(1) {
            if *scan != copies[0].0 {
                diffs.push(format!(
                    "osd.{i}'s scan of {pg} differs from osd.0's: {scan:?} vs {:?}",
                    copies[0].0
                ));
            }
            for (k, (ver, data)) in objs.iter().enumerate() {
                let (ver0, data0) = &copies[0].1[k];
                if ver != ver0 || data != data0 {
                    diffs.push(format!(
                        "object {k}: osd.{i} has v{ver} ({} bytes), osd.0 v{ver0} ({} bytes)",
                        data.len(),
                        data0.len()
                    ));
                }
            }
        }
        for (k, (ver, data)) in copies[0].1.iter().enumerate() {
            if *data != read[k] {
                diffs.push(format!(
                    "object {k}: osd.0's copy is not what the client read"
                ));
            }
            if let Some(n) = newest[k] {
                if *ver != n {
                    diffs.push(format!(
                        "object {k}: the copies are at v{ver}, its newest acknowledged write v{n}"
                    ));
                }
            }
        }
        if diffs.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("replicas differ:\n{}", diffs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Replica,
    Primary,
    /// Both replicas stopped (SIGSTOP) for a moment and the primary killed meanwhile: every
    /// write in flight then lives on the primary alone, so one acknowledged before the replicas
    /// had it durably would be lost (a kill alone hardly ever finds that gap on loopback).
    PrimaryWhileReplicasPause,
    /// A replica killed -9 and started again at once, before the map can mark it down.
    ReplicaBackAtOnce,
    /// The same for the primary: it comes back as the primary of a map that never changed.
    PrimaryBackAtOnce,
}

/// Stop both replicas, kill -9 the primary (`osds[primary]`) while they are stopped, let them go
/// on. The pause is shorter than the OSDs' peer timeout and the map's down timeout, so neither
/// the primary nor the metadata service gives up on the replicas before the kill.
async fn kill_primary_while_replicas_pause(
    c: &mut ProcCluster,
    map: &cairn_proto::ClusterMap,
    set: &[cairn_proto::OsdId],
    primary: usize,
    sh: &Shared,
) -> Result<()> {
    let mut pids = Vec::new();
    for id in &set[1..] {
        let i = c
            .osd_index(map, *id)
            .context("replica not in the cluster")?;
        pids.push(c.osds[i].pid().context("replica not running")?);
    }
    for pid in &pids {
        send_signal(*pid, libc::SIGSTOP);
    }
    let before = sh.acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.osds[primary].kill9();
    let during = sh.acked.load(Ordering::SeqCst) - before;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for pid in &pids {
        send_signal(*pid, libc::SIGCONT);
    }
    eprintln!("{during} writes acknowledged while both replicas were stopped");
    Ok(())
}

/// Wait until the writers have `n` acknowledgements in all (bounded).
async fn wait_acks(sh: &Shared, n: u64, within: Duration, what: &str) -> Result<()> {
    let start = Instant::now();
    while sh.acked.load(Ordering::SeqCst) < n {
        ensure!(
            start.elapsed() < within,
            "{what}: {} of {n} writes acknowledged after {within:?}",
            sh.acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The seed of the writers' choices: `$WRITE_MODEL_SEED`, else from the clock (printed, so a
/// failure names it; thread timing is not reproducible, the choices of offsets and lengths are).
fn seed() -> u64 {
    std::env::var("WRITE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Copy the daemons' whole logs out of the cluster's temporary directory (which goes with the
/// cluster) so a failure can be read afterwards.
fn keep_logs(c: &ProcCluster, name: &str, seed: u64) -> String {
    let dest = std::env::temp_dir().join(format!("write-model-{name}-{seed}"));
    if std::fs::create_dir_all(&dest).is_err() {
        return "(logs not kept)".into();
    }
    if let Ok(entries) = std::fs::read_dir(c.dir.path()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".log") {
                let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
            }
        }
    }
    format!("logs kept in {}", dest.display())
}

async fn run(fault: Fault) -> Result<()> {
    let seed = seed();
    eprintln!("write_model {fault:?}: seed {seed} (WRITE_MODEL_SEED={seed} to repeat the choices)");
    let mut c = ProcCluster::start(ClusterOpts::default()).await?;
    let r = scenario(&mut c, fault, seed).await;
    if let Err(e) = r {
        let kept = keep_logs(&c, &format!("{fault:?}"), seed);
        bail!("{e:#}\nseed {seed}; {kept}\n{}", c.logs());
    }
    Ok(())
}

async fn scenario(c: &mut ProcCluster, fault: Fault, seed: u64) -> Result<()> {
    let began = Instant::now();
    let cl = c.client().await?;
    let mut spec = PoolSpec::new("wm");
    spec.pg_num = 8;
    cl.create_pool(spec).await?;
    let io = cl.pool_io("wm").await?;
    let pg = io.pool().pg_of(Oid(1));
    let oids = objects_of(&io, pg, OBJECTS);
    wait_clean(c, pg, Duration::from_secs(30)).await?;

    let sh = Arc::new(Shared::default());
    let deadline = Instant::now() + MAX_RUN;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                seed,
                io.clone(),
                oids.clone(),
                sh.clone(),
                deadline,
            ))
        })
        .collect();

    wait_acks(&sh, PHASE_ACKS, Duration::from_secs(30), "before the fault").await?;
    let mut victim = None;
    if fault != Fault::None {
        let map = cl.refresh_map().await?;
        let set = map.pg_up(pg);
        ensure!(set.len() == 3, "{pg} has {set:?} up");
        let id = match fault {
            Fault::Replica | Fault::ReplicaBackAtOnce => set[1],
            _ => set[0],
        };
        let i = c.osd_index(&map, id).context("victim not in the cluster")?;
        eprintln!(
            "killing osd.{i} ({id}, {fault:?} of {pg}) after {} acknowledgements",
            sh.acked.load(Ordering::SeqCst)
        );
        if fault == Fault::PrimaryWhileReplicasPause {
            kill_primary_while_replicas_pause(c, &map, &set, i, &sh).await?;
        } else {
            c.osds[i].kill9();
        }
        victim = Some(i);
        if matches!(fault, Fault::ReplicaBackAtOnce | Fault::PrimaryBackAtOnce) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            // Writes go on once the map has marked it down.
            let n = sh.acked.load(Ordering::SeqCst) + PHASE_ACKS;
            wait_acks(&sh, n, Duration::from_secs(45), "with the OSD dead").await?;
        }
        c.osds[i].start()?;
        c.wait_map(Duration::from_secs(45), |m| m.osds.values().all(|o| o.up))
            .await?;
        eprintln!(
            "osd.{i} back after {} acknowledgements",
            sh.acked.load(Ordering::SeqCst)
        );
    }
    // Go on while the group settles (a returning OSD catches up under the writes).
    let n = sh.acked.load(Ordering::SeqCst) + PHASE_ACKS;
    wait_acks(&sh, n, Duration::from_secs(45), "at the end").await?;
    sh.stop.store(true, Ordering::SeqCst);

    let mut h = History {
        by_writer: Vec::new(),
        reads: Vec::new(),
        errors: Vec::new(),
    };
    for t in tasks {
        // A write in flight when the stop came may be retrying through a failover.
        let s = tokio::time::timeout(Duration::from_secs(70), t)
            .await
            .context("a writer did not stop")??;
        h.by_writer.push(s.writes);
        h.reads.extend(s.reads);
        h.errors.extend(s.errors);
    }
    let acked = h.acked().count();
    eprintln!(
        "{} writes ({acked} acknowledged, {} errors), {} reads in {:?}",
        h.writes().count(),
        h.errors.len(),
        h.reads.len(),
        began.elapsed()
    );

    check_versions(&h)?;
    let (reads, cells) = check_reads(&h)?;
    wait_clean(c, pg, Duration::from_secs(60)).await?;
    let mut finals = Vec::new();
    let mut exact = 0;
    for (k, oid) in oids.iter().enumerate() {
        let data = io
            .read(*oid, 0, u64::from(OBJECT_CELLS) * CELL + 4096)
            .await?;
        exact += check_final(&h, k, &data)?;
        finals.push(data);
    }
    // Every cell any write covers was checked against the model above; these bounds make sure
    // the run exercised what it claims to.
    ensure!(exact > 0, "no write stood alone to read back exactly");
    ensure!(
        acked as u64
            >= PHASE_ACKS
                * match fault {
                    Fault::None | Fault::ReplicaBackAtOnce | Fault::PrimaryBackAtOnce => 2,
                    _ => 3,
                },
        "only {acked} writes acknowledged"
    );
    let newest: Vec<Option<u64>> = (0..OBJECTS)
        .map(|k| {
            h.acked()
                .filter(|w| w.obj == k)
                .filter_map(|w| w.version)
                .max()
        })
        .collect();
    // An unknown outcome may have left a newer version on an object than any acknowledged.
    let newest = if h.errors.is_empty() {
        newest
    } else {
        vec![None; OBJECTS]
    };
    check_replicas(c, pg, &oids, &finals, &newest).await?;
    ensure!(
        h.errors.is_empty(),
        "the client gave up on {} operations (a single OSD failure must not fail a write): {:?}",
        h.errors.len(),
        &h.errors[..h.errors.len().min(10)]
    );
    eprintln!(
        "checked {reads} reads ({cells} cells), {exact} writes read back exactly, replicas \
         identical{}; {:?} in all",
        victim.map_or(String::new(), |i| format!(" (osd.{i} killed and back)")),
        began.elapsed()
    );
    Ok(())
}

/// One scenario on its own cluster, one at a time in this binary (each starts seven processes),
/// on a runtime built here so the serialising guard is not held across an await.
fn one(fault: Fault, secs: u64) {
    let _one = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bounded_async(secs, run(fault)));
}

#[test]
fn concurrent_writers_to_one_pg_match_the_model() {
    one(Fault::None, 150);
}

#[test]
fn replica_kill9_mid_stream_keeps_the_model() {
    one(Fault::Replica, 200);
}

#[test]
fn primary_kill9_mid_stream_keeps_the_model() {
    one(Fault::Primary, 200);
}

#[test]
fn primary_kill9_while_its_replicas_pause_keeps_the_model() {
    one(Fault::PrimaryWhileReplicasPause, 200);
}

#[test]
fn replica_kill9_and_back_at_once_keeps_the_model() {
    one(Fault::ReplicaBackAtOnce, 200);
}

#[test]
fn primary_kill9_and_back_at_once_keeps_the_model() {
    one(Fault::PrimaryBackAtOnce, 200);
}

/// The checks above must be able to fail: a lost acknowledged write, a stale read, a garbage
/// byte and two writes ordered against real time are each caught.
#[test]
fn model_checks_catch_lost_stale_garbage_and_misordered_writes() {
    let w = |id, off, len, start, end, version| WriteRec {
        id,
        obj: 0,
        off,
        len,
        start,
        end: Some(end),
        version: Some(version),
    };
    let (a, b) = (write_id(0, 0), write_id(1, 0));
    // `a` over cells 0..4, acknowledged before `b` over 2..6 was sent.
    let history = |va, vb, reads| History {
        by_writer: vec![vec![w(a, 0, 4, 0, 1, va)], vec![w(b, 2, 4, 2, 3, vb)]],
        reads,
        errors: Vec::new(),
    };
    let object = |cells: &[(u32, u32)]| {
        let mut v = vec![0u8; (u64::from(OBJECT_CELLS) * CELL) as usize];
        for &(id, c) in cells {
            let at = (u64::from(c) * CELL) as usize;
            v[at..at + 8].copy_from_slice(&stamp(id, c, 1));
        }
        v
    };
    let good: Vec<(u32, u32)> = (0..2)
        .map(|c| (a, c))
        .chain((2..6).map(|c| (b, c)))
        .collect();
    let h = history(1, 2, Vec::new());
    assert!(check_versions(&h).is_ok());
    assert_eq!(check_final(&h, 0, &object(&good)).unwrap(), 1);
    // `b` lost on cell 3: `a` shows through.
    let mut lost = good.clone();
    lost[3] = (a, 3);
    assert!(check_final(&h, 0, &object(&lost)).is_err());
    // A byte of cell 4 flipped.
    let mut bad = object(&good);
    bad[4 * 8 + 6] ^= 1;
    assert!(check_final(&h, 0, &bad).is_err());
    // A read sent after `b` was acknowledged that still shows `a` on cell 2.
    let stale = ReadRec {
        obj: 0,
        off: 0,
        len: 4,
        start: 4,
        end: 5,
        data: Bytes::from(object(&[(a, 0), (a, 1), (a, 2), (a, 3)])[..32].to_vec()),
    };
    assert!(check_reads(&history(1, 2, vec![stale])).is_err());
    // The same read sent before `b` was acknowledged may show either.
    let early = ReadRec {
        obj: 0,
        off: 0,
        len: 4,
        start: 2,
        end: 5,
        data: Bytes::from(object(&[(a, 0), (a, 1), (a, 2), (b, 3)])[..32].to_vec()),
    };
    assert!(check_reads(&history(1, 2, vec![early])).is_ok());
    // `b`, sent after `a` was acknowledged, ordered before it.
    assert!(check_versions(&history(2, 1, Vec::new())).is_err());
    assert!(check_versions(&history(2, 2, Vec::new())).is_err());
}
