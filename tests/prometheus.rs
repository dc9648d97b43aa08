//! The monitoring in `deploy/` against real agents: every metric the alert
//! rules and the Grafana dashboard name is one an agent exports, and a
//! real Prometheus server scraping three agents fires `GeosyncPeerDown`
//! when a region is cut off, and resolves it when the region is back.
//!
//! The Prometheus test needs Debian's `prometheus` package (installed by
//! `scripts/ensure-deps.sh`).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use geosync::lab::{Mesh, free_port, http_get, wait_until};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// The `geosync_*` names in a text, without PromQL's label matchers.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("geosync_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| n.len() > "geosync_".len())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let rules = std::fs::read_to_string(format!("{DEPLOY}/prometheus/alerts.yml")).unwrap();
    let dash = std::fs::read_to_string(format!("{DEPLOY}/grafana/geosync-dashboard.json")).unwrap();
    // Not metric names: the dashboard's uid and tag.
    let named: Vec<String> = metric_names(&format!("{rules}\n{dash}"))
        .into_iter()
        .filter(|n| n != "geosync_mesh")
        .collect();
    assert!(named.len() >= 15, "{named:?}");
    let mesh = Mesh::start(2);
    mesh.regions[0]
        .agent
        .metric("geosync_changes_stamped_total");
    let (_, body) = http_get(mesh.regions[0].agent.admin, "/metrics").unwrap();
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| geosync::lab::agent::metric_value(&body, n).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}"
    );
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `targets` (admin ports) every second and evaluates the
    /// project's alert rules every second, their `for:` shortened to 2 s.
    fn start(targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = std::fs::read_to_string(format!("{DEPLOY}/prometheus/alerts.yml")).unwrap();
        let rules: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => l.replace(l.trim_start(), "for: 2s"),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        let targets: Vec<String> = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: geosync\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's prometheus package)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The firing alerts: (name, labels as text).
    fn firing(&self) -> Vec<(String, String)> {
        let Some((200, body)) = http_get(self.port, "/api/v1/alerts") else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["state"] == "firing")
                    .map(|x| {
                        (
                            x["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            x["labels"].to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn a_real_prometheus_fires_peer_down_when_a_region_is_cut_off() {
    if !Path::new("/usr/bin/prometheus").exists() && which("prometheus").is_none() {
        panic!("prometheus is not installed (Debian's prometheus package; scripts/ensure-deps.sh)");
    }
    let mut mesh = Mesh::builder(3).proxied().start();
    mesh.wait_ready();
    let admins: Vec<u16> = mesh.regions.iter().map(|r| r.agent.admin).collect();
    let prom = Prometheus::start(&admins);
    wait_until(
        "prometheus scrapes all three agents",
        Duration::from_secs(60),
        || {
            http_get(
                prom.port,
                "/api/v1/query?query=count(up%7Bjob%3D%22geosync%22%7D%3D%3D1)",
            )
            .is_some_and(|(code, body)| code == 200 && body.contains("\"3\""))
        },
    );
    assert!(prom.firing().is_empty(), "{:?}", prom.firing());
    // Region 3 cut off from both others.
    mesh.partition(0, 2);
    mesh.partition(1, 2);
    wait_until("GeosyncPeerDown fires", Duration::from_secs(60), || {
        prom.firing()
            .iter()
            .filter(|(name, _)| name == "GeosyncPeerDown")
            .count()
            >= 4
    });
    // Regions 1 and 2 each lost region 3, and region 3 lost both.
    let firing = prom.firing();
    let per_instance = |port: u16| {
        firing
            .iter()
            .filter(|(n, l)| n == "GeosyncPeerDown" && l.contains(&format!("\"127.0.0.1:{port}\"")))
            .count()
    };
    assert_eq!(
        [
            per_instance(admins[0]),
            per_instance(admins[1]),
            per_instance(admins[2])
        ],
        [1, 1, 2],
        "{firing:?}\n{}",
        prom.log()
    );
    mesh.heal_all();
    wait_until("GeosyncPeerDown resolves", Duration::from_secs(60), || {
        !prom.firing().iter().any(|(n, _)| n == "GeosyncPeerDown")
    });
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}
