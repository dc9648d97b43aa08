//! End-to-end replication throughput against the raw write rate.
//!
//! Writes N distinct string keys into region 1 as fast as one pipelining
//! client can, and measures how long until region 2 holds them all. The
//! baseline is the same writes into a Redis without an agent, measured in
//! the same run; the ratio says how far behind a saturating writer the
//! agents fall.
//!
//! ```text
//! cargo bench --bench throughput                 # 200000 keys
//! GEOSYNC_BENCH_KEYS=1000000 cargo bench --bench throughput
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Mesh, Redis, wait_until};

fn write(c: &mut redis::Connection, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
        }
        p.query::<()>(c).unwrap();
    }
}

fn main() {
    if support::listing_only() {
        return;
    }
    let n = support::env_usize("GEOSYNC_BENCH_KEYS", 200_000);

    let plain = Redis::start(&[]);
    let start = Instant::now();
    write(&mut plain.conn(), n);
    let baseline = start.elapsed();

    let mesh = Mesh::start(2);
    let mut far = mesh.regions[1].redis.conn();
    let start = Instant::now();
    write(&mut mesh.regions[0].redis.conn(), n);
    let written = start.elapsed();
    let last = format!("key:{}", n - 1);
    wait_until(
        "every key reaches region 2",
        Duration::from_secs(600),
        || {
            let size: usize = redis::cmd("DBSIZE").query(&mut far).unwrap();
            size >= n
                && redis::cmd("EXISTS")
                    .arg(&last)
                    .query::<bool>(&mut far)
                    .unwrap()
        },
    );
    let replicated = start.elapsed();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "keys={n}: plain redis {:.0} writes/s; with geosync {:.0} writes/s into region 1, {:.0} keys/s arriving in region 2; replicated/plain ratio {:.2}",
        rate(baseline),
        rate(written),
        rate(replicated),
        rate(replicated) / rate(baseline)
    );
}
