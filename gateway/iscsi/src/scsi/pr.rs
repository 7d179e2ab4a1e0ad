//! Persistent reservations (SPC-4 §5.14): PERSISTENT RESERVE IN / OUT and conflict checks.
//!
//! The state of one LUN is a [`PrState`]: registrations keyed by I_T nexus, at most one
//! reservation, and a generation counter. Each PR OUT that changes it is saved through a
//! [`ReservationStore`] before the command completes, so a store backed by the metadata service
//! keeps reservations across gateways and restarts.
//!
//! PR OUT parameter list (24 bytes, REGISTER AND MOVE differs, see [`register_and_move`]):
//! ```text
//! 0-7 reservation key   8-15 service action reservation key   16-19 obsolete
//! 20: SPEC_I_PT(0x08) ALL_TG_PT(0x04) APTPL(0x01)
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::sense::Sense;
use super::Nexus;
use crate::error::IscsiError;

/// Reservation types.
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WE_REGISTRANTS_ONLY: u8 = 5;
    pub const EA_REGISTRANTS_ONLY: u8 = 6;
    pub const WE_ALL_REGISTRANTS: u8 = 7;
    pub const EA_ALL_REGISTRANTS: u8 = 8;
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    t == kind::WE_ALL_REGISTRANTS || t == kind::EA_ALL_REGISTRANTS
}

fn registrants_only(t: u8) -> bool {
    matches!(t, 5..=8)
}

/// One registered I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

/// The reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The nexus that reserved (for all-registrants types every registrant is a holder).
    pub holder: Nexus,
    pub kind: u8,
}

/// Persistent reservation state of one LUN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    pub aptpl: bool,
}

/// Where PR state is kept between commands, gateways and restarts.
#[async_trait]
pub trait ReservationStore: Send + Sync {
    async fn load(&self, target: &str, lun: u64) -> Result<Option<PrState>, IscsiError>;
    async fn save(&self, target: &str, lun: u64, state: &PrState) -> Result<(), IscsiError>;
}

/// A [`ReservationStore`] that lives as long as the process.
#[derive(Default)]
pub struct InMemoryReservationStore {
    states: Mutex<HashMap<(String, u64), PrState>>,
}

#[async_trait]
impl ReservationStore for InMemoryReservationStore {
    async fn load(&self, target: &str, lun: u64) -> Result<Option<PrState>, IscsiError> {
        Ok(self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(target.to_string(), lun))
            .cloned())
    }
    async fn save(&self, target: &str, lun: u64, state: &PrState) -> Result<(), IscsiError> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((target.to_string(), lun), state.clone());
        Ok(())
    }
}

/// Access class of a command for conflict checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Always allowed (INQUIRY, REPORT LUNS, PR IN/OUT ...).
    Any,
    Read,
    Write,
}

/// Outcome of a PR OUT: unit attentions to post to other nexuses.
pub type Attentions = Vec<(Nexus, Sense)>;

const UA_RESERVATIONS_PREEMPTED: Sense = Sense::new(super::sense::key::UNIT_ATTENTION, 0x2a, 0x03);
const UA_RESERVATIONS_RELEASED: Sense = Sense::new(super::sense::key::UNIT_ATTENTION, 0x2a, 0x04);
const UA_REGISTRATIONS_PREEMPTED: Sense = Sense::new(super::sense::key::UNIT_ATTENTION, 0x2a, 0x05);

/// Why a PR OUT failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Check(s)
    }
}

impl PrState {
    pub fn key_of(&self, n: &Nexus) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| &r.nexus == n)
            .map(|r| r.key)
    }

    pub fn is_holder(&self, n: &Nexus) -> bool {
        match &self.reservation {
            Some(r) if all_registrants(r.kind) => self.key_of(n).is_some(),
            Some(r) => &r.holder == n,
            None => false,
        }
    }

    /// Whether `n` may run a command of class `access` (SPC-4 table 66).
    pub fn conflicts(&self, n: &Nexus, access: Access) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        if access == Access::Any || self.is_holder(n) {
            return false;
        }
        let registered = self.key_of(n).is_some();
        if registrants_only(res.kind) && registered {
            return false;
        }
        match res.kind {
            kind::WRITE_EXCLUSIVE | kind::WE_REGISTRANTS_ONLY | kind::WE_ALL_REGISTRANTS => {
                access == Access::Write
            }
            _ => true,
        }
    }

    fn remove_nexus(&mut self, n: &Nexus, attn: &mut Attentions) {
        self.registrations.retain(|r| &r.nexus != n);
        let release = match &self.reservation {
            Some(r) if all_registrants(r.kind) => self.registrations.is_empty(),
            Some(r) => &r.holder == n,
            None => false,
        };
        if release {
            let kind = self.reservation.take().map(|r| r.kind).unwrap_or(0);
            if registrants_only(kind) {
                for r in &self.registrations {
                    attn.push((r.nexus.clone(), UA_RESERVATIONS_RELEASED));
                }
            }
        }
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Runs PERSISTENT RESERVE OUT. `cdb` is validated here; `params` is the parameter list.
pub fn reserve_out(
    st: &mut PrState,
    n: &Nexus,
    cdb: &[u8],
    params: &[u8],
) -> Result<Attentions, PrError> {
    let sa = cdb[1] & 0x1f;
    let scope = cdb[2] >> 4;
    let rtype = cdb[2] & 0x0f;
    let plen = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]) as usize;
    if sa > 7 {
        return Err(Sense::invalid_cdb(1).into());
    }
    if sa == 7 {
        return register_and_move(st, n, rtype, &params[..plen.min(params.len())]);
    }
    if plen != 24 || params.len() < 24 {
        return Err(Sense::param_list_length().into());
    }
    let key = be64(&params[0..8]);
    let sa_key = be64(&params[8..16]);
    let flags = params[20];
    if flags & 0x08 != 0 {
        // SPEC_I_PT: registering other nexuses is not supported.
        return Err(Sense::invalid_param(20).into());
    }
    let mut attn = Attentions::new();
    let mine = st.key_of(n);
    match sa {
        // REGISTER / REGISTER AND IGNORE EXISTING KEY
        0 | 6 => {
            match mine {
                None => {
                    if sa == 0 && key != 0 {
                        return Err(PrError::Conflict);
                    }
                    if sa_key != 0 {
                        st.registrations.push(Registration {
                            nexus: n.clone(),
                            key: sa_key,
                        });
                    }
                }
                Some(k) => {
                    if sa == 0 && k != key {
                        return Err(PrError::Conflict);
                    }
                    if sa_key == 0 {
                        st.remove_nexus(n, &mut attn);
                    } else if let Some(r) = st.registrations.iter_mut().find(|r| &r.nexus == n) {
                        r.key = sa_key;
                    }
                }
            }
            st.aptpl = flags & 0x01 != 0;
            st.generation = st.generation.wrapping_add(1);
        }
        // RESERVE
        1 => {
            if mine != Some(key) {
                return Err(PrError::Conflict);
            }
            if scope != 0 {
                return Err(Sense::invalid_cdb(2).into());
            }
            if !valid_type(rtype) {
                return Err(Sense::invalid_cdb(2).into());
            }
            match &st.reservation {
                Some(r) if st.is_holder(n) => {
                    if r.kind != rtype {
                        return Err(PrError::Conflict);
                    }
                }
                Some(_) => return Err(PrError::Conflict),
                None => {
                    st.reservation = Some(Reservation {
                        holder: n.clone(),
                        kind: rtype,
                    })
                }
            }
        }
        // RELEASE
        2 => {
            if mine != Some(key) {
                return Err(PrError::Conflict);
            }
            let Some(r) = st.reservation.clone() else {
                return Ok(attn);
            };
            if !st.is_holder(n) {
                return Ok(attn);
            }
            if r.kind != rtype || scope != 0 {
                return Err(Sense::new(super::sense::key::ILLEGAL_REQUEST, 0x26, 0x04).into());
            }
            st.reservation = None;
            if registrants_only(r.kind) {
                for reg in st.registrations.iter().filter(|reg| &reg.nexus != n) {
                    attn.push((reg.nexus.clone(), UA_RESERVATIONS_RELEASED));
                }
            }
        }
        // CLEAR
        3 => {
            if mine != Some(key) {
                return Err(PrError::Conflict);
            }
            for reg in st.registrations.iter().filter(|reg| &reg.nexus != n) {
                attn.push((reg.nexus.clone(), UA_RESERVATIONS_PREEMPTED));
            }
            st.registrations.clear();
            st.reservation = None;
            st.generation = st.generation.wrapping_add(1);
        }
        // PREEMPT / PREEMPT AND ABORT
        4 | 5 => {
            if mine != Some(key) {
                return Err(PrError::Conflict);
            }
            preempt(st, n, sa_key, scope, rtype, &mut attn)?;
            st.generation = st.generation.wrapping_add(1);
        }
        _ => return Err(Sense::invalid_cdb(1).into()),
    }
    Ok(attn)
}

fn preempt(
    st: &mut PrState,
    n: &Nexus,
    sa_key: u64,
    scope: u8,
    rtype: u8,
    attn: &mut Attentions,
) -> Result<(), PrError> {
    let drop_key = |st: &mut PrState, attn: &mut Attentions, k: u64| {
        for reg in st
            .registrations
            .iter()
            .filter(|r| r.key == k && &r.nexus != n)
        {
            attn.push((reg.nexus.clone(), UA_REGISTRATIONS_PREEMPTED));
        }
        st.registrations.retain(|r| r.key != k || &r.nexus == n);
    };
    match st.reservation.clone() {
        None => {
            if sa_key == 0 {
                return Err(Sense::invalid_param(8).into());
            }
            drop_key(st, attn, sa_key);
        }
        Some(r) if all_registrants(r.kind) => {
            if sa_key == 0 {
                if !valid_type(rtype) || scope != 0 {
                    return Err(Sense::invalid_cdb(2).into());
                }
                for reg in st.registrations.iter().filter(|reg| &reg.nexus != n) {
                    attn.push((reg.nexus.clone(), UA_REGISTRATIONS_PREEMPTED));
                }
                st.registrations.retain(|reg| &reg.nexus == n);
                st.reservation = Some(Reservation {
                    holder: n.clone(),
                    kind: rtype,
                });
            } else {
                drop_key(st, attn, sa_key);
                if st.registrations.is_empty() {
                    st.reservation = None;
                }
            }
        }
        Some(r) => {
            let holder_key = st.key_of(&r.holder);
            if holder_key == Some(sa_key) {
                if !valid_type(rtype) || scope != 0 {
                    return Err(Sense::invalid_cdb(2).into());
                }
                drop_key(st, attn, sa_key);
                if r.holder != *n {
                    // The preempted holder also learns that its reservation went away.
                    attn.push((r.holder.clone(), UA_RESERVATIONS_PREEMPTED));
                }
                st.reservation = Some(Reservation {
                    holder: n.clone(),
                    kind: rtype,
                });
            } else {
                if sa_key == 0 {
                    return Err(Sense::invalid_param(8).into());
                }
                drop_key(st, attn, sa_key);
            }
        }
    }
    Ok(())
}

/// REGISTER AND MOVE. Parameter list:
/// ```text
/// 0-7 key  8-15 SA key  17: UNREG(0x02) APTPL(0x01)  18-19 relative target port
/// 20-23 TransportID length  24.. TransportID
/// ```
fn register_and_move(
    st: &mut PrState,
    n: &Nexus,
    rtype: u8,
    params: &[u8],
) -> Result<Attentions, PrError> {
    if params.len() < 24 {
        return Err(Sense::param_list_length().into());
    }
    let key = be64(&params[0..8]);
    let sa_key = be64(&params[8..16]);
    let unreg = params[17] & 0x02 != 0;
    let tid_len = u32::from_be_bytes([params[20], params[21], params[22], params[23]]) as usize;
    let Some(mine) = st.key_of(n) else {
        return Err(PrError::Conflict);
    };
    if mine != key {
        return Err(PrError::Conflict);
    }
    let Some(res) = st.reservation.clone() else {
        return Err(PrError::Conflict);
    };
    if all_registrants(res.kind) || res.holder != *n {
        return Err(PrError::Conflict);
    }
    if sa_key == 0 {
        return Err(Sense::invalid_param(8).into());
    }
    if params.len() < 24 + tid_len {
        return Err(Sense::param_list_length().into());
    }
    let dest = parse_transport_id(&params[24..24 + tid_len]).ok_or(Sense::invalid_param(24))?;
    if dest == *n {
        return Err(Sense::invalid_param(24).into());
    }
    match st.registrations.iter_mut().find(|r| r.nexus == dest) {
        Some(r) => r.key = sa_key,
        None => st.registrations.push(Registration {
            nexus: dest.clone(),
            key: sa_key,
        }),
    }
    st.reservation = Some(Reservation {
        holder: dest,
        kind: if valid_type(rtype) { rtype } else { res.kind },
    });
    if unreg {
        st.registrations.retain(|r| &r.nexus != n);
    }
    st.generation = st.generation.wrapping_add(1);
    Ok(Attentions::new())
}

/// Parses an iSCSI TransportID (SPC-4 §7.6.4.6): format 1 carries "name,i,0xISID".
pub fn parse_transport_id(b: &[u8]) -> Option<Nexus> {
    if b.len() < 4 || b[0] & 0x0f != 5 {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let body = b.get(4..4 + len)?;
    let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
    let s = std::str::from_utf8(&body[..end]).ok()?;
    match b[0] >> 6 {
        1 => {
            let (name, isid) = s.split_once(",i,0x")?;
            let v = u64::from_str_radix(isid, 16).ok()?;
            let mut id = [0u8; 6];
            id.copy_from_slice(&v.to_be_bytes()[2..]);
            Some(Nexus::new(name, id))
        }
        _ => None,
    }
}

/// Encodes `n` as an iSCSI TransportID of format 1.
pub fn transport_id(n: &Nexus) -> Vec<u8> {
    let mut body = n.port_name().into_bytes();
    body.push(0);
    while body.len() & 3 != 0 {
        body.push(0);
    }
    let mut v = vec![0x45, 0];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

/// Runs PERSISTENT RESERVE IN and returns the full (untruncated) parameter data.
pub fn reserve_in(st: &PrState, cdb: &[u8]) -> Result<Bytes, Sense> {
    let sa = cdb[1] & 0x1f;
    let mut v = Vec::new();
    v.extend_from_slice(&st.generation.to_be_bytes());
    match sa {
        // READ KEYS
        0 => {
            let keys: Vec<u8> = st
                .registrations
                .iter()
                .flat_map(|r| r.key.to_be_bytes())
                .collect();
            v.extend_from_slice(&(keys.len() as u32).to_be_bytes());
            v.extend_from_slice(&keys);
        }
        // READ RESERVATION
        1 => match &st.reservation {
            Some(r) => {
                v.extend_from_slice(&16u32.to_be_bytes());
                let key = if all_registrants(r.kind) {
                    0
                } else {
                    st.key_of(&r.holder).unwrap_or(0)
                };
                v.extend_from_slice(&key.to_be_bytes());
                v.extend_from_slice(&[0, 0, 0, 0, 0, r.kind & 0x0f, 0, 0]);
            }
            None => v.extend_from_slice(&0u32.to_be_bytes()),
        },
        // REPORT CAPABILITIES
        2 => {
            v.clear();
            // CRH, ATP_C, PTPL_C; TMV with allow commands 001b; all six types.
            let ptpl_a = u8::from(st.aptpl);
            v.extend_from_slice(&[0, 8, 0x10 | 0x04 | 0x01, 0x80 | 0x10 | ptpl_a]);
            v.extend_from_slice(&[0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
        }
        // READ FULL STATUS
        3 => {
            let mut d = Vec::new();
            for r in &st.registrations {
                d.extend_from_slice(&r.key.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0]);
                let holder = st.is_holder(&r.nexus);
                d.push(u8::from(holder));
                d.push(match (&st.reservation, holder) {
                    (Some(res), true) => res.kind & 0x0f,
                    _ => 0,
                });
                d.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
                let tid = transport_id(&r.nexus);
                d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                d.extend_from_slice(&tid);
            }
            v.extend_from_slice(&(d.len() as u32).to_be_bytes());
            v.extend_from_slice(&d);
        }
        _ => return Err(Sense::invalid_cdb(1)),
    }
    Ok(Bytes::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cdb_out(sa: u8, rtype: u8) -> [u8; 10] {
        [0x5f, sa, rtype, 0, 0, 0, 0, 0, 24, 0]
    }
    fn params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }
    fn a() -> Nexus {
        Nexus::new("iqn.a", [0, 1, 2, 3, 4, 5])
    }
    fn b() -> Nexus {
        Nexus::new("iqn.b", [0, 1, 2, 3, 4, 6])
    }

    #[test]
    fn register_reserve_conflict_release() {
        let mut st = PrState::default();
        reserve_out(&mut st, &a(), &cdb_out(0, 0), &params(0, 1)).unwrap();
        reserve_out(&mut st, &b(), &cdb_out(0, 0), &params(0, 2)).unwrap();
        assert_eq!(
            reserve_out(&mut st, &b(), &cdb_out(0, 0), &params(5, 3)),
            Err(PrError::Conflict)
        );
        reserve_out(
            &mut st,
            &a(),
            &cdb_out(1, kind::WRITE_EXCLUSIVE),
            &params(1, 0),
        )
        .unwrap();
        assert!(st.conflicts(&b(), Access::Write));
        assert!(!st.conflicts(&b(), Access::Read));
        assert!(!st.conflicts(&a(), Access::Write));
        assert_eq!(
            reserve_out(
                &mut st,
                &b(),
                &cdb_out(1, kind::WRITE_EXCLUSIVE),
                &params(2, 0)
            ),
            Err(PrError::Conflict)
        );
        // Wrong type on release is an error, release by a non-holder a no-op.
        assert!(matches!(
            reserve_out(
                &mut st,
                &a(),
                &cdb_out(2, kind::EXCLUSIVE_ACCESS),
                &params(1, 0)
            ),
            Err(PrError::Check(_))
        ));
        reserve_out(
            &mut st,
            &b(),
            &cdb_out(2, kind::WRITE_EXCLUSIVE),
            &params(2, 0),
        )
        .unwrap();
        assert!(st.reservation.is_some());
        reserve_out(
            &mut st,
            &a(),
            &cdb_out(2, kind::WRITE_EXCLUSIVE),
            &params(1, 0),
        )
        .unwrap();
        assert!(st.reservation.is_none());
    }

    #[test]
    fn preempt_takes_over_and_registrants_only_access() {
        let mut st = PrState::default();
        reserve_out(&mut st, &a(), &cdb_out(0, 0), &params(0, 1)).unwrap();
        reserve_out(&mut st, &b(), &cdb_out(0, 0), &params(0, 2)).unwrap();
        reserve_out(
            &mut st,
            &a(),
            &cdb_out(1, kind::EA_REGISTRANTS_ONLY),
            &params(1, 0),
        )
        .unwrap();
        assert!(!st.conflicts(&b(), Access::Read));
        let stranger = Nexus::new("iqn.c", [0; 6]);
        assert!(st.conflicts(&stranger, Access::Read));
        let attn = reserve_out(
            &mut st,
            &b(),
            &cdb_out(4, kind::EXCLUSIVE_ACCESS),
            &params(2, 1),
        )
        .unwrap();
        assert_eq!(st.key_of(&a()), None);
        assert!(st.is_holder(&b()));
        assert!(attn.iter().any(|(n, _)| *n == a()));
        let full = reserve_in(&st, &[0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0]).unwrap();
        assert_eq!(
            u32::from_be_bytes([full[4], full[5], full[6], full[7]]) as usize,
            full.len() - 8
        );
    }

    #[test]
    fn transport_id_round_trip() {
        let n = a();
        assert_eq!(parse_transport_id(&transport_id(&n)), Some(n));
    }

    proptest! {
        #[test]
        fn pr_out_never_panics(sa in 0u8..32, t in 0u8..16, plen in 0u32..64,
                               p in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut st = PrState::default();
            let l = plen.to_be_bytes();
            let cdb = [0x5f, sa, t, 0, 0, l[0], l[1], l[2], l[3], 0];
            let _ = reserve_out(&mut st, &a(), &cdb, &p);
            let _ = reserve_in(&st, &[0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0]);
            let _ = parse_transport_id(&p);
        }
    }
}
