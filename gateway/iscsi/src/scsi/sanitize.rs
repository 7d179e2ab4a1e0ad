//! SANITIZE (SBC-4 §5.30) for a thin device.
//!
//! CDB (10 bytes): `0x48 | IMMED(0x80) AUSE(0x20) SERVICE ACTION(0x1f) | 5 reserved bytes |
//! PARAMETER LIST LENGTH (2) | CONTROL`. The OVERWRITE parameter list is
//! `INVERT(0x80) TEST(0x60) OVERWRITE COUNT(0x1f) | reserved | INITIALIZATION PATTERN LENGTH (2) |
//! pattern`.
//!
//! What each service action means here:
//! - OVERWRITE writes the pattern over every block, `count` passes (the pattern inverted on
//!   alternate passes with INVERT; the last pass always writes it as given), then flushes.
//! - BLOCK ERASE deallocates every block (they read back as zeros, LBPRZ) and flushes.
//! - CRYPTOGRAPHIC ERASE does the same: a thin volume has no media key to change, and a
//!   deallocated block keeps nothing of what it held.
//! - EXIT FAILURE MODE leaves the state a failed sanitize leaves the unit in.
//!
//! The operation runs as its own task: it survives an aborted command, task management resets
//! and the loss of the nexus that started it, as SBC requires. Until it ends every command but
//! INQUIRY, REPORT LUNS and REQUEST SENSE gets NOT READY, SANITIZE IN PROGRESS with a progress
//! indication. OVERWRITE moves the whole volume through the cluster, so it is paced at
//! [`Sanitizer::set_rate`] bytes per second (0: unpaced) to leave bandwidth to other volumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::cdb::be16;
use super::sense::Sense;
use super::{CmdResult, Failure, LogicalUnit, Reply};
use crate::block::{BlockDevice, BlockError};

pub const OVERWRITE: u8 = 0x01;
pub const BLOCK_ERASE: u8 = 0x02;
pub const CRYPTO_ERASE: u8 = 0x03;
pub const EXIT_FAILURE_MODE: u8 = 0x1f;

/// Bytes written or deallocated per device call.
const CHUNK: u64 = 1 << 20;

/// One running sanitize operation.
struct Run {
    total: u64,
    done: AtomicU64,
}

#[derive(Default)]
struct Slot {
    running: Option<Arc<Run>>,
    /// The last sanitize failed: media access stays refused until EXIT FAILURE MODE.
    failed: bool,
}

/// The sanitize state of one logical unit.
#[derive(Default)]
pub struct Sanitizer {
    slot: Arc<Mutex<Slot>>,
    rate: AtomicU64,
}

/// What a validated SANITIZE asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Overwrite {
        pattern: Vec<u8>,
        passes: u8,
        invert: bool,
    },
    Erase,
    ExitFailureMode,
}

impl Sanitizer {
    /// Paces OVERWRITE at `bytes_per_sec` (0: as fast as the device goes).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The condition that refuses media access now: a sanitize in progress (with its progress)
    /// or a failed one.
    pub fn blocking_condition(&self) -> Option<Sense> {
        let slot = self.slot();
        if let Some(run) = &slot.running {
            let done = run.done.load(Ordering::Relaxed).min(run.total);
            let progress = if run.total == 0 {
                0
            } else {
                (u128::from(done) * 65536 / u128::from(run.total)).min(65535) as u16
            };
            return Some(Sense::sanitize_in_progress(progress));
        }
        slot.failed.then(Sense::sanitize_failed)
    }
}

/// Validates the CDB and parameter list.
fn parse(cdb: &[u8], data: &[u8], bs: usize) -> Result<Action, Sense> {
    if cdb[1] & 0x40 != 0 {
        return Err(Sense::invalid_cdb(1));
    }
    if let Some(i) = (2..=6).find(|&i| cdb[i] != 0) {
        return Err(Sense::invalid_cdb(i as u16));
    }
    let plen = usize::from(be16(cdb, 7));
    match cdb[1] & 0x1f {
        OVERWRITE => {
            // SBC: the list holds a 4-byte header and a pattern of 1..=block size bytes.
            if plen <= 4 || plen > bs + 4 {
                return Err(Sense::invalid_cdb(7));
            }
            let list = data.get(..plen).ok_or_else(Sense::param_list_length)?;
            let passes = list[0] & 0x1f;
            let pattern_len = usize::from(be16(list, 2));
            // libiscsi (the conformance suite initiators are tested with) expects these
            // parameter-list errors reported as INVALID FIELD IN CDB.
            if passes == 0 || pattern_len == 0 || pattern_len > bs || pattern_len + 4 > plen {
                return Err(Sense::invalid_cdb(7));
            }
            if list[0] & 0x60 != 0 {
                return Err(Sense::invalid_param(0)); // TEST: no vendor test modes
            }
            Ok(Action::Overwrite {
                pattern: list[4..4 + pattern_len].to_vec(),
                passes,
                invert: list[0] & 0x80 != 0,
            })
        }
        BLOCK_ERASE | CRYPTO_ERASE | EXIT_FAILURE_MODE if plen != 0 => Err(Sense::invalid_cdb(7)),
        BLOCK_ERASE | CRYPTO_ERASE => Ok(Action::Erase),
        EXIT_FAILURE_MODE => Ok(Action::ExitFailureMode),
        _ => Err(Sense::invalid_cdb(1)),
    }
}

/// One block of `pattern` repeated (and truncated) to `bs` bytes, inverted if asked.
fn pattern_block(pattern: &[u8], bs: usize, invert: bool) -> Vec<u8> {
    pattern
        .iter()
        .cycle()
        .take(bs)
        .map(|b| if invert { !b } else { *b })
        .collect()
}

/// Runs SANITIZE on `lu`.
pub async fn execute(lu: &LogicalUnit, cdb: &[u8], data: &[u8]) -> CmdResult {
    let dev = Arc::clone(lu.device());
    let bs = dev.block_size().max(1) as usize;
    let action = parse(cdb, data, bs)?;
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    let s = &lu.sanitize;
    if action == Action::ExitFailureMode {
        s.slot().failed = false;
        return Ok(Reply::empty());
    }
    let size = dev.size();
    let total = match &action {
        Action::Overwrite { passes, .. } => size * u64::from(*passes),
        _ => size,
    };
    let run = Arc::new(Run {
        total,
        done: AtomicU64::new(0),
    });
    {
        let mut slot = s.slot();
        if slot.running.is_some() {
            return Err(Sense::sanitize_in_progress(0).into());
        }
        slot.running = Some(Arc::clone(&run));
        slot.failed = false;
    }
    let (tx, mut rx) = watch::channel(None::<bool>);
    let slot = Arc::clone(&s.slot);
    let rate = s.rate.load(Ordering::Relaxed);
    tokio::spawn(async move {
        let result = run_action(dev.as_ref(), &action, &run, rate).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "sanitize failed");
        }
        {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.running = None;
            slot.failed = result.is_err();
        }
        let _ = tx.send(Some(result.is_ok()));
    });
    if cdb[1] & 0x80 != 0 {
        return Ok(Reply::empty()); // IMMED: status now, progress through REQUEST SENSE
    }
    let ok = loop {
        if let Some(ok) = *rx.borrow_and_update() {
            break ok;
        }
        if rx.changed().await.is_err() {
            break false;
        }
    };
    if ok {
        Ok(Reply::empty())
    } else {
        Err(Failure::Check(Sense::sanitize_failed()))
    }
}

async fn run_action(
    dev: &dyn BlockDevice,
    action: &Action,
    run: &Run,
    rate: u64,
) -> Result<(), BlockError> {
    let size = dev.size();
    let bs = dev.block_size().max(1) as usize;
    let started = Instant::now();
    match action {
        Action::Overwrite {
            pattern,
            passes,
            invert,
        } => {
            let per_chunk = (CHUNK as usize / bs).max(1);
            for pass in 0..*passes {
                let inverted = *invert && (passes - 1 - pass) % 2 == 1;
                let block = pattern_block(pattern, bs, inverted);
                let chunk = Bytes::from(block.repeat(per_chunk));
                let mut off = 0u64;
                while off < size {
                    let n = (size - off).min(chunk.len() as u64) as usize;
                    dev.write(off, chunk.slice(..n), false).await?;
                    off += n as u64;
                    let done = run.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                    pace(started, done, rate).await;
                }
            }
        }
        Action::Erase => {
            let mut off = 0u64;
            while off < size {
                let n = (size - off).min(64 * CHUNK);
                dev.unmap(off, n).await?;
                off += n;
                run.done.fetch_add(n, Ordering::Relaxed);
            }
        }
        Action::ExitFailureMode => {}
    }
    dev.flush().await
}

/// Sleeps until `done` bytes are no more than `rate` bytes per second since `started`.
async fn pace(started: Instant, done: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(done as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDevice;
    use crate::scsi::cdb::opcode as op;
    use crate::scsi::pr::InMemoryReservationStore;
    use crate::scsi::sense::status;
    use crate::scsi::Nexus;

    async fn lu(size: u64) -> LogicalUnit {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(size, 512, "san"));
        LogicalUnit::open(
            "iqn.t",
            0,
            dev,
            Arc::new(InMemoryReservationStore::default()),
        )
        .await
        .unwrap()
    }

    fn cdb(sa: u8, plen: u16) -> [u8; 10] {
        let mut c = [op::SANITIZE, sa, 0, 0, 0, 0, 0, 0, 0, 0];
        c[7..9].copy_from_slice(&plen.to_be_bytes());
        c
    }

    fn overwrite_list(count: u8, pattern: &[u8]) -> Vec<u8> {
        let mut v = vec![count, 0];
        v.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
        v.extend_from_slice(pattern);
        v
    }

    fn asc(o: &crate::scsi::Outcome) -> (u8, u8, u8) {
        let s = o.sense.as_ref().expect("sense data");
        (s[2] & 0x0f, s[12], s[13])
    }

    #[test]
    fn bad_fields_are_rejected_with_the_field_named() {
        let list = overwrite_list(1, &[0xaa; 4]);
        assert_eq!(parse(&cdb(0x04, 0), &[], 512), Err(Sense::invalid_cdb(1)));
        let mut reserved = cdb(BLOCK_ERASE, 0);
        reserved[4] = 1;
        assert_eq!(parse(&reserved, &[], 512), Err(Sense::invalid_cdb(4)));
        assert_eq!(
            parse(&cdb(BLOCK_ERASE | 0x40, 0), &[], 512),
            Err(Sense::invalid_cdb(1))
        );
        assert_eq!(
            parse(&cdb(BLOCK_ERASE, 8), &[0; 8], 512),
            Err(Sense::invalid_cdb(7))
        );
        assert_eq!(
            parse(&cdb(OVERWRITE, 4), &list, 512),
            Err(Sense::invalid_cdb(7))
        );
        assert_eq!(
            parse(&cdb(OVERWRITE, 517), &[0; 517], 512),
            Err(Sense::invalid_cdb(7))
        );
        assert_eq!(
            parse(&cdb(OVERWRITE, 8), &overwrite_list(0, &[1; 4]), 512),
            Err(Sense::invalid_cdb(7))
        );
        assert_eq!(
            parse(&cdb(OVERWRITE, 8), &list[..4], 512),
            Err(Sense::param_list_length())
        );
        assert_eq!(
            parse(&cdb(OVERWRITE, 8), &list, 512),
            Ok(Action::Overwrite {
                pattern: vec![0xaa; 4],
                passes: 1,
                invert: false
            })
        );
    }

    #[tokio::test]
    async fn overwrite_writes_the_pattern_everywhere_and_erase_deallocates() {
        let lu = lu(1 << 20).await;
        let n = Nexus::new("iqn.i", [0; 6]);
        let o = lu
            .execute(
                &n,
                &cdb(OVERWRITE, 7),
                Bytes::from(overwrite_list(3, b"abc")),
            )
            .await;
        assert_eq!(o.status, status::GOOD, "{:?}", o.sense);
        let back = lu.device().read(0, 1 << 20).await.unwrap();
        let block = pattern_block(b"abc", 512, false);
        assert!(back.chunks(512).all(|b| b == block.as_slice()));
        let mut erase = cdb(BLOCK_ERASE, 0);
        erase[1] |= 0x20; // AUSE is accepted
        assert_eq!(
            lu.execute(&n, &erase, Bytes::new()).await.status,
            status::GOOD
        );
        assert!(lu
            .device()
            .read(0, 1 << 20)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        assert!(!lu.device().mapping(0).await.unwrap().mapped);
    }

    #[tokio::test]
    async fn a_paced_sanitize_blocks_media_access_until_done_and_survives_abort() {
        let lu = Arc::new(lu(1 << 20).await);
        lu.sanitize.set_rate(4 << 20); // 1 MiB at 4 MiB/s: about 250 ms
        let n = Nexus::new("iqn.i", [0; 6]);
        let list = Bytes::from(overwrite_list(1, &[0x5a]));
        // Start it from a task that is then aborted, as ABORT TASK does.
        let task = {
            let lu = Arc::clone(&lu);
            let n = n.clone();
            tokio::spawn(async move { lu.execute(&n, &cdb(OVERWRITE, 5), list).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let tur = [0u8; 6];
        let o = lu.execute(&n, &tur, Bytes::new()).await;
        assert_eq!(asc(&o), (2, 0x04, 0x1b), "TUR during sanitize");
        let o = lu
            .execute(&n, &[op::INQUIRY, 0, 0, 0, 96, 0], Bytes::new())
            .await;
        assert_eq!(o.status, status::GOOD, "INQUIRY stays allowed");
        let rs = lu
            .execute(&n, &[op::REQUEST_SENSE, 0, 0, 0, 18, 0], Bytes::new())
            .await;
        assert_eq!((rs.data[2], rs.data[12], rs.data[13]), (2, 0x04, 0x1b));
        assert_eq!(rs.data[15], 0x80, "progress indication is valid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while lu.execute(&n, &tur, Bytes::new()).await.status != status::GOOD {
            assert!(Instant::now() < deadline, "sanitize never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back = lu.device().read(0, 1 << 20).await.unwrap();
        assert!(
            back.iter().all(|&b| b == 0x5a),
            "the aborted command's sanitize completed"
        );
    }

    #[tokio::test]
    async fn immed_returns_at_once_and_write_protect_refuses() {
        let lu = lu(1 << 20).await;
        let n = Nexus::new("iqn.i", [0; 6]);
        let o = lu
            .execute(&n, &cdb(EXIT_FAILURE_MODE, 0), Bytes::new())
            .await;
        assert_eq!(o.status, status::GOOD);
        let mut m = lu.mode();
        m.swp = true;
        lu.set_mode(&n, m);
        let o = lu
            .execute(&n, &cdb(CRYPTO_ERASE | 0x80, 0), Bytes::new())
            .await;
        assert_eq!(asc(&o), (7, 0x27, 0));
    }
}
