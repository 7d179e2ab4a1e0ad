//! The write path to the disk: journal the mutation (durable), apply it to the store (not
//! synced), and now and then checkpoint: pause writers, sync the store, trim the journal.
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
        let _shared = self.gate.read().await;
        if self.failed() {
            return Err(Error::JournalPoisoned);
        }
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.commit_blocking(pg, oid, &mutation))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        if self.checkpoint_bytes > 0 && self.journal.len_bytes() >= self.checkpoint_bytes {
            self.checkpoint_wanted.notify_one();
        }
        r
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
        let _excl = self.gate.write().await;
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
}
