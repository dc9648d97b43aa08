//! Peak memory of a real `geosync run` agent doing its first full sync of a
//! Redis holding huge collections: it reads the snapshot from the
//! replication socket (diskless), reports every key and stamps the whole
//! dataset (the collections over `--max-key-elements` in pieces). Against a
//! baseline measured in the same run: the same agent's first full sync of
//! an empty Redis.
//!
//! The Redis (`GEOSYNC_TEST_REDIS_SERVER`, or `redis-server`) holds one hash
//! with N fields, one list, one set and one sorted set with N members each,
//! plus K plain keys (`DEBUG POPULATE`). The agent runs alone (no peers, so
//! the outbox holds nothing and what is measured is reading the snapshot
//! and stamping). Its peak RSS (`VmHWM` of /proc/<pid>/status) is read when
//! its log says the snapshot has been reported and again when it is ready
//! (the whole snapshot stamped). The benchmark fails unless the agent did
//! one full sync that reported every key.
//!
//! ```text
//! cargo bench --bench rdb_memory          # N = 2 000 000, K = 1 000 000
//! GEOSYNC_BENCH_MEMBERS=200000 GEOSYNC_BENCH_KEYS=100000 cargo bench --bench rdb_memory
//! GEOSYNC_BENCH_AGENT_ARGS="--max-key-elements 1000 --batch-keys 64" cargo bench --bench rdb_memory
//! ```
//!
//! `GEOSYNC_BENCH_AGENT_ARGS` are extra `geosync run` settings for both
//! agents; smaller stamp batches show how much of the peak is stamping.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Agent, Redis, free_port, poll, wait_until};

const MIB: f64 = 1024.0 * 1024.0;
/// Members sent per pipeline round trip.
const PIPELINE: usize = 10_000;
/// Members per variadic command inside a pipeline.
const PER_COMMAND: usize = 1_000;
const DEADLINE: Duration = Duration::from_secs(1800);

/// Adds `n` members to `key` with `cmd`, `args(i)` giving each member's
/// arguments, in pipelines of [`PIPELINE`] members.
fn fill(
    c: &mut redis::Connection,
    cmd: &str,
    key: &str,
    n: usize,
    mut args: impl FnMut(usize, &mut redis::Cmd),
) {
    let mut i = 0;
    while i < n {
        let end = (i + PIPELINE).min(n);
        let mut p = redis::pipe();
        while i < end {
            let stop = (i + PER_COMMAND).min(end);
            let mut command = redis::cmd(cmd);
            command.arg(key);
            for j in i..stop {
                args(j, &mut command);
            }
            p.add_command(command).ignore();
            i = stop;
        }
        p.query::<()>(c)
            .unwrap_or_else(|e| panic!("{cmd} {key}: {e}"));
    }
}

/// Writes the data set; returns the number of keys.
fn make_dataset(c: &mut redis::Connection, members: usize, keys: usize) -> u64 {
    let start = Instant::now();
    fill(c, "HSET", "big:hash", members, |i, cmd| {
        cmd.arg(format!("field:{i}")).arg(format!("value-{i:0>32}"));
    });
    fill(c, "RPUSH", "big:list", members, |i, cmd| {
        cmd.arg(format!("member:{i}"));
    });
    fill(c, "SADD", "big:set", members, |i, cmd| {
        cmd.arg(format!("member:{i}"));
    });
    fill(c, "ZADD", "big:zset", members, |i, cmd| {
        cmd.arg(i as f64 / 3.0).arg(format!("member:{i}"));
    });
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(keys)
        .arg("plain")
        .arg(16)
        .query(c)
        .expect("DEBUG POPULATE (the server runs with --enable-debug-command local)");
    let dbsize: u64 = redis::cmd("DBSIZE").query(c).unwrap();
    eprintln!(
        "rdb_memory: wrote {dbsize} keys in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    dbsize
}

/// Size of the snapshot of this data (`SAVE`, then the file's size).
fn snapshot_mib(redis: &Redis) -> f64 {
    let _: () = redis::cmd("SAVE").query(&mut redis.conn()).unwrap();
    let path = redis.dir.path().join("dump.rdb");
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    bytes as f64 / MIB
}

/// What one agent's first full sync cost.
struct Sync {
    /// Peak RSS when the snapshot had been reported, and when ready.
    at_snapshot_mib: f64,
    at_ready_mib: f64,
    /// Keys the agent reported from the snapshot.
    reported: u64,
    /// Diskless (the master streamed it) or from the master's disk file.
    diskless: bool,
    secs: f64,
}

/// Starts an agent (no peers) for `redis`, waits until it is ready, and
/// checks it did one full sync.
fn first_sync(redis: &Redis, dir: &std::path::Path) -> Sync {
    let start = Instant::now();
    let extra: Vec<String> = std::env::var("GEOSYNC_BENCH_AGENT_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut agent = Agent::start_with(1, &redis.url(), free_port(), free_port(), &[], dir, &extra);
    let reported_line = |agent: &Agent| {
        agent
            .log_text()
            .lines()
            .find(|l| l.contains("snapshot reported"))
            .map(str::to_owned)
    };
    wait_until("the snapshot is reported", DEADLINE, || {
        reported_line(&agent).is_some()
    });
    let at_snapshot_mib = agent.peak_rss_mib();
    let line = reported_line(&agent).unwrap();
    let reported = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("keys="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no keys= in {line:?}"));
    poll(DEADLINE, || agent.is_ready()).expect("the agent stamped the snapshot");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        agent.metric("geosync_sync_full_total"),
        1.0,
        "the agent did one full sync"
    );
    Sync {
        at_snapshot_mib,
        at_ready_mib: agent.peak_rss_mib(),
        reported,
        diskless: line.contains("diskless=true"),
        secs,
    }
}

fn main() {
    if support::listing_only() {
        return;
    }
    let members = support::env_usize("GEOSYNC_BENCH_MEMBERS", 2_000_000);
    let keys = support::env_usize("GEOSYNC_BENCH_KEYS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let debug = ["--enable-debug-command", "local"];

    // Baseline: the same agent's first sync of an empty Redis.
    let empty = Redis::start(&debug);
    let base = first_sync(&empty, &dir.path().join("empty"));
    assert_eq!(base.reported, 0);
    drop(empty);

    let redis = Redis::start(&debug);
    let dbsize = make_dataset(&mut redis.conn(), members, keys);
    let rdb = snapshot_mib(&redis);
    let full = first_sync(&redis, &dir.path().join("full"));
    assert_eq!(full.reported, dbsize, "the agent reported every key");
    println!(
        "rdb_memory: {members} members in each of a hash/list/set/zset, {keys} plain keys, \
         {rdb:.1} MiB snapshot (sent {})",
        if full.diskless {
            "diskless"
        } else {
            "from the master's disk"
        }
    );
    println!(
        "rdb_memory: agent peak RSS, empty Redis (baseline): {:.1} MiB; this dataset: {:.1} MiB \
         once the snapshot was read, {:.1} MiB once it was all stamped ({:.1} MiB over the \
         baseline; full sync and stamping took {:.1} s)",
        base.at_ready_mib,
        full.at_snapshot_mib,
        full.at_ready_mib,
        full.at_ready_mib - base.at_ready_mib,
        full.secs,
    );
}
