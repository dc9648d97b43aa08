//! Regions added and removed while the mesh runs (decision 023): the
//! agents read their peers from a configuration file, and SIGHUP makes
//! them read it again. A new region with an empty Redis joins and is
//! filled by the regions that learn of it; a removed region's state goes
//! from the others (its sender, outbox share, tombstone hold, readiness,
//! metric series); a configuration that no longer validates is refused
//! and changes nothing.

mod support;

use std::time::Duration;

use geosync::lab::{Mesh, Redis, wait_until};
use redis::Commands;

const SETTLE: Duration = Duration::from_secs(60);

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn metrics(mesh: &Mesh, i: usize) -> String {
    mesh.regions[i]
        .agent
        .get("/metrics")
        .expect("the agent answers")
        .1
}

/// Series of /metrics whose `peer` label is `peer`.
fn series_of(body: &str, peer: &str) -> Vec<String> {
    let label = format!("peer=\"{peer}\"");
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(str::to_string)
        .collect()
}

/// Records (tombstones included) in the metadata of database 0; `c` is a
/// connection to the metadata database.
fn records(c: &mut redis::Connection) -> usize {
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", geosync::store::bucket_prefix(0)))
        .query(c)
        .unwrap();
    buckets.iter().map(|b| c.hlen::<_, usize>(b).unwrap()).sum()
}

fn url(mesh: &Mesh, i: usize) -> String {
    format!("http://127.0.0.1:{}", mesh.regions[i].agent.listen)
}

/// A third region, its Redis empty, joins two regions that hold data
/// (values of several types and deleted keys). Its own anti-entropy is
/// off (one round an hour), so that what fills it is what the two send it
/// once a reload told them of it: each catches it up on everything it
/// recorded, then streams. Afterwards writes flow every way.
#[test]
fn a_new_empty_region_is_filled_by_the_regions_that_learn_of_it() {
    let quiet = args(&["--anti-entropy-interval-secs", "3600"]);
    let mut mesh = Mesh::builder(2).agent_args(&quiet).peer_files().start();
    for (i, region) in mesh.regions.iter().enumerate() {
        let mut c = region.redis.conn();
        for k in 0..300 {
            let _: () = c.set(format!("s{i}:{k}"), k).unwrap();
        }
        let _: () = c.hset(format!("h{i}"), "f", "v").unwrap();
        let _: () = c.rpush(format!("l{i}"), &[1, 2, 3]).unwrap();
        let _: () = c.sadd(format!("set{i}"), &["a", "b"]).unwrap();
        let _: () = c.zadd(format!("z{i}"), "m", 1.5).unwrap();
        for k in 0..50 {
            let _: () = c.del(format!("s{i}:{k}")).unwrap();
        }
    }
    mesh.wait_converged(&[0], SETTLE);

    let joined = mesh.join(Redis::start(&[]), &quiet);
    assert_eq!(joined, 2);
    let mut c3 = mesh.regions[2].redis.conn();
    let held: usize = redis::cmd("DBSIZE").query(&mut c3).unwrap();
    assert_eq!(
        held, 0,
        "nothing reaches the new region before the others know it"
    );

    for i in 0..2 {
        mesh.set_peers(i, &[1 - i, 2]);
    }
    for i in 0..2 {
        wait_until(&format!("region {} reloaded", i + 1), SETTLE, || {
            mesh.regions[i]
                .agent
                .metric("geosync_config_reloads_total{outcome=\"applied\"}")
                == 1.0
        });
    }
    let took = mesh.wait_converged(&[0], SETTLE);
    println!("the new region held the others' data {took:?} after the reload");
    for i in 0..2 {
        let body = metrics(&mesh, i);
        let line = "geosync_peer_connected{peer=\"3\"} 1";
        assert!(
            body.contains(line),
            "region {} ships to region 3:\n{body}",
            i + 1
        );
        assert!(
            geosync::lab::metric_sum(&body, "geosync_catch_up_changes_total") > 0.0,
            "region {} caught region 3 up from its metadata",
            i + 1
        );
    }
    // Deleted keys stay deleted in the new region.
    let gone: bool = c3.exists("s0:0").unwrap();
    assert!(!gone);

    // Writes now flow every way.
    let _: () = c3.set("from-3", "x").unwrap();
    let _: () = mesh.regions[0].redis.conn().set("from-1", "y").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    let there: Option<String> = mesh.regions[1].redis.conn().get("from-3").unwrap();
    assert_eq!(there.as_deref(), Some("x"));
    let there: Option<String> = c3.get("from-1").unwrap();
    assert_eq!(there.as_deref(), Some("y"));
}

/// Region 3 goes away for good. Until the others are told, it holds
/// their outboxes and tombstones; once a reload removes it, region 1
/// keeps no batch for it, collects its tombstones with region 2 alone,
/// reports `/readyz/mesh` ready, no longer lists it in `geosync status`,
/// has no metric series left for it, and no longer records what it
/// acknowledged.
#[test]
fn a_removed_region_leaves_nothing_behind() {
    let collecting = args(&[
        "--anti-entropy-interval-secs",
        "1",
        "--tombstone-collect-interval-secs",
        "1",
        "--tombstone-horizon-secs",
        "2",
    ]);
    let mut mesh = Mesh::builder(3)
        .agent_args(&collecting)
        .peer_files()
        .start();
    let mut a = mesh.regions[0].redis.conn();
    for k in 0..100 {
        let _: () = a.set(format!("k{k}"), k).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    let gone = url(&mesh, 2);
    // Region 3's agent acknowledged something: its series are there.
    assert!(!series_of(&metrics(&mesh, 0), "3").is_empty());
    mesh.kill_agent(2);
    for k in 0..100 {
        let _: () = a.del(format!("k{k}")).unwrap();
    }
    mesh.wait_stamped(0, SETTLE);
    wait_until(
        "region 1 says region 3 holds tombstones back",
        SETTLE,
        || {
            mesh.regions[0]
                .agent
                .metric("geosync_tombstone_collection_blocked")
                == 1.0
        },
    );
    let mut meta = mesh.regions[0].redis.meta_conn();
    wait_until("region 1 keeps the deletes for region 3", SETTLE, || {
        mesh.regions[0].agent.metric("geosync_outbox_batches") > 0.0
    });
    assert_eq!(
        records(&mut meta),
        100,
        "the tombstones are kept for region 3"
    );

    mesh.set_peers(0, &[1]);
    mesh.set_peers(1, &[0]);
    wait_until("region 1 reloaded", SETTLE, || {
        mesh.regions[0]
            .agent
            .metric("geosync_config_reloads_total{outcome=\"applied\"}")
            == 1.0
    });
    wait_until("region 1 drops what it kept for region 3", SETTLE, || {
        mesh.regions[0].agent.metric("geosync_outbox_batches") == 0.0
    });
    wait_until("region 1 collects the tombstones", SETTLE, || {
        records(&mut meta) == 0
            && mesh.regions[0]
                .agent
                .metric("geosync_tombstone_collection_blocked")
                == 0.0
    });
    wait_until("no series names region 3 any more", SETTLE, || {
        let body = metrics(&mesh, 0);
        series_of(&body, "3").is_empty() && !body.contains(&gone)
    });
    let (code, body) = mesh.regions[0].agent.get("/readyz/mesh").unwrap();
    assert_eq!(code, 200, "{body}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geosync"))
        .args([
            "status",
            &format!("http://127.0.0.1:{}", mesh.regions[0].agent.admin),
            "--json",
        ])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{s}");
    assert_eq!(peers[0]["peer"], "2", "{s}");
    assert_eq!(out.status.code(), Some(0), "{s}");
    let acked = mesh.regions[0].agent.data_dir.join("acked");
    wait_until("the ack log no longer names region 3", SETTLE, || {
        std::fs::read_to_string(&acked).is_ok_and(|t| !t.contains(&gone) && !t.is_empty())
    });
}

/// A reload of a file that no longer validates is refused with the
/// reason in the log, and the agent goes on with the peers it had.
#[test]
fn a_bad_configuration_on_reload_changes_nothing() {
    let mut mesh = Mesh::builder(2).peer_files().start();
    let file = mesh.dir.path().join("peers-1.toml");
    std::fs::write(&file, "peer = [\"ftp://127.0.0.1:1\"]\n").unwrap();
    mesh.regions[0].agent.signal("HUP");
    wait_until("the reload is refused", SETTLE, || {
        mesh.regions[0]
            .agent
            .metric("geosync_config_reloads_total{outcome=\"refused\"}")
            == 1.0
    });
    let log = mesh.regions[0].agent.log_text();
    assert!(
        log.contains("configuration reload refused") && log.contains("ftp://127.0.0.1:1"),
        "{log}"
    );
    assert!(mesh.regions[0].agent.is_running());
    let _: () = mesh.regions[0].redis.conn().set("after", 1).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    mesh.wait_ready();
}

/// A peer removed and added again while both agents kept running: its
/// receiver still remembers what this agent's earlier stream delivered,
/// which the new stream must not take for its own, and what was written
/// while it was out of the list reaches it (by the catch-up: anti-entropy
/// is off here).
#[test]
fn a_peer_removed_and_added_again_gets_what_it_missed() {
    let quiet = args(&["--anti-entropy-interval-secs", "3600"]);
    let mesh = Mesh::builder(3).agent_args(&quiet).peer_files().start();
    let mut a = mesh.regions[0].redis.conn();
    for k in 0..50 {
        let _: () = a.set(format!("before{k}"), k).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    mesh.set_peers(0, &[1]);
    wait_until("region 1 reloaded", SETTLE, || {
        mesh.regions[0]
            .agent
            .metric("geosync_config_reloads_total{outcome=\"applied\"}")
            == 1.0
    });
    for k in 0..20 {
        let _: () = a.set(format!("while-out{k}"), k).unwrap();
    }
    mesh.wait_stamped(0, SETTLE);
    mesh.set_peers(0, &[1, 2]);
    wait_until("region 1 ships to region 3 again", SETTLE, || {
        metrics(&mesh, 0).contains("geosync_peer_connected{peer=\"3\"} 1")
    });
    mesh.wait_converged(&[0], SETTLE);
    let mut c = mesh.regions[2].redis.conn();
    let got: Option<i64> = c.get("while-out19").unwrap();
    assert_eq!(got, Some(19));
}

/// A reload that changes only a peer's node id (a bare URL given its id,
/// or back) serves the peer again under its new label: the sender and
/// the anti-entropy rounds both go on, neither stays stopped.
#[test]
fn a_peer_whose_node_id_a_reload_changes_is_served_under_the_new_label() {
    let rounds = args(&["--anti-entropy-interval-secs", "1"]);
    let mesh = Mesh::builder(2).agent_args(&rounds).peer_files().start();
    let file = mesh.dir.path().join("peers-1.toml");
    let bare = url(&mesh, 1);
    std::fs::write(&file, format!("peer = [\"{bare}\"]\n")).unwrap();
    mesh.regions[0].agent.signal("HUP");
    let by_address = |name: &str| format!("{name}{{peer=\"{bare}\"}}");
    wait_until("rounds and the link under the address", SETTLE, || {
        let a = &mesh.regions[0].agent;
        a.metric(&by_address("geosync_anti_entropy_rounds_total")) >= 1.0
            && a.metric(&by_address("geosync_peer_connected")) == 1.0
    });
    std::fs::write(&file, format!("peer = [\"2={bare}\"]\n")).unwrap();
    mesh.regions[0].agent.signal("HUP");
    wait_until(
        "rounds and the link under the node id again",
        SETTLE,
        || {
            let body = metrics(&mesh, 0);
            !body.contains(&bare.to_string().replace("http://", "peer=\"http://"))
                && geosync::lab::metric_value(&body, "geosync_peer_connected{peer=\"2\"}")
                    == Some(1.0)
                && geosync::lab::metric_value(
                    &body,
                    "geosync_anti_entropy_rounds_total{peer=\"2\"}",
                )
                .is_some_and(|v| v >= 1.0)
        },
    );
}
