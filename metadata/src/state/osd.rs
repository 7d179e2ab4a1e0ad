//! OSD commands: registration on boot, up/down and in/out, weight.

use super::State;
use crate::error::MetaError;
use cairn_proto::map::OsdInfo;
use cairn_proto::msg::MetaResult;
use cairn_proto::OsdId;

pub fn validate_weight(weight: f64) -> Result<(), MetaError> {
    if !weight.is_finite() || weight < 0.0 {
        return Err(MetaError::invalid(format!(
            "osd weight {weight} must be a finite number >= 0"
        )));
    }
    Ok(())
}

fn not_found(id: OsdId) -> MetaError {
    MetaError::NotFound {
        kind: "osd",
        name: id.to_string(),
    }
}

/// Register or re-register an OSD and mark it up and in. A known id (an OSD that restarted, or
/// one whose id an operator assigned) keeps it; `None` takes the lowest free id.
pub fn boot(
    s: &mut State,
    id: Option<OsdId>,
    addr: &str,
    host: &str,
    weight: f64,
    capacity: u64,
) -> Result<(MetaResult, bool), MetaError> {
    let id = match id {
        Some(id) => id,
        None => {
            let mut next = 0u32;
            for used in s.map.osds.keys() {
                if used.0 != next {
                    break;
                }
                next = next
                    .checked_add(1)
                    .ok_or_else(|| MetaError::invalid("osd ids exhausted"))?;
            }
            OsdId(next)
        }
    };
    let used = s.map.osds.get(&id).map_or(0, |o| o.used);
    s.map.osds.insert(
        id,
        OsdInfo {
            id,
            addr: addr.into(),
            host: host.into(),
            weight,
            capacity,
            used,
            up: true,
            in_cluster: true,
            down_since_ms: None,
        },
    );
    // A boot is news even when nothing else changed: the OSD restarted and peers must re-peer.
    Ok((MetaResult::Osd(id), true))
}

pub fn set_state(
    s: &mut State,
    id: OsdId,
    up: Option<bool>,
    in_cluster: Option<bool>,
    at_ms: u64,
) -> Result<(MetaResult, bool), MetaError> {
    let o = s.map.osds.get_mut(&id).ok_or_else(|| not_found(id))?;
    let mut changed = false;
    if let Some(up) = up {
        if o.up != up {
            o.up = up;
            o.down_since_ms = if up { None } else { Some(at_ms) };
            changed = true;
        }
    }
    if let Some(inc) = in_cluster {
        if o.in_cluster != inc {
            o.in_cluster = inc;
            changed = true;
        }
    }
    Ok((MetaResult::Done, changed))
}

pub fn set_weight(s: &mut State, id: OsdId, weight: f64) -> Result<(MetaResult, bool), MetaError> {
    let o = s.map.osds.get_mut(&id).ok_or_else(|| not_found(id))?;
    let changed = o.weight != weight;
    o.weight = weight;
    Ok((MetaResult::Done, changed))
}
