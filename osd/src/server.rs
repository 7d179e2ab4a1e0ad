//! The OSD daemon: boot, the RPC handler, heartbeats, the map, and the background workers.
//!
//! Start: open the store and journal, replay the journal, register with the metadata service
//! (`OsdBoot`, which assigns and we persist the id), fetch the map, serve, and start the workers
//! (heartbeat, checkpoint, peering, recovery, scrub). A heartbeat ack with a newer epoch makes us
//! fetch the map; the peering worker reacts to every new map.

use crate::config::OsdConfig;
use crate::durable::Durable;
use crate::error::{Error, Result};
use crate::journal::{FileJournal, Journal};
use crate::nvjournal::{JournalSpec, NvJournal};
use crate::pg::Pgs;
use crate::stats::Stats;
use crate::store::sled_store::SledStore;
use crate::store::{Store, StoreOptions};
use crate::throttle::Throttle;
use crate::worker::{self, Registry, WorkState, Worker, WorkerInfo};
use crate::{recovery, replication, scrub};
use cairn_proto::meta_client::MetaClient;
use cairn_proto::msg::{
    MetaCommand, MetaRequest, MetaResponse, MetaResult, OsdHeartbeat, OsdRequest, OsdResponse,
    OsdStats, OsdStatus, PeerRequest, PeerResponse, Request, Response,
};
use cairn_proto::rpc::{self, Handler, RpcClient};
use cairn_proto::{ClusterMap, OsdId, PgId, WireError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What every part of a running OSD shares.
pub(crate) struct Shared {
    pub id: OsdId,
    pub addr: String,
    pub cfg: OsdConfig,
    pub durable: Arc<Durable>,
    pub store: Arc<dyn Store>,
    pub rpc: RpcClient,
    pub meta: MetaClient,
    map_tx: watch::Sender<Arc<ClusterMap>>,
    refresh_lock: tokio::sync::Mutex<()>,
    pub pgs: Pgs,
    pub stats: Stats,
    pub throttle: Throttle,
    pub peering_kick: Notify,
    pub recovery_kick: Notify,
    pub scrub_kick: Notify,
    pub workers: Registry,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map_tx.borrow().clone()
    }

    pub fn subscribe_map(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.map_tx.subscribe()
    }

    fn install_map(&self, m: ClusterMap) {
        let newer = self.map_tx.send_if_modified(|cur| {
            if m.epoch > cur.epoch {
                *cur = Arc::new(m);
                true
            } else {
                false
            }
        });
        if newer {
            tracing::debug!(osd = %self.id, epoch = self.map().epoch, "new map");
            self.peering_kick.notify_one();
        }
    }

    /// Make sure our map is at least `epoch` (fetching it if not); returns the current map.
    pub async fn refresh_map_to(&self, epoch: u64) -> Result<Arc<ClusterMap>> {
        if self.map().epoch >= epoch {
            return Ok(self.map());
        }
        let _g = self.refresh_lock.lock().await;
        if self.map().epoch >= epoch {
            return Ok(self.map());
        }
        let m = self.meta.get_map().await?;
        self.install_map(m);
        Ok(self.map())
    }

    /// Fetch the map whatever our epoch.
    pub async fn refresh_map(&self) -> Result<Arc<ClusterMap>> {
        let want = self.map().epoch + 1;
        let _g = self.refresh_lock.lock().await;
        if self.map().epoch >= want {
            return Ok(self.map());
        }
        let m = self.meta.get_map().await?;
        self.install_map(m);
        Ok(self.map())
    }

    /// A client request's epoch must be ours (after catching up if theirs is newer), or an
    /// older one of the same placement interval: then the client's placement is ours, and what
    /// changed since (file moves) is checked against our map, not theirs.
    pub async fn check_epoch(&self, theirs: u64) -> Result<Arc<ClusterMap>, WireError> {
        self.check_peer_epoch(theirs).await
    }

    /// A peer's epoch may not be older than ours unless it is of the same placement interval;
    /// a newer one makes us catch up.
    pub async fn check_peer_epoch(&self, theirs: u64) -> Result<Arc<ClusterMap>, WireError> {
        let mut map = self.map();
        if theirs > map.epoch {
            map = self
                .refresh_map_to(theirs)
                .await
                .map_err(|e| self.wire(e))?;
        }
        epoch_ok(&map, theirs)?;
        Ok(map)
    }

    pub fn check_primary(&self, map: &ClusterMap, pg: PgId) -> Result<(), WireError> {
        if map.pg_primary(pg) != Some(self.id) {
            return Err(WireError::NotPrimary { pg, osd: self.id });
        }
        Ok(())
    }

    pub fn wire(&self, e: Error) -> WireError {
        e.to_wire(self.id)
    }

    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.peer_timeout_ms)
    }

    /// Send a peer request to another OSD.
    pub async fn peer(
        &self,
        osd: OsdId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse> {
        let addr = self
            .map()
            .osd_addr(osd)
            .map(str::to_string)
            .ok_or_else(|| Error::invalid(format!("{osd} is not in the map")))?;
        match self
            .rpc
            .call(&addr, Request::Osd(OsdRequest::Peer(req)), timeout)
            .await?
        {
            Response::Osd(OsdResponse::Peer(r)) => Ok(r),
            other => Err(Error::Wire(WireError::invalid(format!(
                "unexpected peer reply {other:?}"
            )))),
        }
    }

    /// Tell the metadata service we could not reach `failed`.
    pub async fn report_failure(&self, failed: OsdId) {
        tracing::warn!(osd = %self.id, %failed, "reporting unreachable peer");
        let r = self
            .meta
            .call(MetaRequest::ReportFailure {
                reporter: self.id,
                failed,
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "failure report not delivered");
        }
    }

    pub fn stats_snapshot(&self) -> OsdStats {
        self.stats.snapshot(
            self.store.used_bytes(),
            self.durable.capacity(),
            self.durable.checkpoints(),
        )
    }

    /// Run blocking store work off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| Error::ShuttingDown)?
    }
}

/// The RPC handler.
struct Service(Arc<Shared>);

impl Handler for Service {
    async fn handle(&self, req: Request, _peer: SocketAddr) -> Response {
        let sh = &self.0;
        let r = match req {
            Request::Ping => return Response::Pong,
            Request::Meta(_) => Err(WireError::invalid("this is an OSD")),
            Request::Osd(OsdRequest::Peer(p)) => {
                replication::handle_peer(sh, p).await.map(OsdResponse::Peer)
            }
            Request::Osd(OsdRequest::Status) => Ok(OsdResponse::Status(status(sh))),
            Request::Osd(r) => replication::handle_client(sh, r).await,
        };
        match r {
            Ok(r) => Response::Osd(r),
            Err(e) => Response::Error(e),
        }
    }
}

fn status(sh: &Shared) -> OsdStatus {
    let map = sh.map();
    OsdStatus {
        id: sh.id,
        epoch: map.epoch,
        stats: sh.stats_snapshot(),
        pgs: primary_pg_states(sh, &map),
    }
}

/// States of the placement groups we are primary of.
pub(crate) fn primary_pg_states(
    sh: &Shared,
    map: &ClusterMap,
) -> Vec<(PgId, cairn_proto::PgState)> {
    let mut out = Vec::new();
    for pool in map.pools.values() {
        for pg in pool.pgs() {
            if map.pg_primary(pg) == Some(sh.id) {
                out.push((pg, sh.pgs.get(pg).state(map, pg)));
            }
        }
    }
    out
}

/// A running OSD.
pub struct OsdHandle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OsdHandle {
    pub fn id(&self) -> OsdId {
        self.shared.id
    }

    /// The address registered in the map.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    pub fn stats(&self) -> OsdStats {
        self.shared.stats_snapshot()
    }

    /// The OSD's current map epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.map().epoch
    }

    /// States of the placement groups this OSD is primary of.
    pub fn pg_states(&self) -> Vec<(PgId, cairn_proto::PgState)> {
        primary_pg_states(&self.shared, &self.shared.map())
    }

    /// Progress of the background workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.shared.workers.snapshot()
    }

    /// The store (for inspection by tests and tools).
    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.store.clone()
    }

    /// Whether the OSD stopped itself (a failed apply).
    pub fn failed(&self) -> bool {
        self.shared.durable.failed()
    }

    /// Ask the scrubber to start a pass now.
    pub fn scrub_now(&self) {
        scrub::kick(&self.shared);
    }

    /// Stop serving, wait for the workers, checkpoint.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if !self.shared.durable.failed() {
            if let Err(e) = self.shared.durable.checkpoint().await {
                tracing::warn!(error = %e, "final checkpoint failed; the journal will be replayed");
            }
        }
        release(self.shared).await;
    }

    /// Stop without the final checkpoint, as a crash would (the journal is replayed on start).
    pub async fn kill(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        release(self.shared).await;
    }
}

/// Wait (bounded) for connection and replication tasks to let go of the OSD, so that its store
/// is closed when this returns and the data directory can be opened again.
async fn release(shared: Arc<Shared>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&shared) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&shared) > 1 {
        tracing::warn!(osd = %shared.id, "tasks still hold the OSD after stopping");
    }
}

/// The OSD daemon.
pub struct Osd;

impl Osd {
    /// Open the store, boot with the metadata service and start serving.
    pub async fn start(cfg: OsdConfig) -> Result<OsdHandle> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(Error::io(&cfg.data_dir))?;
        // Canonical, so that an shm pool is named the same however the directory is spelled.
        let data_dir = std::fs::canonicalize(&cfg.data_dir).map_err(Error::io(&cfg.data_dir))?;
        let spec = cfg.journal.clone();
        let opts = StoreOptions {
            log_keep: cfg.pg_log_keep,
            direct_io: cfg.direct_io,
        };
        let (store, journal) = tokio::task::spawn_blocking(move || -> Result<_> {
            let store: Arc<dyn Store> = Arc::new(SledStore::open(&data_dir.join("store"), opts)?);
            let journal = open_journal(&spec, &data_dir, store.as_ref())?;
            let n = Durable::replay(store.as_ref(), journal.as_ref())?;
            if n > 0 {
                tracing::info!(records = n, "journal replayed");
            }
            Ok((store, journal))
        })
        .await
        .map_err(|_| Error::ShuttingDown)??;
        let capacity = match cfg.capacity {
            0 => fs_size(&cfg.data_dir)?,
            c => c,
        };
        let durable = Arc::new(Durable::new(
            store.clone(),
            journal,
            capacity,
            cfg.checkpoint_bytes,
        ));
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(Error::io(&cfg.listen))?;
        let bound = listener.local_addr().map_err(Error::io(&cfg.listen))?;
        let addr = cfg.advertise.clone().unwrap_or_else(|| bound.to_string());
        let rpc = RpcClient::new();
        let meta = MetaClient::new(rpc.clone(), cfg.meta.clone());
        let id_path = cfg.data_dir.join("osd_id");
        let known_id = cfg.id.map(OsdId).or_else(|| read_id(&id_path));
        let id = boot(&meta, known_id, &addr, &cfg, capacity).await?;
        if known_id != Some(id) {
            write_id(&id_path, id)?;
        }
        let map = meta.get_map().await?;
        let (map_tx, _) = watch::channel(Arc::new(map));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            id,
            addr: addr.clone(),
            throttle: Throttle::new(cfg.recovery_bytes_per_sec),
            cfg,
            durable,
            store,
            rpc,
            meta,
            map_tx,
            refresh_lock: tokio::sync::Mutex::new(()),
            pgs: Pgs::default(),
            stats: Stats::default(),
            peering_kick: Notify::new(),
            recovery_kick: Notify::new(),
            scrub_kick: Notify::new(),
            workers: Registry::default(),
            shutdown: shutdown_rx.clone(),
        });
        tracing::info!(osd = %id, %addr, capacity, "osd up");
        let reg = shared.workers.clone();
        let mut tasks = vec![
            tokio::spawn(rpc::serve(
                listener,
                Arc::new(Service(shared.clone())),
                shutdown_rx.clone(),
            )),
            worker::spawn(
                Heartbeat::new(shared.clone()),
                reg.clone(),
                shutdown_rx.clone(),
            ),
            worker::spawn(
                Checkpointer(shared.clone()),
                reg.clone(),
                shutdown_rx.clone(),
            ),
            worker::spawn(
                recovery::PeeringWorker::new(shared.clone()),
                reg.clone(),
                shutdown_rx.clone(),
            ),
            worker::spawn(
                recovery::RecoveryWorker::new(shared.clone()),
                reg.clone(),
                shutdown_rx.clone(),
            ),
        ];
        if shared.cfg.scrub_interval_ms > 0 {
            tasks.push(worker::spawn(
                scrub::ScrubWorker::new(shared.clone()),
                reg,
                shutdown_rx.clone(),
            ));
        }
        // A failed apply stops the OSD: serving on from a store that may be inconsistent would
        // spread the damage.
        let (sh, stop) = (shared.clone(), shutdown_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut rx = sh.shutdown.clone();
            tokio::select! {
                _ = sh.durable.failed_notify.notified() => {
                    tracing::error!(osd = %sh.id, "stopping after a failed apply");
                    let _ = stop.send(true);
                }
                _ = rx.changed() => {}
            }
        }));
        shared.peering_kick.notify_one();
        Ok(OsdHandle {
            shared,
            shutdown: shutdown_tx,
            tasks,
        })
    }
}

/// Opens the journal `spec` names. A file journal left by an earlier run with another setting
/// is replayed into `store` and removed first; an nvdisk left behind makes a file-journal OSD
/// refuse to start, since its records cannot be read without the nvdisk's own setting.
fn open_journal(
    spec: &JournalSpec,
    data_dir: &Path,
    store: &dyn Store,
) -> Result<Arc<dyn Journal>> {
    let file_path = data_dir.join("journal");
    match spec {
        JournalSpec::File => {
            let nv_dir = data_dir.join("nvdisk");
            if nv_dir.exists() {
                return Err(Error::Config {
                    field: "journal",
                    reason: format!(
                        "{} holds an nvdisk journal: start with its nvdisk setting (a clean \
                         stop leaves it empty), then remove the directory to use the file journal",
                        nv_dir.display()
                    ),
                });
            }
            Ok(Arc::new(FileJournal::open(&file_path)?))
        }
        JournalSpec::NvDisk(nv) => {
            if file_path.exists() {
                let old = FileJournal::open(&file_path)?;
                let n = Durable::replay(store, &old)?;
                tracing::info!(
                    records = n,
                    "replayed the file journal before switching to nvdisk"
                );
                drop(old);
                // Emptied by the replay: should the removal be lost, an empty journal is left.
                std::fs::remove_file(&file_path).map_err(Error::io(&file_path))?;
            }
            Ok(Arc::new(NvJournal::open(nv, data_dir)?))
        }
    }
}

/// Run an OSD until `shutdown` turns true.
pub async fn run(cfg: OsdConfig, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let h = Osd::start(cfg).await?;
    let mut own = h.shared.shutdown.clone();
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = own.changed() => {}
    }
    let failed = h.failed();
    h.stop().await;
    if failed {
        return Err(Error::JournalPoisoned);
    }
    Ok(())
}

async fn boot(
    meta: &MetaClient,
    id: Option<OsdId>,
    addr: &str,
    cfg: &OsdConfig,
    capacity: u64,
) -> Result<OsdId> {
    let r = meta
        .command(MetaCommand::OsdBoot {
            id,
            addr: addr.to_string(),
            host: cfg.host.clone(),
            weight: cfg.weight,
            capacity,
        })
        .await?;
    match r {
        MetaResult::Osd(id) => Ok(id),
        other => Err(Error::Wire(WireError::invalid(format!(
            "OsdBoot answered {other:?}"
        )))),
    }
}

fn read_id(path: &Path) -> Option<OsdId> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(OsdId)
}

/// Persist the id: tmp → fsync → rename → fsync dir.
fn write_id(path: &Path, id: OsdId) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    writeln!(f, "{}", id.0).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

fn fs_size(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

/// Sends heartbeats; fetches the map when the ack names a newer epoch; boots again when the map
/// says we are down although we are alive.
struct Heartbeat {
    sh: Arc<Shared>,
    meta: MetaClient,
}

impl Heartbeat {
    fn new(sh: Arc<Shared>) -> Heartbeat {
        let deadline = Duration::from_millis(sh.cfg.heartbeat_ms.max(500) * 3);
        let meta = sh.meta.clone().with_deadline(deadline);
        Heartbeat { sh, meta }
    }
}

impl Worker for Heartbeat {
    fn name(&self) -> String {
        "heartbeat".into()
    }

    async fn work(&mut self) -> Result<WorkState> {
        let sh = &self.sh;
        let map = sh.map();
        let hb = OsdHeartbeat {
            id: sh.id,
            epoch: map.epoch,
            capacity: sh.durable.capacity(),
            used: sh.store.used_bytes(),
            pgs: primary_pg_states(sh, &map),
        };
        let epoch = match self.meta.call(MetaRequest::Heartbeat(hb)).await? {
            MetaResponse::HeartbeatAck { epoch } => epoch,
            _ => map.epoch,
        };
        let map = if epoch > map.epoch {
            sh.refresh_map_to(epoch).await?
        } else {
            map
        };
        let alive_in_map = map
            .osds
            .get(&sh.id)
            .is_some_and(|o| o.up && o.addr == sh.addr);
        if !alive_in_map {
            tracing::warn!(osd = %sh.id, "the map says we are down; booting again");
            boot(
                &self.meta,
                Some(sh.id),
                &sh.addr,
                &sh.cfg,
                sh.durable.capacity(),
            )
            .await?;
            sh.refresh_map().await?;
        }
        Ok(WorkState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(Duration::from_millis(self.sh.cfg.heartbeat_ms)).await
    }
}

/// Checkpoints the journal every `checkpoint_interval_ms` or when it grows past
/// `checkpoint_bytes`.
struct Checkpointer(Arc<Shared>);

impl Worker for Checkpointer {
    fn name(&self) -> String {
        "checkpoint".into()
    }

    async fn work(&mut self) -> Result<WorkState> {
        self.0.durable.checkpoint().await?;
        Ok(WorkState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let every = Duration::from_millis(self.0.cfg.checkpoint_interval_ms);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = self.0.durable.checkpoint_wanted() => {}
        }
    }
}

/// Whether a request made under the map of epoch `theirs` may run under `map` (ours, at least
/// as new): the same epoch, or an older one with no placement change since.
pub(crate) fn epoch_ok(map: &ClusterMap, theirs: u64) -> Result<(), WireError> {
    if theirs == map.epoch || map.same_interval(theirs) {
        return Ok(());
    }
    Err(WireError::StaleEpoch {
        ours: map.epoch,
        theirs,
    })
}
