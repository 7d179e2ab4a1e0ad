//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 §6.4, §6.27): the copy manager.
//!
//! The copy manager moves blocks from one LBA range to another without the data crossing the
//! network. It understands what a thin volume can do: identification-descriptor CSCD
//! descriptors (type E4h) naming this logical unit, and block-to-block segment descriptors
//! (type 02h). No inline or held data.
//!
//! Parameter list (all integers big-endian):
//! ```text
//! 0: LIST IDENTIFIER   1: STR(0x20) LIST ID USAGE(0x18) PRIORITY(0x07)
//! 2-3: CSCD DESCRIPTOR LIST LENGTH   8-11: SEGMENT DESCRIPTOR LIST LENGTH
//! 12-15: INLINE DATA LENGTH   16..: CSCD descriptors (32 bytes each), then segment descriptors
//! CSCD E4h:  0: E4h  1: LU ID TYPE(0xc0) NUL(0x20) PERIPHERAL DEVICE TYPE(0x1f)
//!            4-7: designator header (code set, PIV/association/type, -, length)
//!            8-27: designator   28: PAD(0x04)   29-31: DISK BLOCK LENGTH
//! Segment 02h: 0: 02h  1: DC(0x02) CAT(0x01)  2-3: DESCRIPTOR LENGTH (18h)
//!            4-5: SOURCE CSCD INDEX  6-7: DESTINATION CSCD INDEX  10-11: BLOCK DEVICE NUMBER
//!            OF BLOCKS  12-19: SOURCE LBA  20-27: DESTINATION LBA
//! ```
//! Errors in the parameter list are ILLEGAL REQUEST and leave no copy status behind; errors
//! met while copying are COPY ABORTED, and a copy whose LIST ID USAGE asks for it keeps its
//! status (per I_T nexus and list identifier) until RECEIVE COPY RESULTS reads it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::cdb::{be16, be32, be64};
use super::sense::{key, Sense};
use super::{spc, truncate, CmdResult, LogicalUnit, Nexus, Reply};

/// Limits reported in RECEIVE COPY RESULTS (OPERATING PARAMETERS) and VPD page 8Fh.
pub const MAX_CSCD_DESCRIPTORS: u16 = 2;
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// Largest segment, in bytes.
pub const MAX_SEGMENT_LENGTH: u32 = 32 << 20;
/// Bytes read and written per step of a segment.
const STEP: u64 = 1 << 20;

const CSCD_IDENTIFICATION: u8 = 0xe4;
const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
const CSCD_LEN: usize = 32;
const HEADER_LEN: usize = 16;

/// RECEIVE COPY RESULTS service actions.
pub mod rcr {
    pub const COPY_STATUS: u8 = 0x00;
    pub const OPERATING_PARAMETERS: u8 = 0x03;
}

/// COPY STATUS of a finished copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopyStatus {
    /// 01h: completed without errors; 02h: completed with errors.
    manager_status: u8,
    segments: u16,
    bytes: u64,
}

/// Copy state of one logical unit: running list identifiers and held results.
#[derive(Default)]
pub struct CopyManager {
    state: Mutex<CopyState>,
}

#[derive(Default)]
struct CopyState {
    running: HashSet<(Nexus, u8)>,
    held: HashMap<(Nexus, u8), CopyStatus>,
}

impl CopyManager {
    fn state(&self) -> std::sync::MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The nexus is gone: so is every status held for it.
    pub fn nexus_lost(&self, n: &Nexus) {
        let mut st = self.state();
        st.held.retain(|(h, _), _| h != n);
    }
}

/// A validated segment: copy `blocks` blocks from `src` to `dst` (both this LU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    src_cscd: u16,
    dst_cscd: u16,
    blocks: u64,
    src: u64,
    dst: u64,
}

/// A validated parameter list.
#[derive(Debug, PartialEq, Eq)]
struct CopyList {
    list_id: u8,
    /// Whether the status is held for RECEIVE COPY RESULTS (LIST ID USAGE 00b).
    hold: bool,
    /// Whether each CSCD descriptor names this logical unit (false: unreachable or NUL).
    cscds: Vec<bool>,
    segments: Vec<Segment>,
}

/// The designators (header + value) by which this LU names itself in VPD page 83h.
fn own_designators(lu: &LogicalUnit) -> Vec<Vec<u8>> {
    let page = spc::device_identification(lu);
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = usize::from(page[at + 3]);
        let Some(d) = page.get(at..at + 4 + len) else {
            break;
        };
        if (d[1] >> 4) & 0x03 == 0 {
            out.push(d.to_vec());
        }
        at += 4 + len;
    }
    out
}

fn parse(lu: &LogicalUnit, data: &[u8]) -> Result<CopyList, Sense> {
    if data.len() < HEADER_LEN {
        return Err(Sense::param_list_length());
    }
    let list_id = data[0];
    let usage = (data[1] >> 3) & 0x03;
    let cscd_len = usize::from(be16(data, 2));
    let seg_len = be32(data, 8) as usize;
    let inline_len = be32(data, 12) as usize;
    if usage == 0x01 {
        return Err(Sense::invalid_param(1));
    }
    if usage == 0x03 && list_id != 0 {
        return Err(Sense::invalid_param(0));
    }
    if data[1] & 0x20 != 0 {
        return Err(Sense::invalid_param(1)); // STR: no sequential striped copies
    }
    if inline_len != 0 {
        return Err(Sense::invalid_param(12)); // no inline data
    }
    let body = cscd_len
        .checked_add(seg_len)
        .ok_or_else(Sense::param_list_length)?;
    if body > MAX_DESCRIPTOR_LIST_LENGTH as usize || HEADER_LEN + body > data.len() {
        return Err(Sense::param_list_length());
    }
    if cscd_len % CSCD_LEN != 0 {
        return Err(Sense::invalid_param(2));
    }
    let cscd_count = cscd_len / CSCD_LEN;
    if cscd_count > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x06)); // TOO MANY TARGET DESCRIPTORS
    }
    let bs = lu.device().block_size();
    let ours = own_designators(lu);
    let mut cscds = Vec::with_capacity(cscd_count);
    for i in 0..cscd_count {
        let at = HEADER_LEN + i * CSCD_LEN;
        let d = &data[at..at + CSCD_LEN];
        if d[0] != CSCD_IDENTIFICATION {
            // UNSUPPORTED TARGET DESCRIPTOR TYPE CODE
            return Err(
                Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x07).with_field(false, at as u16, None)
            );
        }
        // LU ID TYPE qualifies an LU IDENTIFIER field, which this descriptor type does not
        // have (the designator names the LU): it is ignored.
        if d[1] & 0x1f != 0 || d[28] & 0x04 != 0 {
            return Err(Sense::invalid_param(at as u16 + 1)); // block devices only, no PAD
        }
        if u32::from_be_bytes([0, d[29], d[30], d[31]]) != bs {
            return Err(Sense::invalid_param(at as u16 + 29));
        }
        let len = usize::from(d[7]).min(20);
        let designator = &d[4..8 + len];
        let names_us = ours.iter().any(|o| {
            o.len() == designator.len()
                && o[0] & 0x0f == designator[0] & 0x0f
                && o[1] & 0x3f == designator[1] & 0x3f
                && o[4..] == designator[4..]
        });
        cscds.push(names_us && d[1] & 0x20 == 0);
    }
    let mut segments = Vec::new();
    let mut at = HEADER_LEN + cscd_len;
    let end = HEADER_LEN + body;
    while at < end {
        if end - at < 4 {
            return Err(Sense::param_list_length());
        }
        let d = &data[at..end];
        let len = 4 + usize::from(be16(d, 2));
        if d[0] != SEGMENT_BLOCK_TO_BLOCK {
            // UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE
            return Err(
                Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x09).with_field(false, at as u16, None)
            );
        }
        if len != 0x1c {
            return Err(Sense::invalid_param(at as u16 + 2));
        }
        if d.len() < len {
            return Err(Sense::param_list_length());
        }
        if segments.len() == usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x08)); // TOO MANY SEGMENT DESCRIPTORS
        }
        let blocks = u64::from(be16(d, 10));
        if blocks * u64::from(bs) > u64::from(MAX_SEGMENT_LENGTH) {
            return Err(Sense::invalid_param(at as u16 + 10));
        }
        segments.push(Segment {
            src_cscd: be16(d, 4),
            dst_cscd: be16(d, 6),
            blocks,
            src: be64(d, 12),
            dst: be64(d, 20),
        });
        at += len;
    }
    Ok(CopyList {
        list_id,
        hold: usage == 0x00,
        cscds,
        segments,
    })
}

/// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE: a segment names a CSCD that is not this LU.
fn unreachable() -> Sense {
    Sense::new(key::COPY_ABORTED, 0x0d, 0x02)
}

/// Runs the segments; returns how many completed, the bytes moved, and the error that stopped
/// the copy.
async fn run_segments(lu: &LogicalUnit, list: &CopyList) -> (u16, u64, Option<Sense>) {
    let dev = lu.device();
    let bs = u64::from(dev.block_size().max(1));
    let blocks = dev.size() / bs;
    let mut moved = 0u64;
    for (i, s) in list.segments.iter().enumerate() {
        let reachable = |idx: u16| list.cscds.get(usize::from(idx)).copied().unwrap_or(false);
        if !reachable(s.src_cscd) || !reachable(s.dst_cscd) {
            return (i as u16, moved, Some(unreachable()));
        }
        let in_range = |lba: u64| lba.checked_add(s.blocks).is_some_and(|e| e <= blocks);
        if !in_range(s.src) || !in_range(s.dst) {
            // The copy target refused the LBA range: the copy stops here.
            return (
                i as u16,
                moved,
                Some(Sense::new(key::COPY_ABORTED, 0x00, 0x00)),
            );
        }
        // Overlapping ranges copy correctly front to back only when the destination is below
        // the source; otherwise go back to front.
        let len = s.blocks * bs;
        let mut steps: Vec<u64> = (0..len).step_by(STEP as usize).collect();
        if s.dst > s.src {
            steps.reverse();
        }
        for off in steps {
            let n = (len - off).min(STEP);
            let r = async {
                let data = dev.read(s.src * bs + off, n as usize).await?;
                dev.write(s.dst * bs + off, data, !lu.mode().wce).await
            }
            .await;
            if let Err(e) = r {
                let inner = Sense::from(&e);
                return (
                    i as u16,
                    moved,
                    Some(Sense::new(key::COPY_ABORTED, inner.asc, inner.ascq)),
                );
            }
            moved += n;
        }
    }
    (list.segments.len() as u16, moved, None)
}

/// EXTENDED COPY (LID1).
pub async fn extended_copy(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], data: &[u8]) -> CmdResult {
    if cdb[1] & 0x1f != 0 {
        return Err(Sense::invalid_cdb(1).into()); // only LID1 (service action 0)
    }
    let plen = be32(cdb, 10) as usize;
    if plen == 0 {
        return Ok(Reply::empty());
    }
    let data = data.get(..plen).ok_or_else(Sense::param_list_length)?;
    let list = parse(lu, data)?;
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    let key = (n.clone(), list.list_id);
    let tracked = list.hold || list.list_id != 0;
    if tracked {
        let mut st = lu.copies.state();
        if !st.running.insert(key.clone()) {
            // OPERATION IN PROGRESS: that list identifier is busy on this nexus.
            return Err(Sense::new(key::ILLEGAL_REQUEST, 0x00, 0x16).into());
        }
        st.held.remove(&key);
    }
    let (segments, bytes, err) = run_segments(lu, &list).await;
    if tracked {
        let mut st = lu.copies.state();
        st.running.remove(&key);
        if list.hold {
            st.held.insert(
                key,
                CopyStatus {
                    manager_status: if err.is_some() { 0x02 } else { 0x01 },
                    segments,
                    bytes,
                },
            );
        }
    }
    match err {
        Some(s) => Err(s.into()),
        None => Ok(Reply::empty()),
    }
}

/// RECEIVE COPY RESULTS: COPY STATUS and OPERATING PARAMETERS.
pub fn receive_copy_results(lu: &LogicalUnit, n: &Nexus, cdb: &[u8]) -> CmdResult {
    let alloc = be32(cdb, 10) as usize;
    match cdb[1] & 0x1f {
        rcr::COPY_STATUS => {
            // A finished copy's status is reported once, then discarded.
            let status = lu
                .copies
                .state()
                .held
                .remove(&(n.clone(), cdb[2]))
                .ok_or_else(|| Sense::invalid_cdb(2))?;
            let (units, count) = if status.bytes <= u64::from(u32::MAX) {
                (0x00, status.bytes as u32) // bytes
            } else {
                (0xf1, (status.bytes >> 10).min(u64::from(u32::MAX)) as u32) // KiB
            };
            let mut v = vec![0u8; 12];
            v[0..4].copy_from_slice(&8u32.to_be_bytes());
            v[4] = status.manager_status;
            v[5..7].copy_from_slice(&status.segments.to_be_bytes());
            v[7] = units;
            v[8..12].copy_from_slice(&count.to_be_bytes());
            Ok(truncate(v, alloc))
        }
        rcr::OPERATING_PARAMETERS => {
            let mut v = vec![0u8; 44];
            v[4] = 0x01; // SNLID: list identifiers are kept apart per nexus
            v[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
            v[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            v[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
            v[16..20].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
            // Maximum inline data length and held data limit stay 0.
            v[34..36].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
            v[36] = 1; // maximum concurrent copies
            v[37] = lu.device().block_size().max(1).trailing_zeros() as u8; // data segment granularity
            let codes = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
            v[43] = codes.len() as u8;
            v.extend_from_slice(&codes);
            let avail = (v.len() - 4) as u32;
            v[0..4].copy_from_slice(&avail.to_be_bytes());
            Ok(truncate(v, alloc))
        }
        _ => Err(Sense::invalid_cdb(1).into()),
    }
}

/// VPD page 8Fh (third-party copy): supported commands, parameter data and descriptor types.
pub fn third_party_copy_vpd() -> Vec<u8> {
    fn descriptor(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        // Descriptor lengths are multiples of four (the 4-byte header excluded).
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        let mut v = kind.to_be_bytes().to_vec();
        v.extend_from_slice(&(b.len() as u16).to_be_bytes());
        v.extend_from_slice(&b);
        v
    }
    let commands = [
        super::cdb::opcode::EXTENDED_COPY,
        1,
        0x00,
        super::cdb::opcode::RECEIVE_COPY_RESULTS,
        2,
        rcr::COPY_STATUS,
        rcr::OPERATING_PARAMETERS,
    ];
    let mut supported = vec![commands.len() as u8];
    supported.extend_from_slice(&commands);
    let mut params = vec![0u8; 28];
    params[2..4].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    params[4..6].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    params[6..10].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    let descriptors = [2u8, SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
    let mut v = vec![0, 0x8f, 0, 0];
    v.extend(descriptor(0x0001, &supported));
    v.extend(descriptor(0x0008, &params));
    v.extend(descriptor(0x0009, &descriptors));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockDevice, MemDevice};
    use crate::scsi::cdb::opcode as op;
    use crate::scsi::pr::InMemoryReservationStore;
    use crate::scsi::sense::status;
    use bytes::Bytes;
    use std::sync::Arc;

    async fn lu() -> LogicalUnit {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4 << 20, 512, "xc"));
        LogicalUnit::open(
            "iqn.t",
            0,
            dev,
            Arc::new(InMemoryReservationStore::default()),
        )
        .await
        .unwrap()
    }

    /// An E4h CSCD descriptor naming `lu` by its NAA designator.
    fn cscd(lu: &LogicalUnit, nul: bool) -> Vec<u8> {
        let naa = own_designators(lu)
            .into_iter()
            .find(|d| d[1] & 0x0f == 3)
            .unwrap();
        let mut d = vec![0u8; 32];
        d[0] = CSCD_IDENTIFICATION;
        d[1] = if nul { 0x20 } else { 0 };
        d[4..4 + naa.len()].copy_from_slice(&naa);
        d[29..32].copy_from_slice(&512u32.to_be_bytes()[1..]);
        d
    }

    fn segment(src_idx: u16, dst_idx: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
        let mut d = vec![0u8; 28];
        d[0] = SEGMENT_BLOCK_TO_BLOCK;
        d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        d[4..6].copy_from_slice(&src_idx.to_be_bytes());
        d[6..8].copy_from_slice(&dst_idx.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src.to_be_bytes());
        d[20..28].copy_from_slice(&dst.to_be_bytes());
        d
    }

    fn list(id: u8, usage: u8, cscds: Vec<Vec<u8>>, segs: Vec<Vec<u8>>) -> Vec<u8> {
        let c: Vec<u8> = cscds.concat();
        let s: Vec<u8> = segs.concat();
        let mut v = vec![0u8; 16];
        v[0] = id;
        v[1] = usage << 3;
        v[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        v[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        v.extend(c);
        v.extend(s);
        v
    }

    fn xcopy_cdb(len: usize) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op::EXTENDED_COPY;
        c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        c
    }

    fn rcr_cdb(sa: u8, id: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op::RECEIVE_COPY_RESULTS;
        c[1] = sa;
        c[2] = id;
        c[13] = 255;
        c
    }

    fn sense3(o: &crate::scsi::Outcome) -> (u8, u8, u8) {
        let s = o.sense.as_ref().expect("sense");
        (s[2] & 0x0f, s[12], s[13])
    }

    #[tokio::test]
    async fn copies_blocks_and_reports_status_once() {
        let lu = lu().await;
        let n = Nexus::new("iqn.i", [1; 6]);
        let data: Vec<u8> = (0..64 * 512).map(|i| (i % 253) as u8).collect();
        lu.device()
            .write(0, Bytes::from(data.clone()), false)
            .await
            .unwrap();
        let p = list(
            7,
            0,
            vec![cscd(&lu, false)],
            vec![segment(0, 0, 64, 0, 4000)],
        );
        let o = lu.execute(&n, &xcopy_cdb(p.len()), Bytes::from(p)).await;
        assert_eq!(o.status, status::GOOD, "{:?}", o.sense);
        assert_eq!(
            lu.device().read(4000 * 512, data.len()).await.unwrap(),
            data
        );
        let o = lu
            .execute(&n, &rcr_cdb(rcr::COPY_STATUS, 7), Bytes::new())
            .await;
        assert_eq!(o.status, status::GOOD);
        assert_eq!(
            (o.data[4], be16(&o.data, 5), be32(&o.data, 8)),
            (1, 1, 64 * 512)
        );
        // Reported once; another nexus never sees it.
        let o = lu
            .execute(&n, &rcr_cdb(rcr::COPY_STATUS, 7), Bytes::new())
            .await;
        assert_eq!(sense3(&o), (5, 0x24, 0));
        let o = lu
            .execute(&n, &rcr_cdb(rcr::OPERATING_PARAMETERS, 0), Bytes::new())
            .await;
        assert_eq!(be16(&o.data, 8), MAX_CSCD_DESCRIPTORS);
        assert_eq!(be16(&o.data, 10), MAX_SEGMENT_DESCRIPTORS);
        let o = lu.execute(&n, &rcr_cdb(0x01, 0), Bytes::new()).await;
        assert_eq!(sense3(&o), (5, 0x24, 0), "RECEIVE DATA is not supported");
    }

    #[tokio::test]
    async fn overlapping_copy_up_moves_the_original_data() {
        let lu = lu().await;
        let n = Nexus::new("iqn.i", [1; 6]);
        let data: Vec<u8> = (0..4096 * 512).map(|i| (i / 512 % 251) as u8).collect();
        lu.device()
            .write(0, Bytes::from(data.clone()), false)
            .await
            .unwrap();
        let p = list(
            0,
            3,
            vec![cscd(&lu, false)],
            vec![segment(0, 0, 4096, 0, 100)],
        );
        let o = lu.execute(&n, &xcopy_cdb(p.len()), Bytes::from(p)).await;
        assert_eq!(o.status, status::GOOD, "{:?}", o.sense);
        assert_eq!(lu.device().read(100 * 512, data.len()).await.unwrap(), data);
    }

    #[tokio::test]
    async fn bad_lists_get_the_right_sense() {
        let lu = lu().await;
        let n = Nexus::new("iqn.i", [1; 6]);
        let good_cscd = cscd(&lu, false);
        let seg = segment(0, 0, 8, 0, 100);
        let run = |p: Vec<u8>, len: usize| {
            let lu = &lu;
            let n = &n;
            async move { lu.execute(n, &xcopy_cdb(len), Bytes::from(p)).await }
        };
        let p = list(1, 0, vec![good_cscd.clone()], vec![seg.clone()]);
        assert_eq!(
            sense3(&run(p.clone(), 47).await),
            (5, 0x1a, 0),
            "truncated CSCD"
        );
        assert_eq!(sense3(&run(p.clone(), p.len() - 1).await), (5, 0x1a, 0));
        assert_eq!(run(Vec::new(), 0).await.status, status::GOOD, "empty list");
        let three = vec![good_cscd.clone(); 3];
        let p = list(1, 0, three, vec![seg.clone()]);
        assert_eq!(sense3(&run(p.clone(), p.len()).await), (5, 0x26, 0x06));
        let p = list(1, 0, vec![good_cscd.clone()], vec![seg.clone(); 17]);
        assert_eq!(sense3(&run(p.clone(), p.len()).await), (5, 0x26, 0x08));
        let mut fc = good_cscd.clone();
        fc[0] = 0xe0;
        let p = list(1, 0, vec![fc], vec![seg.clone()]);
        assert_eq!(sense3(&run(p.clone(), p.len()).await), (5, 0x26, 0x07));
        let mut stream = seg.clone();
        stream[0] = 0x03;
        let p = list(1, 0, vec![good_cscd.clone()], vec![stream]);
        assert_eq!(sense3(&run(p.clone(), p.len()).await), (5, 0x26, 0x09));
        let mut disk = good_cscd.clone();
        disk[30] = 0x10; // a 4 KiB disk block length for a 512-byte LU
        let p = list(1, 0, vec![disk], vec![seg.clone()]);
        assert_eq!(sense3(&run(p.clone(), p.len()).await), (5, 0x26, 0));
        // Errors while copying: COPY ABORTED.
        let p = list(1, 0, vec![cscd(&lu, true)], vec![seg.clone()]);
        assert_eq!(
            sense3(&run(p.clone(), p.len()).await),
            (0x0a, 0x0d, 0x02),
            "NUL"
        );
        let p = list(
            1,
            0,
            vec![good_cscd.clone()],
            vec![segment(0, 1, 8, 0, 100)],
        );
        assert_eq!(
            sense3(&run(p.clone(), p.len()).await),
            (0x0a, 0x0d, 0x02),
            "index"
        );
        let p = list(
            1,
            0,
            vec![good_cscd.clone()],
            vec![segment(0, 0, 8, 0, 8190)],
        );
        assert_eq!(
            sense3(&run(p.clone(), p.len()).await).0,
            0x0a,
            "beyond the end"
        );
        // That last copy held a "completed with errors" status.
        let o = lu
            .execute(&n, &rcr_cdb(rcr::COPY_STATUS, 1), Bytes::new())
            .await;
        assert_eq!((o.status, o.data[4]), (status::GOOD, 0x02));
    }

    #[test]
    fn third_party_copy_page_lists_commands_with_padded_lengths() {
        let v = third_party_copy_vpd();
        assert_eq!((v[1], be16(&v, 4), be16(&v, 6)), (0x8f, 1, 8));
        assert_eq!(&v[8..16], &[7, 0x83, 1, 0, 0x84, 2, 0, 3]);
    }
}
