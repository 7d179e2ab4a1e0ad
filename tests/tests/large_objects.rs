//! A 1 GiB object streams in and out of a size-3 pool without any process holding it in memory.

use cairn_client::PoolSpec;
use cairn_proto::Oid;
use cairn_tests::{ClusterOpts, ProcCluster};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SIZE: u64 = 1 << 30;

/// `len` bytes of a deterministic pattern, generated as they are read.
struct Pattern {
    pos: u64,
    len: u64,
}

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.len - self.pos) as usize;
        let start = self.pos;
        let chunk: Vec<u8> = (0..n as u64).map(|i| byte_at(start + i)).collect();
        buf.put_slice(&chunk);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Checks every byte written against the pattern, keeping nothing.
struct Checker {
    pos: u64,
    first_bad: Option<u64>,
}

impl AsyncWrite for Checker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.first_bad.is_none() {
            if let Some(i) = data
                .iter()
                .enumerate()
                .position(|(i, b)| *b != byte_at(self.pos + i as u64))
            {
                self.first_bad = Some(self.pos + i as u64);
            }
        }
        self.pos += data.len() as u64;
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Peak resident memory of a process in bytes (VmHWM).
fn peak_rss(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_one_gib_object_streams_through_a_size_3_pool() {
    tokio::time::timeout(Duration::from_secs(900), async {
        let c = ProcCluster::start(ClusterOpts::default()).await?;
        let cl = c.client().await?;
        let mut spec = PoolSpec::new("big");
        spec.pg_num = 8;
        cl.create_pool(spec).await?;
        let io = cl.pool_io("big").await?;
        let oid = Oid::from_name("one-gib");
        let n = io.put_stream(oid, Pattern { pos: 0, len: SIZE }).await?;
        assert_eq!(n, SIZE);
        assert_eq!(io.stat(oid).await?.size, SIZE);
        let mut check = Checker {
            pos: 0,
            first_bad: None,
        };
        let got = io.get_stream(oid, None, &mut check).await?;
        assert_eq!(got, SIZE);
        assert_eq!(check.first_bad, None, "first wrong byte");
        // A range from the middle.
        let r = io.read(oid, SIZE / 2 + 7, 1000).await?;
        assert!(r
            .iter()
            .enumerate()
            .all(|(i, b)| *b == byte_at(SIZE / 2 + 7 + i as u64)));
        // Nobody held the object in memory.
        let me = peak_rss("self");
        assert!(me < 400 << 20, "the client peaked at {} MiB", me >> 20);
        for d in &c.osds {
            let pid = d.pid().expect("osd running").to_string();
            let peak = peak_rss(&pid);
            assert!(peak < 600 << 20, "{} peaked at {} MiB", d.name, peak >> 20);
        }
        anyhow::Ok(())
    })
    .await
    .expect("test timed out")
    .expect("test failed");
}
