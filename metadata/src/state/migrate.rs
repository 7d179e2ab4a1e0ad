//! Moving file data between pools after a directory is pinned (`cairn fs pin`).
//!
//! The metadata service keeps two things; the data itself is copied by a migrator (a client,
//! run by a gateway) straight between OSDs:
//! - the queue of directories whose pin changed and whose subtrees have not been swept since
//!   (a pin puts its directory on it, [`MigrateCommand::Swept`] takes it off);
//! - the moves under way, in the cluster map ([`ClusterMap::moving`]), so that OSDs enforce
//!   them: while a file's data is copied its old objects cannot change, and once its inode names
//!   the new pool the old objects can only be deleted. Each step changes the map's epoch, and
//!   an OSD refuses clients whose epoch differs from its own, so no client can act on a map
//!   that does not show the step.
//!
//! [`ClusterMap::moving`]: cairn_proto::ClusterMap::moving

use super::State;
use crate::error::MetaError;
use cairn_proto::fs::{Ino, NsOp};
use cairn_proto::map::{FileMove, MovePhase};
use cairn_proto::msg::{MetaResult, MigrateCommand, MigrationStatus};

/// Most files one [`MigrateCommand::Begin`] or [`MigrateCommand::End`] names: bounds the map.
pub const MAX_FILES_PER_STEP: usize = 1024;

/// Apply one step. Returns the result and whether the map changed (a new epoch).
pub fn apply(
    s: &mut State,
    cmd: &MigrateCommand,
    at_ms: u64,
) -> Result<(MetaResult, bool), MetaError> {
    match cmd {
        MigrateCommand::Begin { files } => {
            let mut started = Vec::new();
            for f in files {
                let ok = !s.map.moving.contains_key(&f.ino)
                    && f.from != f.to
                    && s.map.pools.contains_key(&f.from)
                    && s.map.pools.contains_key(&f.to)
                    && s.ns.file_attr(f.ino).is_some_and(|a| a.pool == f.expect);
                if ok {
                    s.map.moving.insert(
                        f.ino,
                        FileMove {
                            from: f.from,
                            to: f.to,
                            expect: f.expect,
                            phase: MovePhase::Copying,
                            since_ms: at_ms,
                        },
                    );
                    started.push(f.ino);
                }
            }
            let changed = !started.is_empty();
            Ok((MetaResult::Migrating(started), changed))
        }
        MigrateCommand::Switch { ino } => {
            let Some(m) = s.map.moving.get(ino).copied() else {
                return Err(MetaError::NotFound {
                    kind: "file move",
                    name: ino.to_string(),
                });
            };
            if m.phase != MovePhase::Copying {
                return Err(MetaError::invalid(format!(
                    "the move of file {ino} is past copying"
                )));
            }
            let switched = s.map.pools.contains_key(&m.to)
                && s.ns.file_attr(*ino).is_some_and(|a| a.pool == m.expect)
                && s.ns.set_file_pool(*ino, Some(m.to));
            s.map.moving.insert(
                *ino,
                FileMove {
                    phase: MovePhase::Moved,
                    since_ms: at_ms,
                    ..m
                },
            );
            Ok((MetaResult::Switched(switched), true))
        }
        MigrateCommand::End { inos } => {
            let mut changed = false;
            for ino in inos {
                changed |= s.map.moving.remove(ino).is_some();
            }
            Ok((MetaResult::Done, changed))
        }
        MigrateCommand::Swept { dir, pin } => {
            if !s.ns.is_dir(*dir) || s.ns.dir_pin(*dir) == *pin {
                s.migration_queue.remove(dir);
            }
            Ok((MetaResult::Done, false))
        }
    }
}

pub fn validate(cmd: &MigrateCommand) -> Result<(), MetaError> {
    let n = match cmd {
        MigrateCommand::Begin { files } => files.len(),
        MigrateCommand::End { inos } => inos.len(),
        MigrateCommand::Switch { .. } | MigrateCommand::Swept { .. } => 0,
    };
    if n > MAX_FILES_PER_STEP {
        return Err(MetaError::invalid(format!(
            "{n} files in one migration step (at most {MAX_FILES_PER_STEP})"
        )));
    }
    Ok(())
}

/// Queue the directories a successful namespace op pinned or unpinned.
pub fn note_pins(s: &mut State, op: &NsOp) {
    match op {
        NsOp::Pin { ino, .. } => {
            s.migration_queue.insert(*ino);
        }
        NsOp::Batch(ops) => ops.iter().for_each(|o| note_pins(s, o)),
        _ => {}
    }
}

pub fn status(s: &State) -> MigrationStatus {
    MigrationStatus {
        queued_dirs: s.migration_queue.iter().copied().collect::<Vec<Ino>>(),
        moving: s.map.moving.iter().map(|(i, m)| (*i, *m)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::fs::{FileKind, NsResult};
    use cairn_proto::map::FailureDomain;
    use cairn_proto::msg::{MetaCommand, MigrateFile};
    use cairn_proto::{PoolId, WriteMode};
    use std::collections::BTreeMap;

    fn state_with_pools() -> State {
        let mut s = State::bootstrap(&BTreeMap::from([(1, "a:1".to_string())]));
        for name in ["files", "fast"] {
            s.apply(
                &MetaCommand::CreatePool {
                    name: name.into(),
                    size: 1,
                    min_size: 1,
                    pg_num: 4,
                    mode: WriteMode::Sync,
                    failure_domain: FailureDomain::Osd,
                },
                1,
            )
            .unwrap();
        }
        s
    }

    fn create(s: &mut State, name: &str, kind: FileKind) -> u64 {
        let op = NsOp::Create {
            parent: cairn_proto::fs::ROOT_INO,
            name: name.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            target: None,
            exclusive: true,
        };
        match s.apply(&MetaCommand::Ns(op), 2).unwrap() {
            MetaResult::Ns(NsResult::Entry { attr, .. }) => attr.ino,
            r => panic!("{r:?}"),
        }
    }

    fn mig(s: &mut State, c: MigrateCommand) -> MetaResult {
        s.apply(&MetaCommand::Migrate(c), 10).unwrap()
    }

    #[test]
    fn a_move_begins_switches_and_ends_each_with_a_new_epoch() {
        let mut s = state_with_pools();
        let (files, fast) = (PoolId(1), PoolId(2));
        let f = create(&mut s, "f", FileKind::File);
        let g = create(&mut s, "g", FileKind::File);
        let d = create(&mut s, "d", FileKind::Dir);
        let e0 = s.map.epoch;
        let file = |ino, expect| MigrateFile {
            ino,
            expect,
            from: files,
            to: fast,
        };
        // A directory, a wrong expectation and an unknown inode do not start.
        let r = mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![
                    file(f, None),
                    file(g, Some(fast)),
                    file(d, None),
                    file(999, None),
                ],
            },
        );
        assert_eq!(r, MetaResult::Migrating(vec![f]));
        assert_eq!(s.map.epoch, e0 + 1);
        assert_eq!(s.map.moving[&f].phase, MovePhase::Copying);
        // Already moving: not again, and no new epoch.
        let r = mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![file(f, None)],
            },
        );
        assert_eq!(r, MetaResult::Migrating(vec![]));
        assert_eq!(s.map.epoch, e0 + 1);
        // OSDs refuse writes while copying, everything but deletes once moved.
        let oid = cairn_proto::Oid::for_piece(cairn_proto::PieceKind::File, f, 0);
        assert_eq!(s.map.moving_refuses(files, oid, false, false), Some(f));
        assert_eq!(s.map.moving_refuses(files, oid, true, false), None);
        assert_eq!(s.map.moving_refuses(fast, oid, false, false), None);
        assert_eq!(
            mig(&mut s, MigrateCommand::Switch { ino: f }),
            MetaResult::Switched(true)
        );
        assert_eq!(s.ns.file_attr(f).unwrap().pool, Some(fast));
        assert_eq!(s.map.epoch, e0 + 2);
        assert_eq!(s.map.moving_refuses(files, oid, true, false), Some(f));
        assert_eq!(s.map.moving_refuses(files, oid, false, true), None);
        // Switch twice is refused.
        assert!(s
            .apply(&MetaCommand::Migrate(MigrateCommand::Switch { ino: f }), 10)
            .is_err());
        mig(&mut s, MigrateCommand::End { inos: vec![f] });
        assert!(s.map.moving.is_empty());
        assert_eq!(s.map.epoch, e0 + 3);
    }

    #[test]
    fn a_file_unlinked_while_copying_does_not_switch() {
        let mut s = state_with_pools();
        let f = create(&mut s, "f", FileKind::File);
        let files = vec![MigrateFile {
            ino: f,
            expect: None,
            from: PoolId(1),
            to: PoolId(2),
        }];
        mig(&mut s, MigrateCommand::Begin { files });
        let unlink = NsOp::Unlink {
            parent: cairn_proto::fs::ROOT_INO,
            name: "f".into(),
        };
        s.apply(&MetaCommand::Ns(unlink), 3).unwrap();
        assert_eq!(
            mig(&mut s, MigrateCommand::Switch { ino: f }),
            MetaResult::Switched(false)
        );
        assert_eq!(s.map.moving[&f].phase, MovePhase::Moved);
    }

    #[test]
    fn pins_queue_their_directory_until_swept_with_the_same_pin() {
        let mut s = state_with_pools();
        let d = create(&mut s, "d", FileKind::Dir);
        let pin = |pool| MetaCommand::Ns(NsOp::Pin { ino: d, pool });
        s.apply(&pin(Some(PoolId(2))), 3).unwrap();
        assert_eq!(status(&s).queued_dirs, vec![d]);
        // Swept under the old pin (none): the new pin still waits.
        mig(&mut s, MigrateCommand::Swept { dir: d, pin: None });
        assert_eq!(status(&s).queued_dirs, vec![d]);
        mig(
            &mut s,
            MigrateCommand::Swept {
                dir: d,
                pin: Some(PoolId(2)),
            },
        );
        assert!(status(&s).queued_dirs.is_empty());
        // A failed pin queues nothing; a removed directory leaves the queue when swept.
        assert!(s
            .apply(
                &MetaCommand::Ns(NsOp::Pin {
                    ino: 999,
                    pool: None
                }),
                3
            )
            .is_err());
        assert!(status(&s).queued_dirs.is_empty());
        s.apply(&pin(None), 3).unwrap();
        let rmdir = NsOp::Rmdir {
            parent: cairn_proto::fs::ROOT_INO,
            name: "d".into(),
        };
        s.apply(&MetaCommand::Ns(rmdir), 3).unwrap();
        mig(
            &mut s,
            MigrateCommand::Swept {
                dir: d,
                pin: Some(PoolId(9)),
            },
        );
        assert!(status(&s).queued_dirs.is_empty());
    }

    #[test]
    fn oversized_steps_are_refused_before_the_log() {
        let inos = vec![1; MAX_FILES_PER_STEP + 1];
        assert!(validate(&MigrateCommand::End { inos }).is_err());
    }
}
