//! An in-memory [`Store`]: the model the shared test suite holds the sled store to, and a store
//! for tests that do not care about disks. Queries filter every object (no index), so comparing
//! the two checks the sled store's index scans.

use super::{
    activated_info, advance_info, check_typed, chunk_count, chunk_len, digest, log_entry, Placed,
    Store, StoreOptions, CHUNK,
};
use crate::error::{Error, Result};
use bytes::Bytes;
use cairn_proto::msg::{LogEntry, LogOp, ObjectPiece, PgInfo, ScanItem};
use cairn_proto::object::QueryHit;
use cairn_proto::{Filter, ObjOp, ObjectStat, Oid, PgId};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

#[derive(Clone, Default)]
struct Obj {
    stat: ObjectStat,
    data: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<(PgId, Oid), Obj>,
    logs: BTreeMap<(PgId, u64), LogEntry>,
    infos: BTreeMap<PgId, PgInfo>,
    /// Data placed for objects not made yet ([`Store::place`]).
    placed: BTreeMap<(PgId, Oid), Vec<u8>>,
}

/// See the module doc.
pub struct MemStore {
    inner: Mutex<Inner>,
    opts: StoreOptions,
}

impl MemStore {
    pub fn new(opts: StoreOptions) -> MemStore {
        MemStore {
            inner: Mutex::default(),
            opts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mem store lock")
    }
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new(StoreOptions::default())
    }
}

impl Inner {
    fn record(&mut self, pg: PgId, entry: LogEntry, keep: u64) {
        let info = self.infos.get(&pg).copied().unwrap_or_default();
        let info = advance_info(info, entry.version, keep);
        self.logs.insert((pg, entry.version), entry);
        let stale: Vec<_> = self
            .logs
            .range((pg, 0)..=(pg, info.log_tail))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.logs.remove(&k);
        }
        self.infos.insert(pg, info);
    }
}

fn write_at(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

impl Store for MemStore {
    fn apply(&self, pg: PgId, version: u64, oid: Oid, op: &ObjOp, mtime: i64) -> Result<u64> {
        if let ObjOp::SetTyped { otype, fields } = op {
            check_typed(otype, fields)?;
        }
        let mut g = self.lock();
        let prior = g.objects.get(&(pg, oid)).map_or(0, |o| o.stat.version);
        if matches!(op, ObjOp::Delete) {
            g.objects.remove(&(pg, oid));
        } else {
            let o = g.objects.entry((pg, oid)).or_insert_with(|| Obj {
                stat: ObjectStat {
                    oid,
                    ..Default::default()
                },
                data: Vec::new(),
            });
            match op {
                ObjOp::WriteFull { data } => o.data = data.to_vec(),
                ObjOp::Write { offset, data } => write_at(&mut o.data, *offset, data),
                ObjOp::Truncate { size } => o.data.resize(*size as usize, 0),
                ObjOp::SetAttrs { set, remove } => {
                    for k in remove {
                        o.stat.attrs.remove(k);
                    }
                    for (k, v) in set {
                        o.stat.attrs.insert(k.clone(), v.clone());
                    }
                }
                ObjOp::SetTyped { otype, fields } => {
                    o.stat.otype = Some(otype.clone());
                    o.stat.fields = fields.clone();
                }
                ObjOp::Delete => {}
            }
            o.stat.size = o.data.len() as u64;
            o.stat.version = version;
            o.stat.mtime = mtime;
        }
        g.record(pg, log_entry(version, oid, op, prior), self.opts.log_keep);
        Ok(prior)
    }

    fn place(&self, pg: PgId, oid: Oid, data: &[u8]) -> Result<Option<Placed>> {
        self.lock().placed.insert((pg, oid), data.to_vec());
        Ok(Some(Placed::of(data)))
    }

    fn apply_placed(
        &self,
        pg: PgId,
        version: u64,
        oid: Oid,
        placed: &Placed,
        mtime: i64,
    ) -> Result<u64> {
        let mut g = self.lock();
        let data = g
            .placed
            .remove(&(pg, oid))
            .filter(|d| Placed::of(d) == *placed)
            .ok_or_else(|| Error::invalid("no placed data for this object"))?;
        let prior = g.objects.get(&(pg, oid)).map_or(0, |o| o.stat.version);
        g.objects.insert(
            (pg, oid),
            Obj {
                stat: ObjectStat {
                    oid,
                    size: data.len() as u64,
                    version,
                    mtime,
                    ..Default::default()
                },
                data,
            },
        );
        let entry = LogEntry {
            version,
            oid,
            op: LogOp::Modify,
            prior,
        };
        g.record(pg, entry, self.opts.log_keep);
        Ok(prior)
    }

    fn log_only(&self, pg: PgId, entry: &LogEntry) -> Result<()> {
        self.lock().record(pg, entry.clone(), self.opts.log_keep);
        Ok(())
    }

    fn install(
        &self,
        pg: PgId,
        oid: Oid,
        piece: &ObjectPiece,
        first: bool,
        entry: Option<&LogEntry>,
    ) -> Result<()> {
        let mut g = self.lock();
        g.infos.entry(pg).or_default();
        if first {
            let mut stat = piece.stat.clone();
            stat.oid = oid;
            g.objects.insert(
                (pg, oid),
                Obj {
                    data: vec![0; stat.size as usize],
                    stat,
                },
            );
        }
        if let Some(o) = g.objects.get_mut(&(pg, oid)) {
            let end = (piece.offset + piece.data.len() as u64).min(o.stat.size);
            if piece.offset < end {
                let n = (end - piece.offset) as usize;
                write_at(&mut o.data, piece.offset, &piece.data[..n]);
            }
        }
        if let Some(e) = entry {
            g.record(pg, e.clone(), self.opts.log_keep);
        }
        Ok(())
    }

    fn remove(&self, pg: PgId, oid: Oid) -> Result<()> {
        self.lock().objects.remove(&(pg, oid));
        Ok(())
    }

    fn read(&self, pg: PgId, oid: Oid, offset: u64, len: u64) -> Result<Bytes> {
        let g = self.lock();
        let o = g
            .objects
            .get(&(pg, oid))
            .ok_or(Error::NoSuchObject { oid })?;
        let start = offset.min(o.stat.size) as usize;
        let end = offset.saturating_add(len).min(o.stat.size) as usize;
        Ok(Bytes::copy_from_slice(&o.data[start..end]))
    }

    fn read_piece(&self, pg: PgId, oid: Oid, offset: u64, len: u64) -> Result<Option<ObjectPiece>> {
        let g = self.lock();
        Ok(g.objects.get(&(pg, oid)).map(|o| {
            let start = offset.min(o.stat.size) as usize;
            let end = offset.saturating_add(len).min(o.stat.size) as usize;
            ObjectPiece {
                stat: o.stat.clone(),
                offset,
                data: Bytes::copy_from_slice(&o.data[start..end]),
            }
        }))
    }

    fn stat(&self, pg: PgId, oid: Oid) -> Result<Option<ObjectStat>> {
        Ok(self.lock().objects.get(&(pg, oid)).map(|o| o.stat.clone()))
    }

    fn list(&self, pg: PgId, after: Option<Oid>, limit: usize) -> Result<(Vec<(Oid, u64)>, bool)> {
        let (items, more) = self.scan(pg, after, limit)?;
        Ok((
            items.into_iter().map(|i| (i.oid, i.version)).collect(),
            more,
        ))
    }

    fn scan(&self, pg: PgId, after: Option<Oid>, limit: usize) -> Result<(Vec<ScanItem>, bool)> {
        let g = self.lock();
        let lo = match after {
            Some(a) => Bound::Excluded((pg, a)),
            None => Bound::Included((pg, Oid(0))),
        };
        let mut out = Vec::new();
        for ((p, oid), o) in g.objects.range((lo, Bound::Included((pg, Oid(u128::MAX))))) {
            debug_assert_eq!(*p, pg);
            if out.len() == limit {
                return Ok((out, true));
            }
            let crcs = (0..chunk_count(o.stat.size)).map(|i| {
                let s = (i * CHUNK) as usize;
                let l = chunk_len(o.stat.size, i);
                (l, Some(crc32fast::hash(&o.data[s..s + l as usize])))
            });
            out.push(ScanItem {
                oid: *oid,
                version: o.stat.version,
                size: o.stat.size,
                digest: digest(crcs),
            });
        }
        Ok((out, false))
    }

    fn query(
        &self,
        pg: PgId,
        otype: &str,
        filter: &Filter,
        after: Option<Oid>,
        limit: usize,
    ) -> Result<(Vec<QueryHit>, bool)> {
        let g = self.lock();
        let mut hits = Vec::new();
        for ((p, oid), o) in &g.objects {
            if *p != pg || after.is_some_and(|a| *oid <= a) {
                continue;
            }
            if o.stat.otype.as_deref() == Some(otype) && filter.matches(&o.stat.fields) {
                if hits.len() == limit {
                    return Ok((hits, true));
                }
                hits.push(QueryHit {
                    oid: *oid,
                    fields: o.stat.fields.clone(),
                });
            }
        }
        Ok((hits, false))
    }

    fn verify(&self, pg: PgId, oid: Oid) -> Result<()> {
        match self.lock().objects.contains_key(&(pg, oid)) {
            true => Ok(()),
            false => Err(Error::NoSuchObject { oid }),
        }
    }

    fn pg_info(&self, pg: PgId) -> Result<PgInfo> {
        Ok(self.lock().infos.get(&pg).copied().unwrap_or_default())
    }

    fn pg_log(&self, pg: PgId, since: u64) -> Result<Vec<LogEntry>> {
        let g = self.lock();
        let info = g.infos.get(&pg).copied().unwrap_or_default();
        if since < info.log_tail {
            return Err(Error::LogTrimmed {
                pg,
                since,
                tail: info.log_tail,
            });
        }
        Ok(g.logs
            .range((pg, since.saturating_add(1))..=(pg, u64::MAX))
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn activate(
        &self,
        pg: PgId,
        last_update: u64,
        log: &[LogEntry],
        backfilled: bool,
    ) -> Result<()> {
        let mut g = self.lock();
        let info = g.infos.get(&pg).copied().unwrap_or_default();
        let info = activated_info(info, last_update, backfilled);
        let drop: Vec<_> = g
            .logs
            .range((pg, 0)..=(pg, u64::MAX))
            .map(|(k, _)| *k)
            .filter(|(_, v)| backfilled || *v > last_update)
            .collect();
        for k in drop {
            g.logs.remove(&k);
        }
        if !backfilled {
            for e in log.iter().filter(|e| e.version <= last_update) {
                g.logs.insert((pg, e.version), e.clone());
            }
        }
        g.infos.insert(pg, info);
        Ok(())
    }

    fn pgs(&self) -> Result<Vec<PgId>> {
        let g = self.lock();
        let mut pgs: Vec<PgId> = g.infos.keys().copied().collect();
        pgs.extend(g.objects.keys().map(|(p, _)| *p));
        pgs.sort();
        pgs.dedup();
        Ok(pgs)
    }

    fn remove_pg(&self, pg: PgId) -> Result<()> {
        let mut g = self.lock();
        g.objects.retain(|(p, _), _| *p != pg);
        g.logs.retain(|(p, _), _| *p != pg);
        g.infos.remove(&pg);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.lock().objects.values().map(|o| o.stat.size).sum()
    }

    fn set_replaying(&self, _on: bool) {}
}
