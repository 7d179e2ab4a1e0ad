//! Who a request is and what it may do: access keys looked up in the metadata service's user
//! database (cached, refreshed every few seconds and at once on an unknown key), and bucket
//! permissions from each bucket's policy.
//!
//! Signatures themselves (SigV4 in headers, presigned query strings, aws-chunked payloads, clock
//! skew) are checked by `s3s` with the secret this module hands it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::Cluster;
use cairn_proto::msg::{MetaRead, MetaRequest, MetaResponse};
use cairn_proto::user::{BucketPolicy, Grant, UserDb};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

/// How long a fetched user database is used before it is fetched again.
const TTL: Duration = Duration::from_secs(2);
/// Unknown access keys refetch at most this often (a flood of bad keys must not flood raft).
const MISS_REFETCH: Duration = Duration::from_millis(250);

struct Cached {
    db: Arc<UserDb>,
    at: Instant,
    last_miss_fetch: Option<Instant>,
}

/// The user database as this gateway last saw it.
#[derive(Clone)]
pub struct Users {
    cluster: Cluster,
    cached: Arc<Mutex<Option<Cached>>>,
    fetch: Arc<tokio::sync::Mutex<()>>,
}

impl Users {
    pub fn new(cluster: Cluster) -> Users {
        Users {
            cluster,
            cached: Arc::default(),
            fetch: Arc::default(),
        }
    }

    async fn fetch_now(&self) -> S3Result<Arc<UserDb>> {
        let _one = self.fetch.lock().await;
        let resp = self
            .cluster
            .meta()
            .call(MetaRequest::Read(MetaRead::Users))
            .await
            .map_err(|e| s3_error!(ServiceUnavailable, "metadata service: {e}"))?;
        let MetaResponse::Users(db) = resp else {
            return Err(s3_error!(InternalError, "unexpected metadata reply"));
        };
        let db = Arc::new(db);
        let mut c = self.cached.lock().expect("users lock");
        let last_miss_fetch = c.as_ref().and_then(|c| c.last_miss_fetch);
        *c = Some(Cached {
            db: db.clone(),
            at: Instant::now(),
            last_miss_fetch,
        });
        Ok(db)
    }

    /// The database, fetched when older than the TTL.
    pub async fn get(&self) -> S3Result<Arc<UserDb>> {
        {
            let c = self.cached.lock().expect("users lock");
            if let Some(c) = c.as_ref().filter(|c| c.at.elapsed() < TTL) {
                return Ok(c.db.clone());
            }
        }
        self.fetch_now().await
    }

    /// Forget the cache (after this gateway changed a policy).
    pub fn invalidate(&self) {
        *self.cached.lock().expect("users lock") = None;
    }

    /// The database, refetched if `access_key` is not in it (rate-limited).
    async fn get_with_key(&self, access_key: &str) -> S3Result<Arc<UserDb>> {
        let db = self.get().await?;
        if db.by_access_key(access_key).is_some() {
            return Ok(db);
        }
        let refetch = {
            let mut c = self.cached.lock().expect("users lock");
            match c.as_mut() {
                Some(c)
                    if c.last_miss_fetch
                        .is_some_and(|t| t.elapsed() < MISS_REFETCH) =>
                {
                    false
                }
                Some(c) => {
                    c.last_miss_fetch = Some(Instant::now());
                    true
                }
                None => true,
            }
        };
        if refetch {
            self.fetch_now().await
        } else {
            Ok(db)
        }
    }

    /// The user an access key belongs to.
    pub async fn user_of(&self, access_key: &str) -> S3Result<(String, bool)> {
        let db = self.get_with_key(access_key).await?;
        db.by_access_key(access_key)
            .map(|(u, _)| (u.name.clone(), u.admin))
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }
}

#[async_trait::async_trait]
impl S3Auth for Users {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let db = self.get_with_key(access_key).await?;
        db.by_access_key(access_key)
            .map(|(_, k)| SecretKey::from(k.secret.as_str()))
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }
}

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    /// Bucket administration (delete it, change its ACL or policy): the owner only.
    Own,
}

/// Classify an S3 operation by name.
pub fn need_of(op: &str) -> Need {
    if op.starts_with("Get") || op.starts_with("Head") || op.starts_with("List") {
        Need::Read
    } else if op == "DeleteBucket"
        || (op.contains("Bucket") && (op.starts_with("Put") || op.starts_with("Delete")))
    {
        Need::Own
    } else {
        Need::Write
    }
}

/// Whether `user` (`None`: anonymous) may do `need` in a bucket with `policy` (`None`: a
/// directory made outside S3, administrators only).
pub fn allowed(user: Option<(&str, bool)>, policy: Option<&BucketPolicy>, need: Need) -> bool {
    match user {
        Some((_, true)) => true,
        Some((name, false)) => {
            let Some(p) = policy else { return false };
            if p.owner.as_deref() == Some(name) {
                return true;
            }
            match (p.grants.get(name), need) {
                (Some(Grant::ReadWrite), Need::Read | Need::Write) => true,
                (Some(Grant::Read), Need::Read) => true,
                _ => need == Need::Read && p.public_read,
            }
        }
        None => need == Need::Read && policy.is_some_and(|p| p.public_read),
    }
}

/// The access check `s3s` runs before every operation.
#[derive(Clone)]
pub struct Access {
    pub users: Users,
    pub fs: cairn_client::FsClient,
}

/// The requesting user, stored in the request's extensions by [`Access`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: Option<String>,
    pub admin: bool,
}

impl Access {
    async fn missing(&self, bucket: &str) -> bool {
        matches!(
            self.fs.lookup(cairn_proto::fs::ROOT_INO, bucket).await,
            Err(e) if e.fs() == Some(cairn_proto::fs::FsError::NotFound)
        )
    }
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let user = match cx.credentials() {
            Some(c) => Some(self.users.user_of(&c.access_key).await?),
            None => None,
        };
        let op = cx.s3_op().name().to_string();
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        cx.extensions_mut().insert(Caller {
            user: user.as_ref().map(|u| u.0.clone()),
            admin: user.as_ref().is_some_and(|u| u.1),
        });
        match (bucket, user) {
            // ListBuckets (filtered per user) and CreateBucket need only a signature.
            (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) if op == "CreateBucket" => Ok(()),
            (None, None) => Err(s3_error!(AccessDenied, "a signed request is required")),
            (Some(b), user) => {
                let db = self.users.get().await?;
                let u = user.as_ref().map(|(n, a)| (n.as_str(), *a));
                if allowed(u, db.buckets.get(&b), need_of(&op)) {
                    Ok(())
                } else if self.missing(&b).await {
                    // S3 says NoSuchBucket whoever asks: the operation will.
                    Ok(())
                } else if u.is_none() {
                    Err(s3_error!(
                        AccessDenied,
                        "anonymous access to this bucket is not allowed"
                    ))
                } else {
                    Err(s3_error!(AccessDenied))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_follow_the_policy() {
        let p = BucketPolicy {
            owner: Some("alice".into()),
            grants: [
                ("bob".to_string(), Grant::Read),
                ("carol".to_string(), Grant::ReadWrite),
            ]
            .into(),
            public_read: false,
            created_ms: 0,
        };
        assert_eq!(need_of("GetObject"), Need::Read);
        assert_eq!(need_of("ListObjectsV2"), Need::Read);
        assert_eq!(need_of("PutObject"), Need::Write);
        assert_eq!(need_of("DeleteObjects"), Need::Write);
        assert_eq!(need_of("DeleteBucket"), Need::Own);
        assert_eq!(need_of("PutBucketAcl"), Need::Own);
        assert!(allowed(Some(("alice", false)), Some(&p), Need::Own));
        assert!(allowed(Some(("bob", false)), Some(&p), Need::Read));
        assert!(!allowed(Some(("bob", false)), Some(&p), Need::Write));
        assert!(allowed(Some(("carol", false)), Some(&p), Need::Write));
        assert!(!allowed(Some(("carol", false)), Some(&p), Need::Own));
        assert!(!allowed(Some(("dave", false)), Some(&p), Need::Read));
        assert!(allowed(Some(("dave", true)), Some(&p), Need::Own));
        assert!(!allowed(None, Some(&p), Need::Read));
        let public = BucketPolicy {
            public_read: true,
            ..p
        };
        assert!(allowed(None, Some(&public), Need::Read));
        assert!(!allowed(None, Some(&public), Need::Write));
        // A directory made outside S3: administrators only.
        assert!(!allowed(Some(("alice", false)), None, Need::Read));
        assert!(allowed(Some(("root", true)), None, Need::Write));
    }
}
