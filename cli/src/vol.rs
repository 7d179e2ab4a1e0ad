//! `cairn vol …` (block volumes) and `cairn iscsi …` (targets, LUNs, CHAP).

use crate::util::{connect, human_bytes, parse_size};
use anyhow::{bail, Result};
use cairn_client::VolumeIo;
use cairn_proto::iscsi::{Chap, IscsiCommand};
use cairn_proto::msg::{MetaCommand, MetaRead, MetaRequest, MetaResponse, MetaResult};
use cairn_proto::volume::{NvDiskMode, VolumeInfo};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum VolCmd {
    /// Create a thin block volume (never-written ranges read as zeros and take no space), or with
    /// --nvdisk an nvdisk volume held in one gateway's memory and backed up on its disk.
    Create {
        name: String,
        /// Size, e.g. 10G (not with --nvdisk).
        #[arg(required_unless_present = "nvdisk", conflicts_with = "nvdisk")]
        size: Option<String>,
        /// Make the volume an nvdisk of this size on one gateway (the paper's remote RAM disk):
        /// fast, but not replicated; it lives and dies with that gateway's disk.
        #[arg(long, value_name = "SIZE")]
        nvdisk: Option<String>,
        /// Where the nvdisk's pool lives and what an acknowledged write survives: `shm` (a
        /// gateway crash), `sync` or `shm-sync` (also power loss: fdatasync'ed log), `anon`
        /// (nothing until SYNCHRONIZE CACHE or FUA).
        #[arg(long, default_value = "shm", requires = "nvdisk")]
        nvdisk_mode: String,
        /// Name of the gateway that holds and serves the nvdisk (its --name; default: this
        /// host's name).
        #[arg(long, requires = "nvdisk")]
        gateway: Option<String>,
        #[arg(long, default_value = "default")]
        pool: String,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Size of the objects the volume is striped over.
        #[arg(long, default_value = "4M")]
        object_size: String,
    },
    /// List volumes.
    Ls,
    /// Grow or shrink a volume (shrinking frees the data past the new end).
    Resize { name: String, size: String },
    /// Delete a volume and its data.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum IscsiCmd {
    /// Targets: create, rm, ls.
    #[command(subcommand)]
    Target(TargetCmd),
    /// LUNs: map volumes into targets.
    #[command(subcommand)]
    Lun(LunCmd),
    /// CHAP credentials of a target (secrets are kept in the metadata service).
    #[command(subcommand)]
    Chap(ChapCmd),
}

#[derive(Subcommand)]
pub enum TargetCmd {
    Create { iqn: String },
    Rm { iqn: String },
    Ls,
}

#[derive(Subcommand)]
pub enum LunCmd {
    /// Export VOLUME as a LUN of the target (lowest free number unless --lun).
    Add {
        iqn: String,
        volume: String,
        #[arg(long)]
        lun: Option<u64>,
    },
    Rm {
        iqn: String,
        lun: u64,
    },
}

#[derive(Subcommand)]
pub enum ChapCmd {
    /// Require one-way CHAP (and mutual CHAP with --mutual-user/--mutual-secret).
    Set {
        iqn: String,
        #[arg(long)]
        user: String,
        #[arg(long, env = "CAIRN_CHAP_SECRET")]
        secret: String,
        #[arg(long, requires = "mutual_secret")]
        mutual_user: Option<String>,
        #[arg(long, requires = "mutual_user")]
        mutual_secret: Option<String>,
    },
    /// Stop requiring CHAP.
    Clear { iqn: String },
}

async fn volume(cluster: &cairn_client::Cluster, name: &str) -> Result<VolumeInfo> {
    match cluster
        .meta()
        .call(MetaRequest::Read(MetaRead::Volume {
            name: name.to_string(),
        }))
        .await?
    {
        MetaResponse::Volume(v) => Ok(v),
        other => bail!("unexpected reply {other:?}"),
    }
}

pub async fn run_vol(meta: Vec<String>, cmd: VolCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    match cmd {
        VolCmd::Create {
            name,
            size,
            nvdisk,
            nvdisk_mode,
            gateway,
            pool,
            block_size,
            object_size,
        } => {
            let cmd = match (nvdisk, size) {
                (Some(nv), _) => {
                    let mode: NvDiskMode = nvdisk_mode.parse().map_err(anyhow::Error::msg)?;
                    MetaCommand::CreateNvdiskVolume {
                        name,
                        size: parse_size(&nv)?,
                        block_size,
                        gateway: gateway.unwrap_or_else(cairn_gateway::daemon::default_name),
                        mode,
                    }
                }
                (None, Some(size)) => MetaCommand::CreateVolume {
                    name,
                    size: parse_size(&size)?,
                    block_size,
                    object_size: parse_size(&object_size)?,
                    pool,
                },
                (None, None) => bail!("give the volume a SIZE or --nvdisk SIZE"),
            };
            if let MetaResult::Volume(v) = cluster.meta().command(cmd).await? {
                print!(
                    "volume {} id {} size {} block size {}",
                    v.name,
                    v.id,
                    human_bytes(v.size),
                    v.block_size
                );
                match v.nvdisk() {
                    Some((gw, mode)) => println!(
                        " nvdisk on gateway {gw} ({mode}: an acknowledged write survives {}; \
                         not replicated)",
                        mode.survives()
                    ),
                    None => println!(),
                }
            }
        }
        VolCmd::Ls => {
            let vols = match cluster
                .meta()
                .call(MetaRequest::Read(MetaRead::Volumes))
                .await?
            {
                MetaResponse::Volumes(v) => v,
                other => bail!("unexpected reply {other:?}"),
            };
            println!(
                "{:<24} {:>6} {:>12} {:>6} {:>10}  POOL",
                "NAME", "ID", "SIZE", "BLOCK", "OBJECT"
            );
            let map = cluster.map();
            for v in vols {
                let pool = match v.nvdisk() {
                    Some((gw, mode)) => format!("nvdisk:{mode} on gateway {gw}"),
                    None => map
                        .pools
                        .get(&v.pool)
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| v.pool.to_string()),
                };
                println!(
                    "{:<24} {:>6} {:>12} {:>6} {:>10}  {pool}",
                    v.name,
                    v.id,
                    human_bytes(v.size),
                    v.block_size,
                    human_bytes(v.object_size)
                );
            }
        }
        VolCmd::Resize { name, size } => {
            let old = volume(&cluster, &name).await?;
            let size = parse_size(&size)?;
            cluster
                .meta()
                .command(MetaCommand::ResizeVolume {
                    name: name.clone(),
                    size,
                })
                .await?;
            if size < old.size {
                VolumeIo::open(&cluster, old).await?.shrink_to(size).await?;
            }
            println!("volume {name} size {}", human_bytes(size));
        }
        VolCmd::Rm { name } => {
            let info = volume(&cluster, &name).await?;
            // Remove the record first (refused while a LUN exports it), then the data.
            cluster
                .meta()
                .command(MetaCommand::DeleteVolume { name: name.clone() })
                .await?;
            match info.nvdisk() {
                // Its files are on the gateway, which removes them when it next starts.
                Some((gw, _)) => println!(
                    "volume {name} removed; gateway {gw} deletes its nvdisk files at its next start"
                ),
                None => VolumeIo::open(&cluster, info).await?.destroy().await?,
            }
        }
    }
    Ok(())
}

pub async fn run_iscsi(meta: Vec<String>, cmd: IscsiCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    let c = match cmd {
        IscsiCmd::Target(TargetCmd::Create { iqn }) => IscsiCommand::CreateTarget { iqn },
        IscsiCmd::Target(TargetCmd::Rm { iqn }) => IscsiCommand::DeleteTarget { iqn },
        IscsiCmd::Target(TargetCmd::Ls) => {
            let cfg = match cluster
                .meta()
                .call(MetaRequest::Read(MetaRead::Iscsi))
                .await?
            {
                MetaResponse::Iscsi(c) => c,
                other => bail!("unexpected reply {other:?}"),
            };
            for t in cfg.targets.values() {
                let auth = match (&t.chap, &t.mutual_chap) {
                    (None, _) => "none",
                    (Some(_), None) => "chap",
                    (Some(_), Some(_)) => "mutual chap",
                };
                println!("{}  auth: {auth}", t.iqn);
                for (lun, vol) in &t.luns {
                    println!("  lun {lun}: {vol}");
                }
            }
            return Ok(());
        }
        IscsiCmd::Lun(LunCmd::Add { iqn, volume, lun }) => {
            IscsiCommand::AddLun { iqn, lun, volume }
        }
        IscsiCmd::Lun(LunCmd::Rm { iqn, lun }) => IscsiCommand::RemoveLun { iqn, lun },
        IscsiCmd::Chap(ChapCmd::Set {
            iqn,
            user,
            secret,
            mutual_user,
            mutual_secret,
        }) => {
            let mutual = match (mutual_user, mutual_secret) {
                (Some(user), Some(secret)) => Some(Chap { user, secret }),
                _ => None,
            };
            IscsiCommand::SetChap {
                iqn,
                chap: Some(Chap { user, secret }),
                mutual,
            }
        }
        IscsiCmd::Chap(ChapCmd::Clear { iqn }) => IscsiCommand::SetChap {
            iqn,
            chap: None,
            mutual: None,
        },
    };
    cluster.meta().command(MetaCommand::Iscsi(c)).await?;
    println!("done");
    Ok(())
}
