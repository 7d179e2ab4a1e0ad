//! Sessions: the command window, running tasks and the table of live sessions.
//!
//! A session is identified by (initiator name, ISID, target) and carries a TSIH. Its
//! connections each run `conn.rs`; what they share lives here: the CmdSN window (ExpCmdSN /
//! MaxCmdSN), the table of running SCSI tasks (so task management can abort them from any
//! connection or session), the LUNs resolved at login and the negotiated parameters.
//!
//! Commands run as soon as their LU's task set allows (SIMPLE ones concurrently, ORDERED ones
//! after every older task; `scsi::task_set`). The window tracks CmdSN gaps exactly, so ExpCmdSN only moves past
//! commands that really arrived, and commands outside the window are dropped (RFC 7143 §4.2.2.1).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::scsi::{LogicalUnit, Nexus};
use crate::target::TargetConfig;
use crate::text::Params;

/// Serial number comparison (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// The CmdSN window of a session.
#[derive(Debug)]
pub struct CmdWindow {
    exp: u32,
    size: u32,
    /// CmdSNs received ahead of `exp`.
    ahead: BTreeSet<u32>,
}

/// What to do with a non-immediate command's CmdSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdSnCheck {
    Accept,
    /// Outside the window or a duplicate: drop silently.
    Drop,
}

impl CmdWindow {
    pub fn new(exp: u32, size: u32) -> Self {
        Self {
            exp,
            size: size.max(1),
            ahead: BTreeSet::new(),
        }
    }
    pub fn exp(&self) -> u32 {
        self.exp
    }
    pub fn max(&self) -> u32 {
        self.exp.wrapping_add(self.size - 1)
    }

    /// Registers a command with `cmdsn`. Immediate commands are only checked for being
    /// inside the window and do not advance it.
    pub fn check(&mut self, cmdsn: u32, immediate: bool) -> CmdSnCheck {
        if sn_lt(self.max(), cmdsn) {
            return CmdSnCheck::Drop;
        }
        if immediate {
            return CmdSnCheck::Accept;
        }
        if sn_lt(cmdsn, self.exp) || self.ahead.contains(&cmdsn) {
            return CmdSnCheck::Drop;
        }
        if cmdsn == self.exp {
            self.exp = self.exp.wrapping_add(1);
            while self.ahead.remove(&self.exp) {
                self.exp = self.exp.wrapping_add(1);
            }
        } else {
            self.ahead.insert(cmdsn);
        }
        CmdSnCheck::Accept
    }
}

/// A running SCSI task.
struct Task {
    lun: u64,
    abort: AbortHandle,
}

/// A connection's close signal and a receiver that identifies its channel.
type ConnSignal = (watch::Sender<bool>, watch::Receiver<bool>);

/// One iSCSI session.
pub struct Session {
    pub tsih: u16,
    pub nexus: Nexus,
    pub target: Option<Arc<TargetConfig>>,
    pub discovery: bool,
    pub params: Params,
    pub luns: BTreeMap<u64, Arc<LogicalUnit>>,
    window: Mutex<CmdWindow>,
    tasks: Mutex<HashMap<u32, Task>>,
    /// Per-connection close signals, by CID.
    conns: Mutex<HashMap<u16, ConnSignal>>,
}

impl Session {
    pub fn new(
        tsih: u16,
        nexus: Nexus,
        target: Option<Arc<TargetConfig>>,
        params: Params,
        luns: BTreeMap<u64, Arc<LogicalUnit>>,
        first_cmdsn: u32,
        window: u32,
    ) -> Self {
        Self {
            tsih,
            nexus,
            discovery: target.is_none(),
            target,
            params,
            luns,
            window: Mutex::new(CmdWindow::new(first_cmdsn, window)),
            tasks: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn target_name(&self) -> &str {
        self.target.as_deref().map(|t| t.iqn.as_str()).unwrap_or("")
    }

    fn window(&self) -> std::sync::MutexGuard<'_, CmdWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (ExpCmdSN, MaxCmdSN) to stamp on an outgoing PDU.
    pub fn sn_window(&self) -> (u32, u32) {
        let w = self.window();
        (w.exp(), w.max())
    }

    pub fn check_cmdsn(&self, cmdsn: u32, immediate: bool) -> CmdSnCheck {
        self.window().check(cmdsn, immediate)
    }

    /// Starts `fut` as task `itt` on `lun`, removing it from the table when it ends.
    pub fn spawn_task<F>(self: &Arc<Self>, itt: u32, lun: u64, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let me = Arc::clone(self);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // The task removes itself under the same lock, so it cannot run its removal before the
        // insertion below.
        let handle = tokio::spawn(async move {
            fut.await;
            me.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&itt);
        });
        tasks.insert(
            itt,
            Task {
                lun,
                abort: handle.abort_handle(),
            },
        );
    }

    /// Aborts task `itt`; false if it is not running.
    pub fn abort_task(&self, itt: u32) -> bool {
        match self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&itt)
        {
            Some(t) => {
                t.abort.abort();
                true
            }
            None => false,
        }
    }

    /// Aborts every task on `lun` (all LUNs with `None`); returns how many.
    pub fn abort_lun(&self, lun: Option<u64>) -> usize {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let victims: Vec<u32> = tasks
            .iter()
            .filter(|(_, t)| lun.is_none_or(|l| t.lun == l))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in &victims {
            if let Some(t) = tasks.remove(itt) {
                t.abort.abort();
            }
        }
        victims.len()
    }

    /// Registers connection `cid`, closing a previous connection with the same CID
    /// (connection reinstatement). Returns its close signal.
    pub fn add_connection(&self, cid: u16) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, _)) = conns.insert(cid, (tx, rx.clone())) {
            let _ = old.send(true);
        }
        rx
    }

    /// Forgets connection `cid`; true if it was the last one.
    pub fn remove_connection(&self, cid: u16, rx: &watch::Receiver<bool>) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.get(&cid).is_some_and(|(_, r)| r.same_channel(rx)) {
            conns.remove(&cid);
        }
        conns.is_empty()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Asks every connection to close.
    pub fn close(&self) {
        for (tx, _) in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = tx.send(true);
        }
    }

    /// Releases what the nexus held: tasks, RESERVE(6), unit attentions.
    pub fn teardown(&self) {
        self.abort_lun(None);
        for lu in self.luns.values() {
            lu.nexus_lost(&self.nexus);
        }
    }
}

/// Key of a session for reinstatement: initiator, ISID, target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub nexus: Nexus,
    pub target: String,
}

/// All live sessions of one `serve` call.
#[derive(Default)]
pub struct SessionTable {
    by_tsih: Mutex<HashMap<u16, (SessionKey, Arc<Session>)>>,
    next_tsih: AtomicU16,
}

impl SessionTable {
    /// A fresh non-zero TSIH not in use.
    pub fn allocate_tsih(&self) -> u16 {
        let map = self.by_tsih.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let t = self
                .next_tsih
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if t != 0 && !map.contains_key(&t) {
                return t;
            }
        }
    }

    /// Adds a session, returning a previous session with the same key (to be reinstated).
    pub fn insert(&self, key: SessionKey, s: Arc<Session>) -> Option<Arc<Session>> {
        let mut map = self.by_tsih.lock().unwrap_or_else(|e| e.into_inner());
        let old = map
            .iter()
            .find(|(_, (k, _))| *k == key)
            .map(|(t, _)| *t)
            .and_then(|t| map.remove(&t))
            .map(|(_, s)| s);
        map.insert(s.tsih, (key, s));
        old
    }

    pub fn get(&self, tsih: u16) -> Option<Arc<Session>> {
        self.by_tsih
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tsih)
            .map(|(_, s)| Arc::clone(s))
    }

    /// Removes the session if it is still the one registered under its TSIH.
    pub fn remove(&self, s: &Arc<Session>) {
        let mut map = self.by_tsih.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&s.tsih).is_some_and(|(_, x)| Arc::ptr_eq(x, s)) {
            map.remove(&s.tsih);
        }
    }

    /// Sessions logged in to `target`.
    pub fn of_target(&self, target: &str) -> Vec<Arc<Session>> {
        self.by_tsih
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(k, _)| k.target == target)
            .map(|(_, s)| Arc::clone(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_tracks_gaps_and_drops_outside() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.max(), 13);
        assert_eq!(w.check(14, false), CmdSnCheck::Drop);
        assert_eq!(w.check(9, false), CmdSnCheck::Drop);
        assert_eq!(w.check(12, false), CmdSnCheck::Accept);
        assert_eq!(w.exp(), 10);
        assert_eq!(w.check(12, false), CmdSnCheck::Drop);
        assert_eq!(w.check(10, true), CmdSnCheck::Accept);
        assert_eq!(w.exp(), 10);
        assert_eq!(w.check(10, false), CmdSnCheck::Accept);
        assert_eq!(w.check(11, false), CmdSnCheck::Accept);
        assert_eq!(w.exp(), 13);
    }

    #[test]
    fn window_wraps() {
        let mut w = CmdWindow::new(u32::MAX, 8);
        assert_eq!(w.check(u32::MAX, false), CmdSnCheck::Accept);
        assert_eq!(w.exp(), 0);
        assert_eq!(w.check(0, false), CmdSnCheck::Accept);
        assert!(sn_lt(u32::MAX, 0));
    }

    proptest! {
        #[test]
        fn in_order_commands_always_accepted(start in any::<u32>(), n in 1u32..200) {
            let mut w = CmdWindow::new(start, 16);
            for i in 0..n {
                prop_assert_eq!(w.check(start.wrapping_add(i), false), CmdSnCheck::Accept);
            }
            prop_assert_eq!(w.exp(), start.wrapping_add(n));
        }
    }
}
