//! `geosync status`: one agent's view of its region and its peers, read
//! from its admin endpoint (`/readyz`, `/readyz/mesh`, `/metrics`), with
//! an exit status a script or a probe can use.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// `geosync status`'s arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Exit status: 0 when the agent is ready and every peer is connected and \
within --max-lag-ms, 1 when not (the problems are named), 2 when the admin \
endpoint cannot be read.")]
pub struct StatusArgs {
    /// The agent's admin address (`--admin` of `geosync run`).
    #[arg(default_value = "http://127.0.0.1:9001", value_name = "URL")]
    pub admin: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A peer whose oldest unacknowledged batch is older than this is
    /// unhealthy.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub max_lag_ms: u64,
    /// How long to wait for the agent to answer.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// One peer as this agent sees it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PeerStatus {
    /// The peer's label on the metrics: its node id, or its address
    /// when the configuration gives no id.
    pub peer: String,
    /// The address this agent dials (from `geosync_peer_info`).
    pub address: Option<String>,
    /// The outgoing stream to it is up.
    pub connected: bool,
    /// Batches stamped here that it has not acknowledged.
    pub lag_batches: u64,
    /// Age of the oldest of them, in ms.
    pub lag_ms: u64,
    /// Unix time (s), from its stamp, of the newest change it acknowledged.
    pub acked_up_to: Option<f64>,
    /// Unix time (s) of the last anti-entropy round with it that found
    /// nothing different.
    pub last_clean_anti_entropy: Option<f64>,
}

/// The agent's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The admin address read.
    pub agent: String,
    /// `/readyz` answered 200: the local side is synced.
    pub ready: bool,
    /// What `/readyz/mesh` still waits for, if anything.
    pub waiting_for: Option<String>,
    /// Batches in the outbox (kept until every peer acknowledged them).
    pub outbox_batches: u64,
    /// Their encoded size in bytes.
    pub outbox_bytes: u64,
    /// Every configured peer.
    pub peers: Vec<PeerStatus>,
    /// Unix time (s) the status was read.
    pub read_at: f64,
    /// Why it is unhealthy; empty when healthy.
    pub problems: Vec<String>,
}

/// A plain HTTP/1.0 GET: (status code, body).
fn get(base: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        format!("{base}: the admin address is http://HOST:PORT (the agent's --admin)")
    })?;
    let host = rest.trim_end_matches('/');
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{base}: {e}"))?
        .next()
        .ok_or_else(|| format!("{base}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{base}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{base}: {e}"))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| format!("{base}: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("{base}{path}: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{base}{path}: not an HTTP answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{base}{path}: not an HTTP answer"))?;
    Ok((code, body.to_string()))
}

/// The samples of `name` in a Prometheus text body: (labels, value).
fn samples<'a>(body: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, v) = r.split_once('}')?;
                    (labels, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            Some((labels, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The value of label `key` in a `k="v",...` label list.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// Builds the status from the three answers.
pub fn status_from(
    agent: &str,
    ready: bool,
    mesh_missing: Option<String>,
    metrics: &str,
    max_lag_ms: u64,
    now: f64,
) -> Status {
    let mut peers: Vec<PeerStatus> = samples(metrics, "geosync_peer_connected")
        .into_iter()
        .filter_map(|(l, v)| {
            Some(PeerStatus {
                peer: label(l, "peer")?.to_string(),
                connected: v >= 1.0,
                ..Default::default()
            })
        })
        .collect();
    peers.sort_by(|a, b| a.peer.cmp(&b.peer));
    for (l, _) in samples(metrics, "geosync_peer_info") {
        if let (Some(peer), Some(address)) = (label(l, "peer"), label(l, "address"))
            && let Some(p) = peers.iter_mut().find(|p| p.peer == peer)
        {
            p.address = Some(address.to_string());
        }
    }
    let per_peer = |name: &str| -> Vec<(String, f64)> {
        samples(metrics, name)
            .into_iter()
            .filter_map(|(l, v)| Some((label(l, "peer")?.to_string(), v)))
            .collect()
    };
    let mut fill = |name: &str, set: fn(&mut PeerStatus, f64)| {
        for (peer, v) in per_peer(name) {
            if let Some(p) = peers.iter_mut().find(|p| p.peer == peer) {
                set(p, v);
            }
        }
    };
    fill("geosync_peer_lag_batches", |p, v| p.lag_batches = v as u64);
    fill("geosync_peer_lag_seconds", |p, v| {
        p.lag_ms = (v * 1000.0) as u64
    });
    fill("geosync_peer_acked_stamp_timestamp_seconds", |p, v| {
        p.acked_up_to = Some(v)
    });
    fill(
        "geosync_anti_entropy_last_clean_round_timestamp_seconds",
        |p, v| p.last_clean_anti_entropy = (v > 0.0).then_some(v),
    );
    let gauge = |name: &str| samples(metrics, name).first().map_or(0, |(_, v)| *v as u64);
    let outbox_batches = gauge("geosync_outbox_batches");
    let outbox_bytes = gauge("geosync_outbox_bytes");
    let mut problems = Vec::new();
    if !ready {
        problems.push("not ready: the local side is not synced yet".to_string());
    }
    for p in &peers {
        if !p.connected {
            problems.push(format!("peer {} is not connected", p.peer));
        }
        if p.lag_ms > max_lag_ms {
            problems.push(format!(
                "peer {} lags {} ms behind (over --max-lag-ms {max_lag_ms})",
                p.peer, p.lag_ms
            ));
        }
    }
    Status {
        agent: agent.to_string(),
        ready,
        waiting_for: mesh_missing,
        outbox_batches,
        outbox_bytes,
        peers,
        read_at: now,
        problems,
    }
}

fn ago(now: f64, at: Option<f64>) -> String {
    match at {
        Some(t) => format!("{:.0} s ago", (now - t).max(0.0)),
        None => "never".to_string(),
    }
}

/// The status as a table for a person.
pub fn table(s: &Status) -> String {
    let mut out = format!(
        "agent {}: {}\noutbox: {} batches, {} bytes\n",
        s.agent,
        if s.ready {
            "ready (local side synced)"
        } else {
            "NOT READY"
        },
        s.outbox_batches,
        s.outbox_bytes
    );
    let rows: Vec<[String; 6]> = std::iter::once([
        "PEER".to_string(),
        "CONNECTED".into(),
        "LAG".into(),
        "LAG AGE".into(),
        "ACKED UP TO".into(),
        "LAST CLEAN ANTI-ENTROPY".into(),
    ])
    .chain(s.peers.iter().map(|p| {
        [
            match &p.address {
                Some(a) if *a != p.peer => format!("{} ({a})", p.peer),
                _ => p.peer.clone(),
            },
            if p.connected { "yes" } else { "NO" }.into(),
            format!("{} batches", p.lag_batches),
            format!("{} ms", p.lag_ms),
            ago(s.read_at, p.acked_up_to),
            ago(s.read_at, p.last_clean_anti_entropy),
        ]
    }))
    .collect();
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if s.problems.is_empty() {
        out.push_str("healthy\n");
    } else {
        for p in &s.problems {
            out.push_str(&format!("unhealthy: {p}\n"));
        }
    }
    out
}

/// `geosync status`: prints the status and returns the exit status.
pub fn main(args: StatusArgs) -> i32 {
    let timeout = Duration::from_millis(args.timeout_ms);
    let base = args.admin.trim_end_matches('/');
    let read = || -> Result<Status, String> {
        let (ready, _) = get(base, "/readyz", timeout)?;
        let (mesh, waiting) = get(base, "/readyz/mesh", timeout)?;
        let (code, metrics) = get(base, "/metrics", timeout)?;
        if code != 200 {
            return Err(format!("{base}/metrics answered {code}"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let waiting = (mesh != 200).then(|| {
            waiting
                .trim()
                .trim_start_matches("waiting for: ")
                .to_string()
        });
        Ok(status_from(
            base,
            ready == 200,
            waiting,
            &metrics,
            args.max_lag_ms,
            now,
        ))
    };
    let status = match read() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("geosync status: cannot read the agent: {e}");
            return 2;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&status) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("geosync status: {e}");
                return 2;
            }
        }
    } else {
        print!("{}", table(&status));
    }
    if status.problems.is_empty() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "\
# TYPE geosync_peer_connected gauge
geosync_peer_connected{peer=\"https://b:7001\"} 1
geosync_peer_connected{peer=\"https://c:7001\"} 0
geosync_peer_lag_batches{peer=\"https://b:7001\"} 2
geosync_peer_lag_seconds{peer=\"https://b:7001\"} 70
geosync_peer_acked_stamp_timestamp_seconds{peer=\"https://b:7001\"} 990.5
geosync_anti_entropy_last_clean_round_timestamp_seconds{peer=\"https://c:7001\"} 900
geosync_outbox_batches 7
geosync_outbox_bytes 7000
";

    /// Peers labelled by node id show the address `geosync_peer_info`
    /// ties to each.
    #[test]
    fn node_id_labels_are_shown_with_their_address() {
        let body = "geosync_peer_connected{peer=\"2\"} 1\n\
                    geosync_peer_info{peer=\"2\",address=\"https://b:7001\"} 1\n";
        let s = status_from("http://a", true, None, body, 60_000, 1000.0);
        assert_eq!(s.peers[0].peer, "2");
        assert_eq!(s.peers[0].address.as_deref(), Some("https://b:7001"));
        assert!(table(&s).contains("2 (https://b:7001)"), "{}", table(&s));
    }

    #[test]
    fn peers_and_problems_are_read_from_the_metrics() {
        let s = status_from("http://a", true, None, BODY, 60_000, 1000.0);
        assert_eq!((s.outbox_batches, s.outbox_bytes), (7, 7000));
        assert_eq!(
            s.peers[0],
            PeerStatus {
                peer: "https://b:7001".into(),
                address: None,
                connected: true,
                lag_batches: 2,
                lag_ms: 70_000,
                acked_up_to: Some(990.5),
                last_clean_anti_entropy: None,
            }
        );
        assert!(!s.peers[1].connected);
        assert_eq!(s.peers[1].last_clean_anti_entropy, Some(900.0));
        assert_eq!(
            s.problems,
            [
                "peer https://b:7001 lags 70000 ms behind (over --max-lag-ms 60000)",
                "peer https://c:7001 is not connected"
            ]
        );
        let t = table(&s);
        assert!(t.contains("10 s ago"), "{t}");
        assert!(t.contains("100 s ago"), "{t}");
        assert!(
            t.contains("unhealthy: peer https://c:7001 is not connected"),
            "{t}"
        );
    }

    #[test]
    fn a_ready_agent_with_connected_peers_is_healthy() {
        let body = "geosync_peer_connected{peer=\"x\"} 1\ngeosync_outbox_batches 0\n";
        let s = status_from("http://a", true, None, body, 60_000, 0.0);
        assert!(s.problems.is_empty());
        assert!(table(&s).ends_with("healthy\n"));
        let s = status_from("http://a", false, None, body, 60_000, 0.0);
        assert_eq!(s.problems.len(), 1);
    }
}
