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
