//! `WAIT` means geo-durable (decision 017): the agent acknowledges a write
//! to its Redis once another region applied it (`--ack-after one-peer`,
//! the default), so `WAIT 1` in a region returns 1 only then.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(60);

fn wait(c: &mut redis::Connection, replicas: u32, timeout_ms: u64) -> i64 {
    redis::cmd("WAIT")
        .arg(replicas)
        .arg(timeout_ms)
        .query(c)
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// With a healthy peer `WAIT 1` returns 1 (figures: its latency); with the
/// link to the peer cut it times out with 0, and once healed it returns 1
/// for the same write, which the peer then holds.
#[test]
fn wait_returns_once_another_region_applied_the_write() {
    let mesh = Mesh::builder(2).proxied().start();
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let mut took = Vec::new();
    for i in 0..100 {
        let _: () = a.set(format!("w{i}"), i).unwrap();
        let t = Instant::now();
        assert_eq!(wait(&mut a, 1, 10_000), 1, "write {i} acknowledged");
        took.push(t.elapsed());
        // Applied in region 2 by the time WAIT returned.
        assert_eq!(b.get::<_, Option<i64>>(format!("w{i}")).unwrap(), Some(i));
    }
    took.sort();
    // The baseline, in the same run: a native replica on the same machine.
    let master = Redis::start(&[]);
    let replica = Redis::start(&[]);
    let mut r = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port)
        .query(&mut r)
        .unwrap();
    let mut m = master.conn();
    wait_until("the replica is in sync", SETTLE, || {
        let _: () = m.set("probe", 1).unwrap();
        wait(&mut m, 1, 100) == 1
    });
    let mut native = Vec::new();
    for i in 0..100 {
        let _: () = m.set(format!("w{i}"), i).unwrap();
        let t = Instant::now();
        assert_eq!(wait(&mut m, 1, 10_000), 1);
        native.push(t.elapsed());
    }
    native.sort();
    println!(
        "figures: WAIT 1 after a write: geosync peer p50={:?} p99={:?} max={:?}; \
         native replica p50={:?} p99={:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().unwrap(),
        percentile(&native, 0.5),
        percentile(&native, 0.99),
    );
    mesh.partition(0, 1);
    let _: () = a.set("cut", "off").unwrap();
    assert_eq!(wait(&mut a, 1, 500), 0, "WAIT counted a write no peer has");
    assert!(!b.exists::<_, bool>("cut").unwrap());
    mesh.heal(0, 1);
    assert_eq!(wait(&mut a, 1, 30_000), 1);
    assert_eq!(b.get::<_, String>("cut").unwrap(), "off");
    mesh.wait_converged(&[0], SETTLE);
}

/// With `--ack-after local` the agent acknowledges what it read, as a
/// replica does: `WAIT 1` returns 1 with the peer cut off.
#[test]
fn with_ack_after_local_wait_counts_what_the_agent_read() {
    let mesh = Mesh::builder(2)
        .proxied()
        .agent_args(&["--ack-after", "local"])
        .start();
    let mut a = mesh.regions[0].redis.conn();
    mesh.partition(0, 1);
    let _: () = a.set("cut", "off").unwrap();
    assert_eq!(wait(&mut a, 1, 10_000), 1);
    assert!(
        !mesh.regions[1]
            .redis
            .conn()
            .exists::<_, bool>("cut")
            .unwrap()
    );
    mesh.heal(0, 1);
    mesh.wait_converged(&[0], SETTLE);
}
