//! Block volumes as the metadata service records them.

use crate::ids::PoolId;
use serde::{Deserialize, Serialize};

/// A thin block volume striped over objects `Oid::for_piece(Volume, id, index)` of `object_size`.
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
}

pub const DEFAULT_OBJECT_SIZE: u64 = 4 << 20;

impl VolumeInfo {
    pub fn blocks(&self) -> u64 {
        self.size / u64::from(self.block_size)
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
    }
}
