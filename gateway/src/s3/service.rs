//! The S3 operations over [`Store`]: buckets, objects, listings, copies, multipart uploads and
//! tags. Requests reach here authenticated and authorized (see [`super::auth`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::fs::{FileKind, FsError, InodeAttr, ROOT_INO};
use cairn_proto::msg::MetaCommand;
use cairn_proto::user::{BucketPolicy, UserCommand};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use super::auth::{allowed, Caller, Need, Users};
use super::store::{
    fs_err, Found, Listed, ObjMeta, Store, Target, META_XATTR, MULTIPART_DIR, UPLOAD_PREFIX,
};

/// Smallest part of a multipart upload other than the last (S3's rule).
pub const MIN_PART: u64 = 5 << 20;
/// Largest single PUT (S3's rule).
const MAX_PUT: u64 = 5 << 30;
/// Most parts of one upload.
const MAX_PARTS: i32 = 10_000;

/// The S3 service of one gateway.
#[derive(Clone)]
pub struct CairnS3 {
    pub store: Store,
    pub users: Users,
}

fn timestamp(ns: i64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
}

fn system_time(t: &Timestamp) -> SystemTime {
    let odt: time::OffsetDateTime = t.clone().into();
    odt.into()
}

fn caller<T>(req: &S3Request<T>) -> Caller {
    req.extensions.get::<Caller>().cloned().unwrap_or(Caller {
        user: None,
        admin: false,
    })
}

/// `k=v&k2=v2` (the `x-amz-tagging` header) as tags.
fn parse_tagging(h: &str) -> S3Result<Vec<(String, String)>> {
    let tags: Vec<(String, String)> = h
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .map_err(|_| s3_error!(InvalidArgument, "bad tagging header"))
            };
            Ok((dec(k)?, dec(v)?))
        })
        .collect::<S3Result<_>>()?;
    check_tags(&tags)?;
    Ok(tags)
}

fn check_tags(tags: &[(String, String)]) -> S3Result<()> {
    if tags.len() > 10 {
        return Err(s3_error!(InvalidTag, "at most 10 tags per object"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "tag keys are 1-128 characters, values at most 256"
            ));
        }
        if !seen.insert(k) {
            return Err(s3_error!(InvalidTag, "duplicate tag key {k:?}"));
        }
    }
    Ok(())
}

/// Content headers and user metadata of a new object.
#[allow(clippy::too_many_arguments)]
fn new_meta(
    metadata: Option<Metadata>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    tagging: Option<&str>,
) -> S3Result<ObjMeta> {
    let user: BTreeMap<String, String> = metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let user_bytes: usize = user.iter().map(|(k, v)| k.len() + v.len()).sum();
    if user_bytes > 2048 {
        return Err(s3_error!(
            MetadataTooLarge,
            "user metadata is limited to 2 KB"
        ));
    }
    Ok(ObjMeta {
        content_type,
        content_encoding,
        content_disposition,
        content_language,
        cache_control,
        user,
        tags: match tagging {
            Some(t) => parse_tagging(t)?,
            None => Vec::new(),
        },
        ..ObjMeta::default()
    })
}

fn user_metadata(m: &ObjMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.clone().into_iter().collect())
}

/// Evaluate `If-Match`, `If-None-Match`, `If-Modified-Since` and `If-Unmodified-Since` as S3
/// does (RFC 9110 precedence); `get` selects 304 for a failed `If-None-Match` on reads.
fn check_conditions(
    f: &Found,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
    get: bool,
) -> S3Result<()> {
    let etag = ETag::Strong(f.meta.etag.clone());
    let mtime = UNIX_EPOCH + Duration::from_nanos(f.attr.mtime_ns.max(0) as u64);
    // HTTP dates have whole seconds.
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.value(),
    };
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(
                PreconditionFailed,
                "If-Match does not match the ETag"
            ));
        }
    } else if let Some(t) = if_unmodified_since {
        if secs(mtime) > secs(system_time(t)) {
            return Err(s3_error!(
                PreconditionFailed,
                "modified since If-Unmodified-Since"
            ));
        }
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(if get {
                s3_error!(NotModified)
            } else {
                s3_error!(PreconditionFailed, "If-None-Match matches the ETag")
            });
        }
    } else if let Some(t) = if_modified_since {
        if get && secs(mtime) <= secs(system_time(t)) {
            return Err(s3_error!(NotModified));
        }
    }
    Ok(())
}

/// `bytes=a-b` of a copy source range.
fn parse_copy_range(r: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last"
        )
    };
    let spec = r.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = a.parse().map_err(|_| bad())?;
    let last: u64 = b.parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(s3_error!(InvalidRange));
    }
    Ok((first, last + 1))
}

impl CairnS3 {
    fn can_read_source(&self, c: &Caller, db: &cairn_proto::user::UserDb, bucket: &str) -> bool {
        let u = c.user.as_deref().map(|n| (n, c.admin));
        allowed(u, db.buckets.get(bucket), Need::Read)
    }

    /// The source object of a copy, after the caller's read permission on it is checked.
    async fn copy_source(&self, c: &Caller, src: &CopySource) -> S3Result<(String, String, Found)> {
        let CopySource::Bucket { bucket, key, .. } = src else {
            return Err(s3_error!(NotImplemented, "copy sources are bucket/key"));
        };
        let db = self.users.get().await?;
        if !self.can_read_source(c, &db, bucket) {
            return Err(s3_error!(AccessDenied, "no read access to the copy source"));
        }
        let found = self.store.find(bucket, key).await?;
        Ok((bucket.to_string(), key.to_string(), found))
    }

    /// The upload directory of `upload_id`, checked against the bucket and key.
    async fn upload_dir(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<(InodeAttr, ObjMeta)> {
        if upload_id.len() != 32 || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(s3_error!(NoSuchUpload));
        }
        let path = format!("/{MULTIPART_DIR}/{upload_id}");
        let attr = match self.store.fs.resolve(&path, false).await {
            Ok(a) if a.kind == FileKind::Dir => a,
            Ok(_) => return Err(s3_error!(NoSuchUpload)),
            Err(e) if e.fs() == Some(FsError::NotFound) => return Err(s3_error!(NoSuchUpload)),
            Err(e) => return Err(fs_err(e)),
        };
        let meta = self
            .store
            .meta_of(attr.ino)
            .await?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        if meta.upload_bucket.as_deref() != Some(bucket) || meta.upload_key.as_deref() != Some(key)
        {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok((attr, meta))
    }

    /// The parts uploaded so far: number → (file, metadata).
    async fn parts(&self, dir: &InodeAttr) -> S3Result<BTreeMap<i32, (InodeAttr, ObjMeta)>> {
        let mut out = BTreeMap::new();
        for e in self.store.read_dir_all(dir.ino, Some(META_XATTR)).await? {
            let Ok(n) = e.name.parse::<i32>() else {
                continue;
            };
            if let Some(m) = ObjMeta::decode(e.xattr.as_deref()) {
                out.insert(n, (e.attr, m));
            }
        }
        Ok(out)
    }

    /// Remove an upload directory and its parts.
    async fn remove_upload(&self, dir: &InodeAttr, upload_id: &str) -> S3Result<()> {
        let mut after = None;
        loop {
            let (page, more) = self
                .store
                .fs
                .readdir(dir.ino, after.clone(), 1000)
                .await
                .map_err(fs_err)?;
            after = page.last().map(|e| e.name.clone());
            for e in page {
                self.store.discard(dir.ino, &e.name).await;
            }
            if !more {
                break;
            }
        }
        let root = self
            .store
            .fs
            .lookup(ROOT_INO, MULTIPART_DIR)
            .await
            .map_err(fs_err)?;
        match self.store.fs.rmdir(root.ino, upload_id).await {
            Ok(()) => Ok(()),
            Err(e) if e.fs() == Some(FsError::NotFound) => Err(s3_error!(NoSuchUpload)),
            Err(e) => Err(fs_err(e)),
        }
    }

    /// Store the body of part `n` of an upload.
    async fn put_part<S, E>(&self, dir: &InodeAttr, n: i32, body: S) -> S3Result<String>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !(1..=MAX_PARTS).contains(&n) {
            return Err(s3_error!(
                InvalidArgument,
                "part numbers are 1 to {MAX_PARTS}"
            ));
        }
        let t = Target {
            parent: dir.ino,
            name: format!("{n:05}"),
        };
        let (tmp, attr, size, md5) = self.store.upload(dir.ino, body).await?;
        let meta = ObjMeta {
            etag: hex::encode(md5),
            ..ObjMeta::default()
        };
        self.store
            .commit(&t, &tmp, &attr, size, meta.clone())
            .await?;
        Ok(meta.etag)
    }

    fn object_entry(key: String, f: &Found) -> Object {
        Object {
            key: Some(key),
            e_tag: Some(ETag::Strong(f.meta.etag.clone())),
            size: Some(f.attr.size as i64),
            last_modified: Some(timestamp(f.attr.mtime_ns)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        }
    }

    async fn multipart_root(&self) -> S3Result<InodeAttr> {
        match self.store.fs.lookup(ROOT_INO, MULTIPART_DIR).await {
            Ok(a) => Ok(a),
            Err(e) if e.fs() == Some(FsError::NotFound) => {
                match self
                    .store
                    .fs
                    .mknod(ROOT_INO, MULTIPART_DIR, FileKind::Dir, 0o700, 0, 0, true)
                    .await
                {
                    Ok((a, _)) => Ok(a),
                    Err(e) if e.fs() == Some(FsError::Exists) => self
                        .store
                        .fs
                        .lookup(ROOT_INO, MULTIPART_DIR)
                        .await
                        .map_err(fs_err),
                    Err(e) => Err(fs_err(e)),
                }
            }
            Err(e) => Err(fs_err(e)),
        }
    }

    async fn set_policy(&self, bucket: &str, policy: BucketPolicy) -> S3Result<()> {
        self.store
            .fs
            .cluster()
            .meta()
            .command(MetaCommand::User(UserCommand::SetBucketPolicy {
                bucket: bucket.to_string(),
                policy,
            }))
            .await
            .map_err(|e| s3_error!(InternalError, "recording the bucket policy: {e}"))?;
        self.users.invalidate();
        Ok(())
    }
}

impl CairnS3 {
    /// PutObject; takes `body` when it starts storing it, so a refusal before that leaves it
    /// for the caller to drain.
    async fn put_object_with(
        &self,
        input: PutObjectInput,
        body: &mut Option<StreamingBlob>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        super::store::key_components(&input.key)?;
        let meta = new_meta(
            input.metadata,
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.tagging.as_deref(),
        )?;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            match self.store.find(&input.bucket, &input.key).await {
                Ok(f) => check_conditions(
                    &f,
                    input.if_match.as_ref(),
                    input.if_none_match.as_ref(),
                    None,
                    None,
                    false,
                )?,
                Err(e) if *e.code() == S3ErrorCode::NoSuchKey => {
                    if input.if_match.is_some() {
                        return Err(s3_error!(NoSuchKey));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if input.key.ends_with('/') {
            if input.content_length.unwrap_or(0) > 0 {
                return Err(s3_error!(
                    InvalidArgument,
                    "a key ending in '/' names a directory and takes no data"
                ));
            }
            let etag = self
                .store
                .put_dir_marker(&input.bucket, &input.key, meta)
                .await?;
            return Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(etag)),
                ..Default::default()
            }));
        }
        if input.content_length.is_some_and(|l| l as u64 > MAX_PUT) {
            return Err(s3_error!(
                EntityTooLarge,
                "a single PUT is at most 5 GiB: use a multipart upload"
            ));
        }
        let body = body.take().ok_or_else(|| s3_error!(IncompleteBody))?;
        let expected_md5 = match input.content_md5 {
            Some(m) => Some(
                base64_simd::STANDARD
                    .decode_to_vec(m.as_bytes())
                    .map_err(|_| s3_error!(InvalidDigest))?,
            ),
            None => None,
        };
        let (meta, size) = self
            .store
            .put(&input.bucket, &input.key, body, meta)
            .await?;
        if let Some(len) = input.content_length {
            if len as u64 != size {
                let _ = self.store.delete(&input.bucket, &input.key).await;
                return Err(s3_error!(IncompleteBody));
            }
        }
        if let Some(want) = expected_md5 {
            if hex::encode(want) != meta.etag {
                let _ = self.store.delete(&input.bucket, &input.key).await;
                return Err(s3_error!(BadDigest));
            }
        }
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(meta.etag)),
            ..Default::default()
        }))
    }
}

#[async_trait::async_trait]
impl S3 for CairnS3 {
    // ------------------------------------------------------------------ buckets

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let c = caller(&req);
        let db = self.users.get().await?;
        let mut buckets = Vec::new();
        for e in self.store.read_dir_all(ROOT_INO, None).await? {
            if e.attr.kind != FileKind::Dir
                || cairn_proto::user::validate_bucket_name(&e.name).is_err()
                || !self.can_read_source(&c, &db, &e.name)
            {
                continue;
            }
            let created = db
                .buckets
                .get(&e.name)
                .map_or(e.attr.ctime_ns, |p| p.created_ms as i64 * 1_000_000);
            buckets.push(Bucket {
                name: Some(e.name),
                creation_date: Some(timestamp(created)),
                bucket_region: None,
            });
        }
        let owner = c.user.map(|u| Owner {
            display_name: Some(u.clone()),
            id: Some(u),
        });
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner,
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let c = caller(&req);
        let Some(user) = c.user.clone() else {
            return Err(s3_error!(AccessDenied));
        };
        let bucket = req.input.bucket;
        cairn_proto::user::validate_bucket_name(&bucket)
            .map_err(|e| s3_error!(InvalidBucketName, "{e}"))?;
        match self
            .store
            .fs
            .mknod(ROOT_INO, &bucket, FileKind::Dir, 0o755, 0, 0, true)
            .await
        {
            Ok(_) => {}
            Err(e) if e.fs() == Some(FsError::Exists) => {
                let db = self.users.get().await?;
                let mine = db
                    .buckets
                    .get(&bucket)
                    .is_some_and(|p| p.owner.as_deref() == Some(user.as_str()));
                return Err(if mine {
                    s3_error!(BucketAlreadyOwnedByYou)
                } else {
                    s3_error!(BucketAlreadyExists)
                });
            }
            Err(e) => return Err(fs_err(e)),
        }
        let public_read = req.input.acl.as_ref().is_some_and(|a| {
            a.as_str() == BucketCannedACL::PUBLIC_READ
                || a.as_str() == BucketCannedACL::PUBLIC_READ_WRITE
        });
        let policy = BucketPolicy {
            owner: Some(user),
            public_read,
            ..BucketPolicy::default()
        };
        if let Err(e) = self.set_policy(&bucket, policy).await {
            let _ = self.store.fs.rmdir(ROOT_INO, &bucket).await;
            return Err(e);
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        let dir = self.store.bucket(&bucket).await?;
        // Uploads that died with a gateway leave hidden files: they do not keep a bucket alive.
        let (entries, _) = self
            .store
            .fs
            .readdir(dir.ino, None, 100)
            .await
            .map_err(fs_err)?;
        if entries.iter().any(|e| !e.name.starts_with(UPLOAD_PREFIX)) {
            return Err(s3_error!(BucketNotEmpty));
        }
        for e in entries {
            self.store.discard(dir.ino, &e.name).await;
        }
        match self.store.fs.rmdir(ROOT_INO, &bucket).await {
            Ok(()) => {}
            Err(e) if e.fs() == Some(FsError::NotEmpty) => return Err(s3_error!(BucketNotEmpty)),
            Err(e) if e.fs() == Some(FsError::NotFound) => return Err(s3_error!(NoSuchBucket)),
            Err(e) => return Err(fs_err(e)),
        }
        self.store
            .fs
            .cluster()
            .meta()
            .command(MetaCommand::User(UserCommand::RemoveBucketPolicy {
                bucket,
            }))
            .await
            .map_err(|e| s3_error!(InternalError, "removing the bucket policy: {e}"))?;
        self.users.invalidate();
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let bucket = req.input.bucket;
        self.store.bucket(&bucket).await?;
        let db = self.users.get().await?;
        let policy = db.buckets.get(&bucket).cloned().unwrap_or_default();
        let grantee = |id: &str| Grantee {
            id: Some(id.to_string()),
            display_name: Some(id.to_string()),
            type_: Type::from_static(Type::CANONICAL_USER),
            email_address: None,
            uri: None,
        };
        let mut grants = Vec::new();
        if let Some(o) = &policy.owner {
            grants.push(Grant {
                grantee: Some(grantee(o)),
                permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
            });
        }
        for (u, g) in &policy.grants {
            let perms: &[&'static str] = match g {
                cairn_proto::user::Grant::Read => &[Permission::READ],
                cairn_proto::user::Grant::ReadWrite => &[Permission::READ, Permission::WRITE],
            };
            for p in perms {
                grants.push(Grant {
                    grantee: Some(grantee(u)),
                    permission: Some(Permission::from_static(p)),
                });
            }
        }
        if policy.public_read {
            grants.push(Grant {
                grantee: Some(Grantee {
                    uri: Some("http://acs.amazonaws.com/groups/global/AllUsers".into()),
                    type_: Type::from_static(Type::GROUP),
                    display_name: None,
                    email_address: None,
                    id: None,
                }),
                permission: Some(Permission::from_static(Permission::READ)),
            });
        }
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(grants),
            owner: policy.owner.map(|o| Owner {
                display_name: Some(o.clone()),
                id: Some(o),
            }),
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let bucket = req.input.bucket;
        self.store.bucket(&bucket).await?;
        let public = match req.input.acl.as_ref().map(|a| a.as_str()) {
            Some(BucketCannedACL::PRIVATE) => false,
            Some(BucketCannedACL::PUBLIC_READ) => true,
            _ => {
                return Err(s3_error!(
                    NotImplemented,
                    "only the canned ACLs private and public-read are supported; grant users with `cairn bucket allow`"
                ))
            }
        };
        let db = self.users.get().await?;
        let mut policy = db.buckets.get(&bucket).cloned().unwrap_or_default();
        policy.public_read = public;
        self.set_policy(&bucket, policy).await?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    // ------------------------------------------------------------------ objects

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let mut input = req.input;
        let mut body = input.body.take();
        let len = input.content_length;
        let r = self.put_object_with(input, &mut body).await;
        if r.is_err() {
            // A request refused before its body was read: read a small body before answering,
            // so the connection stays in step for the client's next request instead of taking
            // the unread body for one.
            drain(body, len).await;
        }
        r
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let f = self.store.find(&input.bucket, &input.key).await?;
        check_conditions(
            &f,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
            true,
        )?;
        let size = f.attr.size;
        let (range, content_range) = match &input.range {
            None => (0..size, None),
            Some(r) => {
                let rg = r.check(size).map_err(|_| {
                    let mut e = s3_error!(InvalidRange);
                    e.set_message(format!(
                        "the range is not satisfiable for an object of {size} bytes"
                    ));
                    e
                })?;
                let cr = format!("bytes {}-{}/{}", rg.start, rg.end - 1, size);
                (rg, Some(cr))
            }
        };
        let body = if f.attr.kind == FileKind::File && range.end > range.start {
            let stream = self
                .store
                .read_stream(f.attr.clone(), range.start, range.end);
            Some(StreamingBlob::wrap(stream))
        } else {
            Some(StreamingBlob::wrap(futures::stream::empty::<
                Result<bytes::Bytes, s3s::S3Error>,
            >()))
        };
        let m = &f.meta;
        Ok(S3Response::new(GetObjectOutput {
            body,
            content_length: Some((range.end - range.start) as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(f.attr.mtime_ns)),
            e_tag: Some(ETag::Strong(m.etag.clone())),
            metadata: user_metadata(m),
            content_type: m.content_type.clone(),
            content_encoding: m.content_encoding.clone(),
            content_disposition: m.content_disposition.clone(),
            content_language: m.content_language.clone(),
            cache_control: m.cache_control.clone(),
            tag_count: (!m.tags.is_empty()).then_some(m.tags.len() as i32),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let f = self.store.find(&input.bucket, &input.key).await?;
        check_conditions(
            &f,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
            true,
        )?;
        let m = &f.meta;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(f.attr.size as i64),
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(f.attr.mtime_ns)),
            e_tag: Some(ETag::Strong(m.etag.clone())),
            metadata: user_metadata(m),
            content_type: m.content_type.clone(),
            content_encoding: m.content_encoding.clone(),
            content_disposition: m.content_disposition.clone(),
            content_language: m.content_language.clone(),
            cache_control: m.cache_control.clone(),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.store.delete(&req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in input.delete.objects {
            match self.store.delete(&input.bucket, &o.key).await {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        })
                    }
                }
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(o.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let c = caller(&req);
        let input = req.input;
        let (sb, sk, src) = self.copy_source(&c, &input.copy_source).await?;
        check_conditions(
            &src,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            false,
        )?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let replace_tags = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        let mut meta = if replace {
            new_meta(
                input.metadata,
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                None,
            )?
        } else {
            ObjMeta {
                etag: String::new(),
                tags: Vec::new(),
                ..src.meta.clone()
            }
        };
        meta.tags = if replace_tags {
            match input.tagging.as_deref() {
                Some(t) => parse_tagging(t)?,
                None => Vec::new(),
            }
        } else {
            src.meta.tags.clone()
        };
        if sb == input.bucket && sk == input.key {
            if !replace && !replace_tags {
                return Err(s3_error!(
                    InvalidRequest,
                    "copying an object onto itself needs a metadata or tagging directive of REPLACE"
                ));
            }
            // In place: only the metadata changes.
            let mut m = meta;
            m.etag = src.meta.etag.clone();
            m.size = src.attr.size;
            m.mtime_ns = src.attr.mtime_ns;
            self.store.set_meta(src.attr.ino, &m).await?;
            return Ok(S3Response::new(CopyObjectOutput {
                copy_object_result: Some(CopyObjectResult {
                    e_tag: Some(ETag::Strong(m.etag)),
                    last_modified: Some(timestamp(src.attr.mtime_ns)),
                    ..Default::default()
                }),
                ..Default::default()
            }));
        }
        let stream = self.store.read_stream(src.attr.clone(), 0, src.attr.size);
        let (meta, _) = self
            .store
            .put(&input.bucket, &input.key, Box::pin(stream), meta)
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(meta.etag)),
                last_modified: Some(timestamp(meta.mtime_ns)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    // ------------------------------------------------------------------ listings

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let (entries, truncated) = self
            .store
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                input.marker.as_deref(),
                max,
            )
            .await?;
        let next_marker = if truncated && input.delimiter.is_some() {
            entries.last().map(|e| e.key().to_string())
        } else {
            None
        };
        let (contents, prefixes) = split_listing(entries);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            marker: input.marker,
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            delimiter: input.delimiter,
            next_marker,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => Some(
                String::from_utf8(
                    hex::decode(t)
                        .map_err(|_| s3_error!(InvalidArgument, "bad continuation token"))?,
                )
                .map_err(|_| s3_error!(InvalidArgument, "bad continuation token"))?,
            ),
            (None, Some(s)) => Some(s.clone()),
            (None, None) => None,
        };
        let (entries, truncated) = self
            .store
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                after.as_deref(),
                max,
            )
            .await?;
        let next = if truncated {
            entries.last().map(|e| hex::encode(e.key()))
        } else {
            None
        };
        let key_count = entries.len() as i32;
        let (contents, prefixes) = split_listing(entries);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            is_truncated: Some(truncated),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            delimiter: input.delimiter,
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            start_after: input.start_after,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    // ------------------------------------------------------------------ tags

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let f = self.store.find(&req.input.bucket, &req.input.key).await?;
        let tag_set = f
            .meta
            .tags
            .iter()
            .map(|(k, v)| Tag {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect();
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set,
            version_id: None,
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let input = req.input;
        let f = self.store.find(&input.bucket, &input.key).await?;
        let tags: Vec<(String, String)> = input
            .tagging
            .tag_set
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
            .collect();
        check_tags(&tags)?;
        let mut m = f.meta;
        m.tags = tags;
        // Keep the ETag valid for the unchanged data.
        m.size = f.attr.size;
        m.mtime_ns = f.attr.mtime_ns;
        self.store.set_meta(f.attr.ino, &m).await?;
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let f = self.store.find(&req.input.bucket, &req.input.key).await?;
        let mut m = f.meta;
        m.tags.clear();
        m.size = f.attr.size;
        m.mtime_ns = f.attr.mtime_ns;
        self.store.set_meta(f.attr.ino, &m).await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }

    // ------------------------------------------------------------------ multipart

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let c = caller(&req);
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        super::store::key_components(&input.key)?;
        let mut meta = new_meta(
            input.metadata,
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.tagging.as_deref(),
        )?;
        meta.upload_bucket = Some(input.bucket.clone());
        meta.upload_key = Some(input.key.clone());
        meta.upload_owner = c.user;
        let root = self.multipart_root().await?;
        let upload_id = format!("{:032x}", rand::random::<u128>());
        let (dir, _) = self
            .store
            .fs
            .mknod(root.ino, &upload_id, FileKind::Dir, 0o700, 0, 0, true)
            .await
            .map_err(fs_err)?;
        meta.mtime_ns = dir.ctime_ns;
        self.store.set_meta(dir.ino, &meta).await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let mut input = req.input;
        let dir = match self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok((dir, _)) => dir,
            Err(e) => {
                // As for PutObject: keep the connection in step.
                drain(input.body.take(), input.content_length).await;
                return Err(e);
            }
        };
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let etag = self.put_part(&dir, input.part_number, body).await?;
        if let Some(m) = input.content_md5 {
            let want = base64_simd::STANDARD
                .decode_to_vec(m.as_bytes())
                .map_err(|_| s3_error!(InvalidDigest))?;
            if hex::encode(want) != etag {
                self.store
                    .discard(dir.ino, &format!("{:05}", input.part_number))
                    .await;
                return Err(s3_error!(BadDigest));
            }
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let c = caller(&req);
        let input = req.input;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let (_, _, src) = self.copy_source(&c, &input.copy_source).await?;
        check_conditions(
            &src,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            false,
        )?;
        let (start, end) = match &input.copy_source_range {
            Some(r) => parse_copy_range(r, src.attr.size)?,
            None => (0, src.attr.size),
        };
        let stream = self.store.read_stream(src.attr.clone(), start, end);
        let etag = self
            .put_part(&dir, input.part_number, Box::pin(stream))
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let (dir, upload_meta) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let asked: Vec<CompletedPart> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if asked.is_empty() {
            return Err(s3_error!(MalformedXML, "the upload names no parts"));
        }
        let have = self.parts(&dir).await?;
        let mut chosen = Vec::with_capacity(asked.len());
        let mut last = 0;
        for p in &asked {
            let n = p
                .part_number
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no number"))?;
            if n <= last {
                return Err(s3_error!(InvalidPartOrder));
            }
            last = n;
            let (attr, m) = have
                .get(&n)
                .ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            if let Some(e) = &p.e_tag {
                if e.value() != m.etag {
                    return Err(s3_error!(InvalidPart, "part {n} has another ETag"));
                }
            }
            chosen.push((attr.clone(), m.etag.clone()));
        }
        for (attr, _) in &chosen[..chosen.len() - 1] {
            if attr.size < MIN_PART {
                return Err(s3_error!(
                    EntityTooSmall,
                    "every part but the last must be at least 5 MiB"
                ));
            }
        }
        // The object's ETag: the MD5 of the parts' MD5s, then the part count.
        let mut md5 = Md5::new();
        for (_, e) in &chosen {
            md5.update(
                hex::decode(e).map_err(|_| s3_error!(InternalError, "bad stored part ETag"))?,
            );
        }
        let etag = format!("{}-{}", hex::encode(md5.finalize()), chosen.len());
        let store = self.store.clone();
        let parts: Vec<InodeAttr> = chosen.into_iter().map(|(a, _)| a).collect();
        let stream = futures::stream::iter(parts)
            .map(move |a| store.read_stream(a.clone(), 0, a.size))
            .flatten();
        let t = self.store.target(&input.bucket, &input.key, true).await?;
        let (tmp, attr, size, _) = self.store.upload(t.parent, Box::pin(stream)).await?;
        let mut meta = ObjMeta {
            upload_bucket: None,
            upload_key: None,
            upload_owner: None,
            ..upload_meta
        };
        meta.etag = etag.clone();
        self.store.commit(&t, &tmp, &attr, size, meta).await?;
        if let Err(e) = self.remove_upload(&dir, &input.upload_id).await {
            tracing::warn!(error = %e, upload = %input.upload_id, "completed upload left parts behind");
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        self.remove_upload(&dir, &input.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let (dir, _) = self
            .upload_dir(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let marker: i32 = input.part_number_marker.unwrap_or(0).max(0);
        let all = self.parts(&dir).await?;
        let mut parts = Vec::new();
        let mut truncated = false;
        for (n, (attr, m)) in all.range(marker + 1..) {
            if parts.len() == max {
                truncated = true;
                break;
            }
            parts.push(Part {
                part_number: Some(*n),
                e_tag: Some(ETag::Strong(m.etag.clone())),
                size: Some(attr.size as i64),
                last_modified: Some(timestamp(attr.mtime_ns)),
                ..Default::default()
            });
        }
        let next = if truncated {
            parts.last().and_then(|p| p.part_number)
        } else {
            None
        };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            parts: Some(parts),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut uploads = Vec::new();
        if let Ok(root) = self.store.fs.lookup(ROOT_INO, MULTIPART_DIR).await {
            for e in self.store.read_dir_all(root.ino, Some(META_XATTR)).await? {
                let Some(m) = ObjMeta::decode(e.xattr.as_deref()) else {
                    continue;
                };
                if m.upload_bucket.as_deref() != Some(input.bucket.as_str()) {
                    continue;
                }
                let key = m.upload_key.clone().unwrap_or_default();
                if !key.starts_with(&prefix) {
                    continue;
                }
                if input
                    .key_marker
                    .as_ref()
                    .is_some_and(|km| key.as_str() <= km.as_str())
                {
                    continue;
                }
                uploads.push((key, e.name, e.attr.ctime_ns, m.upload_owner));
            }
        }
        uploads.sort();
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let next_key = if truncated {
            uploads.last().map(|u| u.0.clone())
        } else {
            None
        };
        let next_id = if truncated {
            uploads.last().map(|u| u.1.clone())
        } else {
            None
        };
        let list = uploads
            .into_iter()
            .map(|(key, id, ctime, owner)| MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(timestamp(ctime)),
                owner: owner.clone().map(|o| Owner {
                    display_name: Some(o.clone()),
                    id: Some(o),
                }),
                initiator: owner.map(|o| Initiator {
                    display_name: Some(o.clone()),
                    id: Some(o),
                }),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            uploads: Some(list),
            ..Default::default()
        }))
    }
}

/// Read and drop a request body of at most 1 MiB (a larger one is left for the connection to
/// be closed over).
async fn drain(body: Option<StreamingBlob>, len: Option<i64>) {
    if let Some(mut b) = body.filter(|_| len.unwrap_or(i64::MAX) <= 1 << 20) {
        while let Some(Ok(_)) = b.next().await {}
    }
}

/// Objects and common prefixes of a listing, each in key order.
fn split_listing(entries: Vec<Listed>) -> (Vec<Object>, Vec<CommonPrefix>) {
    let mut contents = Vec::new();
    let mut prefixes = Vec::new();
    for e in entries {
        match e {
            Listed::Object { key, found } => contents.push(CairnS3::object_entry(key, &found)),
            Listed::Prefix(p) => prefixes.push(CommonPrefix { prefix: Some(p) }),
        }
    }
    (contents, prefixes)
}
