//! cairn-nvdisk: an NVRAM disk after Shu, Yu and Yan, "Design and Implementation of a
//! Non-volatile RAM Disk in the SAN Environment" (GCC 2004 workshops).
//!
//! A byte-addressed block device ([`NvDisk`]) whose image lives in a memory page pool, made
//! durable on two backup files with two journals, plus an append-only record log over such a
//! device ([`Journal`]) for OSD write journals.
//!
//! # Parts and data flow
//!
//! - `pool`: one mapping — anonymous memory, or a file on /dev/shm or a pmem/DAX mount — holding
//!   a header, the dirty-page bitmap, the bitmap of the transaction in flight, the snapshot log
//!   and the pages themselves.
//! - `device`: [`NvDisk`]. A write takes the write lock, gets a sequence number, puts an intent
//!   frame (sequence, offset, bytes, crc32) in the pool's snapshot log, marks its pages dirty,
//!   copies the bytes into the pages, and records them as applied. Reads are served from the
//!   pages, zero-copy through [`NvDisk::read_zero_copy`].
//! - The committer thread runs a *disk transaction* every `flush_interval_ms`, when
//!   [`NvDisk::flush`] asks, or when the write-ahead log fills: under the write lock it moves the
//!   dirty bits aside and freezes the pages (zero copy is off from here); then `backup` writes
//!   the frozen dirty pages through the paper's three steps — B(L)→A, C→A(L), A(L)→A, a status
//!   mark after each, the roles of A and B switching every transaction. Writes arriving
//!   meanwhile go to the snapshot buffer (the pool log, indexed by an in-memory page overlay) and
//!   are folded into the pages when the transaction ends.
//! - `wal` (sync mode only): every write is also appended to a write-ahead log and acknowledged
//!   after its fdatasync, with concurrent writers sharing one fdatasync (group commit).
//! - [`journal`]: records in a ring over the device, each with a length and a chained crc32.
//! - `codec`: the one record frame (length + crc32) used by every log; `mmap`: the only
//!   `unsafe` code, carving the mapping into disjoint regions.
//!
//! # Recovery
//!
//! At open, `backup` reads the status mark and finishes an interrupted transaction as far as it
//! can (redo step 3 from a whole journal, or fall back to the other disk). The image is then the
//! surviving pool file, if there is one — its snapshot log replayed past the last applied
//! sequence — or else the newest whole backup; in sync mode the write-ahead log is replayed on
//! top. A torn record (bad length or crc) ends every log it is found in and is dropped. If
//! recovery changed anything, one disk transaction runs before `open` returns.
//!
//! # Durability modes
//!
//! | config | a write acknowledged by `write` survives | assumes |
//! |---|---|---|
//! | `pool = "anon"` | nothing until a later disk transaction completes (`flush()` or the next period): a process crash or power loss loses the writes since it | — |
//! | `pool = "file:/dev/shm/…"` | a process crash (the pool outlives the process); after power loss or a reboot the image is the last disk transaction | a UPS, if power loss must not lose the last `flush_interval_ms` of writes: on power failure, call `flush()` |
//! | `pool = "file:/mnt/pmem/…"`, `pool_sync = true` | a process crash and power loss (each write's pool ranges are `msync`ed before the ack) | the file is on pmem with fs-DAX, where `msync` flushes CPU caches to the persistence domain |
//! | `sync = true` (any pool) | a process crash and power loss: the write's WAL record was fdatasync'ed before the ack | the disk honours flushes (no volatile write cache that lies) |
//!
//! [`NvDisk::durability`] reports the row in force. `flush()` is durable against power loss in
//! every mode. Writes up to [`NvDisk::max_atomic_write`] bytes are atomic across a crash in
//! every mode; longer ones are applied in pieces of that size. The crash tests kill a process;
//! they exercise every step and record boundary, but not a power cut's loss of the page cache.
//!
//! Crash points for tests: see `CAIRN_NVDISK_FAILPOINT` in the `failpoint` module.

mod backup;
mod codec;
pub mod config;
pub mod device;
pub mod error;
mod failpoint;
pub mod journal;
// The workspace forbids unsafe code. Mapping memory and handing out disjoint regions of it needs
// `unsafe`, so this crate denies it everywhere except in this one small module.
#[allow(unsafe_code)]
mod mmap;
mod pool;
mod wal;

pub use config::{shm_pool_path, Config, PoolMode};
pub use device::{Durability, NvDisk, Stats};
pub use error::{Error, Result};
pub use journal::Journal;
