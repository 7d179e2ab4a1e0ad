//! Advisory byte-range locks and the lock sessions that hold them. Lock ops never go through a
//! [`Txn`]: each checks everything first and then changes the lock tables, so a failure changes
//! nothing.

use super::*;

impl Namespace {
    /// Lock and session ops (`None` for every other op).
    pub(super) fn lock_op(&mut self, op: &NsOp, now: i64) -> Option<Result<NsResult, FsError>> {
        Some(match op {
            NsOp::RenewSession { session, ttl_ms } => {
                self.expire_sessions(now);
                let until = now.saturating_add(i64::from(*ttl_ms) * 1_000_000);
                self.sessions.insert(*session, until);
                Ok(NsResult::Done)
            }
            NsOp::EndSession { session } => {
                self.sessions.remove(session);
                self.drop_dead_sessions();
                self.expire_sessions(now);
                Ok(NsResult::Done)
            }
            NsOp::SetLock { ino, lock, kind } => self.set_lock(*ino, lock, *kind, now),
            NsOp::WaitLock {
                ino,
                lock,
                kind,
                wait_ms,
            } => self.wait_lock(*ino, lock, *kind, *wait_ms, now),
            NsOp::StopWait { session, owner } => {
                self.waiting.remove(&(*session, *owner));
                self.expire_waits(now);
                Ok(NsResult::Done)
            }
            NsOp::TestLock { ino, lock, kind } => self
                .check_lock(*ino, lock)
                .map(|()| NsResult::LockTest(self.lock_conflict(*ino, lock, *kind, now))),
            _ => return None,
        })
    }

    pub(super) fn session_alive(&self, session: u64, now: i64) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|&until| until >= now)
    }

    pub(super) fn check_lock(&self, ino: Ino, lock: &LockSpec) -> Result<(), FsError> {
        self.inode(ino)?;
        if lock.start > lock.end {
            return Err(FsError::Invalid);
        }
        Ok(())
    }

    /// The first live lock of another owner on `ino` that overlaps `lock` and is incompatible
    /// with `kind`.
    pub(super) fn lock_conflict(
        &self,
        ino: Ino,
        lock: &LockSpec,
        kind: LockKind,
        now: i64,
    ) -> Option<HeldLock> {
        self.locks.get(&ino)?.iter().copied().find(|held| {
            (held.session, held.owner) != (lock.session, lock.owner)
                && held.start <= lock.end
                && lock.start <= held.end
                && (kind == LockKind::Exclusive || held.kind == LockKind::Exclusive)
                && self.session_alive(held.session, now)
        })
    }

    pub(super) fn set_lock(
        &mut self,
        ino: Ino,
        lock: &LockSpec,
        kind: Option<LockKind>,
        now: i64,
    ) -> Result<NsResult, FsError> {
        self.check_lock(ino, lock)?;
        if !self.session_alive(lock.session, now) {
            return Err(FsError::Stale);
        }
        if let Some(kind) = kind {
            if self.lock_conflict(ino, lock, kind, now).is_some() {
                return Err(FsError::WouldBlock);
            }
        }
        self.expire_sessions(now);
        let held = self.locks.entry(ino).or_default();
        // The owner's own locks on the range give way: those overlapping it are cut around it.
        let mut kept = Vec::with_capacity(held.len() + 2);
        for l in held.drain(..) {
            let mine = (l.session, l.owner) == (lock.session, lock.owner);
            if !mine || l.end < lock.start || lock.end < l.start {
                kept.push(l);
                continue;
            }
            if l.start < lock.start {
                kept.push(HeldLock {
                    end: lock.start - 1,
                    ..l
                });
            }
            if l.end > lock.end {
                kept.push(HeldLock {
                    start: lock.end + 1,
                    ..l
                });
            }
        }
        if let Some(kind) = kind {
            kept.push(HeldLock {
                kind,
                session: lock.session,
                owner: lock.owner,
                pid: lock.pid,
                start: lock.start,
                end: lock.end,
            });
        }
        *held = kept;
        if held.is_empty() {
            self.locks.remove(&ino);
        }
        Ok(NsResult::Done)
    }

    /// [`NsOp::WaitLock`]: take the lock, or record the wait, or refuse a deadlock.
    fn wait_lock(
        &mut self,
        ino: Ino,
        lock: &LockSpec,
        kind: LockKind,
        wait_ms: u32,
        now: i64,
    ) -> Result<NsResult, FsError> {
        self.check_lock(ino, lock)?;
        if !self.session_alive(lock.session, now) {
            return Err(FsError::Stale);
        }
        self.expire_waits(now);
        let me = (lock.session, lock.owner);
        let Some(held) = self.lock_conflict(ino, lock, kind, now) else {
            self.waiting.remove(&me);
            return self.set_lock(ino, lock, Some(kind), now);
        };
        if self.waits_for((held.session, held.owner), me, now) {
            self.waiting.remove(&me);
            return Err(FsError::Deadlock);
        }
        let until = now.saturating_add(i64::from(wait_ms) * 1_000_000);
        self.waiting.insert(
            me,
            Waiter {
                ino,
                lock: *lock,
                kind,
                until,
            },
        );
        Err(FsError::WouldBlock)
    }

    /// Whether owner `from` waits, directly or through other waiting owners, for a lock held
    /// by `to`. Like Linux, each waiter counts as waiting for the first lock in its way.
    fn waits_for(&self, from: (u64, u64), to: (u64, u64), now: i64) -> bool {
        let mut cur = from;
        // Each step goes to another waiter; more steps than waiters means a cycle without `to`.
        for _ in 0..=self.waiting.len() {
            if cur == to {
                return true;
            }
            let Some(w) = self.waiting.get(&cur).filter(|w| w.until >= now) else {
                return false;
            };
            match self.lock_conflict(w.ino, &w.lock, w.kind, now) {
                Some(h) => cur = (h.session, h.owner),
                None => return false,
            }
        }
        false
    }

    /// Forget waits that were not renewed in time.
    fn expire_waits(&mut self, now: i64) {
        self.waiting.retain(|_, w| w.until >= now);
    }

    /// Forget sessions that expired before `now`, their locks, waits and orphans.
    pub(super) fn expire_sessions(&mut self, now: i64) {
        let before = self.sessions.len();
        self.sessions.retain(|_, until| *until >= now);
        if self.sessions.len() != before {
            self.drop_dead_sessions();
        }
    }

    /// Drop what sessions no longer in `sessions` left: locks, waits, orphans. An orphan's
    /// data goes on the purge list (its mount died before it could delete it).
    pub(super) fn drop_dead_sessions(&mut self) {
        let sessions = std::mem::take(&mut self.sessions);
        self.retain_locks(|l| sessions.contains_key(&l.session));
        self.waiting.retain(|(s, _), _| sessions.contains_key(s));
        let dead: Vec<Ino> = self
            .orphans
            .iter()
            .filter(|(_, s)| !sessions.contains_key(s))
            .map(|(ino, _)| *ino)
            .collect();
        self.sessions = sessions;
        for ino in dead {
            self.orphans.remove(&ino);
            if let Some(inode) = self.inodes.remove(&ino) {
                self.file_bytes = self.file_bytes.wrapping_sub(inode.attr.size);
                self.purge.insert(ino, txn::freed_file(&inode.attr));
            }
            let names: Vec<(Ino, String)> = self.xattrs_of(ino).map(|(k, _)| k.clone()).collect();
            for key in names {
                self.xattrs.remove(&key);
            }
            self.locks.remove(&ino);
        }
    }

    pub(super) fn retain_locks(&mut self, keep: impl Fn(&HeldLock) -> bool) {
        self.locks.retain(|_, held| {
            held.retain(&keep);
            !held.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn spec(session: u64, owner: u64, start: u64, end: u64) -> LockSpec {
        LockSpec {
            session,
            owner,
            pid: 7,
            start,
            end,
        }
    }

    fn set_lock(ino: Ino, lock: LockSpec, kind: Option<LockKind>) -> NsOp {
        NsOp::SetLock { ino, lock, kind }
    }

    fn test_lock(
        ns: &mut Namespace,
        ino: Ino,
        lock: LockSpec,
        kind: LockKind,
        now: i64,
    ) -> Option<HeldLock> {
        match ns.apply(&NsOp::TestLock { ino, lock, kind }, now) {
            Ok(NsResult::LockTest(held)) => held,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn locks_conflict_between_owners_and_sessions_only() {
        use LockKind::{Exclusive, Shared};
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let renew = |session| NsOp::RenewSession {
            session,
            ttl_ms: 1_000,
        };
        // No session yet: ESTALE.
        fails(
            &mut ns,
            &set_lock(f, spec(1, 1, 0, 9), Some(Exclusive)),
            FsError::Stale,
        );
        ns.apply(&renew(1), T0).unwrap();
        ns.apply(&renew(2), T0).unwrap();
        ns.apply(&set_lock(f, spec(1, 1, 0, 9), Some(Shared)), T0)
            .unwrap();
        // Shared locks share; exclusive ones conflict with another owner, also in another session.
        ns.apply(&set_lock(f, spec(2, 1, 5, 20), Some(Shared)), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_lock(f, spec(1, 2, 8, 8), Some(Exclusive)),
            FsError::WouldBlock,
        );
        fails(
            &mut ns,
            &set_lock(f, spec(2, 1, 0, 0), Some(Exclusive)),
            FsError::WouldBlock,
        );
        // The owner's own lock is upgraded in place.
        ns.apply(&set_lock(f, spec(2, 1, 10, 20), Some(Exclusive)), T0)
            .unwrap();
        let held = test_lock(&mut ns, f, spec(1, 1, 12, 12), Shared, T0).unwrap();
        assert_eq!(
            (held.session, held.start, held.end, held.kind),
            (2, 10, 20, Exclusive)
        );
        assert_eq!(
            test_lock(&mut ns, f, spec(1, 1, 21, u64::MAX), Exclusive, T0),
            None
        );
        // Unlocking the middle splits a lock.
        ns.apply(&set_lock(f, spec(2, 1, 12, 15), None), T0)
            .unwrap();
        assert_eq!(
            test_lock(&mut ns, f, spec(1, 1, 12, 15), Exclusive, T0),
            None
        );
        let held = test_lock(&mut ns, f, spec(1, 9, 16, 16), Shared, T0).unwrap();
        assert_eq!((held.start, held.end, held.pid), (16, 20, 7));
        let held = test_lock(&mut ns, f, spec(1, 9, 0, 11), Exclusive, T0).unwrap();
        assert!(held.start <= 11 && held.end >= 5, "{held:?}");
        // Bad ranges and inodes.
        fails(
            &mut ns,
            &set_lock(f, spec(1, 1, 9, 3), Some(Shared)),
            FsError::Invalid,
        );
        fails(
            &mut ns,
            &set_lock(99, spec(1, 1, 0, 3), Some(Shared)),
            FsError::Stale,
        );
        // Lock ops cannot be batched.
        fails(&mut ns, &NsOp::Batch(vec![renew(3)]), FsError::Invalid);
        // Ending a session drops its locks.
        ns.apply(&NsOp::EndSession { session: 2 }, T0).unwrap();
        ns.apply(&set_lock(f, spec(1, 2, 0, u64::MAX), Some(Shared)), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_lock(f, spec(2, 1, 0, 0), Some(Shared)),
            FsError::Stale,
        );
    }

    #[test]
    fn expired_sessions_stop_conflicting_and_lose_their_locks() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let ttl_ns = 1_000 * 1_000_000;
        for s in [1, 2] {
            let op = NsOp::RenewSession {
                session: s,
                ttl_ms: 1_000,
            };
            ns.apply(&op, T0).unwrap();
        }
        ns.apply(
            &set_lock(f, spec(1, 1, 0, u64::MAX), Some(LockKind::Exclusive)),
            T0,
        )
        .unwrap();
        fails(
            &mut ns,
            &set_lock(f, spec(2, 1, 0, 0), Some(LockKind::Shared)),
            FsError::WouldBlock,
        );
        // Session 2 renews, session 1 does not: once 1 expires its lock no longer blocks.
        let later = T0 + ttl_ns / 2;
        ns.apply(
            &NsOp::RenewSession {
                session: 2,
                ttl_ms: 1_000,
            },
            later,
        )
        .unwrap();
        let after = T0 + ttl_ns + 1;
        assert!(test_lock(&mut ns, f, spec(2, 1, 0, 0), LockKind::Exclusive, after).is_none());
        ns.apply(
            &set_lock(f, spec(2, 1, 0, 0), Some(LockKind::Exclusive)),
            after,
        )
        .unwrap();
        assert!(!ns.sessions.contains_key(&1));
        assert!(ns.locks[&f].iter().all(|l| l.session == 2));
    }

    fn wait(ino: Ino, lock: LockSpec, kind: LockKind) -> NsOp {
        NsOp::WaitLock {
            ino,
            lock,
            kind,
            wait_ms: 1_000,
        }
    }

    #[test]
    fn a_wait_that_closes_a_cycle_is_a_deadlock() {
        use LockKind::Exclusive;
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let g = mk(&mut ns, ROOT_INO, "g", File);
        for session in [1, 2, 3] {
            let op = NsOp::RenewSession {
                session,
                ttl_ms: 60_000,
            };
            ns.apply(&op, T0).unwrap();
        }
        // A (session 1) holds f:0, B (session 2) holds f:1, C (session 3) holds g:0.
        let (a, b, c) = ((1, 7), (2, 7), (3, 7));
        let at = |(s, o), start| spec(s, o, start, start);
        ns.apply(&wait(f, at(a, 0), Exclusive), T0).unwrap();
        ns.apply(&wait(f, at(b, 1), Exclusive), T0).unwrap();
        ns.apply(&wait(g, at(c, 0), Exclusive), T0).unwrap();
        // A waits for B; C waits for A (a chain, no cycle).
        assert_eq!(
            ns.apply(&wait(f, at(a, 1), Exclusive), T0),
            Err(FsError::WouldBlock)
        );
        assert_eq!(
            ns.apply(&wait(f, at(c, 0), Exclusive), T0),
            Err(FsError::WouldBlock)
        );
        // B asking for g:0 (C's) closes B -> C -> A -> B.
        assert_eq!(
            ns.apply(&wait(g, at(b, 0), Exclusive), T0),
            Err(FsError::Deadlock)
        );
        // B asking for f:0 (A's) closes B -> A -> B; B is not left waiting.
        assert_eq!(
            ns.apply(&wait(f, at(b, 0), Exclusive), T0),
            Err(FsError::Deadlock)
        );
        assert!(!ns.waiting.contains_key(&b));
        // A non-blocking request never reports a deadlock.
        fails(
            &mut ns,
            &set_lock(f, at(b, 0), Some(Exclusive)),
            FsError::WouldBlock,
        );
        // A stops waiting (interrupted): B may now wait for A without a deadlock.
        ns.apply(
            &NsOp::StopWait {
                session: a.0,
                owner: a.1,
            },
            T0,
        )
        .unwrap();
        assert_eq!(
            ns.apply(&wait(f, at(b, 0), Exclusive), T0),
            Err(FsError::WouldBlock)
        );
        // A releases f:0, so B's wait is granted.
        ns.apply(&set_lock(f, at(a, 0), None), T0).unwrap();
        ns.apply(&wait(f, at(b, 0), Exclusive), T0).unwrap();
        assert!(!ns.waiting.contains_key(&b));
        check_invariants(&ns);
    }

    #[test]
    fn waits_not_renewed_in_time_stop_counting() {
        use LockKind::Exclusive;
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        for session in [1, 2] {
            let op = NsOp::RenewSession {
                session,
                ttl_ms: 60_000,
            };
            ns.apply(&op, T0).unwrap();
        }
        ns.apply(&wait(f, spec(1, 1, 0, 0), Exclusive), T0).unwrap();
        ns.apply(&wait(f, spec(2, 1, 1, 1), Exclusive), T0).unwrap();
        assert_eq!(
            ns.apply(&wait(f, spec(1, 1, 1, 1), Exclusive), T0),
            Err(FsError::WouldBlock)
        );
        // Session 1's owner gave up without saying so: 1 s later its wait is gone.
        let later = T0 + 1_001 * 1_000_000;
        assert_eq!(
            ns.apply(&wait(f, spec(2, 1, 0, 0), Exclusive), later),
            Err(FsError::WouldBlock)
        );
        // An ended session's waits go with it.
        ns.apply(&NsOp::EndSession { session: 2 }, later).unwrap();
        assert!(ns.waiting.is_empty());
    }
}
