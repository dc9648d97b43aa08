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
    let bucket = geosync::store::meta_bucket(0, first.as_bytes());
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| geosync::store::meta_bucket(0, k.as_bytes()) == bucket)
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
    let bucket = geosync::store::meta_bucket(0, keys[0].as_bytes());
    let mut c1 = mesh.regions[0].redis.conn();
    let mut m1 = mesh.regions[0].redis.meta_conn();
    let mut c2 = mesh.regions[1].redis.conn();
    for k in &keys {
        let _: () = c1.set(k, "v1").unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);

    let _: () = m1.set(&bucket, "not a hash").unwrap();
    // Both directions go through the broken bucket.
    let _: () = c1.set(&keys[0], "v2").unwrap();
    let _: () = c2.set(&keys[1], "v2").unwrap();
    wait_until("writes pass the broken bucket both ways", SETTLE, || {
        c2.get::<_, Option<String>>(&keys[0]).unwrap().as_deref() == Some("v2")
            && c1.get::<_, Option<String>>(&keys[1]).unwrap().as_deref() == Some("v2")
    });
    let kind: String = redis::cmd("TYPE").arg(&bucket).query(&mut m1).unwrap();
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
    let mut m1 = mesh.regions[0].redis.meta_conn();
    let floor = geosync::store::floor_key(0);
    let _: () = c1.set("a", "1").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    let _: () = m1.set(&floor, "fffffffffffffff00001").unwrap();
    let _: () = c1.set("a", "2").unwrap();
    let _: () = c2.set("b", "2").unwrap();
    wait_until("writes pass the forged floor both ways", SETTLE, || {
        c2.get::<_, Option<String>>("a").unwrap().as_deref() == Some("2")
            && c1.get::<_, Option<String>>("b").unwrap().as_deref() == Some("2")
    });
    assert!(!m1.exists::<_, bool>(&floor).unwrap());
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
    let mut m1 = mesh.regions[0].redis.meta_conn();
    let collected = geosync::store::collected_key(0);
    let _: () = m1.set(&collected, "fffffffffffffff00001").unwrap();
    let _: () = c2.set("new", "2").unwrap();
    wait_until("a new key passes the forged floor", SETTLE, || {
        c1.get::<_, Option<String>>("new").unwrap().as_deref() == Some("2")
    });
    assert!(!m1.exists::<_, bool>(&collected).unwrap());
    assert!(
        repaired(&mesh, 0, "collected_floor") >= 1.0,
        "the repair is counted"
    );
    mesh.wait_converged(&[0], SETTLE);
}

/// Starts an agent on `redis` with `args` and returns its exit code and log
/// once it has stopped.
fn start_refused(redis: &Redis, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut agent = Agent::start_with(
        1,
        &redis.url(),
        free_port(),
        free_port(),
        &[],
        dir.path(),
        &args,
    );
    let code = agent.wait_exit(SETTLE);
    (code, agent.log_text())
}

/// Every key of every database of `redis`, as `db:key`.
fn every_key(redis: &Redis) -> Vec<String> {
    let mut out = Vec::new();
    for db in 0..16 {
        let keys: Vec<String> = redis.conn_db(db).keys("*").unwrap();
        out.extend(keys.into_iter().map(|k| format!("{db}:{k}")));
    }
    out.sort();
    out
}

/// A Redis whose geosync keys another layout wrote is refused at start,
/// naming the layout; nothing is written into it. Layout 1 (metadata in
/// every user database, its marker in database 0) is named as an earlier
/// geosync's.
#[test]
fn a_layout_this_version_does_not_know_is_refused_at_start() {
    let redis = Redis::start(&[]);
    let meta = geosync::store::metadata_db();
    for (db, marker, says) in [
        (meta, "9", "this geosync does not know that layout"),
        (
            0,
            "1",
            "an earlier geosync kept its metadata in every user database",
        ),
    ] {
        let mut c = redis.conn_db(db);
        let _: () = c.set("__geosync:layout", marker).unwrap();
        let before = every_key(&redis);
        let (code, log) = start_refused(&redis, &[]);
        assert_eq!(code, Some(1), "the agent exits with an error: {log}");
        assert!(
            log.contains(&format!(
                "laid out as layout \"{marker}\" (__geosync:layout in database {db})"
            )),
            "the log names the layout and where: {log}"
        );
        assert!(log.contains(says), "the log says {says:?}: {log}");
        assert_eq!(every_key(&redis), before, "nothing was written");
        let _: () = c.del("__geosync:layout").unwrap();
    }
}

/// The metadata database must be one the server has and that holds
/// nothing but geosync's keys; metadata found in another database than
/// the one named is pointed at. Each is refused at start with the
/// setting to change, and nothing is written.
#[test]
fn a_metadata_database_that_cannot_hold_the_metadata_is_refused_at_start() {
    let redis = Redis::start(&[]);
    let (code, log) = start_refused(&redis, &["--metadata-db", "16"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--metadata-db is 16, but this Redis has 16 databases (0 to 15)"),
        "{log}"
    );

    let mut c = redis.conn_db(15);
    let _: () = c.set("user:1", "an application's key").unwrap();
    let (code, log) = start_refused(&redis, &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("database 15, which --metadata-db names for geosync's metadata, holds keys that are not geosync's (\"user:1\""),
        "{log}"
    );
    assert_eq!(every_key(&redis), ["15:user:1"], "nothing was written");

    // Started once with --metadata-db 14, then without it.
    let mut m = redis.conn_db(14);
    let _: () = m
        .set("__geosync:layout", geosync::store::layout::LAYOUT)
        .unwrap();
    let _: () = c.del("user:1").unwrap();
    let (code, log) = start_refused(&redis, &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("geosync's metadata is in database 14 (__geosync:layout is there), but --metadata-db is 15: start with --metadata-db 14"),
        "{log}"
    );
}

/// A new Redis gets the layout marker in the metadata database; one a
/// client changes or removes while the agent runs is set again, and a
/// change is counted.
#[test]
fn the_layout_marker_is_written_and_kept() {
    let mesh = Mesh::start(2);
    let mut m1 = mesh.regions[0].redis.meta_conn();
    let layout =
        |c: &mut redis::Connection| -> Option<String> { c.get("__geosync:layout").unwrap() };
    assert_eq!(layout(&mut m1).as_deref(), Some("2"));
    let _: () = m1.set("__geosync:layout", "9").unwrap();
    wait_until("the layout marker is set again", SETTLE, || {
        layout(&mut m1).as_deref() == Some("2")
    });
    assert_eq!(repaired(&mesh, 0, "layout"), 1.0, "the change is counted");
    let _: () = m1.del("__geosync:layout").unwrap();
    wait_until("a removed layout marker is set again", SETTLE, || {
        layout(&mut m1).as_deref() == Some("2")
    });
}
