//! The object API end to end on a multi-process cluster: whole and partial I/O, attributes, typed
//! objects and on-device queries checked against a model, listing, errors, and the CLI.

use bytes::Bytes;
use cairn_client::{ClientError, PoolSpec};
use cairn_proto::{Filter, Oid, Value};
use cairn_tests::{bounded_async, ClusterOpts, ProcCluster};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_attributes_and_ranges() {
    bounded_async(240, async {
        let c = ProcCluster::start(ClusterOpts::default()).await?;
        let cl = c.client().await?;
        cl.create_pool(PoolSpec::new("p3")).await?;
        let io = cl.pool_io("p3").await?;

        // Whole objects of assorted sizes, including empty and multi-piece ones.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (i, size) in [0usize, 1, 4096, 65_537, 5 << 20].into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
            let oid = Oid(1000 + i as u128);
            io.put_stream(oid, &data[..]).await?;
            assert_eq!(io.get(oid).await?, Bytes::from(data.clone()), "size {size}");
            assert_eq!(io.stat(oid).await?.size, size as u64);
        }

        // Writes at offsets make holes that read as zeros; ranges clip at the end.
        let oid = Oid::from_name("sparse");
        io.write(oid, 100, Bytes::from_static(b"abc")).await?;
        let all = io.get(oid).await?;
        assert_eq!(all.len(), 103);
        assert!(all[..100].iter().all(|b| *b == 0));
        assert_eq!(&all[100..], b"abc");
        assert_eq!(io.read(oid, 101, 1000).await?, Bytes::from_static(b"bc"));
        io.truncate(oid, 101).await?;
        assert_eq!(io.stat(oid).await?.size, 101);

        // Attributes.
        let mut set = BTreeMap::new();
        set.insert("color".to_string(), Bytes::from_static(b"blue"));
        set.insert("shape".to_string(), Bytes::from_static(b"round"));
        io.set_attrs(oid, set, vec![]).await?;
        io.set_attrs(oid, BTreeMap::new(), vec!["shape".into()])
            .await?;
        let st = io.stat(oid).await?;
        assert_eq!(st.attrs.get("color").map(|b| &b[..]), Some(&b"blue"[..]));
        assert!(!st.attrs.contains_key("shape"));

        // Missing objects are a clear error; deletes remove.
        io.delete(oid).await?;
        match io.stat(oid).await {
            Err(ClientError::NotFound(o)) => assert_eq!(o, oid),
            other => panic!("expected NotFound, got {other:?}"),
        }
        match io.read(Oid(999_999), 0, 10).await {
            Err(ClientError::NotFound(_)) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }

        // Listing sees exactly the live objects.
        let mut listed: Vec<Oid> = io.list().await?.into_iter().map(|(o, _)| o).collect();
        listed.sort();
        let want: Vec<Oid> = (0..5).map(|i| Oid(1000 + i)).collect();
        assert_eq!(listed, want);
        Ok(())
    })
    .await;
}

fn random_value(rng: &mut impl Rng, field: &str) -> Value {
    match field {
        "n" => Value::I64(rng.gen_range(-50..50)),
        "s" => {
            let len = rng.gen_range(0..4);
            Value::Str(
                (0..len)
                    .map(|_| (b'a' + rng.gen_range(0..3)) as char)
                    .collect(),
            )
        }
        "t" => Value::Time(rng.gen_range(0..1000)),
        _ => Value::Bytes(
            (0..rng.gen_range(0..3))
                .map(|_| rng.gen_range(0..3))
                .collect(),
        ),
    }
}

fn random_filter(rng: &mut impl Rng) -> Filter {
    use cairn_proto::object::{CmpOp, Pred};
    let fields = ["n", "s", "t", "b"];
    let mut preds = Vec::new();
    for _ in 0..rng.gen_range(0..3) {
        let field = fields[rng.gen_range(0..fields.len())];
        let value = random_value(rng, field);
        let op = if matches!(value, Value::Str(_) | Value::Bytes(_)) && rng.gen_bool(0.3) {
            CmpOp::Prefix
        } else {
            [CmpOp::Eq, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge][rng.gen_range(0..5)]
        };
        preds.push(Pred {
            field: field.to_string(),
            op,
            value,
        });
    }
    Filter { preds }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_queries_match_a_model() {
    bounded_async(240, async {
        let c = ProcCluster::start(ClusterOpts::default()).await?;
        let cl = c.client().await?;
        let mut spec = PoolSpec::new("q");
        spec.pg_num = 16;
        cl.create_pool(spec).await?;
        let io = cl.pool_io("q").await?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut model: BTreeMap<Oid, (String, BTreeMap<String, Value>)> = BTreeMap::new();
        for i in 0..150u128 {
            let oid = Oid(i * 7919 + 1);
            let otype = if i % 5 == 0 { "other" } else { "rec" };
            let mut fields = BTreeMap::new();
            for f in ["n", "s", "t", "b"] {
                if rng.gen_bool(0.85) {
                    fields.insert(f.to_string(), random_value(&mut rng, f));
                }
            }
            io.set_typed(oid, otype, fields.clone()).await?;
            model.insert(oid, (otype.to_string(), fields));
        }
        // Retyping and deleting keep the index in step.
        for i in 0..10u128 {
            let oid = Oid(i * 7919 + 1);
            io.delete(oid).await?;
            model.remove(&oid);
        }
        for _ in 0..40 {
            let f = random_filter(&mut rng);
            let got: Vec<Oid> = io
                .query("rec", &f)
                .await?
                .into_iter()
                .map(|h| h.oid)
                .collect();
            let want: Vec<Oid> = model
                .iter()
                .filter(|(_, (t, fields))| t == "rec" && f.matches(fields))
                .map(|(o, _)| *o)
                .collect();
            assert_eq!(got, want, "filter {f:?}");
        }
        let extent = io.get_extent("other").await?;
        assert_eq!(
            extent.len(),
            model.values().filter(|(t, _)| t == "other").count()
        );
        // Bad filters are refused with a clear error.
        let bad = Filter::parse("n prefix 3");
        assert!(bad.is_err());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_object_tour() {
    bounded_async(240, async {
        let c = ProcCluster::start(ClusterOpts::default()).await?;
        c.cli(&["pool", "create", "default", "--size", "3"])?;
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("in.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data)?;
        let out = c.cli(&["obj", "put", "greeting", src.to_str().unwrap()])?;
        let oid = out.split_whitespace().next().unwrap().to_string();
        assert_eq!(oid, Oid::from_name("greeting").to_string());
        let dst = dir.path().join("out.bin");
        c.cli(&["obj", "get", "greeting", "-o", dst.to_str().unwrap()])?;
        assert_eq!(std::fs::read(&dst)?, data);
        let part = c.cli(&[
            "obj",
            "get",
            &oid,
            "--range",
            "10-20",
            "-o",
            dst.to_str().unwrap(),
        ]);
        part?;
        assert_eq!(std::fs::read(&dst)?, &data[10..20]);
        let stat = c.cli(&["obj", "stat", "greeting"])?;
        assert!(stat.contains("size:    300000"), "{stat}");
        c.cli(&[
            "obj",
            "set",
            "m1",
            "--type",
            "mail",
            "--field",
            "size=1200",
            "--field",
            "from=\"bob@x\"",
        ])?;
        c.cli(&[
            "obj",
            "set",
            "m2",
            "--type",
            "mail",
            "--field",
            "size=80",
            "--field",
            "from=\"ann@y\"",
        ])?;
        let q = c.cli(&["obj", "query", "mail", "size > 100 AND from prefix \"bob\""])?;
        assert_eq!(q.lines().count(), 1, "{q}");
        assert!(q.starts_with(&Oid::from_name("m1").to_string()), "{q}");
        let ls = c.cli(&["obj", "ls"])?;
        assert_eq!(ls.lines().count(), 3, "{ls}");
        c.cli(&["obj", "rm", "greeting"])?;
        assert!(c.cli(&["obj", "stat", "greeting"]).is_err());
        assert!(c.cli(&["obj", "query", "mail", "size ~ 3"]).is_err());
        let st = c.cli(&["status", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&st)?;
        assert_eq!(v["map"]["osds"].as_object().map(|o| o.len()), Some(3));
        let table = c.cli(&["status"])?;
        assert!(table.contains("leader"), "{table}");
        Ok(())
    })
    .await;
}
