//! Block volume commands.

use super::State;
use crate::error::MetaError;
use cairn_proto::msg::MetaResult;
use cairn_proto::volume::{validate_volume, VolumeInfo};

pub struct NewVolume<'a> {
    pub name: &'a str,
    pub size: u64,
    pub block_size: u32,
    pub object_size: u64,
    pub pool: &'a str,
}

pub fn validate(v: &NewVolume<'_>) -> Result<(), MetaError> {
    validate_volume(v.name, v.size, v.block_size, v.object_size).map_err(MetaError::invalid)
}

pub fn create(s: &mut State, v: NewVolume<'_>, at_ms: u64) -> Result<MetaResult, MetaError> {
    if s.volumes.contains_key(v.name) {
        return Err(MetaError::Exists {
            kind: "volume",
            name: v.name.to_string(),
        });
    }
    let pool = s
        .map
        .pool_by_name(v.pool)
        .ok_or_else(|| MetaError::NotFound {
            kind: "pool",
            name: v.pool.to_string(),
        })?
        .id;
    s.next_volume += 1;
    let info = VolumeInfo {
        id: s.next_volume,
        name: v.name.to_string(),
        size: v.size,
        block_size: v.block_size,
        object_size: v.object_size,
        pool,
        created_ms: at_ms,
    };
    s.volumes.insert(info.name.clone(), info.clone());
    Ok(MetaResult::Volume(info))
}

pub fn resize(s: &mut State, name: &str, size: u64) -> Result<MetaResult, MetaError> {
    let v = s.volumes.get_mut(name).ok_or_else(|| MetaError::NotFound {
        kind: "volume",
        name: name.to_string(),
    })?;
    validate_volume(name, size, v.block_size, v.object_size).map_err(MetaError::invalid)?;
    v.size = size;
    Ok(MetaResult::Volume(v.clone()))
}

pub fn delete(s: &mut State, name: &str) -> Result<MetaResult, MetaError> {
    if s.iscsi
        .targets
        .values()
        .any(|t| t.luns.values().any(|v| v == name))
    {
        return Err(MetaError::invalid(format!(
            "volume {name:?} is exported as an iSCSI LUN; remove the LUN first"
        )));
    }
    let v = s.volumes.remove(name).ok_or_else(|| MetaError::NotFound {
        kind: "volume",
        name: name.to_string(),
    })?;
    Ok(MetaResult::Volume(v))
}
