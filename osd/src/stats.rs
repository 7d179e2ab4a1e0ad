//! Counters an OSD keeps about itself (see [`OsdStats`]).

use cairn_proto::msg::OsdStats;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; [`Stats::snapshot`] gives the wire form.
#[derive(Default)]
pub struct Stats {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub repairs: AtomicU64,
    pub scrub_errors: AtomicU64,
    pub objects_scrubbed: AtomicU64,
    pub objects_recovered: AtomicU64,
    pub bytes_recovered: AtomicU64,
    pub missing_pushes: AtomicU64,
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, used_bytes: u64, capacity: u64, checkpoints: u64) -> OsdStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OsdStats {
            used_bytes,
            capacity,
            writes: g(&self.writes),
            reads: g(&self.reads),
            checksum_errors: g(&self.checksum_errors),
            repairs: g(&self.repairs),
            scrub_errors: g(&self.scrub_errors),
            objects_scrubbed: g(&self.objects_scrubbed),
            objects_recovered: g(&self.objects_recovered),
            bytes_recovered: g(&self.bytes_recovered),
            missing_pushes: g(&self.missing_pushes),
            journal_checkpoints: checkpoints,
        }
    }
}
