//! The task set of a logical unit (SAM-5 §8.6): the order commands may run in.
//!
//! Commands enter in the order they arrive; each carries a task attribute:
//! - SIMPLE (and untagged, and ACA, which we do not otherwise support) may run as soon as
//!   every older ORDERED task has ended, alongside other SIMPLE tasks;
//! - ORDERED waits for every older task, and every younger task waits for it;
//! - HEAD OF QUEUE runs at once (younger ORDERED tasks still wait for it).
//!
//! There is one task set per logical unit, shared by every I_T nexus (TST 000b in the control
//! mode page). A [`Ticket`] is a task's place in the set; dropping it (the task ended or was
//! aborted) lets the tasks waiting behind it go.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Task attribute, from the iSCSI SCSI Command PDU (ATTR, byte 1 bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Simple,
    Ordered,
    HeadOfQueue,
}

impl TaskAttr {
    pub fn from_iscsi(attr: u8) -> Self {
        match attr & 0x07 {
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            _ => TaskAttr::Simple, // 0 untagged, 1 simple, 4 ACA
        }
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    live: BTreeMap<u64, TaskAttr>,
}

/// The task set of one logical unit.
pub struct TaskSet {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Default for TaskSet {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }
}

/// A task's place in a [`TaskSet`].
pub struct Ticket {
    set: Arc<TaskSet>,
    seq: u64,
    attr: TaskAttr,
}

impl TaskSet {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a task; call in arrival order.
    pub fn enter(self: &Arc<Self>, attr: TaskAttr) -> Ticket {
        let mut inner = self.inner();
        let seq = inner.next;
        inner.next += 1;
        inner.live.insert(seq, attr);
        Ticket {
            set: Arc::clone(self),
            seq,
            attr,
        }
    }

    /// Tasks in the set.
    pub fn len(&self) -> usize {
        self.inner().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    fn may_run(&self, inner: &Inner) -> bool {
        let mut older = inner.live.range(..self.seq).map(|(_, a)| *a);
        match self.attr {
            TaskAttr::HeadOfQueue => true,
            TaskAttr::Ordered => older.next().is_none(),
            TaskAttr::Simple => !older.any(|a| a == TaskAttr::Ordered),
        }
    }

    /// Waits until the task may run.
    pub async fn ready(&self) {
        let mut rx = self.set.changed.subscribe();
        loop {
            {
                let inner = self.set.inner();
                rx.borrow_and_update();
                if self.may_run(&inner) {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.set.inner().live.remove(&self.seq);
        self.set.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn runs_now(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(20), t.ready())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn ordered_waits_for_older_and_holds_younger() {
        let set = Arc::new(TaskSet::default());
        let s1 = set.enter(TaskAttr::Simple);
        let s2 = set.enter(TaskAttr::Simple);
        let o = set.enter(TaskAttr::Ordered);
        let s3 = set.enter(TaskAttr::Simple);
        let h = set.enter(TaskAttr::HeadOfQueue);
        assert!(
            runs_now(&s1).await && runs_now(&s2).await,
            "simple tasks run together"
        );
        assert!(!runs_now(&o).await, "ordered waits for older tasks");
        assert!(
            !runs_now(&s3).await,
            "younger simple waits for the ordered one"
        );
        assert!(runs_now(&h).await, "head of queue jumps the queue");
        drop(s1);
        drop(s2);
        assert!(runs_now(&o).await);
        assert!(!runs_now(&s3).await);
        drop(o);
        assert!(runs_now(&s3).await);
        drop(s3);
        drop(h);
        assert!(set.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_task_wakes_when_the_blocker_ends() {
        let set = Arc::new(TaskSet::default());
        let first = set.enter(TaskAttr::Simple);
        let o = set.enter(TaskAttr::Ordered);
        let waiter = tokio::spawn(async move {
            o.ready().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("ordered task never woke")
            .unwrap();
        assert_eq!(TaskAttr::from_iscsi(2), TaskAttr::Ordered);
        assert_eq!(TaskAttr::from_iscsi(3), TaskAttr::HeadOfQueue);
        assert_eq!(TaskAttr::from_iscsi(0), TaskAttr::Simple);
    }
}
