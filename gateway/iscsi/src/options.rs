//! Settings of the iSCSI service and their RFC 7143 ranges.

use serde::{Deserialize, Serialize};

use crate::error::IscsiError;
use crate::text;

/// Settings of the iSCSI service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IscsiOptions {
    /// Most TCP connections served at once; more wait in the listen backlog.
    pub max_clients: usize,
    /// Largest data segment we accept (declared MaxRecvDataSegmentLength), 512..=16777215.
    pub max_recv_data_segment_length: u32,
    /// Upper bound offered for MaxBurstLength (at least 262144, the RFC default).
    pub max_burst_length: u32,
    /// Upper bound offered for FirstBurstLength (at least 65536, the RFC default).
    pub first_burst_length: u32,
    /// Upper bound offered for MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// Upper bound offered for MaxConnections per session.
    pub max_connections_per_session: u32,
    /// Whether immediate data may be negotiated.
    pub immediate_data: bool,
    /// Whether we insist on InitialR2T=Yes (no unsolicited Data-Out).
    pub initial_r2t: bool,
    /// Commands an initiator may have outstanding per session (MaxCmdSN - ExpCmdSN + 1).
    pub command_window: u32,
    /// Target portal group tag reported at login and in SendTargets.
    pub portal_group_tag: u16,
    /// Seconds a connection may take to finish logging in.
    pub login_timeout_secs: u64,
    /// Pace of SANITIZE OVERWRITE in bytes per second, so wiping one volume leaves bandwidth
    /// to the others; 0 writes as fast as the device takes it.
    pub sanitize_bytes_per_sec: u64,
}

impl Default for IscsiOptions {
    fn default() -> Self {
        Self {
            max_clients: 1024,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            max_connections_per_session: 4,
            immediate_data: true,
            initial_r2t: false,
            command_window: 128,
            portal_group_tag: 1,
            login_timeout_secs: 30,
            sanitize_bytes_per_sec: 0,
        }
    }
}

impl IscsiOptions {
    /// Checks the ranges RFC 7143 allows and that the RFC defaults stay reachable (a key an
    /// initiator does not offer takes its default value).
    pub fn validate(&self) -> Result<(), IscsiError> {
        let bad = |field, reason| Err(IscsiError::InvalidOption { field, reason });
        if !(512..=16_777_215).contains(&self.max_recv_data_segment_length) {
            return bad("max_recv_data_segment_length", "must be 512..=16777215");
        }
        if !(262_144..=16_777_215).contains(&self.max_burst_length) {
            return bad("max_burst_length", "must be 262144..=16777215");
        }
        if self.first_burst_length < 65_536 || self.first_burst_length > self.max_burst_length {
            return bad("first_burst_length", "must be 65536..=max_burst_length");
        }
        if self.max_outstanding_r2t == 0 || self.max_connections_per_session == 0 {
            return bad("max_outstanding_r2t", "must be at least 1");
        }
        if !self.immediate_data {
            return bad("immediate_data", "must be true (the RFC default)");
        }
        if self.command_window == 0 || self.command_window > 65_536 {
            return bad("command_window", "must be 1..=65536");
        }
        if self.max_clients == 0 {
            return bad("max_clients", "must be at least 1");
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> text::Limits {
        text::Limits {
            max_recv_data_segment_length: self.max_recv_data_segment_length,
            max_burst_length: self.max_burst_length,
            first_burst_length: self.first_burst_length,
            max_outstanding_r2t: self.max_outstanding_r2t,
            max_connections: self.max_connections_per_session,
            immediate_data: self.immediate_data,
            initial_r2t: self.initial_r2t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(IscsiOptions::default().validate().is_ok());
        let o = IscsiOptions {
            first_burst_length: 4 << 20,
            ..Default::default()
        };
        assert!(matches!(
            o.validate(),
            Err(IscsiError::InvalidOption {
                field: "first_burst_length",
                ..
            })
        ));
    }
}
