//! One collection with millions of members through geosync, against
//! Redis's own replication of the same data.
//!
//! The collection (a set by default) is written into region 1 while its
//! agent is stopped; the agent then starts, resyncs and ships the key in
//! pieces (decision 009). The figure is the time until region 2 holds all
//! of it, next to the baseline measured in the same run: a plain replica
//! (`--replicaof`) of a Redis holding the same data doing its full sync.
//! It prints both agents' peak RSS (VmHWM) next to the size of the data.
//!
//! ```text
//! cargo bench --bench large_key                  # a set of 10 000 000 members
//! GEOSYNC_BENCH_MEMBERS=1000000 GEOSYNC_BENCH_TYPE=hash cargo bench --bench large_key
//! ```
//! Types: set, hash, zset, list.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Mesh, Redis, wait_until};

const DEADLINE: Duration = Duration::from_secs(3600);

/// Writes `n` elements into `key`, 1000 per command, 10 commands per round trip.
fn fill(c: &mut redis::Connection, kind: &str, key: &str, n: usize) {
    for start in (0..n).step_by(10_000) {
        let mut p = redis::pipe();
        for chunk in (start..n.min(start + 10_000)).step_by(1000) {
            let end = n.min(start + 10_000).min(chunk + 1000);
            let cmd = match kind {
                "set" => "SADD",
                "hash" => "HSET",
                "zset" => "ZADD",
                "list" => "RPUSH",
                other => panic!("GEOSYNC_BENCH_TYPE: unknown type {other}"),
            };
            let c = p.cmd(cmd).arg(key);
            for i in chunk..end {
                match kind {
                    "hash" => c.arg(format!("field-{i:09}")).arg(i),
                    "zset" => c.arg(i % 100_000).arg(format!("member-{i:09}")),
                    _ => c.arg(format!("member-{i:09}")),
                };
            }
            c.ignore();
        }
        p.query::<()>(c).unwrap();
    }
}

fn size(c: &mut redis::Connection, kind: &str, key: &str) -> usize {
    let cmd = match kind {
        "set" => "SCARD",
        "hash" => "HLEN",
        "zset" => "ZCARD",
        _ => "LLEN",
    };
    // 0 while a replica is still loading its snapshot (LOADING)
    redis::cmd(cmd).arg(key).query(c).unwrap_or(0)
}

fn dataset_mib(c: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory_dataset:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / (1024.0 * 1024.0)
}

fn main() {
    if support::listing_only() {
        return;
    }
    let n = support::env_usize("GEOSYNC_BENCH_MEMBERS", 10_000_000);
    let kind = std::env::var("GEOSYNC_BENCH_TYPE").unwrap_or_else(|_| "set".into());
    let key = "large";

    // Baseline: Redis's own full sync of the same data to a replica.
    let master = Redis::start(&[]);
    fill(&mut master.conn(), &kind, key, n);
    let start = Instant::now();
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let mut rc = replica.conn();
    wait_until("the replica holds the key", DEADLINE, || {
        size(&mut rc, &kind, key) == n
    });
    let baseline = start.elapsed();
    drop((replica, master));

    let mut mesh = Mesh::start(2);
    mesh.regions[0].agent.kill();
    let mut a = mesh.regions[0].redis.conn();
    fill(&mut a, &kind, key, n);
    let data = dataset_mib(&mut a);
    let start = Instant::now();
    mesh.regions[0].agent.restart();
    let mut far = mesh.regions[1].redis.conn();
    wait_until("region 2 holds the key", DEADLINE, || {
        size(&mut far, &kind, key) == n
    });
    let took = start.elapsed();
    println!(
        "{kind} of {n} elements ({data:.0} MiB dataset): redis replica full sync {:.1} s; geosync region 1 -> region 2 {:.1} s; geosync/replica time ratio {:.1}",
        baseline.as_secs_f64(),
        took.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64(),
    );
    println!(
        "agent peak RSS: region 1 (reads and ships) {:.1} MiB, region 2 (applies) {:.1} MiB; ratio to the dataset {:.3}",
        mesh.regions[0].agent.peak_rss_mib(),
        mesh.regions[1].agent.peak_rss_mib(),
        mesh.regions[0]
            .agent
            .peak_rss_mib()
            .max(mesh.regions[1].agent.peak_rss_mib())
            / data,
    );
}
