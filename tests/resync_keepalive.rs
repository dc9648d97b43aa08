//! The replication link stays alive while a resync's long work runs: the
//! agent reads the stream (kept in order until the work ends), acknowledges
//! it every second and answers `REPLCONF GETACK`, so a master with a short
//! `repl-timeout` keeps it, and every write made meanwhile is stamped and
//! shipped once the work ends.

mod support;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(60);
/// The masters' `repl-timeout` in seconds: a replica that sends no
/// `REPLCONF ACK` for longer is dropped.
const REPL_TIMEOUT: u64 = 2;

fn replication_field(r: &Redis, field: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut r.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Region 1's Redis restarts empty, so its agent rebuilds the region from
/// region 2 before it follows the stream; region 2 does not answer (a
/// blackholed link) for three times the master's `repl-timeout`, while a
/// client writes to region 1: first a burst larger than the agent keeps in
/// memory, then one key at a time, each followed by `WAIT 1` (which makes
/// the master send `REPLCONF GETACK`). The master must keep the agent (no
/// timeout, no new session, no second full resync), `WAIT` must count it
/// (with `--ack-after local` the agent acknowledges what it received; by
/// default it would wait for region 2, which is the point of decision 017,
/// not of this test), and once region 2 answers every write reaches it.
#[test]
fn a_rebuild_longer_than_repl_timeout_keeps_the_replication_link() {
    let seed = seed_from_env();
    println!(
        "replay: GEOSYNC_SEED={seed} cargo nextest run --test resync_keepalive a_rebuild_longer"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let timeout = REPL_TIMEOUT.to_string();
    let mut mesh = Mesh::builder(2)
        .proxied()
        .redis(Redis::builder().args(&["--repl-timeout", &timeout]))
        .agent_args(&["--ack-after", "local"])
        .start();
    let mut a = mesh.regions[0].redis.conn();
    for i in 0..20 {
        let _: () = a.set(format!("before:{i}"), i).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    let file = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("region 1's position is recorded", SETTLE, || file.exists());

    // Region 2 stops answering; region 1's Redis comes back empty and its
    // agent starts rebuilding from region 2, which hangs.
    mesh.blackhole(0, 1);
    let rebuilds = mesh.regions[0].agent.metric("geosync_rebuilds_total");
    mesh.restart_redis_empty(0);
    let agent = &mesh.regions[0].agent;
    wait_until("region 1's agent begins rebuilding", SETTLE, || {
        agent
            .log_text()
            .contains("rebuilding the region from a peer")
    });
    let began = Instant::now();
    let full_resyncs = agent.metric("geosync_sync_full_total");
    let sessions_ended = agent.metric("geosync_replication_sessions_ended_total");
    let redis = &mesh.regions[0].redis;
    let mut a = redis.conn();

    // A burst beyond what the agent keeps in memory (4 MiB).
    let mut written: Vec<(String, String)> = Vec::new();
    let mut burst = redis::pipe();
    let mut burst_bytes = 0;
    while burst_bytes < 8 << 20 {
        let len = rng.gen_range(16 << 10..256 << 10);
        let fill = char::from(b'a' + rng.gen_range(0..26u8));
        let (k, v) = (
            format!("burst:{}", written.len()),
            fill.to_string().repeat(len),
        );
        burst.set(&k, &v).ignore();
        burst_bytes += len;
        written.push((k, v));
    }
    let () = burst.query(&mut a).unwrap();

    // Then single writes, each acknowledged (or not) by the agent, until the
    // rebuild has been held for three times the master's timeout.
    let mut unacked = Vec::new();
    let mut i = 0;
    while began.elapsed() < Duration::from_secs(3 * REPL_TIMEOUT) {
        let (k, v) = (
            format!("during:{i}"),
            rng.gen_range(0..1_000_000u32).to_string(),
        );
        let _: () = a.set(&k, &v).unwrap();
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(1000).query(&mut a).unwrap();
        if acked != 1 {
            unacked.push(k.clone());
        }
        written.push((k, v));
        i += 1;
    }
    let replicas = replication_field(redis, "connected_slaves");
    let rebuilt_meanwhile = agent.metric("geosync_rebuilds_total") - rebuilds;
    println!(
        "{} writes while the rebuild was held for {:?}",
        written.len(),
        began.elapsed()
    );
    assert_eq!(
        rebuilt_meanwhile, 0.0,
        "the rebuild must still be running (region 2 does not answer)"
    );
    assert_eq!(
        replicas,
        "1",
        "the master dropped the agent during the rebuild; its log:\n{}",
        std::fs::read_to_string(redis.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("eplica") || l.contains("timeout"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        unacked.is_empty(),
        "WAIT 1 did not count the agent after {} of {i} writes during the rebuild",
        unacked.len()
    );

    // Region 2 answers again: the rebuild ends, the kept stream is stamped.
    mesh.heal_all();
    let agent = &mesh.regions[0].agent;
    wait_until("region 1 is rebuilt", SETTLE, || {
        agent.metric("geosync_rebuilds_total") > rebuilds
    });
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let mut b = mesh.regions[1].redis.conn();
    let missing: Vec<&String> = written
        .iter()
        .filter(|(k, v)| b.get::<_, Option<String>>(k).unwrap().as_ref() != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} writes made during the rebuild did not reach region 2: {:?}",
        missing.len(),
        written.len(),
        &missing[..missing.len().min(10)]
    );
    // Every kept byte was handled once, in order: the offset the agent
    // handled is the master's, exactly.
    let agent = &mesh.regions[0].agent;
    let redis = &mesh.regions[0].redis;
    let mut offsets = (0, 0);
    poll(SETTLE, || {
        offsets = (
            agent.metric("geosync_repl_offset") as i64,
            redis.master_repl_offset(),
        );
        offsets.0 == offsets.1
    });
    assert_eq!(
        offsets.0, offsets.1,
        "the agent's handled offset against the master's"
    );
    assert_eq!(
        agent.metric("geosync_replication_sessions_ended_total"),
        sessions_ended,
        "the replication session did not end"
    );
    assert_eq!(
        agent.metric("geosync_sync_full_total"),
        full_resyncs,
        "no second full resync"
    );
    assert_eq!(
        mesh.regions[0].redis.info_i64("stats", "sync_full"),
        1,
        "the restarted master served one full sync"
    );
    // The stream read during the rebuild was kept, partly on disk.
    assert!(agent.metric("geosync_resync_stream_kept_bytes_total") >= (8 << 20) as f64);
    assert!(agent.metric("geosync_resync_stream_spilled_bytes_total") > 0.0);
}
