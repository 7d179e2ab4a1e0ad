//! Text key=value pairs (RFC 7143 §6) and operational parameter negotiation (§13).
//!
//! Wire form: a sequence of `key=value` strings each terminated by a NUL byte; values are
//! UTF-8 restricted to the iSCSI character set. Parsing is lenient about a missing final NUL and
//! rejects pairs without `=` with a typed error.

use std::fmt;

/// Why a text data segment could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text pair without '=': {0:?}")]
    MissingEquals(String),
    #[error("text is not valid UTF-8")]
    NotUtf8,
    #[error("key {0:?} appears twice")]
    Duplicate(String),
}

/// Parses a NUL-separated key=value list.
pub fn parse_pairs(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::MissingEquals(s.to_string()))?;
        if out.iter().any(|(ek, _)| ek == k) {
            return Err(TextError::Duplicate(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Serialises pairs as `key=value\0...`.
pub fn encode_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Operational parameters of a session and its connections after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the initiator declared it can receive: bounds our Data-In / text segments.
    pub initiator_mrdsl: u32,
    /// What we declared we can receive.
    pub target_mrdsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
    pub max_connections: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

/// Target-side limits offered during negotiation (from [`crate::IscsiOptions`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
}

impl Params {
    /// RFC 7143 defaults, clipped by our limits where we declare a value.
    pub fn defaults(limits: &Limits) -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: limits.max_recv_data_segment_length,
            max_burst: 262_144.min(limits.max_burst_length),
            first_burst: 65_536.min(limits.first_burst_length),
            immediate_data: limits.immediate_data,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// Outcome of offering one key to the negotiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Respond with this value.
    Reply(String),
    /// Declarative key accepted; nothing to send back.
    Accepted,
    /// The key is not known (reply `NotUnderstood`).
    NotUnderstood,
    /// The key is known but meaningless in this session type (reply `Irrelevant`).
    Irrelevant,
    /// The value is out of range or malformed (reply `Reject`).
    Reject,
}

impl fmt::Display for KeyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOutcome::Reply(v) => f.write_str(v),
            KeyOutcome::Accepted => Ok(()),
            KeyOutcome::NotUnderstood => f.write_str("NotUnderstood"),
            KeyOutcome::Irrelevant => f.write_str("Irrelevant"),
            KeyOutcome::Reject => f.write_str("Reject"),
        }
    }
}

fn parse_num(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn clamp_num(v: &str, lo: u64, hi: u64) -> Option<u32> {
    let n = parse_num(v)?;
    if n < lo || n > hi {
        return None;
    }
    Some(n as u32)
}

/// Negotiates one operational key proposed by the initiator, updating `p`.
/// `discovery` marks a discovery session, where session-wide data keys are irrelevant.
pub fn negotiate(
    p: &mut Params,
    limits: &Limits,
    key: &str,
    value: &str,
    discovery: bool,
) -> KeyOutcome {
    let data_key = matches!(
        key,
        "MaxBurstLength"
            | "FirstBurstLength"
            | "ImmediateData"
            | "InitialR2T"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxConnections"
    );
    if discovery && data_key {
        return KeyOutcome::Irrelevant;
    }
    let reject = KeyOutcome::Reject;
    match key {
        "HeaderDigest" | "DataDigest" => {
            let choice = value
                .split(',')
                .find(|c| *c == "None" || *c == "CRC32C")
                .map(|c| c.to_string());
            match choice {
                Some(c) => {
                    let on = c == "CRC32C";
                    if key == "HeaderDigest" {
                        p.header_digest = on;
                    } else {
                        p.data_digest = on;
                    }
                    KeyOutcome::Reply(c)
                }
                None => reject,
            }
        }
        "MaxRecvDataSegmentLength" => match clamp_num(value, 512, 16_777_215) {
            Some(n) => {
                p.initiator_mrdsl = n;
                KeyOutcome::Accepted
            }
            None => reject,
        },
        "MaxBurstLength" => match clamp_num(value, 512, 16_777_215) {
            Some(n) => {
                p.max_burst = n.min(limits.max_burst_length);
                p.first_burst = p.first_burst.min(p.max_burst);
                KeyOutcome::Reply(p.max_burst.to_string())
            }
            None => reject,
        },
        "FirstBurstLength" => match clamp_num(value, 512, 16_777_215) {
            Some(n) => {
                p.first_burst = n.min(limits.first_burst_length).min(p.max_burst);
                KeyOutcome::Reply(p.first_burst.to_string())
            }
            None => reject,
        },
        "ImmediateData" => match parse_bool(value) {
            Some(b) => {
                p.immediate_data = b && limits.immediate_data;
                KeyOutcome::Reply(yes_no(p.immediate_data))
            }
            None => reject,
        },
        "InitialR2T" => match parse_bool(value) {
            Some(b) => {
                p.initial_r2t = b || limits.initial_r2t;
                KeyOutcome::Reply(yes_no(p.initial_r2t))
            }
            None => reject,
        },
        "MaxOutstandingR2T" => match clamp_num(value, 1, 65_535) {
            Some(n) => {
                p.max_outstanding_r2t = n.min(limits.max_outstanding_r2t);
                KeyOutcome::Reply(p.max_outstanding_r2t.to_string())
            }
            None => reject,
        },
        "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
            Some(_) => {
                // We only handle in-order data (OR semantics: our Yes wins).
                if key == "DataPDUInOrder" {
                    p.data_pdu_in_order = true;
                } else {
                    p.data_sequence_in_order = true;
                }
                KeyOutcome::Reply(yes_no(true))
            }
            None => reject,
        },
        "ErrorRecoveryLevel" => match clamp_num(value, 0, 2) {
            Some(_) => {
                p.error_recovery_level = 0;
                KeyOutcome::Reply("0".into())
            }
            None => reject,
        },
        "MaxConnections" => match clamp_num(value, 1, 65_535) {
            Some(n) => {
                p.max_connections = n.min(limits.max_connections);
                KeyOutcome::Reply(p.max_connections.to_string())
            }
            None => reject,
        },
        "DefaultTime2Wait" => match clamp_num(value, 0, 3600) {
            Some(n) => {
                p.default_time2wait = n.max(2);
                KeyOutcome::Reply(p.default_time2wait.to_string())
            }
            None => reject,
        },
        "DefaultTime2Retain" => match clamp_num(value, 0, 3600) {
            Some(n) => {
                p.default_time2retain = n.min(20);
                KeyOutcome::Reply(p.default_time2retain.to_string())
            }
            None => reject,
        },
        "IFMarker" | "OFMarker" => match parse_bool(value) {
            Some(_) => KeyOutcome::Reply("No".into()),
            None => reject,
        },
        "OFMarkInt" | "IFMarkInt" => KeyOutcome::Irrelevant,
        "InitiatorName" | "InitiatorAlias" | "SessionType" | "TargetName" => KeyOutcome::Accepted,
        // RFC 7144 keys: we implement neither level 2 nor the task reporting extensions.
        "iSCSIProtocolLevel" => KeyOutcome::Reply("1".into()),
        "TaskReporting" => KeyOutcome::Reply("RFC3720".into()),
        _ => KeyOutcome::NotUnderstood,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            max_outstanding_r2t: 1,
            max_connections: 4,
            immediate_data: true,
            initial_r2t: false,
        }
    }

    #[test]
    fn parse_and_encode() {
        let pairs = parse_pairs(b"A=1\0B=x,y\0").unwrap();
        assert_eq!(pairs[1], ("B".into(), "x,y".into()));
        assert_eq!(encode_pairs(&pairs), b"A=1\0B=x,y\0");
        assert!(parse_pairs(b"A=1").is_ok());
        assert!(matches!(
            parse_pairs(b"novalue\0"),
            Err(TextError::MissingEquals(_))
        ));
        assert!(matches!(
            parse_pairs(b"A=1\0A=2\0"),
            Err(TextError::Duplicate(_))
        ));
        assert_eq!(parse_pairs(&[0xff, b'=', 0]), Err(TextError::NotUtf8));
    }

    #[test]
    fn negotiation_semantics() {
        let l = limits();
        let mut p = Params::defaults(&l);
        assert_eq!(
            negotiate(&mut p, &l, "HeaderDigest", "CRC32C,None", false),
            KeyOutcome::Reply("CRC32C".into())
        );
        assert!(p.header_digest);
        assert_eq!(
            negotiate(&mut p, &l, "DataDigest", "MD5", false),
            KeyOutcome::Reject
        );
        negotiate(&mut p, &l, "MaxBurstLength", "16776192", false);
        assert_eq!(p.max_burst, 1 << 20);
        negotiate(&mut p, &l, "FirstBurstLength", "2000000", false);
        assert_eq!(p.first_burst, 262_144);
        assert_eq!(
            negotiate(&mut p, &l, "InitialR2T", "No", false),
            KeyOutcome::Reply("No".into())
        );
        assert_eq!(
            negotiate(&mut p, &l, "MaxConnections", "8", false),
            KeyOutcome::Reply("4".into())
        );
        assert_eq!(
            negotiate(&mut p, &l, "ErrorRecoveryLevel", "2", false),
            KeyOutcome::Reply("0".into())
        );
        assert_eq!(
            negotiate(&mut p, &l, "X-com.example.Foo", "1", false),
            KeyOutcome::NotUnderstood
        );
        assert_eq!(
            negotiate(&mut p, &l, "MaxBurstLength", "1", true),
            KeyOutcome::Irrelevant
        );
        assert_eq!(
            negotiate(&mut p, &l, "MaxRecvDataSegmentLength", "65536", false),
            KeyOutcome::Accepted
        );
        assert_eq!(p.initiator_mrdsl, 65536);
    }

    proptest! {
        #[test]
        fn parse_pairs_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_pairs(&bytes);
        }

        #[test]
        fn negotiated_bursts_stay_ordered(mb in 0u64..20_000_000, fb in 0u64..20_000_000) {
            let l = limits();
            let mut p = Params::defaults(&l);
            negotiate(&mut p, &l, "MaxBurstLength", &mb.to_string(), false);
            negotiate(&mut p, &l, "FirstBurstLength", &fb.to_string(), false);
            prop_assert!(p.first_burst <= p.max_burst);
            prop_assert!(p.max_burst <= l.max_burst_length);
        }
    }
}
