//! Tombstone collection (decision 015): tombstones and expired keys'
//! records are dropped once every region has them, so a sessions workload
//! (unique keys with short lifetimes) keeps its metadata bounded; nothing
//! older than the frontier comes back; a silent region holds them back,
//! and the metric says so; a key one region lost without a trace, or took
//! back from an older copy, below the floor the others collected up to, is
//! dropped where it remains rather than differing for ever.

mod support;

use std::time::{Duration, Instant};

use geosync::base::hlc;
use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(60);

/// Records (metadata fields) of database 0 of a region, and the bytes the
/// metadata takes (`MEMORY USAGE` of every bucket and the digests); `c` is
/// a connection to the metadata database.
fn metadata(c: &mut redis::Connection) -> (usize, u64) {
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", geosync::store::bucket_prefix(0)))
        .query(c)
        .unwrap();
    let mut records = 0;
    let mut bytes = 0;
    for b in buckets
        .iter()
        .chain(std::iter::once(&geosync::store::digests_key(0)))
    {
        let n: usize = c.hlen(b).unwrap();
        if b.starts_with(geosync::store::META_PREFIX) {
            records += n;
        }
        let used: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(b).query(c).unwrap();
        bytes += used.unwrap_or(0);
    }
    (records, bytes)
}

fn collecting(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--anti-entropy-interval-secs",
        "1",
        "--tombstone-collect-interval-secs",
        "1",
    ];
    args.extend(extra);
    args.iter().map(|s| s.to_string()).collect()
}

/// Unique keys living 200 to 800 ms (by default), written in both regions (a session
/// store): once they expired, every region drops their records, and a
/// change older than the frontier cannot bring one back.
#[test]
fn a_sessions_run_keeps_metadata_bounded() {
    let per_region: usize = env_usize("GEOSYNC_TEST_SESSIONS", 10_000);
    // Lifetimes from `shortest` to 4 times it.
    let shortest: usize = env_usize("GEOSYNC_TEST_SESSION_MS", 200);
    let seed = seed_from_env();
    println!(
        "replay: GEOSYNC_SEED={seed} GEOSYNC_TEST_SESSIONS={per_region} \
         GEOSYNC_TEST_SESSION_MS={shortest} cargo nextest run --test tombstones sessions"
    );
    let args = collecting(&[]);
    let mesh = Mesh::builder(2).agent_args(&args).start();
    let started = Instant::now();
    let mut peak = (0, 0);
    // One key's record, to send back later as an older change: written
    // and read first (a session of a few hundred milliseconds, read after
    // the sessions are written, may have expired and been collected by
    // then on a loaded machine: it was, in two CI runs).
    let probe = "session:probe";
    let _: () = mesh.regions[0]
        .redis
        .conn()
        .set_options(
            probe,
            "x",
            redis::SetOptions::default()
                .with_expiration(redis::SetExpiry::PX((4 * shortest).max(5000) as u64)),
        )
        .unwrap();
    let mut recorded: Option<String> = None;
    wait_until("the probe key is recorded", SETTLE, || {
        recorded = mesh.regions[0].redis.record(0, probe);
        recorded.is_some()
    });
    let recorded = recorded.unwrap();
    for (i, r) in mesh.regions.iter().enumerate() {
        let mut c = r.redis.conn();
        for chunk in (0..per_region).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for n in chunk {
                let ttl = shortest + (seed as usize + n * 7919) % (3 * shortest);
                pipe.cmd("SET")
                    .arg(format!("session:{i}:{n}"))
                    .arg("x".repeat(32))
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
            }
            let _: () = pipe.query(&mut c).unwrap();
        }
    }
    let written = per_region * mesh.regions.len();
    for r in &mesh.regions {
        let m = metadata(&mut r.redis.meta_conn());
        peak = (peak.0.max(m.0), peak.1.max(m.1));
    }
    for r in &mesh.regions {
        let mut c = r.redis.meta_conn();
        wait_until(
            &format!("region {}'s metadata is collected", r.name),
            SETTLE,
            || metadata(&mut c).0 == 0,
        );
    }
    let took = started.elapsed();
    mesh.wait_converged(&[0], SETTLE);
    let after: Vec<(usize, u64)> = mesh
        .regions
        .iter()
        .map(|r| metadata(&mut r.redis.meta_conn()))
        .collect();
    let collected = mesh.metric("geosync_tombstones_collected_total");
    println!(
        "figures: sessions written={written} peak_records={} peak_metadata_bytes={} \
         after_records={:?} after_metadata_bytes={:?} collected={collected} all_collected_in={:.1}s",
        peak.0,
        peak.1,
        after.iter().map(|a| a.0).collect::<Vec<_>>(),
        after.iter().map(|a| a.1).collect::<Vec<_>>(),
        took.as_secs_f64()
    );
    // A key that expired before it was stamped was never recorded; the
    // others were, and are gone.
    assert!(collected > 0.0, "records were collected");

    // The probe's change again, from a third node, stamped just after it:
    // older than the frontier, so it stays gone in every region.
    let stamp = hlc::decode(&recorded.as_bytes()[..20]).unwrap();
    let older = stamp_at(stamp.get_time().as_u64() + 1, 9);
    for r in &mesh.regions {
        let mut peer = FakePeer::connect(r.agent.listen, 9);
        assert_eq!(
            peer.send(1, &[string_put(probe, "back", &older)]).unwrap(),
            1
        );
        let mut c = r.redis.conn();
        assert!(
            !c.exists::<_, bool>(probe).unwrap(),
            "region {} took it back",
            r.name
        );
    }
}

/// A region whose agent is down keeps the others from collecting: their
/// tombstones stay, the metric names the silent peer once past the
/// horizon, and once it is back they are collected.
#[test]
fn a_silent_region_holds_tombstones_back_and_the_metric_says_so() {
    let args = collecting(&["--tombstone-horizon-secs", "2"]);
    let mut mesh = Mesh::builder(2).agent_args(&args).start();
    let mut a = mesh.regions[0].redis.conn();
    for i in 0..100 {
        let _: () = a.set(format!("k{i}"), i).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    mesh.kill_agent(1);
    for i in 0..100 {
        let _: () = a.del(format!("k{i}")).unwrap();
    }
    mesh.wait_stamped(0, SETTLE);
    let blocked = "geosync_tombstone_collection_blocked";
    wait_until(
        "region a says region b holds tombstones back",
        SETTLE,
        || mesh.regions[0].agent.metric(blocked) == 1.0,
    );
    // Rounds went on (with the peer down they fail), collections too:
    // every tombstone is still there.
    let collections = mesh.regions[0]
        .agent
        .metric("geosync_tombstones_collected_total");
    assert_eq!(collections, 0.0);
    let mut meta_a = mesh.regions[0].redis.meta_conn();
    assert_eq!(metadata(&mut meta_a).0, 100, "the 100 tombstones are kept");
    mesh.restart_agent(1);
    wait_until("region a collects once b is back", SETTLE, || {
        metadata(&mut meta_a).0 == 0
    });
    // Region a may drop them before its own collector runs (its round
    // finds b, which collected them, lacking them: decision 015); the
    // metric clears at that collector's next turn.
    wait_until("the metric no longer names region b", SETTLE, || {
        mesh.regions[0].agent.metric(blocked) == 0.0
    });
    mesh.wait_converged(&[0], SETTLE);
    let mut meta_b = mesh.regions[1].redis.meta_conn();
    wait_until("region b collects too", SETTLE, || {
        metadata(&mut meta_b).0 == 0
    });
}

/// The stamp region `c` records for `key`, None without a record.
fn recorded_stamp(r: &Redis, key: &str) -> Option<String> {
    r.record(0, key).map(|r| r[..20].to_string())
}

/// Waits until every region's collected floor (database 0) is past `stamp`.
fn wait_collected_past(mesh: &Mesh, stamp: &str) {
    for r in &mesh.regions {
        let mut c = r.redis.meta_conn();
        wait_until(
            &format!("region {} collects past {stamp}", r.name),
            SETTLE,
            || {
                let floor: Option<String> = c.get(geosync::store::collected_key(0)).unwrap();
                floor.is_some_and(|f| f.as_str() > stamp)
            },
        );
    }
}

/// Region b loses keys with their records below the floor both regions
/// collected up to (as a Redis that lost them would: no delete travels).
/// Region a would send them in vain, since b turns away any change older
/// than its floor for a key it holds no record of: region a drops them.
#[test]
fn a_key_lost_without_a_trace_below_the_collected_floor_is_dropped_where_it_remains() {
    let mesh = Mesh::builder(2).agent_args(&collecting(&[])).start();
    let mut a = mesh.regions[0].redis.conn();
    let lost: Vec<String> = (0..50).map(|i| format!("lost:{i}")).collect();
    for (i, k) in lost.iter().enumerate() {
        let _: () = a.set(k, i).unwrap();
        let _: () = a.set(format!("kept:{i}"), i).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    let newest = lost
        .iter()
        .map(|k| recorded_stamp(&mesh.regions[0].redis, k).expect("recorded"))
        .max()
        .unwrap();
    wait_collected_past(&mesh, &newest);
    lose(&mesh.regions[1].redis, &lost);
    mesh.wait_converged(&[0], SETTLE);
    for (i, k) in lost.iter().enumerate() {
        assert!(!a.exists::<_, bool>(k).unwrap(), "{k} is still in region a");
        assert_eq!(
            recorded_stamp(&mesh.regions[0].redis, k),
            None,
            "{k} is still recorded"
        );
        assert_eq!(a.get::<_, i64>(format!("kept:{i}")).unwrap(), i as i64);
    }
    // A round counts what it dropped when it ends.
    let dropped = "geosync_anti_entropy_keys_dropped_total";
    wait_until("the drops are counted", SETTLE, || {
        mesh.regions[0].agent.metric(dropped) >= lost.len() as f64
    });
    assert_eq!(mesh.regions[0].agent.metric(dropped), lost.len() as f64);
    assert_eq!(mesh.regions[1].agent.metric(dropped), 0.0);
}

/// Region b comes back from an older copy of its data: it holds keys, with
/// their old records, that were deleted since and whose tombstones every
/// region collected. Region a refuses them (older than its floor); region
/// b drops them.
#[test]
fn a_region_back_from_an_older_copy_drops_what_every_region_collected() {
    let mesh = Mesh::builder(2).agent_args(&collecting(&[])).start();
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let keys: Vec<String> = (0..50).map(|i| format!("old:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let _: () = a.set(k, i).unwrap();
    }
    let _: () = a.set("current", "yes").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    // The copy: each key's value and record as region b holds them now.
    let copy: Vec<(String, Vec<u8>, String)> = keys
        .iter()
        .map(|k| {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut b).unwrap();
            let rec = mesh.regions[1].redis.record(0, k).expect("recorded");
            (k.clone(), dump, rec)
        })
        .collect();
    for k in &keys {
        let _: () = a.del(k).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    for r in &mesh.regions {
        wait_until(
            &format!("region {} collects the tombstones", r.name),
            SETTLE,
            || keys.iter().all(|k| recorded_stamp(&r.redis, k).is_none()),
        );
    }
    bring_back(&mesh.regions[1].redis, &copy);
    mesh.wait_converged(&[0], SETTLE);
    for k in &keys {
        for c in [&mut a, &mut b] {
            assert!(!c.exists::<_, bool>(k).unwrap(), "{k} came back");
        }
    }
    assert_eq!(b.get::<_, String>("current").unwrap(), "yes");
    // A round counts what it dropped when it ends.
    let dropped = "geosync_anti_entropy_keys_dropped_total";
    wait_until("the drops are counted", SETTLE, || {
        mesh.regions[1].agent.metric(dropped) >= keys.len() as f64
    });
    assert_eq!(mesh.regions[1].agent.metric(dropped), keys.len() as f64);
    assert_eq!(mesh.regions[0].agent.metric(dropped), 0.0);
}

/// `geosync_metadata_records` says how many records the metadata holds
/// after a collection: the deleted keys' tombstones gone, the live keys'
/// records counted, in every region.
#[test]
fn the_metadata_record_count_is_exported_after_a_collection() {
    let mesh = Mesh::builder(2).agent_args(&collecting(&[])).start();
    let mut a = mesh.regions[0].redis.conn();
    for i in 0..100 {
        let _: () = a.set(format!("k{i}"), i).unwrap();
    }
    for i in 0..30 {
        let _: () = a.del(format!("k{i}")).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    for r in &mesh.regions {
        let mut meta = r.redis.meta_conn();
        wait_until(
            &format!("region {} collects the 30 tombstones", r.name),
            SETTLE,
            || metadata(&mut meta).0 == 70,
        );
        wait_until(
            &format!("region {} exports 70 records", r.name),
            SETTLE,
            || r.agent.metric("geosync_metadata_records") == 70.0,
        );
        assert_eq!(r.agent.metric("geosync_tombstones"), 0.0);
    }
}
