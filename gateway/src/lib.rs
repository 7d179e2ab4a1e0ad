//! cairn-gateway: the protocol front ends of a cairn cluster, wired to the cluster.
//!
//! The protocols are crates of their own, below this one: `cairn-iscsi` (the iSCSI target and
//! SCSI logical unit over a `BlockDevice` trait), `cairn-s3` (the S3 API) and `cairn-nfs` (the
//! NFSv3 export), the last two over `cairn_client::FsClient`. This crate holds what ties the
//! iSCSI target to the cluster, the block devices and caches its LUNs are made of, and the
//! daemon that runs all three:
//!
//! ```text
//!  daemon::start(GatewayConfig)   one process, one stop signal (watch) for every server
//!    ├─ cairn_iscsi::serve ──> cluster::MetaRegistry: cairn_iscsi::TargetRegistry
//!    │     │                    (targets, LUNs, CHAP from the metadata service) and
//!    │     │                    cluster::MetaReservationStore (PR state as raft proposals)
//!    │     └─> a LUN, a cairn_iscsi::BlockDevice:
//!    │           ├─ cluster::VolumeDevice   a replicated volume (cairn_client::VolumeIo)
//!    │           │    optionally behind lun_cache (LunCaches, per `lun_cache`):
//!    │           │      cache::WriteBackCache  merges adjacent writes, drops overwritten
//!    │           │      │                      ones, FUA / SYNCHRONIZE CACHE write through
//!    │           │      └─ lun_cache::JournaledCache  journals each write on an nvdisk first,
//!    │           │                                    so it survives a gateway crash
//!    │           └─ nvdisk::NvDiskDevice    an nvdisk held by this gateway (cairn_nvdisk)
//!    ├─ cairn_s3::serve        S3 over the namespace
//!    ├─ cairn_nfs::serve_nfs   NFSv3 over the namespace
//!    └─ cairn_client::migrate::Migrator   moves files between pools (when `migrate` is set)
//! ```
//!
//! [`error::GatewayError`] is the crate's error type; a gateway error the iSCSI target meets
//! through the registry becomes a `cairn_iscsi::IscsiError`. `tests/cluster_lun.rs` and
//! `tests/nvdisk_lun.rs` serve cluster and nvdisk LUNs to libiscsi's tools,
//! `tests/cache_crash.rs` kills a target behind a write-back cache; `examples/iscsi_target.rs`
//! serves one memory, file or nvdisk LUN (optionally cached) for the benchmarks in `bench/`.

pub mod cache;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod lun_cache;
pub mod nvdisk;

pub use cache::{CacheConfig, CacheStats, WriteBackCache};
pub use error::GatewayError;
