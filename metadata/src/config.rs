//! The metadata daemon's configuration: one serde struct, every field with a default, checked by
//! [`MetaConfig::validate`] before anything starts.

use crate::error::MetaError;
use cairn_proto::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    /// This replica's raft node id (non-zero, unique in the cluster, never reused).
    pub id: NodeId,
    /// Address the RPC server binds (`ip:port`; port 0 picks a free one).
    pub listen: String,
    /// Address other replicas and clients use to reach this one. Empty: this replica's entry in
    /// `peers`, or else the address the listener actually bound.
    pub advertise: String,
    /// Directory of the raft log, hard state and snapshots (created if missing).
    pub data_dir: PathBuf,
    /// The initial voters, raft id → RPC address, this replica included. Read only when the data
    /// directory is empty; every initial replica must be given the same map. Empty with `join`.
    /// In TOML the ids are keys: `[peers]` then `1 = "10.0.0.1:7100"`.
    #[serde(with = "peer_map")]
    pub peers: BTreeMap<NodeId, String>,
    /// Start empty and wait to be added to a running cluster (`AddMember`), which then sends this
    /// replica a snapshot.
    pub join: bool,
    /// Milliseconds per raft tick.
    pub tick_ms: u64,
    /// Ticks without hearing from a leader before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats (must be fewer than `election_ticks`).
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots; each snapshot compacts the log up to it.
    pub snapshot_every: u64,
    /// An OSD silent this long (milliseconds) is marked down by the leader.
    pub osd_down_after_ms: u64,
    /// An OSD down this long (milliseconds) is marked out, which moves its data elsewhere.
    pub osd_out_after_ms: u64,
    /// Placement-group states older than this (milliseconds) are dropped from `Status`.
    pub pg_report_ttl_ms: u64,
}

/// Peer maps with numeric ids as string keys, since TOML keys are always strings.
mod peer_map {
    use cairn_proto::NodeId;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(m: &BTreeMap<NodeId, String>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<NodeId, String>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match k.parse::<NodeId>() {
                Ok(id) => Ok((id, v)),
                Err(_) => Err(D::Error::custom(format!(
                    "peer id {k:?} is not a raft node id (an unsigned integer)"
                ))),
            })
            .collect()
    }
}

impl Default for MetaConfig {
    fn default() -> MetaConfig {
        MetaConfig {
            id: 1,
            listen: "127.0.0.1:7100".into(),
            advertise: String::new(),
            data_dir: PathBuf::from("cairn-meta"),
            peers: BTreeMap::new(),
            join: false,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 1000,
            osd_down_after_ms: 6_000,
            osd_out_after_ms: 600_000,
            pg_report_ttl_ms: 30_000,
        }
    }
}

impl MetaConfig {
    /// Check the fields against each other; the error names the field and says what is wrong.
    pub fn validate(&self) -> Result<(), MetaError> {
        let bad = |field: &'static str, reason: String| Err(MetaError::Config { field, reason });
        if self.id == 0 {
            return bad("id", "must be non-zero (raft reserves 0)".into());
        }
        if self.listen.is_empty() {
            return bad("listen", "must be an ip:port to bind".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must name a directory".into());
        }
        if self.join && !self.peers.is_empty() {
            return bad(
                "peers",
                "must be empty with join = true: the members arrive with the leader's snapshot"
                    .into(),
            );
        }
        if !self.join && !self.peers.contains_key(&self.id) {
            return bad(
                "peers",
                format!(
                    "must list this replica (id {}) among the initial voters, or set join = true",
                    self.id
                ),
            );
        }
        if let Some((id, _)) = self.peers.iter().find(|(id, a)| **id == 0 || a.is_empty()) {
            return bad(
                "peers",
                format!("entry {id} needs a non-zero id and an address"),
            );
        }
        if self.tick_ms == 0 {
            return bad("tick_ms", "must be at least 1".into());
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks", "must be at least 1".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad(
                "election_ticks",
                format!(
                    "must be greater than heartbeat_ticks ({}), or followers campaign between heartbeats",
                    self.heartbeat_ticks
                ),
            );
        }
        if self.snapshot_every == 0 {
            return bad("snapshot_every", "must be at least 1".into());
        }
        if self.osd_down_after_ms == 0 {
            return bad("osd_down_after_ms", "must be at least 1".into());
        }
        if self.osd_out_after_ms == 0 {
            return bad("osd_out_after_ms", "must be at least 1".into());
        }
        if self.pg_report_ttl_ms == 0 {
            return bad("pg_report_ttl_ms", "must be at least 1".into());
        }
        Ok(())
    }

    pub(crate) fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_node() -> MetaConfig {
        MetaConfig {
            peers: BTreeMap::from([(1, "127.0.0.1:7100".to_string())]),
            ..MetaConfig::default()
        }
    }

    #[test]
    fn defaults_with_self_in_peers_are_valid() {
        one_node().validate().unwrap();
    }

    #[test]
    fn parses_from_toml_with_defaults_for_missing_fields() {
        let cfg: MetaConfig = toml::from_str(
            r#"
            id = 2
            listen = "127.0.0.1:7200"
            data_dir = "/tmp/m2"
            snapshot_every = 50
            [peers]
            1 = "127.0.0.1:7100"
            2 = "127.0.0.1:7200"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.snapshot_every, 50);
        assert_eq!(cfg.tick_ms, 100);
        assert_eq!(cfg.peers.len(), 2);
        cfg.validate().unwrap();
        assert!(toml::from_str::<MetaConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<MetaConfig>("[peers]\nx = \"a:1\"").is_err());
        let back: MetaConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |c: MetaConfig| match c.validate() {
            Err(MetaError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(MetaConfig {
                id: 0,
                ..one_node()
            }),
            "id"
        );
        assert_eq!(
            field(MetaConfig {
                id: 5,
                ..one_node()
            }),
            "peers"
        );
        assert_eq!(
            field(MetaConfig {
                join: true,
                ..one_node()
            }),
            "peers"
        );
        assert_eq!(
            field(MetaConfig {
                election_ticks: 2,
                ..one_node()
            }),
            "election_ticks"
        );
        assert_eq!(
            field(MetaConfig {
                snapshot_every: 0,
                ..one_node()
            }),
            "snapshot_every"
        );
        let joiner = MetaConfig {
            join: true,
            peers: BTreeMap::new(),
            ..MetaConfig::default()
        };
        joiner.validate().unwrap();
    }
}
