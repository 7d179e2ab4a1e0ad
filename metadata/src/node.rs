//! The raft task: the one owner of the [`RawNode`], its store and the state machine.
//!
//! Everything else talks to it through its inbox ([`Msg`]) and watches what it publishes
//! ([`NodeInfo`], the applied [`ClusterMap`]). Each turn of its loop takes a tick or a batch of
//! inbox messages, then handles every pending `Ready` in the order raft-rs documents:
//!
//! 1. send the leader's messages (a leader may send before persisting, raft thesis 10.2.1);
//! 2. install a snapshot received from the leader;
//! 3. apply committed entries, in order, answering the proposers waiting for them;
//! 4. append entries and the hard state, and flush (fsync) when `must_sync`;
//! 5. only then send the messages that depend on that (votes, append responses);
//! 6. `advance`, then handle the light ready: new commit index, its messages and entries.
//!
//! After that it takes a snapshot if `snapshot_every` entries were applied since the last one or
//! if raft asked the store for one it could not give. Any failure to write the store or to decode
//! a committed entry ends the task with an error: the replica stops rather than diverge.

use crate::config::MetaConfig;
use crate::error::MetaError;
use crate::state::{Proposal, State};
use crate::storage::RaftStore;
use crate::transport::Transport;
use cairn_proto::msg::{MetaCommand, MetaRead, MetaResponse, MetaResult};
use cairn_proto::rpc::RpcClient;
use cairn_proto::{ClusterMap, NodeId};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
    MessageType, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole, Storage as _};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// Inbox messages handled per loop turn before the `Ready` is processed.
const BATCH: usize = 256;
/// Depth of the raft task's inbox.
pub(crate) const INBOX_DEPTH: usize = 4096;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, MetaError>>;

pub(crate) enum Msg {
    /// A message from another replica, with its address when it sent one.
    Raft {
        msg: Box<Message>,
        from_addr: Option<String>,
    },
    Propose {
        cmd: MetaCommand,
        reply: Reply<MetaResult>,
    },
    Member {
        change: MemberChange,
        reply: Reply<MetaResult>,
    },
    /// A linearizable read (ReadIndex) of the map or of other replicated state.
    Read {
        query: ReadKind,
        reply: Reply<MetaResponse>,
    },
    Unreachable(NodeId),
    SnapshotStatus {
        to: NodeId,
        ok: bool,
    },
}

/// What a linearizable read returns.
pub(crate) enum ReadKind {
    Map,
    State(MetaRead),
}

type PendingRead = (ReadKind, Reply<MetaResponse>);

pub(crate) enum MemberChange {
    Add { id: NodeId, addr: String },
    Remove { id: NodeId },
}

/// A replica's raft state, published after every turn of the raft loop.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct NodeInfo {
    pub id: NodeId,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// First index still in the log (the one after the latest snapshot).
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// Metadata members as applied here: raft id → RPC address.
    pub members: BTreeMap<NodeId, String>,
    /// This replica applied its own removal; it no longer takes part in raft.
    pub removed: bool,
    /// Appends, heartbeats and snapshots received from leaders (to observe that a removed replica
    /// stops being contacted).
    pub leader_messages: u64,
}

impl NodeInfo {
    pub fn leader_addr(&self) -> Option<String> {
        self.leader.and_then(|l| self.members.get(&l).cloned())
    }
}

struct Pending {
    term: u64,
    conf_change: bool,
    reply: Reply<MetaResult>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

pub(crate) struct Node {
    id: NodeId,
    tick: Duration,
    snapshot_every: u64,
    raw: RawNode<RaftStore>,
    state: State,
    applied: u64,
    transport: Transport,
    /// Proposals awaiting their entry, by log index.
    pending: BTreeMap<u64, Pending>,
    /// Reads waiting for a leader that has committed in its term.
    reads_deferred: Vec<PendingRead>,
    /// Reads waiting for their ReadIndex, by context: every read that arrived before one
    /// `read_index` call shares it (one heartbeat round confirms them all, as in etcd).
    reads_pending: HashMap<Vec<u8>, Vec<PendingRead>>,
    /// Reads whose index is known, waiting for it to be applied.
    reads_waiting: Vec<(u64, PendingRead)>,
    next_read: u64,
    removed: bool,
    leader_messages: u64,
    info_tx: watch::Sender<NodeInfo>,
    map_tx: watch::Sender<Arc<ClusterMap>>,
    /// The applied map changed since it was last published.
    map_dirty: bool,
    /// Answers to proposers, sent once the state they reflect is published, so a caller that got
    /// an answer never reads an older map or raft state from this replica.
    answers: Vec<(Reply<MetaResult>, Result<MetaResult, MetaError>)>,
}

/// What [`Node::new`] hands back besides the node: its inbox and what it publishes.
pub(crate) struct NodeChannels {
    pub inbox: mpsc::Sender<Msg>,
    pub inbox_rx: mpsc::Receiver<Msg>,
    pub info: watch::Receiver<NodeInfo>,
    pub map: watch::Receiver<Arc<ClusterMap>>,
}

impl Node {
    /// Build the raft node over `store`, bootstrapping a new cluster from `cfg.peers` when the
    /// store is empty and `cfg.join` is off.
    pub fn new(
        cfg: &MetaConfig,
        mut store: RaftStore,
        self_addr: String,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Node, NodeChannels), MetaError> {
        if !store.is_initialized() && !cfg.join {
            let state = State::bootstrap(&cfg.peers);
            store.bootstrap(cfg.peers.keys().copied().collect(), state.encode())?;
            tracing::info!(id = cfg.id, peers = ?cfg.peers, "bootstrapped a new metadata cluster");
        }
        let state = if store.snapshot_meta().index > 0 {
            State::decode(&store.snapshot_data()?)?
        } else {
            // Joining: nothing until the leader's snapshot arrives.
            State::bootstrap(&BTreeMap::new())
        };
        let applied = store.snapshot_meta().index;
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // A leader cut off from the quorum steps down, and a partitioned replica cannot
            // disrupt the cluster with term bumps when it comes back.
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, store, &crate::logger::raft_logger())?;
        let (inbox, inbox_rx) = mpsc::channel(INBOX_DEPTH);
        let (info_tx, info) = watch::channel(NodeInfo::default());
        let (map_tx, map) = watch::channel(Arc::new(state.map.clone()));
        let transport = Transport::new(self_addr, RpcClient::new(), inbox.clone(), shutdown);
        let mut node = Node {
            id: cfg.id,
            tick: cfg.tick(),
            snapshot_every: cfg.snapshot_every,
            raw,
            state,
            applied,
            transport,
            pending: BTreeMap::new(),
            reads_deferred: Vec::new(),
            reads_pending: HashMap::new(),
            reads_waiting: Vec::new(),
            next_read: 0,
            removed: false,
            leader_messages: 0,
            info_tx,
            map_tx,
            map_dirty: false,
            answers: Vec::new(),
        };
        // A replica whose removal is in its snapshot stays out (raft ids are never reused).
        node.removed = node.raw.store().snapshot_meta().index > 0
            && !node.state.map.meta_members.contains_key(&node.id);
        node.publish();
        Ok((
            node,
            NodeChannels {
                inbox,
                inbox_rx,
                info,
                map,
            },
        ))
    }

    /// Drive raft until `shutdown` or a fatal error.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Msg>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), MetaError> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Replay what was committed but is not in the snapshot before serving anything.
        self.on_ready()?;
        self.publish();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = ticker.tick() => {
                    if !self.removed {
                        self.raw.tick();
                    }
                }
                m = inbox.recv() => match m {
                    Some(m) => self.handle(m),
                    None => break,
                },
            }
            for _ in 0..BATCH {
                match inbox.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            self.issue_deferred_reads();
            self.on_ready()?;
            self.maybe_snapshot()?;
            self.publish();
        }
        Ok(())
    }

    fn is_leader(&self) -> bool {
        !self.removed && self.raw.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> MetaError {
        let leader = match self.raw.raft.leader_id {
            0 => None,
            l if self.removed && l == self.id => None,
            l => Some(l),
        };
        MetaError::NotLeader {
            leader,
            addr: leader.and_then(|l| self.state.map.meta_members.get(&l).cloned()),
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Raft { msg, from_addr } => {
                if self.removed {
                    return;
                }
                if let Some(addr) = from_addr {
                    self.transport
                        .learn(msg.from, addr, &self.state.map.meta_members);
                }
                if matches!(
                    msg.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
                ) {
                    self.leader_messages += 1;
                }
                match self.raw.step(*msg) {
                    Ok(()) => {}
                    Err(raft::Error::StepPeerNotFound) => {}
                    Err(e) => tracing::debug!(error = %e, "raft step failed"),
                }
            }
            Msg::Propose { cmd, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let data = Proposal {
                    at_ms: now_ms(),
                    cmd,
                }
                .encode();
                let r = self.raw.propose(Vec::new(), data);
                self.track(r, false, reply);
            }
            Msg::Member { change, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                match self.conf_change(change) {
                    Ok(cc) => {
                        let r = self.raw.propose_conf_change(Vec::new(), cc);
                        self.track(r, true, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Msg::Read { query, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.reads_deferred.push((query, reply));
            }
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::SnapshotStatus { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    /// Check a membership change against the applied members and build its conf change.
    fn conf_change(&self, change: MemberChange) -> Result<ConfChangeV2, MetaError> {
        if self.raw.raft.has_pending_conf() {
            return Err(MetaError::Dropped {
                reason: "a membership change is still being applied",
            });
        }
        let members = &self.state.map.meta_members;
        let mut single = ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match change {
            MemberChange::Add { id, addr } => {
                if id == 0 || addr.is_empty() {
                    return Err(MetaError::invalid(
                        "a new member needs a non-zero id and an address",
                    ));
                }
                if members.contains_key(&id) {
                    return Err(MetaError::Exists {
                        kind: "member",
                        name: id.to_string(),
                    });
                }
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = id;
                cc.context = addr.into_bytes().into();
            }
            MemberChange::Remove { id } => {
                if !members.contains_key(&id) {
                    return Err(MetaError::NotFound {
                        kind: "member",
                        name: id.to_string(),
                    });
                }
                if members.len() == 1 {
                    return Err(MetaError::invalid("cannot remove the last member"));
                }
                single.set_change_type(ConfChangeType::RemoveNode);
                single.node_id = id;
            }
        }
        cc.mut_changes().push(single);
        Ok(cc)
    }

    /// Remember a proposal by the index raft gave it, to answer when that index is applied.
    fn track(&mut self, r: raft::Result<()>, conf_change: bool, reply: Reply<MetaResult>) {
        match r {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                self.pending.insert(
                    index,
                    Pending {
                        term,
                        conf_change,
                        reply,
                    },
                );
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(MetaError::Dropped {
                    reason: "raft dropped the proposal (leadership transfer or removal)",
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn issue_deferred_reads(&mut self) {
        if self.reads_deferred.is_empty() {
            return;
        }
        if !self.is_leader() {
            for (_, r) in std::mem::take(&mut self.reads_deferred) {
                let _ = r.send(Err(self.not_leader()));
            }
            return;
        }
        // raft-rs ignores ReadIndex until the leader has committed an entry of its own term.
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        self.next_read += 1;
        let ctx = self.next_read.to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        self.reads_pending
            .insert(ctx, std::mem::take(&mut self.reads_deferred));
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(reads) = self.reads_pending.remove(&rs.request_ctx) {
                self.reads_waiting
                    .extend(reads.into_iter().map(|r| (rs.index, r)));
            }
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let mut i = 0;
        while i < self.reads_waiting.len() {
            if self.reads_waiting[i].0 <= applied {
                let (_, (query, reply)) = self.reads_waiting.swap_remove(i);
                let answer = match query {
                    ReadKind::Map => Ok(MetaResponse::Map(self.state.map.clone())),
                    ReadKind::State(q) => self.state.read(&q),
                };
                let _ = reply.send(answer);
            } else {
                i += 1;
            }
        }
    }

    fn fail_reads_unless_leader(&mut self) {
        if self.is_leader() {
            return;
        }
        for (_, reads) in std::mem::take(&mut self.reads_pending) {
            for (_, r) in reads {
                let _ = r.send(Err(self.not_leader()));
            }
        }
        for (_, (_, r)) in std::mem::take(&mut self.reads_waiting) {
            let _ = r.send(Err(self.not_leader()));
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs, &self.state.map.meta_members);
        }
    }

    fn on_ready(&mut self) -> Result<(), MetaError> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            // A leader that steps down cannot confirm its pending reads any more.
            let role_changed = rd.ss().is_some();
            // 1. A leader's messages go out before its entries are persisted.
            self.send(rd.take_messages());
            // 2. A snapshot from the leader replaces the state machine.
            if !rd.snapshot().is_empty() {
                self.install_snapshot(rd.snapshot())?;
            }
            // 3. Committed entries, in order.
            self.apply_entries(rd.take_committed_entries())?;
            self.on_read_states(rd.take_read_states());
            // 4. New entries and the hard state, durable before anyone hears of them.
            let store = self.raw.mut_store();
            store.append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs.clone())?;
            }
            if rd.must_sync() {
                store.flush()?;
            }
            // 5. Messages that promise what was just persisted (votes, append responses).
            self.send(rd.take_persisted_messages());
            // 6. Advance, then the light ready.
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit)?;
            }
            self.send(light.take_messages());
            self.apply_entries(light.take_committed_entries())?;
            self.raw.advance_apply();
            self.publish();
            self.answer_reads();
            if role_changed || self.removed {
                self.fail_reads_unless_leader();
            }
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), MetaError> {
        let meta = snap.get_metadata();
        let state = State::decode(&snap.data).map_err(|e| MetaError::BadEntry {
            index: meta.index,
            detail: format!("snapshot image: {e}"),
        })?;
        self.raw.mut_store().apply_snapshot(snap)?;
        tracing::info!(
            id = self.id,
            index = meta.index,
            term = meta.term,
            "installed snapshot"
        );
        self.state = state;
        self.applied = meta.index;
        let later = self.pending.split_off(&(meta.index + 1));
        for (_, p) in std::mem::replace(&mut self.pending, later) {
            self.answers.push((
                p.reply,
                Err(MetaError::Dropped {
                    reason: "a snapshot replaced the log before the proposal applied",
                }),
            ));
        }
        self.transport.prune(&self.state.map.meta_members);
        self.map_dirty = true;
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), MetaError> {
        if entries.is_empty() {
            return Ok(());
        }
        let epoch = self.state.map.epoch;
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => {
                    let p = Proposal::decode(&e.data).map_err(|detail| MetaError::BadEntry {
                        index: e.index,
                        detail,
                    })?;
                    Some(self.state.apply(&p.cmd, p.at_ms))
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    Some(self.apply_conf_change(&e)?)
                }
            };
            self.applied = e.index;
            self.resolve(&e, result);
            if self.removed {
                // Nothing more will be applied here; later proposals are the new leader's now.
                for (_, p) in std::mem::take(&mut self.pending) {
                    self.answers.push((
                        p.reply,
                        Err(MetaError::Dropped {
                            reason: "this replica was removed from the cluster",
                        }),
                    ));
                }
            }
        }
        if self.state.map.epoch != epoch {
            self.map_dirty = true;
        }
        Ok(())
    }

    /// Apply a conf change entry. The outer error is fatal (the entry does not decode); the inner
    /// one is raft refusing the change, which every replica does alike.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<Result<MetaResult, MetaError>, MetaError> {
        let bad = |err: protobuf::ProtobufError| MetaError::BadEntry {
            index: e.index,
            detail: err.to_string(),
        };
        let cc = if e.get_entry_type() == EntryType::EntryConfChange {
            let v1 = ConfChange::parse_from_bytes(&e.data).map_err(bad)?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2.context = v1.context;
            v2
        } else {
            ConfChangeV2::parse_from_bytes(&e.data).map_err(bad)?
        };
        if let Err(err) = self.raw.apply_conf_change(&cc) {
            tracing::warn!(index = e.index, error = %err, "membership change refused");
            return Ok(Err(MetaError::invalid(format!(
                "membership change refused: {err}"
            ))));
        }
        let addr = String::from_utf8_lossy(&cc.context).into_owned();
        for ch in cc.get_changes() {
            match ch.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    self.state.add_member(ch.node_id, addr.clone());
                }
                ConfChangeType::RemoveNode => {
                    self.state.remove_member(ch.node_id);
                    if ch.node_id == self.id {
                        tracing::info!(id = self.id, "this replica was removed from the cluster");
                        self.removed = true;
                    }
                }
            }
        }
        self.transport.prune(&self.state.map.meta_members);
        tracing::info!(id = self.id, index = e.index, members = ?self.state.map.meta_members, "membership changed");
        Ok(Ok(MetaResult::Done))
    }

    /// Answer the proposer of this entry, and drop proposals whose index was passed over.
    fn resolve(&mut self, e: &Entry, mut result: Option<Result<MetaResult, MetaError>>) {
        let later = self.pending.split_off(&(e.index + 1));
        let done = std::mem::replace(&mut self.pending, later);
        for (index, p) in done {
            let answer = if index != e.index || p.term != e.term {
                Err(MetaError::Dropped {
                    reason: "leadership changed before the proposal committed",
                })
            } else if p.conf_change && e.get_entry_type() == EntryType::EntryNormal {
                // raft-rs turns a conf change it cannot take now into an empty entry.
                Err(MetaError::Dropped {
                    reason: "a membership change is still being applied",
                })
            } else {
                result.take().unwrap_or(Err(MetaError::Dropped {
                    reason: "the proposal was replaced by an empty entry",
                }))
            };
            self.answers.push((p.reply, answer));
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), MetaError> {
        let wanted = self.raw.store().take_snapshot_wanted();
        let last = self.raw.store().snapshot_meta().index;
        if self.applied <= last || !(wanted || self.applied - last >= self.snapshot_every) {
            return Ok(());
        }
        let mut meta = SnapshotMetadata {
            index: self.applied,
            term: self.raw.store().term(self.applied)?,
            ..Default::default()
        };
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let data = self.state.encode();
        let store = self.raw.mut_store();
        store.compact_to(meta, &data)?;
        store.flush()?;
        tracing::debug!(
            id = self.id,
            index = self.applied,
            "snapshot taken; log compacted"
        );
        Ok(())
    }

    /// Publish the applied map and the raft state, then send the answers that depend on them.
    fn publish(&mut self) {
        if std::mem::take(&mut self.map_dirty) {
            self.map_tx.send_replace(Arc::new(self.state.map.clone()));
        }
        let store = self.raw.store();
        let leader = match self.raw.raft.leader_id {
            0 => None,
            l if self.removed && l == self.id => None,
            l => Some(l),
        };
        let info = NodeInfo {
            id: self.id,
            leader,
            is_leader: self.is_leader(),
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied,
            first_index: store.first_index().unwrap_or_default(),
            last_index: self.raw.raft.raft_log.last_index(),
            snapshot_index: store.snapshot_meta().index,
            members: self.state.map.meta_members.clone(),
            removed: self.removed,
            leader_messages: self.leader_messages,
        };
        self.info_tx.send_if_modified(|cur| {
            if *cur == info {
                false
            } else {
                *cur = info;
                true
            }
        });
        for (reply, answer) in self.answers.drain(..) {
            let _ = reply.send(answer);
        }
    }
}

/// How long a request waits for the raft task's answer; below `MetaClient`'s per-try timeout, so
/// the client sees our answer rather than its own timeout.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// A cheap handle on the raft task for the RPC handler and the leader's duties.
#[derive(Clone)]
pub(crate) struct NodeRef {
    inbox: mpsc::Sender<Msg>,
    info: watch::Receiver<NodeInfo>,
    map: watch::Receiver<Arc<ClusterMap>>,
}

impl NodeRef {
    pub fn new(ch: &NodeChannels) -> NodeRef {
        NodeRef {
            inbox: ch.inbox.clone(),
            info: ch.info.clone(),
            map: ch.map.clone(),
        }
    }

    pub fn info(&self) -> NodeInfo {
        self.info.borrow().clone()
    }

    /// The map as applied on this replica (not linearizable).
    pub fn local_map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    /// The error a follower answers, pointing at the leader it knows.
    pub fn not_leader(&self) -> MetaError {
        let info = self.info.borrow();
        let leader = info.leader.filter(|_| !info.removed);
        MetaError::NotLeader {
            leader,
            addr: leader.and_then(|l| info.members.get(&l).cloned()),
        }
    }

    /// Hand a raft message to the raft task; dropped when its inbox is full (raft retransmits).
    pub fn deliver(&self, msg: Message, from_addr: Option<String>) -> Result<(), MetaError> {
        match self.inbox.try_send(Msg::Raft {
            msg: Box::new(msg),
            from_addr,
        }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(MetaError::ShuttingDown),
        }
    }

    async fn ask<T>(
        &self,
        what: &'static str,
        make: impl FnOnce(Reply<T>) -> Msg,
    ) -> Result<T, MetaError> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(make(tx))
            .await
            .map_err(|_| MetaError::ShuttingDown)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(MetaError::ShuttingDown),
            Err(_) => Err(MetaError::Timeout { what }),
        }
    }

    /// Propose a command and wait until it is applied here (on the leader).
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaResult, MetaError> {
        crate::state::validate(&cmd)?;
        self.ask("the command to commit", |reply| Msg::Propose { cmd, reply })
            .await
    }

    pub async fn change_members(&self, change: MemberChange) -> Result<MetaResult, MetaError> {
        self.ask("the membership change to commit", |reply| Msg::Member {
            change,
            reply,
        })
        .await
    }

    /// The map as of a ReadIndex confirmed by a quorum.
    pub async fn read_map(&self) -> Result<ClusterMap, MetaError> {
        match self.read(ReadKind::Map).await? {
            MetaResponse::Map(m) => Ok(m),
            other => Err(MetaError::invalid(format!("a map read answered {other:?}"))),
        }
    }

    /// A linearizable read of the replicated state.
    pub async fn read(&self, query: ReadKind) -> Result<MetaResponse, MetaError> {
        self.ask("a quorum to confirm the read", |reply| Msg::Read {
            query,
            reply,
        })
        .await
    }
}
