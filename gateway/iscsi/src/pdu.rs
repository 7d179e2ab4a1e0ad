//! iSCSI PDU framing and the typed views of initiator PDUs (RFC 7143 §11).
//!
//! Wire layout of every PDU:
//! ```text
//!  0      48 (BHS)          +AHS (4*TotalAHSLength)   +4 if HeaderDigest=CRC32C
//! +--------+----------------+-------------------------+
//! | BHS    | AHS ...        | header digest (opt.)    |
//! +--------+----------------+-------------------------+
//! | data segment (DataSegmentLength) | pad to 4 | data digest (opt., if len > 0) |
//!
//! BHS: byte 0  = .I|opcode(6)      byte 1 = F + opcode-specific flags
//!      bytes 2-3 opcode-specific   byte 4 = TotalAHSLength (words)
//!      bytes 5-7 DataSegmentLength (BE)   bytes 8-15 LUN or opcode-specific
//!      bytes 16-19 Initiator Task Tag     bytes 20-47 opcode-specific
//! ```
//! Every target PDU carries StatSN / ExpCmdSN / MaxCmdSN at bytes 24 / 28 / 32; the connection
//! writer stamps them just before a PDU leaves (see `session.rs`).
//!
//! [`parse`] frames a PDU out of a byte buffer and never panics: it returns
//! [`PduError::Incomplete`] when more bytes are needed and a typed error for bad input.
//! The `decode` constructors turn a framed [`Pdu`] into a typed request.

use bytes::{BufMut, Bytes, BytesMut};

use crate::digest::{crc32c, Crc32c};

pub const BHS_LEN: usize = 48;

/// Initiator opcodes.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TASK_MGMT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    // Target opcodes.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const TASK_MGMT_RSP: u8 = 0x22;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const TEXT_RSP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Why bytes could not be framed or decoded as a PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// At least this many bytes in total are needed before the PDU can be framed.
    #[error("incomplete PDU: {needed} bytes needed")]
    Incomplete { needed: usize },
    #[error("data segment of {len} bytes exceeds the negotiated maximum of {max}")]
    DataSegmentTooLong { len: usize, max: usize },
    #[error("header digest mismatch (got {got:#010x}, computed {computed:#010x})")]
    HeaderDigest { got: u32, computed: u32 },
    #[error("data digest mismatch (got {got:#010x}, computed {computed:#010x})")]
    DataDigest { got: u32, computed: u32 },
    #[error("opcode {0:#04x} is not an initiator opcode")]
    BadOpcode(u8),
    #[error("invalid field in a {what} PDU")]
    InvalidField { what: &'static str },
}

/// Digests in force on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// One framed PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Frames one PDU from the start of `buf`. Returns the PDU and the bytes it used.
/// `max_data` is the MaxRecvDataSegmentLength this side declared.
pub fn parse(buf: &[u8], digests: Digests, max_data: usize) -> Result<(Pdu, usize), PduError> {
    if buf.len() < BHS_LEN {
        return Err(PduError::Incomplete { needed: BHS_LEN });
    }
    let ahs_len = buf[4] as usize * 4;
    let data_len = (buf[5] as usize) << 16 | (buf[6] as usize) << 8 | buf[7] as usize;
    if data_len > max_data {
        return Err(PduError::DataSegmentTooLong {
            len: data_len,
            max: max_data,
        });
    }
    let hd = if digests.header { 4 } else { 0 };
    let dd = if digests.data && data_len > 0 { 4 } else { 0 };
    let header_end = BHS_LEN + ahs_len;
    let data_start = header_end + hd;
    let total = data_start + data_len + pad4(data_len) + dd;
    if buf.len() < total {
        return Err(PduError::Incomplete { needed: total });
    }
    if digests.header {
        let got = u32::from_le_bytes([
            buf[header_end],
            buf[header_end + 1],
            buf[header_end + 2],
            buf[header_end + 3],
        ]);
        let computed = crc32c(&buf[..header_end]);
        if got != computed {
            return Err(PduError::HeaderDigest { got, computed });
        }
    }
    let padded_end = data_start + data_len + pad4(data_len);
    if dd == 4 {
        let got = u32::from_le_bytes([
            buf[padded_end],
            buf[padded_end + 1],
            buf[padded_end + 2],
            buf[padded_end + 3],
        ]);
        let computed = crc32c(&buf[data_start..padded_end]);
        if got != computed {
            return Err(PduError::DataDigest { got, computed });
        }
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    Ok((
        Pdu {
            bhs,
            ahs: Bytes::copy_from_slice(&buf[BHS_LEN..header_end]),
            data: Bytes::copy_from_slice(&buf[data_start..data_start + data_len]),
        },
        total,
    ))
}

/// The full length of the PDU whose header starts `buf` (for skipping a PDU whose data digest
/// failed), or `None` if the BHS is not all there.
pub fn frame_len(buf: &[u8], digests: Digests) -> Option<usize> {
    if buf.len() < BHS_LEN {
        return None;
    }
    let ahs_len = buf[4] as usize * 4;
    let data_len = (buf[5] as usize) << 16 | (buf[6] as usize) << 8 | buf[7] as usize;
    let hd = if digests.header { 4 } else { 0 };
    let dd = if digests.data && data_len > 0 { 4 } else { 0 };
    Some(BHS_LEN + ahs_len + hd + data_len + pad4(data_len) + dd)
}

impl Pdu {
    /// A target PDU with only the opcode and the final bit set.
    pub fn new(opcode: u8) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode;
        bhs[1] = 0x80;
        Self {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        be32(&self.bhs, at)
    }
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }
    pub fn lun(&self) -> u64 {
        u64::from_be_bytes([
            self.bhs[8],
            self.bhs[9],
            self.bhs[10],
            self.bhs[11],
            self.bhs[12],
            self.bhs[13],
            self.bhs[14],
            self.bhs[15],
        ])
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_lun(&mut self, lun: u64) {
        self.bhs[8..16].copy_from_slice(&lun.to_be_bytes());
    }
    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32(16, itt);
    }

    /// Appends the wire form to `out`, filling in the lengths and digests.
    pub fn encode(&self, out: &mut BytesMut, digests: Digests) {
        let mut bhs = self.bhs;
        bhs[4] = (self.ahs.len() / 4) as u8;
        let dl = self.data.len() as u32;
        bhs[5..8].copy_from_slice(&dl.to_be_bytes()[1..]);
        out.reserve(BHS_LEN + self.ahs.len() + self.data.len() + 12);
        let start = out.len();
        out.put_slice(&bhs);
        out.put_slice(&self.ahs);
        if digests.header {
            let crc = crc32c(&out[start..]);
            out.put_u32_le(crc);
        }
        if !self.data.is_empty() {
            out.put_slice(&self.data);
            let pad = pad4(self.data.len());
            out.put_bytes(0, pad);
            if digests.data {
                let mut c = Crc32c::default();
                c.update(&self.data);
                c.update(&[0u8; 3][..pad]);
                out.put_u32_le(c.finish());
            }
        }
    }
}

/// Converts a 64-bit iSCSI LUN field to a LUN number (SAM flat or peripheral addressing).
pub fn lun_number(raw: u64) -> u64 {
    let b = raw.to_be_bytes();
    match b[0] >> 6 {
        0 => u64::from(b[1]) | (u64::from(b[0] & 0x3f) << 8),
        1 => u64::from(b[1]) | (u64::from(b[0] & 0x3f) << 8),
        _ => raw,
    }
}

/// Encodes a LUN number in the 8-byte LUN field (peripheral addressing below 256, flat above).
pub fn lun_field(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// SCSI Command (opcode 0x01).
#[derive(Debug, Clone)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub edtl: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub cdb: Bytes,
    pub immediate_data: Bytes,
}

impl ScsiCommand {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        let b = &pdu.bhs;
        let mut cdb = BytesMut::from(&b[32..48]);
        // An extended CDB travels in an AHS of type 1: length(2) type(1) reserved(1) bytes...
        let mut ahs = &pdu.ahs[..];
        while ahs.len() >= 4 {
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let ty = ahs[2];
            let total = 3 + len;
            let padded = total + pad4(total);
            if len == 0 || ahs.len() < total {
                return Err(PduError::InvalidField {
                    what: "SCSI command AHS",
                });
            }
            if ty == 1 {
                cdb.extend_from_slice(&ahs[4..total]);
            }
            ahs = &ahs[padded.min(ahs.len())..];
        }
        Ok(Self {
            immediate: pdu.immediate(),
            final_bit: pdu.final_bit(),
            read: b[1] & 0x40 != 0,
            write: b[1] & 0x20 != 0,
            attr: b[1] & 0x07,
            lun: pdu.lun(),
            itt: pdu.itt(),
            edtl: pdu.u32_at(20),
            cmdsn: pdu.u32_at(24),
            exp_statsn: pdu.u32_at(28),
            cdb: cdb.freeze(),
            immediate_data: pdu.data.clone(),
        })
    }
}

/// SCSI Data-Out (opcode 0x05).
#[derive(Debug, Clone)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub data_sn: u32,
    pub offset: u32,
    pub data: Bytes,
}

impl DataOut {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        Ok(Self {
            final_bit: pdu.final_bit(),
            lun: pdu.lun(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(20),
            data_sn: pdu.u32_at(36),
            offset: pdu.u32_at(40),
            data: pdu.data.clone(),
        })
    }
}

/// NOP-Out (opcode 0x00).
#[derive(Debug, Clone)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub data: Bytes,
}

impl NopOut {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        if !pdu.final_bit() {
            return Err(PduError::InvalidField { what: "NOP-Out" });
        }
        Ok(Self {
            immediate: pdu.immediate(),
            lun: pdu.lun(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(20),
            cmdsn: pdu.u32_at(24),
            data: pdu.data.clone(),
        })
    }
}

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    Other(u8),
}

/// Task Management Function Request (opcode 0x02).
#[derive(Debug, Clone)]
pub struct TaskMgmt {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: u64,
    pub itt: u32,
    pub ref_itt: u32,
    pub cmdsn: u32,
    pub ref_cmdsn: u32,
}

impl TaskMgmt {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        if !pdu.final_bit() {
            return Err(PduError::InvalidField {
                what: "task management",
            });
        }
        let function = match pdu.bhs[1] & 0x7f {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            f => TmfFunction::Other(f),
        };
        Ok(Self {
            immediate: pdu.immediate(),
            function,
            lun: pdu.lun(),
            itt: pdu.itt(),
            ref_itt: pdu.u32_at(20),
            cmdsn: pdu.u32_at(24),
            ref_cmdsn: pdu.u32_at(32),
        })
    }
}

/// Login Request (opcode 0x03).
#[derive(Debug, Clone)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Bytes,
}

impl LoginRequest {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        if pdu.opcode() != op::LOGIN {
            return Err(PduError::BadOpcode(pdu.opcode()));
        }
        let b = &pdu.bhs;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        Ok(Self {
            transit: b[1] & 0x80 != 0,
            cont: b[1] & 0x40 != 0,
            csg: (b[1] >> 2) & 3,
            nsg: b[1] & 3,
            version_max: b[2],
            version_min: b[3],
            isid,
            tsih: pdu.u16_at(14),
            itt: pdu.itt(),
            cid: pdu.u16_at(20),
            cmdsn: pdu.u32_at(24),
            exp_statsn: pdu.u32_at(28),
            data: pdu.data.clone(),
        })
    }
}

/// Text Request (opcode 0x04).
#[derive(Debug, Clone)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub data: Bytes,
}

impl TextRequest {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        let b = &pdu.bhs;
        Ok(Self {
            immediate: pdu.immediate(),
            final_bit: b[1] & 0x80 != 0,
            cont: b[1] & 0x40 != 0,
            itt: pdu.itt(),
            ttt: pdu.u32_at(20),
            cmdsn: pdu.u32_at(24),
            data: pdu.data.clone(),
        })
    }
}

/// Logout Request (opcode 0x06).
#[derive(Debug, Clone)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
}

impl LogoutRequest {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        if !pdu.final_bit() {
            return Err(PduError::InvalidField { what: "logout" });
        }
        Ok(Self {
            immediate: pdu.immediate(),
            reason: pdu.bhs[1] & 0x7f,
            itt: pdu.itt(),
            cid: pdu.u16_at(20),
            cmdsn: pdu.u32_at(24),
        })
    }
}

/// A decoded initiator PDU.
#[derive(Debug, Clone)]
pub enum Request {
    Nop(NopOut),
    Scsi(ScsiCommand),
    TaskMgmt(TaskMgmt),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    Snack,
}

impl Request {
    pub fn decode(pdu: &Pdu) -> Result<Self, PduError> {
        Ok(match pdu.opcode() {
            op::NOP_OUT => Request::Nop(NopOut::decode(pdu)?),
            op::SCSI_CMD => Request::Scsi(ScsiCommand::decode(pdu)?),
            op::TASK_MGMT => Request::TaskMgmt(TaskMgmt::decode(pdu)?),
            op::LOGIN => Request::Login(LoginRequest::decode(pdu)?),
            op::TEXT => Request::Text(TextRequest::decode(pdu)?),
            op::DATA_OUT => Request::DataOut(DataOut::decode(pdu)?),
            op::LOGOUT => Request::Logout(LogoutRequest::decode(pdu)?),
            op::SNACK => Request::Snack,
            other => return Err(PduError::BadOpcode(other)),
        })
    }
}

/// A Reject PDU carrying the offending header.
pub fn reject(reason: u8, bad_header: &[u8; BHS_LEN]) -> Pdu {
    let mut p = Pdu::new(op::REJECT);
    p.bhs[2] = reason;
    p.set_itt(RESERVED_TAG);
    p.data = Bytes::copy_from_slice(bad_header);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(data_len: usize) -> Pdu {
        let mut p = Pdu::new(op::SCSI_CMD);
        p.bhs[1] = 0xa1;
        p.set_itt(7);
        p.set_u32(20, 512);
        p.bhs[32] = 0x2a;
        p.data = Bytes::from(vec![0x5a; data_len]);
        p
    }

    #[test]
    fn round_trip_with_digests() {
        for digests in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            for len in [0usize, 1, 3, 4, 513] {
                let p = sample(len);
                let mut out = BytesMut::new();
                p.encode(&mut out, digests);
                assert_eq!(out.len() % 4, 0);
                assert_eq!(frame_len(&out, digests), Some(out.len()));
                let (q, used) = parse(&out, digests, 8192).unwrap();
                assert_eq!(used, out.len());
                assert_eq!(q.data, p.data);
                assert_eq!(q.itt(), 7);
                for cut in 0..out.len() {
                    assert!(matches!(
                        parse(&out[..cut], digests, 8192),
                        Err(PduError::Incomplete { .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn corrupted_digests_and_oversize_are_typed_errors() {
        let d = Digests {
            header: true,
            data: true,
        };
        let mut out = BytesMut::new();
        sample(100).encode(&mut out, d);
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert!(matches!(
            parse(&bad, d, 8192),
            Err(PduError::HeaderDigest { .. })
        ));
        let mut bad = out.clone();
        bad[60] ^= 1;
        assert!(matches!(
            parse(&bad, d, 8192),
            Err(PduError::DataDigest { .. })
        ));
        assert_eq!(
            parse(&out, d, 99),
            Err(PduError::DataSegmentTooLong { len: 100, max: 99 })
        );
    }

    #[test]
    fn extended_cdb_from_ahs() {
        let mut p = sample(0);
        let mut ahs = vec![0u8, 17, 1, 0];
        ahs.extend_from_slice(&[0xee; 16]);
        p.ahs = Bytes::from(ahs);
        let mut out = BytesMut::new();
        p.encode(&mut out, Digests::default());
        let (q, _) = parse(&out, Digests::default(), 0).unwrap();
        let cmd = ScsiCommand::decode(&q).unwrap();
        assert_eq!(cmd.cdb.len(), 32);
        assert_eq!(cmd.cdb[16], 0xee);
    }

    #[test]
    fn lun_encoding() {
        for lun in [0u64, 1, 255, 256, 1000, 16383] {
            assert_eq!(lun_number(lun_field(lun)), lun);
        }
    }

    proptest! {
        #[test]
        fn parse_and_decode_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                        hd in any::<bool>(), dd in any::<bool>(),
                                        max in 0usize..1024) {
            let digests = Digests { header: hd, data: dd };
            if let Ok((pdu, used)) = parse(&bytes, digests, max) {
                prop_assert!(used <= bytes.len());
                prop_assert!(pdu.data.len() <= max);
                let _ = Request::decode(&pdu);
            }
        }

        #[test]
        fn any_header_round_trips(bhs in proptest::collection::vec(any::<u8>(), 48),
                                  data in proptest::collection::vec(any::<u8>(), 0..300),
                                  hd in any::<bool>(), dd in any::<bool>()) {
            let mut p = Pdu::new(0);
            p.bhs.copy_from_slice(&bhs);
            p.bhs[4] = 0;
            let dl = (data.len() as u32).to_be_bytes();
            p.bhs[5..8].copy_from_slice(&dl[1..]);
            p.data = Bytes::from(data);
            let digests = Digests { header: hd, data: dd };
            let mut out = BytesMut::new();
            p.encode(&mut out, digests);
            let (q, used) = parse(&out, digests, 1 << 24).unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(q, p);
        }
    }
}
