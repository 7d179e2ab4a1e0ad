//! Request and response messages. A frame's body is the bincode encoding of one [`Request`] or
//! [`Response`]; the frame header's opcode names the request family so a server can refuse an
//! unknown family before decoding.

use crate::error::WireError;
use crate::fs::{NsOp, NsQuery, NsReply, NsResult};
use crate::ids::{NodeId, Oid, OsdId, PgId, PoolId};
use crate::iscsi::{IscsiCommand, IscsiConfig};
use crate::map::{ClusterMap, FailureDomain, MoveFence, PgState, WriteMode};
use crate::object::{Filter, ObjOp, ObjectStat, QueryHit};
use crate::user::{UserCommand, UserDb};
use crate::volume::{NvDiskMode, VolumeInfo};
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
    /// A linearizable read of the replicated state (ReadIndex on the leader).
    Read(MetaRead),
    /// A raft message between replicas (protobuf-encoded `eraftpb::Message`).
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A raft message (protobuf-encoded `eraftpb::Message`) with the sender's RPC address, so a
    /// replica that joined with no member list can answer the leader before its first snapshot
    /// brings the members.
    RaftFrom {
        addr: String,
        #[serde(with = "serde_bytes")]
        msg: Vec<u8>,
    },
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
    /// Create a thin block volume in a pool (by name).
    CreateVolume {
        name: String,
        size: u64,
        block_size: u32,
        object_size: u64,
        pool: String,
    },
    /// Change a volume's size (the caller frees objects past a new, smaller end).
    ResizeVolume {
        name: String,
        size: u64,
    },
    DeleteVolume {
        name: String,
    },
    Iscsi(IscsiCommand),
    /// A namespace operation (one atomic step of the uniform namespace).
    Ns(NsOp),
    /// S3 users, access keys and bucket policies.
    User(UserCommand),
    /// Create a volume that is an nvdisk held and served by the gateway named `gateway`.
    CreateNvdiskVolume {
        name: String,
        size: u64,
        block_size: u32,
        gateway: String,
        mode: NvDiskMode,
    },
    /// Moving file data between pools (the background migration after a pin).
    Migrate(MigrateCommand),
}

/// Steps of moving file data between pools; see [`crate::map::FileMove`] for what OSDs enforce.
/// Every step that changes a move names its owner (the migrator's id, a random 64-bit number):
/// a step of a migrator that lost the move to another one changes nothing.
///
/// The first two variants are what cairn wrote before moves had owners (metadata codec 3); they
/// stay at their places so that such log entries still decode, and apply as steps of owner 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MigrateCommand {
    /// Codec 3's `Begin`: [`MigrateCommand::Begin`] with owner 0.
    LegacyBegin { files: Vec<MigrateFile> },
    /// Codec 3's `Switch` of one file: [`MigrateCommand::Switch`] of whoever owns the move.
    LegacySwitch { ino: u64 },
    /// Forget these moves, which must be past copying (their old objects are gone, and the
    /// grace is over). Answers [`MetaResult::Done`].
    End { inos: Vec<u64> },
    /// Directory `dir` was swept while its pin was `pin`: take it off the queue unless it was
    /// pinned again since.
    Swept { dir: u64, pin: Option<PoolId> },
    /// Start moving each file whose inode still names pool `expect` and that is not already
    /// moving: it enters [`crate::map::MovePhase::Copying`], owned by `owner`. Answers
    /// [`MetaResult::Migrating`] with the inodes that did (one map epoch for all of them).
    Begin { files: Vec<MigrateFile>, owner: u64 },
    /// Take over these copying moves (their owner died or lost the migrator lock). Answers
    /// [`MetaResult::Migrating`] with the inodes now owned by `owner` (one epoch).
    Claim { inos: Vec<u64>, owner: u64 },
    /// The copies of these files are complete and verified: each file whose inode still names
    /// the pool it named at `Begin` now names `to` (see [`SwitchOutcome`]). Answers
    /// [`MetaResult::Switched`] (one epoch for all of them). Sent again by the same owner, it
    /// answers the same.
    Switch { files: Vec<SwitchFile>, owner: u64 },
    /// Give up these copying moves of `owner` (the copy failed): the files stay in their old
    /// pool, usable again at once. Answers [`MetaResult::Migrating`] with the inodes aborted.
    Abort { inos: Vec<u64>, owner: u64 },
}

/// One file of a [`MigrateCommand::Switch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchFile {
    pub ino: u64,
    /// Bytes the copy holds (for the migration's progress counters).
    pub bytes: u64,
}

/// How a [`MigrateCommand::Switch`] ended for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwitchOutcome {
    /// The inode names the new pool; the move is [`crate::map::MovePhase::Moved`] (the old
    /// objects are to be deleted).
    Switched,
    /// The file is gone: the move is `Moved`, and both copies are to be deleted.
    Gone,
    /// The file stays where it is (the new pool went, or the inode names another pool): the
    /// move is over, and the copy in the new pool is to be deleted.
    Kept,
    /// Not this owner's copying move (another migrator took it over, or it is over): nothing
    /// changed.
    NotOwner,
}

/// One file to start moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateFile {
    pub ino: u64,
    /// The file's pool as its inode names it (`None`: the default file pool).
    pub expect: Option<PoolId>,
    /// The pool its objects are in now, and the one they go to.
    pub from: PoolId,
    pub to: PoolId,
}

/// Reads of the replicated state other than the map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaRead {
    Volumes,
    Volume {
        name: String,
    },
    Iscsi,
    Ns(NsQuery),
    /// Every user, key and bucket policy (secrets included: for gateways and administrators).
    Users,
    /// Directories whose files wait to be moved to the pool of their pin, and moves under way.
    Migrations,
}

/// What [`MetaRead::Migrations`] answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct MigrationStatus {
    /// Directories pinned or unpinned whose subtrees have not been swept since.
    pub queued_dirs: Vec<u64>,
    /// Moves under way, by inode.
    pub moving: Vec<(u64, crate::map::FileMove)>,
    /// Files switched to a new pool since the cluster began, and the bytes their copies held
    /// (progress is the difference between two readings).
    pub files_moved: u64,
    pub bytes_moved: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaResponse {
    Map(ClusterMap),
    /// A command was applied; what it produced.
    Applied(MetaResult),
    HeartbeatAck {
        epoch: u64,
    },
    Volumes(Vec<VolumeInfo>),
    Volume(VolumeInfo),
    Iscsi(IscsiConfig),
    Ns(NsReply),
    Users(UserDb),
    Status(MetaStatus),
    Done,
    Migrations(MigrationStatus),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaResult {
    Done,
    Osd(OsdId),
    Pool(PoolId),
    Volume(VolumeInfo),
    Ns(NsResult),
    /// [`MigrateCommand::Begin`], `Claim` and `Abort`: the inodes they applied to.
    Migrating(Vec<u64>),
    /// [`MigrateCommand::Switch`]: how it ended for each file.
    Switched(Vec<(u64, SwitchOutcome)>),
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
        /// Set by a migrator copying a file's data (see [`MoveFence`]).
        fence: Option<MoveFence>,
    },
    Read {
        epoch: u64,
        pool: PoolId,
        oid: Oid,
        offset: u64,
        len: u32,
        fence: Option<MoveFence>,
    },
    Stat {
        epoch: u64,
        pool: PoolId,
        oid: Oid,
        fence: Option<MoveFence>,
    },
    /// The object's size and the crc32 of its bytes, computed on the primary from its verified
    /// copy (how a migrator checks a copy without moving the data again).
    Digest {
        epoch: u64,
        pool: PoolId,
        oid: Oid,
        fence: Option<MoveFence>,
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
    /// The OSD's counters and the states of the placement groups it is primary of.
    Status,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OsdResponse {
    Mutated {
        version: u64,
    },
    Data(#[serde(with = "crate::payload")] Bytes),
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
    Status(OsdStatus),
    /// [`OsdRequest::Digest`].
    Digest {
        size: u64,
        crc32: u32,
    },
}

/// What an OSD reports about itself ([`OsdRequest::Status`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct OsdStatus {
    pub id: OsdId,
    pub epoch: u64,
    pub stats: OsdStats,
    /// States of the placement groups this OSD is primary of.
    pub pgs: Vec<(PgId, PgState)>,
}

/// Counters of one OSD since it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OsdStats {
    pub used_bytes: u64,
    pub capacity: u64,
    /// Client mutations applied as primary.
    pub writes: u64,
    pub reads: u64,
    /// Chunks found with a bad checksum (by reads or scrub).
    pub checksum_errors: u64,
    /// Bad local copies rewritten from a good replica.
    pub repairs: u64,
    /// Differences between replicas found by scrub (missing, stale or corrupt copies).
    pub scrub_errors: u64,
    pub objects_scrubbed: u64,
    /// Objects copied to or from peers by recovery and backfill, and their bytes.
    pub objects_recovered: u64,
    pub bytes_recovered: u64,
    /// Replica writes answered `Missing` that needed a whole-object push.
    pub missing_pushes: u64,
    pub journal_checkpoints: u64,
}

/// A placement group's progress on one OSD. Versions are the PG's mutation counter assigned by
/// its primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PgInfo {
    /// Newest version this OSD has applied.
    pub last_update: u64,
    /// Every version up to this one is applied here (no gaps).
    pub last_complete: u64,
    /// The log holds every entry after this version up to `last_update`.
    pub log_tail: u64,
}

/// What a PG log entry did to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    Modify,
    Delete,
}

/// One entry of a placement group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub version: u64,
    pub oid: Oid,
    pub op: LogOp,
    /// The object's version before this entry (0: it did not exist).
    pub prior: u64,
}

/// One object of a [`PeerRequest::PgScan`] answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanItem {
    pub oid: Oid,
    pub version: u64,
    pub size: u64,
    /// crc32 over the object's chunk checksums (from metadata alone; equal data gives equal digests).
    pub digest: u32,
}

/// A piece of an object being copied between OSDs: the whole object's metadata and `data` at
/// `offset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectPiece {
    pub stat: ObjectStat,
    pub offset: u64,
    #[serde(with = "crate::payload")]
    pub data: Bytes,
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
        /// The group's version the primary had in flight when it ordered this one (0: none):
        /// the replica applies this one after that one (the primary pipelines a group's
        /// mutations, and requests may overtake each other on the way).
        after: u64,
        oid: Oid,
        op: ObjOp,
        /// The primary's mtime of the change, so every copy's stat agrees.
        mtime: i64,
    },
    /// This OSD's progress on each listed placement group it holds anything of.
    PgInfos { epoch: u64, pgs: Vec<PgId> },
    /// Log entries after `since` (answered `Log(None)` when the log no longer reaches back).
    PgLog { epoch: u64, pg: PgId, since: u64 },
    /// Objects of a placement group with versions and digests, in id order after `after`.
    PgScan {
        epoch: u64,
        pg: PgId,
        after: Option<Oid>,
        limit: u32,
    },
    /// Read a piece of an object for recovery or repair (`Absent` when there is no such object).
    Pull {
        epoch: u64,
        pg: PgId,
        oid: Oid,
        offset: u64,
        len: u32,
    },
    /// Install a piece of an object copied from the primary. `first` replaces whatever copy the
    /// replica had; `entry` (on the last piece) is the PG log entry the copy brings the replica to.
    Push {
        epoch: u64,
        pg: PgId,
        oid: Oid,
        piece: ObjectPiece,
        first: bool,
        last: bool,
        entry: Option<LogEntry>,
    },
    /// Remove a replica's copy of an object the primary does not have.
    PushRemove { epoch: u64, pg: PgId, oid: Oid },
    /// Recovery of this replica is complete through `last_update`: it merges `log` into its own
    /// (or, when `backfilled`, replaces its log with an empty one starting at `last_update`).
    PgActivate {
        epoch: u64,
        pg: PgId,
        last_update: u64,
        log: Vec<LogEntry>,
        backfilled: bool,
    },
    /// An OSD holding a placement group outside its set asks the primary whether it may drop it.
    PgNotify { epoch: u64, pg: PgId, info: PgInfo },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Applied,
    Missing,
    Infos(Vec<(PgId, PgInfo)>),
    Log(Option<Vec<LogEntry>>),
    Scan {
        objects: Vec<ScanItem>,
        more: bool,
    },
    Piece(ObjectPiece),
    Absent,
    /// The primary's view of a placement group ([`PeerRequest::PgNotify`]).
    PgStatus {
        state: PgState,
        last_update: u64,
    },
}
