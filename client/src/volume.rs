//! Block volumes: a [`VolumeInfo`] from the metadata service and striped I/O over its objects.

use crate::error::Result;
use crate::striped::Striped;
use crate::Cluster;
use bytes::Bytes;
use cairn_proto::volume::VolumeInfo;
use cairn_proto::PieceKind;

/// I/O on one volume. Offsets are bytes; callers keep them inside `info.size`.
#[derive(Clone)]
pub struct VolumeIo {
    info: VolumeInfo,
    data: Striped,
}

impl VolumeIo {
    /// Open a volume whose record came from the metadata service.
    pub async fn open(cluster: &Cluster, info: VolumeInfo) -> Result<VolumeIo> {
        let map = cluster.map();
        let pool_name = match map.pools.get(&info.pool) {
            Some(p) => p.name.clone(),
            None => {
                let m = cluster.refresh_map().await?;
                m.pools
                    .get(&info.pool)
                    .map(|p| p.name.clone())
                    .ok_or_else(|| crate::ClientError::NoSuchPool(info.pool.to_string()))?
            }
        };
        let io = cluster.pool_io(&pool_name).await?;
        let data = Striped::new(io, PieceKind::Volume, info.id, info.object_size);
        Ok(VolumeIo { info, data })
    }

    pub fn info(&self) -> &VolumeInfo {
        &self.info
    }

    pub fn striped(&self) -> &Striped {
        &self.data
    }

    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.data.read(offset, len).await
    }

    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        self.data.write(offset, data).await
    }

    /// Free the range: it reads as zeros afterwards.
    pub async fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.data.punch(offset, len).await
    }

    /// Delete every backing object (the volume record is removed by the metadata service).
    pub async fn destroy(&self) -> Result<()> {
        let n = self.info.size.div_ceil(self.info.object_size);
        self.data.remove_objects(0, n).await
    }

    /// After a shrink: delete the objects past the new end and cut the one that straddles it.
    pub async fn shrink_to(&self, new_size: u64) -> Result<()> {
        let old_objects = self.info.size.div_ceil(self.info.object_size);
        if new_size < self.info.size {
            self.data
                .punch(new_size, old_objects * self.info.object_size - new_size)
                .await?;
        }
        Ok(())
    }
}
