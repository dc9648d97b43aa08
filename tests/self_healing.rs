//! Self-healing: combined faults that leave regions different for good
//! without anti-entropy converge with it, and anti-entropy says what it did.

mod support;

use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(30);

use geosync::lab::Lab;
use support::*;

/// Three regions with writes in every one: one region's agent is killed and
/// restarted, then another region's Redis restarts empty with its agent
/// down. The changes that region 2 had sent only to region 3 before its
/// data was lost would never reach region 1 again (their origin lost them);
/// region 3 repairs region 1 by anti-entropy. Without anti-entropy this
/// scenario ended with 76 to 124 keys different in 3 runs of 3.
#[test]
fn a_killed_agent_and_a_redis_restarted_empty_converge_by_anti_entropy() {
    let names: Vec<String> = ["1", "2", "3"].map(String::from).to_vec();
    let seed = seed_from_env();
    let replay = format!(
        "GEOSYNC_SEED={seed} GEOSYNC_TEST_REDIS_SERVER={} cargo nextest run --test self_healing",
        redis_server_bin()
    );
    println!("replay: {replay}");
    let agent_args = ["--anti-entropy-interval-secs".to_string(), "1".to_string()];
    let mut lab = Lab::start(&names, seed, |b| b, &agent_args).unwrap();
    let steps = [
        "write 1 2000 keys=300",
        "write 2 2000 keys=300",
        "write 3 2000 keys=300",
        "kill-agent 1",
        "write 2 1000 keys=300",
        "write 3 1000 keys=300",
        "write 1 1000 keys=300",
        "start-agent 1",
        "write 1 500 keys=300",
        "kill-agent 2",
        "restart-redis-empty 2",
        "write 3 1000 keys=300",
        "write 1 1000 keys=300",
        "start-agent 2",
        "write 2 500 keys=300",
        "wait-converged 60s",
    ];
    if let Err(f) = lab.run_texts(&steps) {
        panic!("{f}\nreplay: {replay}");
    }
    // Whether a run loses anything depends on timing (most runs did):
    // printed, not asserted; keys_lost_without_a_trace_... loses keys for
    // sure.
    let repaired = lab.mesh.metric("geosync_anti_entropy_keys_repaired_total");
    println!("keys repaired by anti-entropy: {repaired}");
    // Once converged, a round with every peer finds nothing different.
    let since = now_ms() / 1000;
    for r in &lab.mesh.regions {
        wait_until(
            &format!("region {} has a clean round with every peer", r.name),
            Duration::from_secs(20),
            || {
                let (_, body) = r.agent.get("/metrics").unwrap();
                let stamps: Vec<f64> = body
                    .lines()
                    .filter(|l| {
                        l.starts_with("geosync_anti_entropy_last_clean_round_timestamp_seconds{")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                    .collect();
                stamps.len() == 2 && stamps.iter().all(|t| *t >= since as f64)
            },
        );
    }
}

/// Keys one region lost without a trace come back from a peer by
/// anti-entropy, also after that region's Redis restarted empty under a
/// running agent (its anti-entropy connection must reconnect).
#[test]
fn keys_lost_without_a_trace_come_back_by_anti_entropy() {
    let mut mesh = Mesh::with_agent_args(2, &["--anti-entropy-interval-secs", "1"]);
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let mut a = mesh.regions[0].redis.conn();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut a).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    // Region 2's anti-entropy has a connection to its Redis when it restarts.
    let agent = &mesh.regions[1].agent;
    wait_until("a round in region 2", SETTLE, || {
        agent.metric("geosync_anti_entropy_rounds_total") >= 1.0
    });

    mesh.restart_redis_empty(1);
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);

    let repaired = |m: &Mesh| {
        m.regions[1]
            .agent
            .metric("geosync_anti_entropy_keys_repaired_total")
    };
    let before = repaired(&mesh);
    lose(&mesh.regions[1].redis, &keys[..50]);
    assert!(!mesh.differences(&[0]).is_empty(), "region 2 lost the keys");
    mesh.wait_converged(&[0], SETTLE);
    // The round's counts are published when it ends, after the keys landed.
    wait_until("the round counts the 50 keys it repaired", SETTLE, || {
        repaired(&mesh) - before >= 50.0
    });
    assert_eq!(repaired(&mesh) - before, 50.0, "nothing else was repaired");
}

/// Every script that writes a record keeps its bucket's digest: after
/// writes of every type in both regions (large collections in pieces,
/// expiries, deletes, a flush from a peer), each region's stored digests
/// are what its records make, and rounds find nothing different.
#[test]
fn stored_digests_follow_every_record_change() {
    let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
    let seed = seed_from_env();
    println!("replay: GEOSYNC_SEED={seed} cargo nextest run --test self_healing stored_digests");
    let args: Vec<String> = [
        "--anti-entropy-interval-secs",
        "1",
        "--max-key-elements",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    let mut lab = Lab::start(&names, seed, |b| b, &args).unwrap();
    let steps = [
        "write a 2000 keys=100 ttl=500ms..3s",
        "write b 2000 keys=100 ttl=500ms..3s",
        "redis a RPUSH big 0 1 2 3 4 5 6 7 8 9",
        "wait-converged",
        "redis b FLUSHDB",
        "write a 500 keys=100",
        "write b 500 keys=100",
        "wait-converged",
    ];
    lab.run_texts(&steps).unwrap_or_else(|f| panic!("{f}"));
    // A large set, in pieces.
    let mut a = lab.mesh.regions[0].redis.conn();
    let members: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    let _: () = redis::cmd("SADD")
        .arg("large")
        .arg(&members)
        .query(&mut a)
        .unwrap();
    lab.mesh.wait_converged(&[0], SETTLE);
    for r in &lab.mesh.regions {
        let wrong = drifted_digests(&mut r.redis.meta_conn());
        assert!(
            wrong.is_empty(),
            "region {}: stored digests drifted in {wrong:?}",
            r.name
        );
    }
    // Counts are published when a round ends, so a round that began
    // before the regions converged may still add to them: each region's
    // baseline is taken once the round it may be in has ended, and the
    // rounds counted after it all began on converged regions.
    let count = |r: &Region, name: &str| r.agent.metric(name);
    let rounds = "geosync_anti_entropy_rounds_total";
    let differing = "geosync_anti_entropy_buckets_differing_total";
    let mut baseline = Vec::new();
    for r in &lab.mesh.regions {
        let r0 = count(r, rounds);
        wait_until("the round under way ends", SETTLE, || count(r, rounds) > r0);
        baseline.push((count(r, rounds), count(r, differing)));
    }
    for (r, (r1, d1)) in lab.mesh.regions.iter().zip(baseline) {
        wait_until("two more rounds", SETTLE, || count(r, rounds) >= r1 + 2.0);
        assert_eq!(
            count(r, differing),
            d1,
            "region {}: rounds on converged regions found differences",
            r.name
        );
    }
}

/// A FLUSHDB made while the peer's agent is down, whose origin agent is
/// then killed before it could deliver it (its outbox dies with it): the
/// origin's restarted agent ships its recorded flush again, and the peer
/// deletes what the flush deleted. Anti-entropy is off: the re-ship alone
/// must carry it.
#[test]
fn a_flush_whose_origin_agent_died_before_delivering_it_still_reaches_the_peer() {
    let mut mesh = Mesh::with_agent_args(2, &["--anti-entropy-interval-secs", "0"]);
    let mut a = mesh.regions[0].redis.conn();
    set_keys(&mut a, 100);
    mesh.wait_converged(&[0], SETTLE);
    mesh.kill_agent(1);
    let _: () = redis::cmd("FLUSHDB").query(&mut a).unwrap();
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("flush")
        .query(&mut a)
        .unwrap();
    mesh.wait_stamped(0, SETTLE);
    mesh.kill_agent(0);
    mesh.regions[0].agent.restart();
    mesh.regions[1].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let mut b = mesh.regions[1].redis.conn();
    assert_eq!(
        user_key_count(&mut b).unwrap(),
        1,
        "only the key written after the flush"
    );
}

/// Three regions: region 3's agent is down while region 1 flushes; region
/// 2 applies the flush; then region 1's Redis restarts empty, so the only
/// region that still records the flush is region 2. Region 1 rebuilds from
/// region 2 and must not take back region 3's old keys; region 3 must
/// delete them: the flush travels in the snapshot and in anti-entropy.
#[test]
fn a_flush_only_one_region_still_records_reaches_every_region() {
    let mut mesh = Mesh::with_agent_args(3, &["--anti-entropy-interval-secs", "1"]);
    let mut a = mesh.regions[0].redis.conn();
    set_keys(&mut a, 100);
    mesh.wait_converged(&[0], SETTLE);
    mesh.kill_agent(2);
    let _: () = redis::cmd("FLUSHDB").query(&mut a).unwrap();
    let mut b = mesh.regions[1].redis.conn();
    wait_until("region 2 applies the flush", SETTLE, || {
        user_key_count(&mut b).unwrap() == 0
    });
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("flush")
        .query(&mut a)
        .unwrap();
    mesh.wait_stamped(0, SETTLE);
    wait_until(
        "region 2 has the key written after the flush",
        SETTLE,
        || user_key_count(&mut b).unwrap() == 1,
    );
    mesh.kill_agent(0);
    mesh.restart_redis_empty(0);
    mesh.regions[0].agent.restart();
    mesh.regions[2].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    for r in &mesh.regions {
        assert_eq!(
            user_key_count(&mut r.redis.conn()).unwrap(),
            1,
            "region {}: only the key written after the flush",
            r.name
        );
    }
    // Counted when the round that applied it ends.
    wait_until(
        "region 3 counts the flush it got by anti-entropy",
        SETTLE,
        || {
            mesh.regions[2]
                .agent
                .metric("geosync_anti_entropy_flushes_total")
                >= 1.0
        },
    );
}

/// Keys one region lost without a trace while cut off from its peer come
/// back as soon as the link does: rounds are an hour apart, so only the
/// round a reconnect starts can repair them. Writes made on the other side
/// during the partition reach the region by the outbox, before that round
/// looks, so the round repairs the lost keys and nothing else.
#[test]
fn keys_lost_during_a_partition_come_back_after_the_reconnect() {
    let mut mesh = Mesh::builder(2)
        .proxied()
        .agent_args(&["--anti-entropy-interval-secs", "3600"])
        .start();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let mut a = mesh.regions[0].redis.conn();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut a).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);

    mesh.partition(0, 1);
    for r in &mesh.regions {
        wait_until(
            &format!("region {}'s link to its peer is down", r.name),
            SETTLE,
            || r.agent.metric("geosync_peer_connected") == 0.0,
        );
    }
    lose(&mesh.regions[1].redis, &keys[..40]);
    // Written while partitioned: region 1's outbox holds them for region 2.
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("p{i}"))
            .arg(i)
            .query(&mut a)
            .unwrap();
    }
    let b = &mesh.regions[1].agent;
    let repaired = || b.metric("geosync_anti_entropy_keys_repaired_total");
    assert_eq!(repaired(), 0.0, "no round repaired anything yet");

    mesh.heal(0, 1);
    mesh.wait_converged(&[0], Duration::from_secs(60));
    wait_until("region 2's reconnect round ends", SETTLE, || {
        b.metric("geosync_anti_entropy_rounds_total") >= 1.0
    });
    assert!(
        b.metric("geosync_anti_entropy_reconnect_rounds_total") >= 1.0,
        "the round was started by the reconnect"
    );
    assert_eq!(
        repaired(),
        40.0,
        "the round repaired the lost keys, not what the outbox delivered"
    );
    mesh.wait_ready();
}

/// A repair pulls no more than `--anti-entropy-max-bytes-per-sec`: 1 MB
/// of lost values come back at 100 kB/s, checked by what the agent
/// reports (bytes pulled over the seconds its pulls took) and by the
/// test's own clock (the last key cannot come back sooner after the first
/// than the limit allows), and every key comes back.
#[test]
fn repairs_pull_no_more_than_the_byte_limit() {
    const LIMIT: f64 = 100_000.0;
    const KEYS: usize = 200;
    const VALUE: usize = 5_000;
    let mesh = Mesh::with_agent_args(
        2,
        &[
            "--anti-entropy-interval-secs",
            "1",
            "--anti-entropy-max-bytes-per-sec",
            "100000",
        ],
    );
    let keys: Vec<String> = (0..KEYS).map(|i| format!("big{i}")).collect();
    let mut a = mesh.regions[0].redis.conn();
    let value = "v".repeat(VALUE);
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(&value).query(&mut a).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    let b = &mesh.regions[1].agent;
    let count = |name: &str| b.metric(name);
    // Counts are published when a round ends: the baseline is taken once a
    // round that began after the regions converged has ended.
    let r0 = count("geosync_anti_entropy_rounds_total");
    wait_until("a round in region 2 ends", SETTLE, || {
        count("geosync_anti_entropy_rounds_total") >= r0 + 2.0
    });
    let bytes0 = count("geosync_anti_entropy_bytes_pulled_total");
    let secs0 = count("geosync_anti_entropy_pull_seconds_total");
    let repaired0 = count("geosync_anti_entropy_keys_repaired_total");

    lose(&mesh.regions[1].redis, &keys);
    // The test's own clock: from the first lost key back to the last.
    let mut b_redis = mesh.regions[1].redis.conn();
    let mut back = || -> usize { redis::cmd("EXISTS").arg(&keys).query(&mut b_redis).unwrap() };
    wait_until("the first lost key back", SETTLE, || back() > 0);
    let first_back = std::time::Instant::now();
    wait_until("every lost key back", Duration::from_secs(120), || {
        back() == KEYS
    });
    let took = first_back.elapsed();
    mesh.wait_converged(&[0], SETTLE);
    wait_until("the round counts what it repaired", SETTLE, || {
        count("geosync_anti_entropy_keys_repaired_total") - repaired0 >= KEYS as f64
    });
    let bytes = count("geosync_anti_entropy_bytes_pulled_total") - bytes0;
    let secs = count("geosync_anti_entropy_pull_seconds_total") - secs0;
    println!(
        "pulled {bytes} bytes in {secs:.2} s of pulls ({:.0} B/s); {took:?} from the first key back to the last",
        bytes / secs
    );
    assert!(
        bytes >= (KEYS * VALUE) as f64,
        "every lost value was pulled: {bytes} bytes"
    );
    assert!(
        bytes / secs <= LIMIT * 1.25,
        "{bytes} bytes in {secs} s is more than {LIMIT} B/s"
    );
    // The first slice and the burst come at once; the rest, 0.9 MB or
    // more, at the limit: 9 s. Unpaced, the last key followed the first
    // within 0.2 s.
    let least = (KEYS * VALUE) as f64 / LIMIT * 0.6;
    assert!(
        took.as_secs_f64() >= least,
        "the lost keys came back within {took:?}: faster than {LIMIT} B/s allows ({least:.1} s)"
    );
    assert_eq!(
        count("geosync_anti_entropy_keys_repaired_total") - repaired0,
        KEYS as f64,
        "nothing else was repaired"
    );
}

/// A large key whose pieces reached a region incomplete is acknowledged
/// and not applied; its origin will not send it again, yet the region gets
/// it whole from another region by anti-entropy. Region 3 writes the key
/// while cut off from region 2; region 2 gets it from "region 3" (the test,
/// with region 3's node id, stamp and digest) with a piece missing, then
/// from region 1's snapshot of that bucket.
#[test]
fn a_large_key_that_arrived_incomplete_comes_whole_by_anti_entropy() {
    use geosync::base::change::{Change, Collection, Op, Value};
    use serde_bytes::ByteBuf;
    let mesh = Mesh::builder(3)
        .proxied()
        .agent_args(&[
            "--anti-entropy-interval-secs",
            "1",
            "--max-key-elements",
            "1000",
        ])
        .start();
    mesh.partition(1, 2);
    let mut c = mesh.regions[2].redis.conn();
    let members: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    let _: () = redis::cmd("SADD")
        .arg("large")
        .arg(&members)
        .query(&mut c)
        .unwrap();
    let mut a = mesh.regions[0].redis.conn();
    wait_until("region 1 has the key", SETTLE, || {
        redis::cmd("SCARD")
            .arg("large")
            .query::<usize>(&mut a)
            .unwrap()
            == 5000
    });
    let rec: String = mesh.regions[2].redis.record(0, "large").expect("recorded");
    let (stamp, digest) = (rec[..20].to_string(), rec[21..37].to_string());
    let piece = |at: usize, n: usize| Change {
        db: 0,
        key: ByteBuf::from(b"large".to_vec()),
        stamp: stamp.clone(),
        op: Op::Part {
            at: at as u64,
            value: Value::Set(
                members[at..at + n]
                    .iter()
                    .map(|m| ByteBuf::from(m.as_bytes().to_vec()))
                    .collect(),
            ),
        },
    };
    let seal = Change {
        db: 0,
        key: ByteBuf::from(b"large".to_vec()),
        stamp: stamp.clone(),
        op: Op::Seal {
            kind: Collection::Set,
            expire_at_ms: None,
            len: 5000,
            digest,
        },
    };
    let incomplete = [piece(0, 1000), piece(2000, 1000), seal];
    let b = &mesh.regions[1].agent;
    let mut peer = FakePeer::connect(b.listen, mesh.regions[2].agent.node_id);
    assert_eq!(peer.send(1, &incomplete).expect("acknowledged"), 1);
    assert_eq!(b.metric("geosync_large_keys_incomplete_total"), 1.0);
    mesh.wait_converged(&[0], SETTLE);
    wait_until("region 2 counts the key it repaired", SETTLE, || {
        b.metric("geosync_anti_entropy_keys_repaired_total") >= 1.0
    });
}

/// Sets `k0`..`k{n-1}` to their numbers.
fn set_keys(c: &mut redis::Connection, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    let _: () = pipe.query(c).unwrap();
}
