//! The SCSI logical unit: command dispatch over a [`BlockDevice`].
//!
//! A [`LogicalUnit`] is shared by every session that reaches the LUN. It owns the state SCSI
//! keeps across I_T nexuses: pending unit attentions, the RESERVE(6) holder, persistent
//! reservations (through a [`pr::ReservationStore`]) and the changeable mode parameters.
//! [`LogicalUnit::execute`] runs one CDB: unit attentions first, then reservation conflicts,
//! then a running or failed SANITIZE, then reservation conflicts, then the command family
//! handler in `spc.rs` (primary commands), `sbc.rs` (block commands), `pr.rs` (persistent
//! reservations), `xcopy.rs` (EXTENDED COPY, RECEIVE COPY RESULTS) or `sanitize.rs`.

pub mod cdb;
pub mod pr;
pub mod sanitize;
pub mod sbc;
pub mod sense;
pub mod spc;
pub mod task_set;
pub mod xcopy;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::block::BlockDevice;
use crate::error::IscsiError;
use cdb::opcode as op;
use pr::{Access, PrState, ReservationStore};
use sense::{key, status, Sense};

/// An I_T nexus as SCSI sees it: the initiator port (name + ISID). There is one target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nexus {
    /// Initiator name, lower-cased (iSCSI names compare case-insensitively).
    pub initiator: String,
    pub isid: [u8; 6],
}

impl Nexus {
    pub fn new(initiator: &str, isid: [u8; 6]) -> Self {
        Self {
            initiator: initiator.to_ascii_lowercase(),
            isid,
        }
    }

    /// The iSCSI initiator port name, `name,i,0xISID`.
    pub fn port_name(&self) -> String {
        let mut v = [0u8; 8];
        v[2..].copy_from_slice(&self.isid);
        format!("{},i,0x{:012x}", self.initiator, u64::from_be_bytes(v))
    }
}

/// Result of one command: status, Data-In and sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    pub data: Bytes,
    pub sense: Option<Bytes>,
}

impl Outcome {
    pub fn good(data: Bytes) -> Self {
        Self {
            status: status::GOOD,
            data,
            sense: None,
        }
    }
    pub fn check(s: Sense, descriptor: bool) -> Self {
        Self {
            status: status::CHECK_CONDITION,
            data: Bytes::new(),
            sense: Some(s.encode(descriptor)),
        }
    }
    pub fn with_status(status: u8) -> Self {
        Self {
            status,
            data: Bytes::new(),
            sense: None,
        }
    }
}

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Check(Sense),
    Conflict,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Self {
        Failure::Check(s)
    }
}

impl From<crate::block::BlockError> for Failure {
    fn from(e: crate::block::BlockError) -> Self {
        Failure::Check(Sense::from(&e))
    }
}

/// What a handler returns: Data-In (possibly empty) with GOOD, or a status.
pub type CmdResult = Result<Reply, Failure>;

/// A successful reply: Data-In and the status to send with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub data: Bytes,
    pub status: u8,
}

impl Reply {
    pub fn data(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            status: status::GOOD,
        }
    }
    pub fn empty() -> Self {
        Self::data(Bytes::new())
    }
}

/// Truncates parameter data to an allocation length.
pub fn truncate(mut v: Vec<u8>, alloc: usize) -> Reply {
    v.truncate(alloc);
    Reply::data(v)
}

/// Mode parameters an initiator may change with MODE SELECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSettings {
    /// Caching page WCE: writes may be cached until SYNCHRONIZE CACHE.
    pub wce: bool,
    /// Control page D_SENSE: report sense in descriptor format.
    pub d_sense: bool,
    /// Control page SWP: software write protect.
    pub swp: bool,
}

impl ModeSettings {
    /// The power-on settings for `dev`: WCE is set when the device has a volatile write cache
    /// (writes then go through with FUA only when the initiator asks, or after MODE SELECT
    /// clears WCE).
    pub fn for_device(dev: &dyn BlockDevice) -> Self {
        Self {
            wce: dev.volatile_write_cache(),
            ..Self::default()
        }
    }
}

impl Default for ModeSettings {
    fn default() -> Self {
        Self {
            wce: true,
            d_sense: false,
            swp: false,
        }
    }
}

#[derive(Default)]
struct LuState {
    /// Pending unit attentions per nexus, oldest first.
    ua: HashMap<Nexus, VecDeque<Sense>>,
    /// Nexuses that have sent commands: where target-wide unit attentions go.
    known: HashSet<Nexus>,
    reserved_by: Option<Nexus>,
    mode: ModeSettings,
}

/// Bound on pending unit attentions per nexus; older ones are dropped first.
const MAX_UA: usize = 16;

pub const UA_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x03);
pub const UA_MODE_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x01);
pub const UA_CAPACITY_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09);
/// COMMANDS CLEARED BY ANOTHER INITIATOR.
pub const UA_COMMANDS_CLEARED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2f, 0x00);

/// Static identity of a LUN used in INQUIRY data.
#[derive(Debug, Clone)]
pub struct Identity {
    pub target: String,
    pub lun: u64,
    pub serial: String,
}

/// One SCSI logical unit.
pub struct LogicalUnit {
    pub id: Identity,
    dev: Arc<dyn BlockDevice>,
    store: Arc<dyn ReservationStore>,
    pr: RwLock<PrState>,
    /// Serialises PR OUT so that load-modify-save against the store is atomic.
    pr_out: tokio::sync::Mutex<()>,
    /// Serialises the read-modify-write commands (COMPARE AND WRITE, ORWRITE, atomic writes).
    rmw: tokio::sync::Mutex<()>,
    state: Mutex<LuState>,
    last_size: Mutex<u64>,
    pub(crate) sanitize: sanitize::Sanitizer,
    pub(crate) copies: xcopy::CopyManager,
    tasks: Arc<task_set::TaskSet>,
}

/// How often a logical unit reloads reservations that other gateways may have changed.
pub const PR_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl LogicalUnit {
    /// Opens a LUN, loading its persistent reservation state.
    pub async fn open(
        target: &str,
        lun: u64,
        dev: Arc<dyn BlockDevice>,
        store: Arc<dyn ReservationStore>,
    ) -> Result<Self, IscsiError> {
        let pr = store.load(target, lun).await?.unwrap_or_default();
        let size = dev.size();
        let mode = ModeSettings::for_device(dev.as_ref());
        Ok(Self {
            id: Identity {
                target: target.to_string(),
                lun,
                serial: dev.serial(),
            },
            dev,
            store,
            pr: RwLock::new(pr),
            pr_out: tokio::sync::Mutex::new(()),
            rmw: tokio::sync::Mutex::new(()),
            state: Mutex::new(LuState {
                mode,
                ..LuState::default()
            }),
            last_size: Mutex::new(size),
            sanitize: sanitize::Sanitizer::default(),
            copies: xcopy::CopyManager::default(),
            tasks: Arc::new(task_set::TaskSet::default()),
        })
    }

    /// The task set commands to this LU enter in arrival order (SIMPLE / ORDERED / HEAD OF
    /// QUEUE).
    pub fn task_set(&self) -> &Arc<task_set::TaskSet> {
        &self.tasks
    }

    /// Paces SANITIZE OVERWRITE at `bytes_per_sec` (0: unpaced).
    pub fn set_sanitize_rate(&self, bytes_per_sec: u64) {
        self.sanitize.set_rate(bytes_per_sec);
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LuState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pr_read(&self) -> std::sync::RwLockReadGuard<'_, PrState> {
        self.pr.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mode(&self) -> ModeSettings {
        self.state().mode
    }

    pub(crate) fn set_mode(&self, from: &Nexus, mode: ModeSettings) {
        let mut st = self.state();
        if st.mode != mode {
            st.mode = mode;
            let others: Vec<Nexus> = st.known.iter().filter(|n| *n != from).cloned().collect();
            for n in others {
                push_ua(&mut st, &n, UA_MODE_CHANGED);
            }
        }
    }

    fn descriptor_sense(&self) -> bool {
        self.state().mode.d_sense
    }

    /// Whether writes are refused (device read-only or software write protect).
    pub fn write_protected(&self) -> bool {
        self.dev.read_only() || self.state().mode.swp
    }

    /// Posts `ua` to every nexus that has used this LUN.
    pub fn unit_attention_all(&self, ua: Sense) {
        let mut st = self.state();
        let all: Vec<Nexus> = st.known.iter().cloned().collect();
        for n in all {
            push_ua(&mut st, &n, ua);
        }
    }

    /// LOGICAL UNIT RESET (also part of target resets): drops RESERVE(6), posts a reset UA.
    pub fn reset(&self) {
        let mut st = self.state();
        st.reserved_by = None;
        let all: Vec<Nexus> = st.known.iter().cloned().collect();
        for n in all {
            push_ua(&mut st, &n, UA_RESET);
        }
    }

    /// The I_T nexus went away (logout or connection loss): RESERVE(6) held by it is released.
    pub fn nexus_lost(&self, n: &Nexus) {
        let mut st = self.state();
        if st.reserved_by.as_ref() == Some(n) {
            st.reserved_by = None;
        }
        st.ua.remove(n);
        st.known.remove(n);
        drop(st);
        self.copies.nexus_lost(n);
    }

    fn take_ua(&self, n: &Nexus) -> Option<Sense> {
        let mut st = self.state();
        st.known.insert(n.clone());
        let q = st.ua.get_mut(n)?;
        let s = q.pop_front();
        if q.is_empty() {
            st.ua.remove(n);
        }
        s
    }

    /// Capacity changes reported by the device become a unit attention once per change.
    fn note_capacity(&self) {
        let size = self.dev.size();
        let mut last = self.last_size.lock().unwrap_or_else(|e| e.into_inner());
        if *last != size {
            *last = size;
            drop(last);
            self.unit_attention_all(UA_CAPACITY_CHANGED);
        }
    }

    /// Runs one command for nexus `n` with Data-Out `data`.
    pub async fn execute(&self, n: &Nexus, cdb: &[u8], data: Bytes) -> Outcome {
        let d_sense = self.descriptor_sense();
        if let Err(s) = cdb::check_len(cdb) {
            return Outcome::check(s, d_sense);
        }
        let opc = cdb[0];
        self.note_capacity();
        if !matches!(opc, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
            if let Some(ua) = self.take_ua(n) {
                return Outcome::check(ua, d_sense);
            }
        } else {
            self.state().known.insert(n.clone());
        }
        if opc == op::REQUEST_SENSE {
            let pending = self
                .take_ua(n)
                .or_else(|| self.sanitize.blocking_condition());
            return match spc::request_sense(cdb, pending) {
                Ok(r) => Outcome::good(r.data),
                Err(s) => Outcome::check(s, d_sense),
            };
        }
        if opc != op::INQUIRY {
            if let Some(s) = self.sanitize.blocking_condition() {
                // After a failed sanitize, SANITIZE itself may run (again, or to exit).
                if !(opc == op::SANITIZE && s.key == key::MEDIUM_ERROR) {
                    return Outcome::check(s, d_sense);
                }
            }
        }
        if self.conflicts(n, cdb) {
            return Outcome::with_status(status::RESERVATION_CONFLICT);
        }
        let result = match opc {
            op::RESERVE_6 => self.reserve6(n),
            op::RELEASE_6 => {
                let mut st = self.state();
                if st.reserved_by.as_ref() == Some(n) {
                    st.reserved_by = None;
                }
                Ok(Reply::empty())
            }
            op::PR_IN => {
                // Another gateway may have changed the reservations of this LUN.
                self.refresh_reservations().await;
                pr::reserve_in(&self.pr_read(), cdb)
                    .map(|d| {
                        let alloc = usize::from(cdb::be16(cdb, 7));
                        truncate(d.to_vec(), alloc)
                    })
                    .map_err(Failure::from)
            }
            op::PR_OUT => self.pr_out(n, cdb, &data).await,
            op::SANITIZE => sanitize::execute(self, cdb, &data).await,
            op::EXTENDED_COPY => xcopy::extended_copy(self, n, cdb, &data).await,
            op::RECEIVE_COPY_RESULTS => xcopy::receive_copy_results(self, n, cdb),
            _ => match spc::execute(self, n, cdb, &data).await {
                Some(r) => r,
                None => sbc::execute(self, cdb, data).await,
            },
        };
        match result {
            Ok(r) => Outcome {
                status: r.status,
                data: r.data,
                sense: None,
            },
            Err(Failure::Check(s)) => Outcome::check(s, d_sense),
            Err(Failure::Conflict) => Outcome::with_status(status::RESERVATION_CONFLICT),
        }
    }

    fn reserve6(&self, n: &Nexus) -> CmdResult {
        {
            let pr = self.pr_read();
            if pr.reservation.is_some() || !pr.registrations.is_empty() {
                return Err(Failure::Conflict);
            }
        }
        let mut st = self.state();
        match &st.reserved_by {
            Some(h) if h != n => Err(Failure::Conflict),
            _ => {
                st.reserved_by = Some(n.clone());
                Ok(Reply::empty())
            }
        }
    }

    fn conflicts(&self, n: &Nexus, cdb: &[u8]) -> bool {
        let opc = cdb[0];
        {
            let st = self.state();
            if let Some(h) = &st.reserved_by {
                let exempt = matches!(
                    opc,
                    op::INQUIRY | op::REPORT_LUNS | op::RELEASE_6 | op::PR_IN | op::MAINTENANCE_IN
                );
                if h != n && !exempt {
                    return true;
                }
            }
        }
        let access = access_of(cdb);
        access != Access::Any && self.pr_read().conflicts(n, access)
    }

    /// Reload the reservation state from the store, where every gateway saves its PR OUTs, so
    /// reservations made through another gateway apply here too. Called before PR IN and PR OUT,
    /// and every [`PR_REFRESH`] in the background for the conflict checks of ordinary commands.
    pub async fn refresh_reservations(&self) {
        // Serialized with PR OUT, so a reload that read the store before a PR OUT saved cannot
        // overwrite that PR OUT's newer state afterwards.
        let _guard = self.pr_out.lock().await;
        self.reload_reservations().await;
    }

    async fn reload_reservations(&self) {
        match self.store.load(&self.id.target, self.id.lun).await {
            Ok(Some(fresh)) => {
                let mut cur = self.pr.write().unwrap_or_else(|e| e.into_inner());
                if *cur != fresh {
                    *cur = fresh;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reservation state not refreshed"),
        }
    }

    async fn pr_out(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> CmdResult {
        let _guard = self.pr_out.lock().await;
        self.reload_reservations().await;
        let mut next = self.pr_read().clone();
        let before = next.clone();
        let attn = match pr::reserve_out(&mut next, n, cdb, data) {
            Ok(a) => a,
            Err(pr::PrError::Conflict) => return Err(Failure::Conflict),
            Err(pr::PrError::Check(s)) => return Err(Failure::Check(s)),
        };
        if next != before {
            if let Err(e) = self.store.save(&self.id.target, self.id.lun, &next).await {
                tracing::warn!(error = %e, "persistent reservation store failed");
                return Err(Sense::new(key::NOT_READY, 0x04, 0x00).into());
            }
            *self.pr.write().unwrap_or_else(|e| e.into_inner()) = next;
        }
        let mut st = self.state();
        for (nexus, ua) in attn {
            push_ua(&mut st, &nexus, ua);
        }
        Ok(Reply::empty())
    }

    pub(crate) fn rmw_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.rmw
    }
}

fn push_ua(st: &mut LuState, n: &Nexus, ua: Sense) {
    let q = st.ua.entry(n.clone()).or_default();
    if !q.contains(&ua) {
        if q.len() >= MAX_UA {
            q.pop_front();
        }
        q.push_back(ua);
    }
}

/// The reservation access class of a CDB (SPC-4 table 66, simplified to read/write).
fn access_of(cdb: &[u8]) -> Access {
    match cdb[0] {
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::SERVICE_ACTION_IN_16
        | op::READ_CAPACITY_10 => {
            if cdb[0] == op::SERVICE_ACTION_IN_16
                && cdb[1] & 0x1f == cdb::service_action::READ_CAPACITY_16
                || cdb[0] == op::READ_CAPACITY_10
            {
                Access::Any
            } else {
                Access::Read
            }
        }
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_VERIFY_10
        | op::WRITE_VERIFY_12
        | op::WRITE_VERIFY_16
        | op::WRITE_SAME_10
        | op::WRITE_SAME_16
        | op::WRITE_ATOMIC_16
        | op::ORWRITE_16
        | op::COMPARE_AND_WRITE
        | op::UNMAP
        | op::SANITIZE
        | op::EXTENDED_COPY
        | op::SYNCHRONIZE_CACHE_10
        | op::SYNCHRONIZE_CACHE_16
        | op::MODE_SELECT_6
        | op::MODE_SELECT_10
        | op::START_STOP_UNIT => Access::Write,
        _ => Access::Any,
    }
}

/// Commands addressed to a LUN that does not exist (SPC-4 §8.2): INQUIRY reports a peripheral
/// qualifier of 011b, REPORT LUNS and REQUEST SENSE work, everything else fails with
/// LOGICAL UNIT NOT SUPPORTED.
pub fn execute_without_lu(cdb: &[u8], luns: &[u64]) -> Outcome {
    if let Err(s) = cdb::check_len(cdb) {
        return Outcome::check(s, false);
    }
    let r = match cdb[0] {
        op::INQUIRY => spc::inquiry_no_lu(cdb),
        op::REPORT_LUNS => spc::report_luns(cdb, luns),
        op::REQUEST_SENSE => spc::request_sense(cdb, Some(Sense::lun_not_supported())),
        _ => Err(Sense::lun_not_supported()),
    };
    match r {
        Ok(r) => Outcome::good(r.data),
        Err(s) => Outcome::check(s, false),
    }
}

/// The Data-Out length a block command's CDB implies, for checking it against the iSCSI
/// expected data transfer length. `None` for commands whose Data-Out is a parameter list.
pub fn data_out_len(cdb: &[u8], block_size: u32) -> Option<u64> {
    cdb::check_len(cdb).ok()?;
    let bs = u64::from(block_size);
    match cdb[0] {
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_VERIFY_10
        | op::WRITE_VERIFY_12
        | op::WRITE_VERIFY_16
        | op::ORWRITE_16
        | op::WRITE_ATOMIC_16 => Some(u64::from(cdb::rw(cdb).blocks) * bs),
        op::WRITE_SAME_10 => Some(bs),
        op::WRITE_SAME_16 => Some(if cdb[1] & 0x01 != 0 { 0 } else { bs }),
        _ => None,
    }
}

/// For a WRITE or WRITE AND VERIFY whose Data-Out (`edtl` bytes) is shorter or longer than its
/// CDB says, the CDB rewritten to transfer only the whole blocks both agree on, with that
/// block count. `None` for other commands.
pub fn clamp_write(cdb: &[u8], block_size: u32, edtl: u32) -> Option<(Vec<u8>, u32)> {
    cdb::check_len(cdb).ok()?;
    let bs = block_size.max(1);
    let blocks = cdb::rw(cdb).blocks.min(edtl / bs);
    let mut c = cdb.to_vec();
    match cdb[0] {
        op::WRITE_6 => c[4] = blocks as u8,
        op::WRITE_10 | op::WRITE_VERIFY_10 => {
            c[7..9].copy_from_slice(&(blocks.min(0xffff) as u16).to_be_bytes())
        }
        op::WRITE_12 | op::WRITE_VERIFY_12 => c[6..10].copy_from_slice(&blocks.to_be_bytes()),
        op::WRITE_16 | op::WRITE_VERIFY_16 => c[10..14].copy_from_slice(&blocks.to_be_bytes()),
        _ => return None,
    }
    Some((c, blocks))
}

/// Whether the CDB reads data from the medium to the initiator (for Data-In residuals).
pub fn data_in_len(cdb: &[u8], block_size: u32) -> Option<u64> {
    cdb::check_len(cdb).ok()?;
    match cdb[0] {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => {
            Some(u64::from(cdb::rw(cdb).blocks) * u64::from(block_size))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDevice;
    use crate::scsi::pr::InMemoryReservationStore;

    async fn lu() -> LogicalUnit {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20, 512, "s1"));
        LogicalUnit::open(
            "iqn.t",
            0,
            dev,
            Arc::new(InMemoryReservationStore::default()),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn reserve6_blocks_other_nexus_until_lost() {
        let lu = lu().await;
        let a = Nexus::new("iqn.A", [1; 6]);
        let b = Nexus::new("iqn.b", [2; 6]);
        let reserve = [op::RESERVE_6, 0, 0, 0, 0, 0];
        let tur = [0u8; 6];
        assert_eq!(
            lu.execute(&a, &reserve, Bytes::new()).await.status,
            status::GOOD
        );
        assert_eq!(
            lu.execute(&b, &tur, Bytes::new()).await.status,
            status::RESERVATION_CONFLICT
        );
        lu.nexus_lost(&a);
        assert_eq!(
            lu.execute(&b, &tur, Bytes::new()).await.status,
            status::GOOD
        );
    }

    #[tokio::test]
    async fn reset_posts_unit_attention_once() {
        let lu = lu().await;
        let a = Nexus::new("iqn.a", [1; 6]);
        let tur = [0u8; 6];
        lu.execute(&a, &tur, Bytes::new()).await;
        lu.reset();
        let o = lu.execute(&a, &tur, Bytes::new()).await;
        assert_eq!(o.status, status::CHECK_CONDITION);
        assert_eq!(o.sense.unwrap()[12], 0x29);
        assert_eq!(
            lu.execute(&a, &tur, Bytes::new()).await.status,
            status::GOOD
        );
    }

    #[tokio::test]
    async fn short_and_empty_cdbs_are_rejected() {
        let lu = lu().await;
        let a = Nexus::new("iqn.a", [1; 6]);
        assert_eq!(
            lu.execute(&a, &[], Bytes::new()).await.status,
            status::CHECK_CONDITION
        );
        assert_eq!(
            lu.execute(&a, &[op::READ_16, 0], Bytes::new()).await.status,
            status::CHECK_CONDITION
        );
    }

    #[test]
    fn nexus_port_name() {
        let n = Nexus::new("IQN.X", [0x23, 0x0d, 0, 0, 0, 1]);
        assert_eq!(n.port_name(), "iqn.x,i,0x230d00000001");
    }
}
