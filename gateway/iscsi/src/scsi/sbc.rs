//! Block commands (SBC-3/4): READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY, WRITE SAME,
//! UNMAP, COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, SYNCHRONIZE CACHE, PRE-FETCH,
//! READ CAPACITY 10/16 and GET LBA STATUS.

use bytes::{Bytes, BytesMut};

use super::cdb::{self, be16, be32, be64, opcode as op, service_action as sa, Rw};
use super::sense::{status, Sense};
use super::spc::{
    self, max_transfer_blocks, MAX_ATOMIC_BLOCKS, MAX_CAW_BLOCKS, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
use super::{truncate, CmdResult, Failure, LogicalUnit, Reply};

/// Logical blocks per physical block exponent reported by READ CAPACITY(16), from the device's
/// physical block size. Provisioning granularity is a different thing and is reported apart, as
/// the OPTIMAL UNMAP GRANULARITY of VPD page B0h (from [`crate::BlockDevice::unmap_granularity`]);
/// GET LBA STATUS reports exactly the runs the device really deallocated, starting at the
/// requested LBA.
pub fn lbppbe(dev: &dyn crate::BlockDevice) -> u8 {
    let bs = dev.block_size().max(1);
    let ratio = (dev.physical_block_size() / bs).max(1);
    ratio.trailing_zeros().min(15) as u8
}

/// Whether `opc` is a block command handled here.
pub fn handles(opc: u8) -> bool {
    matches!(
        opc,
        op::READ_6
            | op::READ_10
            | op::READ_12
            | op::READ_16
            | op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_VERIFY_10
            | op::WRITE_VERIFY_12
            | op::WRITE_VERIFY_16
            | op::VERIFY_10
            | op::VERIFY_12
            | op::VERIFY_16
            | op::WRITE_SAME_10
            | op::WRITE_SAME_16
            | op::UNMAP
            | op::COMPARE_AND_WRITE
            | op::ORWRITE_16
            | op::WRITE_ATOMIC_16
            | op::SYNCHRONIZE_CACHE_10
            | op::SYNCHRONIZE_CACHE_16
            | op::PRE_FETCH_10
            | op::PRE_FETCH_16
            | op::READ_CAPACITY_10
            | op::SERVICE_ACTION_IN_16
            | op::READ_DEFECT_DATA_10
            | op::READ_DEFECT_DATA_12
    )
}

struct Geometry {
    bs: u64,
    blocks: u64,
}

fn geometry(lu: &LogicalUnit) -> Geometry {
    let dev = lu.device();
    let bs = u64::from(dev.block_size().max(1));
    Geometry {
        bs,
        blocks: dev.size() / bs,
    }
}

fn check_range(g: &Geometry, lba: u64, blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= g.blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// Runs a block command; anything unknown is INVALID COMMAND OPERATION CODE.
pub async fn execute(lu: &LogicalUnit, cdb: &[u8], data: Bytes) -> CmdResult {
    let g = geometry(lu);
    match cdb[0] {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => read(lu, &g, cdb).await,
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => write(lu, &g, cdb, data).await,
        op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
            write(lu, &g, cdb, data).await
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => verify(lu, &g, cdb, &data).await,
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => write_same(lu, &g, cdb, data).await,
        op::UNMAP => unmap(lu, &g, cdb, &data).await,
        op::COMPARE_AND_WRITE => compare_and_write(lu, &g, cdb, data).await,
        op::ORWRITE_16 => or_write(lu, &g, cdb, &data).await,
        op::WRITE_ATOMIC_16 => {
            let r = cdb::rw(cdb);
            check_range(&g, r.lba, u64::from(r.blocks))?;
            if r.blocks > MAX_ATOMIC_BLOCKS {
                return Err(Sense::invalid_cdb(12).into());
            }
            // Atomic with respect to every other read-modify-write command of this LUN.
            let _g = lu.rmw_lock().lock().await;
            write(lu, &g, cdb, data).await
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let r = cdb::rw(cdb);
            check_range(&g, r.lba, u64::from(r.blocks))?;
            lu.device().flush().await?;
            Ok(Reply::empty())
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            let r = cdb::rw(cdb);
            check_range(&g, r.lba, u64::from(r.blocks))?;
            // Nothing to stage: the data is as close as it gets. CONDITION MET says the
            // "cache" could hold the whole range.
            Ok(Reply {
                data: Bytes::new(),
                status: status::CONDITION_MET,
            })
        }
        op::READ_CAPACITY_10 => read_capacity10(&g, cdb),
        op::SERVICE_ACTION_IN_16 => match cdb[1] & 0x1f {
            sa::READ_CAPACITY_16 => read_capacity16(lu, &g, cdb),
            sa::GET_LBA_STATUS => get_lba_status(lu, &g, cdb).await,
            _ => Err(Sense::invalid_cdb(1).into()),
        },
        op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
            spc::read_defect_data(cdb).map_err(Failure::from)
        }
        _ => Err(Sense::invalid_opcode().into()),
    }
}

/// Common validation of a data transfer CDB.
fn validate(g: &Geometry, cdb: &[u8], r: &Rw) -> Result<(), Sense> {
    if r.protect != 0 {
        // No protection information is formatted on our LUNs.
        return Err(Sense::invalid_cdb(1));
    }
    check_range(g, r.lba, u64::from(r.blocks))?;
    if r.blocks > max_transfer_blocks(g.bs as u32) {
        return Err(Sense::invalid_cdb(
            if cdb[0] == op::READ_6 || cdb[0] == op::WRITE_6 {
                4
            } else {
                7
            },
        ));
    }
    Ok(())
}

async fn read(lu: &LogicalUnit, g: &Geometry, cdb: &[u8]) -> CmdResult {
    let r = cdb::rw(cdb);
    validate(g, cdb, &r)?;
    if r.blocks == 0 {
        return Ok(Reply::empty());
    }
    let data = lu
        .device()
        .read(r.lba * g.bs, (u64::from(r.blocks) * g.bs) as usize)
        .await?;
    Ok(Reply::data(data))
}

async fn write(lu: &LogicalUnit, g: &Geometry, cdb: &[u8], data: Bytes) -> CmdResult {
    let r = cdb::rw(cdb);
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    validate(g, cdb, &r)?;
    if r.blocks == 0 {
        return Ok(Reply::empty());
    }
    let len = (u64::from(r.blocks) * g.bs) as usize;
    if data.len() < len {
        return Err(Sense::invalid_field_in_iu().into());
    }
    let fua = r.fua || !lu.mode().wce;
    lu.device()
        .write(r.lba * g.bs, data.slice(..len), fua)
        .await?;
    Ok(Reply::empty())
}

/// Offset of the first differing byte.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

async fn verify(lu: &LogicalUnit, g: &Geometry, cdb: &[u8], data: &[u8]) -> CmdResult {
    let r = cdb::rw(cdb);
    let bytchk = (cdb[1] >> 1) & 0x03;
    if r.protect != 0 {
        return Err(Sense::invalid_cdb(1).into());
    }
    if bytchk == 2 {
        return Err(Sense::invalid_cdb(1).into());
    }
    check_range(g, r.lba, u64::from(r.blocks))?;
    if r.blocks == 0 || bytchk == 0 {
        return Ok(Reply::empty());
    }
    let len = (u64::from(r.blocks) * g.bs) as usize;
    let medium = lu.device().read(r.lba * g.bs, len).await?;
    let expected: Vec<u8> = if bytchk == 3 {
        let one = data
            .get(..g.bs as usize)
            .ok_or(Sense::invalid_field_in_iu())?;
        one.repeat(r.blocks as usize)
    } else {
        data.get(..len)
            .ok_or(Sense::invalid_field_in_iu())?
            .to_vec()
    };
    match first_difference(&medium, &expected) {
        Some(off) => Err(Sense::miscompare(off as u64).into()),
        None => Ok(Reply::empty()),
    }
}

async fn write_same(lu: &LogicalUnit, g: &Geometry, cdb: &[u8], data: Bytes) -> CmdResult {
    let sixteen = cdb[0] == op::WRITE_SAME_16;
    let r = cdb::rw(cdb);
    let unmap_bit = cdb[1] & 0x08 != 0;
    let anchor = cdb[1] & 0x10 != 0;
    let ndob = sixteen && cdb[1] & 0x01 != 0;
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    if r.protect != 0 || anchor {
        return Err(Sense::invalid_cdb(1).into());
    }
    let blocks = if r.blocks == 0 {
        // NUMBER OF LOGICAL BLOCKS 0: up to the last LBA (WSNZ is 0).
        g.blocks.saturating_sub(r.lba)
    } else {
        u64::from(r.blocks)
    };
    check_range(g, r.lba, blocks)?;
    if blocks > MAX_WRITE_SAME_BLOCKS {
        return Err(Sense::invalid_cdb(if sixteen { 10 } else { 7 }).into());
    }
    let bs = g.bs as usize;
    let pattern: Bytes = if ndob {
        Bytes::from(vec![0u8; bs])
    } else {
        match data.get(..bs) {
            Some(_) => data.slice(..bs),
            None => return Err(Sense::invalid_field_in_iu().into()),
        }
    };
    let dev = lu.device();
    // With UNMAP set the blocks are deallocated whatever the pattern holds (they then read
    // as zeros, LBPRZ): initiators use this to discard, as Linux and libiscsi expect.
    if unmap_bit {
        dev.unmap(r.lba * g.bs, blocks * g.bs).await?;
        return Ok(Reply::empty());
    }
    // Write in chunks of up to 1 MiB of repeated pattern.
    let per_chunk = ((1 << 20) / bs).max(1) as u64;
    let chunk = Bytes::from(pattern.repeat(per_chunk.min(blocks) as usize));
    let mut done = 0u64;
    while done < blocks {
        let n = per_chunk.min(blocks - done);
        dev.write(
            (r.lba + done) * g.bs,
            chunk.slice(..(n as usize) * bs),
            !lu.mode().wce,
        )
        .await?;
        done += n;
    }
    Ok(Reply::empty())
}

async fn unmap(lu: &LogicalUnit, g: &Geometry, cdb: &[u8], data: &[u8]) -> CmdResult {
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb(1).into()); // ANCHOR: no anchored state
    }
    let plen = usize::from(be16(cdb, 7));
    if plen == 0 {
        return Ok(Reply::empty());
    }
    if plen < 8 || data.len() < plen {
        return Err(Sense::param_list_length().into());
    }
    let data = &data[..plen];
    let bdl = usize::from(be16(data, 2));
    let descs = &data[8..(8 + bdl).min(plen)];
    if descs.len() / 16 > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param(2).into());
    }
    let mut ranges = Vec::new();
    for (i, d) in descs.chunks_exact(16).enumerate() {
        let lba = be64(d, 0);
        let n = be32(d, 8);
        if n > MAX_UNMAP_BLOCKS {
            return Err(Sense::invalid_param((8 + 16 * i + 8) as u16).into());
        }
        check_range(g, lba, u64::from(n))?;
        ranges.push((lba, n));
    }
    for (lba, n) in ranges {
        if n > 0 {
            lu.device().unmap(lba * g.bs, u64::from(n) * g.bs).await?;
        }
    }
    Ok(Reply::empty())
}

async fn compare_and_write(lu: &LogicalUnit, g: &Geometry, cdb: &[u8], data: Bytes) -> CmdResult {
    let r = cdb::rw(cdb);
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    if r.protect != 0 {
        return Err(Sense::invalid_cdb(1).into());
    }
    if r.blocks > u32::from(MAX_CAW_BLOCKS) {
        return Err(Sense::invalid_cdb(13).into());
    }
    check_range(g, r.lba, u64::from(r.blocks))?;
    if r.blocks == 0 {
        // Data for zero blocks: the CDB's length is what is wrong.
        if !data.is_empty() {
            return Err(Sense::invalid_cdb(13).into());
        }
        return Ok(Reply::empty());
    }
    let len = (u64::from(r.blocks) * g.bs) as usize;
    if data.len() != 2 * len {
        return Err(Sense::invalid_field_in_iu().into());
    }
    let _g = lu.rmw_lock().lock().await;
    let dev = lu.device();
    let current = dev.read(r.lba * g.bs, len).await?;
    if let Some(off) = first_difference(&current, &data[..len]) {
        return Err(Sense::miscompare(off as u64).into());
    }
    dev.write(
        r.lba * g.bs,
        data.slice(len..2 * len),
        r.fua || !lu.mode().wce,
    )
    .await?;
    Ok(Reply::empty())
}

async fn or_write(lu: &LogicalUnit, g: &Geometry, cdb: &[u8], data: &[u8]) -> CmdResult {
    let r = cdb::rw(cdb);
    if lu.write_protected() {
        return Err(Sense::write_protected().into());
    }
    validate(g, cdb, &r)?;
    if r.blocks == 0 {
        return Ok(Reply::empty());
    }
    let len = (u64::from(r.blocks) * g.bs) as usize;
    let mask = data.get(..len).ok_or(Sense::invalid_field_in_iu())?;
    let _g = lu.rmw_lock().lock().await;
    let dev = lu.device();
    let current = dev.read(r.lba * g.bs, len).await?;
    let mut out = BytesMut::from(&current[..]);
    for (o, m) in out.iter_mut().zip(mask) {
        *o |= m;
    }
    dev.write(r.lba * g.bs, out.freeze(), r.fua || !lu.mode().wce)
        .await?;
    Ok(Reply::empty())
}

fn read_capacity10(g: &Geometry, cdb: &[u8]) -> CmdResult {
    let pmi = cdb[8] & 0x01 != 0;
    if !pmi && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb(2).into());
    }
    let last = g.blocks.saturating_sub(1).min(0xffff_ffff) as u32;
    let mut v = last.to_be_bytes().to_vec();
    v.extend_from_slice(&(g.bs as u32).to_be_bytes());
    Ok(Reply::data(v))
}

fn read_capacity16(lu: &LogicalUnit, g: &Geometry, cdb: &[u8]) -> CmdResult {
    let alloc = be32(cdb, 10) as usize;
    let mut v = vec![0u8; 32];
    v[0..8].copy_from_slice(&g.blocks.saturating_sub(1).to_be_bytes());
    v[8..12].copy_from_slice(&(g.bs as u32).to_be_bytes());
    v[13] = lbppbe(lu.device().as_ref());
    v[14] = 0x80 | 0x40; // LBPME, LBPRZ
    Ok(truncate(v, alloc))
}

/// Most LBA status descriptors returned by one GET LBA STATUS.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Most [`BlockDevice::mapping`] calls one GET LBA STATUS makes: a device that reports its mapping
/// in small pieces (one object at a time) is asked again until the pieces fill the descriptors,
/// but never without bound.
///
/// [`BlockDevice::mapping`]: crate::block::BlockDevice::mapping
const MAX_LBA_STATUS_CALLS: usize = 4096;

async fn get_lba_status(lu: &LogicalUnit, g: &Geometry, cdb: &[u8]) -> CmdResult {
    let lba = be64(cdb, 2);
    let alloc = be32(cdb, 10) as usize;
    if lba >= g.blocks {
        return Err(Sense::lba_out_of_range().into());
    }
    let dev = lu.device();
    // (first LBA, blocks, provisioning status: 0 mapped, 1 deallocated)
    let mut descs: Vec<(u64, u32, u8)> = Vec::new();
    let mut at = lba;
    let room = MAX_LBA_STATUS_DESCRIPTORS.min((alloc.saturating_sub(8) / 16).max(1));
    // Adjacent pieces in the same state are one descriptor (SBC-4 5.8.2 asks for the extent,
    // not the device's internal pieces); initiators such as libiscsi's test suite expect the
    // descriptors that fit in their buffer to cover the whole LUN when it is mostly one state.
    for _ in 0..MAX_LBA_STATUS_CALLS {
        if at >= g.blocks {
            break;
        }
        let e = dev.mapping(at * g.bs).await?;
        // A descriptor counts at most u32::MAX blocks.
        let n = (e.len / g.bs).clamp(1, (g.blocks - at).min(u64::from(u32::MAX)));
        let st = if e.mapped { 0u8 } else { 1 };
        let full = descs.len() == room;
        match descs.last_mut() {
            Some(last) if last.2 == st && u64::from(last.1) + n <= u64::from(u32::MAX) => {
                last.1 += n as u32;
            }
            _ if full => break,
            _ => descs.push((at, n as u32, st)),
        }
        at += n;
    }
    let mut v = Vec::with_capacity(8 + 16 * descs.len());
    v.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for (l, n, st) in descs {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[st, 0, 0, 0]);
    }
    Ok(truncate(v, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockDevice, MemDevice};
    use crate::scsi::pr::InMemoryReservationStore;
    use crate::scsi::sense::status;
    use crate::scsi::Nexus;
    use std::sync::Arc;

    async fn lu() -> LogicalUnit {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20, 512, "s"));
        LogicalUnit::open(
            "iqn.t",
            0,
            dev,
            Arc::new(InMemoryReservationStore::default()),
        )
        .await
        .unwrap()
    }

    fn cdb10(opc: u8, lba: u32, n: u16) -> Vec<u8> {
        let mut c = vec![opc, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&n.to_be_bytes());
        c
    }

    fn sense_asc(o: &super::super::Outcome) -> (u8, u8) {
        let s = o.sense.as_ref().unwrap();
        (s[2], s[12])
    }

    #[tokio::test]
    async fn write_read_and_range_errors() {
        let lu = lu().await;
        let n = Nexus::new("iqn.i", [0; 6]);
        let data = Bytes::from(vec![7u8; 1024]);
        let o = lu
            .execute(&n, &cdb10(op::WRITE_10, 4, 2), data.clone())
            .await;
        assert_eq!(o.status, status::GOOD);
        let o = lu
            .execute(&n, &cdb10(op::READ_10, 4, 2), Bytes::new())
            .await;
        assert_eq!(o.data, data);
        let o = lu
            .execute(&n, &cdb10(op::READ_10, 2047, 2), Bytes::new())
            .await;
        assert_eq!(sense_asc(&o), (5, 0x21));
        let mut bad = cdb10(op::READ_10, 0, 1);
        bad[1] = 0x20; // RDPROTECT without protection information
        assert_eq!(
            sense_asc(&lu.execute(&n, &bad, Bytes::new()).await),
            (5, 0x24)
        );
        assert_eq!(
            sense_asc(
                &lu.execute(&n, &[0xa9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Bytes::new())
                    .await
            ),
            (5, 0x20)
        );
    }

    #[tokio::test]
    async fn compare_and_write_miscompare_reports_offset() {
        let lu = lu().await;
        let n = Nexus::new("iqn.i", [0; 6]);
        let mut cdb = vec![0u8; 16];
        cdb[0] = op::COMPARE_AND_WRITE;
        cdb[9] = 1;
        cdb[13] = 1;
        let mut buf = vec![0u8; 1024];
        buf[512..].fill(9);
        let o = lu.execute(&n, &cdb, Bytes::from(buf.clone())).await;
        assert_eq!(o.status, status::GOOD);
        // Now the medium holds 9s: comparing against zeros fails at byte 0.
        let o = lu.execute(&n, &cdb, Bytes::from(buf)).await;
        assert_eq!(sense_asc(&o), (0x0e, 0x1d));
    }

    #[tokio::test]
    async fn write_same_unmap_and_lba_status() {
        let lu = lu().await;
        let n = Nexus::new("iqn.i", [0; 6]);
        let o = lu
            .execute(
                &n,
                &cdb10(op::WRITE_SAME_10, 0, 256),
                Bytes::from(vec![1u8; 512]),
            )
            .await;
        assert_eq!(o.status, status::GOOD);
        let mut ws = cdb10(op::WRITE_SAME_10, 0, 128);
        ws[1] = 0x08;
        let o = lu.execute(&n, &ws, Bytes::from(vec![0u8; 512])).await;
        assert_eq!(o.status, status::GOOD);
        let r = lu
            .execute(&n, &cdb10(op::READ_10, 0, 256), Bytes::new())
            .await;
        assert!(r.data[..128 * 512].iter().all(|&b| b == 0));
        assert!(r.data[128 * 512..].iter().all(|&b| b == 1));
        let mut gls = vec![0u8; 16];
        gls[0] = op::SERVICE_ACTION_IN_16;
        gls[1] = sa::GET_LBA_STATUS;
        gls[13] = 64;
        let o = lu.execute(&n, &gls, Bytes::new()).await;
        assert_eq!(o.status, status::GOOD);
        assert_eq!(o.data[8 + 12], 1, "first 64 KiB granule is deallocated");
    }

    /// A device that reports its mapping one 64 KiB piece at a time, as a cluster volume reports
    /// one object at a time.
    struct Piecewise(MemDevice);

    #[async_trait::async_trait]
    impl BlockDevice for Piecewise {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn block_size(&self) -> u32 {
            self.0.block_size()
        }
        async fn read(&self, offset: u64, len: usize) -> Result<Bytes, crate::block::BlockError> {
            self.0.read(offset, len).await
        }
        async fn write(
            &self,
            offset: u64,
            data: Bytes,
            fua: bool,
        ) -> Result<(), crate::block::BlockError> {
            self.0.write(offset, data, fua).await
        }
        async fn flush(&self) -> Result<(), crate::block::BlockError> {
            self.0.flush().await
        }
        async fn unmap(&self, offset: u64, len: u64) -> Result<(), crate::block::BlockError> {
            self.0.unmap(offset, len).await
        }
        fn serial(&self) -> String {
            self.0.serial()
        }
        async fn mapping(
            &self,
            offset: u64,
        ) -> Result<crate::block::Extent, crate::block::BlockError> {
            let e = self.0.mapping(offset).await?;
            let piece_end = (offset / 65536 + 1) * 65536;
            Ok(crate::block::Extent {
                len: e.len.min(piece_end - offset),
                mapped: e.mapped,
            })
        }
    }

    fn lba_status_cdb(lba: u64, alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = op::SERVICE_ACTION_IN_16;
        c[1] = sa::GET_LBA_STATUS;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    /// (first LBA, blocks, status) of each descriptor.
    fn lba_status_descs(data: &[u8]) -> Vec<(u64, u32, u8)> {
        let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
        assert_eq!((len - 4) % 16, 0);
        data[8..4 + len]
            .chunks(16)
            .map(|d| {
                (
                    u64::from_be_bytes(d[0..8].try_into().unwrap()),
                    u32::from_be_bytes(d[8..12].try_into().unwrap()),
                    d[12],
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn lba_status_joins_pieces_so_few_descriptors_cover_the_lun() {
        let blocks = 8192u64; // 4 MiB of 512-byte blocks: 64 pieces of 64 KiB
        let dev: Arc<dyn BlockDevice> = Arc::new(Piecewise(MemDevice::new(blocks * 512, 512, "p")));
        let lu = LogicalUnit::open(
            "iqn.t",
            0,
            dev,
            Arc::new(InMemoryReservationStore::default()),
        )
        .await
        .unwrap();
        let n = Nexus::new("iqn.i", [0; 6]);
        for (lba, count) in [(0u32, 1u16), (2048, 1), (7936, 256)] {
            let o = lu
                .execute(
                    &n,
                    &cdb10(op::WRITE_10, lba, count),
                    Bytes::from(vec![7u8; usize::from(count) * 512]),
                )
                .await;
            assert_eq!(o.status, status::GOOD);
        }
        // 256 bytes hold 15 descriptors, as libiscsi's test suite asks; 5 extents cover the LUN.
        let o = lu.execute(&n, &lba_status_cdb(0, 256), Bytes::new()).await;
        assert_eq!(o.status, status::GOOD);
        assert_eq!(
            lba_status_descs(&o.data),
            vec![
                (0, 128, 0),
                (128, 1920, 1),
                (2048, 128, 0),
                (2176, 5760, 1),
                (7936, 256, 0)
            ]
        );
        // A buffer for one descriptor gets the first extent only.
        let o = lu.execute(&n, &lba_status_cdb(0, 24), Bytes::new()).await;
        assert_eq!(lba_status_descs(&o.data), vec![(0, 128, 0)]);
        // Deallocate it all: one descriptor, from any starting LBA.
        let mut unmap = vec![0u8; 10];
        unmap[0] = op::UNMAP;
        unmap[8] = 24;
        let mut list = vec![0u8; 24];
        list[0..2].copy_from_slice(&22u16.to_be_bytes());
        list[2..4].copy_from_slice(&16u16.to_be_bytes());
        list[16..20].copy_from_slice(&(blocks as u32).to_be_bytes());
        let o = lu.execute(&n, &unmap, Bytes::from(list)).await;
        assert_eq!(o.status, status::GOOD);
        let o = lu.execute(&n, &lba_status_cdb(0, 256), Bytes::new()).await;
        assert_eq!(lba_status_descs(&o.data), vec![(0, 8192, 1)]);
        let o = lu
            .execute(&n, &lba_status_cdb(100, 256), Bytes::new())
            .await;
        assert_eq!(lba_status_descs(&o.data), vec![(100, 8092, 1)]);
    }
}
