//! A writer faster than the agent: the master's replica output-buffer limit
//! must not cut the agent off (and so force full resyncs); the agent spools
//! what it has not stamped yet instead of making the master hold it.

mod support;

use std::time::{Duration, Instant};

use support::*;

const SETTLE: Duration = Duration::from_secs(120);

/// A master that drops a replica as soon as 32 MiB wait for it (16 MiB for
/// ten seconds), a tenth of what the writer below sends, with a backlog too
/// small to continue after such a drop.
const STRICT_MASTER: [&str; 4] = [
    "--client-output-buffer-limit",
    "replica 32mb 16mb 10",
    "--repl-backlog-size",
    "1mb",
];

/// Two regions whose first agent runs with `spool` settings.
fn mesh_with_spool(spool: &[&str]) -> Mesh {
    let mut mesh = Mesh::start_with(2, &STRICT_MASTER);
    let agent = &mut mesh.regions[0].agent;
    agent.extra = spool.iter().map(|s| s.to_string()).collect();
    agent.restart();
    mesh.wait_ready();
    mesh
}

/// Bytes of each value the writer sets.
const VALUE_BYTES: usize = 4096;

/// Pipelined SETs of large values to keys `k<from>` .. (160 MiB for 40k
/// keys): the replication stream runs far ahead of what the agent stamps
/// and ships. Returns how long writing took.
fn flood(master: &Redis, from: usize, to: usize) -> Duration {
    let value = "v".repeat(VALUE_BYTES);
    let mut c = master.conn();
    let started = Instant::now();
    for chunk in (from..to).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.cmd("SET").arg(format!("k{i}")).arg(&value).ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    started.elapsed()
}

#[test]
fn a_writer_faster_than_the_stamper_does_not_get_the_agent_dropped() {
    // A 1 MiB memory spool: the rest goes to the disk spool.
    let mesh = mesh_with_spool(&["--spool-memory-mb", "1"]);
    let master = &mesh.regions[0].redis;
    let (full0, partial0) = (
        master.info_i64("stats", "sync_full"),
        master.info_i64("stats", "sync_partial_ok"),
    );
    // At least 40k keys, and on until the stamper is more than the memory
    // spool behind (so the disk spool is in use, however fast the stamper
    // is on a given run).
    let agent = &mesh.regions[0].agent;
    let least = env_usize("GEOSYNC_TEST_KEYS", 40_000);
    let (mut keys, mut wrote) = (0, Duration::ZERO);
    let began = Instant::now();
    wait_until("the writer gets ahead of the memory spool", SETTLE, || {
        wrote += flood(master, keys, keys + 10_000);
        keys += 10_000;
        keys >= least && agent.metric("geosync_spool_spilled_events_total") > 0.0
    });
    let end = master.master_repl_offset();
    let tailed = wait_until("the agent reads the whole stream", SETTLE, || {
        agent.metric("geosync_repl_offset") as i64 >= end
    });
    let b = &mesh.regions[1].redis;
    // User keys only: DBSIZE counts the metadata buckets too, thousands of
    // them, and so would be reached with thousands of keys still missing.
    let mut bc = b.conn();
    wait_until("every key reaches region 2", SETTLE, || {
        user_key_count(&mut bc).unwrap() >= keys
    });
    let copied = began.elapsed();
    mesh.wait_converged(&[0], SETTLE);
    // The count the wait above relied on is of user keys only: once
    // converged, region 2 holds exactly the keys written (its metadata
    // buckets are not counted, or the wait ends early and the figure
    // above is too small).
    assert_eq!(
        user_key_count(&mut bc).unwrap(),
        keys,
        "region 2's user keys, metadata buckets left out"
    );
    let spilled = agent.metric("geosync_spool_spilled_events_total");
    println!(
        "backpressure: keys={keys} value_bytes={VALUE_BYTES} write_secs={:.2} stream_read_after={:.2}s copied_after_writes_began={:.2}s spilled_events={spilled} sync_full={} sync_partial_ok={}",
        wrote.as_secs_f64(),
        tailed.as_secs_f64(),
        copied.as_secs_f64(),
        master.info_i64("stats", "sync_full") - full0,
        master.info_i64("stats", "sync_partial_ok") - partial0,
    );
    assert_eq!(
        (
            master.info_i64("stats", "sync_full"),
            master.info_i64("stats", "sync_partial_ok")
        ),
        (full0, partial0),
        "the master cut the agent off and it had to resync"
    );
    assert_eq!(agent.metric("geosync_spool_full_waits_total"), 0.0);
}

/// The same writer against an agent whose spool cannot grow: the tailer
/// waits, the master drops it and the agent needs a full resync. This is
/// what the disk spool prevents, and shows the test above can fail.
#[test]
fn without_the_disk_spool_the_same_writer_gets_the_agent_dropped() {
    // One key per stamp script keeps the stamper well behind the writer
    // however the machine's cores are shared; the writer goes on until the
    // master has dropped the agent.
    let mesh = mesh_with_spool(&[
        "--spool-memory-mb",
        "1",
        "--spool-disk-mb",
        "0",
        "--batch-keys",
        "1",
    ]);
    let master = &mesh.regions[0].redis;
    let full0 = master.info_i64("stats", "sync_full");
    wait_until("the master drops the agent and resyncs", SETTLE, || {
        flood(master, 0, 10_000);
        master.info_i64("stats", "sync_full") > full0
    });
    assert!(
        mesh.regions[0]
            .agent
            .metric("geosync_spool_full_waits_total")
            > 0.0
    );
}

/// `INFO commandstats` calls of `command` on `r` since the last reset.
fn calls(r: &Redis, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut r.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Writes that pile up while the stamper cannot stamp are coalesced: a key
/// written ten times is read by the stamp script once, not ten times
/// (decision 021). The stamper is held back by taking `EVALSHA` from the
/// agent's user; the tailer goes on reading the stream meanwhile.
#[test]
fn a_key_written_again_while_waiting_is_stamped_once() {
    const KEYS: usize = 2000;
    const ROUNDS: usize = 10;
    let mesh = Mesh::start(2);
    let origin = &mesh.regions[0].redis;
    let mut c = origin.conn();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-evalsha"][..])
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    for round in 0..ROUNDS {
        let mut p = redis::pipe();
        for k in 0..KEYS {
            p.cmd("SET")
                .arg(format!("k{k}"))
                .arg(format!("round {round}"))
                .ignore();
        }
        p.query::<()>(&mut c).unwrap();
    }
    let written = origin.master_repl_offset();
    wait_until("the agent read every write from the stream", SETTLE, || {
        mesh.regions[0].agent.metric("geosync_repl_offset") >= written as f64
    });
    assert!(
        calls(origin, "pexpiretime") == 0,
        "the stamp script ran while EVALSHA was taken away"
    );
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+evalsha"][..])
        .query(&mut c)
        .unwrap();
    // The agent records a replication offset once everything before it
    // has been stamped (decision 006).
    wait_until("every write stamped", SETTLE, || {
        mesh.regions[0].agent.recorded_offset() >= written
    });
    // The stamp script reads each string key's expiry once; nothing else
    // asks for it in the region that only writes (the convergence check
    // below does, so it comes after).
    let read = calls(origin, "pexpiretime");
    let took = mesh.wait_converged(&[0], SETTLE);
    let mut far = mesh.regions[1].redis.conn();
    let last: Option<String> = redis::cmd("GET").arg("k0").query(&mut far).unwrap();
    assert_eq!(last, Some(format!("round {}", ROUNDS - 1)));
    println!(
        "{} writes to {KEYS} keys: the stamp script read {read} keys; converged {took:?} later",
        KEYS * ROUNDS
    );
    assert!(
        read <= 2 * KEYS as u64,
        "{read} keys read for {KEYS} keys written {ROUNDS} times each: not coalesced"
    );
}
