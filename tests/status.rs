//! `geosync status` against real agents: healthy with its peers up (exit
//! 0, table and JSON), unhealthy with one down (exit 1, the peer named),
//! and exit 2 when nothing answers at the admin address.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use geosync::lab::{Mesh, wait_until};

fn status(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geosync"))
        .arg("status")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_names_each_peer_and_exits_1_when_one_is_down() {
    let mut mesh = Mesh::start(3);
    mesh.wait_ready();
    let admin = format!("http://127.0.0.1:{}", mesh.regions[0].agent.admin);
    // A write acknowledged by both peers shows as acked.
    let mut c = mesh.regions[0].redis.conn();
    let _: () = redis::cmd("SET").arg("k").arg("v").exec(&mut c).unwrap();
    mesh.wait_converged(&[0], Duration::from_secs(30));
    let json = || -> serde_json::Value {
        let o = status(&[&admin, "--json"]);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&o.stdout), text(&o.stderr)))
    };
    wait_until("both peers acknowledge", Duration::from_secs(30), || {
        json()["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["acked_up_to"].is_f64()))
    });
    let o = status(&[&admin]);
    let table = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{table}{}", text(&o.stderr));
    assert!(table.contains("ready (local side synced)"), "{table}");
    assert_eq!(table.matches(" yes ").count(), 2, "{table}");
    assert!(table.trim_end().ends_with("healthy"), "{table}");
    let s = json();
    assert_eq!(s["ready"], true);
    assert_eq!(s["peers"].as_array().unwrap().len(), 2, "{s}");
    assert!(s["problems"].as_array().unwrap().is_empty(), "{s}");

    mesh.kill_agent(2);
    wait_until(
        "status reports the peer down",
        Duration::from_secs(30),
        || status(&[&admin]).status.code() == Some(1),
    );
    // A write now waits in the outbox for the peer that is down.
    let _: () = redis::cmd("SET").arg("k2").arg("v").exec(&mut c).unwrap();
    wait_until("the outbox holds it", Duration::from_secs(30), || {
        json()["outbox_batches"].as_u64() >= Some(1)
    });
    let s = json();
    let down: Vec<&str> = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == false)
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert_eq!(down.len(), 1, "{s}");
    assert_eq!(s["problems"].as_array().unwrap().len(), 1, "{s}");
    let table = text(&status(&[&admin]).stdout);
    assert!(
        table.contains(&format!("unhealthy: peer {} is not connected", down[0])),
        "{table}"
    );
}

#[test]
fn status_exits_2_when_the_agent_does_not_answer() {
    let port = support::free_port();
    let o = status(&[&format!("http://127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("cannot read the agent"),
        "{}",
        text(&o.stderr)
    );
    let o = status(&["127.0.0.1:9001"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("http://HOST:PORT"));
}
