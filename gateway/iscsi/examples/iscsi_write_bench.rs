//! Write load against any iSCSI target, for bench/iscsi.sh (iscsi-perf only reads).
//!
//! Usage: iscsi_write_bench URL [--random] [--blocks N] [--qd N] [--secs S] [--fua]
//! URL is `iscsi://HOST:PORT/IQN/LUN`. One session, `--qd` WRITE(16)s in flight (immediate
//! data, then R2T-solicited Data-Out), `--blocks` 512-byte blocks each, random or sequential
//! (wrapping) offsets over the LUN; with `--fua` every write has FUA set. Prints
//! `iops N mibps M` when done.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_iscsi::pdu::{self, op, Digests, Pdu};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error>;

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    cmdsn: u32,
    exp_statsn: u32,
}

impl Conn {
    async fn send(&mut self, p: &Pdu) -> Result<(), Error> {
        let mut out = BytesMut::new();
        p.encode(&mut out, Digests::default());
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Pdu, Error> {
        loop {
            match pdu::parse(&self.buf, Digests::default(), 1 << 24) {
                Ok((p, used)) => {
                    let _ = self.buf.split_to(used);
                    return Ok(p);
                }
                Err(pdu::PduError::Incomplete { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("target closed the connection".into());
            }
        }
    }
}

/// Negotiated values the data path needs.
struct Limits {
    /// Largest data segment the target accepts.
    target_mrdsl: usize,
    first_burst: usize,
    immediate: bool,
}

fn key(text: &[u8], k: &str) -> Option<String> {
    text.split(|&b| b == 0).find_map(|kv| {
        let s = std::str::from_utf8(kv).ok()?;
        s.strip_prefix(k)?.strip_prefix('=').map(str::to_string)
    })
}

async fn login(portal: &str, iqn: &str) -> Result<(Conn, Limits), Error> {
    let stream = TcpStream::connect(portal).await?;
    stream.set_nodelay(true)?;
    let mut c = Conn {
        stream,
        buf: BytesMut::new(),
        cmdsn: 1,
        exp_statsn: 0,
    };
    let mut text = format!(
        "InitiatorName=iqn.2024-01.io.cairn:write-bench\0TargetName={iqn}\0SessionType=Normal\0\
         HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0\
         ImmediateData=Yes\0InitialR2T=Yes\0MaxBurstLength=1048576\0FirstBurstLength=65536\0\
         MaxOutstandingR2T=1\0"
    )
    .into_bytes();
    let mut got = Vec::new();
    for _ in 0..4 {
        let mut p = Pdu::new(op::LOGIN);
        p.bhs[0] |= 0x40;
        p.bhs[1] = 0x80 | (1 << 2) | 3; // T, operational -> full feature
        p.bhs[8..14].copy_from_slice(&[0x80, 0, 0x42, 0, 0, 1]);
        p.set_u32(24, c.cmdsn);
        p.set_u32(28, c.exp_statsn);
        p.data = Bytes::from(std::mem::take(&mut text));
        c.send(&p).await?;
        let r = c.recv().await?;
        if r.opcode() != op::LOGIN_RSP || r.bhs[36] != 0 {
            return Err(format!("login refused: class {} detail {}", r.bhs[36], r.bhs[37]).into());
        }
        c.exp_statsn = r.u32_at(24).wrapping_add(1);
        got.extend_from_slice(&r.data);
        got.push(0);
        if r.bhs[1] & 0x83 == 0x83 {
            let num = |k: &str, d: usize| key(&got, k).and_then(|v| v.parse().ok()).unwrap_or(d);
            let limits = Limits {
                target_mrdsl: num("MaxRecvDataSegmentLength", 8192),
                first_burst: num("FirstBurstLength", 65536),
                immediate: key(&got, "ImmediateData").as_deref() != Some("No"),
            };
            return Ok((c, limits));
        }
    }
    Err("login did not reach full feature phase".into())
}

/// The LUN's size in blocks, by READ CAPACITY(16); retried past unit attentions.
async fn read_capacity(c: &mut Conn, lun: u64) -> Result<u64, Error> {
    for itt in 1..=4u32 {
        let mut rc = Pdu::new(op::SCSI_CMD);
        rc.bhs[1] = 0x80 | 0x40 | 0x01;
        rc.set_lun(pdu::lun_field(lun));
        rc.set_itt(itt);
        rc.set_u32(20, 32);
        rc.set_u32(24, c.cmdsn);
        rc.set_u32(28, c.exp_statsn);
        c.cmdsn += 1;
        rc.bhs[32] = 0x9e;
        rc.bhs[33] = 0x10;
        rc.bhs[45] = 32;
        c.send(&rc).await?;
        let mut data = Vec::new();
        let status = loop {
            let r = c.recv().await?;
            match r.opcode() {
                op::DATA_IN => {
                    data.extend_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        c.exp_statsn = r.u32_at(24).wrapping_add(1);
                        break r.bhs[3];
                    }
                }
                op::SCSI_RSP => {
                    c.exp_statsn = r.u32_at(24).wrapping_add(1);
                    break r.bhs[3];
                }
                _ => {}
            }
        };
        if status == 0 && data.len() >= 8 {
            let mut last = [0u8; 8];
            last.copy_from_slice(&data[..8]);
            return Ok(u64::from_be_bytes(last) + 1);
        }
    }
    Err("READ CAPACITY(16) kept failing".into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: iscsi_write_bench URL [options]")?;
    let (mut random, mut blocks, mut qd, mut secs, mut fua) = (false, 8u32, 32usize, 10u64, false);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--random" => random = true,
            "--blocks" => blocks = val()?.parse()?,
            "--qd" => qd = val()?.parse()?,
            "--secs" => secs = val()?.parse()?,
            "--fua" => fua = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let rest = url
        .strip_prefix("iscsi://")
        .ok_or("URL must start with iscsi://")?;
    let mut parts = rest.splitn(3, '/');
    let portal = parts.next().ok_or("no portal")?;
    let iqn = parts.next().ok_or("no target")?;
    let lun: u64 = parts.next().ok_or("no LUN")?.parse()?;
    let (mut c, limits) = login(portal, iqn).await?;

    let lba_count = read_capacity(&mut c, lun).await?;
    let len = blocks as usize * 512;
    let span = lba_count / u64::from(blocks);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let payload = Bytes::from((0..len).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>());
    let imm = if limits.immediate {
        len.min(limits.first_burst).min(limits.target_mrdsl)
    } else {
        0
    };
    let mut inflight: HashMap<u32, ()> = HashMap::new();
    let mut next_itt = 2u32;
    let mut seq = 0u64;
    let mut done = 0u64;
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    loop {
        while inflight.len() < qd && Instant::now() < until {
            let slot = if random {
                rng.gen_range(0..span)
            } else {
                let s = seq % span;
                seq += 1;
                s
            };
            let lba = slot * u64::from(blocks);
            let itt = next_itt;
            next_itt = next_itt.wrapping_add(1).max(2);
            let mut p = Pdu::new(op::SCSI_CMD);
            p.bhs[1] = 0x80 | 0x20 | 0x01;
            p.set_lun(pdu::lun_field(lun));
            p.set_itt(itt);
            p.set_u32(20, len as u32);
            p.set_u32(24, c.cmdsn);
            p.set_u32(28, c.exp_statsn);
            c.cmdsn = c.cmdsn.wrapping_add(1);
            p.bhs[32] = 0x8a;
            p.bhs[33] = if fua { 0x08 } else { 0 };
            p.bhs[34..42].copy_from_slice(&lba.to_be_bytes());
            p.bhs[42..46].copy_from_slice(&blocks.to_be_bytes());
            p.data = payload.slice(..imm);
            c.send(&p).await?;
            inflight.insert(itt, ());
        }
        if inflight.is_empty() {
            break;
        }
        let r = c.recv().await?;
        match r.opcode() {
            op::R2T => {
                let (itt, ttt) = (r.u32_at(16), r.u32_at(20));
                let (off, want) = (r.u32_at(40) as usize, r.u32_at(44) as usize);
                let mut sent = 0usize;
                let mut datasn = 0u32;
                while sent < want {
                    let n = (want - sent).min(limits.target_mrdsl);
                    let mut d = Pdu::new(op::DATA_OUT);
                    d.bhs[1] = if sent + n == want { 0x80 } else { 0 };
                    d.set_lun(pdu::lun_field(lun));
                    d.set_itt(itt);
                    d.set_u32(20, ttt);
                    d.set_u32(28, c.exp_statsn);
                    d.set_u32(36, datasn);
                    d.set_u32(40, (off + sent) as u32);
                    d.data = payload.slice(off + sent..off + sent + n);
                    c.send(&d).await?;
                    sent += n;
                    datasn += 1;
                }
            }
            op::SCSI_RSP => {
                c.exp_statsn = r.u32_at(24).wrapping_add(1);
                if inflight.remove(&r.u32_at(16)).is_some() {
                    if r.bhs[3] != 0 {
                        return Err(format!("write failed with status {:#x}", r.bhs[3]).into());
                    }
                    done += 1;
                }
            }
            op::NOP_IN if r.u32_at(20) != pdu::RESERVED_TAG => {
                // A target ping: answer it so the session stays up.
                let mut n = Pdu::new(op::NOP_OUT);
                n.bhs[0] |= 0x40;
                n.set_itt(pdu::RESERVED_TAG);
                n.set_u32(20, r.u32_at(20));
                n.set_u32(24, c.cmdsn);
                n.set_u32(28, c.exp_statsn);
                c.send(&n).await?;
            }
            _ => {}
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "iops {:.0} mibps {:.1}",
        done as f64 / elapsed,
        done as f64 * len as f64 / elapsed / f64::from(1 << 20)
    );
    Ok(())
}
