//! CDB opcodes and field decoding shared by the SPC and SBC handlers.
//!
//! Every accessor checks the CDB length first: a CDB shorter than its opcode's fixed size is an
//! INVALID FIELD IN CDB, never an out-of-bounds index.

use super::sense::Sense;

pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const SANITIZE: u8 = 0x48;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PR_IN: u8 = 0x5e;
    pub const PR_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// Service actions of SERVICE ACTION IN(16) and MAINTENANCE IN.
pub mod service_action {
    pub const READ_CAPACITY_16: u8 = 0x10;
    pub const GET_LBA_STATUS: u8 = 0x12;
    pub const REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
}

/// The fixed CDB length of an opcode, from its group code (SPC-4 §4.2.5.1).
pub fn cdb_len(op: u8) -> usize {
    match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Checks that `cdb` holds at least its opcode's fixed length.
pub fn check_len(cdb: &[u8]) -> Result<(), Sense> {
    match cdb.first() {
        Some(&op) if cdb.len() >= cdb_len(op) => Ok(()),
        Some(_) => Err(Sense::invalid_cdb(0)),
        None => Err(Sense::invalid_opcode()),
    }
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// LBA, length and flags of a READ/WRITE/VERIFY-style CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rw {
    pub lba: u64,
    pub blocks: u32,
    /// RDPROTECT / WRPROTECT / VRPROTECT (bits 7-5 of byte 1).
    pub protect: u8,
    pub dpo: bool,
    pub fua: bool,
}

/// Decodes the LBA and transfer length of the read/write/verify family.
/// `cdb` must already have passed [`check_len`].
pub fn rw(cdb: &[u8]) -> Rw {
    // Zero-pad so an opcode this function does not know cannot index past a short CDB.
    let mut padded = [0u8; 16];
    let n = cdb.len().min(16);
    padded[..n].copy_from_slice(&cdb[..n]);
    let cdb = &padded;
    let op = cdb[0];
    let flags = cdb[1];
    let (lba, blocks) = match op {
        opcode::READ_6 | opcode::WRITE_6 => {
            let lba = u64::from(u32::from_be_bytes([0, cdb[1] & 0x1f, cdb[2], cdb[3]]));
            let n = if cdb[4] == 0 { 256 } else { u32::from(cdb[4]) };
            return Rw {
                lba,
                blocks: n,
                protect: 0,
                dpo: false,
                fua: false,
            };
        }
        opcode::READ_12 | opcode::WRITE_12 | opcode::WRITE_VERIFY_12 | opcode::VERIFY_12 => {
            (u64::from(be32(cdb, 2)), be32(cdb, 6))
        }
        opcode::READ_16
        | opcode::WRITE_16
        | opcode::WRITE_VERIFY_16
        | opcode::VERIFY_16
        | opcode::ORWRITE_16
        | opcode::PRE_FETCH_16
        | opcode::SYNCHRONIZE_CACHE_16
        | opcode::WRITE_SAME_16 => (be64(cdb, 2), be32(cdb, 10)),
        opcode::WRITE_ATOMIC_16 => (be64(cdb, 2), u32::from(be16(cdb, 12))),
        opcode::COMPARE_AND_WRITE => (be64(cdb, 2), u32::from(cdb[13])),
        // The 10-byte family: READ/WRITE/VERIFY/WRITE AND VERIFY/PRE-FETCH/SYNC/WRITE SAME.
        _ => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7))),
    };
    Rw {
        lba,
        blocks,
        protect: flags >> 5,
        dpo: flags & 0x10 != 0,
        fua: flags & 0x08 != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_read_family() {
        let r6 = rw(&[0x08, 0x01, 0x02, 0x03, 0, 0]);
        assert_eq!((r6.lba, r6.blocks), (0x010203, 256));
        let r10 = rw(&[0x28, 0x18, 0, 0, 1, 0, 0, 0, 8, 0]);
        assert_eq!(
            (r10.lba, r10.blocks, r10.dpo, r10.fua),
            (256, 8, true, true)
        );
        let mut c16 = [0u8; 16];
        c16[0] = 0x88;
        c16[9] = 7;
        c16[13] = 2;
        assert_eq!((rw(&c16).lba, rw(&c16).blocks), (7, 2));
    }

    proptest! {
        #[test]
        fn rw_never_panics_after_check_len(cdb in proptest::collection::vec(any::<u8>(), 0..20)) {
            if check_len(&cdb).is_ok() {
                let _ = rw(&cdb);
            }
        }
    }
}
