//! cairn-s3: the S3-compatible HTTP API over the uniform namespace.
//!
//! [`s3s`] parses requests, checks AWS Signature V4 (headers, presigned URLs, aws-chunked
//! payloads, clock skew) and writes S3's XML answers and errors; this crate supplies the rest.
//! A request flows top to bottom:
//!
//! ```text
//!  TCP ──> server    accept loop, connection cap (Semaphore), optional TLS, header timeout,
//!            │       path-style and virtual-host-style (`bucket.DOMAIN`) buckets, shutdown
//!            └─> s3s  SigV4 ──> auth::Users (access keys from the metadata service's user
//!                  │            database, cached) ──> auth::Access (bucket policies)
//!                  └─> service::CairnS3 (`s3s::S3`), one file per family:
//!                        ├─ service::bucket     buckets and their ACLs
//!                        ├─ service::object     objects, copies, listings, tags
//!                        └─ service::multipart  multipart uploads
//!                              └─> store::Store   objects as files: bucket = top-level
//!                                  directory, metadata in one xattr, writes via a hidden temp
//!                                  file and one atomic rename ──> cairn_client::FsClient
//! ```
//!
//! [`S3Options`] are the `[s3]` settings of the gateway; [`serve`] runs the server until its stop
//! signal turns true. The S3 tests drive real clients (boto3, s3cmd, rclone) against a cluster,
//! so they live in the workspace's `tests/` crate (`tests/tests/s3.rs`).

pub mod auth;
pub mod error;
pub mod server;
pub mod service;
pub mod store;

pub use error::S3ServerError;
pub use server::{bind, serve, S3Options};
