//! The replicated state machine: everything raft agrees on, kept in memory and rebuilt on restart
//! from the latest snapshot plus the log after it.
//!
//! Applying is deterministic: a command's outcome depends only on the state and the entry (the
//! proposer's clock travels in the entry as `at_ms`), and a rejected command changes nothing.
//! Every change bumps the map epoch. One module per command family: [`pool`], [`osd`],
//! [`members`]; a new family (namespace, volumes, users) adds its fields to [`State`], a module
//! here, and its arms in [`State::apply`].

pub mod iscsi;
pub mod members;
pub mod migrate;
pub mod namespace;
pub mod osd;
pub mod pool;
pub mod user;
pub mod volume;

use crate::error::MetaError;
use cairn_proto::iscsi::IscsiConfig;
use cairn_proto::msg::{MetaCommand, MetaRead, MetaResponse, MetaResult};
use cairn_proto::user::UserDb;
use cairn_proto::volume::VolumeInfo;
use cairn_proto::{ClusterMap, NodeId};
use namespace::{Namespace, NamespaceV4};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Version byte in front of every encoded snapshot image and proposal. 2: the state gained S3
/// users and bucket policies, and volumes their backing (replicated or nvdisk). 3: the map gained
/// file moves and the state the migration queue. 4: file moves gained their owner, the map its
/// placement epoch and the state the migration totals. 5: the namespace gained lock waiters
/// and orphans (files removed while open). Version 2, 3 and 4 images are read and converted
/// ([`StateV2`], [`StateV3`], [`StateV4`]); version 2 to 4 proposals decode unchanged
/// (commands were only added, and codec 3's migration steps keep their places as
/// `MigrateCommand::Legacy*`). Version 1 data is refused.
const CODEC_VERSION: u8 = 5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The cluster map (its `meta_leader` is never set here: it is not replicated).
    pub map: ClusterMap,
    /// Pool ids are never reused, so objects of a deleted pool cannot reappear in a new one.
    pub next_pool: u32,
    /// Block volumes by name; ids are never reused (they name the volume's objects).
    pub volumes: BTreeMap<String, VolumeInfo>,
    pub next_volume: u64,
    /// iSCSI targets, LUN mappings, CHAP secrets and persistent reservations.
    pub iscsi: IscsiConfig,
    /// The uniform namespace (files, directories, symlinks) that FUSE, NFS and S3 share.
    pub ns: Namespace,
    /// S3 users, access keys and bucket policies.
    pub users: UserDb,
    /// Directories whose pin changed and whose files have not been swept since (see
    /// [`migrate`]).
    pub migration_queue: BTreeSet<cairn_proto::fs::Ino>,
    /// Files switched to another pool since the cluster began, and their bytes.
    pub files_moved: u64,
    pub bytes_moved: u64,
}

/// The state as codec version 4 wrote it: the namespace without lock waiters and orphans.
#[derive(Deserialize)]
struct StateV4 {
    map: ClusterMap,
    next_pool: u32,
    volumes: BTreeMap<String, VolumeInfo>,
    next_volume: u64,
    iscsi: IscsiConfig,
    ns: NamespaceV4,
    users: UserDb,
    migration_queue: BTreeSet<cairn_proto::fs::Ino>,
    files_moved: u64,
    bytes_moved: u64,
}

impl From<StateV4> for State {
    fn from(s: StateV4) -> State {
        State {
            map: s.map,
            next_pool: s.next_pool,
            volumes: s.volumes,
            next_volume: s.next_volume,
            iscsi: s.iscsi,
            ns: s.ns.into(),
            users: s.users,
            migration_queue: s.migration_queue,
            files_moved: s.files_moved,
            bytes_moved: s.bytes_moved,
        }
    }
}

/// The state as codec version 3 wrote it: moves without owners, the map without its
/// placement epoch, no migration totals.
#[derive(Deserialize)]
struct StateV3 {
    map: MapV3,
    next_pool: u32,
    volumes: BTreeMap<String, VolumeInfo>,
    next_volume: u64,
    iscsi: IscsiConfig,
    ns: NamespaceV4,
    users: UserDb,
    migration_queue: BTreeSet<cairn_proto::fs::Ino>,
}

#[derive(Deserialize)]
struct MapV3 {
    epoch: u64,
    osds: BTreeMap<cairn_proto::OsdId, cairn_proto::map::OsdInfo>,
    pools: BTreeMap<cairn_proto::PoolId, cairn_proto::Pool>,
    meta_members: BTreeMap<NodeId, String>,
    meta_leader: Option<NodeId>,
    moving: BTreeMap<u64, FileMoveV3>,
}

#[derive(Deserialize)]
struct FileMoveV3 {
    from: cairn_proto::PoolId,
    to: cairn_proto::PoolId,
    expect: Option<cairn_proto::PoolId>,
    phase: cairn_proto::map::MovePhase,
    since_ms: u64,
}

impl From<StateV3> for State {
    fn from(s: StateV3) -> State {
        let m = s.map;
        State {
            map: ClusterMap {
                epoch: m.epoch,
                // Unknown: every placement group peers once more after the upgrade.
                placement_epoch: m.epoch,
                osds: m.osds,
                pools: m.pools,
                meta_members: m.meta_members,
                meta_leader: m.meta_leader,
                moving: m
                    .moving
                    .into_iter()
                    .map(|(ino, f)| {
                        let mv = cairn_proto::map::FileMove {
                            from: f.from,
                            to: f.to,
                            expect: f.expect,
                            phase: f.phase,
                            since_ms: f.since_ms,
                            owner: 0,
                        };
                        (ino, mv)
                    })
                    .collect(),
            },
            next_pool: s.next_pool,
            volumes: s.volumes,
            next_volume: s.next_volume,
            iscsi: s.iscsi,
            ns: s.ns.into(),
            users: s.users,
            migration_queue: s.migration_queue,
            files_moved: 0,
            bytes_moved: 0,
        }
    }
}

/// The state as codec version 2 wrote it: the map without file moves, no migration queue.
#[derive(Deserialize)]
struct StateV2 {
    map: MapV2,
    next_pool: u32,
    volumes: BTreeMap<String, VolumeInfo>,
    next_volume: u64,
    iscsi: IscsiConfig,
    ns: NamespaceV4,
    users: UserDb,
}

#[derive(Deserialize)]
struct MapV2 {
    epoch: u64,
    osds: BTreeMap<cairn_proto::OsdId, cairn_proto::map::OsdInfo>,
    pools: BTreeMap<cairn_proto::PoolId, cairn_proto::Pool>,
    meta_members: BTreeMap<NodeId, String>,
    meta_leader: Option<NodeId>,
}

impl From<StateV2> for State {
    fn from(s: StateV2) -> State {
        State {
            map: ClusterMap {
                epoch: s.map.epoch,
                placement_epoch: s.map.epoch,
                osds: s.map.osds,
                pools: s.map.pools,
                meta_members: s.map.meta_members,
                meta_leader: s.map.meta_leader,
                moving: BTreeMap::new(),
            },
            next_pool: s.next_pool,
            volumes: s.volumes,
            next_volume: s.next_volume,
            iscsi: s.iscsi,
            ns: s.ns.into(),
            users: s.users,
            migration_queue: BTreeSet::new(),
            files_moved: 0,
            bytes_moved: 0,
        }
    }
}

/// What a normal raft entry carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposer's wall clock (Unix milliseconds), so every replica records the same times.
    pub at_ms: u64,
    pub cmd: MetaCommand,
}

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        versioned(self)
    }

    pub fn decode(b: &[u8]) -> Result<Proposal, String> {
        match b.split_first() {
            // Versions 3 to 5 only added commands: older proposals read the same.
            Some((2..=4, rest)) => bincode::deserialize(rest).map_err(|e| e.to_string()),
            _ => unversioned(b),
        }
    }
}

fn versioned<T: Serialize>(x: &T) -> Vec<u8> {
    let mut out = vec![CODEC_VERSION];
    bincode::serialize_into(&mut out, x).expect("in-memory bincode encoding cannot fail");
    out
}

fn unversioned<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    match b.split_first() {
        Some((&CODEC_VERSION, rest)) => bincode::deserialize(rest).map_err(|e| e.to_string()),
        Some((v, _)) if *v < CODEC_VERSION => Err(format!(
            "codec version {v} was written by an older cairn and is not migrated (this one reads {CODEC_VERSION})"
        )),
        Some((v, _)) => Err(format!("unknown codec version {v}")),
        None => Err("empty".into()),
    }
}

impl State {
    /// The state a new cluster starts from: its initial members and epoch 1.
    pub fn bootstrap(members: &BTreeMap<NodeId, String>) -> State {
        State {
            map: ClusterMap {
                epoch: 1,
                meta_members: members.clone(),
                ..ClusterMap::default()
            },
            next_pool: 1,
            volumes: BTreeMap::new(),
            next_volume: 0,
            iscsi: IscsiConfig::default(),
            // Time 0, not the clock: every bootstrapping replica must build the same state.
            ns: Namespace::new(0),
            users: UserDb::default(),
            migration_queue: BTreeSet::new(),
            files_moved: 0,
            bytes_moved: 0,
        }
    }

    /// Answer a read against the applied state.
    pub fn read(&self, q: &MetaRead) -> Result<MetaResponse, MetaError> {
        match q {
            MetaRead::Volumes => Ok(MetaResponse::Volumes(
                self.volumes.values().cloned().collect(),
            )),
            MetaRead::Volume { name } => self
                .volumes
                .get(name)
                .cloned()
                .map(MetaResponse::Volume)
                .ok_or_else(|| MetaError::NotFound {
                    kind: "volume",
                    name: name.clone(),
                }),
            MetaRead::Iscsi => Ok(MetaResponse::Iscsi(self.iscsi.clone())),
            MetaRead::Ns(q) => self
                .ns
                .query(q)
                .map(MetaResponse::Ns)
                .map_err(MetaError::Fs),
            MetaRead::Users => Ok(MetaResponse::Users(self.users.clone())),
            MetaRead::Migrations => Ok(MetaResponse::Migrations(migrate::status(self))),
        }
    }

    /// The snapshot image.
    pub fn encode(&self) -> Vec<u8> {
        versioned(self)
    }

    pub fn decode(b: &[u8]) -> Result<State, MetaError> {
        let r = match b.split_first() {
            Some((2, rest)) => bincode::deserialize::<StateV2>(rest)
                .map(State::from)
                .map_err(|e| e.to_string()),
            Some((3, rest)) => bincode::deserialize::<StateV3>(rest)
                .map(State::from)
                .map_err(|e| e.to_string()),
            Some((4, rest)) => bincode::deserialize::<StateV4>(rest)
                .map(State::from)
                .map_err(|e| e.to_string()),
            _ => unversioned(b),
        };
        r.map_err(|e| MetaError::corrupt("M/snap_data", e))
    }

    /// Apply one command. On error nothing has changed.
    pub fn apply(&mut self, cmd: &MetaCommand, at_ms: u64) -> Result<MetaResult, MetaError> {
        validate(cmd)?;
        let placement = !matches!(cmd, MetaCommand::Migrate(_));
        let (result, changed) = match cmd {
            MetaCommand::CreatePool {
                name,
                size,
                min_size,
                pg_num,
                mode,
                failure_domain,
            } => pool::create(
                self,
                pool::NewPool {
                    name,
                    size: *size,
                    min_size: *min_size,
                    pg_num: *pg_num,
                    mode: *mode,
                    failure_domain: *failure_domain,
                },
            )?,
            MetaCommand::DeletePool { name } => pool::delete(self, name)?,
            MetaCommand::OsdBoot {
                id,
                addr,
                host,
                weight,
                capacity,
            } => osd::boot(self, *id, addr, host, *weight, *capacity)?,
            MetaCommand::SetOsdState { id, up, in_cluster } => {
                osd::set_state(self, *id, *up, *in_cluster, at_ms)?
            }
            MetaCommand::SetOsdWeight { id, weight } => osd::set_weight(self, *id, *weight)?,
            // Volumes, iSCSI configuration and the namespace are not part of the cluster map:
            // they do not bump its epoch (OSDs and clients need not refetch the map for them).
            MetaCommand::CreateVolume {
                name,
                size,
                block_size,
                object_size,
                pool,
            } => {
                let v = volume::NewVolume {
                    name,
                    size: *size,
                    block_size: *block_size,
                    object_size: *object_size,
                    pool,
                };
                (volume::create(self, v, at_ms)?, false)
            }
            MetaCommand::ResizeVolume { name, size } => (volume::resize(self, name, *size)?, false),
            MetaCommand::DeleteVolume { name } => (volume::delete(self, name)?, false),
            MetaCommand::Iscsi(c) => (iscsi::apply(self, c)?, false),
            MetaCommand::Ns(op) => {
                let now_ns = i64::try_from(at_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000);
                let r = self.ns.apply(op, now_ns).map_err(MetaError::Fs)?;
                migrate::note_pins(self, op);
                (MetaResult::Ns(r), false)
            }
            MetaCommand::User(c) => (user::apply(self, c, at_ms)?, false),
            MetaCommand::CreateNvdiskVolume {
                name,
                size,
                block_size,
                gateway,
                mode,
            } => {
                let v = volume::NewNvdiskVolume {
                    name,
                    size: *size,
                    block_size: *block_size,
                    gateway,
                    mode: *mode,
                };
                (volume::create_nvdisk(self, v, at_ms)?, false)
            }
            MetaCommand::Migrate(c) => migrate::apply(self, c, at_ms)?,
        };
        if changed {
            self.map.epoch += 1;
            if placement {
                self.map.placement_epoch = self.map.epoch;
            }
        }
        Ok(result)
    }
}

/// Checks that need no state, run before proposing (so bad commands never reach the log) and
/// again when applying.
pub fn validate(cmd: &MetaCommand) -> Result<(), MetaError> {
    match cmd {
        MetaCommand::CreatePool {
            name,
            size,
            min_size,
            pg_num,
            mode,
            ..
        } => pool::validate(name, *size, *min_size, *pg_num, *mode),
        MetaCommand::DeletePool { name } => pool::validate_name(name),
        MetaCommand::OsdBoot { addr, weight, .. } => {
            if addr.is_empty() {
                return Err(MetaError::invalid("osd boot needs the OSD's address"));
            }
            osd::validate_weight(*weight)
        }
        MetaCommand::SetOsdState { .. } => Ok(()),
        MetaCommand::SetOsdWeight { weight, .. } => osd::validate_weight(*weight),
        MetaCommand::CreateVolume {
            name,
            size,
            block_size,
            object_size,
            pool,
        } => volume::validate(&volume::NewVolume {
            name,
            size: *size,
            block_size: *block_size,
            object_size: *object_size,
            pool,
        }),
        MetaCommand::ResizeVolume { .. }
        | MetaCommand::DeleteVolume { .. }
        | MetaCommand::Ns(_) => Ok(()),
        MetaCommand::Iscsi(c) => iscsi::validate(c),
        MetaCommand::User(c) => user::validate(c),
        MetaCommand::CreateNvdiskVolume {
            name,
            size,
            block_size,
            gateway,
            ..
        } => volume::validate_nvdisk(name, *size, *block_size, gateway),
        MetaCommand::Migrate(c) => migrate::validate(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::map::FailureDomain;
    use cairn_proto::{OsdId, WriteMode};

    fn pool(name: &str, size: u8, min_size: u8, pg_num: u32) -> MetaCommand {
        MetaCommand::CreatePool {
            name: name.into(),
            size,
            min_size,
            pg_num,
            mode: WriteMode::Sync,
            failure_domain: FailureDomain::Osd,
        }
    }

    fn boot(id: Option<u32>, addr: &str) -> MetaCommand {
        MetaCommand::OsdBoot {
            id: id.map(OsdId),
            addr: addr.into(),
            host: "h".into(),
            weight: 1.0,
            capacity: 100,
        }
    }

    fn fresh() -> State {
        State::bootstrap(&BTreeMap::from([(1, "a:1".to_string())]))
    }

    #[test]
    fn snapshot_image_round_trips_and_rejects_garbage() {
        let mut s = fresh();
        s.apply(&pool("p", 3, 2, 64), 5).unwrap();
        s.apply(&boot(None, "o:1"), 5).unwrap();
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        assert!(State::decode(b"").is_err());
        assert!(State::decode(&[9, 1, 2]).is_err());
        let mut img = s.encode();
        img.truncate(img.len() / 2);
        assert!(State::decode(&img).is_err());
        let p = Proposal {
            at_ms: 7,
            cmd: pool("q", 1, 1, 1),
        };
        assert_eq!(Proposal::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn the_purge_queue_survives_a_snapshot() {
        use cairn_proto::fs::{FileKind, NsOp, NsQuery, NsReply, ROOT_INO};
        let mut s = fresh();
        let ns = |op| MetaCommand::Ns(op);
        for name in ["a", "b"] {
            let create = NsOp::Create {
                parent: ROOT_INO,
                name: name.into(),
                kind: FileKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                target: None,
                exclusive: true,
            };
            s.apply(&ns(create), 5).unwrap();
            let unlink = NsOp::Unlink {
                parent: ROOT_INO,
                name: name.into(),
            };
            s.apply(&ns(unlink), 6).unwrap();
        }
        let queued = |s: &State| match s.read(&MetaRead::Ns(NsQuery::Purgeable { limit: 10 })) {
            Ok(MetaResponse::Ns(NsReply::Purgeable(files))) => {
                files.iter().map(|f| f.ino).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(queued(&s).len(), 2);
        let mut back = State::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        assert_eq!(queued(&back), queued(&s));
        // The restored replica takes files off the queue exactly like the original.
        let first = queued(&s)[0];
        let purged = ns(NsOp::Purged { inos: vec![first] });
        assert_eq!(
            back.apply(&purged, 7).unwrap(),
            s.apply(&purged, 7).unwrap()
        );
        assert_eq!(back, s);
        assert_eq!(queued(&back).len(), 1);
    }

    #[test]
    fn version_2_images_and_proposals_are_read() {
        let mut s = fresh();
        s.apply(&pool("p", 3, 2, 64), 5).unwrap();
        s.apply(&boot(None, "o:1"), 5).unwrap();
        // What version 2 wrote: the same fields without the map's moves and the queue.
        let m = &s.map;
        let v2 = (
            (m.epoch, &m.osds, &m.pools, &m.meta_members, &m.meta_leader),
            s.next_pool,
            &s.volumes,
            s.next_volume,
            &s.iscsi,
            s.ns.as_v4(),
            &s.users,
        );
        let mut img = vec![2u8];
        bincode::serialize_into(&mut img, &v2).unwrap();
        assert_eq!(State::decode(&img).unwrap(), s);
        let p = Proposal {
            at_ms: 7,
            cmd: pool("q", 1, 1, 1),
        };
        let mut old = p.encode();
        old[0] = 2;
        assert_eq!(Proposal::decode(&old).unwrap(), p);
        old[0] = 1;
        assert!(Proposal::decode(&old).is_err());
    }

    #[test]
    fn version_3_and_4_images_and_migration_steps_are_read() {
        use cairn_proto::map::{FileMove, MovePhase};
        use cairn_proto::msg::{MigrateCommand, MigrateFile};
        use cairn_proto::PoolId;
        let mut s = fresh();
        s.apply(&pool("p", 3, 2, 64), 5).unwrap();
        s.apply(&boot(None, "o:1"), 5).unwrap();
        s.migration_queue.insert(9);
        let mv = FileMove {
            from: PoolId(1),
            to: PoolId(2),
            expect: None,
            phase: MovePhase::Copying,
            since_ms: 77,
            owner: 0,
        };
        s.map.moving.insert(12, mv);
        // What version 3 wrote: moves without owners, no placement epoch or totals.
        let m = &s.map;
        let moves: BTreeMap<u64, _> = m
            .moving
            .iter()
            .map(|(i, f)| (*i, (f.from, f.to, f.expect, f.phase, f.since_ms)))
            .collect();
        let v3 = (
            (
                m.epoch,
                &m.osds,
                &m.pools,
                &m.meta_members,
                &m.meta_leader,
                &moves,
            ),
            s.next_pool,
            &s.volumes,
            s.next_volume,
            &s.iscsi,
            s.ns.as_v4(),
            (&s.users, &s.migration_queue),
        );
        let mut img = vec![3u8];
        bincode::serialize_into(&mut img, &v3).unwrap();
        let got = State::decode(&img).unwrap();
        assert_eq!(got.map.placement_epoch, s.map.epoch);
        assert_eq!(got, s);
        // What version 4 wrote: the namespace without waiters and orphans.
        s.files_moved = 3;
        let v4 = (
            &s.map,
            s.next_pool,
            &s.volumes,
            s.next_volume,
            &s.iscsi,
            s.ns.as_v4(),
            (&s.users, &s.migration_queue, s.files_moved, s.bytes_moved),
        );
        let mut img = vec![4u8];
        bincode::serialize_into(&mut img, &v4).unwrap();
        assert_eq!(State::decode(&img).unwrap(), s);
        // Codec 3's Begin and Switch are the first two migration steps.
        let begin = MigrateFile {
            ino: 12,
            expect: None,
            from: PoolId(1),
            to: PoolId(2),
        };
        let legacy = (7u64, 12u32, 0u32, (vec![begin],));
        let mut old = vec![3u8];
        bincode::serialize_into(&mut old, &legacy).unwrap();
        // 12 is `MetaCommand::Migrate`'s place; 0 `Begin`'s in codec 3.
        let p = Proposal::decode(&old).unwrap();
        assert_eq!(p.at_ms, 7);
        assert_eq!(
            p.cmd,
            MetaCommand::Migrate(MigrateCommand::LegacyBegin { files: vec![begin] })
        );
    }

    #[test]
    fn pools_validate_and_never_reuse_ids() {
        let mut s = fresh();
        for bad in [
            pool("p", 0, 0, 8),
            pool("p", 2, 3, 8),
            pool("p", 2, 0, 8),
            pool("p", 2, 1, 0),
            pool("p", 2, 1, 65537),
            pool("", 2, 1, 8),
        ] {
            let before = s.clone();
            assert!(
                matches!(s.apply(&bad, 1), Err(MetaError::Invalid { .. })),
                "{bad:?}"
            );
            assert_eq!(s, before);
        }
        let e0 = s.map.epoch;
        let Ok(MetaResult::Pool(a)) = s.apply(&pool("p", 3, 2, 65536), 1) else {
            panic!()
        };
        assert_eq!(s.map.epoch, e0 + 1);
        assert!(matches!(
            s.apply(&pool("p", 1, 1, 1), 1),
            Err(MetaError::Exists { kind: "pool", .. })
        ));
        s.apply(&MetaCommand::DeletePool { name: "p".into() }, 1)
            .unwrap();
        assert!(s.map.pools.is_empty());
        let Ok(MetaResult::Pool(b)) = s.apply(&pool("p", 3, 2, 8), 1) else {
            panic!()
        };
        assert_ne!(a, b);
        assert!(matches!(
            s.apply(
                &MetaCommand::DeletePool {
                    name: "nope".into()
                },
                1
            ),
            Err(MetaError::NotFound { kind: "pool", .. })
        ));
        assert_eq!(s.map.epoch, e0 + 3);
    }

    #[test]
    fn osd_boot_assigns_the_next_free_id_and_state_changes_bump_the_epoch() {
        let mut s = fresh();
        assert_eq!(
            s.apply(&boot(None, "o:0"), 1).unwrap(),
            MetaResult::Osd(OsdId(0))
        );
        assert_eq!(
            s.apply(&boot(Some(2), "o:2"), 1).unwrap(),
            MetaResult::Osd(OsdId(2))
        );
        assert_eq!(
            s.apply(&boot(None, "o:1"), 1).unwrap(),
            MetaResult::Osd(OsdId(1))
        );
        assert_eq!(
            s.apply(&boot(None, "o:3"), 1).unwrap(),
            MetaResult::Osd(OsdId(3))
        );
        let e = s.map.epoch;
        let down = MetaCommand::SetOsdState {
            id: OsdId(1),
            up: Some(false),
            in_cluster: None,
        };
        s.apply(&down, 1234).unwrap();
        let o = &s.map.osds[&OsdId(1)];
        assert!(!o.up && o.in_cluster);
        assert_eq!(o.down_since_ms, Some(1234));
        assert_eq!(s.map.epoch, e + 1);
        // No change, no new epoch.
        s.apply(&down, 9999).unwrap();
        assert_eq!(s.map.epoch, e + 1);
        assert_eq!(s.map.osds[&OsdId(1)].down_since_ms, Some(1234));
        // Rebooting marks it up and in again and takes the new address.
        s.apply(
            &MetaCommand::SetOsdState {
                id: OsdId(1),
                up: None,
                in_cluster: Some(false),
            },
            2000,
        )
        .unwrap();
        s.apply(&boot(Some(1), "o:11"), 3000).unwrap();
        let o = &s.map.osds[&OsdId(1)];
        assert!(o.up && o.in_cluster && o.down_since_ms.is_none());
        assert_eq!(o.addr, "o:11");
        assert!(matches!(
            s.apply(
                &MetaCommand::SetOsdWeight {
                    id: OsdId(1),
                    weight: f64::NAN
                },
                1
            ),
            Err(MetaError::Invalid { .. })
        ));
        assert!(matches!(
            s.apply(
                &MetaCommand::SetOsdWeight {
                    id: OsdId(9),
                    weight: 1.0
                },
                1
            ),
            Err(MetaError::NotFound { kind: "osd", .. })
        ));
        let e = s.map.epoch;
        s.apply(
            &MetaCommand::SetOsdWeight {
                id: OsdId(1),
                weight: 2.5,
            },
            1,
        )
        .unwrap();
        assert_eq!(s.map.osds[&OsdId(1)].weight, 2.5);
        assert_eq!(s.map.epoch, e + 1);
    }
}
