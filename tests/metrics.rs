//! Every metric the README documents is exported from the moment the agent
//! starts, with or without samples yet, so dashboards, alerts and tests
//! that read one never mistake a renamed or missing metric for a zero.

mod support;

use support::*;

/// The metric names in the README's metrics table (labels left out).
fn documented() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("### Metrics (`/metrics`, Prometheus text)")
        .nth(1)
        .expect("the README's metrics section")
        .split("\n\n")
        .nth(1)
        .expect("its table");
    let mut names = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `geosync_")) {
        let first_cell = row.split(" | ").next().unwrap();
        for name in first_cell.split('`').filter(|s| s.starts_with("geosync_")) {
            names.push(name.split('{').next().unwrap().to_string());
        }
    }
    names
}

#[test]
fn every_metric_the_readme_lists_is_exported_from_the_start() {
    let names = documented();
    assert!(
        names.len() >= 30,
        "the README table was not read: {names:?}"
    );
    let mesh = Mesh::start(2);
    let (_, body) = mesh.regions[0].agent.get("/metrics").unwrap();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| geosync::lab::metric_value(&body, n).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}\n/metrics:\n{body}"
    );
}

/// With peers written `ID=URL` (as the lab, the compose file and the
/// Kubernetes overlays write them), every series' `peer` label is a node
/// id, on what goes to a peer and on what comes from it alike, and
/// `geosync_peer_info` ties each label to the address dialed.
#[test]
fn every_peer_label_is_a_node_id_when_the_configuration_names_it() {
    let mesh = Mesh::start(2);
    let mut c = mesh.regions[1].redis.conn();
    let _: () = redis::cmd("SET").arg("k").arg("v").exec(&mut c).unwrap();
    let mut c = mesh.regions[0].redis.conn();
    let _: () = redis::cmd("SET").arg("j").arg("v").exec(&mut c).unwrap();
    mesh.wait_converged(&[0], std::time::Duration::from_secs(30));
    let (_, body) = mesh.regions[0].agent.get("/metrics").unwrap();
    let labels: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split("peer=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        vec!["2"],
        "/metrics:\n{body}"
    );
    for name in [
        "geosync_peer_connected",
        "geosync_changes_shipped_total",
        "geosync_changes_applied_total",
        "geosync_peer_received_bytes_total",
    ] {
        let series = format!("{name}{{peer=\"2\"}}");
        assert!(
            geosync::lab::metric_value(&body, &series).is_some_and(|v| v > 0.0),
            "{series} in\n{body}"
        );
    }
    let info = format!(
        "geosync_peer_info{{peer=\"2\",address=\"http://127.0.0.1:{}\"}} 1",
        mesh.regions[1].agent.listen
    );
    assert!(body.contains(&info), "{info} in\n{body}");
}

/// A peer whose `Welcome` names another node than the configuration
/// gives for its address is refused, and the log says both.
#[test]
fn a_peer_that_is_not_the_configured_node_is_refused() {
    let listen = geosync::lab::free_port();
    let a = geosync::lab::Redis::start(&[]);
    let b = geosync::lab::Redis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _b = geosync::lab::Agent::start(2, &b.url(), listen, free_port(), &[], dir.path());
    let wrong = format!("3=http://127.0.0.1:{listen}");
    let a = geosync::lab::Agent::start_with(
        1,
        &a.url(),
        free_port(),
        free_port(),
        &[],
        dir.path(),
        &["--peer".to_string(), wrong],
    );
    geosync::lab::wait_until(
        "the refusal is logged",
        std::time::Duration::from_secs(30),
        || {
            a.log_text()
                .contains("peer is node 2, but the configuration names node 3 at this address")
        },
    );
    let (_, body) = a.get("/metrics").unwrap();
    assert!(
        body.contains("geosync_peer_connected{peer=\"3\"} 0"),
        "{body}"
    );
}
