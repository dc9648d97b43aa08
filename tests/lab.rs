//! The lab: `geosync lab` runs users' scenarios from the command line and
//! reports when regions differ; the fault-injecting proxies between agents
//! do what the scenario steps say.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geosync"))
        .arg("lab")
        .args(args)
        .env("GEOSYNC_LAB_REDIS_SERVER", redis_server_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run geosync lab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scenario(toml: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), toml).unwrap();
    f
}

#[test]
fn the_shopping_cart_example_passes() {
    let o = lab(&["examples/lab/shopping-cart.toml"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("PASSED"), "{out}");
    assert!(
        out.contains("expect us EXISTS cart:bob => 0\n    0\n    ok"),
        "{out}"
    );
}

#[test]
fn the_counter_and_sessions_example_passes() {
    let o = lab(&["examples/lab/counter-and-sessions.toml"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("PASSED"), "{out}");
    assert!(out.contains("restart-redis-empty ap"), "{out}");
}

/// Regions that still differ when a scenario compares them: exit 1, and a
/// report that names the key, the step and the faults in force.
#[test]
fn regions_that_differ_fail_the_scenario_with_a_report() {
    let s = scenario(
        r#"
regions = ["a", "b"]
steps = [
  "partition a b",
  "redis a SET only-in-a 1",
  "wait-stamped a",
  "wait-converged 1s",
]
"#,
    );
    let o = lab(&[s.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAILED at step 4 `wait-converged 1s`"),
        "{out}"
    );
    assert!(out.contains("\"only-in-a\""), "{out}");
    assert!(out.contains("faults in force"), "{out}");
    assert!(out.contains("a dials b"), "{out}");
    assert!(
        out.contains(&format!(
            "replay: geosync lab {} --seed ",
            s.path().display()
        )),
        "{out}"
    );
}

#[test]
fn a_failed_expectation_fails_the_scenario() {
    let s = scenario(
        r#"
steps = ["redis 1 SET k v", "wait-converged", "expect 2 GET k => w"]
"#,
    );
    let o = lab(&[s.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("region 2 answered \"v\" to `GET k`, not \"w\""),
        "{out}"
    );
}

#[test]
fn a_bad_scenario_is_refused_before_anything_starts() {
    let s = scenario("regions = [\"a\", \"b\"]\nsteps = [\"partition a c\"]\n");
    let o = lab(&[s.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("step 1 `partition a c`: no region named `c`"),
        "{out}"
    );
    assert!(
        !out.contains("geosync lab: 2 regions"),
        "nothing started: {out}"
    );
    let o = lab(&["no-such-file.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("cannot read no-such-file.toml"),
        "{}",
        text(&o)
    );
    let s = scenario("steps = [\"verify\"]\nregion = 3\n");
    let o = lab(&[s.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown field `region`"), "{}", text(&o));
}

/// Without a scenario the lab prints the regions and takes steps from
/// standard input.
#[test]
fn the_lab_takes_steps_from_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_geosync"))
        .args(["lab", "--regions", "x,y"])
        .env("GEOSYNC_LAB_REDIS_SERVER", redis_server_bin())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        "redis x SET typed 1\nwait-converged\nexpect y GET typed => 1\nfly x\nquit"
    )
    .unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("x        node 1  redis redis://127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("[3] expect y GET typed => 1\n    1\n    ok"),
        "{out}"
    );
    assert!(out.contains("`fly` is not a lab command"), "{out}");
}

/// A partition cuts the agents apart (each sees the other gone, changes
/// wait in the outbox) and healing it lets them through.
#[test]
fn a_partition_holds_changes_until_it_heals() {
    let mesh = Mesh::builder(2).proxied().start();
    let a = &mesh.regions[0];
    let mut b = mesh.regions[1].redis.conn();
    let _: () = a.redis.conn().set("before", 1).unwrap();
    mesh.wait_converged(&[0], SETTLE);

    mesh.partition(0, 1);
    wait_until("region 1 sees region 2 disconnected", SETTLE, || {
        a.agent.metric("geosync_peer_connected") == 0.0
    });
    let _: () = a.redis.conn().set("during", 1).unwrap();
    mesh.wait_stamped(0, SETTLE);
    wait_until("the change waits for region 2", SETTLE, || {
        a.agent.metric("geosync_peer_lag_batches") > 0.0
    });
    assert!(
        !b.exists::<_, bool>("during").unwrap(),
        "a change crossed the partition"
    );
    assert!(mesh.faults().iter().any(|f| f.contains("refuse: true")));

    mesh.heal_all();
    mesh.wait_converged(&[0], SETTLE);
    assert!(b.exists::<_, bool>("during").unwrap());
    assert!(mesh.faults().is_empty());
}

/// A delay between two regions holds each change at least that long.
#[test]
fn a_delay_slows_every_change_down() {
    let mesh = Mesh::builder(2).proxied().start();
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let _: () = a.set("warm", 1).unwrap();
    mesh.wait_converged(&[0], SETTLE);

    let delay = Duration::from_millis(400);
    mesh.delay(0, 1, delay);
    let start = Instant::now();
    let _: () = a.set("slow", 1).unwrap();
    wait_until("the delayed change arrives", SETTLE, || {
        b.exists::<_, bool>("slow").unwrap()
    });
    let took = start.elapsed();
    assert!(
        took >= delay,
        "arrived after {took:?}, under the {delay:?} delay"
    );
}

/// The kit's `write` workload and its faults, used from a test: a
/// three-region mesh under a one-way partition, a reset and a killed
/// agent converges once healed.
#[test]
fn combined_faults_from_the_library_converge_once_healed() {
    use geosync::lab::Lab;
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let seed = seed_from_env();
    println!("replay: GEOSYNC_SEED={seed} cargo nextest run --test lab combined_faults");
    let mut lab = Lab::start(&names, seed, |b| b, &[]).unwrap();
    let steps = [
        "write a 300 keys=40",
        "partition a -> b",
        "write a 300 keys=40",
        "write b 300 keys=40",
        "reset b c",
        "kill-agent c",
        "write c 200 keys=40",
        "start-agent c",
        "heal",
        "wait-converged 60s",
    ];
    if let Err(f) = lab.run_texts(&steps) {
        panic!("{f}\nreplay: GEOSYNC_SEED={seed} cargo nextest run --test lab combined_faults");
    }
}

/// The scenario the README shows runs as it is written there.
#[test]
fn the_readme_scenario_passes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Prove it for your application: `geosync lab`")
        .nth(1)
        .expect("the README's lab section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("a TOML scenario in the lab section");
    let s = scenario(toml);
    let o = lab(&[s.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("expect us HGET cart:alice pears => 5\n    5\n    ok"),
        "{out}"
    );
}

/// A snapshot is dated when its reading ended: reading a large database
/// takes a while (seconds on a loaded machine), and a key that expires
/// meanwhile is gone in one region's snapshot and not yet in another's.
/// Dated at the start, such a key's record (a value record whose expiry
/// passed, against the other region's tombstone) counted as a difference
/// that lasted as long as keys kept expiring, and convergence waits timed
/// out under load (`self_healing`, with session keys).
#[test]
fn a_snapshot_is_dated_when_its_reading_ended() {
    let r = Redis::start(&[]);
    let mut c = r.conn();
    let mut p = redis::pipe();
    for i in 0..20_000 {
        p.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    p.query::<()>(&mut c).unwrap();
    let start = now_ms();
    let s = snapshot(&mut c);
    let end = now_ms();
    println!("read 20000 keys in {} ms", end - start);
    assert!(
        s.taken_at >= start + (end - start) / 2,
        "dated {} ms into a {} ms reading",
        s.taken_at - start,
        end - start
    );
}
