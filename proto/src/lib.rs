//! cairn-proto: what crosses the wire between cairn's daemons and clients.
//!
//! - [`ids`]: object ids (128-bit), OSD, pool and placement-group ids.
//! - [`object`]: object mutations, stat results, typed fields and query filters.
//! - [`map`]: the cluster map (OSDs, pools, metadata members, epoch) and placement-group states.
//! - [`placement`]: object → placement group → ordered OSD set (weighted rendezvous hashing).
//! - [`msg`]: request and response messages of every service.
//! - [`frame`]: the frame codec (header, lengths, crc32s) under every message.
//! - [`rpc`]: multiplexed RPC over TCP: a server loop around a [`rpc::Handler`] and a client pool.
//! - [`meta_client`]: finds the metadata leader and retries through elections.
//! - [`volume`]: block volumes as the metadata service records them.
//! - [`iscsi`]: iSCSI targets, LUN mappings, CHAP and reservations as the metadata service keeps them.
//! - [`user`]: S3 users, access keys and bucket permissions.
//! - [`fs`]: the uniform namespace: inodes, namespace operations and queries, POSIX errors.
//! - [`error`]: errors that cross the wire.
//! - [`payload`]: object data that crosses frames and journal records without copies.
//!
//! Data flow: a client builds a [`msg::Request`], [`rpc::RpcClient`] frames it with [`frame`],
//! the server's [`rpc::serve`] parses it and hands it to the daemon's handler, whose
//! [`msg::Response`] travels back the same way.

pub mod error;
pub mod frame;
pub mod fs;
pub mod ids;
pub mod iscsi;
pub mod map;
pub mod meta_client;
pub mod msg;
pub mod object;
pub mod payload;
pub mod placement;
pub mod rpc;
pub mod user;
pub mod volume;

pub use error::WireError;
pub use ids::{NodeId, Oid, OsdId, PgId, PieceKind, PoolId};
pub use map::{ClusterMap, OsdInfo, PgState, Pool, WriteMode};
pub use msg::{Request, Response};
pub use object::{Filter, ObjOp, ObjectStat, Value};
