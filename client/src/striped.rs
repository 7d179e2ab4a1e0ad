//! Striping: a byte space (a block volume, a file) laid over objects of a fixed size, object `i`
//! holding bytes `[i*S, (i+1)*S)`. Objects are created on first write, so the space is thin:
//! never-written ranges read as zeros, and punching a hole deletes the objects it covers.

use crate::error::{ClientError, Result};
use crate::objects::PoolIo;
use bytes::{Bytes, BytesMut};
use cairn_proto::{Oid, PieceKind};
use futures::stream::{self, StreamExt, TryStreamExt};

/// Pieces of one request in flight at once.
const PARALLEL: usize = 8;
/// A punch or removal over more objects than this asks the pool which of them exist (one
/// listing per placement group) instead of visiting each: a sparse file truncated from 2^60
/// bytes down names 2^38 objects of which a handful exist.
const LIST_OVER: u64 = 1024;

#[derive(Clone)]
pub struct Striped {
    io: PoolIo,
    kind: PieceKind,
    owner: u64,
    object_size: u64,
}

/// One object's share of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    index: u64,
    /// Offset inside the object.
    at: u64,
    len: u64,
    /// Offset of the piece inside the caller's buffer.
    buf_off: u64,
}

fn pieces(object_size: u64, offset: u64, len: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let index = pos / object_size;
        let at = pos % object_size;
        let n = (object_size - at).min(end - pos);
        out.push(Piece {
            index,
            at,
            len: n,
            buf_off: pos - offset,
        });
        pos += n;
    }
    out
}

impl Striped {
    pub fn new(io: PoolIo, kind: PieceKind, owner: u64, object_size: u64) -> Striped {
        assert!(object_size > 0, "object size must be positive");
        Striped {
            io,
            kind,
            owner,
            object_size,
        }
    }

    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    pub fn pool_io(&self) -> &PoolIo {
        &self.io
    }

    pub fn oid(&self, index: u64) -> Oid {
        Oid::for_piece(self.kind, self.owner, index)
    }

    /// Read `len` bytes at `offset`; holes read as zeros. Always returns exactly `len` bytes.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let parts: Vec<(Piece, Bytes)> = stream::iter(pieces(self.object_size, offset, len))
            .map(|p| async move {
                let d = match self.io.read(self.oid(p.index), p.at, p.len).await {
                    Ok(d) => d,
                    Err(ClientError::NotFound(_)) => Bytes::new(),
                    Err(e) => return Err(e),
                };
                Ok::<_, ClientError>((p, d))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        // One piece that came back whole is the answer as it is.
        if let [(p, d)] = &parts[..] {
            if d.len() as u64 == len && p.buf_off == 0 {
                return Ok(d.clone());
            }
        }
        let mut out = BytesMut::zeroed(len as usize);
        for (p, d) in parts {
            let n = d.len().min(p.len as usize);
            let o = p.buf_off as usize;
            out[o..o + n].copy_from_slice(&d[..n]);
        }
        Ok(out.freeze())
    }

    /// Write `data` at `offset`.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        stream::iter(pieces(self.object_size, offset, data.len() as u64))
            .map(|p| {
                let slice = data.slice(p.buf_off as usize..(p.buf_off + p.len) as usize);
                async move {
                    self.io
                        .write(self.oid(p.index), p.at, slice)
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeros and free what it can: objects wholly inside are
    /// deleted, an object's tail is truncated, other partial pieces are overwritten with zeros.
    pub async fn punch(&self, offset: u64, len: u64) -> Result<()> {
        let os = self.object_size;
        let end = offset.saturating_add(len);
        let (first, last) = (offset / os, end.div_ceil(os));
        let ps = if last - first > LIST_OVER {
            // One piece per existing object: its share of the range.
            self.existing(first, last)
                .await?
                .into_iter()
                .map(|i| {
                    let (s, e) = (offset.max(i * os), end.min((i + 1) * os));
                    Piece {
                        index: i,
                        at: s - i * os,
                        len: e - s,
                        buf_off: 0,
                    }
                })
                .collect()
        } else {
            pieces(os, offset, len)
        };
        stream::iter(ps)
            .map(|p| async move {
                let oid = self.oid(p.index);
                let r = if p.at == 0 && p.len == self.object_size {
                    self.io.delete(oid).await
                } else if p.at + p.len == self.object_size {
                    match self.io.stat(oid).await {
                        Ok(st) if st.size > p.at => self.io.truncate(oid, p.at).await.map(|_| ()),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    }
                } else {
                    match self.io.stat(oid).await {
                        Ok(st) if st.size > p.at => {
                            let n = p.len.min(st.size - p.at);
                            let zeros = Bytes::from(vec![0u8; n as usize]);
                            self.io.write(oid, p.at, zeros).await.map(|_| ())
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    }
                };
                match r {
                    Err(ClientError::NotFound(_)) => Ok(()),
                    r => r,
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Delete every object from index `first` up to (excluding) `end_index`.
    pub async fn remove_objects(&self, first: u64, end_index: u64) -> Result<()> {
        let indices: Vec<u64> = if end_index.saturating_sub(first) > LIST_OVER {
            self.existing(first, end_index).await?
        } else {
            (first..end_index).collect()
        };
        stream::iter(indices)
            .map(|i| async move {
                match self.io.delete(self.oid(i)).await {
                    Err(ClientError::NotFound(_)) => Ok(()),
                    r => r,
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Indices in `first..end_index` whose objects exist, ascending: the owner's pieces are one
    /// range of ids in every placement group, listed in all of them at once.
    pub async fn existing(&self, first: u64, end_index: u64) -> Result<Vec<u64>> {
        if end_index <= first {
            return Ok(Vec::new());
        }
        let from = self.oid(first).0;
        let after = from.checked_sub(1).map(Oid);
        let last = self.oid(end_index - 1);
        let pgs: Vec<_> = self.io.pool().pgs().collect();
        let lists: Vec<Vec<(Oid, u64)>> = stream::iter(pgs)
            .map(|pg| self.io.list_range(pg, after, last))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut out: Vec<u64> = lists
            .into_iter()
            .flatten()
            .filter_map(|(oid, _)| match oid.piece() {
                Some((kind, owner, index))
                    if kind == self.kind
                        && owner == self.owner & ((1 << 56) - 1)
                        && (first..end_index).contains(&index) =>
                {
                    Some(index)
                }
                _ => None,
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Whether the object holding byte `offset` exists (for provisioning status).
    pub async fn is_mapped(&self, offset: u64) -> Result<bool> {
        match self.io.stat(self.oid(offset / self.object_size)).await {
            Ok(st) => Ok(st.size > offset % self.object_size),
            Err(ClientError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_exactly() {
        let ps = pieces(10, 7, 25);
        assert_eq!(
            ps,
            vec![
                Piece {
                    index: 0,
                    at: 7,
                    len: 3,
                    buf_off: 0
                },
                Piece {
                    index: 1,
                    at: 0,
                    len: 10,
                    buf_off: 3
                },
                Piece {
                    index: 2,
                    at: 0,
                    len: 10,
                    buf_off: 13
                },
                Piece {
                    index: 3,
                    at: 0,
                    len: 2,
                    buf_off: 23
                },
            ]
        );
        assert!(pieces(10, 5, 0).is_empty());
        assert_eq!(
            pieces(10, 20, 10),
            vec![Piece {
                index: 2,
                at: 0,
                len: 10,
                buf_off: 0
            }]
        );
    }
}
