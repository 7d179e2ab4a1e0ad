//! iSCSI target configuration commands.

use super::State;
use crate::error::MetaError;
use cairn_proto::iscsi::{validate_chap, validate_iqn, IscsiCommand, IscsiTargetInfo};
use cairn_proto::msg::MetaResult;

/// Largest encoded reservation state of one LUN.
const MAX_PR_STATE: usize = 1 << 20;

pub fn validate(c: &IscsiCommand) -> Result<(), MetaError> {
    let iqn = match c {
        IscsiCommand::CreateTarget { iqn }
        | IscsiCommand::DeleteTarget { iqn }
        | IscsiCommand::AddLun { iqn, .. }
        | IscsiCommand::RemoveLun { iqn, .. }
        | IscsiCommand::SetChap { iqn, .. }
        | IscsiCommand::SetAllowedInitiators { iqn, .. }
        | IscsiCommand::SaveReservations { iqn, .. } => Some(iqn),
        IscsiCommand::SetDiscoveryChap { .. } => None,
    };
    if let Some(iqn) = iqn {
        validate_iqn(iqn).map_err(MetaError::invalid)?;
    }
    match c {
        IscsiCommand::SetChap { chap, mutual, .. } => {
            for c in chap.iter().chain(mutual.iter()) {
                validate_chap(c).map_err(MetaError::invalid)?;
            }
            if mutual.is_some() && chap.is_none() {
                return Err(MetaError::invalid("mutual CHAP needs one-way CHAP too"));
            }
        }
        IscsiCommand::SetDiscoveryChap { chap: Some(c) } => {
            validate_chap(c).map_err(MetaError::invalid)?
        }
        IscsiCommand::AddLun { lun: Some(l), .. } | IscsiCommand::RemoveLun { lun: l, .. }
            if *l > 16383 =>
        {
            return Err(MetaError::invalid(format!(
                "LUN {l} is out of range 0..=16383"
            )));
        }
        IscsiCommand::SaveReservations { state, .. } if state.len() > MAX_PR_STATE => {
            return Err(MetaError::invalid("reservation state too large"));
        }
        _ => {}
    }
    Ok(())
}

fn target<'a>(s: &'a mut State, iqn: &str) -> Result<&'a mut IscsiTargetInfo, MetaError> {
    s.iscsi
        .targets
        .get_mut(iqn)
        .ok_or_else(|| MetaError::NotFound {
            kind: "iSCSI target",
            name: iqn.to_string(),
        })
}

pub fn apply(s: &mut State, c: &IscsiCommand) -> Result<MetaResult, MetaError> {
    match c {
        IscsiCommand::CreateTarget { iqn } => {
            if s.iscsi.targets.contains_key(iqn) {
                return Err(MetaError::Exists {
                    kind: "iSCSI target",
                    name: iqn.clone(),
                });
            }
            s.iscsi.targets.insert(
                iqn.clone(),
                IscsiTargetInfo {
                    iqn: iqn.clone(),
                    ..Default::default()
                },
            );
        }
        IscsiCommand::DeleteTarget { iqn } => {
            if s.iscsi.targets.remove(iqn).is_none() {
                return Err(MetaError::NotFound {
                    kind: "iSCSI target",
                    name: iqn.clone(),
                });
            }
            s.iscsi.reservations.remove(iqn);
        }
        IscsiCommand::AddLun { iqn, lun, volume } => {
            if !s.volumes.contains_key(volume) {
                return Err(MetaError::NotFound {
                    kind: "volume",
                    name: volume.clone(),
                });
            }
            let t = target(s, iqn)?;
            let n = match lun {
                Some(n) => *n,
                None => (0..).find(|n| !t.luns.contains_key(n)).expect("a free LUN"),
            };
            if t.luns.contains_key(&n) {
                return Err(MetaError::Exists {
                    kind: "LUN",
                    name: format!("{iqn} lun {n}"),
                });
            }
            t.luns.insert(n, volume.clone());
        }
        IscsiCommand::RemoveLun { iqn, lun } => {
            let t = target(s, iqn)?;
            if t.luns.remove(lun).is_none() {
                return Err(MetaError::NotFound {
                    kind: "LUN",
                    name: format!("{iqn} lun {lun}"),
                });
            }
            if let Some(r) = s.iscsi.reservations.get_mut(iqn) {
                r.remove(lun);
            }
        }
        IscsiCommand::SetChap { iqn, chap, mutual } => {
            let t = target(s, iqn)?;
            t.chap = chap.clone();
            t.mutual_chap = mutual.clone();
        }
        IscsiCommand::SetDiscoveryChap { chap } => s.iscsi.discovery_chap = chap.clone(),
        IscsiCommand::SetAllowedInitiators { iqn, initiators } => {
            target(s, iqn)?.allowed_initiators = initiators.clone();
        }
        IscsiCommand::SaveReservations { iqn, lun, state } => {
            if !target(s, iqn)?.luns.contains_key(lun) {
                return Err(MetaError::NotFound {
                    kind: "LUN",
                    name: format!("{iqn} lun {lun}"),
                });
            }
            s.iscsi
                .reservations
                .entry(iqn.clone())
                .or_default()
                .insert(*lun, state.clone());
        }
    }
    Ok(MetaResult::Done)
}
