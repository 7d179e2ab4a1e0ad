//! cairn-client: what applications link to use a cairn cluster.
//!
//! - [`Cluster`] connects to the metadata service, caches the cluster map and sends each object
//!   request straight to its placement group's primary OSD, retrying through elections, OSD
//!   failures and map changes until a deadline. The metadata service is never on the data path.
//! - [`PoolIo`] is object I/O on one pool: whole/partial reads and writes, streaming put/get of
//!   objects of any size, attributes, typed objects and on-device queries (`GetExtent`,
//!   `QueryExtent`) fanned out to every primary and merged.
//! - [`FsClient`] is the uniform namespace and file data (files striped over objects by
//!   [`Striped`]); [`migrate::Migrator`] moves file data to the pools directories are pinned to.
//! - [`VolumeIo`] is a block volume: byte ranges over its objects, what the gateway's LUNs use.
//! - [`ClientError`] is the crate's error type.
//!
//! ```text
//!  FsClient ──> metadata leader (namespace ops, raft)     VolumeIo ─┐
//!     └─> Striped ──> PoolIo ──────────────────────────────────────┴─> Cluster ──> primary OSD
//! ```

mod cluster;
mod error;
mod fs;
pub mod migrate;
mod objects;
mod striped;
mod volume;

pub use cluster::{ClientOptions, Cluster, PoolSpec};
pub use error::{ClientError, Result};
pub use fs::{FsCapacity, FsClient, Purger, SetAttrs, DEFAULT_FILE_POOL, LAYOUT_TTL, PURGE_EVERY};
pub use objects::PoolIo;
pub use striped::Striped;
pub use volume::VolumeIo;
