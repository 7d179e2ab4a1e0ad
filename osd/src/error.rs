//! The OSD's one error type, and how it maps onto the wire.

use cairn_proto::rpc::RpcError;
use cairn_proto::{Oid, OsdId, PgId, WireError};
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object {oid} not found")]
    NoSuchObject { oid: Oid },
    /// A data chunk failed its checksum (or could not be read back in full).
    #[error("corrupt data in object {oid} at offset {offset}")]
    Corrupt { oid: Oid, offset: u64 },
    /// A metadata record (object, log entry, PG info) did not decode.
    #[error("corrupt {what} record in the metadata store")]
    BadRecord { what: &'static str },
    #[error("no space left (capacity {capacity} bytes)")]
    NoSpace { capacity: u64 },
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
    /// `pg_log(since)` asked for entries the bounded log has already dropped.
    #[error("pg {pg} log starts after version {tail}, cannot serve entries since {since}")]
    LogTrimmed { pg: PgId, since: u64, tail: u64 },
    #[error("I/O error on {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database: {0}")]
    Db(#[source] std::io::Error),
    #[error("store format {found:?} is not the supported {expected:?}")]
    Format { found: String, expected: String },
    /// A journal record in the middle of the journal failed its checksum: acknowledged writes
    /// may be lost, so the OSD refuses to start over it.
    #[error("journal corrupt at byte {offset}")]
    JournalCorrupt { offset: u64 },
    #[error("journal header is not a cairn journal (or of an unsupported version)")]
    JournalHeader,
    /// A journal fsync failed: what reached the disk is unknown, so the journal stops.
    #[error("journal failed earlier and accepts no more records")]
    JournalPoisoned,
    /// A bounded journal has no room for the record until a checkpoint trims it.
    #[error("journal full: record needs {needed} bytes, {free} free")]
    JournalFull { needed: u64, free: u64 },
    /// A record larger than the whole journal: the write can never be journaled.
    #[error("write of {len} bytes exceeds the journal's largest record of {max} bytes")]
    JournalRecordTooLarge { len: u64, max: u64 },
    /// The nvdisk under an nvdisk journal failed (I/O, a failed committer, a lock, a geometry
    /// that does not match its backups).
    #[error("nvdisk journal: {0}")]
    NvDisk(#[source] cairn_nvdisk::Error),
    #[error("bad configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("rpc: {0}")]
    Rpc(#[from] RpcError),
    #[error("{0}")]
    Wire(WireError),
    #[error("shutting down")]
    ShuttingDown,
}

impl Error {
    pub fn invalid(reason: impl Into<String>) -> Error {
        Error::Invalid {
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Whether this is the OS saying the disk is full.
    pub fn is_enospc(&self) -> bool {
        match self {
            Error::Io { source, .. } | Error::Db(source) => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.raw_os_error() == Some(28)
            }
            Error::NoSpace { .. } => true,
            _ => false,
        }
    }

    /// The error as the wire carries it, from the OSD `osd`.
    pub fn to_wire(&self, osd: OsdId) -> WireError {
        match self {
            Error::NoSuchObject { oid } => WireError::NoSuchObject { oid: *oid },
            Error::Corrupt { oid, offset } => WireError::Corrupt {
                oid: *oid,
                offset: *offset,
            },
            Error::NoSpace { .. } => WireError::NoSpace { osd },
            e if e.is_enospc() => WireError::NoSpace { osd },
            Error::Invalid { reason } => WireError::Invalid {
                reason: reason.clone(),
            },
            e @ Error::JournalRecordTooLarge { .. } => WireError::Invalid {
                reason: e.to_string(),
            },
            Error::Rpc(RpcError::Remote(w)) | Error::Wire(w) => w.clone(),
            Error::Rpc(RpcError::Timeout { .. }) => WireError::Timeout,
            Error::ShuttingDown => WireError::ShuttingDown,
            other => WireError::Io {
                detail: other.to_string(),
            },
        }
    }
}
