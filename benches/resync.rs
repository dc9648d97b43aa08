//! A big dataset through a full resync, against Redis's own replication
//! of the same data: one collection with millions of elements (shipped in
//! pieces, decision 009), or millions of string keys (a multi-gigabyte
//! snapshot).
//!
//! The data is written into region 1 while its agent is stopped; the agent
//! then starts, resyncs and ships it. The figure is the time until region 2
//! holds all of it, next to the baseline measured in the same run: a plain
//! replica (`--replicaof`) of a Redis holding the same data doing its full
//! sync. It prints both agents' peak RSS (VmHWM) next to the size of the
//! data and of the snapshot. It fails, rather than print a figure, when
//! the restarted agent did not resync fully (region 1's master counts one
//! more `sync_full` and no `sync_partial_ok`, the agent one
//! `geosync_sync_full_total`), or the replica did not.
//!
//! ```text
//! cargo bench --bench resync                  # one set of 10 000 000 members
//! GEOSYNC_BENCH_MEMBERS=1000000 GEOSYNC_BENCH_TYPE=hash cargo bench --bench resync
//! GEOSYNC_BENCH_TYPE=strings GEOSYNC_BENCH_MEMBERS=2500000 cargo bench --bench resync
//! ```
//! Types: set, hash, zset, list (one key of GEOSYNC_BENCH_MEMBERS elements),
//! strings (GEOSYNC_BENCH_MEMBERS keys of GEOSYNC_BENCH_VALUE_BYTES bytes,
//! 1024 by default, that do not compress).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::{Mesh, Redis, wait_until};

const DEADLINE: Duration = Duration::from_secs(3600);

/// A value of `len` bytes that LZF cannot compress (xorshift output).
fn incompressible(seed: usize, len: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `n` string keys `key:<i>` of `value_bytes` bytes.
fn fill_strings(c: &mut redis::Connection, n: usize, value_bytes: usize) {
    for start in (0..n).step_by(1000) {
        let mut p = redis::pipe();
        for i in start..n.min(start + 1000) {
            p.cmd("SET")
                .arg(format!("key:{i}"))
                .arg(incompressible(i, value_bytes))
                .ignore();
        }
        p.query::<()>(c).unwrap();
    }
}

/// Writes `n` elements into `key`, 1000 per command, 10 commands per round trip.
fn fill(c: &mut redis::Connection, kind: &str, key: &str, n: usize) {
    if kind == "strings" {
        return fill_strings(c, n, support::env_usize("GEOSYNC_BENCH_VALUE_BYTES", 1024));
    }
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

/// Elements of the key (user keys for `strings`, exact once DBSIZE reaches
/// `expected`).
fn size(c: &mut redis::Connection, kind: &str, key: &str, expected: usize) -> usize {
    let cmd = match kind {
        "strings" => "DBSIZE",
        "set" => "SCARD",
        "hash" => "HLEN",
        "zset" => "ZCARD",
        _ => "LLEN",
    };
    let mut cmd = redis::cmd(cmd);
    if kind != "strings" {
        cmd.arg(key);
    }
    // 0 while a replica is still loading its snapshot (LOADING); the
    // metadata buckets are keys too, so count user keys only
    let n: usize = cmd.query(c).unwrap_or(0);
    if kind == "strings" && n >= expected {
        // Only near the end (the metadata buckets are at most 16384 keys):
        // a full SCAN for geosync's own keys.
        let own: usize = c.scan_match::<_, Vec<u8>>("__geosync:*").unwrap().count();
        return n.saturating_sub(own);
    }
    n
}

fn dataset_mib(c: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory_dataset:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / (1024.0 * 1024.0)
}

/// Size of the snapshot of this data (`SAVE`, then the file's size).
fn snapshot_mib(c: &mut redis::Connection) -> f64 {
    let _: () = redis::cmd("SAVE").query(c).unwrap();
    let dir: (String, String) = redis::cmd("CONFIG").arg("GET").arg("dir").query(c).unwrap();
    let file: (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dbfilename")
        .query(c)
        .unwrap();
    let path = std::path::Path::new(&dir.1).join(&file.1);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    bytes as f64 / (1024.0 * 1024.0)
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
    let mut mc = master.conn();
    fill(&mut mc, &kind, key, n);
    let rdb_mib = snapshot_mib(&mut mc);
    let start = Instant::now();
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let mut rc = replica.conn();
    wait_until("the replica holds the key", DEADLINE, || {
        size(&mut rc, &kind, key, n) == n
    });
    let baseline = start.elapsed();
    assert_eq!(
        master.info_i64("stats", "sync_full"),
        1,
        "the baseline is not one full sync of the replica"
    );
    drop((replica, master));

    let mut mesh = Mesh::start(2);
    mesh.regions[0].agent.kill();
    let mut a = mesh.regions[0].redis.conn();
    fill(&mut a, &kind, key, n);
    let data = dataset_mib(&mut a);
    let redis = &mesh.regions[0].redis;
    let (full, partial) = (
        redis.info_i64("stats", "sync_full"),
        redis.info_i64("stats", "sync_partial_ok"),
    );
    let start = Instant::now();
    mesh.regions[0].agent.restart();
    let mut far = mesh.regions[1].redis.conn();
    wait_until("region 2 holds the key", DEADLINE, || {
        size(&mut far, &kind, key, n) == n
    });
    let took = start.elapsed();
    // The figure is a full resync's only if there was one: a dataset the
    // master's backlog still holds continues with PSYNC instead.
    let redis = &mesh.regions[0].redis;
    let agent = &mesh.regions[0].agent;
    assert!(
        redis.info_i64("stats", "sync_full") == full + 1
            && redis.info_i64("stats", "sync_partial_ok") == partial
            && agent.metric("geosync_sync_full_total") == 1.0,
        "the restarted agent did not resync fully (master sync_full {full} -> {}, \
         sync_partial_ok {partial} -> {}, agent geosync_sync_full_total {}): \
         the time measured is not a full resync's; write more data",
        redis.info_i64("stats", "sync_full"),
        redis.info_i64("stats", "sync_partial_ok"),
        agent.metric("geosync_sync_full_total"),
    );
    println!(
        "{kind} of {n} elements ({data:.0} MiB dataset, {rdb_mib:.0} MiB snapshot): redis replica full sync {:.1} s; geosync region 1 -> region 2 {:.1} s; geosync/replica time ratio {:.1}",
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
