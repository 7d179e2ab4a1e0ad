//! Shared helpers of the iSCSI integration tests: an in-process target, libiscsi tool lookup,
//! the iscsi-test-cu output parser, and a minimal raw initiator.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_iscsi::pdu::{self, op, Digests, Pdu};
use cairn_iscsi::{serve, InMemoryRegistry, IscsiOptions, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const IQN: &str = "iqn.2024-01.io.cairn.test:target0";

/// A target served in-process on 127.0.0.1 with an ephemeral port.
pub struct Target {
    pub port: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start(targets: Vec<TargetConfig>) -> Self {
        Self::start_with(targets, IscsiOptions::default()).await
    }

    pub async fn start_with(targets: Vec<TargetConfig>, opts: IscsiOptions) -> Self {
        let registry = Arc::new(InMemoryRegistry::new());
        for t in targets {
            registry.add_target(t);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            serve(listener, registry, opts, rx)
                .await
                .expect("serve failed");
        });
        Self { port, stop, task }
    }

    pub fn url(&self, iqn: &str, lun: u64) -> String {
        format!("iscsi://127.0.0.1:{}/{iqn}/{lun}", self.port)
    }

    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the target and checks that `serve` returned cleanly and promptly.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("serve did not stop within 15 s")
            .expect("serve task panicked");
    }
}

/// The path of a libiscsi tool; panics (the test fails, never skips) if it is missing.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found in PATH: install the libiscsi tools (apt-get install -y libiscsi-bin)"
    );
}

/// Output of a finished tool run.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a tool with a time bound.
pub async fn run(name: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut cmd = tokio::process::Command::new(tool(name));
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Counts of an `iscsi-test-cu` run, with the logic of shared/peers/parse_testcu.py:
/// a test that printed [SKIPPED] did not pass even though CUnit counts it as passed.
#[derive(Debug, Default)]
pub struct CuSummary {
    pub passed: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
}

pub fn parse_test_cu(output: &str) -> CuSummary {
    let mut suite = String::new();
    let mut test: Option<String> = None;
    let mut skipped = std::collections::BTreeSet::new();
    let mut passed_raw = Vec::new();
    let mut failed = Vec::new();
    for line in output.lines() {
        let mut line = line.to_string();
        if let Some(rest) = line.strip_prefix("Suite: ") {
            suite = rest.split_whitespace().next().unwrap_or("").to_string();
            continue;
        }
        let trimmed = line.trim_start();
        if line.starts_with(char::is_whitespace) {
            if let Some(rest) = trimmed.strip_prefix("Test: ") {
                if let Some((name, tail)) = rest.split_once(" ...") {
                    test = Some(format!("{suite}.{name}"));
                    line = tail.to_string();
                }
            }
        }
        let Some(t) = test.clone() else { continue };
        if line.contains("[SKIPPED]") {
            skipped.insert(t.clone());
        }
        let cut = match (line.find("[FAILED]"), line.find("[SKIPPED]")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => line.len(),
        };
        let s = line[..cut].trim();
        if s.ends_with("FAILED") || line.trim() == "FAILED" {
            failed.push(t);
            test = None;
        } else if s.ends_with("passed") || line.trim() == "passed" {
            passed_raw.push(t);
            test = None;
        }
    }
    let passed = passed_raw
        .into_iter()
        .filter(|t| !skipped.contains(t))
        .collect();
    CuSummary {
        passed,
        skipped: skipped.into_iter().collect(),
        failed,
    }
}

/// A bare-bones initiator speaking raw PDUs: enough to log in, run commands and misbehave.
pub struct RawInitiator {
    pub stream: TcpStream,
    buf: BytesMut,
    cmdsn: u32,
    itt: u32,
    pub exp_statsn: u32,
}

/// A SCSI command's result as the raw initiator saw it.
#[derive(Debug)]
pub struct RawResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
}

impl RawInitiator {
    /// Connects and logs in to `iqn` (no authentication) straight into full feature phase.
    pub async fn login(portal: &str, iqn: &str, initiator: &str, isid: u8) -> Self {
        let stream = TcpStream::connect(portal).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut me = Self {
            stream,
            buf: BytesMut::new(),
            cmdsn: 1,
            itt: 1,
            exp_statsn: 0,
        };
        let mut p = Pdu::new(op::LOGIN);
        p.bhs[0] |= 0x40;
        p.bhs[1] = 0x80 | (1 << 2) | 3; // T, CSG=operational, NSG=full feature
        p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid]);
        p.set_itt(0);
        p.set_u32(24, me.cmdsn);
        let text = format!(
            "InitiatorName={initiator}\0TargetName={iqn}\0SessionType=Normal\0\
             HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0\
             ImmediateData=Yes\0InitialR2T=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0"
        );
        p.data = Bytes::from(text.into_bytes());
        me.send(&p).await;
        let r = me.recv().await.expect("no login response");
        assert_eq!(r.opcode(), op::LOGIN_RSP);
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "login rejected");
        assert_eq!(
            r.bhs[1] & 0x83,
            0x83,
            "target did not move to full feature phase"
        );
        me.exp_statsn = r.u32_at(24).wrapping_add(1);
        me
    }

    pub async fn send(&mut self, p: &Pdu) {
        let mut out = BytesMut::new();
        p.encode(&mut out, Digests::default());
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next PDU, `None` if the target closed the connection (bounded to 20 s).
    pub async fn recv(&mut self) -> Option<Pdu> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match pdu::parse(&self.buf, Digests::default(), 1 << 24) {
                    Ok((p, used)) => {
                        let _ = self.buf.split_to(used);
                        return Some(p);
                    }
                    Err(pdu::PduError::Incomplete { .. }) => {}
                    Err(e) => panic!("target sent a bad PDU: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no PDU from the target within 20 s")
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Runs one SCSI command on `lun`, sending `data_out` with immediate data and R2Ts.
    pub async fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> RawResult {
        let itt = self.next_itt();
        let mut p = Pdu::new(op::SCSI_CMD);
        let write = !data_out.is_empty();
        p.bhs[1] = 0x80 | 0x01 | if write { 0x20 } else { 0 } | if read_len > 0 { 0x40 } else { 0 };
        p.set_lun(pdu::lun_field(lun));
        p.set_itt(itt);
        p.set_u32(
            20,
            if write {
                data_out.len() as u32
            } else {
                read_len
            },
        );
        p.set_u32(24, self.cmdsn);
        p.set_u32(28, self.exp_statsn);
        self.cmdsn += 1;
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        let imm = data_out.len().min(65536);
        p.data = Bytes::copy_from_slice(&data_out[..imm]);
        self.send(&p).await;
        let mut data = vec![0u8; read_len as usize];
        loop {
            let r = self
                .recv()
                .await
                .expect("connection closed during a command");
            match r.opcode() {
                op::R2T => {
                    let ttt = r.u32_at(20);
                    let off = r.u32_at(40) as usize;
                    let len = r.u32_at(44) as usize;
                    let mut sent = 0usize;
                    let mut datasn = 0u32;
                    while sent < len {
                        let n = (len - sent).min(65536);
                        let mut d = Pdu::new(op::DATA_OUT);
                        d.bhs[1] = if sent + n == len { 0x80 } else { 0 };
                        d.set_lun(pdu::lun_field(lun));
                        d.set_itt(itt);
                        d.set_u32(20, ttt);
                        d.set_u32(28, self.exp_statsn);
                        d.set_u32(36, datasn);
                        d.set_u32(40, (off + sent) as u32);
                        d.data = Bytes::copy_from_slice(&data_out[off + sent..off + sent + n]);
                        self.send(&d).await;
                        sent += n;
                        datasn += 1;
                    }
                }
                op::DATA_IN => {
                    let off = r.u32_at(40) as usize;
                    data[off..off + r.data.len()].copy_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        self.exp_statsn = r.u32_at(24).wrapping_add(1);
                        return RawResult {
                            status: r.bhs[3],
                            data,
                            sense: Vec::new(),
                        };
                    }
                }
                op::SCSI_RSP => {
                    self.exp_statsn = r.u32_at(24).wrapping_add(1);
                    let sense = if r.data.len() > 2 {
                        r.data[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    return RawResult {
                        status: r.bhs[3],
                        data,
                        sense,
                    };
                }
                other => panic!("unexpected PDU opcode {other:#x} during a command"),
            }
        }
    }

    /// TEST UNIT READY; returns the status.
    pub async fn tur(&mut self, lun: u64) -> u8 {
        self.command(lun, &[0u8; 6], &[], 0).await.status
    }
}

/// A WRITE(10) CDB (`fua`: force unit access).
pub fn write10(lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2A;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A READ(10) CDB.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}
