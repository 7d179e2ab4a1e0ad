//! Object I/O on one pool: whole and partial reads and writes, attributes, typed fields, listing and
//! on-device queries (fanned out to the primaries and merged here). Large objects stream in
//! `io_chunk` pieces so nothing holds a whole object in memory.

use crate::cluster::Cluster;
use crate::error::{ClientError, Result};
use bytes::{Bytes, BytesMut};
use cairn_proto::map::MoveFence;
use cairn_proto::msg::{OsdRequest, OsdResponse};
use cairn_proto::object::QueryHit;
use cairn_proto::{Filter, ObjOp, ObjectStat, Oid, OsdId, PgId, Pool, Value};
use std::collections::{BTreeMap, HashMap};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Page size of list and query calls.
const PAGE: u32 = 1000;

/// Object operations on one pool.
#[derive(Clone)]
pub struct PoolIo {
    cluster: Cluster,
    pool: Pool,
    /// Carried by every object request (a migrator's copy of a moving file).
    fence: Option<MoveFence>,
}

impl Cluster {
    /// Object I/O on the pool called `name`.
    pub async fn pool_io(&self, name: &str) -> Result<PoolIo> {
        Ok(PoolIo {
            cluster: self.clone(),
            pool: self.pool(name).await?,
            fence: None,
        })
    }
}

fn unexpected(r: OsdResponse) -> ClientError {
    ClientError::Protocol(format!("{r:?}"))
}

impl PoolIo {
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The same pool, every object request carrying `fence` (see [`MoveFence`]): what a
    /// migrator copies a moving file's data with.
    pub fn fenced(&self, fence: MoveFence) -> PoolIo {
        PoolIo {
            fence: Some(fence),
            ..self.clone()
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Apply one mutation; returns the placement-group version it got.
    pub async fn mutate(&self, oid: Oid, op: ObjOp) -> Result<u64> {
        let (pool, fence) = (self.pool.id, self.fence);
        let pg = self.pool.pg_of(oid);
        match self
            .cluster
            .call_primary(pg, |epoch| OsdRequest::Mutate {
                epoch,
                pool,
                oid,
                op: op.clone(),
                fence,
            })
            .await?
        {
            OsdResponse::Mutated { version } => Ok(version),
            r => Err(unexpected(r)),
        }
    }

    /// Replace the whole object with `data` (must fit one frame: use [`PoolIo::put_stream`] for more).
    pub async fn write_full(&self, oid: Oid, data: Bytes) -> Result<u64> {
        self.mutate(oid, ObjOp::WriteFull { data }).await
    }

    /// Write at an offset, creating or extending the object.
    pub async fn write(&self, oid: Oid, offset: u64, data: Bytes) -> Result<u64> {
        let chunk = self.cluster.options().io_chunk;
        let mut last = 0;
        let mut off = 0;
        // Split large writes so each request fits a frame.
        while off < data.len() || (off == 0 && data.is_empty()) {
            let end = (off + chunk).min(data.len());
            last = self
                .mutate(
                    oid,
                    ObjOp::Write {
                        offset: offset + off as u64,
                        data: data.slice(off..end),
                    },
                )
                .await?;
            if data.is_empty() {
                break;
            }
            off = end;
        }
        Ok(last)
    }

    pub async fn truncate(&self, oid: Oid, size: u64) -> Result<u64> {
        self.mutate(oid, ObjOp::Truncate { size }).await
    }

    pub async fn delete(&self, oid: Oid) -> Result<()> {
        self.mutate(oid, ObjOp::Delete).await.map(|_| ())
    }

    pub async fn set_attrs(
        &self,
        oid: Oid,
        set: BTreeMap<String, Bytes>,
        remove: Vec<String>,
    ) -> Result<u64> {
        self.mutate(oid, ObjOp::SetAttrs { set, remove }).await
    }

    /// Make `oid` a typed object of `otype` with these fields.
    pub async fn set_typed(
        &self,
        oid: Oid,
        otype: &str,
        fields: BTreeMap<String, Value>,
    ) -> Result<u64> {
        self.mutate(
            oid,
            ObjOp::SetTyped {
                otype: otype.to_string(),
                fields,
            },
        )
        .await
    }

    pub async fn stat(&self, oid: Oid) -> Result<ObjectStat> {
        let (pool, fence) = (self.pool.id, self.fence);
        match self
            .cluster
            .call_primary(self.pool.pg_of(oid), |epoch| OsdRequest::Stat {
                epoch,
                pool,
                oid,
                fence,
            })
            .await?
        {
            OsdResponse::Stat(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    /// The object's size and the crc32 of its bytes, computed by its primary (no data moves).
    pub async fn digest(&self, oid: Oid) -> Result<(u64, u32)> {
        let (pool, fence) = (self.pool.id, self.fence);
        match self
            .cluster
            .call_primary(self.pool.pg_of(oid), |epoch| OsdRequest::Digest {
                epoch,
                pool,
                oid,
                fence,
            })
            .await?
        {
            OsdResponse::Digest { size, crc32 } => Ok((size, crc32)),
            r => Err(unexpected(r)),
        }
    }

    /// Read up to `len` bytes at `offset` (fewer at the end of the object).
    pub async fn read(&self, oid: Oid, offset: u64, len: u64) -> Result<Bytes> {
        let chunk = self.cluster.options().io_chunk as u64;
        let end = offset.saturating_add(len);
        if end <= offset {
            return Ok(Bytes::new());
        }
        // The usual read is one piece: its bytes (a slice of the frame they came in) are the
        // answer, with no copy.
        let first = self
            .read_piece(oid, offset, (end - offset).min(chunk) as u32)
            .await?;
        let got = first.len() as u64;
        if offset + got >= end || got < (end - offset).min(chunk) {
            return Ok(first);
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        out.extend_from_slice(&first);
        let mut off = offset + got;
        while off < end {
            let n = (end - off).min(chunk);
            let piece = self.read_piece(oid, off, n as u32).await?;
            let got = piece.len() as u64;
            out.extend_from_slice(&piece);
            if got < n {
                break;
            }
            off += got;
        }
        Ok(out.freeze())
    }

    async fn read_piece(&self, oid: Oid, offset: u64, len: u32) -> Result<Bytes> {
        let (pool, fence) = (self.pool.id, self.fence);
        match self
            .cluster
            .call_primary(self.pool.pg_of(oid), |epoch| OsdRequest::Read {
                epoch,
                pool,
                oid,
                offset,
                len,
                fence,
            })
            .await?
        {
            OsdResponse::Data(d) => Ok(d),
            r => Err(unexpected(r)),
        }
    }

    /// Read the whole object.
    pub async fn get(&self, oid: Oid) -> Result<Bytes> {
        let st = self.stat(oid).await?;
        self.read(oid, 0, st.size).await
    }

    /// Store everything `src` yields as the object's new content, streaming in `io_chunk` pieces.
    /// Returns the size written.
    pub async fn put_stream(&self, oid: Oid, mut src: impl AsyncRead + Unpin) -> Result<u64> {
        let chunk = self.cluster.options().io_chunk;
        let mut off = 0u64;
        loop {
            let mut buf = BytesMut::with_capacity(chunk);
            while buf.len() < chunk {
                if src.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            let n = buf.len();
            let data = buf.freeze();
            if off == 0 {
                self.mutate(oid, ObjOp::WriteFull { data }).await?;
            } else if n > 0 {
                self.mutate(oid, ObjOp::Write { offset: off, data }).await?;
            }
            off += n as u64;
            if n < chunk {
                return Ok(off);
            }
        }
    }

    /// Copy bytes `[start, end)` of the object (the whole object by default) into `dst`.
    /// Returns the bytes written.
    pub async fn get_stream(
        &self,
        oid: Oid,
        range: Option<(u64, u64)>,
        mut dst: impl AsyncWrite + Unpin,
    ) -> Result<u64> {
        let size = self.stat(oid).await?.size;
        let (start, end) = match range {
            Some((a, b)) => (a.min(size), b.min(size)),
            None => (0, size),
        };
        let chunk = self.cluster.options().io_chunk as u64;
        let mut off = start;
        while off < end {
            let n = (end - off).min(chunk) as u32;
            let piece = self.read_piece(oid, off, n).await?;
            if piece.is_empty() {
                break;
            }
            dst.write_all(&piece).await?;
            off += piece.len() as u64;
        }
        dst.flush().await?;
        Ok(off - start)
    }

    /// Every object of the pool with its size, in placement-group then id order.
    pub async fn list(&self) -> Result<Vec<(Oid, u64)>> {
        let mut all = Vec::new();
        for pg in self.pool.pgs() {
            all.extend(self.list_pg(pg).await?);
        }
        Ok(all)
    }

    pub async fn list_pg(&self, pg: PgId) -> Result<Vec<(Oid, u64)>> {
        self.list_range(pg, None, Oid(u128::MAX)).await
    }

    /// The objects of one placement group with ids in `(after, last]` (from the first when
    /// `after` is `None`), in id order.
    pub async fn list_range(
        &self,
        pg: PgId,
        after: Option<Oid>,
        last: Oid,
    ) -> Result<Vec<(Oid, u64)>> {
        let mut out = Vec::new();
        let mut after = after;
        loop {
            let r = self
                .cluster
                .call_primary(pg, |epoch| OsdRequest::List {
                    epoch,
                    pg,
                    after,
                    limit: PAGE,
                })
                .await?;
            let OsdResponse::List { objects, more } = r else {
                return Err(unexpected(r));
            };
            let Some(&(tail, _)) = objects.last() else {
                return Ok(out);
            };
            out.extend(objects.into_iter().take_while(|(o, _)| *o <= last));
            if !more || tail >= last {
                return Ok(out);
            }
            after = Some(tail);
        }
    }

    /// `GetExtent(otype)`: every typed object of `otype`.
    pub async fn get_extent(&self, otype: &str) -> Result<Vec<QueryHit>> {
        self.query(otype, &Filter::default()).await
    }

    /// `QueryExtent(otype, filter)`: evaluated on the OSDs (each primary over its placement groups),
    /// merged here in object-id order.
    pub async fn query(&self, otype: &str, filter: &Filter) -> Result<Vec<QueryHit>> {
        filter
            .validate()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let deadline = std::time::Instant::now() + self.cluster.options().op_deadline;
        'attempt: loop {
            let map = self.cluster.map();
            let mut by_osd: HashMap<OsdId, Vec<PgId>> = HashMap::new();
            for pg in self.pool.pgs() {
                match map.pg_primary(pg) {
                    Some(o) => by_osd.entry(o).or_default().push(pg),
                    None => return Err(ClientError::NoPrimary { pg }),
                }
            }
            let calls = by_osd.into_iter().map(|(osd, pgs)| {
                let map = map.clone();
                async move {
                    let mut hits = Vec::new();
                    let mut after = None;
                    loop {
                        let req = OsdRequest::Query {
                            epoch: map.epoch,
                            pgs: pgs.clone(),
                            otype: otype.to_string(),
                            filter: filter.clone(),
                            after,
                            limit: PAGE,
                        };
                        match self.cluster.call_osd(&map, osd, req).await? {
                            OsdResponse::Hits { hits: h, more } => {
                                after = h.last().map(|x| x.oid);
                                hits.extend(h);
                                if !more || after.is_none() {
                                    return Ok::<_, cairn_proto::rpc::RpcError>(hits);
                                }
                            }
                            r => {
                                return Err(cairn_proto::rpc::RpcError::Remote(
                                    cairn_proto::WireError::invalid(format!("unexpected {r:?}")),
                                ))
                            }
                        }
                    }
                }
            });
            let results = futures::future::join_all(calls).await;
            let mut merged = Vec::new();
            for r in results {
                match r {
                    Ok(h) => merged.extend(h),
                    Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                        let _ = self.cluster.refresh_map().await;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue 'attempt;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            merged.sort_by_key(|h| h.oid);
            merged.dedup_by_key(|h| h.oid);
            return Ok(merged);
        }
    }
}
