//! The store test suite, run against every [`Store`] implementation, plus the sled store's own
//! tests (reopen, checksums on disk) and a model check of the sled store against the memory store.

use super::mem::MemStore;
use super::sled_store::SledStore;
use super::*;
use bytes::Bytes;
use cairn_proto::msg::LogOp;
use cairn_proto::object::Pred;
use cairn_proto::{PoolId, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

fn pg(seed: u32) -> PgId {
    PgId::new(PoolId(1), seed)
}

/// Deterministic bytes for object content checks.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn write(s: &dyn Store, p: PgId, v: u64, oid: Oid, offset: u64, data: &[u8]) {
    s.apply(
        p,
        v,
        oid,
        &ObjOp::Write {
            offset,
            data: Bytes::copy_from_slice(data),
        },
        v as i64,
    )
    .unwrap();
}

fn read_all(s: &dyn Store, p: PgId, oid: Oid) -> Vec<u8> {
    s.read(p, oid, 0, u64::MAX).unwrap().to_vec()
}

pub fn write_read_offsets_and_holes(s: &dyn Store) {
    let p = pg(1);
    let oid = Oid(7);
    assert!(matches!(
        s.read(p, oid, 0, 10),
        Err(Error::NoSuchObject { .. })
    ));
    write(s, p, 1, oid, 0, b"hello");
    assert_eq!(read_all(s, p, oid), b"hello");
    // A hole between 5 and 100, across no chunk boundary.
    write(s, p, 2, oid, 100, b"world");
    let all = read_all(s, p, oid);
    assert_eq!(all.len(), 105);
    assert_eq!(&all[..5], b"hello");
    assert!(all[5..100].iter().all(|&b| b == 0));
    assert_eq!(&all[100..], b"world");
    // Far beyond the inline limit and across chunk boundaries.
    let far = 3 * CHUNK + 17;
    let big = pattern(1, (CHUNK + 100) as usize);
    write(s, p, 3, oid, far, &big);
    let st = s.stat(p, oid).unwrap().unwrap();
    assert_eq!(st.size, far + big.len() as u64);
    assert_eq!(st.version, 3);
    assert_eq!(s.read(p, oid, far, big.len() as u64).unwrap(), &big[..]);
    assert!(s
        .read(p, oid, 200, far - 200)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_eq!(&s.read(p, oid, 0, 5).unwrap()[..], b"hello");
    // Reads past the end are short; at or beyond the end, empty.
    assert_eq!(s.read(p, oid, st.size - 3, 100).unwrap().len(), 3);
    assert!(s.read(p, oid, st.size + 10, 100).unwrap().is_empty());
    // Overwrite straddling a chunk boundary.
    write(s, p, 4, oid, CHUNK - 2, b"abcd");
    assert_eq!(&s.read(p, oid, CHUNK - 3, 6).unwrap()[..], b"\0abcd\0");
    assert_eq!(s.used_bytes(), st.size);
    // A piece carries the stat that goes with its bytes.
    let piece = s.read_piece(p, oid, 100, 5).unwrap().unwrap();
    assert_eq!(piece.stat, s.stat(p, oid).unwrap().unwrap());
    assert_eq!((piece.offset, &piece.data[..]), (100, &b"world"[..]));
    assert!(s.read_piece(p, Oid(12345), 0, 1).unwrap().is_none());
}

pub fn truncate_up_and_down(s: &dyn Store) {
    let p = pg(2);
    let oid = Oid(9);
    let data = pattern(2, 3 * CHUNK as usize);
    write(s, p, 1, oid, 0, &data);
    s.apply(p, 2, oid, &ObjOp::Truncate { size: CHUNK + 10 }, 0)
        .unwrap();
    assert_eq!(read_all(s, p, oid), &data[..(CHUNK + 10) as usize]);
    s.apply(
        p,
        3,
        oid,
        &ObjOp::Truncate {
            size: 2 * CHUNK + 5,
        },
        0,
    )
    .unwrap();
    let all = read_all(s, p, oid);
    assert_eq!(all.len() as u64, 2 * CHUNK + 5);
    assert_eq!(
        &all[..(CHUNK + 10) as usize],
        &data[..(CHUNK + 10) as usize]
    );
    assert!(all[(CHUNK + 10) as usize..].iter().all(|&b| b == 0));
    s.apply(p, 4, oid, &ObjOp::Truncate { size: 3 }, 0).unwrap();
    assert_eq!(read_all(s, p, oid), &data[..3]);
    s.apply(p, 5, oid, &ObjOp::Truncate { size: 0 }, 0).unwrap();
    assert!(read_all(s, p, oid).is_empty());
    // Truncate creates a missing object.
    s.apply(p, 6, Oid(10), &ObjOp::Truncate { size: 10 }, 0)
        .unwrap();
    assert_eq!(read_all(s, p, Oid(10)), vec![0; 10]);
    assert_eq!(s.used_bytes(), 10);
}

pub fn write_full_delete_and_attrs(s: &dyn Store) {
    let p = pg(3);
    let oid = Oid(11);
    let big = pattern(3, 200_000);
    s.apply(
        p,
        1,
        oid,
        &ObjOp::WriteFull {
            data: Bytes::from(big.clone()),
        },
        5,
    )
    .unwrap();
    assert_eq!(read_all(s, p, oid), big);
    let mut set = BTreeMap::new();
    set.insert("a".to_string(), Bytes::from_static(b"1"));
    set.insert("b".to_string(), Bytes::from_static(b"2"));
    s.apply(
        p,
        2,
        oid,
        &ObjOp::SetAttrs {
            set,
            remove: vec![],
        },
        6,
    )
    .unwrap();
    // WriteFull of a small object: back inline, attributes kept.
    let prior = s
        .apply(
            p,
            3,
            oid,
            &ObjOp::WriteFull {
                data: Bytes::from_static(b"small"),
            },
            7,
        )
        .unwrap();
    assert_eq!(prior, 2);
    assert_eq!(read_all(s, p, oid), b"small");
    let st = s.stat(p, oid).unwrap().unwrap();
    assert_eq!(st.size, 5);
    assert_eq!(st.mtime, 7);
    assert_eq!(st.attrs.len(), 2);
    s.apply(
        p,
        4,
        oid,
        &ObjOp::SetAttrs {
            set: BTreeMap::new(),
            remove: vec!["a".into(), "zz".into()],
        },
        8,
    )
    .unwrap();
    let st = s.stat(p, oid).unwrap().unwrap();
    assert_eq!(st.attrs.keys().collect::<Vec<_>>(), vec!["b"]);
    // Attributes alone create an object of size 0.
    s.apply(
        p,
        5,
        Oid(12),
        &ObjOp::SetAttrs {
            set: [("x".to_string(), Bytes::from_static(b"y"))].into(),
            remove: vec![],
        },
        9,
    )
    .unwrap();
    assert_eq!(s.stat(p, Oid(12)).unwrap().unwrap().size, 0);
    assert_eq!(s.apply(p, 6, oid, &ObjOp::Delete, 10).unwrap(), 4);
    assert!(s.stat(p, oid).unwrap().is_none());
    assert!(matches!(
        s.read(p, oid, 0, 1),
        Err(Error::NoSuchObject { .. })
    ));
    // Deleting nothing is not an error (retries), and recreation starts fresh.
    assert_eq!(s.apply(p, 7, oid, &ObjOp::Delete, 11).unwrap(), 0);
    write(s, p, 8, oid, 2, b"x");
    let st = s.stat(p, oid).unwrap().unwrap();
    assert!(st.attrs.is_empty());
    assert_eq!(read_all(s, p, oid), b"\0\0x");
    // Typed-field names are checked.
    let bad = ObjOp::SetTyped {
        otype: "t\0".into(),
        fields: BTreeMap::new(),
    };
    assert!(matches!(
        s.apply(p, 9, oid, &bad, 0),
        Err(Error::Invalid { .. })
    ));
}

pub fn list_paging_and_pgs(s: &dyn Store) {
    let mut oids: Vec<Oid> = (0..57u128).map(|i| Oid(i * 7919 + 3)).collect();
    for (i, oid) in oids.iter().enumerate() {
        write(s, pg(4), i as u64 + 1, *oid, 0, b"x");
        // A neighbour PG whose objects must not show up.
        write(s, pg(5), i as u64 + 1, Oid(oid.0 + 1), 0, b"y");
    }
    oids.sort();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = s.list(pg(4), after, 10).unwrap();
        assert!(page.len() <= 10);
        got.extend(page.iter().map(|(o, _)| *o));
        after = page.last().map(|(o, _)| *o);
        if !more {
            break;
        }
    }
    assert_eq!(got, oids);
    let (scan, more) = s.scan(pg(4), None, 1000).unwrap();
    assert!(!more);
    assert_eq!(scan.len(), 57);
    assert!(scan.iter().all(|i| i.size == 1));
    // Equal content digests alike.
    assert_eq!(scan[0].digest, scan[1].digest);
    let (page, more) = s.list(pg(4), Some(Oid(u128::MAX)), 10).unwrap();
    assert!(page.is_empty() && !more);
    let pgs = s.pgs().unwrap();
    assert!(pgs.contains(&pg(4)) && pgs.contains(&pg(5)));
    s.remove_pg(pg(5)).unwrap();
    assert!(!s.pgs().unwrap().contains(&pg(5)));
    assert!(s.list(pg(5), None, 10).unwrap().0.is_empty());
    assert_eq!(s.list(pg(4), None, 100).unwrap().0.len(), 57);
    assert_eq!(s.used_bytes(), 57);
}

pub fn pg_log_and_info(s: &dyn Store) {
    let p = pg(6);
    assert_eq!(s.pg_info(p).unwrap(), PgInfo::default());
    for v in 1..=10u64 {
        write(s, p, v, Oid(u128::from(v % 3)), 0, b"z");
    }
    s.apply(p, 11, Oid(1), &ObjOp::Delete, 0).unwrap();
    let info = s.pg_info(p).unwrap();
    assert_eq!(info.last_update, 11);
    assert_eq!(info.last_complete, 11);
    let log = s.pg_log(p, 8).unwrap();
    assert_eq!(
        log.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![9, 10, 11]
    );
    assert_eq!(log[2].op, LogOp::Delete);
    assert_eq!(log[2].prior, 10);
    assert_eq!(log[0].prior, 6);
    // A gap: last_complete stays, last_update moves.
    write(s, p, 14, Oid(5), 0, b"q");
    let info = s.pg_info(p).unwrap();
    assert_eq!((info.last_update, info.last_complete), (14, 11));
    // Activation merges the missing entries and closes the gap.
    let missing = vec![
        LogEntry {
            version: 12,
            oid: Oid(6),
            op: LogOp::Modify,
            prior: 0,
        },
        LogEntry {
            version: 13,
            oid: Oid(6),
            op: LogOp::Modify,
            prior: 12,
        },
    ];
    s.activate(p, 14, &missing, false).unwrap();
    let info = s.pg_info(p).unwrap();
    assert_eq!((info.last_update, info.last_complete), (14, 14));
    assert_eq!(
        s.pg_log(p, 10)
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![11, 12, 13, 14]
    );
    // Backfilled activation restarts the log.
    s.activate(p, 20, &[], true).unwrap();
    let info = s.pg_info(p).unwrap();
    assert_eq!(
        info,
        PgInfo {
            last_update: 20,
            last_complete: 20,
            log_tail: 20
        }
    );
    assert!(s.pg_log(p, 20).unwrap().is_empty());
    assert!(matches!(
        s.pg_log(p, 19),
        Err(Error::LogTrimmed { tail: 20, .. })
    ));
}

pub fn log_is_bounded(s: &dyn Store, keep: u64) {
    let p = pg(7);
    for v in 1..=keep + 25 {
        write(s, p, v, Oid(1), 0, b"a");
    }
    let info = s.pg_info(p).unwrap();
    assert_eq!(info.log_tail, 25);
    assert!(matches!(s.pg_log(p, 24), Err(Error::LogTrimmed { .. })));
    assert_eq!(s.pg_log(p, 25).unwrap().len() as u64, keep);
}

pub fn typed_fields_and_queries(s: &dyn Store, model: &MemStore, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let p = pg(8);
    let names = ["apple", "apricot", "banana", "band", "", "a\0b", "zed"];
    let mut v = 0;
    for i in 0..300u128 {
        v += 1;
        let oid = Oid(rng.gen::<u128>() | 1);
        let mut fields = BTreeMap::new();
        if rng.gen_bool(0.9) {
            fields.insert("age".to_string(), Value::I64(rng.gen_range(-20..80)));
        }
        if rng.gen_bool(0.8) {
            fields.insert(
                "name".to_string(),
                Value::Str(names[rng.gen_range(0..names.len())].to_string()),
            );
        }
        if rng.gen_bool(0.5) {
            fields.insert("t".to_string(), Value::Time(rng.gen_range(0..1000)));
        }
        if rng.gen_bool(0.5) {
            let n = rng.gen_range(0..3);
            fields.insert(
                "k".to_string(),
                Value::Bytes((0..n).map(|_| rng.gen_range(0u8..3)).collect()),
            );
        }
        // Wrong kinds must not match typed predicates.
        if rng.gen_bool(0.05) {
            fields.insert("age".to_string(), Value::Str("old".into()));
        }
        let otype = if i % 5 == 0 { "other" } else { "person" };
        let op = ObjOp::SetTyped {
            otype: otype.into(),
            fields,
        };
        for st in [s as &dyn Store, model as &dyn Store] {
            st.apply(p, v, oid, &op, 0).unwrap();
        }
        // Some objects change type or fields again, or go away: the index must follow.
        if rng.gen_bool(0.1) {
            v += 1;
            let op = if rng.gen_bool(0.5) {
                ObjOp::Delete
            } else {
                ObjOp::SetTyped {
                    otype: "person".into(),
                    fields: [("age".to_string(), Value::I64(42))].into(),
                }
            };
            for st in [s as &dyn Store, model as &dyn Store] {
                st.apply(p, v, oid, &op, 0).unwrap();
            }
        }
    }
    let random_pred = |rng: &mut StdRng| {
        let op = [
            CmpOp::Eq,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
            CmpOp::Prefix,
        ][rng.gen_range(0..6)];
        let (field, value) = match rng.gen_range(0..4) {
            0 => ("age", Value::I64(rng.gen_range(-25..85))),
            1 => (
                "name",
                Value::Str(
                    ["ap", "ban", "", "a", "zed", "apple", "a\0"][rng.gen_range(0..7)].to_string(),
                ),
            ),
            2 => ("t", Value::Time(rng.gen_range(0..1000))),
            _ => (
                "k",
                Value::Bytes(
                    (0..rng.gen_range(0..3))
                        .map(|_| rng.gen_range(0u8..3))
                        .collect(),
                ),
            ),
        };
        let op = if op == CmpOp::Prefix && !matches!(value, Value::Str(_) | Value::Bytes(_)) {
            CmpOp::Ge
        } else {
            op
        };
        Pred {
            field: field.into(),
            op,
            value,
        }
    };
    let mut nonempty = 0;
    for _ in 0..300 {
        let n = rng.gen_range(0..3);
        let filter = Filter {
            preds: (0..n).map(|_| random_pred(&mut rng)).collect(),
        };
        let limit = rng.gen_range(1..40);
        let page_all = |st: &dyn Store| {
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let (hits, more) = st.query(p, "person", &filter, after, limit).unwrap();
                assert!(hits.len() <= limit);
                after = hits.last().map(|h| h.oid);
                all.extend(hits);
                if !more {
                    return all;
                }
            }
        };
        let got = page_all(s);
        let want = page_all(model);
        assert_eq!(got, want, "filter {filter:?}");
        if !want.is_empty() {
            nonempty += 1;
        }
    }
    assert!(
        nonempty > 50,
        "too few filters matched anything: {nonempty}"
    );
}

pub fn large_object_in_pieces(s: &dyn Store, size: u64) {
    let p = pg(9);
    let oid = Oid(99);
    let piece = 4 << 20;
    let mut v = 0;
    let mut off = 0;
    while off < size {
        let n = piece.min(size - off);
        v += 1;
        write(s, p, v, oid, off, &pattern(off, n as usize));
        off += n;
    }
    assert_eq!(s.stat(p, oid).unwrap().unwrap().size, size);
    let mut off = 0;
    while off < size {
        let n = piece.min(size - off);
        let got = s.read(p, oid, off, n).unwrap();
        assert!(got == pattern(off, n as usize), "piece at {off}");
        off += n;
    }
    s.verify(p, oid).unwrap();
    // An unaligned read across pieces.
    let got = s.read(p, oid, piece - 5, 10).unwrap();
    assert_eq!(&got[..5], &pattern(0, piece as usize)[piece as usize - 5..]);
    assert_eq!(&got[5..], &pattern(piece, 5)[..]);
}

pub fn install_and_remove(s: &dyn Store) {
    let p = pg(10);
    let oid = Oid(5);
    write(s, p, 1, oid, 0, &pattern(5, 300_000));
    let stat = ObjectStat {
        oid,
        size: 150_000,
        version: 40,
        mtime: 3,
        attrs: [("k".to_string(), Bytes::from_static(b"v"))].into(),
        otype: Some("doc".into()),
        fields: [("n".to_string(), Value::I64(1))].into(),
    };
    let data = pattern(6, 150_000);
    let piece = |off: usize, len: usize| ObjectPiece {
        stat: stat.clone(),
        offset: off as u64,
        data: Bytes::copy_from_slice(&data[off..off + len]),
    };
    s.install(p, oid, &piece(0, 100_000), true, None).unwrap();
    let entry = LogEntry {
        version: 40,
        oid,
        op: LogOp::Modify,
        prior: 1,
    };
    s.install(p, oid, &piece(100_000, 50_000), false, Some(&entry))
        .unwrap();
    assert_eq!(read_all(s, p, oid), data);
    let st = s.stat(p, oid).unwrap().unwrap();
    assert_eq!(st, stat);
    assert_eq!(s.pg_info(p).unwrap().last_update, 40);
    let (hits, _) = s.query(p, "doc", &Filter::default(), None, 10).unwrap();
    assert_eq!(hits.len(), 1);
    // Installing again (a replay) converges.
    s.install(p, oid, &piece(0, 100_000), true, None).unwrap();
    s.install(p, oid, &piece(100_000, 50_000), false, Some(&entry))
        .unwrap();
    assert_eq!(read_all(s, p, oid), data);
    s.remove(p, oid).unwrap();
    assert!(s.stat(p, oid).unwrap().is_none());
    assert!(s
        .query(p, "doc", &Filter::default(), None, 10)
        .unwrap()
        .0
        .is_empty());
    s.remove(p, oid).unwrap();
    assert_eq!(s.used_bytes(), 0);
}

/// Random ops on a few objects, compared after each op with the model.
pub fn random_ops_match_model(s: &dyn Store, seed: u64) {
    let model = MemStore::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let p = pg(100 + seed as u32);
    for v in 1..=400u64 {
        let oid = Oid(rng.gen_range(0..4));
        let sizes = [1u64, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7];
        let op = match rng.gen_range(0..10) {
            0 => ObjOp::WriteFull {
                data: Bytes::from(pattern(v, sizes[rng.gen_range(0..sizes.len())] as usize)),
            },
            1..=5 => ObjOp::Write {
                offset: rng.gen_range(0..4 * CHUNK),
                // Up to 4 chunks: writes of 128 KiB and more take the O_DIRECT path of
                // the sled store beside buffered ones over the same bytes.
                data: Bytes::from(pattern(v, rng.gen_range(0..4 * CHUNK) as usize)),
            },
            6 | 7 => ObjOp::Truncate {
                size: rng.gen_range(0..5 * CHUNK),
            },
            8 => ObjOp::Delete,
            _ => ObjOp::SetAttrs {
                set: [(format!("a{}", v % 3), Bytes::from(pattern(v, 3)))].into(),
                remove: vec![format!("a{}", (v + 1) % 3)],
            },
        };
        let a = s.apply(p, v, oid, &op, v as i64).unwrap();
        let b = model.apply(p, v, oid, &op, v as i64).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            s.stat(p, oid).unwrap(),
            model.stat(p, oid).unwrap(),
            "op {v}: {op:?}"
        );
        if model.stat(p, oid).unwrap().is_some() {
            assert!(read_all(s, p, oid) == read_all(&model, p, oid), "op {v}");
            s.verify(p, oid).unwrap();
        }
    }
    assert_eq!(
        s.scan(p, None, 100).unwrap(),
        model.scan(p, None, 100).unwrap()
    );
    let in_pg: u64 = model
        .scan(p, None, 100)
        .unwrap()
        .0
        .iter()
        .map(|i| i.size)
        .sum();
    assert_eq!(model.used_bytes(), in_pg);
    s.remove_pg(p).unwrap();
    assert_eq!(s.used_bytes(), 0);
}

macro_rules! suite {
    ($name:ident, $mk:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn write_read_offsets_and_holes() {
                let (s, _g) = $mk(StoreOptions::default());
                super::write_read_offsets_and_holes(&s);
            }
            #[test]
            fn truncate_up_and_down() {
                let (s, _g) = $mk(StoreOptions::default());
                super::truncate_up_and_down(&s);
            }
            #[test]
            fn write_full_delete_and_attrs() {
                let (s, _g) = $mk(StoreOptions::default());
                super::write_full_delete_and_attrs(&s);
            }
            #[test]
            fn list_paging_and_pgs() {
                let (s, _g) = $mk(StoreOptions::default());
                super::list_paging_and_pgs(&s);
            }
            #[test]
            fn pg_log_and_info() {
                let (s, _g) = $mk(StoreOptions::default());
                super::pg_log_and_info(&s);
            }
            #[test]
            fn log_is_bounded() {
                let (s, _g) = $mk(StoreOptions {
                    log_keep: 50,
                    ..StoreOptions::default()
                });
                super::log_is_bounded(&s, 50);
            }
            #[test]
            fn typed_fields_and_queries_match_a_model() {
                let (s, _g) = $mk(StoreOptions::default());
                super::typed_fields_and_queries(&s, &MemStore::default(), 17);
            }
            #[test]
            fn large_object_in_pieces() {
                let (s, _g) = $mk(StoreOptions::default());
                super::large_object_in_pieces(&s, 64 << 20);
            }
            #[test]
            fn install_and_remove() {
                let (s, _g) = $mk(StoreOptions::default());
                super::install_and_remove(&s);
            }
            #[test]
            fn random_ops_match_model() {
                let (s, _g) = $mk(StoreOptions::default());
                for seed in 0..3 {
                    super::random_ops_match_model(&s, seed);
                }
            }
        }
    };
}

fn mem(opts: StoreOptions) -> (MemStore, ()) {
    (MemStore::new(opts), ())
}

fn sled(opts: StoreOptions) -> (SledStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (SledStore::open(dir.path(), opts).unwrap(), dir)
}

suite!(mem_store, mem);
suite!(sled_store, sled);

/// Path of the one data file under `objects/`.
fn data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("objects")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn sled_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let big = pattern(8, 500_000);
    {
        let s = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(&s, pg(1), 1, Oid(1), 0, &big);
        write(&s, pg(1), 2, Oid(2), 0, b"inline");
        s.apply(
            pg(1),
            3,
            Oid(2),
            &ObjOp::SetTyped {
                otype: "t".into(),
                fields: [("f".to_string(), Value::I64(5))].into(),
            },
            0,
        )
        .unwrap();
        s.sync().unwrap();
    }
    let s = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(read_all(&s, pg(1), Oid(1)), big);
    assert_eq!(read_all(&s, pg(1), Oid(2)), b"inline");
    assert_eq!(s.pg_info(pg(1)).unwrap().last_update, 3);
    assert_eq!(s.pg_log(pg(1), 0).unwrap().len(), 3);
    assert_eq!(s.used_bytes(), big.len() as u64 + 6);
    let f = Filter::parse("f >= 5").unwrap();
    assert_eq!(s.query(pg(1), "t", &f, None, 10).unwrap().0.len(), 1);
}

#[test]
fn sled_rejects_a_foreign_format() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        s.db_for_tests()
            .insert("format", "something-else/9")
            .unwrap();
        s.sync().unwrap();
    }
    assert!(matches!(
        SledStore::open(dir.path(), StoreOptions::default()),
        Err(Error::Format { .. })
    ));
}

#[test]
fn flipped_byte_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
    let data = pattern(9, (3 * CHUNK) as usize);
    write(&s, pg(1), 1, Oid(1), 0, &data);
    s.sync().unwrap();
    let files = data_files(dir.path());
    assert_eq!(files.len(), 1);
    flip_byte(&files[0], CHUNK + 100);
    // Chunks 0 and 2 still read; anything touching chunk 1 is corrupt at its start.
    assert_eq!(
        s.read(pg(1), Oid(1), 0, CHUNK).unwrap(),
        &data[..CHUNK as usize]
    );
    assert_eq!(
        s.read(pg(1), Oid(1), 2 * CHUNK, CHUNK).unwrap(),
        &data[2 * CHUNK as usize..]
    );
    match s.read(pg(1), Oid(1), CHUNK - 10, 20) {
        Err(Error::Corrupt { oid, offset }) => {
            assert_eq!((oid, offset), (Oid(1), CHUNK));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.verify(pg(1), Oid(1)),
        Err(Error::Corrupt { .. })
    ));
    // A partial rewrite of the bad chunk cannot vouch for the rest of it.
    write(&s, pg(1), 2, Oid(1), CHUNK + 10, b"new");
    assert!(matches!(
        s.read(pg(1), Oid(1), CHUNK, 5),
        Err(Error::Corrupt { .. })
    ));
    // A full rewrite heals it.
    write(
        &s,
        pg(1),
        3,
        Oid(1),
        CHUNK,
        &data[CHUNK as usize..2 * CHUNK as usize],
    );
    assert_eq!(read_all(&s, pg(1), Oid(1)), data);
    // A vanished data file is corruption too, not a missing object.
    std::fs::remove_file(&files[0]).unwrap();
    assert!(matches!(
        s.read(pg(1), Oid(1), 0, 1),
        Err(Error::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn flipped_inline_byte_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
    write(&s, pg(1), 1, Oid(3), 0, b"inline data");
    s.corrupt_inline_for_tests(pg(1), Oid(3), 2);
    assert!(matches!(
        s.read(pg(1), Oid(3), 0, 100),
        Err(Error::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn replay_mode_trusts_data_over_stale_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
    let data = pattern(10, (2 * CHUNK) as usize);
    write(&s, pg(1), 1, Oid(1), 0, &data);
    // The data file holds a newer write whose checksums never reached the database.
    let files = data_files(dir.path());
    flip_byte(&files[0], 10);
    s.set_replaying(true);
    write(&s, pg(1), 2, Oid(1), 0, b"abc");
    s.set_replaying(false);
    let mut want = data.clone();
    want[10] ^= 0x5A;
    want[..3].copy_from_slice(b"abc");
    assert_eq!(read_all(&s, pg(1), Oid(1)), want);
}
