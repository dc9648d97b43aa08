//! Large collections: a key read in one script must not block Redis for
//! long, a slow script must not be mistaken for a dead connection, and a
//! collection over `--max-key-elements` travels in pieces (decision 009);
//! what cannot (a stream, a hash with field expiries) is reported and left
//! alone while everything else keeps flowing.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(60);

/// Two regions whose agents run with `extra` settings.
fn mesh_with(extra: &[&str]) -> Mesh {
    Mesh::with_agent_args(2, extra)
}

/// Adds `n` members to the set `key`, in pipelined chunks.
fn fill_set(c: &mut redis::Connection, key: &str, n: usize) {
    for start in (0..n).step_by(10_000) {
        let members: Vec<String> = (start..n.min(start + 10_000))
            .map(|i| format!("member-{i}"))
            .collect();
        let _: () = c.sadd(key, members).unwrap();
    }
}

/// The redis crate's default response timeout, which geosync's stamp and
/// apply scripts outlast (`store::locator::RESPONSE_TIMEOUT`).
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest script call (EVALSHA) in the server's slow log, None when
/// there is none.
fn slowest_script(redis: &Redis) -> Option<Duration> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1024)
        .query(&mut redis.conn())
        .unwrap();
    entries
        .iter()
        .filter_map(|e| {
            // [id, unix time, duration in µs, [command, args...], ...]
            let redis::Value::Array(f) = e else {
                return None;
            };
            let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(cmd))) =
                (f.get(2), f.get(3))
            else {
                return None;
            };
            let name = match cmd.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).to_uppercase(),
                _ => return None,
            };
            (name == "EVALSHA").then(|| Duration::from_micros(*micros as u64))
        })
        .max()
}

#[test]
fn a_key_that_takes_the_script_a_while_is_replicated() {
    // 600k members, read by one script (the element limit raised to allow
    // it): reading and digesting them takes the stamp script well over the
    // redis crate's default 500 ms response timeout (about 1.5 s on the
    // 2-core test machine; 200k members took 0.5 to 0.9 s, too close). Every
    // script slower than 100 ms is in the slow log. On a loaded machine the
    // same script takes several times longer and passes the server's 5 s
    // busy threshold, after which Redis answers BUSY to every other client,
    // this test's writer included: the threshold is raised, since what is
    // tested is that the agent waits, not how Redis treats long scripts.
    const MEMBERS: usize = 600_000;
    let slowlog = [
        "--slowlog-log-slower-than",
        "100000",
        "--slowlog-max-len",
        "1024",
        "--busy-reply-threshold",
        "120000",
    ];
    let servers = (0..2).map(|_| Redis::start(&slowlog)).collect();
    let mesh = Mesh::over_with(servers, None, &["--max-key-elements", "1000000"]);
    let mut a = mesh.regions[0].redis.conn();
    fill_set(&mut a, "big", MEMBERS);
    let mut b = mesh.regions[1].redis.conn();
    wait_until("the whole set reaches region 2", SETTLE, || {
        b.scard::<_, usize>("big").unwrap() == MEMBERS
    });
    mesh.wait_converged(&[0], SETTLE);
    let stamp = slowest_script(&mesh.regions[0].redis);
    let apply = slowest_script(&mesh.regions[1].redis);
    println!("slowest script: {stamp:?} in region 1 (stamping), {apply:?} in region 2 (applying)");
    assert!(
        stamp.is_some_and(|t| t > DEFAULT_REPLY_TIMEOUT),
        "the longest stamp script took {stamp:?} (None: under the 100 ms slow-log threshold), \
         not longer than {DEFAULT_REPLY_TIMEOUT:?}: the workload is too small to show that \
         a slow script is waited for"
    );
    for r in &mesh.regions {
        assert_eq!(
            r.agent.metric("geosync_redis_timeouts_total"),
            0.0,
            "agent {} saw a script time out",
            r.agent.node_id
        );
    }
}

/// Counts `__geosync:x:*` copies and `__geosync:in:*` keys under construction.
fn private_keys(c: &mut redis::Connection) -> usize {
    let x: Vec<String> = c.keys("__geosync:x:*").unwrap();
    let i: Vec<String> = c.keys("__geosync:in:*").unwrap();
    x.len() + i.len()
}

/// Writes a list, a set, a sorted set and a hash of `n` elements each (the
/// list also holds repeated values), in pipelined chunks.
fn fill_collections(c: &mut redis::Connection, prefix: &str, n: usize) {
    for start in (0..n).step_by(5000) {
        let end = n.min(start + 5000);
        let mut p = redis::pipe();
        let list: Vec<String> = (start..end).map(|i| format!("item-{}", i % 777)).collect();
        let members: Vec<String> = (start..end).map(|i| format!("m{i}")).collect();
        let scored: Vec<(f64, String)> = (start..end)
            .map(|i| ((i % 1000) as f64 * 0.5, format!("z{i}")))
            .collect();
        let fields: Vec<(String, String)> = (start..end)
            .map(|i| (format!("f{i}"), format!("value {i}")))
            .collect();
        p.rpush(format!("{prefix}list"), list)
            .ignore()
            .sadd(format!("{prefix}set"), members)
            .ignore()
            .zadd_multiple(format!("{prefix}zset"), &scored)
            .ignore()
            .hset_multiple(format!("{prefix}hash"), &fields)
            .ignore();
        let _: () = p.query(c).unwrap();
    }
}

#[test]
fn collections_over_the_element_limit_travel_in_pieces() {
    // 1000 elements at most per script, so 30 000-element collections go
    // in pieces (several batches of several pieces each).
    let mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let _: () = a.set("before", "1").unwrap();
    fill_collections(&mut a, "big", 30_000);
    let _: () = a.pexpire("bighash", 3_600_000).unwrap();
    let _: () = a.set("after", "1").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(b.llen::<_, usize>("biglist").unwrap(), 30_000);
    assert_eq!(b.zcard::<_, usize>("bigzset").unwrap(), 30_000);
    assert!(
        b.pttl::<_, i64>("bighash").unwrap() > 3_000_000,
        "the expiry came along"
    );
    let agent = &mesh.regions[0].agent;
    assert!(agent.metric("geosync_large_keys_shipped_total") >= 4.0);
    assert_eq!(agent.metric("geosync_unsupported_keys_total"), 0.0);
    assert_eq!(
        mesh.regions[1]
            .agent
            .metric("geosync_large_keys_incomplete_total"),
        0.0
    );
    wait_until(
        "private copies and built keys are cleaned up",
        SETTLE,
        || private_keys(&mut a) == 0 && private_keys(&mut b) == 0,
    );

    // Changes to large keys travel again; a delete is a plain tombstone;
    // a key that shrinks under the limit travels whole again.
    let shipped = agent.metric("geosync_large_keys_shipped_total");
    let _: () = a.sadd("bigset", "one more").unwrap();
    let _: () = a.lset("biglist", 20_000, "changed").unwrap();
    let _: () = a.del("bigzset").unwrap();
    let _: () = redis::cmd("LTRIM")
        .arg("biglist")
        .arg(0)
        .arg(20_000)
        .query(&mut a)
        .unwrap();
    let fields: Vec<String> = (0..29_500).map(|i| format!("f{i}")).collect();
    let _: () = a.hdel("bighash", fields).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    assert!(b.sismember::<_, _, bool>("bigset", "one more").unwrap());
    assert_eq!(b.lindex::<_, String>("biglist", 20_000).unwrap(), "changed");
    assert!(!b.exists::<_, bool>("bigzset").unwrap());
    assert_eq!(b.hlen::<_, usize>("bighash").unwrap(), 500);
    assert!(agent.metric("geosync_large_keys_shipped_total") >= shipped + 2.0);
}

#[test]
fn concurrent_writes_to_a_large_key_converge() {
    let mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    fill_set(&mut a, "shared", 20_000);
    mesh.wait_converged(&[0], SETTLE);
    // Both regions change it at once; one whole version wins everywhere.
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..20 {
                let _: () = a.sadd("shared", format!("a{i}")).unwrap();
            }
        });
        s.spawn(|| {
            for i in 0..20 {
                let _: () = b.srem("shared", format!("member-{i}")).unwrap();
            }
        });
    });
    mesh.wait_converged(&[0], SETTLE);
}

#[test]
fn a_stream_over_the_element_limit_is_reported_and_others_keep_flowing() {
    let mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let mut p = redis::pipe();
    for i in 0..1001 {
        p.xadd("events", "*", &[("n", i)]).ignore();
    }
    let _: () = p.query(&mut a).unwrap();
    let _: () = a.set("after", "1").unwrap();
    wait_until("the key after the stream arrives", SETTLE, || {
        b.get::<_, Option<String>>("after").unwrap().is_some()
    });
    let agent = &mesh.regions[0].agent;
    wait_until("the stream is counted", SETTLE, || {
        agent.metric("geosync_unsupported_keys_total{reason=\"too_large\"}") >= 1.0
    });
    assert!(
        !b.exists::<_, bool>("events").unwrap(),
        "the stream stays home"
    );
    let log = agent.log_text();
    assert!(
        log.contains("more elements than --max-key-elements")
            && log.contains("elements=1001")
            && log.contains("type=stream"),
        "the log names the key, its type, its size and the setting:\n{log}"
    );
    // Back under the limit, it travels again.
    let first: redis::streams::StreamRangeReply = a.xrange_count("events", "-", "+", 1).unwrap();
    let _: () = a.xdel("events", &[&first.ids[0].id]).unwrap();
    wait_until("the shrunk stream arrives", SETTLE, || {
        b.xlen::<_, usize>("events").unwrap() == 1000
    });
}

#[test]
fn a_large_hash_with_field_expiries_is_reported() {
    let mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    if !feature::ran_if(has_field_expiry(&mut a), "hash field expiry") {
        return;
    }
    let fields: Vec<(String, String)> = (0..2000).map(|i| (format!("f{i}"), "v".into())).collect();
    let _: () = a.hset_multiple("expiring", &fields).unwrap();
    let _: () = redis::cmd("HPEXPIRE")
        .arg("expiring")
        .arg(3_600_000)
        .arg("FIELDS")
        .arg(1)
        .arg("f1500")
        .query(&mut a)
        .unwrap();
    let agent = &mesh.regions[0].agent;
    wait_until("the hash is counted", SETTLE, || {
        agent.metric("geosync_unsupported_keys_total{reason=\"too_large\"}") >= 1.0
    });
    assert!(
        !mesh.regions[1]
            .redis
            .conn()
            .exists::<_, bool>("expiring")
            .unwrap()
    );
    wait_until("its private copy is dropped", SETTLE, || {
        private_keys(&mut a) == 0
    });
}

#[test]
fn one_batch_never_reads_more_than_the_element_limit() {
    // Ten sets of 600 members in one transaction: one script may read at
    // most 1000 elements, so the batch is stamped in several scripts.
    let mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut p = redis::pipe();
    p.atomic();
    for k in 0..10 {
        let members: Vec<String> = (0..600).map(|i| format!("m{i}")).collect();
        p.sadd(format!("set{k}"), members).ignore();
    }
    let _: () = p.query(&mut a).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    let mut b = mesh.regions[1].redis.conn();
    for k in 0..10 {
        assert_eq!(b.scard::<_, usize>(format!("set{k}")).unwrap(), 600);
    }
    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_unsupported_keys_total"),
        0.0
    );
}

/// The record (stamp, flag, expiry) region's metadata holds for `key`.
fn record(c: &mut redis::Connection, key: &str) -> Option<(String, char, Option<i64>)> {
    snapshot(c).meta.get(key.as_bytes()).cloned()
}

#[test]
fn a_full_resync_does_not_restamp_an_unchanged_large_key() {
    // A small backlog, so that writes made while the agent is down push
    // its position out and force a full resync.
    let mut mesh = Mesh::start_with(2, &["--repl-backlog-size", "16kb"]);
    for r in &mut mesh.regions {
        r.agent.extra = vec!["--max-key-elements".into(), "1000".into()];
        r.agent.restart();
    }
    mesh.wait_ready();
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    for k in ["keep", "stale", "gone"] {
        fill_set(&mut a, k, 5000);
    }
    mesh.wait_converged(&[0], SETTLE);
    let kept = record(&mut a, "keep").expect("recorded");
    let position = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("the replication position is recorded", SETTLE, || {
        position.exists()
    });

    mesh.regions[0].agent.kill();
    // While region 1's agent is down: region 2 changes a large key region 1
    // still holds unchanged, and region 1 deletes another.
    let _: () = b.sadd("stale", "newer-in-2").unwrap();
    let _: () = a.del("gone").unwrap();
    fill_past_backlog(&mut a, 0, 2000);
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let agent = &mesh.regions[0].agent;
    assert_eq!(agent.metric("geosync_sync_full_total"), 1.0);
    assert!(
        a.sismember::<_, _, bool>("stale", "newer-in-2").unwrap(),
        "region 2's newer version won: the unchanged old one was not stamped again"
    );
    assert!(
        !b.exists::<_, bool>("gone").unwrap(),
        "the delete reached region 2"
    );
    assert_eq!(record(&mut a, "keep").unwrap(), kept, "keep kept its stamp");
    // Stamped anew: the delete and the filler keys, nothing large.
    assert_eq!(agent.metric("geosync_changes_stamped_total"), 2001.0);
}

#[test]
fn a_peer_that_missed_a_large_key_catches_up_from_the_metadata() {
    let mut mesh =
        Mesh::with_agent_args(2, &["--outbox-batches", "3", "--max-key-elements", "1000"]);
    let [one, two] = &mut mesh.regions[..] else {
        unreachable!("two regions")
    };
    let (r1, a1, a2) = (&one.redis, &one.agent, &mut two.agent);
    a2.kill();
    let mut c1 = r1.conn();
    fill_set(&mut c1, "big", 20_000);
    wait_until("region 1 shipped the large key", SETTLE, || {
        a1.metric("geosync_large_keys_shipped_total") >= 1.0
    });
    // More batches than the outbox holds: the large key's pieces are dropped.
    for i in 0..10 {
        let _: () = c1.set(format!("k{i}"), i).unwrap();
        wait_until("region 1 stamps as it goes", SETTLE, || {
            a1.metric("geosync_changes_stamped_total") >= (i + 2) as f64
        });
    }
    assert!(a1.metric("geosync_outbox_overflows_total") >= 1.0);
    a2.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    // 5 pieces and a seal, and the 10 small keys.
    assert!(
        mesh.regions[0]
            .agent
            .metric("geosync_catch_up_changes_total")
            >= 16.0,
        "the large key came through the catch-up"
    );
}

#[test]
fn a_region_that_restarts_empty_gets_its_large_keys_back() {
    let mut mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    fill_set(&mut a, "mine", 20_000);
    fill_collections(&mut mesh.regions[1].redis.conn(), "theirs", 8000);
    mesh.wait_converged(&[0], SETTLE);
    let file = mesh.regions[0].agent.data_dir.join("replication");
    wait_until("region 1's position is recorded", SETTLE, || file.exists());

    mesh.regions[0].redis.restart_empty();
    let agent = &mesh.regions[0].agent;
    wait_until("region 1 is rebuilt", SETTLE, || {
        agent.metric("geosync_rebuilds_total") == 1.0
    });
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let mut a = mesh.regions[0].redis.conn();
    assert_eq!(a.scard::<_, usize>("mine").unwrap(), 20_000);
    assert_eq!(a.llen::<_, usize>("theirslist").unwrap(), 8000);
}

#[test]
fn an_agent_killed_while_shipping_a_large_key_ships_it_again_after_restart() {
    let mut mesh = mesh_with(&["--max-key-elements", "1000"]);
    let n = 300_000;
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    // Written while the agent is down, so that it ships the whole key once.
    mesh.regions[0].agent.kill();
    fill_set(&mut a, "big", n);
    mesh.regions[0].agent.restart();
    wait_until("region 2 builds the first pieces", SETTLE, || {
        !b.keys::<_, Vec<String>>("__geosync:in:*")
            .unwrap()
            .is_empty()
    });
    mesh.regions[0].agent.kill();
    assert!(
        b.scard::<_, usize>("big").unwrap() < n,
        "the agent was killed before the key was sealed"
    );
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    wait_until("the whole key reaches region 2", SETTLE, || {
        b.scard::<_, usize>("big").unwrap() == n
    });
    mesh.wait_converged(&[0], SETTLE);
    let agent = &mesh.regions[0].agent;
    assert_eq!(
        agent.metric("geosync_changes_reshipped_total"),
        1.0,
        "shipped again, once, with the stamp it was claimed with"
    );
    assert_eq!(agent.metric("geosync_changes_stamped_total"), 0.0);
    assert_eq!(agent.metric("geosync_large_keys_shipped_total"), 1.0);
}
