//! The gateway's error type.

use crate::block::BlockError;
use crate::iscsi::pdu::PduError;

/// Errors of the gateway crate.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
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
    /// A configuration setting that does not parse or validate.
    #[error("invalid setting {field}: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    /// An nvdisk (an nvdisk volume, or a LUN cache's journal) failed to open or recover.
    #[error("nvdisk of volume {volume}: {source}")]
    NvDisk {
        volume: String,
        #[source]
        source: cairn_nvdisk::Error,
    },
}
