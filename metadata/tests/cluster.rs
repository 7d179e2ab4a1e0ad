//! An in-process metadata cluster: election, replication, failover, restarts, snapshots,
//! membership changes, OSD liveness and bad input.

mod common;

use cairn_metadata::MetaError;
use cairn_proto::msg::{MetaCommand, MetaRequest, MetaResponse, MetaResult, OsdHeartbeat};
use cairn_proto::rpc::RpcError;
use cairn_proto::{OsdId, PgId, PgState, PoolId, WireError};
use common::*;
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_apply_and_converge() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::start(3, |_| {}).await;
        let leader = c.wait_leader(ELECTION).await;
        let meta = c.client();
        assert_eq!(
            meta.command(pool("rbd")).await.unwrap(),
            MetaResult::Pool(PoolId(1))
        );
        assert_eq!(
            meta.command(boot("127.0.0.1:1")).await.unwrap(),
            MetaResult::Osd(OsdId(0))
        );
        assert_eq!(
            meta.command(boot("127.0.0.1:2")).await.unwrap(),
            MetaResult::Osd(OsdId(1))
        );
        let map = meta.get_map().await.unwrap();
        assert_eq!(map.meta_leader, Some(leader));
        assert_eq!(map.pool_by_name("rbd").unwrap().pg_num, 32);
        assert_eq!(map.osds.len(), 2);
        assert!(map.osds.values().all(|o| o.up && o.in_cluster));
        assert_eq!(map.meta_members.len(), 3);
        // Bootstrap is epoch 1; three changes since.
        assert_eq!(map.epoch, 4);
        c.wait_converged(&map, CONVERGE).await;

        // A follower redirects to the leader, with its address.
        let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
        match c.call(follower, MetaRequest::GetMap).await {
            Err(RpcError::Remote(WireError::NotLeader { leader: l, addr })) => {
                assert_eq!(l, Some(leader));
                assert_eq!(addr, Some(c.addr(leader)));
            }
            other => panic!("{other:?}"),
        }
        // Status works everywhere (polled: a replica publishes its raft state after applying).
        for id in c.nodes.keys() {
            let s = wait_for(CONVERGE, "status past the bootstrap snapshot", || async {
                match c.call(*id, MetaRequest::Status).await {
                    Ok(MetaResponse::Status(s)) if s.applied > 5 => Some(s),
                    _ => None,
                }
            })
            .await;
            assert_eq!(s.id, *id);
            assert_eq!(s.leader, Some(leader));
            assert_eq!(s.members.len(), 3);
            // Past the bootstrap term, and never applying the uncommitted.
            assert!(s.term > 5 && s.applied <= s.commit, "{s:?}");
        }
        let rpc = cairn_proto::rpc::RpcClient::new();
        assert_eq!(
            rpc.call(
                &c.addr(follower),
                cairn_proto::Request::Ping,
                Duration::from_secs(5)
            )
            .await
            .unwrap(),
            cairn_proto::Response::Pong
        );
        let mut c = c;
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_commits_and_restarted_leader_catches_up() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(3, |cfg| cfg.snapshot_every = 8).await;
        let old = c.wait_leader(ELECTION).await;
        let meta = c.client();
        for i in 0..5 {
            meta.command(pool(&format!("p{i}"))).await.unwrap();
        }
        let before = meta.get_map().await.unwrap();

        // Nothing else is proposed, so this is its log when it stops.
        let old_last = c.info(old).last_index;
        let killed_at = Instant::now();
        c.stop(old).await;
        // The client follows the new leader by itself.
        let after = meta.get_map().await.unwrap();
        let failover = killed_at.elapsed();
        assert!(
            failover < Duration::from_secs(15),
            "failover took {failover:?}"
        );
        let new = after.meta_leader.unwrap();
        assert_ne!(new, old);
        assert_eq!(strip(&after), strip(&before), "a committed change was lost");

        // Enough commands that the survivors compact past everything the stopped one has.
        for i in 0..12 {
            meta.command(pool(&format!("after-failover-{i}")))
                .await
                .unwrap();
        }
        let map = meta.get_map().await.unwrap();
        assert_eq!(map.pools.len(), 17);
        let new_first = c.info(new).first_index;

        c.restart(old).await;
        assert!(
            old_last + 1 < new_first,
            "the leader's log still reaches the restarted replica ({old_last} vs {new_first})"
        );
        c.wait_converged(&map, CONVERGE).await;
        // Behind the leader's log, it could only catch up through a snapshot.
        let caught_up = wait_for(
            CONVERGE,
            "the lagging replica to install a snapshot",
            || async {
                let i = c.info(old);
                (i.snapshot_index >= new_first - 1).then_some(i)
            },
        )
        .await;
        assert!(caught_up.first_index > old_last + 1, "{caught_up:?}");
        wait_for(
            ELECTION,
            "the restarted replica to follow the new leader",
            || async { (c.info(old).leader == Some(new)).then_some(()) },
        )
        .await;
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_from_disk_keeps_state() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(3, |cfg| cfg.snapshot_every = 7).await;
        c.wait_leader(ELECTION).await;
        let meta = c.client();
        for i in 0..10 {
            meta.command(pool(&format!("p{i}"))).await.unwrap();
        }
        meta.command(boot("127.0.0.1:9")).await.unwrap();
        meta.command(MetaCommand::DeletePool { name: "p3".into() })
            .await
            .unwrap();
        let before = meta.get_map().await.unwrap();
        c.wait_converged(&before, CONVERGE).await;
        c.stop_all().await;

        for id in 1..=3 {
            c.restart(id).await;
        }
        c.wait_leader(ELECTION).await;
        let meta = c.client();
        let after = meta.get_map().await.unwrap();
        assert_eq!(strip(&after), strip(&before));
        // Ids continue where they left off (pool ids are never reused).
        assert_eq!(
            meta.command(pool("p-new")).await.unwrap(),
            MetaResult::Pool(PoolId(11))
        );
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_a_new_member_catches_up_from_one() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(3, |cfg| cfg.snapshot_every = 10).await;
        let leader = c.wait_leader(ELECTION).await;
        let meta = c.client();
        for i in 0..40 {
            meta.command(pool(&format!("p{i}"))).await.unwrap();
        }
        let map = meta.get_map().await.unwrap();
        c.wait_converged(&map, CONVERGE).await;
        for id in 1..=3 {
            let info = c.info(id);
            assert!(
                info.first_index > 20 && info.snapshot_index >= 20,
                "log of {id} not compacted: {info:?}"
            );
        }

        // A replica that starts empty joins and is brought up to date by a snapshot.
        let addr4 = c.start_joiner(4, |cfg| cfg.snapshot_every = 10).await;
        assert!(c.info(4).members.is_empty());
        c.call(
            leader,
            MetaRequest::AddMember {
                id: 4,
                addr: addr4.clone(),
            },
        )
        .await
        .unwrap();
        let map = meta.get_map().await.unwrap();
        assert_eq!(map.meta_members.get(&4), Some(&addr4));
        c.wait_converged(&map, CONVERGE).await;
        // The map and the raft state are published separately: poll for both.
        let info4 = wait_for(CONVERGE, "the new member to install a snapshot", || async {
            let i = c.info(4);
            (i.snapshot_index > 20 && i.leader.is_some()).then_some(i)
        })
        .await;
        assert_eq!(info4.leader, Some(leader));
        // The new member redirects clients to the leader like any follower.
        match c.call(4, MetaRequest::GetMap).await {
            Err(RpcError::Remote(WireError::NotLeader { leader: l, addr })) => {
                assert_eq!(l, Some(leader));
                assert_eq!(addr, Some(c.addr(leader)));
            }
            other => panic!("{other:?}"),
        }
        // And it takes part: with 4 voters a commit needs 3, so it keeps up with new commands.
        meta.command(pool("with-four")).await.unwrap();
        let map = meta.get_map().await.unwrap();
        c.wait_converged(&map, CONVERGE).await;

        // Adding it again is refused.
        match c
            .call(leader, MetaRequest::AddMember { id: 4, addr: addr4 })
            .await
        {
            Err(RpcError::Remote(WireError::Exists { kind, .. })) => assert_eq!(kind, "member"),
            other => panic!("{other:?}"),
        }

        // Remove a follower other than the new one: the leader stops contacting it.
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        c.call(leader, MetaRequest::RemoveMember { id: victim })
            .await
            .unwrap();
        let map = meta.get_map().await.unwrap();
        assert!(!map.meta_members.contains_key(&victim));
        assert_eq!(map.meta_members.len(), 3);
        let mut last = c.info(victim).leader_messages;
        let mut quiet_since = Instant::now();
        wait_for(
            CONVERGE,
            "the removed replica to stop hearing from the leader",
            || {
                let now = c.info(victim).leader_messages;
                if now != last {
                    last = now;
                    quiet_since = Instant::now();
                }
                let quiet = quiet_since.elapsed() > Duration::from_secs(2);
                async move { quiet.then_some(()) }
            },
        )
        .await;
        // The cluster goes on without it.
        meta.command(pool("after-removal")).await.unwrap();
        match c
            .call(leader, MetaRequest::RemoveMember { id: victim })
            .await
        {
            Err(RpcError::Remote(WireError::NotFound { kind, .. })) => assert_eq!(kind, "member"),
            other => panic!("{other:?}"),
        }
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_itself_hands_over_to_the_rest() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(3, |_| {}).await;
        let old = c.wait_leader(ELECTION).await;
        let meta = c.client();
        meta.command(pool("before")).await.unwrap();
        c.call(old, MetaRequest::RemoveMember { id: old })
            .await
            .unwrap();
        let removed_at = Instant::now();
        wait_for(ELECTION, "the old leader to notice its removal", || async {
            c.info(old).removed.then_some(())
        })
        .await;
        let new = wait_for(ELECTION, "a new leader among the rest", || async {
            c.nodes
                .keys()
                .filter(|id| **id != old)
                .find(|id| c.info(**id).is_leader)
                .copied()
        })
        .await;
        assert!(removed_at.elapsed() < Duration::from_secs(15));
        meta.command(pool("after")).await.unwrap();
        let map = meta.get_map().await.unwrap();
        assert_eq!(map.meta_leader, Some(new));
        assert!(!map.meta_members.contains_key(&old));
        assert_eq!(map.meta_members.len(), 2);
        assert!(map.pool_by_name("before").is_some() && map.pool_by_name("after").is_some());
        // The removed replica only redirects now.
        match c.call(old, MetaRequest::GetMap).await {
            Err(RpcError::Remote(WireError::NotLeader { .. })) => {}
            other => panic!("{other:?}"),
        }
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

fn heartbeat(id: OsdId, pgs: Vec<(PgId, PgState)>) -> MetaRequest {
    MetaRequest::Heartbeat(OsdHeartbeat {
        id,
        epoch: 0,
        capacity: 1000,
        used: 250,
        pgs,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_osds_go_down_then_out_and_come_back_up_when_they_heartbeat() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(1, |cfg| {
            cfg.osd_down_after_ms = 800;
            cfg.osd_out_after_ms = 1500;
        })
        .await;
        c.wait_leader(ELECTION).await;
        let meta = c.client();
        let alive = match meta.command(boot("127.0.0.1:1")).await.unwrap() {
            MetaResult::Osd(id) => id,
            other => panic!("{other:?}"),
        };
        let silent = match meta.command(boot("127.0.0.1:2")).await.unwrap() {
            MetaResult::Osd(id) => id,
            other => panic!("{other:?}"),
        };
        let pg = PgId::new(PoolId(1), 3);
        let beating = {
            let meta = meta.clone();
            tokio::spawn(async move {
                loop {
                    meta.call(heartbeat(alive, vec![(pg, PgState::ActiveClean)]))
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let down = wait_for(CONVERGE, "the silent osd to be marked down", || async {
            let m = meta.get_map().await.unwrap();
            (!m.osds[&silent].up).then_some(m)
        })
        .await;
        assert!(down.osds[&silent].down_since_ms.is_some());
        assert!(down.osds[&silent].in_cluster);
        assert!(down.osds[&alive].up, "a heartbeating osd was marked down");
        // Usage comes from the heartbeats.
        assert_eq!(down.osds[&alive].used, 250);
        assert_eq!(down.osds[&alive].capacity, 1000);
        let out = wait_for(CONVERGE, "the down osd to be marked out", || async {
            let m = meta.get_map().await.unwrap();
            (!m.osds[&silent].in_cluster).then_some(m)
        })
        .await;
        assert!(out.epoch > down.epoch);
        assert!(out.osds[&alive].up && out.osds[&alive].in_cluster);

        // It heartbeats again: up at once, and the ack carries the new epoch.
        let Ok(MetaResponse::HeartbeatAck { epoch }) =
            meta.call(heartbeat(silent, Vec::new())).await
        else {
            panic!("no heartbeat ack")
        };
        let m = meta.get_map().await.unwrap();
        assert!(m.osds[&silent].up);
        assert!(m.osds[&silent].down_since_ms.is_none());
        assert_eq!(epoch, m.epoch);

        // The leader reports the PG states it heard.
        let Ok(MetaResponse::Status(s)) = meta.call(MetaRequest::Status).await else {
            panic!("no status")
        };
        assert!(s.pgs.contains(&(pg, PgState::ActiveClean)), "{:?}", s.pgs);

        // Heartbeats from an unknown OSD are refused.
        match meta.call(heartbeat(OsdId(77), Vec::new())).await {
            Err(RpcError::Remote(WireError::NotFound { kind, .. })) => assert_eq!(kind, "osd"),
            other => panic!("{other:?}"),
        }
        beating.abort();
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_failures_are_checked_by_pinging_the_osd() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(1, |_| {}).await;
        let leader = c.wait_leader(ELECTION).await;
        let meta = c.client();
        // An OSD "listening" where something answers pings (the replica itself) and one where
        // nothing listens.
        let answering = c.addr(leader);
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let MetaResult::Osd(a) = meta.command(boot(&answering)).await.unwrap() else {
            panic!()
        };
        let MetaResult::Osd(d) = meta.command(boot(&dead)).await.unwrap() else {
            panic!()
        };
        let epoch = meta.get_map().await.unwrap().epoch;
        meta.call(MetaRequest::ReportFailure {
            reporter: d,
            failed: a,
        })
        .await
        .unwrap();
        let m = meta.get_map().await.unwrap();
        assert!(m.osds[&a].up, "an answering osd was marked down");
        assert_eq!(m.epoch, epoch);
        meta.call(MetaRequest::ReportFailure {
            reporter: a,
            failed: d,
        })
        .await
        .unwrap();
        let m = meta.get_map().await.unwrap();
        assert!(!m.osds[&d].up, "a dead osd stayed up");
        assert_eq!(m.epoch, epoch + 1);
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_are_refused_and_change_nothing() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(3, |_| {}).await;
        c.wait_leader(ELECTION).await;
        let meta = c.client();
        meta.command(pool("taken")).await.unwrap();
        let before = meta.get_map().await.unwrap();
        let bad_pool = |size, min_size, pg_num| MetaCommand::CreatePool {
            name: "bad".into(),
            size,
            min_size,
            pg_num,
            mode: Default::default(),
            failure_domain: Default::default(),
        };
        for (cmd, needle) in [
            (bad_pool(0, 0, 8), "size"),
            (bad_pool(2, 3, 8), "min_size"),
            (bad_pool(2, 0, 8), "min_size"),
            (bad_pool(2, 1, 0), "pg_num"),
            (bad_pool(2, 1, 65_537), "pg_num"),
            (
                MetaCommand::SetOsdWeight {
                    id: OsdId(0),
                    weight: -1.0,
                },
                "weight",
            ),
        ] {
            match meta.command(cmd.clone()).await {
                Err(RpcError::Remote(WireError::Invalid { reason })) => {
                    assert!(reason.contains(needle), "{cmd:?}: {reason}")
                }
                other => panic!("{cmd:?}: {other:?}"),
            }
        }
        match meta.command(pool("taken")).await {
            Err(RpcError::Remote(WireError::Exists { kind, name })) => {
                assert_eq!((kind.as_str(), name.as_str()), ("pool", "taken"))
            }
            other => panic!("{other:?}"),
        }
        for cmd in [
            MetaCommand::DeletePool {
                name: "missing".into(),
            },
            MetaCommand::SetOsdState {
                id: OsdId(5),
                up: Some(false),
                in_cluster: None,
            },
        ] {
            match meta.command(cmd.clone()).await {
                Err(RpcError::Remote(WireError::NotFound { .. })) => {}
                other => panic!("{cmd:?}: {other:?}"),
            }
        }
        let after = meta.get_map().await.unwrap();
        assert_eq!(strip(&after), strip(&before));
        // Refused commands never reach other replicas either.
        c.wait_converged(&before, CONVERGE).await;
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_before_anything_starts() {
    tokio::time::timeout(TEST_LIMIT, async {
        let cfg = cairn_metadata::MetaConfig {
            id: 3,
            ..base_config()
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        match cairn_metadata::run(cfg, rx).await {
            Err(MetaError::Config { field, .. }) => assert_eq!(field, "peers"),
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_entry_that_does_not_decode_stops_the_replica() {
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType};
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(1, |_| {}).await;
        c.wait_leader(ELECTION).await;
        c.client().command(pool("p")).await.unwrap();
        let info = wait_for(CONVERGE, "everything committed and applied", || async {
            let i = c.info(1);
            (i.applied == i.last_index && i.commit == i.last_index).then_some(i)
        })
        .await;
        // A "leader" of a later term appends and commits an entry no replica can decode.
        let next = info.last_index + 1;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 1;
        m.from = 9;
        m.term = info.term + 1;
        m.log_term = info.term;
        m.index = info.last_index;
        m.commit = next;
        m.mut_entries().push(Entry {
            index: next,
            term: info.term + 1,
            data: vec![0xff, 0, 1, 2].into(),
            ..Default::default()
        });
        c.call(1, MetaRequest::Raft(m.write_to_bytes().unwrap()))
            .await
            .unwrap();
        wait_for(CONVERGE, "the replica to stop", || async {
            c.nodes[&1].is_finished().then_some(())
        })
        .await;
        let h = c.nodes.remove(&1).unwrap();
        match h.stop().await {
            Err(MetaError::BadEntry { index, .. }) => assert_eq!(index, next),
            other => panic!("{other:?}"),
        }
        // It is on disk now: the replica refuses to run on past it after a restart too.
        c.restart(1).await;
        wait_for(CONVERGE, "the restarted replica to stop", || async {
            c.nodes[&1].is_finished().then_some(())
        })
        .await;
        let h = c.nodes.remove(&1).unwrap();
        assert!(matches!(h.stop().await, Err(MetaError::BadEntry { .. })));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_shutdown_and_keeps_its_state() {
    tokio::time::timeout(TEST_LIMIT, async {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        // `run` binds by itself: find a free port first.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let cfg = cairn_metadata::MetaConfig {
            id: 1,
            listen: addr.clone(),
            data_dir: dir.path().to_path_buf(),
            peers: [(1, addr.clone())].into(),
            ..base_config()
        };
        let meta = cairn_proto::meta_client::MetaClient::new(
            cairn_proto::rpc::RpcClient::new(),
            vec![addr.clone()],
        );
        for round in 0..2 {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let node = tokio::spawn(cairn_metadata::run(cfg.clone(), rx));
            if round == 0 {
                meta.command(pool("kept")).await.unwrap();
            }
            let map = meta.get_map().await.unwrap();
            assert!(map.pool_by_name("kept").is_some());
            assert_eq!(map.meta_leader, Some(1));
            tx.send(true).unwrap();
            node.await.unwrap().unwrap();
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_steps_down_and_the_majority_goes_on() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start_with(3, true, |_| {}).await;
        let old = c.wait_leader(ELECTION).await;
        let old_term = c.info(old).term;
        let meta = c.client();
        meta.command(pool("before")).await.unwrap();

        // Nothing reaches the leader any more (its own messages still get out).
        c.cut(old, true);
        let new = wait_for(ELECTION, "a new leader in the majority", || async {
            c.nodes
                .keys()
                .filter(|id| **id != old)
                .map(|id| c.info(*id))
                .find(|i| i.is_leader && i.term > old_term)
                .map(|i| i.id)
        })
        .await;
        // Without acknowledgements it cannot count a quorum, so it steps down.
        wait_for(ELECTION, "the cut-off leader to step down", || async {
            (!c.info(old).is_leader).then_some(())
        })
        .await;
        meta.command(pool("during")).await.unwrap();
        let map = meta.get_map().await.unwrap();
        assert_eq!(map.meta_leader, Some(new));
        assert!(map.pool_by_name("before").is_some());
        assert!(
            c.nodes[&old].map().pool_by_name("during").is_none(),
            "a cut-off replica applied a write"
        );

        // Reconnected, it follows the new leader and catches up.
        c.cut(old, false);
        c.wait_converged(&map, CONVERGE).await;
        wait_for(ELECTION, "the old leader to follow the new one", || async {
            (c.info(old).leader == Some(new)).then_some(())
        })
        .await;
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_all_apply_once_with_distinct_ids() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut c = Cluster::start(3, |cfg| cfg.snapshot_every = 16).await;
        c.wait_leader(ELECTION).await;
        let meta = c.client();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let meta = meta.clone();
                tokio::spawn(async move {
                    let cmd = if i % 2 == 0 {
                        pool(&format!("c{i}"))
                    } else {
                        boot(&format!("127.0.0.1:{}", 1000 + i))
                    };
                    meta.command(cmd).await.unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let pools: std::collections::BTreeSet<_> = results
            .iter()
            .filter_map(|r| match r {
                MetaResult::Pool(p) => Some(*p),
                _ => None,
            })
            .collect();
        let osds: std::collections::BTreeSet<_> = results
            .iter()
            .filter_map(|r| match r {
                MetaResult::Osd(o) => Some(*o),
                _ => None,
            })
            .collect();
        assert_eq!((pools.len(), osds.len()), (20, 20));
        let map = meta.get_map().await.unwrap();
        assert_eq!(map.pools.len(), 20);
        assert_eq!(map.osds.len(), 20);
        assert_eq!(
            map.osds
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            osds
        );
        assert_eq!(map.epoch, 1 + 40);
        c.wait_converged(&map, CONVERGE).await;
        c.stop_all().await;
    })
    .await
    .expect("test timed out");
}
