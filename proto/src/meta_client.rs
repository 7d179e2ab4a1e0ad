//! A client for the metadata service: finds the leader among the replicas, follows `NotLeader`
//! redirects, and retries transient failures (elections, restarts) until a deadline.

use crate::error::WireError;
use crate::map::ClusterMap;
use crate::msg::{MetaCommand, MetaRequest, MetaResponse, MetaResult, Request, Response};
use crate::rpc::{RpcClient, RpcError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one call keeps retrying through elections and restarts.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
const PER_TRY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct MetaClient {
    rpc: RpcClient,
    addrs: Arc<Mutex<Vec<String>>>,
    /// Index in `addrs` of the replica that last answered as leader.
    leader: Arc<Mutex<usize>>,
    deadline: Duration,
}

impl MetaClient {
    /// `addrs`: the metadata replicas' RPC addresses (any subset that includes a live one).
    pub fn new(rpc: RpcClient, addrs: Vec<String>) -> MetaClient {
        MetaClient {
            rpc,
            addrs: Arc::new(Mutex::new(addrs)),
            leader: Arc::new(Mutex::new(0)),
            deadline: DEFAULT_DEADLINE,
        }
    }

    pub fn with_deadline(mut self, d: Duration) -> MetaClient {
        self.deadline = d;
        self
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    pub fn addrs(&self) -> Vec<String> {
        self.addrs.lock().expect("addrs lock").clone()
    }

    /// Send a request to the leader, following redirects and retrying transient errors.
    pub async fn call(&self, req: MetaRequest) -> Result<MetaResponse, RpcError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let (addr, idx) = {
                let addrs = self.addrs.lock().expect("addrs lock");
                if addrs.is_empty() {
                    return Err(RpcError::Connect {
                        addr: String::new(),
                        detail: "no metadata address".into(),
                    });
                }
                let i = *self.leader.lock().expect("leader lock") % addrs.len();
                (addrs[i].clone(), i)
            };
            let err = match self
                .rpc
                .call(&addr, Request::Meta(req.clone()), PER_TRY)
                .await
            {
                Ok(Response::Meta(r)) => return Ok(r),
                Ok(other) => {
                    return Err(RpcError::Remote(WireError::invalid(format!(
                        "unexpected reply from metadata service: {other:?}"
                    ))))
                }
                Err(e) => e,
            };
            if !err.is_transient() || start.elapsed() >= self.deadline {
                return Err(err);
            }
            let mut redirected = false;
            if let RpcError::Remote(WireError::NotLeader {
                addr: Some(leader_addr),
                ..
            }) = &err
            {
                let mut addrs = self.addrs.lock().expect("addrs lock");
                let i = match addrs.iter().position(|a| a == leader_addr) {
                    Some(i) => i,
                    None => {
                        addrs.push(leader_addr.clone());
                        addrs.len() - 1
                    }
                };
                *self.leader.lock().expect("leader lock") = i;
                redirected = i != idx;
            }
            if !redirected {
                // Unknown leader or unreachable replica: try the next one after a pause.
                let n = self.addrs.lock().expect("addrs lock").len().max(1);
                *self.leader.lock().expect("leader lock") = (idx + 1) % n;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }

    pub async fn get_map(&self) -> Result<ClusterMap, RpcError> {
        match self.call(MetaRequest::GetMap).await? {
            MetaResponse::Map(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn command(&self, cmd: MetaCommand) -> Result<MetaResult, RpcError> {
        match self.call(MetaRequest::Command(cmd)).await? {
            MetaResponse::Applied(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: MetaResponse) -> RpcError {
    RpcError::Remote(WireError::invalid(format!(
        "unexpected metadata reply: {r:?}"
    )))
}
