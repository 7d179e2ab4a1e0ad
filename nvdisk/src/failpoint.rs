//! Crash points for the crash tests.
//!
//! Setting `CAIRN_NVDISK_FAILPOINT=NAME:N` makes the process abort (no destructors, no flushing:
//! to storage as good as SIGKILL) the N-th time execution reaches the point `NAME`. Points named
//! `*.mid` tear the write they sit in: the caller writes part of its bytes, then aborts. Without
//! the variable every point is one relaxed load of an initialised `OnceLock`.
//!
//! Points: `pool.log.mid`, `pool.apply.mid`, `wal.mid`, `step1.mid`, `step1.done`, `step2.mid`,
//! `step2.done`, `step3.mid`, `step3.done`, `status.tmp`, `flush.end`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable that arms one failpoint.
pub const ENV: &str = "CAIRN_NVDISK_FAILPOINT";

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, at) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                at,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// True when this is the hit of `name` that must crash; the caller then tears its write and calls
/// [`crash`].
pub(crate) fn triggers(name: &str) -> bool {
    match armed() {
        Some(a) if a.name == name => a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.at,
        _ => false,
    }
}

/// Ends the process at once, as a power cut would end the program (but not the page cache).
pub(crate) fn crash(name: &str) -> ! {
    eprintln!("nvdisk failpoint {name} hit: aborting");
    std::process::abort()
}

/// Crashes here if `name` is armed for this hit.
pub(crate) fn hit(name: &str) {
    if triggers(name) {
        crash(name)
    }
}
