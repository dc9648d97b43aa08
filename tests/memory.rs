//! A Redis at its memory limit: geosync's own writes (records, applied
//! changes) are refused like a client's, which must be reported, never
//! silent, and lose nothing once memory is freed.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(60);

fn set_maxmemory(c: &mut redis::Connection, bytes: u64) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query(c)
        .unwrap();
}

/// OOM refusals the agent of region `r` counted for `stage`.
fn oom(mesh: &Mesh, r: usize, stage: &str) -> f64 {
    let (_, body) = mesh.regions[r].agent.get("/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with(&format!("geosync_redis_oom_total{{stage=\"{stage}\"}}")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Both regions run with `noeviction` and a memory limit already passed:
/// Redis refuses every write that may grow memory, a client's and
/// geosync's alike. A client's `DEL` is still allowed (it frees memory),
/// but recording its tombstone is refused (OOM): the agent counts it and
/// says why, and once the limit is raised the delete travels; region 2
/// refuses to apply it the same way until its limit is raised too.
#[test]
fn writes_refused_at_the_memory_limit_are_reported_and_go_through_once_memory_is_freed() {
    let servers = (0..2)
        .map(|_| Redis::start(&["--maxmemory-policy", "noeviction"]))
        .collect();
    let mesh = Mesh::over_with(servers, None, &[]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    for i in 0..100 {
        let _: () = a.set(format!("k{i}"), i).unwrap();
    }
    mesh.wait_converged(&[0], SETTLE);
    set_maxmemory(&mut a, 1);
    set_maxmemory(&mut b, 1);
    let refused = a.set::<_, _, ()>("another", 1).unwrap_err();
    assert_eq!(
        refused.code(),
        Some("OOM"),
        "clients are refused: {refused}"
    );
    let _: () = a.del("k0").unwrap();
    wait_until(
        "region 1 reports stamping refused for memory",
        SETTLE,
        || oom(&mesh, 0, "stamp") > 0.0,
    );
    let log = mesh.regions[0].agent.log_text();
    assert!(
        log.contains("maxmemory"),
        "the log names the memory limit:\n{log}"
    );
    set_maxmemory(&mut a, 0);
    wait_until(
        "region 2 reports applying refused for memory",
        SETTLE,
        || oom(&mesh, 1, "apply") > 0.0,
    );
    assert!(b.exists::<_, bool>("k0").unwrap(), "not applied yet");
    set_maxmemory(&mut b, 0);
    wait_until("the delete reaches region 2", SETTLE, || {
        !b.exists::<_, bool>("k0").unwrap()
    });
    mesh.wait_converged(&[0], SETTLE);
}

/// Under an `allkeys-*` policy Redis may evict geosync's metadata like any
/// key: the agent refuses to start, naming the policy and what to set.
/// A `volatile-*` policy (geosync's keys have no TTL) is accepted.
#[test]
fn a_policy_that_may_evict_geosync_keys_is_refused_at_start() {
    for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
        let redis = Redis::start(&["--maxmemory", "100mb", "--maxmemory-policy", policy]);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let mut agent = Exits(
            std::process::Command::new(env!("CARGO_BIN_EXE_geosync"))
                .args(["run", "--node-id", "1", "--data-dir"])
                .arg(dir.path())
                .args(["--redis", &redis.url(), "--listen", "127.0.0.1:0"])
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut status = None;
        wait_until(&format!("the agent exits under {policy}"), SETTLE, || {
            status = agent.0.try_wait().unwrap();
            status.is_some()
        });
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert!(!status.unwrap().success(), "{stderr}");
        assert!(stderr.contains(policy), "{stderr}");
        assert!(stderr.contains("volatile-lru"), "{stderr}");
    }
    let volatile = Redis::start(&["--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"]);
    let mesh = Mesh::over_with(vec![volatile, Redis::start(&[])], None, &[]);
    let mut a = mesh.regions[0].redis.conn();
    let _: () = a.set("k", "v").unwrap();
    mesh.wait_converged(&[0], SETTLE);
}

/// A child process killed when dropped (a test that fails does not leave
/// it running).
struct Exits(std::process::Child);

impl Drop for Exits {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
