//! Sense data (SPC-4 §4.5) and the status codes that carry it.
//!
//! Fixed format (response code 0x70), 18 bytes:
//! ```text
//! 0: 0x70 | VALID(0x80)   2: sense key   3-6: INFORMATION   7: additional length (10)
//! 12: ASC   13: ASCQ   15-17: sense-key specific (SKSV 0x80 in byte 15)
//! ```
//! Descriptor format (0x72, selected by D_SENSE in the control mode page):
//! `0x72, key, asc, ascq, 0,0,0, additional length` then an information descriptor
//! (type 0) and/or a sense-key specific descriptor (type 2).

use bytes::Bytes;

use crate::block::BlockError;

pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_ABORTED: u8 = 0x40;
}

pub mod key {
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const HARDWARE_ERROR: u8 = 0x04;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const DATA_PROTECT: u8 = 0x07;
    pub const COPY_ABORTED: u8 = 0x0a;
    pub const ABORTED_COMMAND: u8 = 0x0b;
    pub const MISCOMPARE: u8 = 0x0e;
}

/// One sense condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (e.g. the offset of the first miscompare).
    pub info: Option<u64>,
    /// Sense-key specific bytes: field pointer into the CDB (`cdb`, byte, bit).
    pub field: Option<FieldPointer>,
    /// Sense-key specific bytes: progress indication (fraction of 65536 done), used with
    /// NOT READY while a long operation such as SANITIZE runs.
    pub progress: Option<u16>,
}

/// Points at the offending CDB or parameter-list byte (SPC-4 §4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            info: None,
            field: None,
            progress: None,
        }
    }
    pub fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }
    pub fn with_progress(mut self, progress: u16) -> Self {
        self.progress = Some(progress);
        self
    }
    pub fn with_field(mut self, in_cdb: bool, byte: u16, bit: Option<u8>) -> Self {
        self.field = Some(FieldPointer { in_cdb, byte, bit });
        self
    }

    pub fn invalid_opcode() -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x20, 0x00)
    }
    pub fn lba_out_of_range() -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x21, 0x00)
    }
    /// INVALID FIELD IN CDB pointing at `byte`.
    pub fn invalid_cdb(byte: u16) -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x24, 0x00).with_field(true, byte, None)
    }
    pub fn invalid_param(byte: u16) -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x26, 0x00).with_field(false, byte, None)
    }
    pub fn param_list_length() -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x1a, 0x00)
    }
    pub fn lun_not_supported() -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x25, 0x00)
    }
    pub fn invalid_field_in_iu() -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x0e, 0x03)
    }
    pub fn saving_not_supported() -> Self {
        Self::new(key::ILLEGAL_REQUEST, 0x39, 0x00)
    }
    pub fn write_protected() -> Self {
        Self::new(key::DATA_PROTECT, 0x27, 0x00)
    }
    /// MISCOMPARE DURING VERIFY OPERATION at byte `offset` of the compared data.
    pub fn miscompare(offset: u64) -> Self {
        Self::new(key::MISCOMPARE, 0x1d, 0x00).with_info(offset)
    }
    /// NOT READY, SANITIZE IN PROGRESS, with how far it got.
    pub fn sanitize_in_progress(progress: u16) -> Self {
        Self::new(key::NOT_READY, 0x04, 0x1b).with_progress(progress)
    }
    /// MEDIUM ERROR, SANITIZE COMMAND FAILED: the unit stays in this state until SANITIZE EXIT
    /// FAILURE MODE or a successful SANITIZE.
    pub fn sanitize_failed() -> Self {
        Self::new(key::MEDIUM_ERROR, 0x31, 0x03)
    }
    pub fn internal_failure() -> Self {
        Self::new(key::HARDWARE_ERROR, 0x44, 0x00)
    }

    /// Encodes in fixed (`descriptor == false`) or descriptor format.
    pub fn encode(&self, descriptor: bool) -> Bytes {
        let sks = self.field.map(|f| {
            let mut b0 = 0x80u8;
            if f.in_cdb {
                b0 |= 0x40;
            }
            if let Some(bit) = f.bit {
                b0 |= 0x08 | (bit & 7);
            }
            let [hi, lo] = f.byte.to_be_bytes();
            [b0, hi, lo]
        });
        let sks = sks.or_else(|| {
            self.progress.map(|p| {
                let [hi, lo] = p.to_be_bytes();
                [0x80, hi, lo]
            })
        });
        if descriptor {
            let mut v = vec![0x72, self.key, self.asc, self.ascq, 0, 0, 0, 0];
            if let Some(info) = self.info {
                v.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
                v.extend_from_slice(&info.to_be_bytes());
            }
            if let Some(s) = sks {
                v.extend_from_slice(&[0x02, 0x06, 0, 0, s[0], s[1], s[2], 0]);
            }
            v[7] = (v.len() - 8) as u8;
            Bytes::from(v)
        } else {
            let mut v = vec![0u8; 18];
            v[0] = 0x70;
            v[2] = self.key;
            if let Some(info) = self.info {
                v[0] |= 0x80;
                v[3..7].copy_from_slice(&(info as u32).to_be_bytes());
            }
            v[7] = 10;
            v[12] = self.asc;
            v[13] = self.ascq;
            if let Some(s) = sks {
                v[15..18].copy_from_slice(&s);
            }
            Bytes::from(v)
        }
    }
}

impl From<&BlockError> for Sense {
    fn from(e: &BlockError) -> Self {
        match e {
            BlockError::OutOfRange { .. } => Sense::lba_out_of_range(),
            BlockError::Io(_) => Sense::new(key::MEDIUM_ERROR, 0x11, 0x00),
            // SPACE ALLOCATION FAILED WRITE PROTECT
            BlockError::NoSpace => Sense::new(key::DATA_PROTECT, 0x27, 0x07),
            // LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE: initiators retry.
            BlockError::Unavailable => Sense::new(key::NOT_READY, 0x04, 0x00),
            BlockError::Corrupt { offset } => {
                Sense::new(key::MEDIUM_ERROR, 0x11, 0x00).with_info(*offset)
            }
            BlockError::ReadOnly => Sense::write_protected(),
            // INVALID FIELD IN CDB: the SCSI layer never asks for partial blocks.
            BlockError::Misaligned { .. } => Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_layouts() {
        let s = Sense::invalid_cdb(2);
        let f = s.encode(false);
        assert_eq!(f.len(), 18);
        assert_eq!((f[0], f[2], f[12], f[13]), (0x70, 5, 0x24, 0));
        assert_eq!(&f[15..18], &[0xc0, 0, 2]);
        let m = Sense::miscompare(513).encode(false);
        assert_eq!(m[0], 0xf0);
        assert_eq!(&m[3..7], &513u32.to_be_bytes());
        let d = Sense::miscompare(513).encode(true);
        assert_eq!(
            (d[0], d[1], d[2], d[7] as usize),
            (0x72, 0x0e, 0x1d, d.len() - 8)
        );
        assert_eq!(&d[12..20], &513u64.to_be_bytes());
    }
}
