//! cairn-osd: the object storage device.
//!
//! Parts, bottom up:
//! - [`store`]: the object store trait and its implementations (sled + data files; memory).
//!   Objects with checksummed chunks, typed-field indexes, per-PG logs and infos.
//! - [`journal`]: the write-ahead journal trait and the file journal (group commit, torn tails).
//! - [`nvjournal`]: the journal on an nvdisk ring, and the `journal` setting that picks one.
//! - [`durable`]: journal → apply → (checkpoint: sync store, trim journal); replay on start.
//! - [`server`]: the daemon: boot with the metadata service, heartbeats, map, RPC handler.
//! - `replication`: client ops on the primary, sub-ops to replicas, pushes, read repair.
//! - `recovery`: peering, log recovery, backfill, stray cleanup.
//! - `scrub`: background checksum verification and replica comparison.
//! - [`worker`]: the common shape of background workers.
//!
//! A write: client → primary (under the group's short order lock: version, journal record,
//! sub-ops sent) → the local fdatasync + apply and the replicas' journal + apply at once → ack
//! when every up replica has it durably. A read: primary → store (checksums verified;
//! a bad copy is repaired from a replica first) → client.

pub mod config;
pub mod durable;
pub mod error;
pub mod journal;
pub mod nvjournal;
mod pg;
mod recovery;
mod replication;
mod scrub;
pub mod server;
mod stats;
pub mod store;
mod throttle;
pub mod worker;

pub use config::OsdConfig;
pub use error::{Error, Result};
pub use server::{run, Osd, OsdHandle};
