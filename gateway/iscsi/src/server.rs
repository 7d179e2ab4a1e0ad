//! The accept loop and the state shared by every connection of one [`serve`] call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::block::BlockDevice;
use crate::error::IscsiError;
use crate::scsi::LogicalUnit;
use crate::session::SessionTable;
use crate::target::TargetRegistry;
use crate::text::Limits;
use crate::{conn, IscsiOptions};

/// How long `serve` waits for connections to finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by all connections.
pub struct Shared {
    pub registry: Arc<dyn TargetRegistry>,
    pub opts: IscsiOptions,
    pub limits: Limits,
    pub sessions: SessionTable,
    /// Open logical units by (target, LUN): SCSI state (reservations, unit attentions) is per
    /// LU, not per session.
    lus: tokio::sync::Mutex<HashMap<(String, u64), Arc<LogicalUnit>>>,
}

fn same_device(a: &Arc<dyn BlockDevice>, b: &Arc<dyn BlockDevice>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Shared {
    pub fn new(registry: Arc<dyn TargetRegistry>, opts: IscsiOptions) -> Self {
        Self {
            registry,
            limits: opts.limits(),
            opts,
            sessions: SessionTable::default(),
            lus: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The logical unit for `lun` of `target`, opened on first use. A LUN whose device was
    /// replaced in the registry gets a fresh logical unit.
    pub async fn logical_unit(
        &self,
        target: &str,
        lun: u64,
        dev: &Arc<dyn BlockDevice>,
    ) -> Result<Arc<LogicalUnit>, IscsiError> {
        let mut lus = self.lus.lock().await;
        let key = (target.to_string(), lun);
        if let Some(lu) = lus.get(&key) {
            if same_device(lu.device(), dev) {
                return Ok(Arc::clone(lu));
            }
        }
        let lu = Arc::new(
            LogicalUnit::open(target, lun, Arc::clone(dev), self.registry.reservations()).await?,
        );
        lu.set_sanitize_rate(self.opts.sanitize_bytes_per_sec);
        // Keep the reservations fresh while the logical unit lives (it holds no strong
        // reference, so the task ends with the logical unit).
        let weak = Arc::downgrade(&lu);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::scsi::PR_REFRESH).await;
                match weak.upgrade() {
                    Some(lu) => lu.refresh_reservations().await,
                    None => return,
                }
            }
        });
        lus.insert(key, Arc::clone(&lu));
        Ok(lu)
    }
}

/// Serves iSCSI on `listener` until `shutdown` becomes true (or its sender is dropped).
///
/// Each connection runs in its own task; at most `opts.max_clients` run at once (further
/// connections wait in the listen backlog). On shutdown, open connections are told to close
/// and are given a few seconds to do so.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<dyn TargetRegistry>,
    opts: IscsiOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IscsiError> {
    opts.validate()?;
    let limit = Arc::new(Semaphore::new(opts.max_clients));
    let shared = Arc::new(Shared::new(registry, opts));
    let mut conns = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracing::debug!(%peer, "connection accepted");
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            conn::run(stream, shared, shutdown).await;
            drop(permit);
        });
        while conns.try_join_next().is_some() {}
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    Ok(())
}
