//! iSCSI target configuration as the metadata service records it, so every gateway serves the
//! same targets and persistent reservations survive a gateway crash.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// CHAP credentials (a user name and its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IscsiTargetInfo {
    pub iqn: String,
    /// LUN number → volume name.
    pub luns: BTreeMap<u64, String>,
    /// Credentials the initiator must present (one-way CHAP).
    pub chap: Option<Chap>,
    /// Credentials the target presents back (mutual CHAP).
    pub mutual_chap: Option<Chap>,
    /// Initiator IQNs allowed to log in (empty: any).
    pub allowed_initiators: Vec<String>,
}

/// Every target plus the persistent-reservation state of each LUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IscsiConfig {
    pub targets: BTreeMap<String, IscsiTargetInfo>,
    /// Discovery-session CHAP (SendTargets), if required.
    pub discovery_chap: Option<Chap>,
    /// (target IQN, LUN) → the gateway's encoded reservation state.
    pub reservations: BTreeMap<String, BTreeMap<u64, Vec<u8>>>,
}

/// Changes to the iSCSI configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IscsiCommand {
    CreateTarget {
        iqn: String,
    },
    DeleteTarget {
        iqn: String,
    },
    /// Map a volume as a LUN (`lun: None` picks the lowest free number).
    AddLun {
        iqn: String,
        lun: Option<u64>,
        volume: String,
    },
    RemoveLun {
        iqn: String,
        lun: u64,
    },
    /// Set or clear (None) the one-way and mutual CHAP credentials of a target.
    SetChap {
        iqn: String,
        chap: Option<Chap>,
        mutual: Option<Chap>,
    },
    SetDiscoveryChap {
        chap: Option<Chap>,
    },
    SetAllowedInitiators {
        iqn: String,
        initiators: Vec<String>,
    },
    /// Persist a LUN's reservation state (written by gateways on every PR OUT).
    SaveReservations {
        iqn: String,
        lun: u64,
        state: Vec<u8>,
    },
}

/// A target name must look like an IQN (`iqn.yyyy-mm.reverse.domain[:name]`) or EUI/NAA name.
pub fn validate_iqn(iqn: &str) -> Result<(), String> {
    let ok_chars = iqn
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c));
    let ok_prefix = iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa.");
    if iqn.len() < 5 || iqn.len() > 223 || !ok_chars || !ok_prefix {
        return Err(format!(
            "target name {iqn:?}: use an iSCSI name like iqn.2026-11.org.example:vol1 (lowercase, at most 223 bytes)"
        ));
    }
    Ok(())
}

/// RFC 7143 requires CHAP secrets of 12 to 16 bytes for interoperability; we allow up to 255.
pub fn validate_chap(c: &Chap) -> Result<(), String> {
    if c.user.is_empty() || c.user.len() > 255 {
        return Err("CHAP user must be 1-255 bytes".into());
    }
    if c.secret.len() < 12 || c.secret.len() > 255 {
        return Err("CHAP secret must be 12-255 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_secrets() {
        assert!(validate_iqn("iqn.2026-11.org.cairn:vol1").is_ok());
        assert!(validate_iqn("IQN.bad").is_err());
        assert!(validate_iqn("target").is_err());
        let c = Chap {
            user: "u".into(),
            secret: "short".into(),
        };
        assert!(validate_chap(&c).is_err());
        let c = Chap {
            user: "u".into(),
            secret: "twelve-chars".into(),
        };
        assert!(validate_chap(&c).is_ok());
    }
}
