//! Block volumes as the metadata service records them.

use crate::ids::PoolId;
use serde::{Deserialize, Serialize};

/// A block volume: thin and striped over objects `Oid::for_piece(Volume, id, index)` of
/// `object_size`, or (see [`VolumeBacking::NvDisk`]) an nvdisk held by one gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Assigned by the metadata service, never reused.
    pub id: u64,
    pub name: String,
    /// Bytes; a multiple of `block_size`.
    pub size: u64,
    /// 512 or 4096.
    pub block_size: u32,
    /// Bytes per backing object (default 4 MiB).
    pub object_size: u64,
    pub pool: PoolId,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Where the data lives.
    pub backing: VolumeBacking,
}

/// Where a volume's data lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeBacking {
    /// Replicated (or erasure-coded) objects in the volume's pool.
    #[default]
    Objects,
    /// An nvdisk (a RAM disk made durable on two local backup files) in the data directory of
    /// the gateway named `gateway`, which alone serves the volume. It is not replicated: losing
    /// that gateway's disk loses the volume. `pool` and `object_size` are unused.
    NvDisk { gateway: String, mode: NvDiskMode },
}

/// Where an nvdisk volume's page pool lives and when a write is acknowledged; what an
/// acknowledged write survives is in [`NvDiskMode::survives`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NvDiskMode {
    /// Anonymous gateway memory: an acknowledged write is durable only after SYNCHRONIZE CACHE
    /// (or FUA, or the nvdisk's periodic disk transaction).
    Anon,
    /// A pool file in /dev/shm: an acknowledged write survives a gateway crash (kill -9), not a
    /// reboot or power loss, which fall back to the last disk transaction.
    Shm,
    /// Anonymous memory plus a write-ahead log fdatasync'ed before each acknowledgement.
    Sync,
    /// A /dev/shm pool plus the fdatasync'ed write-ahead log.
    ShmSync,
}

impl NvDiskMode {
    pub const NAMES: &'static str = "anon, shm, sync or shm-sync";

    /// What a write acknowledged by the gateway survives in this mode.
    pub fn survives(self) -> &'static str {
        match self {
            NvDiskMode::Anon => "nothing until SYNCHRONIZE CACHE or FUA",
            NvDiskMode::Shm => "a gateway crash, not power loss",
            NvDiskMode::Sync | NvDiskMode::ShmSync => "a gateway crash and power loss",
        }
    }
}

impl std::fmt::Display for NvDiskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NvDiskMode::Anon => "anon",
            NvDiskMode::Shm => "shm",
            NvDiskMode::Sync => "sync",
            NvDiskMode::ShmSync => "shm-sync",
        })
    }
}

impl std::str::FromStr for NvDiskMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "anon" => Ok(NvDiskMode::Anon),
            "shm" => Ok(NvDiskMode::Shm),
            "sync" => Ok(NvDiskMode::Sync),
            "shm-sync" | "shm,sync" => Ok(NvDiskMode::ShmSync),
            _ => Err(format!("nvdisk mode {s:?}: use {}", NvDiskMode::NAMES)),
        }
    }
}

/// Largest nvdisk volume: its whole image is held in gateway memory (or /dev/shm).
pub const MAX_NVDISK_SIZE: u64 = 1 << 40;

/// Checks of an nvdisk volume shared by the CLI and the metadata service.
pub fn validate_nvdisk_volume(
    name: &str,
    size: u64,
    block_size: u32,
    gateway: &str,
) -> Result<(), String> {
    validate_volume(name, size, block_size, u64::from(block_size))?;
    // The nvdisk's pages are 4 KiB.
    if !size.is_multiple_of(4096) || size > MAX_NVDISK_SIZE {
        return Err(format!(
            "nvdisk size {size}: a multiple of 4 KiB, at most {MAX_NVDISK_SIZE}"
        ));
    }
    if gateway.is_empty()
        || gateway.len() > 128
        || !gateway
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "gateway name {gateway:?}: use 1-128 of [A-Za-z0-9-_.]"
        ));
    }
    Ok(())
}

pub const DEFAULT_OBJECT_SIZE: u64 = 4 << 20;

impl VolumeInfo {
    pub fn blocks(&self) -> u64 {
        self.size / u64::from(self.block_size)
    }

    /// The gateway and mode of an nvdisk volume; `None` for an object volume.
    pub fn nvdisk(&self) -> Option<(&str, NvDiskMode)> {
        match &self.backing {
            VolumeBacking::NvDisk { gateway, mode } => Some((gateway, *mode)),
            VolumeBacking::Objects => None,
        }
    }
}

/// Checks shared by the CLI and the metadata service.
pub fn validate_volume(
    name: &str,
    size: u64,
    block_size: u32,
    object_size: u64,
) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("volume name {name:?}: use 1-128 of [A-Za-z0-9-_.]"));
    }
    if block_size != 512 && block_size != 4096 {
        return Err(format!("block size {block_size}: use 512 or 4096"));
    }
    if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
        return Err(format!(
            "size {size}: must be a positive multiple of the block size {block_size}"
        ));
    }
    if object_size < u64::from(block_size)
        || !object_size.is_multiple_of(u64::from(block_size))
        || object_size > 64 << 20
    {
        return Err(format!(
            "object size {object_size}: a multiple of the block size, at most 64 MiB"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate_volume("vol-1", 1 << 30, 512, DEFAULT_OBJECT_SIZE).is_ok());
        assert!(validate_volume("", 1 << 30, 512, DEFAULT_OBJECT_SIZE).is_err());
        assert!(validate_volume("a/b", 1 << 30, 512, DEFAULT_OBJECT_SIZE).is_err());
        assert!(validate_volume("v", 1000, 512, DEFAULT_OBJECT_SIZE).is_err());
        assert!(validate_volume("v", 4096, 1024, DEFAULT_OBJECT_SIZE).is_err());
        assert!(validate_volume("v", 4096, 4096, 1000).is_err());
        assert!(validate_nvdisk_volume("nv", 16 << 20, 512, "gw-1").is_ok());
        assert!(validate_nvdisk_volume("nv", 512, 512, "gw-1").is_err());
        assert!(validate_nvdisk_volume("nv", 16 << 20, 512, "").is_err());
        assert!(validate_nvdisk_volume("nv", 16 << 20, 512, "a b").is_err());
    }

    #[test]
    fn nvdisk_modes_round_trip() {
        for m in [
            NvDiskMode::Anon,
            NvDiskMode::Shm,
            NvDiskMode::Sync,
            NvDiskMode::ShmSync,
        ] {
            assert_eq!(m.to_string().parse::<NvDiskMode>(), Ok(m));
        }
        assert!("tmpfs".parse::<NvDiskMode>().is_err());
    }
}
