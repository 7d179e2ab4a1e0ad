//! A write-back cache in front of any [`BlockDevice`], itself a [`BlockDevice`].
//!
//! This is the command-queue optimisation of the iSCSI target paper (SGT 2004, §3.1) done where
//! it pays off on a cluster, below the SCSI layer: writes are acknowledged once in memory and
//! reach the device later, so
//! - adjacent and overlapping writes are **merged** into one extent (one device write),
//! - a dirty write that a later write fully overwrites before it is flushed is **dropped**
//!   (the device never sees it; a partly overwritten one is trimmed),
//! - reads see the newest data: the device's, overlaid with in-flight then dirty extents.
//!
//! ```text
//!  write ──> dirty: BTreeMap<offset, Extent>  (non-overlapping, merged, bounded)
//!               │  flusher: every `flush_interval`, or at `high_watermark`,
//!               │  or flush()/FUA: in offset order, `flush_concurrency` writes at once
//!               v
//!           in_flight: BTreeMap<offset, InFlight>  (being written; never two overlapping)
//!               v
//!           inner device
//! ```
//!
//! Durability: [`BlockDevice::flush`] writes every dirty extent, waits for those in flight and
//! flushes the inner device, so everything acknowledged before it is durable when it returns.
//! A write with `fua` is written through: its extent (with whatever dirty data it merged with)
//! goes to the device at once and the device is flushed before the write returns. An unmap
//! drops the dirty data it covers and waits for overlapping writes in flight before it reaches
//! the device, so the device sees writes and unmaps of one range in the order they were made.
//!
//! Writers wait while the dirty data would exceed `max_dirty_bytes`. A failed background
//! write keeps its data dirty (unless newer data replaced it) and the error is reported by the
//! next `flush`, as `fsync` reports write-back errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, Notify};

use cairn_iscsi::block::{BlockDevice, BlockError, Extent as Mapping};

/// Settings of a [`WriteBackCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most dirty bytes held; writers wait beyond it.
    pub max_dirty_bytes: u64,
    /// Dirty bytes at which the flusher starts without waiting for its interval.
    pub high_watermark: u64,
    /// How long dirty data may wait before the flusher writes it.
    pub flush_interval: Duration,
    /// Device writes in flight at once.
    pub flush_concurrency: usize,
    /// Largest extent merging builds (one device write).
    pub max_extent: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_dirty_bytes: 256 << 20,
            high_watermark: 128 << 20,
            flush_interval: Duration::from_millis(500),
            flush_concurrency: 8,
            max_extent: 4 << 20,
        }
    }
}

/// Counters of what the cache saved the device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Writes accepted.
    pub writes: u64,
    /// Writes that joined an adjacent dirty extent.
    pub merged: u64,
    /// Dirty bytes dropped because newer data or an unmap replaced them before a flush.
    pub dropped_bytes: u64,
    /// Writes issued to the device.
    pub device_writes: u64,
}

/// Contiguous dirty bytes held as a list of buffers, so merging appends instead of copying.
#[derive(Debug, Clone, Default)]
struct Rope {
    parts: Vec<Bytes>,
    len: u64,
    /// Sequence number of the oldest write whose data this holds: a flush must write every
    /// extent holding data older than itself, and may leave the rest.
    since: u64,
}

impl Rope {
    fn new(b: Bytes, since: u64) -> Self {
        Self {
            len: b.len() as u64,
            parts: vec![b],
            since,
        }
    }

    fn append(&mut self, other: Rope) {
        self.len += other.len;
        self.since = self.since.min(other.since);
        self.parts.extend(other.parts);
    }

    /// Bytes `[from, to)` of the rope.
    fn slice(&self, from: u64, to: u64) -> Rope {
        let mut out = Rope {
            since: self.since,
            ..Rope::default()
        };
        let mut at = 0u64;
        for p in &self.parts {
            let (s, e) = (at, at + p.len() as u64);
            at = e;
            if e <= from || s >= to {
                continue;
            }
            let a = from.max(s) - s;
            let b = to.min(e) - s;
            out.len += b - a;
            out.parts.push(p.slice(a as usize..b as usize));
        }
        out
    }

    /// Copies the rope into `dst` (which is exactly as long).
    fn copy_to(&self, dst: &mut [u8]) {
        let mut at = 0usize;
        for p in &self.parts {
            dst[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
    }

    fn to_bytes(&self) -> Bytes {
        if self.parts.len() == 1 {
            return self.parts[0].clone();
        }
        let mut b = BytesMut::zeroed(self.len as usize);
        self.copy_to(&mut b);
        b.freeze()
    }
}

/// A range being written to (or unmapped on) the device.
struct InFlight {
    len: u64,
    /// The data being written; `None` for an unmap.
    data: Option<Rope>,
}

impl InFlight {
    /// Whether it holds data written no later than write `upto`.
    fn holds_data_upto(&self, upto: u64) -> bool {
        self.data.as_ref().is_some_and(|r| r.since <= upto)
    }
}

#[derive(Default)]
struct State {
    /// Sequence number of the last write accepted.
    seq: u64,
    dirty: BTreeMap<u64, Rope>,
    dirty_bytes: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// The first background write error since the last flush.
    error: Option<BlockError>,
    stats: CacheStats,
}

/// Keys of the entries of `map` (non-overlapping, keyed by start) that overlap `[off, end)`.
fn overlapping<V>(map: &BTreeMap<u64, V>, off: u64, end: u64, len: impl Fn(&V) -> u64) -> Vec<u64> {
    let mut keys: Vec<u64> = map
        .range(..end)
        .rev()
        .take_while(|(s, v)| **s + len(v) > off)
        .map(|(s, _)| *s)
        .collect();
    keys.reverse();
    keys
}

impl State {
    fn overlaps_in_flight(&self, off: u64, end: u64) -> bool {
        !overlapping(&self.in_flight, off, end, |f| f.len).is_empty()
    }

    /// Removes dirty bytes in `[off, end)`, keeping the parts of extents outside it.
    fn cut(&mut self, off: u64, end: u64) {
        for s in overlapping(&self.dirty, off, end, |r| r.len) {
            let Some(r) = self.dirty.remove(&s) else {
                continue;
            };
            let e = s + r.len;
            if s < off {
                self.dirty.insert(s, r.slice(0, off - s));
            }
            if e > end {
                self.dirty.insert(end, r.slice(end - s, r.len));
            }
            let removed = e.min(end) - s.max(off);
            self.dirty_bytes -= removed;
            self.stats.dropped_bytes += removed;
        }
    }

    /// Adds a write, replacing what it overlaps and merging with adjacent extents.
    fn insert(&mut self, off: u64, data: Bytes, max_extent: u64) {
        let len = data.len() as u64;
        let end = off + len;
        self.cut(off, end);
        self.seq += 1;
        self.stats.writes += 1;
        self.dirty_bytes += len;
        let mut start = off;
        let mut rope = Rope::new(data, self.seq);
        if let Some((&ls, left)) = self.dirty.range(..off).next_back() {
            if ls + left.len == off && left.len + rope.len <= max_extent {
                let mut merged = self.dirty.remove(&ls).unwrap_or_default();
                merged.append(rope);
                rope = merged;
                start = ls;
                self.stats.merged += 1;
            }
        }
        if let Some(right) = self.dirty.get(&end) {
            if rope.len + right.len <= max_extent {
                if let Some(right) = self.dirty.remove(&end) {
                    rope.append(right);
                    self.stats.merged += 1;
                }
            }
        }
        self.dirty.insert(start, rope);
    }

    /// Dirty extents overlapping `[off, end)` that hold writes up to `upto`.
    fn pending(&self, off: u64, end: u64, upto: u64) -> Vec<u64> {
        overlapping(&self.dirty, off, end, |r| r.len)
            .into_iter()
            .filter(|s| self.dirty[s].since <= upto)
            .collect()
    }

    /// Moves up to `max` of the dirty extents overlapping `[off, end)` that hold writes up to
    /// `upto` and overlap nothing in flight to the in-flight set, in offset order.
    fn take(&mut self, off: u64, end: u64, upto: u64, max: usize) -> Vec<(u64, Rope)> {
        let mut out = Vec::new();
        for s in self.pending(off, end, upto) {
            if out.len() >= max {
                break;
            }
            let len = self.dirty[&s].len;
            if self.overlaps_in_flight(s, s + len) {
                continue;
            }
            if let Some(r) = self.dirty.remove(&s) {
                self.dirty_bytes -= r.len;
                self.in_flight.insert(
                    s,
                    InFlight {
                        len: r.len,
                        data: Some(r.clone()),
                    },
                );
                out.push((s, r));
            }
        }
        out
    }

    /// A device write of the extent at `off` ended.
    fn finish(&mut self, off: u64, result: Result<(), BlockError>) {
        let Some(f) = self.in_flight.remove(&off) else {
            return;
        };
        if let Err(e) = result {
            // Keep the data dirty where nothing newer replaced it, for the next attempt.
            if let Some(r) = f.data {
                let mut at = 0u64;
                let newer = overlapping(&self.dirty, off, off + f.len, |r| r.len);
                let mut gaps = Vec::new();
                for s in newer {
                    let e = s + self.dirty[&s].len;
                    if s > off + at {
                        gaps.push((at, s - off));
                    }
                    at = at.max(e - off);
                }
                if at < f.len {
                    gaps.push((at, f.len));
                }
                for (a, b) in gaps {
                    self.dirty.insert(off + a, r.slice(a, b));
                    self.dirty_bytes += b - a;
                }
            }
            self.error.get_or_insert(e);
        }
    }
}

/// State shared by the cache and its flusher task.
struct Shared {
    inner: Arc<dyn BlockDevice>,
    cfg: CacheConfig,
    state: Mutex<State>,
    /// Bumped whenever in-flight or dirty data shrinks: waiters re-check.
    changed: watch::Sender<u64>,
    /// Wakes the flusher early.
    kick: Notify,
    device_writes: AtomicU64,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Starts device writes for `extents` (already in flight); each finishes on its own, so a
    /// caller that goes away does not strand an extent in flight.
    fn spawn_writes(self: &Arc<Self>, extents: Vec<(u64, Rope)>) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        for (off, rope) in extents {
            let me = Arc::clone(self);
            set.spawn(async move {
                me.device_writes.fetch_add(1, Ordering::Relaxed);
                let r = me.inner.write(off, rope.to_bytes(), false).await;
                me.state().finish(off, r);
                me.bump();
            });
        }
        set
    }

    /// Writes back every write accepted so far that overlaps `[off, end)`: returns once none
    /// of them is dirty or in flight, or as soon as a device write failed (the error waits in
    /// the state for `flush`). Data written after the call started is left for later, so a
    /// steady stream of writes cannot keep it going forever.
    async fn write_back(self: &Arc<Self>, off: u64, end: u64) {
        let mut rx = self.changed.subscribe();
        let upto = self.state().seq;
        loop {
            let extents = {
                let mut st = self.state();
                rx.borrow_and_update();
                if st.error.is_some() {
                    return;
                }
                let extents = st.take(off, end, upto, self.cfg.flush_concurrency.max(1));
                let in_flight = overlapping(&st.in_flight, off, end, |f| f.len)
                    .iter()
                    .any(|s| st.in_flight[s].holds_data_upto(upto));
                if extents.is_empty() && !in_flight && st.pending(off, end, upto).is_empty() {
                    return;
                }
                extents
            };
            if !extents.is_empty() {
                let mut set = self.spawn_writes(extents);
                while set.join_next().await.is_some() {}
            } else if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Writes back everything written so far, in offset order.
    async fn flush_pass(self: &Arc<Self>) {
        self.write_back(0, u64::MAX).await;
    }
}

/// A write-back cache over `inner`; see the module documentation.
pub struct WriteBackCache {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl WriteBackCache {
    /// Wraps `inner` and starts the background flusher (on the current tokio runtime).
    pub fn new(inner: Arc<dyn BlockDevice>, cfg: CacheConfig) -> Self {
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            inner,
            cfg,
            state: Mutex::new(State::default()),
            changed,
            kick: Notify::new(),
            device_writes: AtomicU64::new(0),
        });
        let (stop, mut stopped) = watch::channel(false);
        let flusher = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(flusher.cfg.flush_interval) => {}
                    _ = flusher.kick.notified() => {}
                    r = stopped.changed() => {
                        if r.is_err() || *stopped.borrow() {
                            return;
                        }
                    }
                }
                flusher.flush_pass().await;
            }
        });
        Self { shared, stop }
    }

    /// What the cache did so far.
    pub fn stats(&self) -> CacheStats {
        let mut s = self.shared.state().stats;
        s.device_writes = self.shared.device_writes.load(Ordering::Relaxed);
        s
    }

    /// Dirty bytes not yet handed to the device.
    pub fn dirty_bytes(&self) -> u64 {
        self.shared.state().dirty_bytes
    }
}

impl Drop for WriteBackCache {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[async_trait]
impl BlockDevice for WriteBackCache {
    fn size(&self) -> u64 {
        self.shared.inner.size()
    }
    fn block_size(&self) -> u32 {
        self.shared.inner.block_size()
    }
    fn physical_block_size(&self) -> u32 {
        self.shared.inner.physical_block_size()
    }
    fn unmap_granularity(&self) -> u64 {
        self.shared.inner.unmap_granularity()
    }
    fn serial(&self) -> String {
        self.shared.inner.serial()
    }
    fn read_only(&self) -> bool {
        self.shared.inner.read_only()
    }
    fn volatile_write_cache(&self) -> bool {
        true
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.size())
            .ok_or(BlockError::OutOfRange {
                offset,
                len: len as u64,
                size: self.size(),
            })?;
        // Snapshot what overlays the device before reading it: an extent that lands on the
        // device meanwhile is then either read from the device or overlaid, never missed.
        let overlay: Vec<(u64, Rope)> = {
            let st = self.shared.state();
            let mut v = Vec::new();
            for s in overlapping(&st.in_flight, offset, end, |f| f.len) {
                if let Some(d) = &st.in_flight[&s].data {
                    v.push((s, d.clone()));
                }
            }
            for s in overlapping(&st.dirty, offset, end, |r| r.len) {
                v.push((s, st.dirty[&s].clone()));
            }
            v
        };
        let covered = {
            // Skip the device when dirty data alone covers the range.
            let mut at = offset;
            let mut runs: Vec<(u64, u64)> = overlay.iter().map(|(s, r)| (*s, *s + r.len)).collect();
            runs.sort_unstable();
            for (s, e) in runs {
                if s <= at {
                    at = at.max(e);
                }
            }
            at >= end
        };
        if overlay.is_empty() {
            return self.shared.inner.read(offset, len).await;
        }
        let mut out = if covered {
            BytesMut::zeroed(len)
        } else {
            BytesMut::from(&self.shared.inner.read(offset, len).await?[..])
        };
        for (s, r) in overlay {
            let a = s.max(offset);
            let b = (s + r.len).min(end);
            r.slice(a - s, b - s)
                .copy_to(&mut out[(a - offset) as usize..(b - offset) as usize]);
        }
        Ok(out.freeze())
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        let len = data.len() as u64;
        let size = self.size();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or(BlockError::OutOfRange { offset, len, size })?;
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        if len == 0 {
            return Ok(());
        }
        let sh = &self.shared;
        let mut rx = sh.changed.subscribe();
        loop {
            {
                let mut st = sh.state();
                rx.borrow_and_update();
                if st.dirty_bytes == 0 || st.dirty_bytes + len <= sh.cfg.max_dirty_bytes {
                    st.insert(offset, data.clone(), sh.cfg.max_extent);
                    if st.dirty_bytes >= sh.cfg.high_watermark {
                        sh.kick.notify_one();
                    }
                    break;
                }
            }
            sh.kick.notify_one();
            if rx.changed().await.is_err() {
                return Err(BlockError::Unavailable);
            }
        }
        if fua {
            sh.write_back(offset, end).await;
            if let Some(e) = sh.state().error.take() {
                return Err(e);
            }
            sh.inner.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.shared.flush_pass().await;
        if let Some(e) = self.shared.state().error.take() {
            return Err(e);
        }
        self.shared.inner.flush().await
    }

    async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let size = self.size();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or(BlockError::OutOfRange { offset, len, size })?;
        let sh = &self.shared;
        let mut rx = sh.changed.subscribe();
        loop {
            {
                let mut st = sh.state();
                rx.borrow_and_update();
                st.cut(offset, end);
                if !st.overlaps_in_flight(offset, end) {
                    st.in_flight.insert(offset, InFlight { len, data: None });
                    break;
                }
            }
            if rx.changed().await.is_err() {
                return Err(BlockError::Unavailable);
            }
        }
        sh.bump(); // dirty data shrank: writers waiting for room may go on
        let r = sh.inner.unmap(offset, len).await;
        sh.state().in_flight.remove(&offset);
        sh.bump();
        r
    }

    async fn mapping(&self, offset: u64) -> Result<Mapping, BlockError> {
        // Dirty data is mapped data: let the device know about it first. GET LBA STATUS is
        // rare enough that the write-back costs less than tracking mapping twice.
        self.shared.flush_pass().await;
        self.shared.inner.mapping(offset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_iscsi::block::MemDevice;
    use rand::{Rng, SeedableRng};

    /// A device that counts the writes reaching it.
    struct Counting {
        inner: MemDevice,
        writes: AtomicU64,
        bytes: AtomicU64,
    }

    #[async_trait]
    impl BlockDevice for Counting {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn block_size(&self) -> u32 {
            self.inner.block_size()
        }
        async fn read(&self, offset: u64, len: usize) -> Result<Bytes, BlockError> {
            self.inner.read(offset, len).await
        }
        async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.inner.write(offset, data, fua).await
        }
        async fn flush(&self) -> Result<(), BlockError> {
            Ok(())
        }
        async fn unmap(&self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.inner.unmap(offset, len).await
        }
        fn serial(&self) -> String {
            "count".into()
        }
    }

    fn counting(size: u64) -> Arc<Counting> {
        Arc::new(Counting {
            inner: MemDevice::new(size, 512, "c"),
            writes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// A flusher that never runs by itself: only flush() and FUA reach the device.
    fn manual() -> CacheConfig {
        CacheConfig {
            flush_interval: Duration::from_secs(3600),
            high_watermark: u64::MAX,
            ..CacheConfig::default()
        }
    }

    #[tokio::test]
    async fn merges_adjacent_writes_and_drops_overwritten_ones() {
        let dev = counting(1 << 20);
        let cache = WriteBackCache::new(dev.clone(), manual());
        // 64 sequential 4 KiB writes become one extent, one device write.
        for i in 0..64u64 {
            cache
                .write(i * 4096, Bytes::from(vec![i as u8; 4096]), false)
                .await
                .unwrap();
        }
        // Ten overwrites of the same block elsewhere: only the last one is written.
        for i in 0..10u8 {
            cache
                .write(512 << 10, Bytes::from(vec![i; 4096]), false)
                .await
                .unwrap();
        }
        assert_eq!(
            dev.writes.load(Ordering::Relaxed),
            0,
            "nothing reached the device yet"
        );
        cache.flush().await.unwrap();
        assert_eq!(dev.writes.load(Ordering::Relaxed), 2);
        assert_eq!(dev.bytes.load(Ordering::Relaxed), 64 * 4096 + 4096);
        let st = cache.stats();
        assert_eq!((st.writes, st.merged, st.device_writes), (74, 63, 2));
        assert_eq!(st.dropped_bytes, 9 * 4096);
        assert_eq!(
            dev.inner.read(512 << 10, 4096).await.unwrap(),
            vec![9u8; 4096]
        );
        assert_eq!(
            dev.inner.read(63 * 4096, 4096).await.unwrap(),
            vec![63u8; 4096]
        );
    }

    #[tokio::test]
    async fn fua_writes_through_with_the_dirty_data_it_touches() {
        let dev = counting(1 << 20);
        let cache = WriteBackCache::new(dev.clone(), manual());
        cache
            .write(0, Bytes::from(vec![1u8; 4096]), false)
            .await
            .unwrap();
        cache
            .write(8192, Bytes::from(vec![2u8; 4096]), false)
            .await
            .unwrap();
        cache
            .write(4096, Bytes::from(vec![3u8; 4096]), true)
            .await
            .unwrap();
        // The three merged into one extent, which the FUA write took along.
        assert_eq!(dev.writes.load(Ordering::Relaxed), 1);
        assert_eq!(cache.dirty_bytes(), 0);
        assert_eq!(dev.inner.read(8192, 4096).await.unwrap(), vec![2u8; 4096]);
    }

    #[tokio::test]
    async fn unmap_drops_dirty_data_and_bounded_writers_wait_for_the_flusher() {
        let dev = counting(4 << 20);
        let cfg = CacheConfig {
            max_dirty_bytes: 64 << 10,
            high_watermark: 32 << 10,
            flush_interval: Duration::from_millis(10),
            ..CacheConfig::default()
        };
        let cache = WriteBackCache::new(dev.clone(), cfg);
        cache
            .write(0, Bytes::from(vec![7u8; 8192]), false)
            .await
            .unwrap();
        cache.unmap(0, 4096).await.unwrap();
        let back = cache.read(0, 8192).await.unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0) && back[4096..].iter().all(|&b| b == 7));
        // 1 MiB through a 64 KiB cache: the writers wait for room, the flusher makes it.
        let fut = async {
            for i in 0..256u64 {
                cache
                    .write(
                        (1 << 20) + i * 4096,
                        Bytes::from(vec![i as u8; 4096]),
                        false,
                    )
                    .await
                    .unwrap();
                assert!(cache.dirty_bytes() <= 64 << 10);
            }
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("writers stalled");
        cache.flush().await.unwrap();
        assert_eq!(
            dev.inner.read((1 << 20) + 255 * 4096, 4096).await.unwrap(),
            vec![255u8; 4096]
        );
    }

    /// Random writes, FUA writes, unmaps, flushes and reads against the cache and against a
    /// plain MemDevice: every read must agree, and after a flush so must the device below.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn model_matches_a_plain_device() {
        for seed in 0..8u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let size = 256u64 << 10;
            let below = Arc::new(MemDevice::new(size, 512, "below"));
            let cfg = CacheConfig {
                max_dirty_bytes: 32 << 10,
                high_watermark: 16 << 10,
                flush_interval: Duration::from_millis(rng.gen_range(1..20)),
                flush_concurrency: rng.gen_range(1..4),
                max_extent: rng.gen_range(1..16) * 4096,
            };
            let cache = WriteBackCache::new(below.clone(), cfg);
            let model = MemDevice::new(size, 512, "model");
            for step in 0..600 {
                let blocks = size / 512;
                let lba = rng.gen_range(0..blocks);
                let n = rng.gen_range(1..=(blocks - lba).min(24));
                let (off, len) = (lba * 512, n * 512);
                match rng.gen_range(0..100) {
                    0..=54 => {
                        let fill: u8 = rng.gen();
                        let data = Bytes::from(vec![fill; len as usize]);
                        let fua = rng.gen_bool(0.1);
                        cache.write(off, data.clone(), fua).await.unwrap();
                        model.write(off, data, fua).await.unwrap();
                        if fua {
                            assert_eq!(
                                below.read(off, len as usize).await.unwrap(),
                                model.read(off, len as usize).await.unwrap(),
                                "seed {seed} step {step}: FUA data not on the device"
                            );
                        }
                    }
                    55..=62 => {
                        cache.unmap(off, len).await.unwrap();
                        model.unmap(off, len).await.unwrap();
                    }
                    63..=66 => {
                        cache.flush().await.unwrap();
                        assert_eq!(
                            below.read(0, size as usize).await.unwrap(),
                            model.read(0, size as usize).await.unwrap(),
                            "seed {seed} step {step}: device differs after flush"
                        );
                    }
                    _ => {
                        assert_eq!(
                            cache.read(off, len as usize).await.unwrap(),
                            model.read(off, len as usize).await.unwrap(),
                            "seed {seed} step {step}: read {off}+{len}"
                        );
                    }
                }
            }
        }
    }
}
