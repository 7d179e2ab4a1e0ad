//! Background workers with one shape: [`Worker::work`] does a bounded step and says whether
//! more is waiting, [`Worker::wait_for_work`] sleeps until there may be; the runner handles
//! shutdown, errors (logged, counted, retried after a pause) and publishes each worker's
//! progress in a [`Registry`] (observable through the OSD handle).

use crate::error::Result;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What a step of work left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkState {
    /// More work is ready: call `work` again.
    Busy,
    /// Nothing to do until `wait_for_work` returns.
    Idle,
}

pub trait Worker: Send + 'static {
    fn name(&self) -> String;
    /// Do one bounded step. Progress must survive an error: the next call resumes.
    fn work(&mut self) -> impl Future<Output = Result<WorkState>> + Send;
    /// Return when there may be work again.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;
    /// A short human-readable progress note.
    fn progress(&self) -> String {
        String::new()
    }
}

/// What the runner knows about one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    pub busy: bool,
    pub steps: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub progress: String,
}

/// Every worker's latest [`WorkerInfo`].
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<String, WorkerInfo>>>);

impl Registry {
    pub fn snapshot(&self) -> Vec<WorkerInfo> {
        self.0
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut WorkerInfo)) {
        let mut g = self.0.lock().expect("registry lock");
        let e = g.entry(name.to_string()).or_insert_with(|| WorkerInfo {
            name: name.to_string(),
            ..Default::default()
        });
        f(e);
    }
}

/// Run `w` until `shutdown` turns true.
pub fn spawn<W: Worker>(
    mut w: W,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = w.name();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let r = tokio::select! {
                r = w.work() => r,
                _ = shutdown.changed() => return,
            };
            let progress = w.progress();
            match r {
                Ok(state) => {
                    registry.update(&name, |i| {
                        i.steps += 1;
                        i.busy = state == WorkState::Busy;
                        i.progress = progress;
                    });
                    if state == WorkState::Busy {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    tokio::select! {
                        _ = w.wait_for_work() => {}
                        _ = shutdown.changed() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "background step failed; retrying");
                    registry.update(&name, |i| {
                        i.errors += 1;
                        i.last_error = Some(e.to_string());
                        i.progress = progress;
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    struct Countdown {
        left: u32,
        failed_once: bool,
    }

    impl Worker for Countdown {
        fn name(&self) -> String {
            "countdown".into()
        }
        async fn work(&mut self) -> Result<WorkState> {
            if self.left == 2 && !self.failed_once {
                self.failed_once = true;
                return Err(Error::invalid("transient"));
            }
            self.left = self.left.saturating_sub(1);
            Ok(if self.left > 0 {
                WorkState::Busy
            } else {
                WorkState::Idle
            })
        }
        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await
        }
        fn progress(&self) -> String {
            format!("{} left", self.left)
        }
    }

    #[tokio::test]
    async fn runs_to_idle_through_errors_and_stops() {
        let reg = Registry::default();
        let (tx, rx) = watch::channel(false);
        let h = spawn(
            Countdown {
                left: 5,
                failed_once: false,
            },
            reg.clone(),
            rx,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = reg.snapshot();
            if s.first().is_some_and(|i| i.progress == "0 left") {
                assert_eq!(s[0].errors, 1);
                assert!(!s[0].busy);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .unwrap()
            .unwrap();
    }
}
