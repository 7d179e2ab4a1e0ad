//! Request and response messages. A frame's body is the bincode encoding of one [`Request`] or
//! [`Response`]; the frame header's opcode names the request family so a server can refuse an
//! unknown family before decoding.

use crate::error::WireError;
use crate::ids::{NodeId, Oid, OsdId, PgId, PoolId};
use crate::map::{ClusterMap, FailureDomain, PgState, WriteMode};
use crate::object::{Filter, ObjOp, ObjectStat, QueryHit};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    Meta(MetaRequest),
    Osd(OsdRequest),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Meta(MetaResponse),
    Osd(OsdResponse),
    Error(WireError),
}

/// Opcodes in the frame header: one per request family.
pub mod opcode {
    pub const PING: u16 = 1;
    pub const META: u16 = 2;
    pub const OSD: u16 = 3;
    pub const RESPONSE: u16 = 0x8000;
    pub fn is_known_request(op: u16) -> bool {
        (PING..=OSD).contains(&op)
    }
}

impl Request {
    pub fn opcode(&self) -> u16 {
        match self {
            Request::Ping => opcode::PING,
            Request::Meta(_) => opcode::META,
            Request::Osd(_) => opcode::OSD,
        }
    }
}

// ---------------------------------------------------------------- metadata service

/// Requests to a metadata replica. Commands are replicated through raft and answered by the leader;
/// followers answer [`WireError::NotLeader`] with the leader's address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaRequest {
    /// The current cluster map (linearizable: served by the leader).
    GetMap,
    /// A replicated state-machine command.
    Command(MetaCommand),
    /// An OSD's periodic liveness and usage report (kept by the leader, not replicated).
    Heartbeat(OsdHeartbeat),
    /// An OSD could not reach another one; the leader may mark it down.
    ReportFailure { reporter: OsdId, failed: OsdId },
    /// Raft state of this replica plus the leader's view of placement-group states.
    Status,
    /// Add a metadata replica (raft conf change); the new node must already be running.
    AddMember { id: NodeId, addr: String },
    /// Remove a metadata replica (raft conf change).
    RemoveMember { id: NodeId },
    /// A raft message between replicas (protobuf-encoded `eraftpb::Message`).
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Commands of the replicated state machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    CreatePool {
        name: String,
        size: u8,
        min_size: u8,
        pg_num: u32,
        mode: WriteMode,
        failure_domain: FailureDomain,
    },
    DeletePool {
        name: String,
    },
    /// An OSD starts: registered on first boot (id `None`: a new id is assigned), marked up and in.
    OsdBoot {
        id: Option<OsdId>,
        addr: String,
        host: String,
        weight: f64,
        capacity: u64,
    },
    /// Change an OSD's up/in flags (`None` leaves a flag as it is).
    SetOsdState {
        id: OsdId,
        up: Option<bool>,
        in_cluster: Option<bool>,
    },
    SetOsdWeight {
        id: OsdId,
        weight: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaResponse {
    Map(ClusterMap),
    /// A command was applied; what it produced.
    Applied(MetaResult),
    HeartbeatAck {
        epoch: u64,
    },
    Status(MetaStatus),
    Done,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaResult {
    Done,
    Osd(OsdId),
    Pool(PoolId),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OsdHeartbeat {
    pub id: OsdId,
    pub epoch: u64,
    pub capacity: u64,
    pub used: u64,
    /// States of the placement groups this OSD is primary of.
    pub pgs: Vec<(PgId, PgState)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct MetaStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub members: Vec<(NodeId, String)>,
    /// The leader's latest report of each placement group (empty on followers).
    pub pgs: Vec<(PgId, PgState)>,
}

// ---------------------------------------------------------------- object storage devices

/// Requests to an OSD. Client requests go to the primary of the object's placement group and carry
/// the sender's map epoch; an OSD with a different epoch answers [`WireError::StaleEpoch`] so the
/// older side refetches the map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OsdRequest {
    Mutate {
        epoch: u64,
        pool: PoolId,
        oid: Oid,
        op: ObjOp,
    },
    Read {
        epoch: u64,
        pool: PoolId,
        oid: Oid,
        offset: u64,
        len: u32,
    },
    Stat {
        epoch: u64,
        pool: PoolId,
        oid: Oid,
    },
    /// Objects of one placement group, in id order, after `after`.
    List {
        epoch: u64,
        pg: PgId,
        after: Option<Oid>,
        limit: u32,
    },
    /// Typed objects of `otype` matching `filter` in the given placement groups (those the OSD is
    /// primary of), in id order after `after`. An empty filter is `GetExtent(otype)`.
    Query {
        epoch: u64,
        pgs: Vec<PgId>,
        otype: String,
        filter: Filter,
        after: Option<Oid>,
        limit: u32,
    },
    /// Messages between OSDs (replication, peering, recovery, scrub).
    Peer(PeerRequest),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OsdResponse {
    Mutated {
        version: u64,
    },
    Data(Bytes),
    Stat(ObjectStat),
    List {
        objects: Vec<(Oid, u64)>,
        more: bool,
    },
    Hits {
        hits: Vec<QueryHit>,
        more: bool,
    },
    Peer(PeerResponse),
}

/// OSD-to-OSD messages (owned by the OSD crate's replication and recovery code).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Apply a mutation the primary has ordered as `version` of the placement group. `prior` is the
    /// object's version before it on the primary; a replica whose copy differs answers `Missing`.
    SubOp {
        epoch: u64,
        pg: PgId,
        version: u64,
        prior: u64,
        oid: Oid,
        op: ObjOp,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Applied,
    Missing,
}
