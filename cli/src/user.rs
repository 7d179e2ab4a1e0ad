//! `cairn user`, `cairn key` and `cairn bucket`: S3 users, their access keys and who may use
//! which bucket.

use anyhow::{bail, Result};
use cairn_client::Cluster;
use cairn_proto::msg::{MetaCommand, MetaRead, MetaRequest, MetaResponse};
use cairn_proto::user::{BucketPolicy, Grant, UserCommand, UserDb};
use clap::Subcommand;
use rand::Rng;

use crate::util::connect;

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user and its first access key (printed once; keep the secret).
    Create {
        name: String,
        /// Administrators reach every bucket.
        #[arg(long)]
        admin: bool,
        /// Create the user without an access key.
        #[arg(long)]
        no_key: bool,
    },
    /// List users and their access key ids.
    Ls,
    /// Remove a user and its keys (its buckets keep their data and lose their owner).
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Make a new access key for a user (printed once).
    Create { user: String },
    /// Revoke an access key.
    Rm { access_key: String },
}

#[derive(Subcommand)]
pub enum BucketCmd {
    /// List buckets with a policy: owner, grants, public-read.
    Ls,
    /// Let a user read (or with --write also write) a bucket.
    Allow {
        bucket: String,
        user: String,
        #[arg(long)]
        write: bool,
    },
    /// Take a user's grant away.
    Revoke { bucket: String, user: String },
    /// Make a bucket readable by anonymous requests (`on`) or not (`off`).
    Public {
        bucket: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Give a bucket (for example a directory made through FUSE) an owner.
    Chown { bucket: String, user: String },
}

pub async fn users(cluster: &Cluster) -> Result<UserDb> {
    match cluster
        .meta()
        .call(MetaRequest::Read(MetaRead::Users))
        .await?
    {
        MetaResponse::Users(db) => Ok(db),
        other => bail!("unexpected reply {other:?}"),
    }
}

async fn command(cluster: &Cluster, c: UserCommand) -> Result<()> {
    cluster.meta().command(MetaCommand::User(c)).await?;
    Ok(())
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// A new access key id and secret.
pub fn new_key() -> (String, String) {
    let upper = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let any = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (
        format!("CK{}", random_string(18, upper)),
        random_string(40, any),
    )
}

/// Add a new key to `user`; returns it.
pub async fn add_key(cluster: &Cluster, user: &str) -> Result<(String, String)> {
    let (access_key, secret) = new_key();
    command(
        cluster,
        UserCommand::AddKey {
            user: user.to_string(),
            access_key: access_key.clone(),
            secret: secret.clone(),
        },
    )
    .await?;
    Ok((access_key, secret))
}

fn print_key(user: &str, ak: &str, secret: &str) {
    println!("user        {user}");
    println!("access key  {ak}");
    println!("secret key  {secret}");
}

pub async fn run_user(meta: Vec<String>, cmd: UserCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    match cmd {
        UserCmd::Create {
            name,
            admin,
            no_key,
        } => {
            command(
                &cluster,
                UserCommand::CreateUser {
                    name: name.clone(),
                    admin,
                },
            )
            .await?;
            if no_key {
                println!("user {name} created");
            } else {
                let (ak, sk) = add_key(&cluster, &name).await?;
                print_key(&name, &ak, &sk);
            }
        }
        UserCmd::Ls => {
            let db = users(&cluster).await?;
            println!("{:<24} {:<6} ACCESS KEYS", "USER", "ADMIN");
            for u in db.users.values() {
                let keys: Vec<&str> = u.keys.iter().map(|k| k.access_key.as_str()).collect();
                println!(
                    "{:<24} {:<6} {}",
                    u.name,
                    if u.admin { "yes" } else { "no" },
                    keys.join(",")
                );
            }
        }
        UserCmd::Rm { name } => {
            command(&cluster, UserCommand::RemoveUser { name }).await?;
            println!("done");
        }
    }
    Ok(())
}

pub async fn run_key(meta: Vec<String>, cmd: KeyCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    match cmd {
        KeyCmd::Create { user } => {
            let (ak, sk) = add_key(&cluster, &user).await?;
            print_key(&user, &ak, &sk);
        }
        KeyCmd::Rm { access_key } => {
            command(&cluster, UserCommand::RemoveKey { access_key }).await?;
            println!("done");
        }
    }
    Ok(())
}

pub async fn run_bucket(meta: Vec<String>, cmd: BucketCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    let db = users(&cluster).await?;
    let policy_of = |b: &str| db.buckets.get(b).cloned().unwrap_or_default();
    let (bucket, policy): (String, BucketPolicy) = match cmd {
        BucketCmd::Ls => {
            println!("{:<32} {:<16} {:<7} GRANTS", "BUCKET", "OWNER", "PUBLIC");
            for (b, p) in &db.buckets {
                let grants: Vec<String> = p
                    .grants
                    .iter()
                    .map(|(u, g)| format!("{u}:{}", if *g == Grant::Read { "r" } else { "rw" }))
                    .collect();
                println!(
                    "{:<32} {:<16} {:<7} {}",
                    b,
                    p.owner.as_deref().unwrap_or("-"),
                    if p.public_read { "read" } else { "no" },
                    grants.join(",")
                );
            }
            return Ok(());
        }
        BucketCmd::Allow {
            bucket,
            user,
            write,
        } => {
            let mut p = policy_of(&bucket);
            p.grants
                .insert(user, if write { Grant::ReadWrite } else { Grant::Read });
            (bucket, p)
        }
        BucketCmd::Revoke { bucket, user } => {
            let mut p = policy_of(&bucket);
            if p.grants.remove(&user).is_none() {
                bail!("{user} has no grant on {bucket}");
            }
            (bucket, p)
        }
        BucketCmd::Public { bucket, state } => {
            let mut p = policy_of(&bucket);
            p.public_read = state == "on";
            (bucket, p)
        }
        BucketCmd::Chown { bucket, user } => {
            let mut p = policy_of(&bucket);
            p.owner = Some(user);
            (bucket, p)
        }
    };
    command(&cluster, UserCommand::SetBucketPolicy { bucket, policy }).await?;
    println!("done");
    Ok(())
}
