use cairn_proto::rpc::RpcError;
use cairn_proto::{Oid, WireError};

/// Errors of the cluster client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("pool {0:?} does not exist")]
    NoSuchPool(String),
    #[error("object {0} not found")]
    NotFound(Oid),
    #[error("no OSD is up for placement group {pg}")]
    NoPrimary { pg: cairn_proto::PgId },
    #[error("gave up after {secs} s: {last}")]
    GaveUp { secs: u64, last: RpcError },
    #[error("{0}")]
    Rpc(RpcError),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A migrator's copy of an object differs from what it read (see `migrate`).
    #[error(
        "the copy of object {oid} does not verify: {size} bytes with crc32 {crc:08x}, where \
         {want_size} bytes with crc32 {want_crc:08x} were read"
    )]
    CopyMismatch {
        oid: Oid,
        size: u64,
        crc: u32,
        want_size: u64,
        want_crc: u32,
    },
    /// An object of a file being moved disappeared from the old pool while it was copied.
    #[error("object {oid} vanished from the old pool during its copy")]
    Vanished { oid: Oid },
}

impl ClientError {
    /// The wire error behind this one, if the cluster answered with one.
    pub fn wire(&self) -> Option<&WireError> {
        match self {
            ClientError::Rpc(RpcError::Remote(e))
            | ClientError::GaveUp {
                last: RpcError::Remote(e),
                ..
            } => Some(e),
            _ => None,
        }
    }

    /// The cluster did not answer in time or was failing over: the same request may succeed
    /// later (errors it answered with, like no space, are not transient).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::GaveUp { last, .. } | ClientError::Rpc(last) => last.is_transient(),
            ClientError::NoPrimary { .. } => true,
            _ => false,
        }
    }

    pub fn is_no_space(&self) -> bool {
        matches!(self.wire(), Some(WireError::NoSpace { .. }))
    }
}

impl From<RpcError> for ClientError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Remote(WireError::NoSuchObject { oid }) => ClientError::NotFound(oid),
            e => ClientError::Rpc(e),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
