//! Clients that write geosync's own keys (where no ACL keeps them out):
//! the damage is repaired, counted and logged, and replication never
//! stalls on it.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Keys named `<prefix><n>` that share the metadata bucket of the first.
fn keys_in_one_bucket(prefix: &str, n: usize) -> Vec<String> {
    let first = format!("{prefix}0");
    let bucket = geosync::store::meta_bucket(first.as_bytes());
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| geosync::store::meta_bucket(k.as_bytes()) == bucket)
        .take(n)
        .collect()
}

fn repaired(mesh: &Mesh, i: usize, what: &str) -> f64 {
    mesh.regions[i].agent.metric(&format!(
        "geosync_reserved_keys_repaired_total{{reason=\"{what}\"}}"
    ))
}

/// A client overwrites a metadata bucket with a string: its records are
/// gone, and every script that reads the bucket fails with WRONGTYPE. The
/// agent rebuilds the bucket from the keys that belong in it, and writes
/// keep flowing both ways.
#[test]
fn a_bucket_a_client_turned_into_a_string_is_rebuilt() {
    let mesh = Mesh::with_agent_args(2, &["--anti-entropy-interval-secs", "1"]);
    let keys = keys_in_one_bucket("k", 3);
    let bucket = geosync::store::meta_bucket(keys[0].as_bytes());
    let mut c1 = mesh.regions[0].redis.conn();
    let mut c2 = mesh.regions[1].redis.conn();
    for k in &keys {
        let _: () = c1.set(k, "v1").unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);

    let _: () = c1.set(&bucket, "not a hash").unwrap();
    // Both directions go through the broken bucket.
    let _: () = c1.set(&keys[0], "v2").unwrap();
    let _: () = c2.set(&keys[1], "v2").unwrap();
    wait_until("writes pass the broken bucket both ways", SETTLE, || {
        c2.get::<_, Option<String>>(&keys[0]).unwrap().as_deref() == Some("v2")
            && c1.get::<_, Option<String>>(&keys[1]).unwrap().as_deref() == Some("v2")
    });
    let kind: String = redis::cmd("TYPE").arg(&bucket).query(&mut c1).unwrap();
    assert_eq!(kind, "hash", "the bucket is a hash again");
    // Every key of the bucket has its record again, the same everywhere.
    mesh.wait_converged(&[0], SETTLE);
    assert!(repaired(&mesh, 0, "bucket") >= 1.0, "the repair is counted");
}

/// A client writes a flush floor far in the future: every local write
/// would look older than it, and every peer change too. The agent sees a
/// floor no clock could have made, removes it, and counts it.
#[test]
fn a_forged_flush_floor_is_removed() {
    let mesh = Mesh::with_agent_args(2, &["--anti-entropy-interval-secs", "1"]);
    let mut c1 = mesh.regions[0].redis.conn();
    let mut c2 = mesh.regions[1].redis.conn();
    let _: () = c1.set("a", "1").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    let _: () = c1.set("__geosync:floor", "fffffffffffffff00001").unwrap();
    let _: () = c1.set("a", "2").unwrap();
    let _: () = c2.set("b", "2").unwrap();
    wait_until("writes pass the forged floor both ways", SETTLE, || {
        c2.get::<_, Option<String>>("a").unwrap().as_deref() == Some("2")
            && c1.get::<_, Option<String>>("b").unwrap().as_deref() == Some("2")
    });
    assert!(!c1.exists::<_, bool>("__geosync:floor").unwrap());
    assert!(
        repaired(&mesh, 0, "flush_floor") >= 1.0,
        "the repair is counted"
    );
    mesh.wait_converged(&[0], SETTLE);
}

/// A client writes a collected floor far in the future: every peer change
/// to a key this region has no record of would be turned away.
#[test]
fn a_forged_collected_floor_is_removed() {
    let mesh = Mesh::with_agent_args(2, &["--anti-entropy-interval-secs", "1"]);
    let mut c1 = mesh.regions[0].redis.conn();
    let mut c2 = mesh.regions[1].redis.conn();
    let _: () = c1
        .set("__geosync:collected", "fffffffffffffff00001")
        .unwrap();
    let _: () = c2.set("new", "2").unwrap();
    wait_until("a new key passes the forged floor", SETTLE, || {
        c1.get::<_, Option<String>>("new").unwrap().as_deref() == Some("2")
    });
    assert!(!c1.exists::<_, bool>("__geosync:collected").unwrap());
    assert!(
        repaired(&mesh, 0, "collected_floor") >= 1.0,
        "the repair is counted"
    );
    mesh.wait_converged(&[0], SETTLE);
}

/// A Redis whose geosync keys another layout wrote is refused at start,
/// naming the layout; nothing is written into it.
#[test]
fn a_layout_this_version_does_not_know_is_refused_at_start() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = c.set("__geosync:layout", "2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(1, &redis.url(), free_port(), free_port(), &[], dir.path());
    let code = agent.wait_exit(SETTLE);
    let log = agent.log_text();
    assert_eq!(code, Some(1), "the agent exits with an error: {log}");
    assert!(
        log.contains("laid out as layout \"2\""),
        "the log names the layout: {log}"
    );
    assert_eq!(
        c.get::<_, Option<String>>("__geosync:layout")
            .unwrap()
            .as_deref(),
        Some("2"),
        "the marker is left as it was"
    );
    let keys: Vec<String> = c.keys("__geosync:*").unwrap();
    assert_eq!(keys, ["__geosync:layout"], "nothing else was written");
}

/// A new Redis gets the layout marker; one a client changes or removes
/// while the agent runs is set again, and a change is counted.
#[test]
fn the_layout_marker_is_written_and_kept() {
    let mesh = Mesh::start(2);
    let mut c1 = mesh.regions[0].redis.conn();
    let layout =
        |c: &mut redis::Connection| -> Option<String> { c.get("__geosync:layout").unwrap() };
    assert_eq!(layout(&mut c1).as_deref(), Some("1"));
    let _: () = c1.set("__geosync:layout", "9").unwrap();
    wait_until("the layout marker is set again", SETTLE, || {
        layout(&mut c1).as_deref() == Some("1")
    });
    assert_eq!(repaired(&mesh, 0, "layout"), 1.0, "the change is counted");
    let _: () = c1.del("__geosync:layout").unwrap();
    wait_until("a removed layout marker is set again", SETTLE, || {
        layout(&mut c1).as_deref() == Some("1")
    });
}
