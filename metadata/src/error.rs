//! The crate's one error type and its mapping onto [`WireError`].

use cairn_proto::{NodeId, WireError};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The configuration is unusable.
    #[error("config field {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// An operating-system call failed (binding, creating the data directory).
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The raft store (sled) failed to read or write.
    #[error("raft store: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record failed its checksum or did not decode: corruption, not an I/O failure.
    #[error("corrupt raft store record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// A committed raft entry did not decode; replicas must not skip what others apply.
    #[error("committed entry {index} does not decode: {detail}")]
    BadEntry { index: u64, detail: String },
    /// The raft library refused an operation it should not have.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The raft task ended by panicking.
    #[error("raft task panicked: {0}")]
    Panicked(String),
    /// Only the leader serves this; it is `leader` (at `addr`), if known.
    #[error("not the leader (leader: {leader:?} at {addr:?})")]
    NotLeader {
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    /// The proposal was dropped (leadership moved, the log was replaced, or a membership change
    /// is still being applied); it may be retried.
    #[error("proposal dropped: {reason}")]
    Dropped { reason: &'static str },
    /// The command conflicts with an existing object.
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },
    /// The command names something that does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The command's arguments are invalid.
    #[error("invalid: {reason}")]
    Invalid { reason: String },
    /// A namespace operation failed with a POSIX error (the namespace is unchanged).
    #[error("{0}")]
    Fs(cairn_proto::fs::FsError),
    /// No answer within the time allowed (no quorum, or an election in progress).
    #[error("timed out waiting for {what}")]
    Timeout { what: &'static str },
    /// The replica is stopping, or was removed from the cluster.
    #[error("metadata replica is shutting down")]
    ShuttingDown,
}

impl MetaError {
    pub(crate) fn invalid(reason: impl Into<String>) -> MetaError {
        MetaError::Invalid {
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, detail: impl ToString) -> MetaError {
        MetaError::Corrupt {
            key: key.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<MetaError> for WireError {
    fn from(e: MetaError) -> WireError {
        match e {
            MetaError::NotLeader { leader, addr } => WireError::NotLeader { leader, addr },
            MetaError::Exists { kind, name } => WireError::Exists {
                kind: kind.into(),
                name,
            },
            MetaError::NotFound { kind, name } => WireError::NotFound {
                kind: kind.into(),
                name,
            },
            MetaError::Invalid { reason } => WireError::Invalid { reason },
            MetaError::Fs(e) => WireError::Fs(e),
            MetaError::Config { .. } => WireError::invalid(e.to_string()),
            // Retryable: the same request may succeed once the cluster settles.
            MetaError::Dropped { .. } | MetaError::Timeout { .. } => WireError::Timeout,
            MetaError::ShuttingDown => WireError::ShuttingDown,
            MetaError::Io { .. }
            | MetaError::Storage(_)
            | MetaError::Corrupt { .. }
            | MetaError::BadEntry { .. }
            | MetaError::Raft(_)
            | MetaError::Panicked(_) => WireError::Io {
                detail: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_onto_wire_errors_keeping_retryability() {
        let w: WireError = MetaError::NotLeader {
            leader: Some(2),
            addr: Some("a:1".into()),
        }
        .into();
        assert_eq!(
            w,
            WireError::NotLeader {
                leader: Some(2),
                addr: Some("a:1".into())
            }
        );
        let w: WireError = MetaError::Exists {
            kind: "pool",
            name: "p".into(),
        }
        .into();
        assert!(!w.is_retryable());
        assert_eq!(
            w,
            WireError::Exists {
                kind: "pool".into(),
                name: "p".into()
            }
        );
        let w: WireError = MetaError::Dropped { reason: "x" }.into();
        assert!(w.is_retryable());
        let w: WireError = MetaError::corrupt("L/5", "crc").into();
        assert!(matches!(w, WireError::Io { .. }));
    }
}
