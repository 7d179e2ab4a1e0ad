//! Raft messages between replicas, without ever blocking the raft task.
//!
//! The raft task hands messages to [`Transport::send`], which encodes each one and puts it on the
//! destination's bounded queue; a full queue drops the message (raft retransmits what matters). One
//! sender task per peer drains its queue into [`RpcClient`] calls (`MetaRequest::RaftFrom`, which
//! carries our address so a replica that joined empty can answer), with a bounded number in flight.
//! Failures come back to the raft task as [`Msg::Unreachable`] (and [`Msg::SnapshotStatus`] for
//! snapshots); after a failure the peer is given a short rest before the next attempt, dropping what
//! arrives meanwhile.

use crate::node::Msg;
use cairn_proto::msg::{MetaRequest, Request};
use cairn_proto::rpc::RpcClient;
use cairn_proto::NodeId;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

/// Messages queued per peer before new ones are dropped.
const QUEUE_DEPTH: usize = 1024;
/// Calls in flight per peer.
const MAX_IN_FLIGHT: usize = 32;
/// How long one message may take to be accepted by the peer.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// Rest after a failed send before trying the peer again.
const REST_AFTER_FAILURE: Duration = Duration::from_millis(200);

struct Outgoing {
    bytes: Vec<u8>,
    snapshot: bool,
}

struct Peer {
    addr: String,
    tx: mpsc::Sender<Outgoing>,
}

pub(crate) struct Transport {
    self_addr: String,
    rpc: RpcClient,
    peers: HashMap<NodeId, Peer>,
    /// Addresses of senders that are not (yet) in our member list, e.g. the leader as seen by a
    /// replica that joined empty.
    learned: HashMap<NodeId, String>,
    events: mpsc::Sender<Msg>,
    shutdown: watch::Receiver<bool>,
}

impl Transport {
    pub fn new(
        self_addr: String,
        rpc: RpcClient,
        events: mpsc::Sender<Msg>,
        shutdown: watch::Receiver<bool>,
    ) -> Transport {
        Transport {
            self_addr,
            rpc,
            peers: HashMap::new(),
            learned: HashMap::new(),
            events,
            shutdown,
        }
    }

    /// Remember where a sender that is not a member can be reached.
    pub fn learn(&mut self, id: NodeId, addr: String, members: &BTreeMap<NodeId, String>) {
        if !members.contains_key(&id) {
            self.learned.insert(id, addr);
        }
    }

    /// Drop queues and learned addresses of replicas that are members no more.
    pub fn prune(&mut self, members: &BTreeMap<NodeId, String>) {
        self.learned.retain(|id, _| !members.contains_key(id));
        let learned = &self.learned;
        self.peers
            .retain(|id, _| members.contains_key(id) || learned.contains_key(id));
    }

    pub fn send(&mut self, msgs: Vec<Message>, members: &BTreeMap<NodeId, String>) {
        for m in msgs {
            let to = m.to;
            let Some(addr) = members.get(&to).or_else(|| self.learned.get(&to)) else {
                tracing::debug!(to, "no address for raft peer; dropping message");
                let _ = self.events.try_send(Msg::Unreachable(to));
                continue;
            };
            let bytes = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(to, error = %e, "raft message does not encode");
                    continue;
                }
            };
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if self.peers.get(&to).is_none_or(|p| p.addr != *addr) {
                let peer = self.spawn_peer(to, addr.clone());
                self.peers.insert(to, peer);
            }
            let peer = &self.peers[&to];
            if let Err(e) = peer.tx.try_send(Outgoing { bytes, snapshot }) {
                tracing::debug!(to, "raft queue full or closed; dropping message");
                let (mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) = e;
                if o.snapshot {
                    let _ = self.events.try_send(Msg::SnapshotStatus { to, ok: false });
                }
            }
        }
    }

    fn spawn_peer(&self, to: NodeId, addr: String) -> Peer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let sender = PeerSender {
            to,
            addr: addr.clone(),
            self_addr: self.self_addr.clone(),
            rpc: self.rpc.clone(),
            events: self.events.clone(),
            resting_until: Arc::new(Mutex::new(None)),
        };
        tokio::spawn(sender.run(rx, self.shutdown.clone()));
        Peer { addr, tx }
    }
}

#[derive(Clone)]
struct PeerSender {
    to: NodeId,
    addr: String,
    self_addr: String,
    rpc: RpcClient,
    events: mpsc::Sender<Msg>,
    resting_until: Arc<Mutex<Option<Instant>>>,
}

impl PeerSender {
    async fn run(self, mut rx: mpsc::Receiver<Outgoing>, mut shutdown: watch::Receiver<bool>) {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let out = tokio::select! {
                o = rx.recv() => match o { Some(o) => o, None => return },
                _ = shutdown.changed() => return,
            };
            if self.resting() {
                self.failed(out.snapshot, false);
                continue;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let req = Request::Meta(MetaRequest::RaftFrom {
                    addr: me.self_addr.clone(),
                    msg: out.bytes,
                });
                match me.rpc.call(&me.addr, req, SEND_TIMEOUT).await {
                    Ok(_) => {
                        if out.snapshot {
                            let _ = me.events.try_send(Msg::SnapshotStatus {
                                to: me.to,
                                ok: true,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::debug!(to = me.to, addr = %me.addr, error = %e, "raft send failed");
                        me.failed(out.snapshot, true);
                    }
                }
                drop(permit);
            });
        }
    }

    fn resting(&self) -> bool {
        let mut r = self.resting_until.lock().expect("rest lock");
        match *r {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *r = None;
                false
            }
            None => false,
        }
    }

    fn failed(&self, snapshot: bool, start_rest: bool) {
        if start_rest {
            *self.resting_until.lock().expect("rest lock") =
                Some(Instant::now() + REST_AFTER_FAILURE);
        }
        let _ = self.events.try_send(Msg::Unreachable(self.to));
        if snapshot {
            let _ = self.events.try_send(Msg::SnapshotStatus {
                to: self.to,
                ok: false,
            });
        }
    }
}
