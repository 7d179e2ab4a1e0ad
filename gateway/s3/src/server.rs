//! The S3 HTTP server: path-style and virtual-host-style requests (`bucket.DOMAIN`), optional
//! TLS, bounded connections and header timeouts, stopped by the caller's stop signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Cluster, FsClient};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use s3s::host::{S3Host, VirtualHost};
use s3s::service::S3ServiceBuilder;
use s3s::S3Result;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::error::S3ServerError;
use crate::{auth, service, store};

/// S3 server tunables (the `[s3]` table of the gateway's configuration).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// Domains for virtual-host-style requests: `BUCKET.DOMAIN[:port]` names the bucket. Any
    /// other host (an IP address, a name not listed) is path style.
    pub domains: Vec<String>,
    /// Most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_secs: u64,
    /// PEM certificate chain: with `tls_key`, S3 is served over HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            domains: vec!["localhost".into()],
            max_connections: 1024,
            header_timeout_secs: 30,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl S3Options {
    pub fn validate(&self) -> Result<(), S3ServerError> {
        if self.max_connections == 0 {
            return Err(S3ServerError::InvalidOption {
                field: "s3.max_connections",
                reason: "must be at least 1",
            });
        }
        if self.header_timeout_secs == 0 {
            return Err(S3ServerError::InvalidOption {
                field: "s3.header_timeout_secs",
                reason: "must be at least 1",
            });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(S3ServerError::InvalidOption {
                field: "s3.tls_cert",
                reason: "TLS needs both a certificate and its key",
            });
        }
        Ok(())
    }

    /// The TLS acceptor, when a certificate is configured.
    pub fn tls(&self) -> Result<Option<TlsAcceptor>, S3ServerError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let bad = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
            S3ServerError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("S3 TLS {what} {}: {e}", path.display()),
            ))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad("certificate", cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate", cert, &e))?;
        if certs.is_empty() {
            return Err(bad("certificate", cert, &"no certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
        let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("configuration for", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("certificate and key", cert, &e))?;
        Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
    }
}

/// Virtual-host-style bucket names from the `Host` header.
struct Hosts {
    domains: Vec<String>,
}

impl S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((n, port)) if !n.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        };
        for d in &self.domains {
            if let Some(bucket) = name
                .strip_suffix(d.as_str())
                .and_then(|b| b.strip_suffix('.'))
                .filter(|b| !b.is_empty())
            {
                return Ok(VirtualHost::new(host).with_bucket(bucket));
            }
        }
        Ok(VirtualHost::new(host))
    }
}

/// Serve S3 on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    opts: S3Options,
    mut stop: watch::Receiver<bool>,
) -> Result<(), S3ServerError> {
    let users = auth::Users::new(cluster.clone());
    let fs = FsClient::new(cluster);
    let s3 = service::CairnS3 {
        store: store::Store::new(fs.clone()),
        users: users.clone(),
    };
    let mut b = S3ServiceBuilder::new(s3);
    b.set_auth(users.clone());
    b.set_access(auth::Access { users, fs });
    b.set_host(Hosts {
        domains: opts.domains.clone(),
    });
    let service = b.build();
    let tls = opts.tls()?;
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let header_timeout = Duration::from_secs(opts.header_timeout_secs);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = stop.changed() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "S3 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let service = service.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_conn(sock, service, header_timeout, stop, peer).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(sock));
                    match handshake.await {
                        Ok(Ok(s)) => serve_conn(s, service, header_timeout, stop, peer).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "S3 TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "S3 TLS handshake timed out"),
                    }
                }
            }
        });
    }
    Ok(())
}

/// Serve HTTP/1.1 on one connection until it ends or the gateway stops.
async fn serve_conn<IO>(
    io: IO,
    service: s3s::service::S3Service,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "S3 connection ended");
            }
        }
        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
    }
}

/// Bind `addr` for S3; the bound address.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), S3ServerError> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
