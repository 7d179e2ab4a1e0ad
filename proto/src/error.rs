//! Errors that cross the wire. Each crate has its own error enum and maps it onto these.

use crate::ids::{NodeId, Oid, OsdId, PgId};
use serde::{Deserialize, Serialize};

/// What was wrong with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameFault {
    BadMagic,
    BadVersion,
    BadKind,
    TooLarge,
    HeaderChecksum,
    BodyChecksum,
    UnknownOpcode,
    BadBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    #[error("bad frame: {fault:?}")]
    Frame { fault: FrameFault },
    #[error("not the metadata leader (leader: {leader:?} at {addr:?})")]
    NotLeader {
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    #[error("the peer's map epoch {theirs} differs from ours {ours}")]
    StaleEpoch { ours: u64, theirs: u64 },
    #[error("{osd} is not the primary of pg {pg}")]
    NotPrimary { pg: PgId, osd: OsdId },
    #[error("pg {pg} has {up} copies up, fewer than min_size {min_size}")]
    Degraded { pg: PgId, up: u8, min_size: u8 },
    #[error("pg {pg} is peering or recovering; retry")]
    Busy { pg: PgId },
    #[error("object {oid} not found")]
    NoSuchObject { oid: Oid },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} already exists")]
    Exists { kind: String, name: String },
    #[error("no space left on {osd}")]
    NoSpace { osd: OsdId },
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
    #[error("corrupt data in object {oid} at offset {offset}, and no good replica")]
    Corrupt { oid: Oid, offset: u64 },
    #[error("I/O error: {detail}")]
    Io { detail: String },
    #[error("timed out")]
    Timeout,
    #[error("shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Fs(crate::fs::FsError),
    /// The object belongs to file `ino`, whose data is moving to another pool (or has moved):
    /// the client reads the file's attributes again and retries where they say.
    #[error("the data of file {ino} is moving to another pool")]
    Moved { ino: u64 },
    /// A migrator's fenced request for file `ino` whose move the map no longer shows copying
    /// under that migrator (another took it over, or it ended): final, the migrator stops.
    #[error("the move of file {ino} is not this migrator's (taken over or ended)")]
    Fenced { ino: u64 },
}

impl WireError {
    pub fn invalid(reason: impl Into<String>) -> WireError {
        WireError::Invalid {
            reason: reason.into(),
        }
    }

    /// Whether a client should refresh its view and try again (as opposed to a final answer).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WireError::NotLeader { .. }
                | WireError::StaleEpoch { .. }
                | WireError::NotPrimary { .. }
                | WireError::Degraded { .. }
                | WireError::Busy { .. }
                | WireError::Timeout
                | WireError::ShuttingDown
        )
    }
}
