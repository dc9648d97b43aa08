//! A Redis that comes back older than it was (restarted from an earlier
//! RDB) must not send its old values over newer ones: a change first seen
//! in a snapshot happened at some unknown time after its record, so it is
//! stamped just above what the region is known to have reached, and every
//! write made after that wins (decision 019).

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Waits until region 1 (`c`, database 0) records the stamp it reached:
/// region 2 has compared digests with it since its last writes.
fn wait_reached(c: &mut redis::Connection) {
    wait_until("region 1 records the stamp it reached", SETTLE, || {
        reached(c).is_some()
    });
}

/// The stamp region 1 (`c`, database 0) records as reached.
fn reached(c: &mut redis::Connection) -> Option<String> {
    redis::pipe()
        .cmd("SELECT")
        .arg(geosync::store::metadata_db())
        .ignore()
        .get("__geosync:reached")
        .cmd("SELECT")
        .arg(0)
        .ignore()
        .query::<(Option<String>,)>(c)
        .unwrap()
        .0
}

/// Restarts region 1's Redis from `dump` while the regions cannot reach
/// each other (no rebuild from the peer comes first, so region 1 stamps
/// what it finds on its own), checks the restarted Redis with `older`,
/// waits until the agent resynced fully and stamped `low` changes low,
/// then heals and waits for convergence. A connection to region 1.
fn restart_apart_from(
    mesh: &mut Mesh,
    dump: &std::path::Path,
    low: f64,
    older: impl FnOnce(&mut redis::Connection),
) -> redis::Connection {
    mesh.partition(0, 1);
    let syncs = mesh.regions[0].agent.metric("geosync_sync_full_total");
    mesh.regions[0].redis.restart_from(dump);
    let mut c1 = mesh.regions[0].redis.conn();
    older(&mut c1);
    let agent = &mesh.regions[0].agent;
    wait_until("region 1's agent resyncs fully", SETTLE, || {
        agent.metric("geosync_sync_full_total") > syncs
    });
    wait_until("region 1 stamps the snapshot's changes low", SETTLE, || {
        agent.metric("geosync_changes_stamped_low_total") >= low
    });
    mesh.heal(0, 1);
    mesh.wait_converged(&[0], SETTLE);
    c1
}

/// Region 1's Redis saves a snapshot holding writes its agent had not
/// stamped yet (the agent was down); they are then stamped and shipped,
/// region 2 overwrites or deletes every one of them, and region 1's Redis
/// is restarted from that snapshot. Region 2's later writes must win in
/// both regions: the old values come back neither as values nor over the
/// deletes.
#[test]
fn a_redis_restarted_from_an_older_snapshot_does_not_bring_back_old_values() {
    let mut mesh = Mesh::builder(2)
        .proxied()
        .agent_args(&["--anti-entropy-interval-secs", "1"])
        .start();
    let mut c1 = mesh.regions[0].redis.conn();
    let mut c2 = mesh.regions[1].redis.conn();
    let _: () = c1.set("overwritten", "v1").unwrap();
    let _: () = c1.set("deleted", "v1").unwrap();
    let _: () = c1.hset("hash", "f", "v1").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    wait_reached(&mut c1);

    // Writes region 1's agent has not stamped when the snapshot is saved:
    // their records still describe v1, or nothing.
    mesh.kill_agent(0);
    let _: () = c1.set("overwritten", "v2").unwrap();
    let _: () = c1.set("deleted", "v2").unwrap();
    let _: () = c1.hset("hash", "f", "v2").unwrap();
    let _: () = c1.set("unrecorded", "v2").unwrap();
    let dump = mesh.regions[0].redis.save_copy("older.rdb");
    mesh.restart_agent(0);
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(
        c2.get::<_, Option<String>>("unrecorded")
            .unwrap()
            .as_deref(),
        Some("v2")
    );

    // Region 2 writes after them.
    let _: () = c2.set("overwritten", "v3").unwrap();
    let _: () = c2.del("deleted").unwrap();
    let _: () = c2.hset("hash", "f", "v3").unwrap();
    let _: () = c2.del("unrecorded").unwrap();
    mesh.wait_converged(&[0], SETTLE);

    // Region 1's Redis comes back from the older snapshot; the four keys
    // that differ from their records are stamped low.
    let mut c1 = restart_apart_from(&mut mesh, &dump, 4.0, |c| {
        assert_eq!(
            c.get::<_, Option<String>>("overwritten")
                .unwrap()
                .as_deref(),
            Some("v2"),
            "the snapshot is the older one"
        );
        let reached = reached(c);
        assert!(
            reached.is_some(),
            "the snapshot holds the stamp region 1 had reached"
        );
    });
    for (i, r) in mesh.regions.iter().enumerate() {
        let mut c = r.redis.conn();
        let region = i + 1;
        assert_eq!(
            c.get::<_, Option<String>>("overwritten")
                .unwrap()
                .as_deref(),
            Some("v3"),
            "region {region}: the older snapshot's value won over a later write"
        );
        assert_eq!(
            c.hget::<_, _, Option<String>>("hash", "f")
                .unwrap()
                .as_deref(),
            Some("v3"),
            "region {region}: the older snapshot's hash won over a later write"
        );
        assert!(
            !c.exists::<_, bool>("deleted").unwrap(),
            "region {region}: a deleted key came back from the older snapshot"
        );
        assert!(
            !c.exists::<_, bool>("unrecorded").unwrap(),
            "region {region}: a deleted key with no record came back from the older snapshot"
        );
    }

    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_changes_stamped_low_total"),
        4.0,
        "only the keys that differed from their records were stamped low"
    );
    // A write made in region 1 after the restart still wins.
    let _: () = c1.set("overwritten", "v4").unwrap();
    wait_until("region 1's new write reaches region 2", SETTLE, || {
        c2.get::<_, Option<String>>("overwritten")
            .unwrap()
            .as_deref()
            == Some("v4")
    });
}

/// The same for a collection that travels in pieces (over
/// `--max-key-elements`): the older snapshot's set does not replace the
/// set region 2 wrote later.
#[test]
fn an_older_snapshot_does_not_bring_back_a_large_collection() {
    let mut mesh = Mesh::builder(2)
        .proxied()
        .agent_args(&[
            "--anti-entropy-interval-secs",
            "1",
            "--max-key-elements",
            "1000",
        ])
        .start();
    let mut c1 = mesh.regions[0].redis.conn();
    let mut c2 = mesh.regions[1].redis.conn();
    let members = |tag: &str| -> Vec<String> { (0..3000).map(|i| format!("{tag}{i}")).collect() };
    let _: () = c1.sadd("big", members("a")).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    wait_reached(&mut c1);
    mesh.kill_agent(0);
    let _: () = c1.sadd("big", members("b")).unwrap();
    let dump = mesh.regions[0].redis.save_copy("older.rdb");
    mesh.restart_agent(0);
    mesh.wait_converged(&[0], SETTLE);
    // Region 2 replaces the set after that.
    let _: () = c2.del("big").unwrap();
    let _: () = c2.sadd("big", members("c")).unwrap();
    mesh.wait_converged(&[0], SETTLE);

    restart_apart_from(&mut mesh, &dump, 1.0, |c| {
        assert_eq!(
            c.scard::<_, usize>("big").unwrap(),
            6000,
            "the snapshot is the older one"
        );
    });
    for (i, r) in mesh.regions.iter().enumerate() {
        let mut got: Vec<String> = r.redis.conn().smembers("big").unwrap();
        got.sort();
        let mut want = members("c");
        want.sort();
        assert_eq!(
            got,
            want,
            "region {}: the older snapshot's set came back",
            i + 1
        );
    }
}
