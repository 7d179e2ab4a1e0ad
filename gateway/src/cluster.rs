//! The gateway on a cairn cluster: LUNs that are replicated volumes (optionally behind a LUN
//! cache, see [`crate::lun_cache`]) or nvdisks held by this gateway (see [`crate::nvdisk`]),
//! targets and CHAP secrets from the metadata service, and persistent reservations kept there so
//! they survive a gateway crash and apply across gateways.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_client::{ClientError, Cluster, VolumeIo};
use cairn_proto::iscsi::{Chap, IscsiCommand, IscsiConfig};
use cairn_proto::msg::{MetaCommand, MetaRead, MetaRequest, MetaResponse};
use cairn_proto::volume::VolumeInfo;
use cairn_proto::WireError;
use futures::future::join_all;

use crate::error::GatewayError;
use crate::lun_cache::{LunCacheSpec, LunCaches};
use cairn_iscsi::block::{BlockDevice, BlockError, Extent};
use cairn_iscsi::scsi::pr::{PrState, ReservationStore};
use cairn_iscsi::target::{ChapConfig, ChapCredentials, TargetConfig, TargetRegistry};
use cairn_iscsi::IscsiError;

fn block_error(e: ClientError) -> BlockError {
    match e.wire() {
        Some(WireError::NoSpace { .. }) => BlockError::NoSpace,
        Some(WireError::Corrupt { offset, .. }) => BlockError::Corrupt { offset: *offset },
        _ => match e {
            ClientError::GaveUp { .. } | ClientError::NoPrimary { .. } => BlockError::Unavailable,
            other => BlockError::Io(std::io::Error::other(other.to_string())),
        },
    }
}

/// A LUN backed by a thin replicated volume. Every acknowledged write is already durable on the
/// OSDs (they acknowledge only journaled writes), so there is no volatile cache here: FUA and
/// SYNCHRONIZE CACHE have nothing left to do.
pub struct VolumeDevice {
    vol: VolumeIo,
}

impl VolumeDevice {
    pub fn new(vol: VolumeIo) -> VolumeDevice {
        VolumeDevice { vol }
    }

    pub fn info(&self) -> &VolumeInfo {
        self.vol.info()
    }
}

#[async_trait]
impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.vol.info().size
    }

    fn block_size(&self) -> u32 {
        self.vol.info().block_size
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        self.vol.read(offset, len as u64).await.map_err(block_error)
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), BlockError> {
        self.vol.write(offset, data).await.map_err(block_error)
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.vol.unmap(offset, len).await.map_err(block_error)
    }

    fn serial(&self) -> String {
        format!("cairn{:011x}", self.vol.info().id)
    }

    fn volatile_write_cache(&self) -> bool {
        false
    }

    async fn mapping(&self, offset: u64) -> Result<Extent, BlockError> {
        let os = self.vol.info().object_size;
        let size = self.size();
        let striped = self.vol.striped();
        let mapped = striped.is_mapped(offset).await.map_err(block_error)?;
        let mut end = (offset - offset % os + os).min(size);
        // The whole objects that follow in the same state join the run, probed a batch at a
        // time, so GET LBA STATUS answers in a few descriptors rather than one per object.
        // A probe that fails ends the run: the next query starts there and reports the error.
        let mut probed = 0;
        'run: while end < size && probed < MAPPING_RUN_OBJECTS {
            let starts: Vec<u64> = (0..MAPPING_PROBE_BATCH)
                .map(|i| end + i * os)
                .take_while(|&s| s < size)
                .collect();
            probed += starts.len();
            let states = join_all(starts.iter().map(|&s| striped.is_mapped(s))).await;
            for (s, st) in starts.iter().zip(states) {
                match st {
                    Ok(m) if m == mapped => end = (s + os).min(size),
                    _ => break 'run,
                }
            }
        }
        Ok(Extent {
            len: end - offset,
            mapped,
        })
    }
}

/// Most whole objects one [`BlockDevice::mapping`] answer reaches over (4 GiB of 4 MiB objects).
const MAPPING_RUN_OBJECTS: usize = 1024;
/// Objects probed at once while extending a mapping run.
const MAPPING_PROBE_BATCH: u64 = 32;

async fn meta_read(cluster: &Cluster, q: MetaRead) -> Result<MetaResponse, GatewayError> {
    cluster
        .meta()
        .call(MetaRequest::Read(q))
        .await
        .map_err(|_| GatewayError::Unavailable {
            service: "metadata service",
        })
}

fn chap(c: &Option<Chap>) -> Option<ChapCredentials> {
    c.as_ref().map(|c| ChapCredentials {
        user: c.user.clone(),
        secret: c.secret.clone(),
    })
}

/// A volume's record and the device built from it.
type Served = (VolumeInfo, Arc<dyn BlockDevice>);

/// What one gateway keeps locally: its name (nvdisk volumes name the gateway that serves them),
/// its data directory and how it caches cluster-volume LUNs.
#[derive(Clone, Debug)]
pub struct GatewayLocal {
    pub name: String,
    pub data_dir: PathBuf,
    pub lun_cache: LunCacheSpec,
    pub lun_cache_flush: Duration,
}

/// Targets, LUNs and CHAP from the metadata service. Devices are kept per volume (and rebuilt
/// when the volume's record changes, e.g. its size), so every session of a gateway shares one.
pub struct MetaRegistry {
    cluster: Cluster,
    local: Option<GatewayLocal>,
    caches: Option<LunCaches>,
    devices: Mutex<HashMap<String, Served>>,
    /// Serialises building devices: an nvdisk or a cache journal may be opened only once.
    building: tokio::sync::Mutex<()>,
    reservations: Arc<MetaReservationStore>,
}

impl MetaRegistry {
    /// A registry that serves cluster volumes only, uncached (no local state).
    pub fn new(cluster: Cluster) -> MetaRegistry {
        MetaRegistry {
            reservations: Arc::new(MetaReservationStore {
                cluster: cluster.clone(),
            }),
            cluster,
            local: None,
            caches: None,
            devices: Mutex::new(HashMap::new()),
            building: tokio::sync::Mutex::new(()),
        }
    }

    /// A registry that also serves the nvdisk volumes of gateway `local.name` and caches
    /// cluster-volume LUNs as `local.lun_cache` says.
    pub fn with_local(cluster: Cluster, local: GatewayLocal) -> MetaRegistry {
        let mut r = MetaRegistry::new(cluster);
        r.caches = Some(LunCaches::new(
            &local.data_dir,
            local.lun_cache.clone(),
            local.lun_cache_flush,
        ));
        r.local = Some(local);
        r
    }

    async fn volumes(&self) -> Result<Vec<VolumeInfo>, GatewayError> {
        match meta_read(&self.cluster, MetaRead::Volumes).await? {
            MetaResponse::Volumes(v) => Ok(v),
            _ => Err(GatewayError::Unavailable {
                service: "metadata service",
            }),
        }
    }

    /// Run at start, before the portal opens: replays every LUN cache journal a crash left
    /// into its cluster volume, opens (recovers) this gateway's nvdisk volumes, and removes the
    /// local state of volumes that were deleted.
    pub async fn recover(&self) -> Result<(), GatewayError> {
        let (Some(local), Some(caches)) = (&self.local, &self.caches) else {
            return Ok(());
        };
        let vols = self.volumes().await?;
        let by_id: HashMap<u64, &VolumeInfo> = vols.iter().map(|v| (v.id, v)).collect();
        for id in caches.journaled_volumes() {
            match by_id.get(&id) {
                Some(v) if v.nvdisk().is_none() => {
                    // Opening the LUN replays its journal; a failure (OSDs down) leaves the
                    // journal for the next attempt, at the first login.
                    if let Err(e) = self.device(&v.name).await {
                        tracing::error!(volume = %v.name, error = %e, "LUN cache journal not replayed yet");
                    }
                }
                _ => {
                    tracing::warn!(
                        id,
                        "volume of a LUN cache journal is gone; dropping the journal"
                    );
                    caches.forget(id)?;
                }
            }
        }
        for v in &vols {
            if v.nvdisk().is_some_and(|(gw, _)| gw == local.name) {
                if let Err(e) = self.device(&v.name).await {
                    tracing::error!(volume = %v.name, error = %e, "nvdisk volume does not open");
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(local.data_dir.join("nvdisk")) {
            for e in entries.flatten() {
                let id = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vol-"))
                    .and_then(|n| n.parse::<u64>().ok());
                let mine = |id| {
                    by_id
                        .get(&id)
                        .and_then(|v| v.nvdisk())
                        .is_some_and(|(gw, _)| gw == local.name)
                };
                if let Some(id) = id.filter(|id| !mine(*id)) {
                    tracing::warn!(id, "nvdisk volume was deleted; removing its files");
                    crate::nvdisk::remove_volume_files(&e.path())?;
                }
            }
        }
        Ok(())
    }

    /// Writes back every LUN cache.
    pub async fn flush_caches(&self) -> Result<(), GatewayError> {
        if let Some(c) = &self.caches {
            c.flush_all().await?;
        }
        Ok(())
    }

    async fn config(&self) -> Result<IscsiConfig, GatewayError> {
        match meta_read(&self.cluster, MetaRead::Iscsi).await? {
            MetaResponse::Iscsi(c) => Ok(c),
            _ => Err(GatewayError::Unavailable {
                service: "metadata service",
            }),
        }
    }

    async fn device(&self, volume: &str) -> Result<Option<Arc<dyn BlockDevice>>, GatewayError> {
        let info = match meta_read(
            &self.cluster,
            MetaRead::Volume {
                name: volume.to_string(),
            },
        )
        .await
        {
            Ok(MetaResponse::Volume(v)) => v,
            _ => return Ok(None),
        };
        if let Some((i, d)) = self.devices.lock().expect("devices lock").get(volume) {
            if i == &info {
                return Ok(Some(d.clone()));
            }
        }
        let _one = self.building.lock().await;
        if let Some((i, d)) = self.devices.lock().expect("devices lock").get(volume) {
            if i == &info {
                return Ok(Some(d.clone()));
            }
        }
        let dev: Arc<dyn BlockDevice> = match (info.nvdisk(), &self.local) {
            (Some((gw, _)), Some(local)) if gw == local.name => {
                Arc::new(crate::nvdisk::open_volume(&local.data_dir, &info).await?)
            }
            (Some((gw, _)), _) => {
                tracing::warn!(
                    volume,
                    gateway = gw,
                    "nvdisk volume is served by another gateway"
                );
                return Ok(None);
            }
            (None, _) => {
                let vol = VolumeIo::open(&self.cluster, info.clone())
                    .await
                    .map_err(|_| GatewayError::Unavailable { service: "cluster" })?;
                let vol: Arc<dyn BlockDevice> = Arc::new(VolumeDevice::new(vol));
                match &self.caches {
                    Some(c) => c.wrap(&info, vol).await?,
                    None => vol,
                }
            }
        };
        self.devices
            .lock()
            .expect("devices lock")
            .insert(volume.to_string(), (info, dev.clone()));
        Ok(Some(dev))
    }
}

#[async_trait]
impl TargetRegistry for MetaRegistry {
    async fn target_names(&self) -> Result<Vec<String>, IscsiError> {
        Ok(self.config().await?.targets.into_keys().collect())
    }

    async fn lookup(&self, iqn: &str) -> Result<Option<Arc<TargetConfig>>, IscsiError> {
        let cfg = self.config().await?;
        let Some(t) = cfg.targets.get(iqn) else {
            return Ok(None);
        };
        let mut tc = TargetConfig::new(iqn);
        for (lun, vol) in &t.luns {
            match self.device(vol).await? {
                Some(d) => tc = tc.with_lun(*lun, d),
                None => {
                    tracing::warn!(%iqn, lun, volume = %vol, "LUN's volume is missing; not served")
                }
            }
        }
        tc.chap = ChapConfig {
            initiator: chap(&t.chap),
            target: chap(&t.mutual_chap),
        };
        tc.allowed_initiators = t.allowed_initiators.clone();
        Ok(Some(Arc::new(tc)))
    }

    async fn discovery_chap(&self) -> Result<ChapConfig, IscsiError> {
        Ok(ChapConfig {
            initiator: chap(&self.config().await?.discovery_chap),
            target: None,
        })
    }

    fn reservations(&self) -> Arc<dyn ReservationStore> {
        self.reservations.clone()
    }
}

/// Persistent reservations in the metadata service: every PR OUT is a raft proposal, so the
/// state survives the gateway and every gateway sees the same reservations.
pub struct MetaReservationStore {
    cluster: Cluster,
}

#[async_trait]
impl ReservationStore for MetaReservationStore {
    async fn load(&self, target: &str, lun: u64) -> Result<Option<PrState>, IscsiError> {
        let cfg = match meta_read(&self.cluster, MetaRead::Iscsi).await? {
            MetaResponse::Iscsi(c) => c,
            _ => {
                return Err(IscsiError::Unavailable {
                    service: "metadata service",
                })
            }
        };
        match cfg.reservations.get(target).and_then(|m| m.get(&lun)) {
            None => Ok(None),
            Some(b) => bincode::deserialize(b)
                .map(Some)
                .map_err(|_| IscsiError::Protocol("stored reservation state does not decode")),
        }
    }

    async fn save(&self, target: &str, lun: u64, state: &PrState) -> Result<(), IscsiError> {
        let state = bincode::serialize(state)
            .map_err(|_| IscsiError::Protocol("reservation state does not encode"))?;
        self.cluster
            .meta()
            .command(MetaCommand::Iscsi(IscsiCommand::SaveReservations {
                iqn: target.to_string(),
                lun,
                state,
            }))
            .await
            .map_err(|_| IscsiError::Unavailable {
                service: "metadata service",
            })?;
        Ok(())
    }
}
