//! RPC over TCP: many requests in flight on one connection, matched to responses by request id.
//!
//! Server: [`serve`] accepts connections (capped by a semaphore), reads frames, runs each request
//! on its own task through a [`Handler`], and a writer task sends responses as they finish,
//! coalescing writes. A bad header closes the connection after an error reply; a bad body gets an
//! error reply for its id and the connection goes on.
//!
//! Client: [`RpcClient`] keeps one multiplexed connection per address, reconnecting on demand. A
//! failed connection fails every call in flight on it with [`RpcError::Disconnected`].
//!
//! Payloads are not copied on either side (see [`crate::payload`]): a frame of at least
//! [`payload::SEGMENT_MIN`] bytes is cut off the receive buffer (made room for at once when its
//! header arrives) and decoded with its payloads sliced out of it; frames leave through an
//! [`OutQueue`], small ones coalesced into one buffer, payloads as segments of a vectored write.

use crate::error::{FrameFault, WireError};
use crate::frame::{self, Kind, Parsed};
use crate::msg::{Request, Response};
use crate::payload::{self, Segments};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Most connections a server holds at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most requests of one connection being handled at once; further frames wait to be read.
pub const MAX_IN_FLIGHT: usize = 128;

/// Serves requests. Implemented by the metadata service and the OSD.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request, peer: SocketAddr) -> impl Future<Output = Response> + Send;
}

/// Accept connections until `shutdown` turns true.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(sock, peer, handler, shutdown).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
}

async fn serve_conn<H: Handler>(
    sock: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (mut rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel::<(u64, Response)>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_responses(wr, rx));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let result = 'read: loop {
        loop {
            match frame::parse(&buf) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Frame { header, body, len }) => {
                    if header.kind != Kind::Request {
                        let _ = tx.send((header.id, frame_error(FrameFault::BadKind))).await;
                        break 'read Ok(());
                    }
                    let id = header.id;
                    let req = if body.len() >= payload::SEGMENT_MIN {
                        let frame = buf.split_to(len).freeze();
                        frame::decode_request_bytes(&header, &frame.slice(frame::HEADER_LEN..))
                    } else {
                        let req = frame::decode_request(&header, body);
                        let _ = buf.split_to(len);
                        req
                    };
                    let req = match req {
                        Ok(r) => r,
                        Err(fault) => {
                            if tx.send((id, frame_error(fault))).await.is_err() {
                                break 'read Ok(());
                            }
                            continue;
                        }
                    };
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break 'read Ok(());
                    };
                    let (h, tx) = (handler.clone(), tx.clone());
                    tokio::spawn(async move {
                        let resp = h.handle(req, peer).await;
                        let _ = tx.send((id, resp)).await;
                        drop(permit);
                    });
                }
                Err(e) => match e.id {
                    Some(id) => {
                        let _ = buf.split_to(e.skip);
                        if tx.send((id, frame_error(e.fault))).await.is_err() {
                            break 'read Ok(());
                        }
                    }
                    None => {
                        tracing::warn!(%peer, fault = ?e.fault, "bad frame header; closing");
                        let _ = tx.send((0, frame_error(e.fault))).await;
                        break 'read Ok(());
                    }
                },
            }
        }
        make_room(&mut buf);
        tokio::select! {
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            _ = shutdown.changed() => break Ok(()),
        }
    };
    drop(tx);
    // Let the writer flush what is queued (the error reply above, responses in flight).
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    result
}

fn frame_error(fault: FrameFault) -> Response {
    Response::Error(WireError::Frame { fault })
}

/// Before reading: when the buffer holds the header of a frame larger than the room left, make
/// room for the whole frame now, so a large frame is read into place rather than moved each
/// time the buffer would have doubled.
fn make_room(buf: &mut BytesMut) {
    if let Some(len) = frame::frame_len(buf) {
        if len > buf.len() {
            buf.reserve(len - buf.len());
        }
    }
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(64 * 1024);
    }
}

/// Frames waiting for a socket: small ones (and the envelopes around payloads) coalesced into
/// one buffer, payloads kept as their own segments, all written with vectored writes.
#[derive(Default)]
pub(crate) struct OutQueue {
    parts: VecDeque<Bytes>,
    small: BytesMut,
    bytes: usize,
}

/// Most segments handed to one vectored write.
const MAX_IOV: usize = 64;

impl OutQueue {
    pub(crate) fn push(&mut self, seg: Segments) {
        for p in seg.parts {
            self.bytes += p.len();
            if p.len() < payload::SEGMENT_MIN {
                self.small.extend_from_slice(&p);
            } else {
                if !self.small.is_empty() {
                    self.parts.push_back(self.small.split().freeze());
                }
                self.parts.push_back(p);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes
    }

    pub(crate) async fn write_to<W: AsyncWriteExt + Unpin>(
        &mut self,
        wr: &mut W,
    ) -> std::io::Result<()> {
        if !self.small.is_empty() {
            self.parts.push_back(self.small.split().freeze());
        }
        while !self.parts.is_empty() {
            let n = {
                let iov: Vec<IoSlice<'_>> = self
                    .parts
                    .iter()
                    .take(MAX_IOV)
                    .map(|p| IoSlice::new(p))
                    .collect();
                wr.write_vectored(&iov).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let mut left = n;
            while left > 0 {
                let front = self.parts.front_mut().expect("written bytes were queued");
                let k = left.min(front.len());
                front.advance(k);
                left -= k;
                if front.is_empty() {
                    self.parts.pop_front();
                }
            }
        }
        self.bytes = 0;
        Ok(())
    }
}

async fn write_responses(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<(u64, Response)>,
) {
    let mut out = OutQueue::default();
    while let Some((id, resp)) = rx.recv().await {
        push_response(&mut out, id, &resp);
        while out.len() < 1 << 20 {
            match rx.try_recv() {
                Ok((id, resp)) => push_response(&mut out, id, &resp),
                Err(_) => break,
            }
        }
        if out.write_to(&mut wr).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

fn push_response(out: &mut OutQueue, id: u64, resp: &Response) {
    match frame::encode_response_segments(id, resp) {
        Ok(seg) => out.push(seg),
        Err(e) => {
            tracing::error!(error = %e, "response too large for a frame");
            let err = Response::Error(WireError::Io {
                detail: "response too large".into(),
            });
            let seg =
                frame::encode_response_segments(id, &err).expect("small error response encodes");
            out.push(seg);
        }
    }
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("connection to {addr} lost")]
    Disconnected { addr: String },
    #[error("no answer from {addr} within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    #[error("{0}")]
    Remote(WireError),
    #[error("request does not fit in a frame")]
    TooLarge,
}

impl RpcError {
    /// Errors after which the same request might succeed elsewhere or later.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Connect { .. } | RpcError::Disconnected { .. } | RpcError::Timeout { .. } => {
                true
            }
            RpcError::Remote(e) => e.is_retryable(),
            RpcError::TooLarge => false,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

struct Conn {
    tx: mpsc::Sender<(u64, Request)>,
    pending: Pending,
    dead: Arc<AtomicBool>,
}

/// A pool of multiplexed connections, one per address.
#[derive(Clone, Default)]
pub struct RpcClient {
    conns: Arc<Mutex<HashMap<String, Arc<Conn>>>>,
    next_id: Arc<AtomicU64>,
}

/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl RpcClient {
    pub fn new() -> RpcClient {
        RpcClient::default()
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, RpcError> {
        if let Some(c) = self.conns.lock().expect("conns lock").get(addr) {
            if !c.dead.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Connect {
                addr: addr.into(),
                detail: "timed out".into(),
            })?
            .map_err(|e| RpcError::Connect {
                addr: addr.into(),
                detail: e.to_string(),
            })?;
        let _ = sock.set_nodelay(true);
        let (rd, wr) = sock.into_split();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_requests(wr, rx, pending.clone(), dead.clone()));
        tokio::spawn(read_responses(rd, pending.clone(), dead.clone()));
        let conn = Arc::new(Conn { tx, pending, dead });
        let mut conns = self.conns.lock().expect("conns lock");
        // Another task may have connected meanwhile; either connection works, keep the newest.
        conns.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// Send a request and wait for its response (at most `timeout`). A `Response::Error` comes back
    /// as `Err(RpcError::Remote)`.
    pub async fn call(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let conn = self.conn(addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (otx, orx) = oneshot::channel();
        conn.pending.lock().expect("pending lock").insert(id, otx);
        let disconnected = || RpcError::Disconnected {
            addr: addr.to_string(),
        };
        if conn.tx.send((id, req)).await.is_err() {
            conn.pending.lock().expect("pending lock").remove(&id);
            return Err(disconnected());
        }
        // The reader may have died between our insert and its drain of `pending`.
        if conn.dead.load(Ordering::Acquire) {
            conn.pending.lock().expect("pending lock").remove(&id);
        }
        match tokio::time::timeout(timeout, orx).await {
            Ok(Ok(Response::Error(WireError::Frame {
                fault: FrameFault::TooLarge,
            }))) => Err(RpcError::TooLarge),
            Ok(Ok(Response::Error(e))) => Err(RpcError::Remote(e)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(disconnected()),
            Err(_) => {
                conn.pending.lock().expect("pending lock").remove(&id);
                Err(RpcError::Timeout {
                    addr: addr.to_string(),
                    ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Drop the cached connection to `addr` (e.g. after a peer restarted).
    pub fn forget(&self, addr: &str) {
        self.conns.lock().expect("conns lock").remove(addr);
    }
}

fn fail_all(pending: &Pending, dead: &AtomicBool) {
    dead.store(true, Ordering::Release);
    // Dropping the senders wakes every waiter with a disconnect.
    pending.lock().expect("pending lock").clear();
}

async fn write_requests(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<(u64, Request)>,
    pending: Pending,
    dead: Arc<AtomicBool>,
) {
    let mut out = OutQueue::default();
    while let Some((id, req)) = rx.recv().await {
        let push = |out: &mut OutQueue, id: u64, req: &Request| match frame::encode_request_segments(
            id, req,
        ) {
            Ok(seg) => out.push(seg),
            Err(_) => {
                if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                    let fault = FrameFault::TooLarge;
                    let _ = tx.send(Response::Error(WireError::Frame { fault }));
                }
            }
        };
        push(&mut out, id, &req);
        while out.len() < 1 << 20 {
            match rx.try_recv() {
                Ok((id, req)) => push(&mut out, id, &req),
                Err(_) => break,
            }
        }
        if out.write_to(&mut wr).await.is_err() {
            fail_all(&pending, &dead);
            return;
        }
        if dead.load(Ordering::Acquire) {
            return;
        }
    }
}

async fn read_responses(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    pending: Pending,
    dead: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match frame::parse(&buf) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Frame { header, body, len }) => {
                    let resp = if body.len() >= payload::SEGMENT_MIN {
                        let frame = buf.split_to(len).freeze();
                        frame::decode_response_bytes(&frame.slice(frame::HEADER_LEN..))
                    } else {
                        let r = frame::decode_response(body);
                        let _ = buf.split_to(len);
                        r
                    };
                    let resp = match resp {
                        Ok(r) => r,
                        Err(fault) => Response::Error(WireError::Frame { fault }),
                    };
                    let id = header.id;
                    if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                        let _ = tx.send(resp);
                    }
                }
                Err(e) => {
                    tracing::warn!(fault = ?e.fault, "bad response frame; dropping connection");
                    fail_all(&pending, &dead);
                    return;
                }
            }
        }
        make_room(&mut buf);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                fail_all(&pending, &dead);
                return;
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{MetaRequest, MetaResponse};

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, req: Request, _peer: SocketAddr) -> Response {
            match req {
                Request::Ping => Response::Pong,
                Request::Meta(MetaRequest::Raft(b)) => {
                    // Answer out of order: small messages return later than large ones.
                    if b.len() < 10 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Response::Meta(MetaResponse::Status(crate::msg::MetaStatus {
                        term: b.len() as u64,
                        ..Default::default()
                    }))
                }
                // Send a write's payload back as read data: payloads both ways.
                Request::Osd(crate::msg::OsdRequest::Mutate {
                    op: crate::object::ObjOp::Write { data, .. },
                    ..
                }) => Response::Osd(crate::msg::OsdResponse::Data(data)),
                _ => Response::Error(WireError::invalid("unsupported")),
            }
        }
    }

    async fn start() -> (String, watch::Sender<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (stx, srx) = watch::channel(false);
        tokio::spawn(serve(l, Arc::new(Echo), srx));
        (addr, stx)
    }

    /// Payloads of every size around the segment threshold and the buffer sizes, many in flight
    /// on one connection, come back byte for byte and matched to their calls.
    #[tokio::test]
    async fn payloads_of_every_size_cross_both_ways_intact() {
        use crate::msg::{OsdRequest, OsdResponse};
        use crate::object::ObjOp;
        let (addr, _stop) = start().await;
        let c = Arc::new(RpcClient::new());
        let sizes = [
            0,
            1,
            4096,
            payload::SEGMENT_MIN - 1,
            payload::SEGMENT_MIN,
            64 * 1024 + 7,
            1 << 20,
            (4 << 20) + 3,
        ];
        let mut calls = Vec::new();
        for round in 0..4u8 {
            for (i, &n) in sizes.iter().enumerate() {
                let (c, addr) = (c.clone(), addr.clone());
                let data: bytes::Bytes = (0..n)
                    .map(|k| (k as u8) ^ round.wrapping_mul(31) ^ (i as u8))
                    .collect::<Vec<u8>>()
                    .into();
                calls.push(tokio::spawn(async move {
                    let req = Request::Osd(OsdRequest::Mutate {
                        epoch: 1,
                        pool: crate::ids::PoolId(1),
                        oid: crate::ids::Oid(i as u128),
                        op: ObjOp::Write {
                            offset: 0,
                            data: data.clone(),
                        },
                        fence: None,
                    });
                    let got = c.call(&addr, req, Duration::from_secs(20)).await.unwrap();
                    assert_eq!(got, Response::Osd(OsdResponse::Data(data)), "size {n}");
                }));
            }
        }
        for t in calls {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn many_calls_in_flight_match_their_responses() {
        let (addr, _stop) = start().await;
        let c = RpcClient::new();
        let mut tasks = Vec::new();
        for n in 0..200usize {
            let (c, addr) = (c.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                let r = c
                    .call(
                        &addr,
                        Request::Meta(MetaRequest::Raft(vec![0; n])),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
                match r {
                    Response::Meta(MetaResponse::Status(s)) => assert_eq!(s.term, n as u64),
                    other => panic!("{other:?}"),
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .unwrap()
                .unwrap();
        }
        let e = c
            .call(
                &addr,
                Request::Meta(MetaRequest::GetMap),
                Duration::from_secs(5),
            )
            .await;
        assert!(matches!(
            e,
            Err(RpcError::Remote(WireError::Invalid { .. }))
        ));
    }

    #[tokio::test]
    async fn bad_frames_get_errors_and_other_clients_go_on() {
        let (addr, _stop) = start().await;
        // Garbage header: error reply, then the server closes.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&[0xAB; 40]).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        let Ok(Parsed::Frame { body, .. }) = frame::parse(&got) else {
            panic!("{got:?}")
        };
        assert_eq!(
            frame::decode_response(body).unwrap(),
            Response::Error(WireError::Frame {
                fault: FrameFault::BadMagic
            })
        );
        // Bad body checksum: error for that id, and the connection still serves.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let mut f = BytesMut::new();
        frame::encode_request(&mut f, 77, &Request::Ping).unwrap();
        let mut bad = f.to_vec();
        bad.push(0);
        bad[16..20].copy_from_slice(&(1u32 + f.len() as u32 - 28).to_be_bytes());
        let c = crc32fast::hash(&bad[..24]);
        bad[24..28].copy_from_slice(&c.to_be_bytes());
        s.write_all(&bad).await.unwrap();
        s.write_all(&f).await.unwrap();
        let mut buf = BytesMut::new();
        let mut answers = Vec::new();
        while answers.len() < 2 {
            tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            while let Ok(Parsed::Frame { header, body, len }) = frame::parse(&buf) {
                answers.push((header.id, frame::decode_response(body).unwrap()));
                let _ = buf.split_to(len);
            }
        }
        assert_eq!(
            answers[0],
            (
                77,
                Response::Error(WireError::Frame {
                    fault: FrameFault::BodyChecksum
                })
            )
        );
        assert_eq!(answers[1], (77, Response::Pong));
        // A well-behaved client is unaffected.
        let c = RpcClient::new();
        assert_eq!(
            c.call(&addr, Request::Ping, Duration::from_secs(5))
                .await
                .unwrap(),
            Response::Pong
        );
    }

    #[tokio::test]
    async fn server_death_fails_calls_and_reconnects() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (stx, srx) = watch::channel(false);
        let srv = tokio::spawn(serve(l, Arc::new(Echo), srx));
        let c = RpcClient::new();
        assert_eq!(
            c.call(&addr, Request::Ping, Duration::from_secs(5))
                .await
                .unwrap(),
            Response::Pong
        );
        stx.send(true).unwrap();
        srv.await.unwrap();
        let e = c
            .call(&addr, Request::Ping, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        // Restart on the same port and the client reconnects by itself.
        let l = TcpListener::bind(&addr).await.unwrap();
        let (_stx2, srx2) = watch::channel(false);
        tokio::spawn(serve(l, Arc::new(Echo), srx2));
        let mut ok = false;
        for _ in 0..50 {
            if c.call(&addr, Request::Ping, Duration::from_secs(2))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok);
    }
}
