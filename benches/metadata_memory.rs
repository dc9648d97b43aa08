//! Measures what geosync's per-key metadata costs in Redis memory.
//!
//! Loads the same keys into two fresh redis-servers, one followed by a
//! geosync agent (which stamps every key), and compares Redis's own
//! `used_memory_dataset` (data without buffers and client overhead). Prints
//! the metadata bytes per key, and the ratio against what the user's key
//! itself costs, measured in the same run.
//!
//! ```text
//! cargo bench --bench metadata_memory            # 100000 keys
//! GEOSYNC_BENCH_KEYS=1000000 cargo bench --bench metadata_memory
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::{Agent, Redis, free_port, metric_sum, wait_until};

/// Redis's own count of its data memory, without buffers and clients.
fn dataset_bytes(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory_dataset:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory_dataset in INFO memory")
}

fn load(c: &mut redis::Connection, n: usize, key_len: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            let key = format!("{:0>width$}", format!("k{i}"), width = key_len);
            p.cmd("SET").arg(key).arg("value-of-16-byte").ignore();
        }
        p.query::<()>(c).unwrap();
    }
}

fn measure(n: usize, key_len: usize) {
    const LONG: Duration = Duration::from_secs(300);
    // Baseline: the keys alone.
    let plain = Redis::start(&[]);
    let mut c = plain.conn();
    let empty = dataset_bytes(&mut c);
    load(&mut c, n, key_len);
    let keys_only = dataset_bytes(&mut c) - empty;

    // The same keys with a geosync agent stamping them.
    let geo = Redis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(1, &geo.url(), free_port(), free_port(), &[], dir.path());
    wait_until("agent ready", LONG, || agent.is_ready());
    let mut c = geo.conn();
    let empty = dataset_bytes(&mut c);
    load(&mut c, n, key_len);
    wait_until("every key stamped", LONG, || {
        agent
            .get("/metrics")
            .is_some_and(|(_, body)| metric_sum(&body, "geosync_changes_stamped_total") >= n as f64)
    });
    let meta = dataset_bytes(&mut c) - empty - keys_only;
    println!(
        "keys={n} key_len={key_len}: key+value {:.1} B/key, geosync metadata {:.1} B/key, ratio metadata/key {:.2}",
        keys_only as f64 / n as f64,
        meta as f64 / n as f64,
        meta as f64 / keys_only as f64
    );
}

fn main() {
    if support::listing_only() {
        return;
    }
    let n = support::env_usize("GEOSYNC_BENCH_KEYS", 100_000);
    for key_len in [8, 32] {
        measure(n, key_len);
    }
}
