//! The cluster map: OSDs, pools and metadata members, versioned by an epoch that every change bumps.
//! The metadata service owns it; clients, OSDs and gateways cache a copy and refetch when a peer
//! tells them of a newer epoch.

use crate::ids::{NodeId, OsdId, PgId, PoolId};
use crate::placement;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a pool acknowledges writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WriteMode {
    /// Acknowledge when every up replica has the write durably.
    #[default]
    Sync,
    /// Acknowledge when the primary has it durably and at most `window` remote writes are outstanding.
    SemiSync { window: u32 },
    /// Acknowledge when the primary has it durably.
    Async,
}

/// The unit that replicas of one placement group must not share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FailureDomain {
    /// Replicas on distinct OSDs (the only choice on one machine).
    #[default]
    Osd,
    /// Replicas on distinct hosts where there are enough hosts.
    Host,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub id: PoolId,
    pub name: String,
    /// Number of copies of each object.
    pub size: u8,
    /// Fewest copies that must take a write for it to be acknowledged.
    pub min_size: u8,
    pub pg_num: u32,
    pub mode: WriteMode,
    pub failure_domain: FailureDomain,
}

impl Pool {
    /// The placement group of an object in this pool.
    pub fn pg_of(&self, oid: crate::ids::Oid) -> PgId {
        PgId::new(
            self.id,
            (oid.placement_hash() % u64::from(self.pg_num.max(1))) as u32,
        )
    }

    pub fn pgs(&self) -> impl Iterator<Item = PgId> + '_ {
        (0..self.pg_num).map(|s| PgId::new(self.id, s))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OsdInfo {
    pub id: OsdId,
    /// Address its RPC server listens on (`ip:port`).
    pub addr: String,
    /// Host name, for the host failure domain.
    pub host: String,
    /// Relative share of data (usually capacity in TiB).
    pub weight: f64,
    /// Bytes the OSD may hold, and bytes it holds (from its last heartbeat).
    pub capacity: u64,
    pub used: u64,
    /// Up: answering heartbeats. In: holding data (an out OSD's placement groups move elsewhere).
    pub up: bool,
    pub in_cluster: bool,
    /// Unix milliseconds when it went down (for the down→out timeout).
    pub down_since_ms: Option<u64>,
}

/// A placement group's state as its primary reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum PgState {
    /// Every OSD of its set is up and in step.
    ActiveClean,
    /// Serving, but fewer than `size` copies are up.
    Degraded,
    /// Serving while some members catch up.
    Recovering,
    /// Working out which member has the newest data; not serving writes.
    Peering,
    /// Not enough members up to serve (fewer than `min_size`).
    Inactive,
}

impl PgState {
    pub fn as_str(self) -> &'static str {
        match self {
            PgState::ActiveClean => "active+clean",
            PgState::Degraded => "active+degraded",
            PgState::Recovering => "active+recovering",
            PgState::Peering => "peering",
            PgState::Inactive => "inactive",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterMap {
    pub epoch: u64,
    /// The epoch of the last change to what placement depends on (the OSDs, their states and
    /// weights, the pools). Epochs after it changed only other things (file moves): an OSD that
    /// peered a placement group at or after it need not peer it again (see
    /// [`ClusterMap::same_interval`]).
    pub placement_epoch: u64,
    pub osds: BTreeMap<OsdId, OsdInfo>,
    pub pools: BTreeMap<PoolId, Pool>,
    /// Metadata replicas: raft node id → RPC address.
    pub meta_members: BTreeMap<NodeId, String>,
    /// The metadata leader when the map was read (not part of the replicated state).
    pub meta_leader: Option<NodeId>,
    /// Files whose data is moving between pools (after `cairn fs pin`), by inode. OSDs check
    /// every operation on their objects against it ([`ClusterMap::check_move`]), so no writer
    /// can change data behind the copy, no reader can read a copy being deleted, and only the
    /// migrator that owns a move can write its copy.
    pub moving: BTreeMap<u64, FileMove>,
}

/// One file's data moving from pool `from` to pool `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMove {
    pub from: PoolId,
    pub to: PoolId,
    /// The file's pool as its inode named it when the move began (`None`: the default file
    /// pool, which is `from`); the switch to `to` happens only if it is still that.
    pub expect: Option<PoolId>,
    pub phase: MovePhase,
    /// Unix milliseconds when the phase began.
    pub since_ms: u64,
    /// The migrator that may write the copy (its [`MoveFence::owner`]); another one takes the
    /// move over with `MigrateCommand::Claim`, a new epoch, after which the OSDs refuse the old
    /// owner's writes. 0: a move begun by a cairn that had no owners (anyone must claim it).
    pub owner: u64,
}

/// What a migrator's requests on the objects of a moving file carry: the move it acts for. An
/// OSD serves a fenced request only while the map shows that move copying and owned by `owner`
/// (see [`ClusterMap::check_move`]), so a migrator that lost its move (it paused past its lock
/// session and another took over, or the move ended) can no longer change the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveFence {
    pub ino: u64,
    pub owner: u64,
}

/// Why an OSD refuses an operation on a file's objects ([`ClusterMap::check_move`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveRefusal {
    /// The file's data is moving (or moved): the client reads the attributes again.
    Moved { ino: u64 },
    /// A fenced request whose move is not (or no longer) the map's copying move of that owner.
    Fenced { ino: u64 },
}

/// What an operation does to an object, for [`ClusterMap::check_move`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Delete,
    /// Any other change.
    Write,
}

/// Where a file move stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovePhase {
    /// The data is being copied: the old objects may be read, not changed.
    Copying,
    /// The inode names the new pool (or the file is gone): the old objects are being deleted and
    /// any other operation on them is refused, so a client still holding the old pool learns of
    /// the move.
    Moved,
}

impl FileMove {
    /// Whether an unfenced operation on an object of the moving file in the `from` pool is
    /// refused: while copying, everything but reads; once moved, everything but deletes.
    pub fn refuses(&self, access: Access) -> bool {
        match self.phase {
            MovePhase::Copying => access != Access::Read,
            MovePhase::Moved => access != Access::Delete,
        }
    }
}

impl ClusterMap {
    pub fn pool_by_name(&self, name: &str) -> Option<&Pool> {
        self.pools.values().find(|p| p.name == name)
    }

    /// The ordered OSD set of a placement group (up or not; see [`placement::pg_osds`]).
    pub fn pg_osds(&self, pg: PgId) -> Vec<OsdId> {
        match self.pools.get(&pg.pool) {
            Some(pool) => placement::pg_osds(self, pool, pg),
            None => Vec::new(),
        }
    }

    /// The members of the set that are up, in order; the first is the primary.
    pub fn pg_up(&self, pg: PgId) -> Vec<OsdId> {
        self.pg_osds(pg)
            .into_iter()
            .filter(|o| self.osds.get(o).is_some_and(|i| i.up))
            .collect()
    }

    pub fn pg_primary(&self, pg: PgId) -> Option<OsdId> {
        self.pg_up(pg).into_iter().next()
    }

    pub fn osd_addr(&self, id: OsdId) -> Option<&str> {
        self.osds.get(&id).map(|o| o.addr.as_str())
    }

    /// Whether an operation on `oid` in `pool` may run, as far as file moves go:
    /// - unfenced, on the objects of a moving file: in the `from` pool as
    ///   [`FileMove::refuses`] says; in the `to` pool nothing while the copy is made (no client
    ///   names that pool for the file yet: one that does acts on a stale layout);
    /// - fenced (a migrator's copy): only while the map shows that file's move copying and
    ///   owned by the fence's owner, on the file's own objects: reads in `from`, anything in
    ///   `to`.
    pub fn check_move(
        &self,
        pool: PoolId,
        oid: crate::ids::Oid,
        fence: Option<MoveFence>,
        access: Access,
    ) -> Result<(), MoveRefusal> {
        let piece = oid
            .piece()
            .filter(|(kind, _, _)| *kind == crate::ids::PieceKind::File)
            .map(|(_, ino, _)| ino);
        if let Some(f) = fence {
            let fenced = Err(MoveRefusal::Fenced { ino: f.ino });
            if piece != Some(f.ino) {
                return fenced;
            }
            return match self.moving.get(&f.ino) {
                Some(m) if m.phase == MovePhase::Copying && m.owner == f.owner => {
                    if pool == m.to || (pool == m.from && access == Access::Read) {
                        Ok(())
                    } else {
                        fenced
                    }
                }
                _ => fenced,
            };
        }
        let Some(ino) = piece else {
            return Ok(());
        };
        match self.moving.get(&ino) {
            Some(m) if m.from == pool && m.refuses(access) => Err(MoveRefusal::Moved { ino }),
            Some(m) if m.to == pool && m.phase == MovePhase::Copying => {
                Err(MoveRefusal::Moved { ino })
            }
            _ => Ok(()),
        }
    }

    /// Whether a placement group peered under a map of epoch `peered` is still in the same
    /// interval under this map: no placement change came after it, so the same members with
    /// the same primary served it throughout and nothing needs peering again.
    pub fn same_interval(&self, peered: u64) -> bool {
        peered <= self.epoch && self.placement_epoch <= peered
    }
}
