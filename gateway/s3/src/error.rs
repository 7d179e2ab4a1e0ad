//! The S3 server's error type. A request's own failure is an `s3s::S3Error` (S3's status and
//! XML error code); this one is for setting the server up and running its listener.

/// Errors of starting or running the S3 server.
#[derive(Debug, thiserror::Error)]
pub enum S3ServerError {
    /// The listener, or a TLS certificate or key file that does not load.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Invalid [`crate::S3Options`].
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        field: &'static str,
        reason: &'static str,
    },
}
