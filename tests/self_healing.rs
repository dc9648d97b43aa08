//! Self-healing: combined faults that leave regions different for good
//! without anti-entropy converge with it, and anti-entropy says what it did.

mod support;

use std::time::Duration;

use geosync::lab::{Lab, Step};
use support::*;

/// Three regions with writes in every one: one region's agent is killed and
/// restarted, then another region's Redis restarts empty with its agent
/// down. The changes that region 2 had sent only to region 3 before its
/// data was lost would never reach region 1 again (their origin lost them);
/// region 3 repairs region 1 by anti-entropy. Without anti-entropy this
/// scenario ended with 76 to 124 keys different in 3 runs of 3.
#[test]
fn a_killed_agent_and_a_redis_restarted_empty_converge_by_anti_entropy() {
    let names: Vec<String> = ["1", "2", "3"].map(String::from).to_vec();
    let seed = std::env::var("GEOSYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(now_ms() as u64);
    let replay = format!(
        "GEOSYNC_SEED={seed} GEOSYNC_TEST_REDIS_SERVER={} cargo nextest run --test self_healing",
        redis_server_bin()
    );
    println!("replay: {replay}");
    let agent_args = ["--anti-entropy-interval-secs".to_string(), "1".to_string()];
    let mut lab = Lab::start(&names, seed, |b| b, &agent_args).unwrap();
    let steps = [
        "write 1 2000 keys=300",
        "write 2 2000 keys=300",
        "write 3 2000 keys=300",
        "kill-agent 1",
        "write 2 1000 keys=300",
        "write 3 1000 keys=300",
        "write 1 1000 keys=300",
        "start-agent 1",
        "write 1 500 keys=300",
        "kill-agent 2",
        "restart-redis-empty 2",
        "write 3 1000 keys=300",
        "write 1 1000 keys=300",
        "start-agent 2",
        "write 2 500 keys=300",
        "wait-converged 60s",
    ];
    let texts: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    let steps: Vec<Step> = steps
        .iter()
        .map(|s| Step::parse(s, &names).unwrap())
        .collect();
    if let Err(f) = lab.run(&steps, &texts) {
        panic!("{f}\nreplay: {replay}");
    }
    let repaired = lab.mesh.metric("geosync_anti_entropy_keys_repaired_total");
    println!("keys repaired by anti-entropy: {repaired}");
    assert!(
        repaired > 0.0,
        "the regions converged without a repair: the scenario lost nothing"
    );
    // Once converged, a round with every peer finds nothing different.
    let since = now_ms() / 1000;
    for r in &lab.mesh.regions {
        wait_until(
            &format!("region {} has a clean round with every peer", r.name),
            Duration::from_secs(20),
            || {
                let (_, body) = r.agent.get("/metrics").unwrap();
                let stamps: Vec<f64> = body
                    .lines()
                    .filter(|l| {
                        l.starts_with("geosync_anti_entropy_last_clean_round_timestamp_seconds{")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                    .collect();
                stamps.len() == 2 && stamps.iter().all(|t| *t >= since as f64)
            },
        );
    }
}
