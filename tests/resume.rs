//! Agent restarts: a partial resync when the master's backlog still holds
//! the recorded position, and a full resync that ships only what changed
//! unseen when it does not.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn restart_under_writes_continues_with_a_partial_resync() {
    // The writer below is fast (tens of thousands of writes a second): give
    // the master a backlog that holds the time the agent is away.
    let mut mesh = Mesh::start_with(2, &["--repl-backlog-size", "64mb"]);
    let url = mesh.regions[0].redis.url();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut c = redis::Client::open(url.clone())
                .unwrap()
                .get_connection()
                .unwrap();
            // Database 1 too: the master does not repeat SELECT after a
            // partial resync, so the agent must remember where it was.
            let mut c1 = redis::Client::open(format!("{url}/1"))
                .unwrap()
                .get_connection()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _: () = c.set(format!("w{}", i % 500), i).unwrap();
                if i.is_multiple_of(3) {
                    let _: () = c1.set(format!("w{}", i % 500), i).unwrap();
                }
                let _: () = c.hset("h", format!("f{}", i % 50), i).unwrap();
                i += 1;
                written.store(i, Ordering::SeqCst);
            }
        })
    };
    let position = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("the replication position is recorded", SETTLE, || {
        position.exists()
    });
    wait_until("writes are flowing", SETTLE, || {
        written.load(Ordering::SeqCst) > 2000
    });
    mesh.regions[0].agent.kill();
    let before = written.load(Ordering::SeqCst);
    wait_until("writes continue while the agent is down", SETTLE, || {
        written.load(Ordering::SeqCst) > before + 500
    });
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    let agent = &mesh.regions[0].agent;
    let at_restart = written.load(Ordering::SeqCst);
    wait_until("writes continue after the restart", SETTLE, || {
        written.load(Ordering::SeqCst) > at_restart + 500
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let settle = mesh.wait_converged(&[0, 1], SETTLE);
    assert_eq!(
        agent.metric("geosync_sync_partial_ok_total"),
        1.0,
        "continued with PSYNC"
    );
    assert_eq!(
        agent.metric("geosync_sync_full_total"),
        0.0,
        "no full resync"
    );
    println!(
        "resume: writes={} partial_ok=1 full=0 converged_after={:.2}s",
        written.load(Ordering::SeqCst),
        settle.as_secs_f64()
    );
}

#[test]
fn a_full_resync_ships_only_what_changed_unseen() {
    // A small backlog, so that writes made while the agent is down push
    // its position out.
    let mut mesh = Mesh::start_with(2, &["--repl-backlog-size", "16kb"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    for k in ["stale", "deleted", "changed"] {
        let _: () = a.set(k, "v0").unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    let position = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("the replication position is recorded", SETTLE, || {
        position.exists()
    });

    mesh.regions[0].agent.kill();
    // While region 1's agent is down: region 2 writes a newer value of a key
    // region 1 still holds unchanged ...
    let _: () = b.set("stale", "newer-in-2").unwrap();
    // ... and region 1's clients delete one key and change another.
    let _: () = a.del("deleted").unwrap();
    let _: () = a.set("changed", "v1").unwrap();
    fill_past_backlog(&mut a, 0, 2000);
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let agent = &mesh.regions[0].agent;
    assert_eq!(
        agent.metric("geosync_sync_full_total"),
        1.0,
        "the backlog no longer held the position"
    );
    assert_eq!(agent.metric("geosync_sync_partial_ok_total"), 0.0);
    assert_eq!(
        b.get::<_, String>("stale").unwrap(),
        "newer-in-2",
        "an unchanged old value did not win"
    );
    assert_eq!(a.get::<_, String>("stale").unwrap(), "newer-in-2");
    assert!(
        !b.exists::<_, bool>("deleted").unwrap(),
        "the delete made while the agent was down reached region 2"
    );
    assert_eq!(b.get::<_, String>("changed").unwrap(), "v1");
    // Only what changed while it was away was stamped: the delete, the
    // change and the filler keys.
    assert_eq!(agent.metric("geosync_changes_stamped_total"), 2002.0);
}

/// The master does not repeat SELECT after a partial resync: writes in
/// database 1 made while the agent was down must still land in database 1.
#[test]
fn a_partial_resync_remembers_the_selected_database() {
    partial_resync_after_agent_restart(Mesh::start(2));
}

/// A Redis without persistence restarts empty: it lost its data, it did not
/// delete everything. The region is rebuilt from a peer and the other
/// regions keep their data.
#[test]
fn a_redis_that_restarts_empty_is_rebuilt_from_a_peer() {
    let mut mesh = Mesh::start(3);
    for (i, r) in mesh.regions.iter().enumerate() {
        let mut c = r.redis.conn();
        for k in 0..30 {
            let _: () = c.set(format!("r{i}:k{k}"), k).unwrap();
        }
        let _: () = c.hset("shared", format!("from{i}"), i).unwrap();
        let _: () = r
            .redis
            .conn_db(2)
            .rpush(format!("list{i}"), &["a", "b"])
            .unwrap();
    }
    mesh.wait_converged(&[0, 2], SETTLE);
    let file = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("region 1's position is recorded", SETTLE, || file.exists());
    let keys_before = user_key_count(&mut mesh.regions[1].redis.conn()).unwrap();

    mesh.regions[0].redis.restart_empty();
    let agent = &mesh.regions[0].agent;
    wait_until("region 1 is rebuilt", SETTLE, || {
        agent
            .get("/metrics")
            .is_some_and(|(_, body)| metric_sum(&body, "geosync_rebuilds_total") == 1.0)
    });
    mesh.wait_ready();
    mesh.wait_converged(&[0, 2], SETTLE);
    let mut c = mesh.regions[0].redis.conn();
    assert_eq!(
        c.get::<_, i64>("r0:k29").unwrap(),
        29,
        "region 1's own keys came back from a peer"
    );
    assert_eq!(c.get::<_, i64>("r2:k5").unwrap(), 5);
    let keys_after = user_key_count(&mut mesh.regions[1].redis.conn()).unwrap();
    assert_eq!(keys_after, keys_before, "the other regions kept everything");
    // and the region works as before
    let _: () = c.set("after-rebuild", "x").unwrap();
    mesh.wait_converged(&[0, 2], SETTLE);
    assert_eq!(
        mesh.regions[2]
            .redis
            .conn()
            .get::<_, String>("after-rebuild")
            .unwrap(),
        "x"
    );
}

/// SIGTERM stops stamping, waits until the connected peers acknowledged
/// what was stamped (here over a link that holds every byte 2 s, so that
/// the batches are still on their way when the signal comes), and
/// exits 0: the peer has every change before the agent comes back, and the
/// restarted agent re-ships nothing.
#[test]
fn sigterm_drains_what_was_stamped_and_a_restart_reships_nothing() {
    let mut mesh = Mesh::builder(2).proxied().start();
    let _: () = mesh.regions[0].redis.conn().set("warm", 1).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    mesh.delay(0, 1, Duration::from_secs(2));
    let mut a = mesh.regions[0].redis.conn();
    for i in 0..50 {
        let _: () = a.set(format!("k{i}"), i).unwrap();
    }
    mesh.wait_stamped(0, SETTLE);
    mesh.regions[0].agent.terminate();
    assert_eq!(
        mesh.regions[0].agent.wait_exit(SETTLE),
        Some(0),
        "SIGTERM is a clean stop"
    );
    let b = &mesh.regions[1].redis;
    assert_eq!(
        user_key_count(&mut b.conn()).unwrap(),
        51,
        "region 2 got every stamped change before region 1's agent stopped"
    );
    mesh.heal_all();
    mesh.restart_agent(0);
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_changes_reshipped_total"),
        0.0,
        "nothing re-shipped after a clean stop"
    );
}
