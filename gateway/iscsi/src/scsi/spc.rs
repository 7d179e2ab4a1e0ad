//! Primary commands (SPC-4): INQUIRY and VPD pages, MODE SENSE/SELECT, REPORT LUNS,
//! REQUEST SENSE, TEST UNIT READY, REPORT SUPPORTED OPERATION CODES.

use super::cdb::{be16, be32, opcode as op, service_action as sa};
use super::sense::Sense;
use super::{truncate, CmdResult, Failure, LogicalUnit, ModeSettings, Nexus, Reply};

const VENDOR: &[u8; 8] = b"CAIRN   ";
const PRODUCT: &[u8; 16] = b"cairn volume    ";
const REVISION: &[u8; 4] = b"0001";

/// Runs an SPC command, or returns `None` if `cdb` is not one.
pub async fn execute(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], data: &[u8]) -> Option<CmdResult> {
    let r = match cdb[0] {
        op::TEST_UNIT_READY => Ok(Reply::empty()),
        op::INQUIRY => inquiry(lu, cdb).map_err(Failure::from),
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => mode_sense(lu, cdb).map_err(Failure::from),
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            mode_select(lu, n, cdb, data).map_err(Failure::from)
        }
        op::MAINTENANCE_IN if cdb[1] & 0x1f == sa::REPORT_SUPPORTED_OPCODES => {
            report_supported_opcodes(cdb).map_err(Failure::from)
        }
        op::MAINTENANCE_IN => Err(Sense::invalid_cdb(1).into()),
        op::START_STOP_UNIT => start_stop(cdb),
        op::PREVENT_ALLOW => {
            // Not removable: PREVENT has no effect, but the field must be valid.
            if cdb[4] & 0xfc != 0 {
                Err(Sense::invalid_cdb(4).into())
            } else {
                Ok(Reply::empty())
            }
        }
        _ => return None,
    };
    Some(r)
}

/// REQUEST SENSE: the pending condition (a unit attention) or NO SENSE.
pub fn request_sense(cdb: &[u8], pending: Option<Sense>) -> Result<Reply, Sense> {
    if cdb[1] & 0xfe != 0 {
        return Err(Sense::invalid_cdb(1));
    }
    let desc = cdb[1] & 1 != 0;
    let s = pending.unwrap_or(Sense::new(0, 0, 0));
    Ok(truncate(s.encode(desc).to_vec(), usize::from(cdb[4])))
}

/// REPORT LUNS.
pub fn report_luns(cdb: &[u8], luns: &[u64]) -> Result<Reply, Sense> {
    let alloc = be32(cdb, 6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb(6));
    }
    match cdb[2] {
        0..=2 | 0x10..=0x12 => {}
        _ => return Err(Sense::invalid_cdb(2)),
    }
    let list: Vec<u64> = if cdb[2] == 1 || cdb[2] == 0x11 {
        Vec::new()
    } else {
        luns.to_vec()
    };
    let mut v = Vec::with_capacity(8 + 8 * list.len());
    v.extend_from_slice(&((list.len() * 8) as u32).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for l in list {
        v.extend_from_slice(&crate::pdu::lun_field(l).to_be_bytes());
    }
    Ok(truncate(v, alloc))
}

/// INQUIRY for a LUN that does not exist: peripheral qualifier 011b, type 1Fh.
pub fn inquiry_no_lu(cdb: &[u8]) -> Result<Reply, Sense> {
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::lun_not_supported());
    }
    let mut v = standard_inquiry();
    v[0] = 0x7f;
    Ok(truncate(v, usize::from(be16(cdb, 3))))
}

fn standard_inquiry() -> Vec<u8> {
    let mut v = vec![0u8; 96];
    v[0] = 0x00; // connected, direct access block device
    v[2] = 0x06; // SPC-4
    v[3] = 0x12; // HISUP, response data format 2
    v[4] = (v.len() - 5) as u8;
    v[7] = 0x02; // CMDQUE
    v[8..16].copy_from_slice(VENDOR);
    v[16..32].copy_from_slice(PRODUCT);
    v[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, d) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    v
}

fn inquiry(lu: &LogicalUnit, cdb: &[u8]) -> Result<Reply, Sense> {
    let alloc = usize::from(be16(cdb, 3));
    let evpd = cdb[1] & 0x01 != 0;
    if cdb[1] & 0xfe != 0 {
        return Err(Sense::invalid_cdb(1));
    }
    if !evpd {
        if cdb[2] != 0 {
            return Err(Sense::invalid_cdb(2));
        }
        return Ok(truncate(standard_inquiry(), alloc));
    }
    let page = match cdb[2] {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => {
            let s = lu.id.serial.as_bytes();
            let mut v = vec![0, 0x80, 0, s.len() as u8];
            v.extend_from_slice(s);
            v
        }
        0x83 => device_identification(lu),
        0x8f => super::xcopy::third_party_copy_vpd(),
        0xb0 => block_limits(lu),
        0xb1 => {
            let mut v = vec![0u8; 64];
            v[1] = 0xb1;
            v[3] = 0x3c;
            v[5] = 0x01; // non-rotating medium
                         // WABEREQ 01b / WACEREQ 01b: reads after a block or crypto erase SANITIZE
                         // succeed (and return zeros).
            v[7] = 0x50;
            v
        }
        0xb2 => {
            // LBPU, LBPWS, LBPWS10, LBPRZ; thin provisioned.
            vec![0, 0xb2, 0, 4, 0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]
        }
        _ => return Err(Sense::invalid_cdb(2)),
    };
    Ok(truncate(with_vpd_header(page), alloc))
}

const VPD_PAGES: [u8; 11] = [0, 0, 0, 7, 0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2];

fn with_vpd_header(mut page: Vec<u8>) -> Vec<u8> {
    if page.len() >= 4 {
        let len = (page.len() - 4) as u16;
        page[2..4].copy_from_slice(&len.to_be_bytes());
    }
    page
}

/// A stable 64-bit value from the LUN identity, used in the NAA designator.
fn identity_hash(lu: &LogicalUnit) -> u64 {
    // FNV-1a: stable across processes and versions, unlike std's SipHash keys.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lu
        .id
        .target
        .bytes()
        .chain(lu.id.lun.to_be_bytes())
        .chain(lu.id.serial.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn device_identification(lu: &LogicalUnit) -> Vec<u8> {
    let mut v = vec![0, 0x83, 0, 0];
    // NAA IEEE Registered Extended (6h), locally derived from the LUN identity.
    let h = identity_hash(lu);
    v.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    let mut naa = [0u8; 16];
    naa[0] = 0x60;
    naa[4..12].copy_from_slice(&h.to_be_bytes());
    naa[12..16].copy_from_slice(&(lu.id.lun as u32).to_be_bytes());
    v.extend_from_slice(&naa);
    // T10 vendor identification.
    let mut t10 = VENDOR.to_vec();
    t10.extend_from_slice(lu.id.serial.as_bytes());
    v.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    v.extend_from_slice(&t10);
    // Relative target port 1 and target port group 1 (association: target port, iSCSI).
    v.extend_from_slice(&[0x51, 0x94, 0x00, 4, 0, 0, 0, 1]);
    v.extend_from_slice(&[0x51, 0x95, 0x00, 4, 0, 0, 0, 1]);
    // SCSI name string of the target device.
    let mut name = lu.id.target.clone().into_bytes();
    name.push(0);
    while name.len() & 3 != 0 {
        name.push(0);
    }
    v.extend_from_slice(&[0x53, 0xa8, 0x00, name.len() as u8]);
    v.extend_from_slice(&name);
    v
}

/// Block limits advertised in VPD page B0h, shared with the SBC checks.
/// Largest READ/WRITE transfer, in blocks of `bs` bytes (32 MiB).
pub fn max_transfer_blocks(bs: u32) -> u32 {
    (32 << 20) / bs.max(1)
}
pub const MAX_CAW_BLOCKS: u8 = 255;
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 22;
pub const MAX_ATOMIC_BLOCKS: u32 = 256;

fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let bs = lu.device().block_size().max(1);
    let mut v = vec![0u8; 64];
    v[1] = 0xb0;
    v[5] = MAX_CAW_BLOCKS;
    let put32 =
        |v: &mut Vec<u8>, at: usize, x: u32| v[at..at + 4].copy_from_slice(&x.to_be_bytes());
    v[6..8].copy_from_slice(&1u16.to_be_bytes());
    put32(&mut v, 8, max_transfer_blocks(bs));
    put32(&mut v, 12, (1 << 20) / bs);
    put32(&mut v, 16, max_transfer_blocks(bs));
    put32(&mut v, 20, MAX_UNMAP_BLOCKS);
    put32(&mut v, 24, MAX_UNMAP_DESCRIPTORS);
    // Optimal unmap granularity: the device deallocates whole granules; smaller unmaps only
    // zero the range and leave it mapped.
    let granularity =
        (lu.device().unmap_granularity() / u64::from(bs)).clamp(1, u64::from(u32::MAX));
    put32(&mut v, 28, granularity as u32);
    put32(&mut v, 32, 0x8000_0000);
    v[36..44].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    put32(&mut v, 44, MAX_ATOMIC_BLOCKS);
    put32(&mut v, 48, 1);
    put32(&mut v, 52, 1);
    v
}

fn start_stop(cdb: &[u8]) -> CmdResult {
    let pc = cdb[4] >> 4;
    if cdb[1] & 0xfe != 0 || cdb[3] & 0xf0 != 0 || cdb[4] & 0x08 != 0 {
        return Err(Sense::invalid_cdb(4).into());
    }
    // Power conditions 0 (start/loej valid), 1 active, 2 idle, 3 standby, 7 LU control,
    // 0Ah/0Bh force idle/standby; others are reserved.
    if !matches!(pc, 0 | 1 | 2 | 3 | 7 | 0xa | 0xb) {
        return Err(Sense::invalid_cdb(4).into());
    }
    Ok(Reply::empty())
}

// Mode pages: (page code, current bytes) built from the settings; byte 0 is the page code,
// byte 1 the page length.
fn caching_page(m: &ModeSettings, changeable: bool) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x08;
    p[1] = 0x12;
    if changeable || m.wce {
        p[2] = 0x04;
    }
    p
}

fn control_page(m: &ModeSettings, changeable: bool) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = 0x0a;
    p[1] = 0x0a;
    if changeable {
        p[2] = 0x04;
        p[4] = 0x08;
    } else {
        p[2] = if m.d_sense { 0x04 } else { 0 };
        p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
        p[4] = if m.swp { 0x08 } else { 0 };
        p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
    }
    p
}

fn rw_recovery_page(changeable: bool) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = 0x01;
    p[1] = 0x0a;
    if !changeable {
        p[2] = 0x80; // AWRE
    }
    p
}

fn informational_exceptions_page(_changeable: bool) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = 0x1c;
    p[1] = 0x0a;
    p
}

fn mode_sense(lu: &LogicalUnit, cdb: &[u8]) -> Result<Reply, Sense> {
    let ten = cdb[0] == op::MODE_SENSE_10;
    let dbd = cdb[1] & 0x08 != 0;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let pc = cdb[2] >> 6;
    let page = cdb[2] & 0x3f;
    let subpage = cdb[3];
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(cdb[4])
    };
    if pc == 3 {
        return Err(Sense::saving_not_supported());
    }
    let changeable = pc == 1;
    let m = lu.mode();
    let defaults = ModeSettings::for_device(lu.device().as_ref());
    let src = if pc == 2 { &defaults } else { &m };
    if subpage != 0 && !(subpage == 0xff && page == 0x3f) {
        return Err(Sense::invalid_cdb(3));
    }
    let pages: Vec<u8> = match page {
        0x01 => rw_recovery_page(changeable),
        0x08 => caching_page(src, changeable),
        0x0a => control_page(src, changeable),
        0x1c => informational_exceptions_page(changeable),
        0x3f => [
            rw_recovery_page(changeable),
            caching_page(src, changeable),
            control_page(src, changeable),
            informational_exceptions_page(changeable),
        ]
        .concat(),
        _ => return Err(Sense::invalid_cdb(2)),
    };
    let dev = lu.device();
    let blocks = dev.size() / u64::from(dev.block_size().max(1));
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&dev.block_size().to_be_bytes());
        } else {
            bd.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&dev.block_size().to_be_bytes()[1..]);
        }
    }
    let dsp = if lu.write_protected() { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
    let mut v = Vec::new();
    if ten {
        let total = 8 + bd.len() + pages.len();
        v.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        v.extend_from_slice(&[0, dsp, u8::from(llbaa), 0]);
        v.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let total = 4 + bd.len() + pages.len();
        v.extend_from_slice(&[(total - 1).min(255) as u8, 0, dsp, bd.len() as u8]);
    }
    v.extend_from_slice(&bd);
    v.extend_from_slice(&pages);
    Ok(truncate(v, alloc))
}

fn mode_select(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], data: &[u8]) -> Result<Reply, Sense> {
    let ten = cdb[0] == op::MODE_SELECT_10;
    if cdb[1] & 0x10 == 0 {
        return Err(Sense::invalid_cdb(1)); // PF must be set: only page format is understood
    }
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::saving_not_supported());
    }
    let plen = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(cdb[4])
    };
    if plen == 0 {
        return Ok(Reply::empty());
    }
    if data.len() < plen {
        return Err(Sense::param_list_length());
    }
    let data = &data[..plen];
    let (hdr, bdl) = if ten {
        if data.len() < 8 {
            return Err(Sense::param_list_length());
        }
        (8, usize::from(be16(data, 6)))
    } else {
        if data.len() < 4 {
            return Err(Sense::param_list_length());
        }
        (4, usize::from(data[3]))
    };
    let mut pos = hdr + bdl;
    if pos > data.len() {
        return Err(Sense::param_list_length());
    }
    let mut m = lu.mode();
    while pos < data.len() {
        if data.len() - pos < 2 {
            return Err(Sense::param_list_length());
        }
        let code = data[pos] & 0x3f;
        let spf = data[pos] & 0x40 != 0;
        if spf {
            return Err(Sense::invalid_param(pos as u16));
        }
        let len = usize::from(data[pos + 1]);
        let body = data
            .get(pos..pos + 2 + len)
            .ok_or_else(Sense::param_list_length)?;
        match code {
            0x08 if len == 0x12 => m.wce = body[2] & 0x04 != 0,
            0x0a if len == 0x0a => {
                m.d_sense = body[2] & 0x04 != 0;
                m.swp = body[4] & 0x08 != 0;
            }
            0x01 | 0x1c if len == 0x0a => {}
            _ => return Err(Sense::invalid_param(pos as u16)),
        }
        pos += 2 + len;
    }
    lu.set_mode(n, m);
    Ok(Reply::empty())
}

/// One supported command: opcode, service action (if it has one) and the CDB usage bitmap.
struct OpInfo {
    op: u8,
    sa: Option<u8>,
    usage: &'static [u8],
}

// Usage bitmaps: each byte has the bits the device examines in the matching CDB byte.
const SUPPORTED: &[OpInfo] = &[
    OpInfo {
        op: op::TEST_UNIT_READY,
        sa: None,
        usage: &[0x00, 0, 0, 0, 0, 0x07],
    },
    OpInfo {
        op: op::REQUEST_SENSE,
        sa: None,
        usage: &[0x03, 0x01, 0, 0, 0xff, 0x07],
    },
    OpInfo {
        op: op::READ_6,
        sa: None,
        usage: &[0x08, 0x1f, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::WRITE_6,
        sa: None,
        usage: &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::INQUIRY,
        sa: None,
        usage: &[0x12, 0x01, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::MODE_SELECT_6,
        sa: None,
        usage: &[0x15, 0x11, 0, 0, 0xff, 0x07],
    },
    OpInfo {
        op: op::RESERVE_6,
        sa: None,
        usage: &[0x16, 0, 0, 0, 0, 0x07],
    },
    OpInfo {
        op: op::RELEASE_6,
        sa: None,
        usage: &[0x17, 0, 0, 0, 0, 0x07],
    },
    OpInfo {
        op: op::MODE_SENSE_6,
        sa: None,
        usage: &[0x1a, 0x08, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::START_STOP_UNIT,
        sa: None,
        usage: &[0x1b, 0x01, 0, 0x0f, 0xf7, 0x07],
    },
    OpInfo {
        op: op::PREVENT_ALLOW,
        sa: None,
        usage: &[0x1e, 0, 0, 0, 0x03, 0x07],
    },
    OpInfo {
        op: op::READ_CAPACITY_10,
        sa: None,
        usage: &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0x07],
    },
    OpInfo {
        op: op::READ_10,
        sa: None,
        usage: &[0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::WRITE_10,
        sa: None,
        usage: &[0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::WRITE_VERIFY_10,
        sa: None,
        usage: &[0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::VERIFY_10,
        sa: None,
        usage: &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PRE_FETCH_10,
        sa: None,
        usage: &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::SYNCHRONIZE_CACHE_10,
        sa: None,
        usage: &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::READ_DEFECT_DATA_10,
        sa: None,
        usage: &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::WRITE_SAME_10,
        sa: None,
        usage: &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::UNMAP,
        sa: None,
        usage: &[0x42, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::SANITIZE,
        sa: Some(super::sanitize::OVERWRITE),
        usage: &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::SANITIZE,
        sa: Some(super::sanitize::BLOCK_ERASE),
        usage: &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::SANITIZE,
        sa: Some(super::sanitize::CRYPTO_ERASE),
        usage: &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::SANITIZE,
        sa: Some(super::sanitize::EXIT_FAILURE_MODE),
        usage: &[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::MODE_SELECT_10,
        sa: None,
        usage: &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::MODE_SENSE_10,
        sa: None,
        usage: &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_IN,
        sa: Some(0),
        usage: &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_IN,
        sa: Some(1),
        usage: &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_IN,
        sa: Some(2),
        usage: &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_IN,
        sa: Some(3),
        usage: &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(0),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(1),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(2),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(3),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(4),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(5),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(6),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::PR_OUT,
        sa: Some(7),
        usage: &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    },
    OpInfo {
        op: op::READ_16,
        sa: None,
        usage: &[
            0x88, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::COMPARE_AND_WRITE,
        sa: None,
        usage: &[
            0x89, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::WRITE_16,
        sa: None,
        usage: &[
            0x8a, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::ORWRITE_16,
        sa: None,
        usage: &[
            0x8b, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::EXTENDED_COPY,
        sa: Some(0x00),
        usage: &[
            0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    },
    OpInfo {
        op: op::RECEIVE_COPY_RESULTS,
        sa: Some(super::xcopy::rcr::COPY_STATUS),
        usage: &[
            0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    },
    OpInfo {
        op: op::RECEIVE_COPY_RESULTS,
        sa: Some(super::xcopy::rcr::OPERATING_PARAMETERS),
        usage: &[
            0x84, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    },
    OpInfo {
        op: op::WRITE_VERIFY_16,
        sa: None,
        usage: &[
            0x8e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::VERIFY_16,
        sa: None,
        usage: &[
            0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::PRE_FETCH_16,
        sa: None,
        usage: &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::SYNCHRONIZE_CACHE_16,
        sa: None,
        usage: &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::WRITE_SAME_16,
        sa: None,
        usage: &[
            0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::WRITE_ATOMIC_16,
        sa: None,
        usage: &[
            0x9c, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0x1f,
            0x07,
        ],
    },
    OpInfo {
        op: op::SERVICE_ACTION_IN_16,
        sa: Some(sa::READ_CAPACITY_16),
        usage: &[
            0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x01, 0x07,
        ],
    },
    OpInfo {
        op: op::SERVICE_ACTION_IN_16,
        sa: Some(sa::GET_LBA_STATUS),
        usage: &[
            0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0x07,
        ],
    },
    OpInfo {
        op: op::REPORT_LUNS,
        sa: None,
        usage: &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    },
    OpInfo {
        op: op::MAINTENANCE_IN,
        sa: Some(sa::REPORT_SUPPORTED_OPCODES),
        usage: &[
            0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    },
    OpInfo {
        op: op::READ_12,
        sa: None,
        usage: &[
            0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::WRITE_12,
        sa: None,
        usage: &[
            0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::WRITE_VERIFY_12,
        sa: None,
        usage: &[
            0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::VERIFY_12,
        sa: None,
        usage: &[
            0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    },
    OpInfo {
        op: op::READ_DEFECT_DATA_12,
        sa: None,
        usage: &[0xb7, 0, 0x1f, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    },
];

/// Nominal and recommended timeouts (seconds) reported with RCTD.
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[8..12].copy_from_slice(&30u32.to_be_bytes());
    t
}

fn report_supported_opcodes(cdb: &[u8]) -> Result<Reply, Sense> {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = be16(cdb, 4);
    let alloc = be32(cdb, 6) as usize;
    let mut v = Vec::new();
    match options {
        0 => {
            for o in SUPPORTED {
                v.push(o.op);
                v.push(0);
                v.extend_from_slice(&u16::from(o.sa.unwrap_or(0)).to_be_bytes());
                v.push(0);
                v.push(if rctd { 0x02 } else { 0 } | u8::from(o.sa.is_some()));
                v.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                if rctd {
                    v.extend_from_slice(&timeouts());
                }
            }
            let len = (v.len() as u32).to_be_bytes();
            let mut out = len.to_vec();
            out.extend_from_slice(&v);
            return Ok(truncate(out, alloc));
        }
        1..=3 => {
            let has_sa = SUPPORTED.iter().any(|o| o.op == req_op && o.sa.is_some());
            if options == 1 && has_sa {
                return Err(Sense::invalid_cdb(2));
            }
            if options == 2 && !has_sa && SUPPORTED.iter().any(|o| o.op == req_op) {
                return Err(Sense::invalid_cdb(2));
            }
            let found = SUPPORTED.iter().find(|o| {
                o.op == req_op
                    && match o.sa {
                        Some(s) => options != 1 && u16::from(s) == req_sa,
                        None => options != 2,
                    }
            });
            match found {
                Some(o) => {
                    v.push(0);
                    v.push(if rctd { 0x80 } else { 0 } | 0x03);
                    v.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                    v.extend_from_slice(o.usage);
                    if rctd {
                        v.extend_from_slice(&timeouts());
                    }
                }
                None => v.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Err(Sense::invalid_cdb(2)),
    }
    Ok(truncate(v, alloc))
}

/// READ DEFECT DATA (10/12): no defects, in the requested format.
pub fn read_defect_data(cdb: &[u8]) -> Result<Reply, Sense> {
    let format = cdb[2] & 0x07;
    if cdb[0] == op::READ_DEFECT_DATA_10 {
        let alloc = usize::from(be16(cdb, 7));
        Ok(truncate(vec![0, cdb[2] & 0x1f, 0, 0], alloc))
    } else {
        let alloc = be32(cdb, 6) as usize;
        Ok(truncate(
            vec![0, cdb[2] & 0x1f | format, 0, 0, 0, 0, 0, 0],
            alloc,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sbc;
    use super::*;

    #[test]
    fn every_supported_usage_starts_with_its_opcode_and_has_cdb_length() {
        for o in SUPPORTED {
            assert_eq!(o.usage[0], o.op);
            assert_eq!(
                o.usage.len(),
                super::super::cdb::cdb_len(o.op),
                "{:#x}",
                o.op
            );
        }
        // Every listed opcode is dispatched somewhere.
        for o in SUPPORTED {
            assert!(
                sbc::handles(o.op)
                    || matches!(
                        o.op,
                        op::TEST_UNIT_READY
                            | op::REQUEST_SENSE
                            | op::INQUIRY
                            | op::MODE_SELECT_6
                            | op::MODE_SELECT_10
                            | op::MODE_SENSE_6
                            | op::MODE_SENSE_10
                            | op::RESERVE_6
                            | op::RELEASE_6
                            | op::START_STOP_UNIT
                            | op::PREVENT_ALLOW
                            | op::PR_IN
                            | op::PR_OUT
                            | op::REPORT_LUNS
                            | op::MAINTENANCE_IN
                            | op::SANITIZE
                            | op::EXTENDED_COPY
                            | op::RECEIVE_COPY_RESULTS
                    ),
                "{:#x}",
                o.op
            );
        }
    }

    #[test]
    fn report_luns_lists_and_truncates() {
        let cdb = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        let r = report_luns(&cdb, &[0, 1]).unwrap();
        assert_eq!(r.data.len(), 16);
        assert_eq!(&r.data[..4], &16u32.to_be_bytes());
        let short = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        assert!(report_luns(&short, &[0]).is_err());
    }
}
