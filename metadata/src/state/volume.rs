//! Block volume commands.

use super::State;
use crate::error::MetaError;
use cairn_proto::msg::MetaResult;
use cairn_proto::volume::{
    validate_nvdisk_volume, validate_volume, NvDiskMode, VolumeBacking, VolumeInfo,
};

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

fn check_free(s: &State, name: &str) -> Result<(), MetaError> {
    if s.volumes.contains_key(name) {
        return Err(MetaError::Exists {
            kind: "volume",
            name: name.to_string(),
        });
    }
    Ok(())
}

pub fn create(s: &mut State, v: NewVolume<'_>, at_ms: u64) -> Result<MetaResult, MetaError> {
    check_free(s, v.name)?;
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
        backing: VolumeBacking::Objects,
    };
    s.volumes.insert(info.name.clone(), info.clone());
    Ok(MetaResult::Volume(info))
}

pub struct NewNvdiskVolume<'a> {
    pub name: &'a str,
    pub size: u64,
    pub block_size: u32,
    pub gateway: &'a str,
    pub mode: NvDiskMode,
}

pub fn validate_nvdisk(
    name: &str,
    size: u64,
    block_size: u32,
    gateway: &str,
) -> Result<(), MetaError> {
    validate_nvdisk_volume(name, size, block_size, gateway).map_err(MetaError::invalid)
}

/// Records a volume that is an nvdisk on one gateway. Only the record lives here: the gateway
/// creates the device in its data directory when it first serves the volume.
pub fn create_nvdisk(
    s: &mut State,
    v: NewNvdiskVolume<'_>,
    at_ms: u64,
) -> Result<MetaResult, MetaError> {
    check_free(s, v.name)?;
    s.next_volume += 1;
    let info = VolumeInfo {
        id: s.next_volume,
        name: v.name.to_string(),
        size: v.size,
        block_size: v.block_size,
        object_size: u64::from(v.block_size),
        pool: Default::default(),
        created_ms: at_ms,
        backing: VolumeBacking::NvDisk {
            gateway: v.gateway.to_string(),
            mode: v.mode,
        },
    };
    s.volumes.insert(info.name.clone(), info.clone());
    Ok(MetaResult::Volume(info))
}

pub fn resize(s: &mut State, name: &str, size: u64) -> Result<MetaResult, MetaError> {
    let v = s.volumes.get_mut(name).ok_or_else(|| MetaError::NotFound {
        kind: "volume",
        name: name.to_string(),
    })?;
    if v.nvdisk().is_some() {
        return Err(MetaError::invalid(format!(
            "volume {name:?} is an nvdisk, whose size is fixed"
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn nvdisk_volumes_record_their_gateway_and_keep_their_size() {
        let mut s = State::bootstrap(&BTreeMap::from([(1, "a:1".to_string())]));
        let nv = |name| NewNvdiskVolume {
            name,
            size: 16 << 20,
            block_size: 512,
            gateway: "gw1",
            mode: NvDiskMode::Sync,
        };
        let MetaResult::Volume(v) = create_nvdisk(&mut s, nv("nv"), 5).unwrap() else {
            panic!("no volume");
        };
        assert_eq!(v.nvdisk(), Some(("gw1", NvDiskMode::Sync)));
        assert!(matches!(
            create_nvdisk(&mut s, nv("nv"), 6),
            Err(MetaError::Exists { .. })
        ));
        assert!(resize(&mut s, "nv", 32 << 20).is_err());
        assert_eq!(s.volumes["nv"].size, 16 << 20);
        assert!(validate_nvdisk("nv", 1000, 512, "gw1").is_err());
        delete(&mut s, "nv").unwrap();
        // Ids are never reused, so a new volume never finds the old one's files.
        let MetaResult::Volume(w) = create_nvdisk(&mut s, nv("nv"), 7).unwrap() else {
            panic!("no volume");
        };
        assert!(w.id > v.id);
    }
}
