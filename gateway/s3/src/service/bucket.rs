//! Bucket operations: list, create, head, locate and delete buckets, and bucket ACLs (which
//! read and write the bucket's policy in the user database).

use super::*;

impl CairnS3 {
    pub(super) async fn list_buckets(
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

    pub(super) async fn create_bucket(
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

    pub(super) async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    pub(super) async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    pub(super) async fn delete_bucket(
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

    pub(super) async fn get_bucket_acl(
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

    pub(super) async fn put_bucket_acl(
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
}
