//! The write path to the disk: journal the mutation (durable), apply it to the store (not
//! synced), and now and then checkpoint: pause writers, sync the store, trim the journal.
//!
//! [`Durable::stage`] writes a mutation's record (not yet synced) and takes its turn in its
//! placement group's lane; [`Durable::finish`] hands it to the committer thread, which makes
//! records durable a batch at a time and applies each mutation in its group's journal order.
//! A large whole-object write of a new object is *placed* first (its data written durably into
//! the store, only a small record journaled; see [`Store::place`] and [`Durable::replay`]).
//!
//! A bounded journal (an nvdisk ring) that is full does not fail the write: the writer forces a
//! checkpoint, which empties the journal, and appends again.
//!
//! On start, every journaled record is replayed into the store in order (mutations are blind
//! writes, so replaying over a store that already holds some of them converges), then the store
//! is synced and the journal trimmed.

use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::store::{Mutation, Store};
use cairn_proto::{ObjOp, Oid, PgId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};

/// A journal record's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub pg: PgId,
    pub oid: Oid,
    pub mutation: Mutation,
}

/// A mutation journaled but not yet applied (see [`Durable::stage`]). It holds the checkpoint
/// gate shared, so no checkpoint trims its record before it is applied.
pub struct Staged {
    /// `None` once finished; a `Staged` dropped before that (its caller cancelled) is finished
    /// in the background, since every later turn of its group waits for it.
    gate: Option<OwnedRwLockReadGuard<()>>,
    durable: Arc<Durable>,
    lane: Arc<Lane>,
    seq: u64,
    ticket: u64,
    prior: u64,
    pg: PgId,
    oid: Oid,
    mutation: Mutation,
}

/// One placement group's staged mutations: turns are handed out in journal order and taken
/// in that order.
#[derive(Default)]
struct Lane {
    st: Mutex<LaneState>,
    /// A turn ended.
    turn: Notify,
    /// A mutation was staged.
    staged: Notify,
}

#[derive(Default)]
struct LaneState {
    /// The last turn handed out and the last one taken.
    next_ticket: u64,
    applied: u64,
    /// The highest `Apply` version staged.
    top_version: u64,
    /// The highest version a replica answered `Missing` for.
    passed: u64,
    /// Objects with mutations in flight: the last one's turn and the version it leaves.
    objects: HashMap<Oid, (u64, u64)>,
}

impl Staged {
    /// The object's version before this mutation.
    pub fn prior(&self) -> u64 {
        self.prior
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Every later turn of the group waits for this one: hand it to the committer all the
        // same, with nobody to answer.
        if self.gate.is_some() {
            let job = self.job(None);
            self.durable.clone().committer().push(job);
        }
    }
}

impl Staged {
    fn job(&mut self, reply: Option<tokio::sync::oneshot::Sender<Result<()>>>) -> Job {
        Job {
            seq: self.seq,
            ticket: self.ticket,
            lane: self.lane.clone(),
            pg: self.pg,
            oid: self.oid,
            mutation: std::mem::replace(&mut self.mutation, Mutation::Remove),
            gate: self.gate.take(),
            reply,
        }
    }
}

/// A staged mutation handed to the committer: made durable and applied in its turn.
struct Job {
    seq: u64,
    ticket: u64,
    lane: Arc<Lane>,
    pg: PgId,
    oid: Oid,
    mutation: Mutation,
    /// The checkpoint gate, held until the mutation is applied.
    gate: Option<OwnedRwLockReadGuard<()>>,
    reply: Option<tokio::sync::oneshot::Sender<Result<()>>>,
}

/// The thread that makes staged mutations durable and applies them, a batch per wake-up: one
/// journal sync for everything staged so far, then every mutation whose turn has come, in
/// journal order. (Each mutation used to take a trip to tokio's blocking pool for this, where
/// it waited on the journal's sync with the others: `perf` counted the pool's wake-ups and
/// those waits as two thirds of the OSD's context switches under small writes.)
struct Committer {
    queue: Mutex<CommitQueue>,
    work: std::sync::Condvar,
}

#[derive(Default)]
struct CommitQueue {
    jobs: Vec<Job>,
    /// Set when the [`Durable`] is gone: the thread ends.
    closed: bool,
}

impl Committer {
    fn push(&self, job: Job) {
        self.queue.lock().expect("commit queue").jobs.push(job);
        self.work.notify_one();
    }

    fn close(&self) {
        self.queue.lock().expect("commit queue").closed = true;
        self.work.notify_one();
    }

    /// Wait for jobs; `None` once closed and nothing is left.
    fn take(&self, waiting: bool) -> Option<Vec<Job>> {
        let mut q = self.queue.lock().expect("commit queue");
        loop {
            if !q.jobs.is_empty() {
                return Some(std::mem::take(&mut q.jobs));
            }
            if q.closed && !waiting {
                return None;
            }
            q = self.work.wait(q).expect("commit queue");
        }
    }
}

fn run_committer(committer: Arc<Committer>, durable: std::sync::Weak<Durable>) {
    let mut pending: Vec<Job> = Vec::new();
    while let Some(new) = committer.take(!pending.is_empty()) {
        pending.extend(new);
        let Some(d) = durable.upgrade() else {
            // The Durable is gone (its last user dropped it): the records are in the journal
            // and are applied by the replay on the next start; end the turns.
            for j in pending.drain(..) {
                j.lane.done(j.ticket, j.oid);
            }
            continue;
        };
        pending.sort_by_key(|j| j.seq);
        let top = pending.last().map_or(0, |j| j.seq);
        let durable_ok = d.journal.wait_durable(top).is_ok();
        if durable_ok {
            failpoint("journaled");
        }
        // Apply in journal order every mutation whose turn has come; one whose group has an
        // earlier mutation not handed over yet waits for the next round.
        loop {
            let mut progressed = false;
            let mut rest = Vec::with_capacity(pending.len());
            for j in pending.drain(..) {
                if !j.lane.is_turn(j.ticket) {
                    rest.push(j);
                    continue;
                }
                let r = if durable_ok {
                    d.apply_blocking(j.pg, j.oid, &j.mutation)
                } else {
                    Err(Error::JournalPoisoned)
                };
                if let (Err(e), None) = (&r, &j.reply) {
                    tracing::debug!(pg = %j.pg, oid = %j.oid, error = %e, "abandoned mutation not applied");
                }
                j.lane.done(j.ticket, j.oid);
                drop(j.gate);
                if let Some(tx) = j.reply {
                    let _ = tx.send(r);
                }
                progressed = true;
            }
            pending = rest;
            if !progressed || pending.is_empty() {
                break;
            }
        }
    }
}

impl LaneState {
    fn in_flight(&self) -> bool {
        self.next_ticket > self.applied
    }
}

impl Lane {
    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.st.lock().expect("lane lock")
    }

    /// Whether every mutation before `ticket` is applied.
    fn is_turn(&self, ticket: u64) -> bool {
        self.state().applied + 1 >= ticket
    }

    fn done(&self, ticket: u64, oid: Oid) {
        let mut st = self.state();
        st.applied = st.applied.max(ticket);
        if st.objects.get(&oid).is_some_and(|(t, _)| *t == ticket) {
            st.objects.remove(&oid);
        }
        drop(st);
        self.turn.notify_waiters();
    }
}

/// The PG log entry a superseded record would have left (see [`Durable::replay`]).
fn superseded_entry(store: &dyn Store, rec: &Record) -> Result<Option<cairn_proto::msg::LogEntry>> {
    Ok(match &rec.mutation {
        Mutation::Apply { version, op, .. } => {
            let prior = store.stat(rec.pg, rec.oid)?.map_or(0, |s| s.version);
            Some(crate::store::log_entry(*version, rec.oid, op, prior))
        }
        Mutation::Placed { version, .. } => Some(cairn_proto::msg::LogEntry {
            version: *version,
            oid: rec.oid,
            op: cairn_proto::msg::LogOp::Modify,
            prior: 0,
        }),
        Mutation::Install { entry, .. } => entry.clone(),
        Mutation::Remove => None,
    })
}

/// bincode's options of `bincode::serialize`, the journal records' encoding since format 1.
fn record_opts() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Largest write staged on the async worker itself rather than in the blocking pool.
const INLINE_STAGE_MAX: usize = 64 << 10;

/// Whether staging `m` is cheap enough to run without leaving the async worker.
fn stages_inline(m: &Mutation) -> bool {
    match m {
        Mutation::Apply { op, .. } => match op {
            ObjOp::WriteFull { data } | ObjOp::Write { data, .. } => data.len() <= INLINE_STAGE_MAX,
            ObjOp::Truncate { .. } | ObjOp::Delete => true,
            _ => false,
        },
        Mutation::Install { .. } | Mutation::Remove => false,
        Mutation::Placed { .. } => true,
    }
}

/// Writes that make a new object of at least this many bytes are placed ([`Store::place`]):
/// their data goes once, straight into the store, and only a small record into the journal.
pub const PLACE_MIN: usize = 128 << 10;

/// The data of a mutation that may be placed, if it is one: a whole-object write, or a write at
/// offset 0 (which, on an object that does not exist, makes the same object: how file chunks,
/// volume objects and S3 uploads begin).
fn placeable(m: &Mutation) -> Option<(u64, i64, &bytes::Bytes)> {
    match m {
        Mutation::Apply {
            version,
            mtime,
            op: ObjOp::WriteFull { data } | ObjOp::Write { offset: 0, data },
        } if data.len() >= PLACE_MIN => Some((*version, *mtime, data)),
        _ => None,
    }
}

/// Test hooks for the crash tests: `CAIRN_FAILPOINT=NAME` makes the process abort when it
/// reaches the point `NAME`, as a kill -9 there would (`placed`: a placed write's data is
/// durable and its record not written; `journaled`: a record is durable and not applied).
fn failpoint(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("CAIRN_FAILPOINT").ok());
    if at.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Checkpoints a writer forces in a row on a full journal before it gives up; each one empties
/// the journal, so more are needed only while other writers refill it every time.
const FULL_ROUNDS: u32 = 16;

/// See the module doc.
pub struct Durable {
    store: Arc<dyn Store>,
    journal: Arc<dyn Journal>,
    /// Writers hold it shared across journal + apply; a checkpoint holds it exclusively so that
    /// every journaled record is applied before the store is synced and the journal trimmed.
    gate: Arc<RwLock<()>>,
    /// Per placement group: the order staged mutations are applied in.
    lanes: Mutex<HashMap<PgId, Arc<Lane>>>,
    /// Bytes of logical data the store may hold (0: unlimited).
    capacity: AtomicU64,
    checkpoint_bytes: u64,
    /// Set when applying a journaled record failed: the store may be inconsistent until the
    /// journal is replayed, so no more writes are taken and the OSD stops.
    failed: AtomicBool,
    pub(crate) failed_notify: Notify,
    checkpoint_wanted: Notify,
    checkpoints: AtomicU64,
    committer: std::sync::OnceLock<Arc<Committer>>,
}

impl Drop for Durable {
    fn drop(&mut self) {
        if let Some(c) = self.committer.get() {
            c.close();
        }
    }
}

impl Durable {
    pub fn new(
        store: Arc<dyn Store>,
        journal: Arc<dyn Journal>,
        capacity: u64,
        checkpoint_bytes: u64,
    ) -> Durable {
        // Checkpoint a bounded journal at half full at the latest, so that writers rarely find it
        // full and wait for a forced checkpoint.
        let checkpoint_bytes = match journal.capacity() {
            Some(cap) if checkpoint_bytes > 0 => checkpoint_bytes.min(cap / 2),
            _ => checkpoint_bytes,
        };
        Durable {
            store,
            journal,
            gate: Arc::new(RwLock::new(())),
            lanes: Mutex::new(HashMap::new()),
            capacity: AtomicU64::new(capacity),
            checkpoint_bytes,
            failed: AtomicBool::new(false),
            failed_notify: Notify::new(),
            checkpoint_wanted: Notify::new(),
            checkpoints: AtomicU64::new(0),
            committer: std::sync::OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// Replay the journal into the store, then sync and trim. Returns the records replayed.
    ///
    /// A record of an object that a later placed write ([`Mutation::Placed`]) of the same object
    /// supersedes is not applied, only logged: replaying it could destroy the placed data,
    /// which lives in the store and not in the journal (a delete before the placement would
    /// remove the data file the placement wrote later; a truncate would cut it). The placed
    /// record then replaces whatever the store holds of the object, so the object ends as it
    /// was when the crash came, as with every other record.
    pub fn replay(store: &dyn Store, journal: &dyn Journal) -> Result<u64> {
        let decode = |seq: u64, payload: &[u8]| -> Result<Record> {
            bincode::deserialize(payload).map_err(|_| Error::JournalCorrupt { offset: seq })
        };
        let mut last_placed: HashMap<(PgId, Oid), u64> = HashMap::new();
        journal.replay(&mut |seq, payload| {
            let rec = decode(seq, payload)?;
            if matches!(rec.mutation, Mutation::Placed { .. }) {
                last_placed.insert((rec.pg, rec.oid), seq);
            }
            Ok(())
        })?;
        let mut n = 0;
        store.set_replaying(true);
        let r = journal.replay(&mut |seq, payload| {
            let rec = decode(seq, payload)?;
            if last_placed
                .get(&(rec.pg, rec.oid))
                .is_some_and(|&placed| placed > seq)
            {
                if let Some(entry) = superseded_entry(store, &rec)? {
                    store.log_only(rec.pg, &entry)?;
                }
            } else {
                rec.mutation.apply_to(store, rec.pg, rec.oid)?;
            }
            n += 1;
            Ok(())
        });
        store.set_replaying(false);
        r?;
        store.sync()?;
        journal.trim_through(journal.last_seq())?;
        Ok(n)
    }

    /// Journal and apply one mutation. Returns the object's version before it (for `Apply`).
    pub async fn commit(self: &Arc<Self>, pg: PgId, oid: Oid, mutation: Mutation) -> Result<u64> {
        let staged = self.stage(pg, oid, mutation).await?;
        self.finish(staged).await
    }

    /// Write a mutation's journal record (not yet durable) and take a turn in its placement
    /// group's lane; [`Durable::finish`] makes it durable and applies it after the ones staged
    /// before it. Callers stage one group's mutations one at a time (under the group's order
    /// lock) and may then finish many at once: their records share fdatasyncs.
    ///
    /// A write of at least [`PLACE_MIN`] bytes that makes an object that does not exist (and
    /// has no mutation in flight) is placed first: its data written durably into the
    /// store, its record a [`Mutation::Placed`] without the data. Callers' one-at-a-time
    /// staging per group is what makes "does not exist" still true when the record is written.
    pub async fn stage(self: &Arc<Self>, pg: PgId, oid: Oid, mutation: Mutation) -> Result<Staged> {
        let mut mutation = mutation;
        let mut rounds = 0;
        let lane = self.lane(pg);
        if let Some(placed) = self.try_place(&lane, pg, oid, &mutation).await? {
            mutation = placed;
        }
        loop {
            let shared = self.gate.clone().read_owned().await;
            if self.failed() {
                return Err(Error::JournalPoisoned);
            }
            // A checkpoint needs the gate exclusively: one counted after `seen` ran after this
            // append, so if the append finds the journal full, that checkpoint has made room.
            let seen = self.checkpoints();
            let r = if stages_inline(&mutation) {
                // A few microseconds of work (a buffered write of a small record): a hop to the
                // blocking pool and back would cost more than it.
                self.stage_blocking(&lane, pg, oid, &mutation)
            } else {
                let (me, l) = (self.clone(), lane.clone());
                let (m, r) = tokio::task::spawn_blocking(move || {
                    let r = me.stage_blocking(&l, pg, oid, &mutation);
                    (mutation, r)
                })
                .await
                .map_err(|_| Error::ShuttingDown)?;
                mutation = m;
                r
            };
            if self.checkpoint_bytes > 0 && self.journal.len_bytes() >= self.checkpoint_bytes {
                self.checkpoint_wanted.notify_one();
            }
            match r {
                Ok((seq, ticket, prior)) => {
                    lane.staged.notify_waiters();
                    return Ok(Staged {
                        gate: Some(shared),
                        durable: self.clone(),
                        lane,
                        seq,
                        ticket,
                        prior,
                        pg,
                        oid,
                        mutation,
                    });
                }
                Err(Error::JournalFull { needed, free }) if rounds < FULL_ROUNDS => {
                    drop(shared);
                    rounds += 1;
                    tracing::debug!(needed, free, rounds, "journal full; checkpointing");
                    self.checkpoint_unless_since(Some(seen)).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Place the data of `mutation` if it is a placeable write of a new object; the
    /// [`Mutation::Placed`] to journal instead, or `None` to journal it whole.
    async fn try_place(
        self: &Arc<Self>,
        lane: &Lane,
        pg: PgId,
        oid: Oid,
        mutation: &Mutation,
    ) -> Result<Option<Mutation>> {
        let Some((version, mtime, data)) = placeable(mutation) else {
            return Ok(None);
        };
        if self.failed() || lane.state().objects.contains_key(&oid) {
            return Ok(None);
        }
        // Refuse what the record would refuse before writing anything.
        if self.check_space(pg, oid, mutation)?.is_some() {
            return Ok(None);
        }
        let (me, data) = (self.clone(), data.clone());
        let placed = tokio::task::spawn_blocking(move || me.store.place(pg, oid, &data))
            .await
            .map_err(|_| Error::ShuttingDown)??;
        Ok(placed.map(|placed| {
            failpoint("placed");
            Mutation::Placed {
                version,
                mtime,
                placed,
            }
        }))
    }

    /// Wait until a staged mutation's record is durable and every mutation staged before it in
    /// its group is applied, then apply it. Returns the object's version before it.
    /// Runs in a task of its own, so a caller that stops waiting does not leave the turn
    /// half taken.
    /// The committer owns the mutation from here, so a caller that stops waiting does not
    /// leave its turn half taken.
    pub async fn finish(self: &Arc<Self>, mut staged: Staged) -> Result<u64> {
        let prior = staged.prior;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = staged.job(Some(tx));
        self.committer().push(job);
        rx.await.map_err(|_| Error::ShuttingDown)?.map(|()| prior)
    }

    /// The committer thread, started by the first mutation.
    fn committer(self: &Arc<Self>) -> &Arc<Committer> {
        self.committer.get_or_init(|| {
            let c = Arc::new(Committer {
                queue: Mutex::new(CommitQueue::default()),
                work: std::sync::Condvar::new(),
            });
            let (cc, weak) = (c.clone(), Arc::downgrade(self));
            std::thread::Builder::new()
                .name("osd-commit".into())
                .spawn(move || run_committer(cc, weak))
                .expect("spawn the journal committer thread");
            c
        })
    }

    /// The version `oid` has once every mutation staged so far is applied (0: none).
    pub fn version_of(&self, pg: PgId, oid: Oid) -> Result<u64> {
        let lane = self.lane(pg);
        if let Some((_, v)) = lane.state().objects.get(&oid) {
            return Ok(*v);
        }
        Ok(self.store.stat(pg, oid)?.map_or(0, |s| s.version))
    }

    /// The version the group's next mutation gets, and the version just before it: a replica
    /// applies the new one only after that one (or once it is known to be lost). Even when
    /// this OSD has applied the previous version, its sub-op may still be on its way to a
    /// replica, and a replica applying out of order leaves a gap in its log.
    pub fn next_version(&self, pg: PgId) -> Result<(u64, u64)> {
        let lane = self.lane(pg);
        let st = lane.state();
        let last = self.store.pg_info(pg)?.last_update;
        let top = if st.in_flight() {
            st.top_version.max(last)
        } else {
            last
        };
        Ok((top + 1, top))
    }

    /// Wait (at most `limit`) until the group's version `after` is staged or applied here;
    /// false if it is not by then (the replica then goes on without it, as after a lost op).
    pub async fn wait_staged(&self, pg: PgId, after: u64, limit: std::time::Duration) -> bool {
        if after == 0 {
            return true;
        }
        let lane = self.lane(pg);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = lane.staged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let staged = {
                let st = lane.state();
                st.top_version.max(st.passed)
            };
            let applied = self.store.pg_info(pg).map_or(0, |i| i.last_update);
            if staged.max(applied) >= after {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Wait until every staged mutation of `oid` is applied.
    pub async fn settle(&self, pg: PgId, oid: Oid) {
        let lane = self.lane(pg);
        loop {
            let notified = lane.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lane.state().objects.contains_key(&oid) {
                return;
            }
            notified.await;
        }
    }

    /// A replica answered `Missing` for the group's `version` (it will be pushed the object
    /// instead): later sub-ops need not wait for it to be staged.
    pub fn passed(&self, pg: PgId, version: u64) {
        let lane = self.lane(pg);
        let mut st = lane.state();
        st.passed = st.passed.max(version);
        drop(st);
        lane.staged.notify_waiters();
    }

    fn lane(&self, pg: PgId) -> Arc<Lane> {
        self.lanes
            .lock()
            .expect("lanes lock")
            .entry(pg)
            .or_default()
            .clone()
    }

    /// Refuse what applying would: an invalid op (a bad typed-field name), or any write once
    /// the journal failed. The primary checks this before it sends a mutation to the replicas
    /// in parallel with its own commit ([`Durable::stage`] checks the space), so that a
    /// refusal never leaves the replicas ahead of it.
    pub fn validate(&self, mutation: &Mutation) -> Result<()> {
        if self.failed() {
            return Err(Error::JournalPoisoned);
        }
        if let Mutation::Apply {
            op: cairn_proto::ObjOp::SetTyped { otype, fields },
            ..
        } = mutation
        {
            crate::store::check_typed(otype, fields)?;
        }
        Ok(())
    }

    fn check_space(
        &self,
        pg: PgId,
        oid: Oid,
        mutation: &Mutation,
    ) -> Result<Option<cairn_proto::ObjectStat>> {
        let stat = self.store.stat(pg, oid)?;
        let size = stat.as_ref().map_or(0, |s| s.size);
        let cap = self.capacity();
        let growth = mutation.max_growth(size);
        if cap > 0 && growth > 0 && self.store.used_bytes() + growth > cap {
            return Err(Error::NoSpace { capacity: cap });
        }
        Ok(stat)
    }

    /// Check, journal (without waiting for durability) and take a turn, all under the lane's
    /// lock so that the group's turns follow its journal order. Returns (seq, ticket, prior).
    fn stage_blocking(
        &self,
        lane: &Lane,
        pg: PgId,
        oid: Oid,
        mutation: &Mutation,
    ) -> Result<(u64, u64, u64)> {
        let mut st = lane.state();
        let stat = self.check_space(pg, oid, mutation)?;
        let prior = match st.objects.get(&oid) {
            Some((_, v)) => *v,
            None => stat.map_or(0, |s| s.version),
        };
        // The record's bytes are bincode's legacy encoding of `Record` (what replay decodes),
        // with a large payload left in place rather than copied into the record.
        let record = Record {
            pg,
            oid,
            mutation: mutation.clone(),
        };
        let parts = cairn_proto::payload::encode_segments(record_opts(), &[], &record)
            .expect("records serialize");
        let seq = self.journal.submit_parts(&parts.parts)?;
        st.next_ticket += 1;
        let ticket = st.next_ticket;
        let ordered = match mutation {
            Mutation::Apply { version, op, .. } => {
                Some((*version, matches!(op, cairn_proto::ObjOp::Delete)))
            }
            Mutation::Placed { version, .. } => Some((*version, false)),
            Mutation::Install { .. } | Mutation::Remove => None,
        };
        if let Some((version, delete)) = ordered {
            st.top_version = st.top_version.max(version);
            let after = if delete { 0 } else { version };
            st.objects.insert(oid, (ticket, after));
        } else {
            // Recovery installs and removals run with the group quiet; what they leave is read
            // from the store.
            st.objects.remove(&oid);
        }
        Ok((seq, ticket, prior))
    }

    fn apply_blocking(&self, pg: PgId, oid: Oid, mutation: &Mutation) -> Result<()> {
        match mutation.apply_to(self.store.as_ref(), pg, oid) {
            Ok(()) => Ok(()),
            // Invalid ops (bad names) change nothing; their journal record fails the same way
            // on replay, which is harmless.
            Err(e @ Error::Invalid { .. }) => Err(e),
            Err(e) => {
                tracing::error!(%pg, %oid, error = %e, "applying a journaled mutation failed; stopping");
                self.failed.store(true, Ordering::Release);
                self.failed_notify.notify_waiters();
                Err(e)
            }
        }
    }

    /// Pause writers, sync the store and trim the journal.
    pub async fn checkpoint(self: &Arc<Self>) -> Result<()> {
        self.checkpoint_unless_since(None).await
    }

    /// [`Durable::checkpoint`], unless one completed since the count was `seen`.
    async fn checkpoint_unless_since(self: &Arc<Self>, seen: Option<u64>) -> Result<()> {
        let _excl = self.gate.write().await;
        if seen.is_some_and(|n| self.checkpoints() > n) {
            return Ok(());
        }
        if self.failed() {
            return Err(Error::JournalPoisoned);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.store.sync()?;
            me.journal.trim_through(me.journal.last_seq())
        })
        .await
        .map_err(|_| Error::ShuttingDown)??;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Make the store durable without trimming (for changes that bypass the journal).
    pub async fn sync_store(self: &Arc<Self>) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.store.sync())
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Wait until the journal has grown past the checkpoint size.
    pub async fn checkpoint_wanted(&self) {
        self.checkpoint_wanted.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::FileJournal;
    use crate::nvjournal::NvJournal;
    use crate::store::mem::MemStore;
    use crate::store::sled_store::SledStore;
    use crate::store::StoreOptions;
    use bytes::Bytes;
    use cairn_proto::{ObjOp, PoolId};

    fn pg() -> PgId {
        PgId::new(PoolId(1), 0)
    }

    fn write(v: u64, offset: u64, data: &'static [u8]) -> Mutation {
        Mutation::Apply {
            version: v,
            op: ObjOp::Write {
                offset,
                data: Bytes::from_static(data),
            },
            mtime: 0,
        }
    }

    #[tokio::test]
    async fn replay_restores_unsynced_writes_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let jpath = dir.path().join("journal");
        let ops = vec![
            write(1, 0, b"hello world"),
            Mutation::Apply {
                version: 2,
                op: ObjOp::Truncate { size: 5 },
                mtime: 0,
            },
            write(3, 8, b"!!"),
        ];
        {
            let store: Arc<dyn Store> = Arc::new(MemStore::default());
            let j: Arc<dyn Journal> = Arc::new(FileJournal::open(&jpath).unwrap());
            let d = Arc::new(Durable::new(store, j, 0, 0));
            for m in &ops {
                d.commit(pg(), Oid(1), m.clone()).await.unwrap();
            }
        }
        // A fresh (empty) store gets everything back from the journal.
        let store = SledStore::open(&dir.path().join("store"), StoreOptions::default()).unwrap();
        let j = FileJournal::open(&jpath).unwrap();
        assert_eq!(Durable::replay(&store, &j).unwrap(), 3);
        let want = b"hello\0\0\0!!".to_vec();
        assert_eq!(store.read(pg(), Oid(1), 0, 100).unwrap(), want);
        assert_eq!(j.len_bytes(), 0);
        // Replaying a journal suffix over a newer state converges to the same state.
        let j2 = FileJournal::open(&dir.path().join("journal2")).unwrap();
        for m in &ops[1..] {
            j2.append(
                &bincode::serialize(&Record {
                    pg: pg(),
                    oid: Oid(1),
                    mutation: m.clone(),
                })
                .unwrap(),
            )
            .unwrap();
        }
        assert_eq!(Durable::replay(&store, &j2).unwrap(), 2);
        assert_eq!(store.read(pg(), Oid(1), 0, 100).unwrap(), want);
        assert_eq!(store.pg_info(pg()).unwrap().last_update, 3);
    }

    #[tokio::test]
    async fn capacity_refuses_growth_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let j: Arc<dyn Journal> = Arc::new(FileJournal::open(&dir.path().join("j")).unwrap());
        let d = Arc::new(Durable::new(store.clone(), j.clone(), 10, 0));
        d.commit(pg(), Oid(1), write(1, 0, b"12345678"))
            .await
            .unwrap();
        let before = j.last_seq();
        let e = d
            .commit(pg(), Oid(1), write(2, 8, b"abc"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NoSpace { capacity: 10 }));
        assert_eq!(j.last_seq(), before);
        assert_eq!(store.pg_info(pg()).unwrap().last_update, 1);
        // Overwrites within the size and shrinking still work.
        d.commit(pg(), Oid(1), write(2, 0, b"ab")).await.unwrap();
        assert_eq!(store.read(pg(), Oid(1), 0, 100).unwrap(), &b"ab345678"[..]);
    }

    #[tokio::test]
    async fn checkpoint_trims_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(&dir.path().join("s"), StoreOptions::default()).unwrap());
        let j: Arc<dyn Journal> = Arc::new(FileJournal::open(&dir.path().join("j")).unwrap());
        let d = Arc::new(Durable::new(store.clone(), j.clone(), 0, 0));
        d.commit(pg(), Oid(1), write(1, 0, b"abc")).await.unwrap();
        assert!(j.len_bytes() > 0);
        d.checkpoint().await.unwrap();
        assert_eq!(j.len_bytes(), 0);
        assert_eq!(d.checkpoints(), 1);
        drop((d, store));
        let store = SledStore::open(&dir.path().join("s"), StoreOptions::default()).unwrap();
        assert_eq!(store.read(pg(), Oid(1), 0, 10).unwrap(), &b"abc"[..]);
    }

    /// A journal ring of 64 KiB (60 KiB of records) on an nvdisk in `dir`.
    fn small_nv_journal(dir: &std::path::Path) -> Arc<dyn Journal> {
        let cfg = cairn_nvdisk::Config {
            pool: cairn_nvdisk::PoolMode::File(dir.join("pool")),
            size: 64 << 10,
            snapshot_buffer: 64 << 10,
            backup_dir: dir.join("nvdisk"),
            ..cairn_nvdisk::Config::default()
        };
        std::fs::create_dir_all(&cfg.backup_dir).unwrap();
        let disk = Arc::new(cairn_nvdisk::NvDisk::open(cfg).unwrap());
        Arc::new(NvJournal::on(disk).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_journal_forces_a_checkpoint_instead_of_failing_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let j = small_nv_journal(dir.path());
        // No size-triggered checkpoints: only a full ring makes room.
        let d = Arc::new(Durable::new(store.clone(), j.clone(), 0, 0));
        let tasks: Vec<_> = (0..8u128)
            .map(|t| {
                let d = d.clone();
                tokio::spawn(async move {
                    for i in 0..20u8 {
                        let data = Bytes::from(vec![t as u8 ^ i; 4096]);
                        let m = Mutation::Apply {
                            version: i as u64 * 8 + t as u64 + 1,
                            op: ObjOp::WriteFull { data },
                            mtime: 0,
                        };
                        d.commit(pg(), Oid(t), m).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(60), t)
                .await
                .expect("writers finish")
                .unwrap();
        }
        // 160 records of over 4 KiB went through a ring that holds fewer than 15.
        assert!(d.checkpoints() >= 10, "{} checkpoints", d.checkpoints());
        for t in 0..8u128 {
            let want = vec![t as u8 ^ 19; 4096];
            assert_eq!(store.read(pg(), Oid(t), 0, 4096).unwrap(), want);
        }
        // A record larger than the ring is refused as an invalid request and changes nothing.
        let big = Mutation::Apply {
            version: 161,
            op: ObjOp::WriteFull {
                data: Bytes::from(vec![0u8; 64 << 10]),
            },
            mtime: 0,
        };
        let e = d.commit(pg(), Oid(0), big).await.unwrap_err();
        assert!(matches!(e, Error::JournalRecordTooLarge { .. }), "{e:?}");
        assert!(matches!(
            e.to_wire(cairn_proto::OsdId(1)),
            cairn_proto::WireError::Invalid { .. }
        ));
        assert_eq!(store.pg_info(pg()).unwrap().last_update, 160);
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<_>>()
            .into()
    }

    fn op(v: u64, op: ObjOp) -> Mutation {
        Mutation::Apply {
            version: v,
            op,
            mtime: 0,
        }
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// Large whole-object writes of new objects are placed (their data is not in the journal),
    /// and the journal replays to the same objects whatever part of the store's metadata
    /// reached the disk: all of it (the store as the writes left it) or none (a store with
    /// only the data files). The sequence deletes a placed object, places it again and
    /// truncates it: replaying the delete naively would remove the second placement's data.
    #[tokio::test]
    async fn placed_writes_replay_to_the_same_objects_whatever_the_store_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pattern(200 << 10, 1), pattern(300 << 10, 2));
        let (x, y, z) = (Oid(1), Oid(2), Oid(3));
        {
            let store = Arc::new(
                SledStore::open(&dir.path().join("store"), StoreOptions::default()).unwrap(),
            );
            let j: Arc<dyn Journal> =
                Arc::new(FileJournal::open(&dir.path().join("journal")).unwrap());
            let d = Arc::new(Durable::new(store.clone(), j.clone(), 0, 0));
            let steps = vec![
                (x, op(1, ObjOp::WriteFull { data: a.clone() })),
                (
                    x,
                    op(
                        2,
                        ObjOp::Write {
                            offset: 10,
                            data: Bytes::from_static(b"hello"),
                        },
                    ),
                ),
                (y, op(3, ObjOp::WriteFull { data: a.clone() })),
                (x, op(4, ObjOp::Delete)),
                (x, op(5, ObjOp::WriteFull { data: b.clone() })),
                (x, op(6, ObjOp::Truncate { size: 250 << 10 })),
                (
                    z,
                    op(
                        7,
                        ObjOp::Write {
                            offset: 0,
                            data: b.clone(),
                        },
                    ),
                ),
                // An existing object's whole write is journaled whole, not placed.
                (y, op(8, ObjOp::WriteFull { data: b.clone() })),
            ];
            let journal_before = j.len_bytes();
            for (oid, m) in steps {
                d.commit(pg(), oid, m).await.unwrap();
            }
            // Three of the four large writes left their data out of the journal.
            assert!(j.len_bytes() - journal_before < (300 << 10) + (200 << 10));
            assert_eq!(
                d.checkpoints(),
                0,
                "the journal must still hold every record"
            );
        }
        let want = |store: &dyn Store| {
            let mut x_want = b.to_vec();
            x_want.truncate(250 << 10);
            assert_eq!(store.read(pg(), x, 0, 1 << 20).unwrap(), x_want);
            assert_eq!(store.read(pg(), y, 0, 1 << 20).unwrap(), b);
            assert_eq!(store.read(pg(), z, 0, 1 << 20).unwrap(), b);
            for o in [x, y, z] {
                store.verify(pg(), o).unwrap();
            }
            assert_eq!(store.stat(pg(), x).unwrap().unwrap().version, 6);
            assert_eq!(store.pg_info(pg()).unwrap().last_update, 8);
        };
        // Everything reached the disk (the store was dropped, which flushes sled).
        let full = dir.path().join("full");
        copy_dir(&dir.path().join("store"), &full);
        // Only the data files reached the disk: the metadata is as the last checkpoint left it
        // (empty).
        let bare = dir.path().join("bare");
        copy_dir(&dir.path().join("store/objects"), &bare.join("objects"));
        for root in [full, bare] {
            let store = SledStore::open(&root, StoreOptions::default()).unwrap();
            let j = FileJournal::open(&dir.path().join("journal")).unwrap();
            let jcopy = dir.path().join("journal.copy");
            std::fs::copy(dir.path().join("journal"), &jcopy).unwrap();
            let j2 = FileJournal::open(&jcopy).unwrap();
            drop(j);
            assert_eq!(Durable::replay(&store, &j2).unwrap(), 8);
            want(&store);
            std::fs::remove_file(&jcopy).unwrap();
        }
    }

    /// A crash between a placement and its record leaves no object (the write was never
    /// acknowledged), and a crash between the record's sync and its apply leaves the whole
    /// object after the replay; either way the next placement of the object works.
    #[tokio::test]
    async fn a_crash_at_either_step_of_a_placement_leaves_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pattern(256 << 10, 7), pattern(640 << 10, 9));
        let spath = dir.path().join("store");
        let jpath = dir.path().join("journal");
        {
            let store = SledStore::open(&spath, StoreOptions::default()).unwrap();
            let j = FileJournal::open(&jpath).unwrap();
            // Data placed, record not written.
            store.place(pg(), Oid(1), &a).unwrap().unwrap();
            // Data placed and its record durable, not applied.
            let placed = store.place(pg(), Oid(2), &b).unwrap().unwrap();
            let rec = Record {
                pg: pg(),
                oid: Oid(2),
                mutation: Mutation::Placed {
                    version: 1,
                    mtime: 5,
                    placed,
                },
            };
            j.append(&bincode::serialize(&rec).unwrap()).unwrap();
        }
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(&spath, StoreOptions::default()).unwrap());
        let j: Arc<dyn Journal> = Arc::new(FileJournal::open(&jpath).unwrap());
        assert_eq!(Durable::replay(store.as_ref(), j.as_ref()).unwrap(), 1);
        assert!(store.stat(pg(), Oid(1)).unwrap().is_none());
        assert_eq!(store.read(pg(), Oid(2), 0, 1 << 20).unwrap(), b);
        store.verify(pg(), Oid(2)).unwrap();
        let st = store.stat(pg(), Oid(2)).unwrap().unwrap();
        assert_eq!((st.version, st.mtime, st.size), (1, 5, b.len() as u64));
        assert_eq!(store.list(pg(), None, 10).unwrap().0.len(), 1);
        // The object whose record never landed is placed again over the leftover file.
        let d = Arc::new(Durable::new(store.clone(), j, 0, 0));
        d.commit(pg(), Oid(1), op(2, ObjOp::WriteFull { data: b.clone() }))
            .await
            .unwrap();
        assert_eq!(store.read(pg(), Oid(1), 0, 1 << 20).unwrap(), b);
        store.verify(pg(), Oid(1)).unwrap();
    }
}
