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
