//! The RPC handler: turns [`MetaRequest`]s into work for the raft task and answers.
//!
//! Followers answer everything but `Status` and raft traffic with `NotLeader` (leader id and
//! address) so `MetaClient` follows the redirect. The leader serves `GetMap` through ReadIndex,
//! proposes commands and waits until they are applied, and keeps OSD heartbeats in memory.

use crate::error::MetaError;
use crate::liveness::Liveness;
use crate::node::{MemberChange, NodeRef, ReadKind};
use cairn_proto::msg::{
    MetaCommand, MetaRequest, MetaResponse, MetaResult, MetaStatus, OsdHeartbeat, Request, Response,
};
use cairn_proto::rpc::{Handler, RpcClient};
use cairn_proto::{ClusterMap, OsdId, WireError};
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the leader waits for a reportedly failed OSD to answer a ping.
const FAILURE_PING_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Service {
    node: NodeRef,
    live: Arc<Mutex<Liveness>>,
    rpc: RpcClient,
    pg_report_ttl: Duration,
}

impl Handler for Service {
    async fn handle(&self, req: Request, _peer: SocketAddr) -> Response {
        match req {
            Request::Ping => Response::Pong,
            Request::Meta(m) => match self.meta(m).await {
                Ok(r) => Response::Meta(r),
                Err(e) => Response::Error(e.into()),
            },
            Request::Osd(_) => {
                Response::Error(WireError::invalid("this is a metadata replica, not an OSD"))
            }
        }
    }
}

impl Service {
    pub fn new(
        node: NodeRef,
        live: Arc<Mutex<Liveness>>,
        rpc: RpcClient,
        pg_report_ttl: Duration,
    ) -> Service {
        Service {
            node,
            live,
            rpc,
            pg_report_ttl,
        }
    }

    async fn meta(&self, req: MetaRequest) -> Result<MetaResponse, MetaError> {
        match req {
            MetaRequest::GetMap => self.get_map().await.map(MetaResponse::Map),
            MetaRequest::Command(cmd) => self.command(cmd).await.map(MetaResponse::Applied),
            MetaRequest::Heartbeat(hb) => self.heartbeat(hb).await,
            MetaRequest::ReportFailure { reporter, failed } => {
                self.report_failure(reporter, failed).await
            }
            MetaRequest::Status => Ok(MetaResponse::Status(self.status())),
            MetaRequest::Read(q) => {
                self.leader_only()?;
                self.node.read(ReadKind::State(q)).await
            }
            MetaRequest::AddMember { id, addr } => {
                self.leader_only()?;
                self.node
                    .change_members(MemberChange::Add { id, addr })
                    .await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::RemoveMember { id } => {
                self.leader_only()?;
                self.node
                    .change_members(MemberChange::Remove { id })
                    .await?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::Raft(bytes) => self.raft(&bytes, None),
            MetaRequest::RaftFrom { addr, msg } => self.raft(&msg, Some(addr)),
        }
    }

    fn leader_only(&self) -> Result<(), MetaError> {
        if self.node.info().is_leader {
            Ok(())
        } else {
            Err(self.node.not_leader())
        }
    }

    fn raft(&self, bytes: &[u8], from_addr: Option<String>) -> Result<MetaResponse, MetaError> {
        let msg = Message::parse_from_bytes(bytes)
            .map_err(|e| MetaError::invalid(format!("raft message does not decode: {e}")))?;
        self.node.deliver(msg, from_addr)?;
        Ok(MetaResponse::Done)
    }

    async fn get_map(&self) -> Result<ClusterMap, MetaError> {
        self.leader_only()?;
        let mut map = self.node.read_map().await?;
        map.meta_leader = Some(self.node.info().id);
        let live = self.live.lock().expect("liveness lock");
        for o in map.osds.values_mut() {
            if let Some((used, capacity)) = live.usage(o.id) {
                o.used = used;
                o.capacity = capacity;
            }
        }
        Ok(map)
    }

    async fn command(&self, cmd: MetaCommand) -> Result<MetaResult, MetaError> {
        self.leader_only()?;
        let result = self.node.propose(cmd).await?;
        if let MetaResult::Osd(id) = result {
            // A booting OSD counts as seen: it must not be marked down before its first heartbeat.
            self.live
                .lock()
                .expect("liveness lock")
                .touch(id, Instant::now());
        }
        Ok(result)
    }

    async fn heartbeat(&self, hb: OsdHeartbeat) -> Result<MetaResponse, MetaError> {
        let info = self.node.info();
        if !info.is_leader {
            return Err(self.node.not_leader());
        }
        let map = self.node.local_map();
        let Some(osd) = map.osds.get(&hb.id) else {
            return Err(MetaError::NotFound {
                kind: "osd",
                name: hb.id.to_string(),
            });
        };
        let mark_up = {
            let mut live = self.live.lock().expect("liveness lock");
            live.enter_term(info.term, Instant::now());
            live.record(&hb, Instant::now());
            !osd.up && live.begin_mark_up(hb.id)
        };
        if mark_up {
            tracing::info!(osd = %hb.id, "down osd heartbeats again; marking it up");
            let r = self
                .node
                .propose(MetaCommand::SetOsdState {
                    id: hb.id,
                    up: Some(true),
                    in_cluster: None,
                })
                .await;
            self.live.lock().expect("liveness lock").end_mark_up(hb.id);
            r?;
        }
        Ok(MetaResponse::HeartbeatAck {
            epoch: self.node.local_map().epoch,
        })
    }

    async fn report_failure(
        &self,
        reporter: OsdId,
        failed: OsdId,
    ) -> Result<MetaResponse, MetaError> {
        self.leader_only()?;
        let map = self.node.local_map();
        for id in [reporter, failed] {
            if !map.osds.contains_key(&id) {
                return Err(MetaError::NotFound {
                    kind: "osd",
                    name: id.to_string(),
                });
            }
        }
        let osd = &map.osds[&failed];
        if !osd.up {
            return Ok(MetaResponse::Done);
        }
        // One OSD's word is not enough: see for ourselves.
        match self
            .rpc
            .call(&osd.addr, Request::Ping, FAILURE_PING_TIMEOUT)
            .await
        {
            Ok(Response::Pong) => {
                tracing::info!(%reporter, %failed, "reported failure, but the osd answers");
                Ok(MetaResponse::Done)
            }
            other => {
                tracing::info!(%reporter, %failed, answer = ?other, "reported osd does not answer; marking it down");
                self.node
                    .propose(MetaCommand::SetOsdState {
                        id: failed,
                        up: Some(false),
                        in_cluster: None,
                    })
                    .await?;
                Ok(MetaResponse::Done)
            }
        }
    }

    fn status(&self) -> MetaStatus {
        let info = self.node.info();
        let pgs = if info.is_leader {
            self.live
                .lock()
                .expect("liveness lock")
                .pg_states(self.pg_report_ttl, Instant::now())
        } else {
            Vec::new()
        };
        MetaStatus {
            id: info.id,
            leader: info.leader,
            term: info.term,
            commit: info.commit,
            applied: info.applied,
            members: info.members.into_iter().collect(),
            pgs,
        }
    }
}
