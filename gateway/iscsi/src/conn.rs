//! One iSCSI connection in full feature phase (RFC 7143 §4, §11).
//!
//! The connection task reads PDUs and dispatches them; a writer task owns the socket's write
//! half and stamps StatSN / ExpCmdSN / MaxCmdSN on every PDU just before it leaves, so PDUs
//! queued by concurrently running SCSI tasks still carry consistent sequence numbers.
//!
//! Write commands collect their Data-Out here (immediate data, unsolicited Data-Out up to
//! FirstBurstLength, then R2T-solicited bursts of at most MaxBurstLength, MaxOutstandingR2T
//! at a time) before the command runs. Each command then runs as its own tokio task through
//! [`Session::spawn_task`], so task management can abort it, and sends its Data-In (with
//! phase-collapsed status when it is GOOD) or a SCSI Response. A command takes its place in
//! its LU's task set when its PDU arrives and starts when its task attribute allows: SIMPLE
//! commands run concurrently, ORDERED ones after everything older (see `scsi::task_set`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::error::IscsiError;
use crate::io::{Frame, PduReader};
use crate::login::{self, LoggedIn};
use crate::pdu::{
    self, lun_number, op, reject, DataOut, Digests, LogoutRequest, NopOut, Pdu, PduError, Request,
    ScsiCommand, TaskMgmt, TextRequest, TmfFunction, RESERVED_TAG,
};
use crate::scsi::sense::{key, status, Sense};
use crate::scsi::task_set::{TaskAttr, Ticket};
use crate::scsi::{self, Outcome, UA_COMMANDS_CLEARED};
use crate::server::Shared;
use crate::session::{CmdSnCheck, Session};
use crate::text::{encode_pairs, negotiate, parse_pairs, KeyOutcome, Params};

/// Largest write a single command may stage in memory.
const MAX_WRITE_BUFFER: u32 = 64 * 1024 * 1024;
/// How long a closing connection waits for its queued PDUs to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A PDU for the writer; `status` PDUs take (and advance) a StatSN.
enum Out {
    Pdu {
        pdu: Pdu,
        status: bool,
    },
    /// Flush what is queued, then shut the socket down.
    Close,
}

type Tx = mpsc::Sender<Out>;

async fn send(tx: &Tx, pdu: Pdu, status: bool) {
    // A closed writer means the connection is gone; the PDU has nowhere to go.
    let _ = tx.send(Out::Pdu { pdu, status }).await;
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    session: Arc<Session>,
    digests: Digests,
    mut statsn: u32,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(item) = next.take() {
            match item {
                Out::Pdu { mut pdu, status } => {
                    let (exp, max) = session.sn_window();
                    if status {
                        pdu.set_u32(24, statsn);
                        statsn = statsn.wrapping_add(1);
                    } else if matches!(pdu.opcode(), op::R2T | op::NOP_IN | op::ASYNC) {
                        pdu.set_u32(24, statsn);
                    }
                    pdu.set_u32(28, exp);
                    pdu.set_u32(32, max);
                    pdu.encode(&mut buf, digests);
                }
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 512 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// An outstanding R2T.
struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    next_offset: u32,
    next_datasn: u32,
}

/// A write command collecting its Data-Out.
struct WriteTask {
    cmd: ScsiCommand,
    /// Its place in the LU's task set, taken when the command arrived.
    ticket: Option<Ticket>,
    buf: BytesMut,
    received: u32,
    unsolicited_end: u32,
    unsolicited_next: u32,
    unsolicited_datasn: u32,
    /// Next offset not yet requested by an R2T.
    request_next: u32,
    r2ts: Vec<R2t>,
    r2tsn: u32,
}

enum Control {
    Continue,
    Close,
}

struct Conn {
    shared: Arc<Shared>,
    session: Arc<Session>,
    cid: u16,
    params: Params,
    tx: Tx,
    local: SocketAddr,
    writes: HashMap<u32, WriteTask>,
    next_ttt: u32,
    /// Remaining text of long Text Responses, by target transfer tag.
    text_rest: HashMap<u32, Bytes>,
}

/// Serves one TCP connection from login to close.
pub async fn run(stream: TcpStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let peer = stream.peer_addr().ok();
    let (rd, mut wr) = stream.into_split();
    let mut reader = PduReader::new(rd);
    let login_timeout = Duration::from_secs(shared.opts.login_timeout_secs);
    let li: LoggedIn = match tokio::time::timeout(
        login_timeout,
        login::login(&mut reader, &mut wr, &shared),
    )
    .await
    {
        Ok(Ok(Some(li))) => li,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "login failed");
            return;
        }
        Err(_) => {
            tracing::debug!(?peer, "login timed out");
            return;
        }
    };
    let LoggedIn {
        session,
        cid,
        params,
        next_statsn,
        mut close,
    } = li;
    tracing::debug!(?peer, tsih = session.tsih, initiator = %session.nexus.initiator, "logged in");
    let digests = Digests {
        header: params.header_digest,
        data: params.data_digest,
    };
    let (tx, rx) = mpsc::channel(1024);
    let writer = tokio::spawn(writer(wr, rx, Arc::clone(&session), digests, next_statsn));
    let mut conn = Conn {
        shared: Arc::clone(&shared),
        session: Arc::clone(&session),
        cid,
        params,
        tx: tx.clone(),
        local,
        writes: HashMap::new(),
        next_ttt: 1,
        text_rest: HashMap::new(),
    };
    let max_data = conn.params.target_mrdsl as usize;
    loop {
        if *close.borrow() || *shutdown.borrow() {
            break;
        }
        let frame = tokio::select! {
            f = reader.next(digests, max_data) => f,
            _ = close.changed() => break,
            _ = shutdown.changed() => break,
        };
        match frame {
            Ok(Some(Frame::Pdu(pdu))) => match conn.handle(pdu).await {
                Control::Continue => {}
                Control::Close => break,
            },
            Ok(Some(Frame::BadDataDigest(bhs))) => {
                send(&tx, reject(pdu::reject::DATA_DIGEST, &bhs), true).await;
            }
            Ok(None) => break,
            Err(IscsiError::Pdu(PduError::DataSegmentTooLong { len, max })) => {
                tracing::info!(?peer, len, max, "data segment too long; closing connection");
                if let Some(bhs) = reader.pending_header() {
                    send(&tx, reject(pdu::reject::PROTOCOL_ERROR, &bhs), true).await;
                }
                break;
            }
            Err(e) => {
                tracing::debug!(?peer, error = %e, "connection read failed");
                break;
            }
        }
    }
    drop(conn);
    let _ = tx.send(Out::Close).await;
    drop(tx);
    let abort = writer.abort_handle();
    if tokio::time::timeout(DRAIN_TIMEOUT, writer).await.is_err() {
        abort.abort();
    }
    if session.remove_connection(cid, &close) {
        session.teardown();
        shared.sessions.remove(&session);
        tracing::debug!(tsih = session.tsih, "session closed");
    }
}

impl Conn {
    async fn handle(&mut self, pdu: Pdu) -> Control {
        let req = match Request::decode(&pdu) {
            Ok(r) => r,
            Err(PduError::BadOpcode(_)) => {
                send(
                    &self.tx,
                    reject(pdu::reject::COMMAND_NOT_SUPPORTED, &pdu.bhs),
                    true,
                )
                .await;
                return Control::Continue;
            }
            Err(_) => {
                send(
                    &self.tx,
                    reject(pdu::reject::INVALID_PDU_FIELD, &pdu.bhs),
                    true,
                )
                .await;
                return Control::Continue;
            }
        };
        match req {
            Request::Login(_) | Request::Snack => {
                send(
                    &self.tx,
                    reject(pdu::reject::PROTOCOL_ERROR, &pdu.bhs),
                    true,
                )
                .await;
                Control::Continue
            }
            Request::Nop(n) => {
                if !self.accept(n.cmdsn, n.immediate) {
                    return Control::Continue;
                }
                self.nop(n).await;
                Control::Continue
            }
            Request::Scsi(cmd) => {
                if self.session.discovery {
                    send(
                        &self.tx,
                        reject(pdu::reject::PROTOCOL_ERROR, &pdu.bhs),
                        true,
                    )
                    .await;
                    return Control::Continue;
                }
                if !self.accept(cmd.cmdsn, cmd.immediate) {
                    return Control::Continue;
                }
                self.command(cmd, &pdu).await;
                Control::Continue
            }
            Request::TaskMgmt(t) => {
                if !self.accept(t.cmdsn, t.immediate) {
                    return Control::Continue;
                }
                self.task_mgmt(t).await
            }
            Request::Text(t) => {
                if !self.accept(t.cmdsn, t.immediate) {
                    return Control::Continue;
                }
                self.text(t).await;
                Control::Continue
            }
            Request::DataOut(d) => {
                self.data_out(d).await;
                Control::Continue
            }
            Request::Logout(l) => {
                if !self.accept(l.cmdsn, l.immediate) {
                    return Control::Continue;
                }
                self.logout(l).await
            }
        }
    }

    fn accept(&self, cmdsn: u32, immediate: bool) -> bool {
        match self.session.check_cmdsn(cmdsn, immediate) {
            CmdSnCheck::Accept => true,
            CmdSnCheck::Drop => {
                tracing::debug!(cmdsn, "command outside the CmdSN window dropped");
                false
            }
        }
    }

    async fn nop(&mut self, n: NopOut) {
        if n.itt == RESERVED_TAG {
            // A ping answer (TTT set) or a bare CmdSN update: nothing to send.
            return;
        }
        let mut r = Pdu::new(op::NOP_IN);
        r.bhs[8..16].copy_from_slice(&n.lun.to_be_bytes());
        r.set_itt(n.itt);
        r.set_u32(20, RESERVED_TAG);
        let max = self.params.initiator_mrdsl as usize;
        r.data = n.data.slice(..n.data.len().min(max));
        send(&self.tx, r, true).await;
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    async fn command(&mut self, cmd: ScsiCommand, pdu: &Pdu) {
        // The task enters the task set in arrival order, before its Data-Out comes in.
        let ticket = self
            .session
            .luns
            .get(&lun_number(cmd.lun))
            .map(|lu| lu.task_set().enter(TaskAttr::from_iscsi(cmd.attr)));
        if !cmd.write || cmd.edtl == 0 {
            if !cmd.immediate_data.is_empty() && !cmd.write {
                send(
                    &self.tx,
                    reject(pdu::reject::PROTOCOL_ERROR, &pdu.bhs),
                    true,
                )
                .await;
                return;
            }
            self.execute(cmd, Bytes::new(), 0, ticket);
            return;
        }
        let imm = cmd.immediate_data.len() as u32;
        if (imm > 0 && !self.params.immediate_data)
            || imm > cmd.edtl
            || imm > self.params.first_burst
            || self.writes.contains_key(&cmd.itt)
        {
            send(
                &self.tx,
                reject(pdu::reject::PROTOCOL_ERROR, &pdu.bhs),
                true,
            )
            .await;
            return;
        }
        if cmd.edtl > MAX_WRITE_BUFFER {
            let meta = Meta::of(&cmd);
            let o = Outcome::check(Sense::invalid_cdb(0), false);
            let tx = self.tx.clone();
            let p = self.params.clone();
            tokio::spawn(async move { respond(&tx, &meta, o, &p, 0, None).await });
            return;
        }
        let mut buf = BytesMut::zeroed(cmd.edtl as usize);
        buf[..imm as usize].copy_from_slice(&cmd.immediate_data);
        let unsolicited_end = if self.params.initial_r2t || cmd.final_bit {
            imm
        } else {
            self.params.first_burst.min(cmd.edtl).max(imm)
        };
        let itt = cmd.itt;
        let mut wt = WriteTask {
            cmd,
            ticket,
            buf,
            received: imm,
            unsolicited_end,
            unsolicited_next: imm,
            unsolicited_datasn: 0,
            request_next: unsolicited_end,
            r2ts: Vec::new(),
            r2tsn: 0,
        };
        if wt.received == wt.cmd.edtl {
            let data = wt.buf.freeze();
            self.execute(wt.cmd, data, 0, wt.ticket);
            return;
        }
        self.issue_r2ts(&mut wt).await;
        self.writes.insert(itt, wt);
    }

    async fn issue_r2ts(&mut self, wt: &mut WriteTask) {
        let max_out = self.params.max_outstanding_r2t.max(1) as usize;
        while wt.r2ts.len() < max_out && wt.request_next < wt.cmd.edtl {
            let len = (wt.cmd.edtl - wt.request_next).min(self.params.max_burst);
            let ttt = self.alloc_ttt();
            let mut r = Pdu::new(op::R2T);
            r.bhs[8..16].copy_from_slice(&wt.cmd.lun.to_be_bytes());
            r.set_itt(wt.cmd.itt);
            r.set_u32(20, ttt);
            r.set_u32(36, wt.r2tsn);
            r.set_u32(40, wt.request_next);
            r.set_u32(44, len);
            wt.r2ts.push(R2t {
                ttt,
                offset: wt.request_next,
                len,
                next_offset: wt.request_next,
                next_datasn: 0,
            });
            wt.r2tsn += 1;
            wt.request_next += len;
            send(&self.tx, r, false).await;
        }
    }

    async fn data_out(&mut self, d: DataOut) {
        let Some(mut wt) = self.writes.remove(&d.itt) else {
            // Data for a task that already ended (failed or aborted): drop it.
            tracing::debug!(itt = d.itt, "Data-Out for an unknown task");
            return;
        };
        let len = d.data.len() as u32;
        let ok = if d.ttt == RESERVED_TAG {
            let ok = d.data_sn == wt.unsolicited_datasn
                && d.offset == wt.unsolicited_next
                && d.offset
                    .checked_add(len)
                    .is_some_and(|e| e <= wt.unsolicited_end);
            if ok {
                wt.unsolicited_datasn += 1;
                wt.unsolicited_next += len;
            }
            ok
        } else {
            match wt.r2ts.iter_mut().find(|r| r.ttt == d.ttt) {
                Some(r) => {
                    let ok = d.data_sn == r.next_datasn
                        && d.offset == r.next_offset
                        && d.offset
                            .checked_add(len)
                            .is_some_and(|e| e <= r.offset + r.len);
                    if ok {
                        r.next_datasn += 1;
                        r.next_offset += len;
                    }
                    ok
                }
                None => false,
            }
        };
        if !ok {
            // ErrorRecoveryLevel 0 cannot recover a data sequence: fail the command.
            tracing::debug!(
                itt = d.itt,
                datasn = d.data_sn,
                offset = d.offset,
                "bad Data-Out"
            );
            let meta = Meta::of(&wt.cmd);
            let o = Outcome::check(Sense::new(key::ABORTED_COMMAND, 0x4b, 0x00), false);
            respond(&self.tx, &meta, o, &self.params, wt.r2tsn, None).await;
            return;
        }
        wt.buf[d.offset as usize..(d.offset + len) as usize].copy_from_slice(&d.data);
        wt.received += len;
        if d.ttt != RESERVED_TAG {
            wt.r2ts.retain(|r| r.next_offset < r.offset + r.len);
        }
        if wt.received >= wt.cmd.edtl && wt.r2ts.is_empty() && wt.request_next >= wt.cmd.edtl {
            let r2ts = wt.r2tsn;
            let data = wt.buf.freeze();
            self.execute(wt.cmd, data, r2ts, wt.ticket);
            return;
        }
        self.issue_r2ts(&mut wt).await;
        self.writes.insert(d.itt, wt);
    }

    /// Runs a command with its complete Data-Out as a task of the session.
    fn execute(&self, cmd: ScsiCommand, data: Bytes, r2ts: u32, ticket: Option<Ticket>) {
        let meta = Meta::of(&cmd);
        let lun = lun_number(cmd.lun);
        let lu = self.session.luns.get(&lun).cloned();
        let luns: Vec<u64> = self.session.luns.keys().copied().collect();
        let nexus = self.session.nexus.clone();
        let tx = self.tx.clone();
        let params = self.params.clone();
        self.session.spawn_task(cmd.itt, lun, async move {
            if let Some(t) = &ticket {
                t.ready().await;
            }
            let cdb = &cmd.cdb[..];
            let mut residual = None;
            let outcome = match &lu {
                // REPORT LUNS answers for the whole target, whichever LUN it is sent to.
                _ if cdb.first() == Some(&scsi::cdb::opcode::REPORT_LUNS) => {
                    scsi::execute_without_lu(cdb, &luns)
                }
                None => scsi::execute_without_lu(cdb, &luns),
                Some(lu) => {
                    let bs = lu.device().block_size();
                    match scsi::data_out_len(cdb, bs) {
                        Some(want) if want != u64::from(cmd.edtl) => {
                            // SCSI and iSCSI disagree on the transfer: a plain write moves only
                            // the whole blocks both agree on and reports the residual; anything
                            // else is refused whole.
                            residual = Some(residual_of(want, u64::from(cmd.edtl)));
                            match scsi::clamp_write(cdb, bs, cmd.edtl) {
                                Some((_, 0)) => Outcome::good(Bytes::new()),
                                Some((clamped, _)) => lu.execute(&nexus, &clamped, data).await,
                                None => {
                                    Outcome::check(Sense::invalid_field_in_iu(), lu.mode().d_sense)
                                }
                            }
                        }
                        _ => {
                            if let Some(want) = scsi::data_in_len(cdb, bs) {
                                if want != u64::from(cmd.edtl) && cmd.edtl == 0 {
                                    residual = Some(residual_of(want, 0));
                                }
                            }
                            lu.execute(&nexus, cdb, data).await
                        }
                    }
                }
            };
            respond(&tx, &meta, outcome, &params, r2ts, residual).await;
            drop(ticket);
        });
    }

    async fn task_mgmt(&mut self, t: TaskMgmt) -> Control {
        let lun = lun_number(t.lun);
        let lu = self.session.luns.get(&lun).cloned();
        let mut close_target = false;
        let response: u8 = match t.function {
            TmfFunction::AbortTask => {
                let local = self.writes.remove(&t.ref_itt).is_some();
                if local || self.session.abort_task(t.ref_itt) {
                    0
                } else {
                    // Completed before the abort arrived: its response is already on the wire.
                    1
                }
            }
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => match &lu {
                None => 2,
                Some(lu) => {
                    self.writes.retain(|_, w| lun_number(w.cmd.lun) != lun);
                    self.session.abort_lun(Some(lun));
                    if t.function == TmfFunction::ClearTaskSet {
                        for s in self.others() {
                            s.abort_lun(Some(lun));
                        }
                        lu.unit_attention_all(UA_COMMANDS_CLEARED);
                    }
                    0
                }
            },
            TmfFunction::LogicalUnitReset => match &lu {
                None => 2,
                Some(lu) => {
                    self.writes.retain(|_, w| lun_number(w.cmd.lun) != lun);
                    self.session.abort_lun(Some(lun));
                    for s in self.others() {
                        s.abort_lun(Some(lun));
                    }
                    lu.reset();
                    0
                }
            },
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                self.writes.clear();
                self.session.abort_lun(None);
                for s in self.others() {
                    s.abort_lun(None);
                }
                for lu in self.session.luns.values() {
                    lu.reset();
                }
                close_target = t.function == TmfFunction::TargetColdReset;
                0
            }
            TmfFunction::ClearAca => 5,
            TmfFunction::TaskReassign => 4,
            TmfFunction::Other(_) => 255,
        };
        let mut r = Pdu::new(op::TASK_MGMT_RSP);
        r.bhs[2] = response;
        r.set_itt(t.itt);
        send(&self.tx, r, true).await;
        if close_target {
            // A cold reset ends every session of the target, this one included.
            for s in self.others() {
                s.close();
            }
            self.session.close();
            return Control::Close;
        }
        Control::Continue
    }

    /// Other sessions logged in to the same target.
    fn others(&self) -> Vec<Arc<Session>> {
        self.shared
            .sessions
            .of_target(self.session.target_name())
            .into_iter()
            .filter(|s| !Arc::ptr_eq(s, &self.session))
            .collect()
    }

    async fn text(&mut self, t: TextRequest) {
        let mrdsl = self.params.initiator_mrdsl as usize;
        let body = if t.ttt != RESERVED_TAG {
            self.text_rest.remove(&t.ttt).unwrap_or_default()
        } else {
            let pairs = match parse_pairs(&t.data) {
                Ok(p) => p,
                Err(_) => {
                    let mut bhs = [0u8; pdu::BHS_LEN];
                    bhs[0] = op::TEXT;
                    bhs[16..20].copy_from_slice(&t.itt.to_be_bytes());
                    send(&self.tx, reject(pdu::reject::INVALID_PDU_FIELD, &bhs), true).await;
                    return;
                }
            };
            let mut out: Vec<(String, String)> = Vec::new();
            for (k, v) in pairs {
                if k == "SendTargets" {
                    out.extend(self.send_targets(&v).await);
                } else {
                    let o = negotiate(
                        &mut self.params,
                        &self.shared.limits,
                        &k,
                        &v,
                        self.session.discovery,
                    );
                    if o != KeyOutcome::Accepted {
                        out.push((k, o.to_string()));
                    }
                }
            }
            Bytes::from(encode_pairs(&out))
        };
        let mut r = Pdu::new(op::TEXT_RSP);
        r.set_itt(t.itt);
        if body.len() > mrdsl {
            let ttt = self.alloc_ttt();
            self.text_rest.insert(ttt, body.slice(mrdsl..));
            r.bhs[1] = 0x40; // C: more to come
            r.set_u32(20, ttt);
            r.data = body.slice(..mrdsl);
        } else {
            r.set_u32(20, RESERVED_TAG);
            r.data = body;
        }
        send(&self.tx, r, true).await;
    }

    async fn send_targets(&self, which: &str) -> Vec<(String, String)> {
        let names = if self.session.discovery && which == "All" {
            match self.shared.registry.target_names().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "target registry unavailable for SendTargets");
                    Vec::new()
                }
            }
        } else if which.is_empty() || which == "All" {
            vec![self.session.target_name().to_string()]
        } else {
            vec![which.to_string()]
        };
        let addr = match self.local {
            SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let initiator = &self.session.nexus.initiator;
        let mut out = Vec::new();
        for name in names {
            let Ok(Some(t)) = self.shared.registry.lookup(&name).await else {
                continue;
            };
            if !t.allows(initiator) {
                continue;
            }
            out.push(("TargetName".to_string(), t.iqn.clone()));
            out.push((
                "TargetAddress".to_string(),
                format!("{addr},{}", self.shared.opts.portal_group_tag),
            ));
        }
        out
    }

    async fn logout(&mut self, l: LogoutRequest) -> Control {
        let (response, close_self, close_session) = match l.reason {
            0 => (0u8, true, true),
            1 if l.cid == self.cid => (0, true, false),
            1 => (1, false, false),
            _ => (2, false, false),
        };
        let mut r = Pdu::new(op::LOGOUT_RSP);
        r.bhs[2] = response;
        r.set_itt(l.itt);
        r.set_u16(40, self.session.params.default_time2wait as u16);
        r.set_u16(42, self.session.params.default_time2retain as u16);
        send(&self.tx, r, true).await;
        if close_session {
            self.session.close();
        }
        if close_self {
            Control::Close
        } else {
            Control::Continue
        }
    }
}

/// What a response needs to know about its command.
struct Meta {
    itt: u32,
    lun: u64,
    edtl: u32,
    read: bool,
}

impl Meta {
    fn of(cmd: &ScsiCommand) -> Self {
        Self {
            itt: cmd.itt,
            lun: cmd.lun,
            edtl: cmd.edtl,
            read: cmd.read,
        }
    }
}

/// (overflow, amount) when the command wanted `want` bytes but EDTL was `edtl`.
fn residual_of(want: u64, edtl: u64) -> (bool, u32) {
    if want > edtl {
        (true, (want - edtl).min(u64::from(u32::MAX)) as u32)
    } else {
        (false, (edtl - want).min(u64::from(u32::MAX)) as u32)
    }
}

/// Sends Data-In and status for a finished command.
async fn respond(
    tx: &Tx,
    m: &Meta,
    o: Outcome,
    params: &Params,
    r2ts: u32,
    residual: Option<(bool, u32)>,
) {
    let edtl = m.edtl as usize;
    let mut data = o.data;
    let mut res = residual;
    if res.is_none() {
        if data.len() > edtl {
            res = Some((true, (data.len() - edtl) as u32));
        } else if m.read && data.len() < edtl {
            res = Some((false, (edtl - data.len()) as u32));
        }
    }
    if data.len() > edtl {
        data.truncate(edtl);
    }
    let res_flags = match res {
        Some((true, n)) if n > 0 => 0x04,
        Some((false, n)) if n > 0 => 0x02,
        _ => 0,
    };
    let res_count = res.map(|(_, n)| n).unwrap_or(0);
    let collapse = o.status == status::GOOD && !data.is_empty();
    let seg = (params.initiator_mrdsl.min(params.max_burst) as usize).max(512);
    let burst = params.max_burst as usize;
    let mut datasn = 0u32;
    let mut offset = 0usize;
    while offset < data.len() {
        let n = seg.min(data.len() - offset);
        let last = offset + n == data.len();
        let end_of_burst = last || (offset + n).checked_rem(burst) == Some(0);
        let mut p = Pdu::new(op::DATA_IN);
        p.bhs[1] = if end_of_burst { 0x80 } else { 0 };
        p.bhs[8..16].copy_from_slice(&m.lun.to_be_bytes());
        p.set_itt(m.itt);
        p.set_u32(20, RESERVED_TAG);
        p.set_u32(36, datasn);
        p.set_u32(40, offset as u32);
        p.data = data.slice(offset..offset + n);
        let status_here = last && collapse;
        if status_here {
            p.bhs[1] |= 0x01 | res_flags;
            p.bhs[3] = o.status;
            p.set_u32(44, res_count);
        }
        send(tx, p, status_here).await;
        datasn += 1;
        offset += n;
    }
    if collapse {
        return;
    }
    let mut r = Pdu::new(op::SCSI_RSP);
    r.bhs[1] = 0x80 | res_flags;
    r.bhs[3] = o.status;
    r.set_itt(m.itt);
    r.set_u32(36, if m.read { datasn } else { r2ts });
    r.set_u32(44, res_count);
    if let Some(sense) = o.sense {
        let mut d = Vec::with_capacity(2 + sense.len());
        d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
        d.extend_from_slice(&sense);
        r.data = Bytes::from(d);
    }
    send(tx, r, true).await;
}
