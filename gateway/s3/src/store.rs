//! S3 objects as files of the uniform namespace.
//!
//! A bucket is a top-level directory; the key `a/b/c` is the file `/bucket/a/b/c` (its parent
//! directories are made as needed) and a key ending in `/` is a directory carrying a marker.
//! Each object's S3 metadata (ETag, content headers, user metadata, tags) is one extended
//! attribute, [`META_XATTR`], holding JSON; it records the size and mtime its ETag was computed
//! for, so a file changed through FUSE or NFS afterwards gets a fresh, non-MD5 ETag instead of a
//! stale one.
//!
//! Writes never show a partial object: the data goes to a hidden temporary file beside the
//! target (`.cairn-upload.*`, skipped by listings), and one atomic namespace batch then sets its
//! size, records its metadata and renames it over the key. An upload that fails or whose client
//! goes away removes its temporary file.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use cairn_client::{ClientError, FsClient, Purger};
use cairn_proto::fs::{
    DirEntryPlus, FileKind, FreedFile, FsError, Ino, InodeAttr, NsOp, NsResult, SetTime, XattrFlag,
    NAME_MAX, ROOT_INO,
};
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};
use serde::{Deserialize, Serialize};

/// The extended attribute holding an object's S3 metadata.
pub const META_XATTR: &str = "user.cairn.s3";
/// Name prefix of in-flight uploads (hidden from listings).
pub const UPLOAD_PREFIX: &str = ".cairn-upload.";
/// Top-level directory of multipart uploads (not a valid bucket name, so never listed as one).
pub const MULTIPART_DIR: &str = ".cairn-multipart";
/// Longest key S3 allows.
pub const MAX_KEY: usize = 1024;
/// Age after which a hidden upload file is taken for one a dead gateway left.
const STALE_UPLOAD_NS: i64 = 24 * 3600 * 1_000_000_000;
/// Writes in flight per upload.
const WRITE_DEPTH: usize = 4;
/// Largest write unit (a file's chunk size is at most this in practice).
const MAX_UNIT: u64 = 4 << 20;

/// An object's S3 metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjMeta {
    /// The ETag without quotes (hex MD5, or `hex-N` for a multipart upload).
    pub etag: String,
    /// Size and mtime the ETag was computed for.
    pub size: u64,
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `x-amz-meta-*` headers, names lowercased.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// Multipart uploads: the key, the owner and when it started (upload directories only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_owner: Option<String>,
}

impl ObjMeta {
    pub fn decode(b: Option<&[u8]>) -> Option<ObjMeta> {
        b.and_then(|b| serde_json::from_slice(b).ok())
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("object metadata encodes")
    }
}

/// An object as found: its file and its metadata, with the ETag valid for the file as it is.
#[derive(Clone, Debug)]
pub struct Found {
    pub attr: InodeAttr,
    pub meta: ObjMeta,
}

impl Found {
    pub fn new(attr: InodeAttr, meta: Option<ObjMeta>) -> Found {
        let mut meta = meta.unwrap_or_default();
        if meta.etag.is_empty() || meta.size != attr.size || meta.mtime_ns != attr.mtime_ns {
            // Written through FUSE or NFS (or never through S3): an ETag that changes whenever
            // the file does, in the multipart form so no client takes it for an MD5.
            meta.etag = format!(
                "{:016x}{:016x}-1",
                attr.ino,
                (attr.mtime_ns as u64) ^ attr.size.rotate_left(32)
            );
        }
        Found { attr, meta }
    }
}

/// Map a namespace error to S3's code for it.
pub fn fs_err(e: ClientError) -> S3Error {
    match e.fs() {
        Some(FsError::NotFound) => s3_error!(NoSuchKey),
        Some(FsError::NoSpace) => s3_error!(ServiceUnavailable, "the cluster is full"),
        Some(FsError::NameTooLong) => s3_error!(KeyTooLongError),
        Some(FsError::NotDir) | Some(FsError::IsDir) | Some(FsError::Exists) => s3_error!(
            InvalidArgument,
            "the key conflicts with an existing object or prefix ({e})"
        ),
        Some(FsError::FileTooBig) => s3_error!(EntityTooLarge),
        _ => {
            let mut err = S3Error::with_message(S3ErrorCode::InternalError, e.to_string());
            err.set_source(Box::new(e));
            err
        }
    }
}

/// The path components of a key, checked: S3 allows keys a file tree cannot hold (`a//b`,
/// `../x`), which are refused rather than silently renamed.
pub fn key_components(key: &str) -> S3Result<Vec<&str>> {
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "empty key"));
    }
    if key.len() > MAX_KEY {
        return Err(s3_error!(KeyTooLongError));
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    let comps: Vec<&str> = trimmed.split('/').collect();
    for c in &comps {
        if c.is_empty() || *c == "." || *c == ".." || c.contains('\0') {
            return Err(s3_error!(
                InvalidArgument,
                "key {key:?} has an empty, '.' or '..' path segment, which the file namespace cannot hold"
            ));
        }
        if c.len() > NAME_MAX {
            return Err(s3_error!(
                KeyTooLongError,
                "a path segment of the key is longer than {NAME_MAX} bytes"
            ));
        }
        if c.starts_with(UPLOAD_PREFIX) {
            return Err(s3_error!(
                InvalidArgument,
                "key segments may not start with {UPLOAD_PREFIX}"
            ));
        }
    }
    Ok(comps)
}

fn random_name() -> String {
    format!("{UPLOAD_PREFIX}{:032x}", rand::random::<u128>())
}

/// Where an upload lands.
pub struct Target {
    pub parent: Ino,
    pub name: String,
}

/// Content headers of a new object.
#[derive(Clone, Debug, Default)]
pub struct NewMeta {
    pub meta: ObjMeta,
}

/// The S3 view of the namespace.
#[derive(Clone)]
pub struct Store {
    pub fs: FsClient,
    /// Deletes the data of files removed or replaced here.
    purger: Purger,
}

impl Store {
    /// Starts the store's [`Purger`] on the current tokio runtime: it purges what this store
    /// removes; the gateway's own purger drains the rest of the queue.
    pub fn new(fs: FsClient) -> Store {
        let (purger, _worker) = Purger::start(fs.clone(), None);
        Store { fs, purger }
    }

    /// The directory of bucket `bucket`.
    pub async fn bucket(&self, bucket: &str) -> S3Result<InodeAttr> {
        match self.fs.lookup(ROOT_INO, bucket).await {
            Ok(a) if a.kind == FileKind::Dir => Ok(a),
            Ok(_) => Err(s3_error!(NoSuchBucket)),
            Err(e) if e.fs() == Some(FsError::NotFound) => Err(s3_error!(NoSuchBucket)),
            Err(e) => Err(fs_err(e)),
        }
    }

    /// Every entry of directory `ino` (all pages), with attributes and extended attribute
    /// `xattr`.
    pub async fn read_dir_all(&self, ino: Ino, xattr: Option<&str>) -> S3Result<Vec<DirEntryPlus>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self
                .fs
                .readdir_plus(ino, after.take(), cairn_proto::fs::READDIRPLUS_MAX, xattr)
                .await
                .map_err(fs_err)?;
            after = page.last().map(|e| e.name.clone());
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The object `key` of `bucket`, with its metadata (one namespace round trip when found).
    pub async fn find(&self, bucket: &str, key: &str) -> S3Result<Found> {
        let comps = key_components(key)?;
        let path = format!("/{bucket}/{}", comps.join("/"));
        let (attr, meta) = match self.fs.resolve_xattr(&path, META_XATTR).await {
            Ok((a, m)) => (a, ObjMeta::decode(m.as_deref())),
            Err(e) if matches!(e.fs(), Some(FsError::NotFound) | Some(FsError::NotDir)) => {
                self.bucket(bucket).await?;
                return Err(s3_error!(NoSuchKey));
            }
            Err(e) => return Err(fs_err(e)),
        };
        let dir_key = key.ends_with('/');
        match attr.kind {
            FileKind::File if !dir_key => Ok(Found::new(attr, meta)),
            // A directory is an object only through its marker ("key/").
            FileKind::Dir if dir_key && meta.is_some() => Ok(Found::new(attr, meta)),
            _ => Err(s3_error!(NoSuchKey)),
        }
    }

    pub async fn meta_of(&self, ino: Ino) -> S3Result<Option<ObjMeta>> {
        match self.fs.getxattr(ino, META_XATTR).await {
            Ok(v) => Ok(ObjMeta::decode(Some(&v))),
            Err(e) if e.fs() == Some(FsError::NoData) => Ok(None),
            Err(e) => Err(fs_err(e)),
        }
    }

    /// Replace the metadata of an existing object (tags, or a copy onto itself).
    pub async fn set_meta(&self, ino: Ino, meta: &ObjMeta) -> S3Result<()> {
        self.fs
            .setxattr(ino, META_XATTR, meta.encode(), XattrFlag::Either)
            .await
            .map_err(fs_err)
    }

    /// The directory a key lives in (made, with its parents, when `create`), and its name.
    pub async fn target(&self, bucket: &str, key: &str, create: bool) -> S3Result<Target> {
        let comps = key_components(key)?;
        let (name, dirs) = comps.split_last().expect("key has a component");
        let path = if dirs.is_empty() {
            format!("/{bucket}")
        } else {
            format!("/{bucket}/{}", dirs.join("/"))
        };
        // One round trip in the common case: the parent exists.
        match self.fs.resolve(&path, true).await {
            Ok(a) if a.kind == FileKind::Dir => {
                return Ok(Target {
                    parent: a.ino,
                    name: name.to_string(),
                })
            }
            Ok(_) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "a prefix of the key is an object, so the key cannot be a file below it"
                ))
            }
            Err(e) if matches!(e.fs(), Some(FsError::NotFound) | Some(FsError::NotDir)) => {}
            Err(e) => return Err(fs_err(e)),
        }
        let mut parent = self.bucket(bucket).await?.ino;
        if !create {
            return Err(s3_error!(NoSuchKey));
        }
        for d in dirs {
            parent = self.mkdir(parent, d).await?;
        }
        Ok(Target {
            parent,
            name: name.to_string(),
        })
    }

    /// Directory `name` of `parent`, made if missing.
    async fn mkdir(&self, parent: Ino, name: &str) -> S3Result<Ino> {
        match self
            .fs
            .mknod(parent, name, FileKind::Dir, 0o755, 0, 0, true)
            .await
        {
            Ok((a, _)) => Ok(a.ino),
            Err(e) if e.fs() == Some(FsError::Exists) => {
                let a = self.fs.lookup(parent, name).await.map_err(fs_err)?;
                if a.kind == FileKind::Dir {
                    Ok(a.ino)
                } else {
                    Err(s3_error!(
                        InvalidArgument,
                        "a prefix of the key is an object, so the key cannot be a file below it"
                    ))
                }
            }
            Err(e) => Err(fs_err(e)),
        }
    }

    /// Make a directory marker (`key/`), with metadata.
    pub async fn put_dir_marker(
        &self,
        bucket: &str,
        key: &str,
        mut meta: ObjMeta,
    ) -> S3Result<String> {
        let t = self.target(bucket, key, true).await?;
        let ino = self.mkdir(t.parent, &t.name).await?;
        let attr = self.fs.getattr(ino).await.map_err(fs_err)?;
        meta.etag = hex::encode(Md5::digest(b""));
        meta.size = attr.size;
        meta.mtime_ns = attr.mtime_ns;
        self.set_meta(ino, &meta).await?;
        Ok(meta.etag)
    }

    /// Write a stream to a new hidden file in `parent`: the file, its size and its MD5. On any
    /// error (including the stream's) the file is removed.
    pub async fn upload<S, E>(
        &self,
        parent: Ino,
        body: S,
    ) -> S3Result<(String, InodeAttr, u64, [u8; 16])>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = random_name();
        let (attr, _) = self
            .fs
            .mknod(parent, &tmp, FileKind::File, 0o644, 0, 0, true)
            .await
            .map_err(fs_err)?;
        match self.fill(&attr, body).await {
            Ok((size, md5)) => Ok((tmp, attr, size, md5)),
            Err(e) => {
                self.discard(parent, &tmp).await;
                Err(e)
            }
        }
    }

    async fn fill<S, E>(&self, attr: &InodeAttr, mut body: S) -> S3Result<(u64, [u8; 16])>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let unit = u64::from(attr.chunk_size).clamp(64 << 10, MAX_UNIT) as usize;
        let mut md5 = Md5::new();
        let mut buf = BytesMut::with_capacity(unit);
        let mut offset = 0u64;
        let mut inflight = FuturesOrdered::new();
        let write = |at: u64, data: Bytes| {
            let fs = self.fs.clone();
            let a = attr.clone();
            async move { fs.write(&a, at, data).await }
        };
        loop {
            let chunk = match body.next().await {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    let msg = e.to_string();
                    return Err(if msg.contains("SignatureMismatch") {
                        s3_error!(
                            SignatureDoesNotMatch,
                            "a chunk of the body fails its signature"
                        )
                    } else {
                        s3_error!(IncompleteBody, "the request body ended early: {msg}")
                    });
                }
                None => None,
            };
            let done = chunk.is_none();
            if let Some(c) = chunk {
                md5.update(&c);
                let mut c = c;
                while !c.is_empty() {
                    let take = (unit - buf.len()).min(c.len());
                    buf.extend_from_slice(&c.split_to(take));
                    if buf.len() == unit {
                        let data = buf.split().freeze();
                        let at = offset;
                        offset += data.len() as u64;
                        inflight.push_back(write(at, data));
                    }
                }
            }
            if done && !buf.is_empty() {
                let data = buf.split().freeze();
                let at = offset;
                offset += data.len() as u64;
                inflight.push_back(write(at, data));
            }
            while inflight.len() > WRITE_DEPTH || (done && !inflight.is_empty()) {
                if let Some(r) = inflight.next().await {
                    r.map_err(fs_err)?;
                }
            }
            if done {
                return Ok((offset, md5.finalize().into()));
            }
        }
    }

    /// Remove a temporary file and its data, logging (not returning) failures: the caller is
    /// already reporting an error.
    pub async fn discard(&self, parent: Ino, name: &str) {
        match self.fs.unlink(parent, name).await {
            Ok(Some(f)) => self.free(f),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, name, "could not remove a failed upload"),
        }
    }

    /// Delete the data of a file the namespace put on the purge queue, in the background.
    pub fn free(&self, f: FreedFile) {
        self.purger.push(f);
    }

    /// Give the hidden file `tmp` of `t.parent` its size and metadata and move it over
    /// `t.name`, in one namespace step. Returns the object's mtime.
    pub async fn commit(
        &self,
        t: &Target,
        tmp: &str,
        attr: &InodeAttr,
        size: u64,
        mut meta: ObjMeta,
    ) -> S3Result<i64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        meta.size = size;
        meta.mtime_ns = now;
        let ops = vec![
            NsOp::SetAttr {
                ino: attr.ino,
                mode: None,
                uid: None,
                gid: None,
                size: Some(size),
                atime: Some(SetTime::At(now)),
                mtime: Some(SetTime::At(now)),
            },
            NsOp::SetXattr {
                ino: attr.ino,
                name: META_XATTR.into(),
                value: meta.encode(),
                flags: XattrFlag::Either,
            },
            NsOp::Rename {
                parent: t.parent,
                name: tmp.to_string(),
                new_parent: t.parent,
                new_name: t.name.clone(),
                noreplace: false,
                exchange: false,
            },
        ];
        match self.fs.apply(NsOp::Batch(ops)).await {
            Ok(NsResult::Batch(rs)) => {
                if let Some(NsResult::Renamed {
                    replaced_freed: Some(f),
                }) = rs.last()
                {
                    self.free(*f);
                }
                Ok(now)
            }
            Ok(other) => {
                self.discard(t.parent, tmp).await;
                Err(s3_error!(
                    InternalError,
                    "unexpected namespace reply {other:?}"
                ))
            }
            Err(e) => {
                self.discard(t.parent, tmp).await;
                Err(fs_err(e))
            }
        }
    }

    /// Store a whole object: stream to a hidden file, then commit it over the key.
    pub async fn put<S, E>(
        &self,
        bucket: &str,
        key: &str,
        body: S,
        meta: ObjMeta,
    ) -> S3Result<(ObjMeta, u64)>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let t = self.target(bucket, key, true).await?;
        let (tmp, attr, size, md5) = self.upload(t.parent, body).await?;
        let mut meta = meta;
        meta.etag = hex::encode(md5);
        let mtime = self.commit(&t, &tmp, &attr, size, meta.clone()).await?;
        meta.size = size;
        meta.mtime_ns = mtime;
        Ok((meta, size))
    }

    /// A stream of bytes `start..end` of a file, read a unit at a time, two units ahead.
    pub fn read_stream(
        &self,
        attr: InodeAttr,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, S3Error>> + Send + Sync + 'static {
        let unit = u64::from(attr.chunk_size).clamp(64 << 10, MAX_UNIT);
        let fs = self.fs.clone();
        let mut pieces = Vec::new();
        let mut at = start;
        while at < end {
            let next = ((at / unit) + 1) * unit;
            let stop = next.min(end);
            pieces.push((at, stop - at));
            at = stop;
        }
        let s = futures::stream::iter(pieces)
            .map(move |(off, len)| {
                let fs = fs.clone();
                let attr = attr.clone();
                async move {
                    let b = fs.read(&attr, off, len).await.map_err(fs_err)?;
                    if (b.len() as u64) < len {
                        // The file shrank under us (a FUSE truncate): say so rather than send
                        // fewer bytes than Content-Length promised.
                        return Err(s3_error!(
                            InternalError,
                            "the object changed while it was read"
                        ));
                    }
                    Ok(b)
                }
            })
            .buffered(2);
        sync_wrapper::SyncStream::new(s)
    }

    /// Remove an object; empty directories left above it go too (S3 has no empty prefixes),
    /// up to the bucket. A missing key is not an error.
    pub async fn delete(&self, bucket: &str, key: &str) -> S3Result<()> {
        let comps = key_components(key)?;
        let t = match self.target(bucket, key, false).await {
            Ok(t) => t,
            Err(e) if *e.code() == S3ErrorCode::NoSuchKey => return Ok(()),
            Err(e) => return Err(e),
        };
        if key.ends_with('/') {
            match self.fs.lookup(t.parent, &t.name).await {
                Ok(a) if a.kind == FileKind::Dir => {
                    match self.fs.removexattr(a.ino, META_XATTR).await {
                        Ok(()) => {}
                        Err(e) if e.fs() == Some(FsError::NoData) => {}
                        Err(e) => return Err(fs_err(e)),
                    }
                    match self.fs.rmdir(t.parent, &t.name).await {
                        Ok(()) => {}
                        Err(e) if e.fs() == Some(FsError::NotEmpty) => return Ok(()),
                        Err(e) if e.fs() == Some(FsError::NotFound) => return Ok(()),
                        Err(e) => return Err(fs_err(e)),
                    }
                }
                Ok(_) => return Ok(()),
                Err(e) if e.fs() == Some(FsError::NotFound) => return Ok(()),
                Err(e) => return Err(fs_err(e)),
            }
        } else {
            match self.fs.lookup(t.parent, &t.name).await {
                Ok(a) if a.kind != FileKind::Dir => match self.fs.unlink(t.parent, &t.name).await {
                    Ok(Some(f)) => self.free(f),
                    Ok(None) => {}
                    Err(e) if e.fs() == Some(FsError::NotFound) => return Ok(()),
                    Err(e) => return Err(fs_err(e)),
                },
                Ok(_) => return Ok(()),
                Err(e) if e.fs() == Some(FsError::NotFound) => return Ok(()),
                Err(e) => return Err(fs_err(e)),
            }
        }
        self.prune(bucket, &comps[..comps.len() - 1]).await;
        Ok(())
    }

    /// Remove the empty, unmarked directories `bucket/dirs[..i]`, deepest first.
    async fn prune(&self, bucket: &str, dirs: &[&str]) {
        for i in (1..=dirs.len()).rev() {
            let parent_path = format!("/{bucket}/{}", dirs[..i - 1].join("/"));
            let Ok(parent) = self.fs.resolve(&parent_path, true).await else {
                return;
            };
            let Ok(dir) = self.fs.lookup(parent.ino, dirs[i - 1]).await else {
                return;
            };
            if matches!(self.meta_of(dir.ino).await, Ok(Some(_)) | Err(_)) {
                return; // a directory marker is an object of its own
            }
            if self.fs.rmdir(parent.ino, dirs[i - 1]).await.is_err() {
                return; // not empty (or raced): stop here
            }
        }
    }
}

/// An entry of a listing.
#[derive(Clone, Debug)]
pub enum Listed {
    Object { key: String, found: Box<Found> },
    Prefix(String),
}

impl Listed {
    pub fn key(&self) -> &str {
        match self {
            Listed::Object { key, .. } => key,
            Listed::Prefix(p) => p,
        }
    }
}

/// A directory's entries in key order: a directory `d` sorts as `d/`, as its keys do.
async fn sorted_entries(
    store: &Store,
    ino: Ino,
) -> S3Result<Vec<(String, InodeAttr, Option<ObjMeta>)>> {
    let mut out = Vec::new();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    for e in store.read_dir_all(ino, Some(META_XATTR)).await? {
        if e.name.starts_with(UPLOAD_PREFIX) {
            // Left by a gateway that died mid-upload: swept once it is a day old (no live
            // upload takes that long; data writes do not touch the file's times).
            if now_ns.saturating_sub(e.attr.ctime_ns) > STALE_UPLOAD_NS {
                let (store, name) = (store.clone(), e.name.clone());
                tokio::spawn(async move { store.discard(ino, &name).await });
            }
            continue;
        }
        let sort = match e.attr.kind {
            FileKind::Dir => format!("{}/", e.name),
            FileKind::File => e.name,
            FileKind::Symlink => continue,
        };
        out.push((sort, e.attr, ObjMeta::decode(e.xattr.as_deref())));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

impl Store {
    /// Up to `max` entries of `bucket` in key order: keys starting with `prefix`, after
    /// `after`, with keys sharing a prefix up to `delimiter` rolled into one [`Listed::Prefix`].
    /// Returns the entries and whether more follow.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> S3Result<(Vec<Listed>, bool)> {
        let root = self.bucket(bucket).await?;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        // Start in the deepest directory the prefix names whole.
        let dir_part = &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)];
        let start = if dir_part.is_empty() {
            root.ino
        } else {
            let comps: Vec<&str> = dir_part.trim_end_matches('/').split('/').collect();
            if comps
                .iter()
                .any(|c| c.is_empty() || *c == "." || *c == "..")
            {
                return Ok((Vec::new(), false));
            }
            match self
                .fs
                .resolve(&format!("/{bucket}/{}", comps.join("/")), true)
                .await
            {
                Ok(a) if a.kind == FileKind::Dir => a.ino,
                Ok(_) => return Ok((Vec::new(), false)),
                Err(e) if matches!(e.fs(), Some(FsError::NotFound) | Some(FsError::NotDir)) => {
                    return Ok((Vec::new(), false))
                }
                Err(e) => return Err(fs_err(e)),
            }
        };
        let mut out: Vec<Listed> = Vec::new();
        // Depth-first, each directory's entries in key order.
        let mut stack: Vec<std::vec::IntoIter<(String, InodeAttr, Option<ObjMeta>)>> =
            vec![sorted_entries(self, start).await?.into_iter()];
        let mut bases: Vec<String> = vec![dir_part.to_string()];
        while let Some(top) = stack.last_mut() {
            let Some((name, attr, meta)) = top.next() else {
                stack.pop();
                bases.pop();
                continue;
            };
            let base = bases.last().expect("a base per level");
            let key = format!("{base}{name}");
            let is_dir = attr.kind == FileKind::Dir;
            // Outside the prefix: skip (only the first level can hold such names).
            if !(key.starts_with(prefix) || is_dir && prefix.starts_with(&key)) {
                continue;
            }
            if let Some(a) = after {
                let below = a.starts_with(&key) && is_dir;
                if key.as_str() <= a && !below {
                    continue;
                }
            }
            if let Some(d) = delimiter {
                if key.len() > prefix.len() {
                    if let Some(i) = key[prefix.len()..].find(d) {
                        let cp = &key[..prefix.len() + i + d.len()];
                        let skip = after.is_some_and(|a| cp <= a)
                            || out.last().is_some_and(|l| l.key() == cp);
                        if !skip {
                            if out.len() == max {
                                return Ok((out, true));
                            }
                            out.push(Listed::Prefix(cp.to_string()));
                        }
                        // A file is the prefix's; so is a whole directory (its keys all start
                        // with the directory's, hence with the prefix).
                        continue;
                    }
                }
            }
            if is_dir {
                // The marker object "d/" comes before the directory's contents.
                if meta.is_some()
                    && key.starts_with(prefix)
                    && after.is_none_or(|a| key.as_str() > a)
                {
                    if out.len() == max {
                        return Ok((out, true));
                    }
                    out.push(Listed::Object {
                        key: key.clone(),
                        found: Box::new(Found::new(attr.clone(), meta)),
                    });
                }
                stack.push(sorted_entries(self, attr.ino).await?.into_iter());
                bases.push(key);
            } else {
                if out.len() == max {
                    return Ok((out, true));
                }
                out.push(Listed::Object {
                    key,
                    found: Box::new(Found::new(attr, meta)),
                });
            }
        }
        Ok((out, false))
    }
}
