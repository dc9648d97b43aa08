//! End-to-end replication throughput against the raw write rate.
//!
//! Writes N distinct string keys into region 1 as fast as one pipelining
//! client can, and measures how long until region 2 holds them all. The
//! baseline is the same writes into a Redis without an agent, measured in
//! the same run; the ratio says how far behind a saturating writer the
//! agents fall. It also prints each agent's peak RSS next to the size of
//! the data that went through it. The mesh runs twice in the same run:
//! with plaintext peer links and with mutual TLS between the agents, so the
//! cost of TLS is the ratio of the two.
//!
//! ```text
//! cargo bench --bench throughput                 # 200000 keys, 8-byte values
//! GEOSYNC_BENCH_KEYS=500000 GEOSYNC_BENCH_VALUE_BYTES=1024 cargo bench --bench throughput
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Mesh, PeerCerts, Redis, wait_until};

fn write(c: &mut redis::Connection, n: usize, value_bytes: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            let mut v = format!("{i:08}");
            v.extend(std::iter::repeat_n('v', value_bytes.saturating_sub(8)));
            p.cmd("SET").arg(format!("key:{i}")).arg(v).ignore();
        }
        p.query::<()>(c).unwrap();
    }
}

fn main() {
    if support::listing_only() {
        return;
    }
    let n = support::env_usize("GEOSYNC_BENCH_KEYS", 200_000);
    let value_bytes = support::env_usize("GEOSYNC_BENCH_VALUE_BYTES", 8);

    let plain = Redis::start(&[]);
    let start = Instant::now();
    write(&mut plain.conn(), n, value_bytes);
    let baseline = start.elapsed();

    let plain_links = Mesh::start(2);
    let plain_rate = run("plaintext links", &plain_links, n, value_bytes, baseline);
    drop(plain_links);
    let certs = PeerCerts::generate();
    let node_certs: Vec<_> = (1..=2).map(|i| certs.node(i)).collect();
    let tls_links = Mesh::each(2, |i| certs.agent_args(&node_certs[i as usize - 1]));
    let tls_rate = run("mutual TLS links", &tls_links, n, value_bytes, baseline);
    println!(
        "peer links: mutual TLS replicates at {:.2} of the plaintext rate",
        tls_rate / plain_rate
    );
    memory(&tls_links, value_bytes);
}

/// Writes into region 1 of `mesh` until region 2 holds every key; prints
/// the rates and returns keys/s arriving in region 2.
fn run(what: &str, mesh: &Mesh, n: usize, value_bytes: usize, baseline: Duration) -> f64 {
    let mut far = mesh.regions[1].redis.conn();
    let start = Instant::now();
    write(&mut mesh.regions[0].redis.conn(), n, value_bytes);
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
        "keys={n}, {what}: plain redis {:.0} writes/s; with geosync {:.0} writes/s into region 1, {:.0} keys/s arriving in region 2; replicated/plain ratio {:.2}",
        rate(baseline),
        rate(written),
        rate(replicated),
        rate(replicated) / rate(baseline)
    );
    rate(replicated)
}

/// Prints the dataset size and each agent's peak RSS.
fn memory(mesh: &Mesh, value_bytes: usize) {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut mesh.regions[0].redis.conn())
        .unwrap();
    let dataset: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_dataset:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    println!(
        "value_bytes={value_bytes}: region 1 dataset {:.0} MiB; agent peak RSS region 1 {:.1} MiB, region 2 {:.1} MiB",
        dataset / (1024.0 * 1024.0),
        mesh.regions[0].agent.peak_rss_mib(),
        mesh.regions[1].agent.peak_rss_mib(),
    );
}
