//! The target's error type.

use crate::block::BlockError;
use crate::pdu::PduError;

/// Errors of the iSCSI target, its registry and its reservation store.
#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed PDU: {0}")]
    Pdu(#[from] PduError),
    #[error("block device: {0}")]
    Block(#[from] BlockError),
    /// A backing service (registry, reservation store) could not be reached.
    #[error("{service} is unavailable")]
    Unavailable { service: &'static str },
    /// The peer broke the iSCSI protocol badly enough that the connection must close.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Invalid [`crate::IscsiOptions`].
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        field: &'static str,
        reason: &'static str,
    },
    /// A [`crate::TargetRegistry`] or [`crate::ReservationStore`] implementation failed in a way
    /// of its own (for the cluster-backed ones, a gateway error such as an nvdisk that does not
    /// open).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}
