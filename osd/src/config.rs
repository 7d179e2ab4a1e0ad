//! The OSD's configuration file (TOML or any serde format); every field has a default.

use crate::error::{Error, Result};
use crate::nvjournal::JournalSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OsdConfig {
    /// This OSD's id. `None`: use the id persisted in `data_dir` by an earlier boot, or get a
    /// new one from the metadata service on first boot (and persist it).
    pub id: Option<u32>,
    /// Where the store, its data files and the journal live.
    pub data_dir: PathBuf,
    /// Address the RPC server binds (`ip:port`; port 0 picks a free port).
    pub listen: String,
    /// Address registered in the cluster map for peers and clients; default: the bound address.
    pub advertise: Option<String>,
    /// Metadata service replicas (any subset that includes a live one).
    pub meta: Vec<String>,
    /// Host name, for the host failure domain.
    pub host: String,
    /// Relative share of data placed here.
    pub weight: f64,
    /// Bytes of object data this OSD may hold; 0: the size of the filesystem under `data_dir`.
    /// Writes that would exceed it answer `NoSpace` and change nothing.
    pub capacity: u64,
    /// Interval of heartbeats to the metadata service.
    pub heartbeat_ms: u64,
    /// Pause between two scrubs of every object; 0 disables scrubbing.
    pub scrub_interval_ms: u64,
    /// Bytes per second recovery and backfill may copy (client I/O is not throttled); 0: no limit.
    pub recovery_bytes_per_sec: u64,
    /// Where the write journal lives: `"file"` (`data_dir/journal`, fdatasync'ed: survives
    /// power loss), `"nvdisk:shm"` (a memory pool in /dev/shm: survives a process crash, not
    /// power loss), `"nvdisk:sync"` (anonymous pool plus an fdatasync'ed write-ahead log:
    /// survives power loss) or `"nvdisk:file=/path/pool,size=256M[,sync]"`; the nvdisk's backups
    /// and logs go to `data_dir/nvdisk/`. Full syntax in [`crate::nvjournal`].
    pub journal: JournalSpec,
    /// Checkpoint (sync the store, trim the journal) once the journal holds this many bytes
    /// (at most half a bounded nvdisk journal).
    pub checkpoint_bytes: u64,
    /// ... or this often, whichever comes first.
    pub checkpoint_interval_ms: u64,
    /// PG log entries kept per placement group; a member further behind is backfilled.
    pub pg_log_keep: u64,
    /// How long a replica may take to answer before it is reported failed.
    pub peer_timeout_ms: u64,
    /// How long a write waits for the map to mark a failed replica down before failing with a
    /// retryable error.
    pub down_wait_ms: u64,
    /// Write the aligned middle of large writes (128 KiB and more) into the data files with
    /// `O_DIRECT` rather than through the page cache (off by itself on a file system that
    /// refuses it).
    pub direct_io: bool,
}

impl Default for OsdConfig {
    fn default() -> Self {
        OsdConfig {
            id: None,
            data_dir: PathBuf::from("/var/lib/cairn/osd"),
            listen: "127.0.0.1:7100".into(),
            advertise: None,
            meta: vec!["127.0.0.1:7000".into()],
            host: "localhost".into(),
            weight: 1.0,
            capacity: 0,
            heartbeat_ms: 1000,
            scrub_interval_ms: 24 * 3600 * 1000,
            recovery_bytes_per_sec: 100 << 20,
            journal: JournalSpec::File,
            checkpoint_bytes: 64 << 20,
            checkpoint_interval_ms: 5000,
            pg_log_keep: crate::store::DEFAULT_LOG_KEEP,
            peer_timeout_ms: 5000,
            down_wait_ms: 15000,
            direct_io: true,
        }
    }
}

impl OsdConfig {
    /// Check the values make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(Error::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("listen", "must be ip:port");
        }
        if self.meta.is_empty() {
            return bad("meta", "needs at least one metadata service address");
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return bad("weight", "must be a finite number >= 0");
        }
        if self.heartbeat_ms == 0 {
            return bad("heartbeat_ms", "must be > 0");
        }
        if self.checkpoint_interval_ms == 0 {
            return bad("checkpoint_interval_ms", "must be > 0");
        }
        if self.pg_log_keep == 0 {
            return bad("pg_log_keep", "must be > 0");
        }
        if self.peer_timeout_ms == 0 {
            return bad("peer_timeout_ms", "must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        OsdConfig::default().validate().unwrap();
        let c = OsdConfig {
            listen: "nope".into(),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                field: "listen",
                ..
            })
        ));
        let c = OsdConfig {
            meta: vec![],
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Config { field: "meta", .. })
        ));
        let c = OsdConfig {
            weight: f64::NAN,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn partial_config_fills_in_defaults() {
        let c: OsdConfig = toml::from_str("data_dir = \"/srv/osd1\"\ncapacity = 1000\n").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/osd1"));
        assert_eq!(c.capacity, 1000);
        assert_eq!(c.journal, JournalSpec::File);
        assert_eq!(c.heartbeat_ms, OsdConfig::default().heartbeat_ms);
        c.validate().unwrap();
    }

    #[test]
    fn journal_spec_reads_from_toml_and_bad_ones_name_the_field() {
        let c: OsdConfig = toml::from_str("journal = \"nvdisk:shm,size=64M\"\n").unwrap();
        assert_eq!(c.journal.to_string(), "nvdisk:shm,size=64M");
        let e = toml::from_str::<OsdConfig>("journal = \"nvdisk:tmpfs\"\n").unwrap_err();
        assert!(e.to_string().contains("journal"), "{e}");
        let back = toml::to_string(&c).unwrap();
        assert!(back.contains("journal = \"nvdisk:shm,size=64M\""), "{back}");
    }
}
