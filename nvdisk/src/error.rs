//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in an nvdisk or a journal on one.
///
/// Corruption (`Corrupt`) is kept apart from I/O failure (`Io`): the first means bytes on disk or in
/// the pool are not what was written, the second that the OS refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field has a value the device cannot run with.
    #[error("invalid nvdisk config: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// The OS failed an operation on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A record or status block failed its checksum or framing where a complete one must be.
    #[error("corrupt {what} at byte {offset} of {path}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        offset: u64,
    },

    /// On-disk or in-pool state belongs to a different device or geometry than the config.
    #[error("{what} does not match the config: found {found}, expected {expected}")]
    Mismatch {
        what: &'static str,
        found: u64,
        expected: u64,
    },

    /// Another process (or another `NvDisk` in this one) holds the backup directory.
    #[error("{path} is locked by another nvdisk")]
    Locked { path: PathBuf },

    /// A read or write falls outside the device.
    #[error("range {offset}+{len} is outside the device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    /// The committer failed a disk transaction; the device refuses writes from then on rather than
    /// run on state it can no longer make durable.
    #[error("nvdisk committer failed during {step}: {kind}")]
    CommitterFailed {
        step: &'static str,
        kind: io::ErrorKind,
    },

    /// The journal ring has no room for the record.
    #[error("journal full: record needs {needed} bytes, {free} free")]
    Full { needed: u64, free: u64 },

    /// A journal record is larger than the whole ring.
    #[error("journal record of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u64, max: u64 },

    /// The journal's superblock is neither valid nor blank.
    #[error("device holds no cairn journal (bad superblock)")]
    NotAJournal,
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
