//! Multipart uploads: each upload is a directory `/.cairn-multipart/UPLOAD_ID` carrying the
//! upload's bucket, key and owner, each part a file in it. Completing an upload streams the
//! chosen parts in order into the object, written like any PUT (a temporary file, then one
//! atomic rename), and removes the upload directory.

use super::*;

impl CairnS3 {
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

    pub(super) async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let c = caller(&req);
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        crate::store::key_components(&input.key)?;
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

    pub(super) async fn upload_part(
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

    pub(super) async fn upload_part_copy(
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

    pub(super) async fn complete_multipart_upload(
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

    pub(super) async fn abort_multipart_upload(
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

    pub(super) async fn list_parts(
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

    pub(super) async fn list_multipart_uploads(
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
