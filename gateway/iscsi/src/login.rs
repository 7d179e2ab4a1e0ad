//! The login phase (RFC 7143 §6.3, §11.12-13): security negotiation with CHAP, operational
//! parameter negotiation, and session creation, reinstatement or connection addition.
//!
//! Login PDUs carry no digests and at most 8 KiB of text per PDU. Each request is answered
//! with one Login Response; a text spread over several PDUs (C bit) is collected first.
//! Any failure is answered with a Login Response carrying a status class/detail and the
//! connection is then closed by the caller.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::chap;
use crate::error::IscsiError;
use crate::io::{Frame, PduReader};
use crate::pdu::{op, Digests, LoginRequest, Pdu};
use crate::scsi::Nexus;
use crate::server::Shared;
use crate::session::{Session, SessionKey};
use crate::target::{ChapConfig, TargetConfig};
use crate::text::{encode_pairs, negotiate, parse_pairs, KeyOutcome, Params};

/// Largest login data segment accepted (RFC 7143 fixes 8192 during login; allow slack).
const LOGIN_MAX_DATA: usize = 65_536;

/// Login status (class, detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus(pub u8, pub u8);

impl LoginStatus {
    pub const SUCCESS: Self = Self(0, 0);
    pub const INITIATOR_ERROR: Self = Self(2, 0);
    pub const AUTH_FAILED: Self = Self(2, 1);
    pub const FORBIDDEN: Self = Self(2, 2);
    pub const NOT_FOUND: Self = Self(2, 3);
    pub const UNSUPPORTED_VERSION: Self = Self(2, 5);
    pub const TOO_MANY_CONNECTIONS: Self = Self(2, 6);
    pub const MISSING_PARAMETER: Self = Self(2, 7);
    pub const NO_SESSION: Self = Self(2, 0x0a);
    pub const INVALID_REQUEST: Self = Self(2, 0x0b);
    pub const TARGET_ERROR: Self = Self(3, 0);
    pub const UNAVAILABLE: Self = Self(3, 1);
}

/// A connection that completed login.
pub struct LoggedIn {
    pub session: Arc<Session>,
    pub cid: u16,
    /// Parameters of this connection (digests and segment lengths are per connection).
    pub params: Params,
    pub next_statsn: u32,
    pub close: watch::Receiver<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// Nothing negotiated yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    Method,
    /// Challenge sent.
    Challenged {
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

struct State {
    first: LoginRequest,
    initiator: Option<String>,
    discovery: bool,
    target: Option<Arc<TargetConfig>>,
    chap: ChapConfig,
    auth: Auth,
    params: Params,
    resolved: bool,
    sent_tpgt: bool,
    sent_mrdsl: bool,
    statsn: u32,
}

enum Step {
    /// Send this response and keep going.
    Continue(Vec<(String, String)>, bool, u8),
    Fail(LoginStatus),
}

/// Runs the login phase. `Ok(None)` means the login failed (a failure response was sent) or
/// the peer went away.
pub async fn login<R, W>(
    rd: &mut PduReader<R>,
    wr: &mut W,
    shared: &Shared,
) -> Result<Option<LoggedIn>, IscsiError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut st: Option<State> = None;
    let mut pending = BytesMut::new();
    loop {
        let pdu = match rd.next(Digests::default(), LOGIN_MAX_DATA).await? {
            Some(Frame::Pdu(p)) => p,
            Some(Frame::BadDataDigest(_)) | None => return Ok(None),
        };
        if pdu.opcode() != op::LOGIN {
            // Anything but a login request before full feature phase ends the connection.
            let mut r = Pdu::new(op::LOGIN_RSP);
            r.set_itt(pdu.itt());
            set_status(&mut r, LoginStatus::INVALID_REQUEST);
            write(wr, &r).await?;
            return Ok(None);
        }
        let req = LoginRequest::decode(&pdu)?;
        let state = match &mut st {
            Some(s) => s,
            None => {
                if req.version_min > 0 {
                    fail(wr, &req, 0, LoginStatus::UNSUPPORTED_VERSION).await?;
                    return Ok(None);
                }
                st.insert(State {
                    first: req.clone(),
                    initiator: None,
                    discovery: false,
                    target: None,
                    chap: ChapConfig::default(),
                    auth: Auth::Start,
                    params: Params::defaults(&shared.limits),
                    resolved: false,
                    sent_tpgt: false,
                    sent_mrdsl: false,
                    statsn: rand::thread_rng().next_u32() & 0xffff,
                })
            }
        };
        if req.isid != state.first.isid || req.tsih != state.first.tsih {
            fail(wr, &req, state.statsn, LoginStatus::INITIATOR_ERROR).await?;
            return Ok(None);
        }
        pending.extend_from_slice(&req.data);
        if req.cont {
            // Partial text: acknowledge and wait for the rest.
            let r = response(&req, state, false, req.nsg, Bytes::new(), 0);
            write(wr, &r).await?;
            continue;
        }
        let text = pending.split().freeze();
        let step = match parse_pairs(&text) {
            Ok(pairs) => process(shared, state, &req, pairs).await?,
            Err(_) => Step::Fail(LoginStatus::INITIATOR_ERROR),
        };
        match step {
            Step::Fail(status) => {
                tracing::info!(?status, initiator = ?state.initiator, "login rejected");
                fail(wr, &req, state.statsn, status).await?;
                return Ok(None);
            }
            Step::Continue(pairs, transit, nsg) => {
                if transit && nsg == 3 {
                    let done = match finish(shared, state, &req).await? {
                        Ok(done) => done,
                        Err(status) => {
                            fail(wr, &req, state.statsn, status).await?;
                            return Ok(None);
                        }
                    };
                    let mut r = response(
                        &req,
                        state,
                        true,
                        3,
                        Bytes::from(encode_pairs(&pairs)),
                        done.session.tsih,
                    );
                    let (exp, max) = done.session.sn_window();
                    r.set_u32(28, exp);
                    r.set_u32(32, max);
                    write(wr, &r).await?;
                    return Ok(Some(LoggedIn {
                        next_statsn: state.statsn.wrapping_add(1),
                        ..done
                    }));
                }
                let r = response(
                    &req,
                    state,
                    transit,
                    nsg,
                    Bytes::from(encode_pairs(&pairs)),
                    0,
                );
                state.statsn = state.statsn.wrapping_add(1);
                write(wr, &r).await?;
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(wr: &mut W, p: &Pdu) -> Result<(), IscsiError> {
    let mut out = BytesMut::new();
    p.encode(&mut out, Digests::default());
    wr.write_all(&out).await?;
    Ok(())
}

fn set_status(r: &mut Pdu, s: LoginStatus) {
    r.bhs[36] = s.0;
    r.bhs[37] = s.1;
}

fn response(req: &LoginRequest, st: &State, transit: bool, nsg: u8, data: Bytes, tsih: u16) -> Pdu {
    let mut r = Pdu::new(op::LOGIN_RSP);
    r.bhs[1] = (req.csg << 2) | if transit { 0x80 | (nsg & 3) } else { 0 };
    r.bhs[2] = 0; // version max
    r.bhs[3] = 0; // version active
    r.bhs[8..14].copy_from_slice(&req.isid);
    r.set_u16(14, tsih);
    r.set_itt(req.itt);
    r.set_u32(24, st.statsn);
    r.set_u32(28, req.cmdsn);
    r.set_u32(32, req.cmdsn);
    r.data = data;
    r
}

async fn fail<W: AsyncWrite + Unpin>(
    wr: &mut W,
    req: &LoginRequest,
    statsn: u32,
    status: LoginStatus,
) -> Result<(), IscsiError> {
    let mut r = Pdu::new(op::LOGIN_RSP);
    r.bhs[1] = req.csg << 2;
    r.bhs[8..14].copy_from_slice(&req.isid);
    r.set_itt(req.itt);
    r.set_u32(24, statsn);
    r.set_u32(28, req.cmdsn);
    r.set_u32(32, req.cmdsn);
    set_status(&mut r, status);
    write(wr, &r).await
}

fn chap_required(st: &State) -> bool {
    st.chap.initiator.is_some()
}

async fn process(
    shared: &Shared,
    st: &mut State,
    req: &LoginRequest,
    pairs: Vec<(String, String)>,
) -> Result<Step, IscsiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Identity keys first: they decide which target and which authentication apply.
    for (k, v) in &pairs {
        match k.as_str() {
            "InitiatorName" => st.initiator = Some(v.clone()),
            "SessionType" => match v.as_str() {
                "Discovery" => st.discovery = true,
                "Normal" => st.discovery = false,
                _ => return Ok(Step::Fail(LoginStatus(2, 9))),
            },
            "TargetName" if !st.resolved => match shared.registry.lookup(v).await {
                Ok(Some(t)) => st.target = Some(t),
                Ok(None) => return Ok(Step::Fail(LoginStatus::NOT_FOUND)),
                Err(e) => {
                    tracing::warn!(error = %e, "target registry lookup failed");
                    return Ok(Step::Fail(LoginStatus::UNAVAILABLE));
                }
            },
            _ => {}
        }
    }
    if !st.resolved {
        let Some(initiator) = &st.initiator else {
            return Ok(Step::Fail(LoginStatus::MISSING_PARAMETER));
        };
        if st.discovery {
            st.target = None;
            st.chap = match shared.registry.discovery_chap().await {
                Ok(c) => c,
                Err(_) => return Ok(Step::Fail(LoginStatus::UNAVAILABLE)),
            };
        } else {
            let Some(t) = &st.target else {
                return Ok(Step::Fail(LoginStatus::MISSING_PARAMETER));
            };
            if !t.allows(initiator) {
                return Ok(Step::Fail(LoginStatus::FORBIDDEN));
            }
            st.chap = t.chap.clone();
        }
        st.resolved = true;
        if req.csg != 0 && chap_required(st) {
            return Ok(Step::Fail(LoginStatus::AUTH_FAILED));
        }
    }
    if !st.discovery && !st.sent_tpgt {
        st.sent_tpgt = true;
        out.push((
            "TargetPortalGroupTag".into(),
            shared.opts.portal_group_tag.to_string(),
        ));
        if let Some(alias) = st.target.as_ref().and_then(|t| t.alias.clone()) {
            out.push(("TargetAlias".into(), alias));
        }
    }
    let mut chap_keys: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "InitiatorName" | "SessionType" | "TargetName" | "InitiatorAlias" => {}
            "AuthMethod" => {
                if req.csg != 0 {
                    out.push((k, "Irrelevant".into()));
                    continue;
                }
                let offered: Vec<&str> = v.split(',').collect();
                if chap_required(st) {
                    if offered.contains(&"CHAP") {
                        st.auth = Auth::Method;
                        out.push((k, "CHAP".into()));
                    } else {
                        return Ok(Step::Fail(LoginStatus::AUTH_FAILED));
                    }
                } else if offered.contains(&"None") {
                    st.auth = Auth::Done;
                    out.push((k, "None".into()));
                } else {
                    return Ok(Step::Fail(LoginStatus::AUTH_FAILED));
                }
            }
            _ if k.starts_with("CHAP_") => chap_keys.push((k, v)),
            _ => {
                let outcome = negotiate(&mut st.params, &shared.limits, &k, &v, st.discovery);
                if outcome == KeyOutcome::Reject && k.ends_with("Digest") {
                    // No common digest: the connection cannot work.
                    return Ok(Step::Fail(LoginStatus::INITIATOR_ERROR));
                }
                if outcome != KeyOutcome::Accepted {
                    out.push((k, outcome.to_string()));
                }
            }
        }
    }
    if !chap_keys.is_empty() {
        match chap_step(st, &chap_keys) {
            Ok(mut reply) => out.append(&mut reply),
            Err(status) => return Ok(Step::Fail(status)),
        }
    }
    if (req.csg == 1 || (req.transit && req.nsg == 1)) && !st.sent_mrdsl {
        st.sent_mrdsl = true;
        out.push((
            "MaxRecvDataSegmentLength".into(),
            st.params.target_mrdsl.to_string(),
        ));
    }
    // Decide on the stage transition.
    let mut transit = req.transit;
    if req.csg == 0 {
        match st.auth {
            Auth::Done => {}
            Auth::Start if !chap_required(st) => st.auth = Auth::Done,
            // Authentication still in progress: stay in the security stage.
            Auth::Method | Auth::Challenged { .. } => transit = false,
            Auth::Start => {
                if req.transit {
                    return Ok(Step::Fail(LoginStatus::AUTH_FAILED));
                }
            }
        }
    }
    if transit && (req.nsg <= req.csg || req.nsg == 2) {
        return Ok(Step::Fail(LoginStatus::INITIATOR_ERROR));
    }
    Ok(Step::Continue(out, transit, req.nsg))
}

fn chap_step(
    st: &mut State,
    keys: &[(String, String)],
) -> Result<Vec<(String, String)>, LoginStatus> {
    let get = |name: &str| {
        keys.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut out = Vec::new();
    match &st.auth {
        Auth::Method => {
            let algs = get("CHAP_A").ok_or(LoginStatus::AUTH_FAILED)?;
            if !algs.split(',').any(|a| a == "5") {
                return Err(LoginStatus::AUTH_FAILED);
            }
            let mut rng = rand::thread_rng();
            let id = (rng.next_u32() & 0xff) as u8;
            let mut challenge = vec![0u8; 16];
            rng.fill_bytes(&mut challenge);
            out.push(("CHAP_A".into(), "5".into()));
            out.push(("CHAP_I".into(), id.to_string()));
            out.push(("CHAP_C".into(), chap::encode_hex(&challenge)));
            st.auth = Auth::Challenged { id, challenge };
        }
        Auth::Challenged { id, challenge } => {
            let creds = st.chap.initiator.as_ref().ok_or(LoginStatus::AUTH_FAILED)?;
            let name = get("CHAP_N").ok_or(LoginStatus::AUTH_FAILED)?;
            let resp = get("CHAP_R").ok_or(LoginStatus::AUTH_FAILED)?;
            let resp = chap::decode_binary(resp).map_err(|_| LoginStatus::AUTH_FAILED)?;
            let expected = chap::response(*id, creds.secret.as_bytes(), challenge);
            if name != creds.user || !chap::equal(&resp, &expected) {
                return Err(LoginStatus::AUTH_FAILED);
            }
            if let (Some(ti), Some(tc)) = (get("CHAP_I"), get("CHAP_C")) {
                let target = st.chap.target.as_ref().ok_or(LoginStatus::AUTH_FAILED)?;
                let tid: u8 = ti.parse().map_err(|_| LoginStatus::AUTH_FAILED)?;
                let tchal = chap::decode_binary(tc).map_err(|_| LoginStatus::AUTH_FAILED)?;
                if tchal == *challenge || tchal.is_empty() {
                    // A reflected challenge would let an attacker use us as an oracle.
                    return Err(LoginStatus::AUTH_FAILED);
                }
                let r = chap::response(tid, target.secret.as_bytes(), &tchal);
                out.push(("CHAP_N".into(), target.user.clone()));
                out.push(("CHAP_R".into(), chap::encode_hex(&r)));
            }
            st.auth = Auth::Done;
        }
        Auth::Start | Auth::Done => return Err(LoginStatus::AUTH_FAILED),
    }
    Ok(out)
}

/// Creates the session (or joins one) once the initiator moves to full feature phase.
async fn finish(
    shared: &Shared,
    st: &mut State,
    req: &LoginRequest,
) -> Result<Result<LoggedIn, LoginStatus>, IscsiError> {
    if chap_required(st) && st.auth != Auth::Done {
        return Ok(Err(LoginStatus::AUTH_FAILED));
    }
    let initiator = st.initiator.clone().unwrap_or_default();
    let nexus = Nexus::new(&initiator, st.first.isid);
    let cid = st.first.cid;
    if st.discovery {
        let s = Arc::new(Session::new(
            shared.sessions.allocate_tsih(),
            nexus,
            None,
            st.params.clone(),
            Default::default(),
            req.cmdsn,
            shared.opts.command_window,
        ));
        let close = s.add_connection(cid);
        return Ok(Ok(LoggedIn {
            session: s,
            cid,
            params: st.params.clone(),
            next_statsn: st.statsn,
            close,
        }));
    }
    let Some(target) = st.target.clone() else {
        return Ok(Err(LoginStatus::MISSING_PARAMETER));
    };
    if st.first.tsih != 0 {
        // Adding a connection to an existing session.
        let Some(s) = shared.sessions.get(st.first.tsih) else {
            return Ok(Err(LoginStatus::NO_SESSION));
        };
        if s.nexus != nexus || s.target_name() != target.iqn {
            return Ok(Err(LoginStatus::NO_SESSION));
        }
        if s.connection_count() >= s.params.max_connections as usize {
            return Ok(Err(LoginStatus::TOO_MANY_CONNECTIONS));
        }
        let close = s.add_connection(cid);
        let mut params = s.params.clone();
        params.header_digest = st.params.header_digest;
        params.data_digest = st.params.data_digest;
        params.initiator_mrdsl = st.params.initiator_mrdsl;
        return Ok(Ok(LoggedIn {
            session: s,
            cid,
            params,
            next_statsn: st.statsn,
            close,
        }));
    }
    let mut luns = std::collections::BTreeMap::new();
    for (lun, dev) in &target.luns {
        match shared.logical_unit(&target.iqn, *lun, dev).await {
            Ok(lu) => {
                luns.insert(*lun, lu);
            }
            Err(e) => {
                tracing::warn!(error = %e, lun, "cannot open LUN");
                return Ok(Err(LoginStatus::UNAVAILABLE));
            }
        }
    }
    let s = Arc::new(Session::new(
        shared.sessions.allocate_tsih(),
        nexus.clone(),
        Some(Arc::clone(&target)),
        st.params.clone(),
        luns,
        req.cmdsn,
        shared.opts.command_window,
    ));
    let close = s.add_connection(cid);
    if let Some(old) = shared.sessions.insert(
        SessionKey {
            nexus,
            target: target.iqn.clone(),
        },
        Arc::clone(&s),
    ) {
        // Session reinstatement: the old session's connections close and release its tasks.
        tracing::info!(tsih = old.tsih, "reinstating session");
        old.close();
        old.abort_lun(None);
    }
    Ok(Ok(LoggedIn {
        session: s,
        cid,
        params: st.params.clone(),
        next_statsn: st.statsn,
        close,
    }))
}
