//! `cairn obj …` and `cairn pool …`.

use crate::util::connect;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use cairn_client::PoolSpec;
use cairn_proto::map::{FailureDomain, WriteMode};
use cairn_proto::object::parse_value;
use cairn_proto::{Filter, Oid, Value};
use clap::Subcommand;
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt;

#[derive(Subcommand)]
pub enum ObjCmd {
    /// Store FILE (or stdin with `-`) as object OBJ (32 hex digits, or a name hashed to an id).
    Put {
        obj: String,
        file: String,
        #[arg(long, default_value = "default")]
        pool: String,
        /// Make it a typed object of this type (fields from --field).
        #[arg(long = "type")]
        otype: Option<String>,
        /// Typed field `name=value` (value: 123, "text", @micros, 0xhex); repeatable.
        #[arg(long = "field")]
        fields: Vec<String>,
        /// Attribute `name=value`; repeatable.
        #[arg(long = "attr")]
        attrs: Vec<String>,
    },
    /// Write an object's bytes to stdout or FILE, optionally a byte range `A-B` (B exclusive).
    Get {
        obj: String,
        #[arg(long, default_value = "default")]
        pool: String,
        #[arg(long)]
        range: Option<String>,
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
    /// Size, version, attributes and typed fields of an object.
    Stat {
        obj: String,
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Remove an object.
    Rm {
        obj: String,
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// List the objects of a pool.
    Ls {
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Set typed fields and attributes of an existing or new object without touching its data.
    Set {
        obj: String,
        #[arg(long, default_value = "default")]
        pool: String,
        #[arg(long = "type")]
        otype: Option<String>,
        #[arg(long = "field")]
        fields: Vec<String>,
        #[arg(long = "attr")]
        attrs: Vec<String>,
    },
    /// Query typed objects on the OSDs: `cairn obj query mail 'size > 1000 AND from prefix "bob"'`.
    /// An empty filter lists the whole extent of the type.
    Query {
        otype: String,
        #[arg(default_value = "")]
        filter: String,
        #[arg(long, default_value = "default")]
        pool: String,
    },
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Create a pool.
    Create {
        name: String,
        #[arg(long, default_value_t = 3)]
        size: u8,
        /// Default: size - 1 (at least 1).
        #[arg(long)]
        min_size: Option<u8>,
        #[arg(long, default_value_t = 64)]
        pg_num: u32,
        /// sync | semi-sync | async
        #[arg(long, default_value = "sync")]
        mode: String,
        /// Outstanding remote writes allowed in semi-sync mode.
        #[arg(long, default_value_t = 16)]
        window: u32,
        /// osd | host
        #[arg(long, default_value = "osd")]
        failure_domain: String,
    },
    /// List pools.
    Ls,
}

fn oid_of(s: &str) -> Oid {
    let (oid, hashed) = Oid::parse_or_hash(s);
    if hashed {
        eprintln!("object {s:?} -> {oid}");
    }
    oid
}

fn parse_kv(items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("expected name=value, got {i:?}"))
        })
        .collect()
}

fn parse_fields(items: &[String]) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (k, v) in parse_kv(items)? {
        out.insert(k, parse_value(&v)?);
    }
    Ok(out)
}

fn parse_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("range must be A-B, got {s:?}"))?;
    let a: u64 = a
        .parse()
        .with_context(|| format!("bad range start {a:?}"))?;
    let b: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().with_context(|| format!("bad range end {b:?}"))?
    };
    if b < a {
        bail!("range end {b} is before its start {a}");
    }
    Ok((a, b))
}

async fn apply_meta(
    io: &cairn_client::PoolIo,
    oid: Oid,
    otype: &Option<String>,
    fields: &[String],
    attrs: &[String],
) -> Result<()> {
    if !fields.is_empty() && otype.is_none() {
        bail!("--field needs --type");
    }
    if let Some(t) = otype {
        io.set_typed(oid, t, parse_fields(fields)?).await?;
    }
    if !attrs.is_empty() {
        let set = parse_kv(attrs)?
            .into_iter()
            .map(|(k, v)| (k, Bytes::from(v)))
            .collect();
        io.set_attrs(oid, set, Vec::new()).await?;
    }
    Ok(())
}

pub async fn run(meta: Vec<String>, cmd: ObjCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    match cmd {
        ObjCmd::Put {
            obj,
            file,
            pool,
            otype,
            fields,
            attrs,
        } => {
            let io = cluster.pool_io(&pool).await?;
            let oid = oid_of(&obj);
            let n = if file == "-" {
                io.put_stream(oid, tokio::io::stdin()).await?
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("open {file}"))?;
                io.put_stream(oid, f).await?
            };
            apply_meta(&io, oid, &otype, &fields, &attrs).await?;
            println!("{oid} {n}");
        }
        ObjCmd::Get {
            obj,
            pool,
            range,
            output,
        } => {
            let io = cluster.pool_io(&pool).await?;
            let oid = oid_of(&obj);
            let range = range.as_deref().map(parse_range).transpose()?;
            match output {
                Some(path) => {
                    let f = tokio::fs::File::create(&path)
                        .await
                        .with_context(|| format!("create {path}"))?;
                    let mut w = tokio::io::BufWriter::new(f);
                    io.get_stream(oid, range, &mut w).await?;
                    w.flush().await?;
                    w.get_ref().sync_all().await?;
                }
                None => {
                    io.get_stream(oid, range, tokio::io::stdout()).await?;
                }
            }
        }
        ObjCmd::Stat { obj, pool } => {
            let io = cluster.pool_io(&pool).await?;
            let st = io.stat(oid_of(&obj)).await?;
            println!("oid:     {}", st.oid);
            println!("pg:      {}", io.pool().pg_of(st.oid));
            println!("size:    {}", st.size);
            println!("version: {}", st.version);
            println!("mtime:   {} µs", st.mtime);
            if let Some(t) = &st.otype {
                println!("type:    {t}");
                for (k, v) in &st.fields {
                    println!("  field {k} = {v}");
                }
            }
            for (k, v) in &st.attrs {
                println!("  attr {k} = {}", String::from_utf8_lossy(v));
            }
        }
        ObjCmd::Rm { obj, pool } => {
            let io = cluster.pool_io(&pool).await?;
            io.delete(oid_of(&obj)).await?;
        }
        ObjCmd::Ls { pool } => {
            let io = cluster.pool_io(&pool).await?;
            for (oid, size) in io.list().await? {
                println!("{oid} {size}");
            }
        }
        ObjCmd::Set {
            obj,
            pool,
            otype,
            fields,
            attrs,
        } => {
            let io = cluster.pool_io(&pool).await?;
            if otype.is_none() && attrs.is_empty() {
                bail!("nothing to set: give --type/--field or --attr");
            }
            apply_meta(&io, oid_of(&obj), &otype, &fields, &attrs).await?;
        }
        ObjCmd::Query {
            otype,
            filter,
            pool,
        } => {
            let io = cluster.pool_io(&pool).await?;
            let f = Filter::parse(&filter)?;
            for hit in io.query(&otype, &f).await? {
                let fields: Vec<String> =
                    hit.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{} {}", hit.oid, fields.join(" "));
            }
        }
    }
    Ok(())
}

pub fn parse_mode(mode: &str, window: u32) -> Result<WriteMode> {
    Ok(match mode {
        "sync" => WriteMode::Sync,
        "semi-sync" | "semisync" => WriteMode::SemiSync { window },
        "async" => WriteMode::Async,
        m => bail!("unknown write mode {m:?} (sync, semi-sync, async)"),
    })
}

pub async fn run_pool(meta: Vec<String>, cmd: PoolCmd) -> Result<()> {
    let cluster = connect(meta).await?;
    match cmd {
        PoolCmd::Create {
            name,
            size,
            min_size,
            pg_num,
            mode,
            window,
            failure_domain,
        } => {
            let fd = match failure_domain.as_str() {
                "osd" => FailureDomain::Osd,
                "host" => FailureDomain::Host,
                f => bail!("unknown failure domain {f:?} (osd, host)"),
            };
            let spec = PoolSpec {
                name,
                size,
                min_size: min_size.unwrap_or(size.saturating_sub(1).max(1)),
                pg_num,
                mode: parse_mode(&mode, window)?,
                failure_domain: fd,
            };
            let p = cluster.create_pool(spec).await?;
            println!(
                "pool {} id {} size {} min_size {} pg_num {}",
                p.name, p.id, p.size, p.min_size, p.pg_num
            );
        }
        PoolCmd::Ls => {
            for p in cluster.map().pools.values() {
                println!(
                    "{:<16} id {:<4} size {} min_size {} pg_num {:<5} {:?} {:?}",
                    p.name, p.id, p.size, p.min_size, p.pg_num, p.mode, p.failure_domain
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0-10").unwrap(), (0, 10));
        assert_eq!(parse_range("5-").unwrap(), (5, u64::MAX));
        assert!(parse_range("9-3").is_err());
        assert!(parse_range("x").is_err());
    }
}
