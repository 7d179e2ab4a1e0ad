//! Moving file data between pools after a directory is pinned (`cairn fs pin`).
//!
//! The metadata service keeps three things; the data itself is copied by a migrator (a client,
//! run by a gateway or by `cairn fs migrate`) straight between OSDs:
//! - the queue of directories whose pin changed and whose subtrees have not been swept since
//!   (a pin puts its directory on it, [`MigrateCommand::Swept`] takes it off);
//! - the moves under way, in the cluster map ([`ClusterMap::moving`]), so that OSDs enforce
//!   them: while a file's data is copied its old objects cannot change and only the move's
//!   owner can write the new ones; once its inode names the new pool the old objects can only
//!   be deleted. Each step changes the map's epoch, and an OSD refuses clients whose epoch
//!   differs from its own, so no client can act on a map that does not show the step;
//! - totals of what was moved, for progress.
//!
//! The invariant that keeps every byte: **an inode names the new pool only after its owner
//! copied and verified every object there** (`Switch` is the owner's, after its checks), and
//! only the owner can change the copy, which nobody else writes while the move is copying. A
//! migrator that lost its move (another claimed it) cannot change the copy nor switch the file.
//!
//! [`ClusterMap::moving`]: cairn_proto::ClusterMap::moving

use super::State;
use crate::error::MetaError;
use cairn_proto::fs::{Ino, NsOp};
use cairn_proto::map::{FileMove, MovePhase};
use cairn_proto::msg::{
    MetaResult, MigrateCommand, MigrateFile, MigrationStatus, SwitchFile, SwitchOutcome,
};

/// Most files one migration step names: bounds the map and each log entry.
pub const MAX_FILES_PER_STEP: usize = 1024;

/// Apply one step. Returns the result and whether the map changed (a new epoch).
pub fn apply(
    s: &mut State,
    cmd: &MigrateCommand,
    at_ms: u64,
) -> Result<(MetaResult, bool), MetaError> {
    Ok(match cmd {
        MigrateCommand::LegacyBegin { files } => begin(s, files, 0, at_ms),
        MigrateCommand::Begin { files, owner } => begin(s, files, *owner, at_ms),
        MigrateCommand::LegacySwitch { ino } => {
            let owner = s.map.moving.get(ino).map_or(0, |m| m.owner);
            switch(
                s,
                &[SwitchFile {
                    ino: *ino,
                    bytes: 0,
                }],
                owner,
                at_ms,
            )
        }
        MigrateCommand::Switch { files, owner } => switch(s, files, *owner, at_ms),
        MigrateCommand::Claim { inos, owner } => {
            let mut claimed = Vec::new();
            let mut changed = false;
            for ino in inos {
                if let Some(m) = s.map.moving.get_mut(ino) {
                    if m.phase == MovePhase::Copying {
                        if m.owner != *owner {
                            m.owner = *owner;
                            m.since_ms = at_ms;
                            changed = true;
                        }
                        claimed.push(*ino);
                    }
                }
            }
            (MetaResult::Migrating(claimed), changed)
        }
        MigrateCommand::Abort { inos, owner } => {
            let mut aborted = Vec::new();
            for ino in inos {
                let mine = s
                    .map
                    .moving
                    .get(ino)
                    .is_some_and(|m| m.phase == MovePhase::Copying && m.owner == *owner);
                if mine {
                    s.map.moving.remove(ino);
                    aborted.push(*ino);
                }
            }
            let changed = !aborted.is_empty();
            (MetaResult::Migrating(aborted), changed)
        }
        MigrateCommand::End { inos } => {
            let mut changed = false;
            for ino in inos {
                if s.map
                    .moving
                    .get(ino)
                    .is_some_and(|m| m.phase == MovePhase::Moved)
                {
                    s.map.moving.remove(ino);
                    changed = true;
                }
            }
            (MetaResult::Done, changed)
        }
        MigrateCommand::Swept { dir, pin } => {
            if !s.ns.is_dir(*dir) || s.ns.dir_pin(*dir) == *pin {
                s.migration_queue.remove(dir);
            }
            (MetaResult::Done, false)
        }
    })
}

fn begin(s: &mut State, files: &[MigrateFile], owner: u64, at_ms: u64) -> (MetaResult, bool) {
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
                    owner,
                },
            );
            started.push(f.ino);
        }
    }
    let changed = !started.is_empty();
    (MetaResult::Migrating(started), changed)
}

fn switch(s: &mut State, files: &[SwitchFile], owner: u64, at_ms: u64) -> (MetaResult, bool) {
    let mut out = Vec::with_capacity(files.len());
    let mut changed = false;
    for f in files {
        let outcome = match s.map.moving.get(&f.ino).copied() {
            Some(m) if m.owner != owner => SwitchOutcome::NotOwner,
            None => SwitchOutcome::NotOwner,
            // Sent again (a lost reply): answer what the first one did.
            Some(m) if m.phase == MovePhase::Moved => {
                if s.ns.file_attr(f.ino).is_some_and(|a| a.pool == Some(m.to)) {
                    SwitchOutcome::Switched
                } else {
                    SwitchOutcome::Gone
                }
            }
            Some(m) => {
                changed = true;
                let moved = FileMove {
                    phase: MovePhase::Moved,
                    since_ms: at_ms,
                    ..m
                };
                match s.ns.file_attr(f.ino).map(|a| a.pool) {
                    None => {
                        s.map.moving.insert(f.ino, moved);
                        SwitchOutcome::Gone
                    }
                    Some(pool)
                        if pool == m.expect
                            && s.map.pools.contains_key(&m.to)
                            && s.ns.set_file_pool(f.ino, Some(m.to)) =>
                    {
                        s.map.moving.insert(f.ino, moved);
                        s.files_moved += 1;
                        s.bytes_moved += f.bytes;
                        SwitchOutcome::Switched
                    }
                    Some(_) => {
                        s.map.moving.remove(&f.ino);
                        SwitchOutcome::Kept
                    }
                }
            }
        };
        out.push((f.ino, outcome));
    }
    (MetaResult::Switched(out), changed)
}

pub fn validate(cmd: &MigrateCommand) -> Result<(), MetaError> {
    let n = match cmd {
        MigrateCommand::LegacyBegin { files } | MigrateCommand::Begin { files, .. } => files.len(),
        MigrateCommand::Switch { files, .. } => files.len(),
        MigrateCommand::End { inos }
        | MigrateCommand::Claim { inos, .. }
        | MigrateCommand::Abort { inos, .. } => inos.len(),
        MigrateCommand::LegacySwitch { .. } | MigrateCommand::Swept { .. } => 0,
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
        files_moved: s.files_moved,
        bytes_moved: s.bytes_moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::fs::{FileKind, NsResult};
    use cairn_proto::map::{Access, FailureDomain, MoveFence, MoveRefusal};
    use cairn_proto::msg::{MetaCommand, MigrateFile};
    use cairn_proto::{Oid, PieceKind, PoolId, WriteMode};
    use std::collections::BTreeMap;

    const A: u64 = 0xA;
    const B: u64 = 0xB;

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

    fn file(ino: u64, expect: Option<PoolId>) -> MigrateFile {
        MigrateFile {
            ino,
            expect,
            from: PoolId(1),
            to: PoolId(2),
        }
    }

    fn switch(s: &mut State, ino: u64, owner: u64) -> SwitchOutcome {
        let files = vec![SwitchFile { ino, bytes: 100 }];
        match mig(s, MigrateCommand::Switch { files, owner }) {
            MetaResult::Switched(v) => {
                assert_eq!(v.len(), 1);
                v[0].1
            }
            r => panic!("{r:?}"),
        }
    }

    fn fence(ino: u64, owner: u64) -> Option<MoveFence> {
        Some(MoveFence { ino, owner })
    }

    #[test]
    fn a_move_begins_switches_and_ends_with_an_epoch_per_batch() {
        let mut s = state_with_pools();
        let (files, fast) = (PoolId(1), PoolId(2));
        let f = create(&mut s, "f", FileKind::File);
        let g = create(&mut s, "g", FileKind::File);
        let d = create(&mut s, "d", FileKind::Dir);
        let h = create(&mut s, "h", FileKind::File);
        let (e0, p0) = (s.map.epoch, s.map.placement_epoch);
        // A directory, a wrong expectation and an unknown inode do not start.
        let r = mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![
                    file(f, None),
                    file(g, Some(fast)),
                    file(d, None),
                    file(999, None),
                    file(h, None),
                ],
                owner: A,
            },
        );
        assert_eq!(r, MetaResult::Migrating(vec![f, h]));
        assert_eq!(s.map.epoch, e0 + 1);
        // Moves are not placement changes: the OSDs need not peer again.
        assert_eq!(s.map.placement_epoch, p0);
        assert!(s.map.same_interval(p0));
        assert_eq!(s.map.moving[&f].phase, MovePhase::Copying);
        assert_eq!(s.map.moving[&f].owner, A);
        // Already moving: not again, and no new epoch.
        let r = mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![file(f, None)],
                owner: B,
            },
        );
        assert_eq!(r, MetaResult::Migrating(vec![]));
        assert_eq!(s.map.epoch, e0 + 1);
        // One switch for the batch, one epoch.
        let files_sw = vec![
            SwitchFile { ino: f, bytes: 10 },
            SwitchFile { ino: h, bytes: 20 },
        ];
        let r = mig(
            &mut s,
            MigrateCommand::Switch {
                files: files_sw.clone(),
                owner: A,
            },
        );
        assert_eq!(
            r,
            MetaResult::Switched(vec![
                (f, SwitchOutcome::Switched),
                (h, SwitchOutcome::Switched)
            ])
        );
        assert_eq!(s.ns.file_attr(f).unwrap().pool, Some(fast));
        assert_eq!(s.map.epoch, e0 + 2);
        assert_eq!((status(&s).files_moved, status(&s).bytes_moved), (2, 30));
        // Sent again (a lost reply): the same answer, nothing changes.
        let again = mig(
            &mut s,
            MigrateCommand::Switch {
                files: files_sw,
                owner: A,
            },
        );
        assert_eq!(again, r);
        assert_eq!(s.map.epoch, e0 + 2);
        assert_eq!(status(&s).files_moved, 2);
        // Once moved, the old objects only take deletes; the new ones anything.
        let oid = Oid::for_piece(PieceKind::File, f, 0);
        assert_eq!(
            s.map.check_move(files, oid, None, Access::Read),
            Err(MoveRefusal::Moved { ino: f })
        );
        assert_eq!(s.map.check_move(files, oid, None, Access::Delete), Ok(()));
        assert_eq!(s.map.check_move(fast, oid, None, Access::Write), Ok(()));
        // The owner's fence is over too.
        assert_eq!(
            s.map.check_move(fast, oid, fence(f, A), Access::Write),
            Err(MoveRefusal::Fenced { ino: f })
        );
        mig(&mut s, MigrateCommand::End { inos: vec![f, h] });
        assert!(s.map.moving.is_empty());
        assert_eq!(s.map.epoch, e0 + 3);
    }

    #[test]
    fn only_the_owner_copies_and_switches_and_a_claim_fences_the_old_owner() {
        let mut s = state_with_pools();
        let (files, fast) = (PoolId(1), PoolId(2));
        let f = create(&mut s, "f", FileKind::File);
        let oid = Oid::for_piece(PieceKind::File, f, 3);
        let other = Oid::for_piece(PieceKind::File, f + 1, 0);
        mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![file(f, None)],
                owner: A,
            },
        );
        // Copying: clients read the old objects and nothing else; the copy is the owner's.
        let m = &s.map;
        assert_eq!(m.check_move(files, oid, None, Access::Read), Ok(()));
        for access in [Access::Write, Access::Delete] {
            assert_eq!(
                m.check_move(files, oid, None, access),
                Err(MoveRefusal::Moved { ino: f })
            );
        }
        for access in [Access::Read, Access::Write, Access::Delete] {
            assert_eq!(
                m.check_move(fast, oid, None, access),
                Err(MoveRefusal::Moved { ino: f })
            );
            assert_eq!(m.check_move(fast, oid, fence(f, A), access), Ok(()));
            assert_eq!(
                m.check_move(fast, oid, fence(f, B), access),
                Err(MoveRefusal::Fenced { ino: f })
            );
        }
        assert_eq!(m.check_move(files, oid, fence(f, A), Access::Read), Ok(()));
        assert_eq!(
            m.check_move(files, oid, fence(f, A), Access::Delete),
            Err(MoveRefusal::Fenced { ino: f })
        );
        // A fence covers its own file's objects only; other files are not affected.
        assert_eq!(
            m.check_move(fast, other, fence(f, A), Access::Write),
            Err(MoveRefusal::Fenced { ino: f })
        );
        assert_eq!(m.check_move(fast, other, None, Access::Write), Ok(()));
        // Another migrator cannot switch it, nor abort it.
        assert_eq!(switch(&mut s, f, B), SwitchOutcome::NotOwner);
        assert_eq!(
            mig(
                &mut s,
                MigrateCommand::Abort {
                    inos: vec![f],
                    owner: B
                }
            ),
            MetaResult::Migrating(vec![])
        );
        assert_eq!(s.ns.file_attr(f).unwrap().pool, None);
        // B takes it over (A lost the lock): a new epoch, and A is fenced off.
        let e = s.map.epoch;
        assert_eq!(
            mig(
                &mut s,
                MigrateCommand::Claim {
                    inos: vec![f, 999],
                    owner: B
                }
            ),
            MetaResult::Migrating(vec![f])
        );
        assert_eq!(s.map.epoch, e + 1);
        assert_eq!(
            s.map.check_move(fast, oid, fence(f, A), Access::Write),
            Err(MoveRefusal::Fenced { ino: f })
        );
        assert_eq!(
            s.map.check_move(fast, oid, fence(f, B), Access::Write),
            Ok(())
        );
        assert_eq!(switch(&mut s, f, A), SwitchOutcome::NotOwner);
        assert_eq!(s.ns.file_attr(f).unwrap().pool, None);
        assert_eq!(switch(&mut s, f, B), SwitchOutcome::Switched);
        assert_eq!(s.ns.file_attr(f).unwrap().pool, Some(fast));
        // Past copying: nobody claims it.
        assert_eq!(
            mig(
                &mut s,
                MigrateCommand::Claim {
                    inos: vec![f],
                    owner: A
                }
            ),
            MetaResult::Migrating(vec![])
        );
    }

    #[test]
    fn an_aborted_move_leaves_the_file_usable_where_it_was() {
        let mut s = state_with_pools();
        let f = create(&mut s, "f", FileKind::File);
        mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![file(f, None)],
                owner: A,
            },
        );
        // End does not end a copying move.
        mig(&mut s, MigrateCommand::End { inos: vec![f] });
        assert!(s.map.moving.contains_key(&f));
        let e = s.map.epoch;
        assert_eq!(
            mig(
                &mut s,
                MigrateCommand::Abort {
                    inos: vec![f],
                    owner: A
                }
            ),
            MetaResult::Migrating(vec![f])
        );
        assert!(s.map.moving.is_empty());
        assert_eq!(s.map.epoch, e + 1);
        let oid = Oid::for_piece(PieceKind::File, f, 0);
        assert_eq!(
            s.map.check_move(PoolId(1), oid, None, Access::Write),
            Ok(())
        );
        assert_eq!(s.ns.file_attr(f).unwrap().pool, None);
    }

    #[test]
    fn a_file_unlinked_while_copying_is_gone_and_a_lost_pool_keeps_it() {
        let mut s = state_with_pools();
        let f = create(&mut s, "f", FileKind::File);
        let g = create(&mut s, "g", FileKind::File);
        mig(
            &mut s,
            MigrateCommand::Begin {
                files: vec![file(f, None), file(g, None)],
                owner: A,
            },
        );
        let unlink = NsOp::Unlink {
            parent: cairn_proto::fs::ROOT_INO,
            name: "f".into(),
        };
        s.apply(&MetaCommand::Ns(unlink), 3).unwrap();
        assert_eq!(switch(&mut s, f, A), SwitchOutcome::Gone);
        assert_eq!(s.map.moving[&f].phase, MovePhase::Moved);
        s.apply(
            &MetaCommand::DeletePool {
                name: "fast".into(),
            },
            3,
        )
        .unwrap();
        assert_eq!(switch(&mut s, g, A), SwitchOutcome::Kept);
        assert!(!s.map.moving.contains_key(&g));
        assert_eq!(s.ns.file_attr(g).unwrap().pool, None);
        assert_eq!(status(&s).files_moved, 0);
    }

    #[test]
    fn codec_3_steps_replay_as_unowned_moves() {
        let mut s = state_with_pools();
        let f = create(&mut s, "f", FileKind::File);
        mig(
            &mut s,
            MigrateCommand::LegacyBegin {
                files: vec![file(f, None)],
            },
        );
        assert_eq!(s.map.moving[&f].owner, 0);
        assert_eq!(
            mig(&mut s, MigrateCommand::LegacySwitch { ino: f }),
            MetaResult::Switched(vec![(f, SwitchOutcome::Switched)])
        );
        assert_eq!(s.ns.file_attr(f).unwrap().pool, Some(PoolId(2)));
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
        assert!(validate(&MigrateCommand::End { inos: inos.clone() }).is_err());
        assert!(validate(&MigrateCommand::Claim { inos, owner: 1 }).is_err());
    }
}
