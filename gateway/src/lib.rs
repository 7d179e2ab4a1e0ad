//! cairn-gateway: the protocol front ends of a cairn cluster.
//!
//! Today this is the iSCSI target. Data flows top to bottom:
//!
//! ```text
//!  TCP ──> iscsi::server (accept loop, connection cap, shutdown)
//!            └─> iscsi::conn (one task per connection)
//!                  ├─ iscsi::login   login phase: text negotiation, CHAP, session setup
//!                  ├─ iscsi::session CmdSN window, running tasks, session table
//!                  └─ scsi::LogicalUnit::execute   one CDB
//!                        ├─ scsi::spc  INQUIRY/VPD, MODE SENSE/SELECT, REPORT LUNS ...
//!                        ├─ scsi::sbc  READ/WRITE/VERIFY/WRITE SAME/UNMAP/COMPARE AND WRITE ...
//!                        └─ scsi::pr   persistent reservations ──> pr::ReservationStore
//!                              └─> block::BlockDevice: MemDevice, FileDevice,
//!                                  cluster::VolumeDevice (a replicated volume), or
//!                                  nvdisk::NvDiskDevice (an nvdisk on this gateway);
//!                                  optionally behind cache::WriteBackCache (merges adjacent
//!                                  writes, drops overwritten ones, FUA / SYNCHRONIZE CACHE),
//!                                  whose writes lun_cache::JournaledCache can journal on an
//!                                  nvdisk first so they survive a gateway crash
//! ```
//!
//! What the target serves comes from a [`target::TargetRegistry`] (target IQN → LUN →
//! [`block::BlockDevice`], CHAP secrets); reservations persist through a
//! [`scsi::pr::ReservationStore`]. Both are traits so the cluster's metadata service can back
//! them; in-memory implementations live here.

pub mod block;
pub mod cache;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod iscsi;
pub mod lun_cache;
pub mod nfs;
pub mod nvdisk;
pub mod s3;
pub mod scsi;
pub mod target;

pub use block::{BlockDevice, BlockError, FileDevice, MemDevice};
pub use cache::{CacheConfig, CacheStats, WriteBackCache};
pub use error::GatewayError;
pub use iscsi::{serve, IscsiOptions};
pub use scsi::pr::{InMemoryReservationStore, PrState, ReservationStore};
pub use target::{ChapConfig, ChapCredentials, InMemoryRegistry, TargetConfig, TargetRegistry};
