//! The S3 operations over [`Store`]: `s3s::S3` for [`CairnS3`]. Requests reach here
//! authenticated and authorized (see [`crate::auth`]). One file per family of operations:
//!
//! - `bucket.rs`: list, create, head, locate and delete buckets; bucket ACLs (policies).
//! - `object.rs`: put, get, head, delete, batch delete and copy objects; listings (v1, v2);
//!   object tags.
//! - `multipart.rs`: create, upload parts (and part copies), complete, abort and list
//!   multipart uploads, kept under the hidden multipart directory.
//!
//! This file holds what they share: S3's size limits, request conditions, object metadata
//! and tags, copy sources, and the `impl S3` that names every operation once.

mod bucket;
mod multipart;
mod object;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::fs::{FileKind, FsError, InodeAttr, ROOT_INO};
use cairn_proto::msg::MetaCommand;
use cairn_proto::user::{BucketPolicy, UserCommand};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::auth::{allowed, Caller, Need, Users};
use crate::store::{
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

/// Read and drop a request body of at most 1 MiB (a larger one is left for the connection to
/// be closed over).
async fn drain(body: Option<StreamingBlob>, len: Option<i64>) {
    if let Some(mut b) = body.filter(|_| len.unwrap_or(i64::MAX) <= 1 << 20) {
        while let Some(Ok(_)) = b.next().await {}
    }
}

/// `impl S3 for CairnS3`: each operation is the inherent method of the same name in
/// `bucket.rs`, `object.rs` or `multipart.rs` (an inherent method wins over a trait's in method
/// resolution, so these calls are not recursive).
macro_rules! s3_ops {
    ($($op:ident: $input:ident => $output:ident,)*) => {
        #[async_trait::async_trait]
        impl S3 for CairnS3 {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    CairnS3::$op(self, req).await
                }
            )*
        }
    };
}

s3_ops! {
    // bucket.rs
    list_buckets: ListBucketsInput => ListBucketsOutput,
    create_bucket: CreateBucketInput => CreateBucketOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    get_bucket_acl: GetBucketAclInput => GetBucketAclOutput,
    put_bucket_acl: PutBucketAclInput => PutBucketAclOutput,
    // object.rs
    put_object: PutObjectInput => PutObjectOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    get_object_tagging: GetObjectTaggingInput => GetObjectTaggingOutput,
    put_object_tagging: PutObjectTaggingInput => PutObjectTaggingOutput,
    delete_object_tagging: DeleteObjectTaggingInput => DeleteObjectTaggingOutput,
    // multipart.rs
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    list_multipart_uploads: ListMultipartUploadsInput => ListMultipartUploadsOutput,
}
