//! cairn-iscsi: an iSCSI target (RFC 7143) and the SCSI logical unit (SPC, SBC, persistent
//! reservations) behind it, over the [`BlockDevice`] trait.
//!
//! Nothing here knows about the cluster: a LUN is whatever implements [`BlockDevice`], targets
//! come from a [`TargetRegistry`] and reservations persist through a [`ReservationStore`].
//! `cairn-gateway` implements all three on the cluster; [`MemDevice`], [`FileDevice`],
//! [`InMemoryRegistry`] and [`InMemoryReservationStore`] are the standalone ones the tests,
//! examples and benchmarks use. Data flows top to bottom:
//!
//! ```text
//!  TCP ──> server   accept loop, connection cap (Semaphore), shutdown (watch)
//!            └─> conn    one task per connection: full feature phase, R2T, Data-In/Out,
//!                  │     task management, text, logout
//!                  ├─ io + pdu + digest   framing off the stream, typed PDUs, CRC32C digests
//!                  ├─ login + chap + text login phase: key=value negotiation, CHAP, session setup
//!                  ├─ session             CmdSN window, running tasks, the session table
//!                  └─ scsi::LogicalUnit::execute   one CDB (scsi::cdb parses it)
//!                        ├─ scsi::task_set  SIMPLE / ORDERED / HEAD OF QUEUE ordering
//!                        ├─ scsi::spc       INQUIRY/VPD, MODE SENSE/SELECT, REPORT LUNS ...
//!                        ├─ scsi::sbc       READ/WRITE/VERIFY/WRITE SAME/UNMAP/COMPARE AND WRITE
//!                        ├─ scsi::xcopy     EXTENDED COPY, RECEIVE COPY RESULTS
//!                        ├─ scsi::sanitize  SANITIZE (paced overwrite, block erase)
//!                        ├─ scsi::pr        persistent reservations ──> pr::ReservationStore
//!                        └─ scsi::sense     BlockError and failures as sense data
//!                              └─> block::BlockDevice   read/write/flush/unmap at byte offsets
//! ```
//!
//! [`target`] holds the registry seam (target IQN → LUN → [`BlockDevice`], CHAP secrets);
//! [`options`] the service settings with their RFC ranges; [`error`] the crate's error type.
//! `tests/iscsi.rs` runs libiscsi's `iscsi-test-cu` and a raw PDU initiator against a target over
//! [`MemDevice`]; `examples/iscsi_write_bench.rs` is a raw-PDU write benchmark initiator.

pub mod block;
pub mod chap;
pub mod conn;
pub mod digest;
pub mod error;
pub mod io;
pub mod login;
pub mod options;
pub mod pdu;
pub mod scsi;
pub mod server;
pub mod session;
pub mod target;
pub mod text;

pub use block::{BlockDevice, BlockError, Extent, FileDevice, MemDevice};
pub use error::IscsiError;
pub use options::IscsiOptions;
pub use scsi::pr::{InMemoryReservationStore, PrState, ReservationStore};
pub use server::serve;
pub use target::{ChapConfig, ChapCredentials, InMemoryRegistry, TargetConfig, TargetRegistry};
