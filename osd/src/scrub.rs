//! Scrub: a background walk over every local object that verifies each chunk against its
//! checksum (repairing a bad copy from a replica of the same version), and, for the PGs we are
//! primary of, compares per-object versions and digests with the replicas' and pushes our
//! (just verified) copy where they differ. Every finding is counted in the OSD's stats and
//! logged. A pass resumes from its cursor after an error.

use crate::error::{Error, Result};
use crate::recovery::scan_all;
use crate::replication::{push_object, repair_from_replica};
use crate::server::Shared;
use crate::stats::Stats;
use crate::worker::{WorkState, Worker};
use cairn_proto::msg::ScanItem;
use cairn_proto::{Oid, PgId};
use std::sync::Arc;
use std::time::Duration;

const PAGE: usize = 64;

/// Start a scrub pass now.
pub(crate) fn kick(sh: &Shared) {
    sh.scrub_kick.notify_one();
}

pub(crate) struct ScrubWorker {
    sh: Arc<Shared>,
    /// PGs left in this pass (popped from the back).
    queue: Vec<PgId>,
    cursor: Option<Oid>,
    /// What we saw of the current PG, for the comparison with replicas.
    seen: Vec<ScanItem>,
    start_pass: bool,
}

impl ScrubWorker {
    pub fn new(sh: Arc<Shared>) -> ScrubWorker {
        ScrubWorker {
            sh,
            queue: Vec::new(),
            cursor: None,
            seen: Vec::new(),
            start_pass: false,
        }
    }

    async fn compare_with_replicas(&self, pg: PgId) -> Result<()> {
        let sh = &self.sh;
        let map = sh.map();
        if map.pg_primary(pg) != Some(sh.id) || !sh.pgs.get(pg).active_for(&map) {
            return Ok(());
        }
        for r in map.pg_up(pg).into_iter().filter(|o| *o != sh.id) {
            let theirs = scan_all(sh, r, pg).await?;
            for mine in &self.seen {
                let same = theirs
                    .get(&mine.oid)
                    .is_some_and(|t| t.version == mine.version && t.digest == mine.digest);
                if same {
                    continue;
                }
                let slot = sh.pgs.get(pg);
                let _g = slot.lock.write().await;
                // A write since our scan explains the difference; the next pass looks again.
                let now = sh.store.stat(pg, mine.oid)?.map(|s| s.version);
                if now != Some(mine.version) || !sh.map().same_interval(map.epoch) {
                    continue;
                }
                Stats::inc(&sh.stats.scrub_errors);
                tracing::warn!(osd = %sh.id, %pg, oid = %mine.oid, replica = %r,
                    "scrub: replica differs; pushing our copy");
                push_object(sh, pg, mine.oid, r, None).await?;
                Stats::inc(&sh.stats.repairs);
            }
        }
        Ok(())
    }
}

impl Worker for ScrubWorker {
    fn name(&self) -> String {
        "scrub".into()
    }

    async fn work(&mut self) -> Result<WorkState> {
        let sh = self.sh.clone();
        if self.queue.is_empty() {
            if !self.start_pass {
                return Ok(WorkState::Idle);
            }
            self.start_pass = false;
            self.queue = sh.store.pgs()?;
            self.cursor = None;
            self.seen.clear();
            if self.queue.is_empty() {
                return Ok(WorkState::Idle);
            }
        }
        let pg = *self.queue.last().expect("checked non-empty");
        let after = self.cursor;
        let (items, more) = sh.blocking(move |s| s.scan(pg, after, PAGE)).await?;
        for item in items {
            let oid = item.oid;
            match sh.blocking(move |s| s.verify(pg, oid)).await {
                Ok(()) => {}
                Err(Error::NoSuchObject { .. }) => {}
                Err(Error::Corrupt { offset, .. }) => {
                    Stats::inc(&sh.stats.checksum_errors);
                    Stats::inc(&sh.stats.scrub_errors);
                    tracing::warn!(osd = %sh.id, %pg, %oid, offset, "scrub: checksum mismatch");
                    match repair_from_replica(&sh, pg, oid, false).await {
                        Ok(()) => {}
                        Err(e) => tracing::error!(osd = %sh.id, %pg, %oid, error = %e,
                            "scrub: no replica could repair the object"),
                    }
                }
                Err(e) => return Err(e),
            }
            Stats::inc(&sh.stats.objects_scrubbed);
            self.cursor = Some(oid);
            self.seen.push(item);
        }
        if !more {
            self.compare_with_replicas(pg).await?;
            self.queue.pop();
            self.cursor = None;
            self.seen.clear();
        }
        // Scrubbing yields to client I/O between pages.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(WorkState::Busy)
    }

    async fn wait_for_work(&mut self) {
        let every = Duration::from_millis(self.sh.cfg.scrub_interval_ms);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = self.sh.scrub_kick.notified() => {}
        }
        self.start_pass = true;
    }

    fn progress(&self) -> String {
        match self.queue.last() {
            Some(pg) => format!("pg {pg}, {} pgs left", self.queue.len()),
            None => "idle".into(),
        }
    }
}
