//! `geosync verify`'s time and memory as the keyspace grows.
//!
//! Two Redis servers are filled with the same N keys (strings, plus one
//! hash, set and sorted set of 100 elements per 1000 keys), once with N/10
//! keys (the baseline, in the same run) and once with N; `geosync verify`
//! compares them each time. It prints the wall time, keys per second and
//! the verifier's peak RSS (VmHWM, read from `/proc` while it runs) for
//! both, and the ratios: time should grow with N, memory should not.
//!
//! ```text
//! cargo bench --bench verify                          # 1000000 keys
//! GEOSYNC_BENCH_KEYS=200000 cargo bench --bench verify
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Redis;

fn fill(r: &Redis, n: usize) {
    let mut c = r.conn();
    redis::cmd("FLUSHALL").exec(&mut c).unwrap();
    for start in (0..n).step_by(10_000) {
        let mut p = redis::pipe();
        for i in start..(start + 10_000).min(n) {
            if i % 1000 == 999 {
                let k = format!("coll:{i}");
                for j in 0..100 {
                    p.cmd("HSET").arg(format!("h{k}")).arg(j).arg(j).ignore();
                    p.cmd("SADD").arg(format!("s{k}")).arg(j).ignore();
                    p.cmd("ZADD").arg(format!("z{k}")).arg(j).arg(j).ignore();
                }
            }
            p.cmd("SET")
                .arg(format!("key:{i}"))
                .arg(format!("value-{i}"))
                .ignore();
        }
        p.exec(&mut c).unwrap();
    }
}

/// Peak RSS in KiB so far of a running process.
fn peak_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs verify over the two regions: (seconds, peak RSS MiB, its last line).
fn verify(a: &Redis, b: &Redis) -> (f64, f64, String) {
    let bin = geosync::lab::agent::agent_bin();
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["verify", "--redis", &a.url(), "--redis", &b.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(k) = peak_kib(pid) {
            peak = peak.max(k);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "verify failed: {text}");
    (secs, peak as f64 / 1024.0, text.trim().to_string())
}

fn main() {
    let n: usize = std::env::var("GEOSYNC_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (a, b) = (Redis::start(&[]), Redis::start(&[]));
    println!(
        "geosync verify, two regions, same data; agent binary {:?}",
        geosync::lab::agent::agent_bin()
    );
    println!("| keys | seconds | keys/s | peak RSS MiB |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for keys in [n / 10, n] {
        fill(&a, keys);
        fill(&b, keys);
        let (secs, mib, last) = verify(&a, &b);
        println!(
            "| {keys} | {secs:.1} | {:.0} | {mib:.1} |",
            keys as f64 / secs
        );
        eprintln!("  {last}");
        rows.push((secs, mib));
    }
    println!(
        "ratios {n} vs {} keys: time {:.2}x, peak RSS {:.2}x",
        n / 10,
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1
    );
}
