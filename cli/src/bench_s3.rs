//! `cairn bench s3`: PUT and GET through a gateway's S3 API next to the same operations through
//! the native object API on the same cluster, in one run, so the S3 layer's cost shows as a ratio.
//!
//! The S3 side is an HTTP/1.1 client (hyper, one keep-alive connection per worker) whose
//! requests are signed with the AWS SDK's SigV4 signer (`aws-sigv4`), as an SDK client's are.
//! PUT bodies are sent as `UNSIGNED-PAYLOAD` (what the SDKs do over TLS), so neither side
//! spends time hashing payloads; GETs are checked for length.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use cairn_proto::Oid;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::bench::{run_phase, PhaseResult};
use crate::util::{connect, human_bytes, parse_size};

#[derive(clap::Args)]
pub struct S3BenchArgs {
    /// The gateway's S3 endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    /// Access key id (e.g. the admin key `cairn server` prints).
    #[arg(long, env = "CAIRN_S3_ACCESS_KEY")]
    access_key: String,
    /// Secret key.
    #[arg(long, env = "CAIRN_S3_SECRET_KEY")]
    secret_key: String,
    /// Bucket to use (created if missing).
    #[arg(long, default_value = "cairn-bench")]
    bucket: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Object sizes, comma separated.
    #[arg(long, default_value = "4k,1M", value_delimiter = ',')]
    sizes: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Pool the native object API writes to: the pool S3 objects land in.
    #[arg(long, default_value = "default")]
    pool: String,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct S3 {
    http: HttpClient,
    endpoint: String,
    host: String,
    creds: Credentials,
}

impl S3 {
    /// Send one signed request; the status and body.
    async fn call(&self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        let uri = format!("{}{}", self.endpoint, path);
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.creds.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .context("signing parameters")?
            .into();
        let len = body.len().to_string();
        let headers = [
            ("host", self.host.as_str()),
            ("content-length", len.as_str()),
        ];
        let signable = SignableRequest::new(
            method,
            uri.as_str(),
            headers.into_iter(),
            SignableBody::UnsignedPayload,
        )?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let mut req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header("host", &self.host)
            .header("content-length", len)
            .body(Full::new(body))?;
        instructions.apply_to_request_http1x(&mut req);
        let resp = self.http.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

pub async fn run(meta: Vec<String>, a: S3BenchArgs) -> Result<()> {
    let cluster = connect(meta).await?;
    let io = cluster
        .pool_io(&a.pool)
        .await
        .with_context(|| format!("pool {}", a.pool))?;
    let host = a
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let s3 = Arc::new(S3 {
        http: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(a.concurrency * 2)
            .build_http(),
        endpoint: a.endpoint.trim_end_matches('/').to_string(),
        host,
        creds: Credentials::new(&a.access_key, &a.secret_key, None, None, "cairn-bench"),
    });
    let (status, body) = s3
        .call("PUT", &format!("/{}", a.bucket), Bytes::new())
        .await?;
    if status != 200 && !String::from_utf8_lossy(&body).contains("BucketAlreadyOwnedByYou") {
        bail!(
            "create bucket {}: HTTP {status}: {}",
            a.bucket,
            String::from_utf8_lossy(&body)
        );
    }
    let conc = a.concurrency;
    let mut rows: Vec<(u64, PhaseResult, PhaseResult)> = Vec::new();
    for size_s in &a.sizes {
        let size = parse_size(size_s)?;
        let data = Bytes::from(vec![0x6bu8; size as usize]);
        let tag = size;
        let written: Arc<Vec<AtomicU64>> = Arc::new((0..conc).map(|_| AtomicU64::new(0)).collect());

        // Native object API.
        let (io2, d2, w2) = (io.clone(), data.clone(), written.clone());
        let nput = run_phase(
            &format!("native put {} c{conc}", human_bytes(size)),
            conc,
            a.seconds,
            size,
            move |w, seq| {
                let (io, data, written) = (io2.clone(), d2.clone(), w2.clone());
                async move {
                    io.write_full(bench_oid(tag, w, seq), data).await?;
                    written[w].fetch_max(seq + 1, Ordering::Relaxed);
                    Ok(())
                }
            },
        )
        .await;
        let (io2, w2) = (io.clone(), written.clone());
        let nget = run_phase(
            &format!("native get {} c{conc}", human_bytes(size)),
            conc,
            a.seconds,
            size,
            move |w, seq| {
                let (io, written) = (io2.clone(), w2.clone());
                async move {
                    let n = written[w].load(Ordering::Relaxed).max(1);
                    let d = io.read(bench_oid(tag, w, seq % n), 0, size).await?;
                    if d.len() as u64 != size {
                        bail!("short read: {} of {size}", d.len());
                    }
                    Ok(())
                }
            },
        )
        .await;

        // S3.
        let written: Arc<Vec<AtomicU64>> = Arc::new((0..conc).map(|_| AtomicU64::new(0)).collect());
        let (s2, d2, w2, b2) = (s3.clone(), data.clone(), written.clone(), a.bucket.clone());
        let sput = run_phase(
            &format!("s3 put {} c{conc}", human_bytes(size)),
            conc,
            a.seconds,
            size,
            move |w, seq| {
                let (s3, data, written, bucket) = (s2.clone(), d2.clone(), w2.clone(), b2.clone());
                async move {
                    let path = format!("/{bucket}/{size}/w{w}/o{seq}");
                    let (st, body) = s3.call("PUT", &path, data).await?;
                    if st != 200 {
                        bail!("PUT {path}: HTTP {st}: {}", String::from_utf8_lossy(&body));
                    }
                    written[w].fetch_max(seq + 1, Ordering::Relaxed);
                    Ok(())
                }
            },
        )
        .await;
        let (s2, w2, b2) = (s3.clone(), written.clone(), a.bucket.clone());
        let sget = run_phase(
            &format!("s3 get {} c{conc}", human_bytes(size)),
            conc,
            a.seconds,
            size,
            move |w, seq| {
                let (s3, written, bucket) = (s2.clone(), w2.clone(), b2.clone());
                async move {
                    let n = written[w].load(Ordering::Relaxed).max(1);
                    let path = format!("/{bucket}/{size}/w{w}/o{}", seq % n);
                    let (st, body) = s3.call("GET", &path, Bytes::new()).await?;
                    if st != 200 || body.len() as u64 != size {
                        bail!("GET {path}: HTTP {st}, {} bytes", body.len());
                    }
                    Ok(())
                }
            },
        )
        .await;
        rows.push((size, nput, sput));
        rows.push((size, nget, sget));
    }
    println!();
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8}",
        "operation", "native/s", "p50 µs", "p99 µs", "s3/s", "p50 µs", "p99 µs", "s3/native"
    );
    for (_, n, s) in &rows {
        let op = n.name.trim_start_matches("native ");
        println!(
            "{:<22} {:>10.0} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>7.2}x{}",
            op,
            n.ops_per_sec(),
            n.p50_us,
            n.p99_us,
            s.ops_per_sec(),
            s.p50_us,
            s.p99_us,
            s.ops_per_sec() / n.ops_per_sec().max(f64::MIN_POSITIVE),
            if n.errors + s.errors > 0 {
                format!("  ({} native, {} s3 errors)", n.errors, s.errors)
            } else {
                String::new()
            }
        );
    }
    println!(
        "note: each S3 PUT is a namespace create, the data writes, and one atomic namespace step \
         (size, metadata, rename); the native PUT is the data write alone."
    );
    Ok(())
}

fn bench_oid(tag: u64, w: usize, seq: u64) -> Oid {
    Oid((0xb3u128 << 120) | (u128::from(tag) << 80) | ((w as u128) << 64) | u128::from(seq))
}
