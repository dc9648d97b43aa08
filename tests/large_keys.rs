//! Large collections: a key read in one script must not block Redis for
//! long, a slow script must not be mistaken for a dead connection, and a key
//! over `--max-key-elements` is reported and left alone while everything
//! else keeps flowing.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(60);

/// Two regions whose agents run with `extra` settings.
fn mesh_with(extra: &[&str]) -> Mesh {
    let mut mesh = Mesh::start(2);
    for r in &mut mesh.regions {
        r.agent.extra = extra.iter().map(|s| s.to_string()).collect();
        r.agent.restart();
    }
    mesh.wait_ready();
    mesh
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

#[test]
fn a_key_that_takes_the_script_a_while_is_replicated() {
    // 200k members: reading and digesting them takes the stamp script well
    // over the redis crate's default 500 ms response timeout.
    let mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    fill_set(&mut a, "big", 200_000);
    let mut b = mesh.regions[1].redis.conn();
    wait_until("the 200k-member set reaches region 2", SETTLE, || {
        b.scard::<_, usize>("big").unwrap() == 200_000
    });
    mesh.wait_converged(&[0], SETTLE);
    let log = mesh.regions[0].agent.log_text();
    assert!(!log.contains("timed out"), "a script timed out:\n{log}");
}

#[test]
fn a_key_over_the_element_limit_is_reported_and_others_keep_flowing() {
    let mesh = mesh_with(&["--max-key-elements", "1000"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    fill_set(&mut a, "small", 1000);
    fill_set(&mut a, "huge", 1001);
    let _: () = a.set("after", "1").unwrap();
    wait_until("the keys around the huge one arrive", SETTLE, || {
        b.get::<_, Option<String>>("after").unwrap().is_some()
            && b.scard::<_, usize>("small").unwrap() == 1000
    });
    let agent = &mesh.regions[0].agent;
    wait_until("the huge key is counted", SETTLE, || {
        agent.metric("geosync_unsupported_keys_total{reason=\"too_large\"}") >= 1.0
    });
    assert!(
        !b.exists::<_, bool>("huge").unwrap(),
        "the huge key stays home"
    );
    let log = agent.log_text();
    assert!(
        log.contains("more elements than --max-key-elements") && log.contains("elements=1001"),
        "the log names the key, its size and the setting:\n{log}"
    );
    // Back under the limit, it travels again.
    let _: () = a.srem("huge", "member-0").unwrap();
    wait_until("the shrunk key arrives", SETTLE, || {
        b.scard::<_, usize>("huge").unwrap() == 1000
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
