//! The write path to the disk: journal the mutation (durable), apply it to the store (not
//! synced), and now and then checkpoint: pause writers, sync the store, trim the journal.
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
use cairn_proto::{Oid, PgId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{Notify, RwLock};

/// A journal record's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub pg: PgId,
    pub oid: Oid,
    pub mutation: Mutation,
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
    gate: RwLock<()>,
    /// Bytes of logical data the store may hold (0: unlimited).
    capacity: AtomicU64,
    checkpoint_bytes: u64,
    /// Set when applying a journaled record failed: the store may be inconsistent until the
    /// journal is replayed, so no more writes are taken and the OSD stops.
    failed: AtomicBool,
    pub(crate) failed_notify: Notify,
    checkpoint_wanted: Notify,
    checkpoints: AtomicU64,
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
            gate: RwLock::new(()),
            capacity: AtomicU64::new(capacity),
            checkpoint_bytes,
            failed: AtomicBool::new(false),
            failed_notify: Notify::new(),
            checkpoint_wanted: Notify::new(),
            checkpoints: AtomicU64::new(0),
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
    pub fn replay(store: &dyn Store, journal: &dyn Journal) -> Result<u64> {
        let mut n = 0;
        store.set_replaying(true);
        let r = journal.replay(&mut |seq, payload| {
            let rec: Record =
                bincode::deserialize(payload).map_err(|_| Error::JournalCorrupt { offset: seq })?;
            rec.mutation.apply_to(store, rec.pg, rec.oid)?;
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
        let mut mutation = mutation;
        let mut rounds = 0;
        loop {
            let shared = self.gate.read().await;
            if self.failed() {
                return Err(Error::JournalPoisoned);
            }
            // A checkpoint needs the gate exclusively: one counted after `seen` ran after this
            // append, so if the append finds the journal full, that checkpoint has made room.
            let seen = self.checkpoints();
            let me = self.clone();
            let (m, r) = tokio::task::spawn_blocking(move || {
                let r = me.commit_blocking(pg, oid, &mutation);
                (mutation, r)
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
            mutation = m;
            if self.checkpoint_bytes > 0 && self.journal.len_bytes() >= self.checkpoint_bytes {
                self.checkpoint_wanted.notify_one();
            }
            drop(shared);
            match r {
                Err(Error::JournalFull { needed, free }) if rounds < FULL_ROUNDS => {
                    rounds += 1;
                    tracing::debug!(needed, free, rounds, "journal full; checkpointing");
                    self.checkpoint_unless_since(Some(seen)).await?;
                }
                r => return r,
            }
        }
    }

    fn commit_blocking(&self, pg: PgId, oid: Oid, mutation: &Mutation) -> Result<u64> {
        let stat = self.store.stat(pg, oid)?;
        let size = stat.as_ref().map_or(0, |s| s.size);
        let cap = self.capacity();
        let growth = mutation.max_growth(size);
        if cap > 0 && growth > 0 && self.store.used_bytes() + growth > cap {
            return Err(Error::NoSpace { capacity: cap });
        }
        let payload = bincode::serialize(&Record {
            pg,
            oid,
            mutation: mutation.clone(),
        })
        .expect("records serialize");
        self.journal.append(&payload)?;
        match mutation.apply_to(self.store.as_ref(), pg, oid) {
            Ok(()) => Ok(stat.map_or(0, |s| s.version)),
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
}
