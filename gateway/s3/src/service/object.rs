//! Object operations: put, get, head, delete (one or a batch) and copy objects, the v1 and v2
//! listings, and object tags.

use super::*;

impl CairnS3 {
    /// PutObject; takes `body` when it starts storing it, so a refusal before that leaves it
    /// for the caller to drain.
    async fn put_object_with(
        &self,
        input: PutObjectInput,
        body: &mut Option<StreamingBlob>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        crate::store::key_components(&input.key)?;
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

    pub(super) async fn put_object(
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
    pub(super) async fn get_object(
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

    pub(super) async fn head_object(
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

    pub(super) async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.store.delete(&req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    pub(super) async fn delete_objects(
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

    pub(super) async fn copy_object(
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

    pub(super) async fn list_objects(
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

    pub(super) async fn list_objects_v2(
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

    pub(super) async fn get_object_tagging(
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

    pub(super) async fn put_object_tagging(
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

    pub(super) async fn delete_object_tagging(
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
