//! The gateway's error type.

use cairn_iscsi::{BlockError, IscsiError};
use cairn_s3::S3ServerError;

/// Errors of the gateway crate.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The iSCSI target, or a registry or reservation store it called.
    #[error(transparent)]
    Iscsi(#[from] IscsiError),
    /// The S3 server failed to start or to run its listener.
    #[error(transparent)]
    S3(#[from] S3ServerError),
    #[error("block device: {0}")]
    Block(#[from] BlockError),
    /// A backing service (metadata service, cluster, nvdisk) could not be reached.
    #[error("{service} is unavailable")]
    Unavailable { service: &'static str },
    /// State read back from a journal or the metadata service that cannot be right.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A setting or argument out of its range (a [`crate::daemon::GatewayConfig`] field, an
    /// nvdisk LUN's geometry).
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

/// What the iSCSI target sees of a gateway failure in the cluster-backed registry and
/// reservation store: its own errors as they were, the rest as a backend failure.
impl From<GatewayError> for IscsiError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Iscsi(e) => e,
            GatewayError::Io(e) => IscsiError::Io(e),
            GatewayError::Block(e) => IscsiError::Block(e),
            GatewayError::Unavailable { service } => IscsiError::Unavailable { service },
            GatewayError::Protocol(what) => IscsiError::Protocol(what),
            e => IscsiError::Backend(Box::new(e)),
        }
    }
}
