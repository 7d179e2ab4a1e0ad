//! Pool commands.

use super::State;
use crate::error::MetaError;
use cairn_proto::map::{FailureDomain, Pool};
use cairn_proto::msg::MetaResult;
use cairn_proto::{PoolId, WriteMode};

/// Most placement groups a pool may have.
pub const MAX_PG_NUM: u32 = 65_536;
const MAX_NAME_LEN: usize = 255;

pub struct NewPool<'a> {
    pub name: &'a str,
    pub size: u8,
    pub min_size: u8,
    pub pg_num: u32,
    pub mode: WriteMode,
    pub failure_domain: FailureDomain,
}

pub fn validate_name(name: &str) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(MetaError::invalid(format!(
            "pool name {name:?} must be 1..={MAX_NAME_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

pub fn validate(
    name: &str,
    size: u8,
    min_size: u8,
    pg_num: u32,
    mode: WriteMode,
) -> Result<(), MetaError> {
    validate_name(name)?;
    if size < 1 {
        return Err(MetaError::invalid("pool size must be at least 1"));
    }
    if min_size < 1 || min_size > size {
        return Err(MetaError::invalid(format!(
            "pool min_size {min_size} must be in 1..={size} (the pool size)"
        )));
    }
    if !(1..=MAX_PG_NUM).contains(&pg_num) {
        return Err(MetaError::invalid(format!(
            "pool pg_num {pg_num} must be in 1..={MAX_PG_NUM}"
        )));
    }
    if let WriteMode::SemiSync { window: 0 } = mode {
        return Err(MetaError::invalid(
            "semi-sync window must be at least 1 (0 is sync mode)",
        ));
    }
    Ok(())
}

pub fn create(s: &mut State, p: NewPool<'_>) -> Result<(MetaResult, bool), MetaError> {
    if s.map.pool_by_name(p.name).is_some() {
        return Err(MetaError::Exists {
            kind: "pool",
            name: p.name.into(),
        });
    }
    let id = PoolId(s.next_pool);
    s.next_pool = s
        .next_pool
        .checked_add(1)
        .ok_or_else(|| MetaError::invalid("pool ids exhausted"))?;
    s.map.pools.insert(
        id,
        Pool {
            id,
            name: p.name.into(),
            size: p.size,
            min_size: p.min_size,
            pg_num: p.pg_num,
            mode: p.mode,
            failure_domain: p.failure_domain,
        },
    );
    Ok((MetaResult::Pool(id), true))
}

pub fn delete(s: &mut State, name: &str) -> Result<(MetaResult, bool), MetaError> {
    let id = s
        .map
        .pool_by_name(name)
        .map(|p| p.id)
        .ok_or_else(|| MetaError::NotFound {
            kind: "pool",
            name: name.into(),
        })?;
    s.map.pools.remove(&id);
    Ok((MetaResult::Done, true))
}
