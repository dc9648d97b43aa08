//! `geosync run` processes and what their admin server tells: readiness
//! and metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::wait::poll;

/// The `geosync` binary the lab starts agents with: `GEOSYNC_AGENT_BIN`;
/// else this process when it is `geosync` (`geosync lab`); else a
/// `geosync` next to this executable or one folder up (where cargo puts
/// it beside test and benchmark binaries); else `geosync` from the PATH.
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("GEOSYNC_AGENT_BIN") {
        return PathBuf::from(bin);
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_stem().is_some_and(|s| s == "geosync") {
            return exe;
        }
        let beside = exe.parent().map(|d| d.join("geosync"));
        let above = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("geosync"));
        if let Some(found) = [beside, above].into_iter().flatten().find(|p| p.is_file()) {
            return found;
        }
    }
    PathBuf::from("geosync")
}

/// A running `geosync run` process, killed on drop; the end of its log is
/// printed when the thread is panicking (a failing test).
pub struct Agent {
    /// Its `--node-id`.
    pub node_id: u32,
    /// Its `--redis`.
    pub redis_url: String,
    /// The ports its `--peer` URLs name.
    pub peers: Vec<u16>,
    /// The node ids of `peers`, given as `--peer ID=URL` (empty: bare URLs).
    pub peer_nodes: Vec<u32>,
    /// Other `geosync run` arguments.
    pub extra: Vec<String>,
    /// The folder its log and data directory are in.
    pub dir: PathBuf,
    /// Its `--listen` port.
    pub listen: u16,
    /// Its `--admin` port.
    pub admin: u16,
    child: Option<Child>,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an agent for the Redis at `redis_url` with the given ports
    /// and peers.
    pub fn start(
        node_id: u32,
        redis_url: &str,
        listen: u16,
        admin: u16,
        peers: &[u16],
        dir: &Path,
    ) -> Agent {
        Self::start_with(node_id, redis_url, listen, admin, peers, dir, &[])
    }

    /// Like [`Agent::start`], with extra `geosync run` arguments.
    pub fn start_with(
        node_id: u32,
        redis_url: &str,
        listen: u16,
        admin: u16,
        peers: &[u16],
        dir: &Path,
        extra: &[String],
    ) -> Agent {
        let mut agent = Agent::new(node_id, redis_url, listen, admin, dir, extra);
        agent.peers = peers.to_vec();
        agent.spawn();
        agent
    }

    /// An agent not started yet, without peers.
    fn new(
        node_id: u32,
        redis_url: &str,
        listen: u16,
        admin: u16,
        dir: &Path,
        extra: &[String],
    ) -> Agent {
        Agent {
            node_id,
            redis_url: redis_url.to_string(),
            peers: Vec::new(),
            peer_nodes: Vec::new(),
            extra: extra.to_vec(),
            dir: dir.to_path_buf(),
            listen,
            admin,
            child: None,
            log: dir.join(format!("agent-{node_id}.log")),
            data_dir: dir.join(format!("agent-{node_id}")),
        }
    }

    /// Like [`Agent::start_with`], its peers given by node id and port
    /// (`--peer ID=URL`).
    pub fn start_named(
        node_id: u32,
        redis_url: &str,
        (listen, admin): (u16, u16),
        peers: &[(u32, u16)],
        dir: &Path,
        extra: &[String],
    ) -> Agent {
        let mut agent = Agent::new(node_id, redis_url, listen, admin, dir, extra);
        agent.peers = peers.iter().map(|(_, port)| *port).collect();
        agent.peer_nodes = peers.iter().map(|(id, _)| *id).collect();
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.data_dir.display()));
        let bin = agent_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .args(["--node-id", &self.node_id.to_string()])
            .args(["--redis", &self.redis_url])
            .args(["--listen", &format!("127.0.0.1:{}", self.listen)])
            .args(["--admin", &format!("127.0.0.1:{}", self.admin)])
            .arg("--data-dir")
            .arg(&self.data_dir);
        let scheme = Agent::peer_scheme(&self.extra);
        for (i, p) in self.peers.iter().enumerate() {
            let url = format!("{scheme}://127.0.0.1:{p}");
            match self.peer_nodes.get(i) {
                Some(id) => cmd.args(["--peer", &format!("{id}={url}")]),
                None => cmd.args(["--peer", &url]),
            };
        }
        cmd.args(&self.extra);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        cmd.env(
            "GEOSYNC_LOG",
            std::env::var("GEOSYNC_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(logf.try_clone().expect("clone the log file"))
        .stderr(logf);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// The URL scheme of peers for an agent with these arguments: peer
    /// links with TLS (mutual TLS or a mesh secret) dial https://.
    pub fn peer_scheme(args: &[String]) -> &'static str {
        if args
            .iter()
            .any(|a| a == "--peer-tls-ca" || a == "--peer-secret-file")
        {
            "https"
        } else {
            "http"
        }
    }

    /// Sends the agent a signal (`HUP`, `STOP`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the agent runs");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// GET on the admin server: (status, body), or None when not reachable.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path)
    }

    /// True once `/readyz/mesh` answers 200 (synced with its Redis, every
    /// peer reached). Panics with the log if the process has exited.
    pub fn is_ready(&mut self) -> bool {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "agent {} exited with {status}:\n{}",
                self.node_id,
                self.log_text()
            );
        }
        matches!(self.get("/readyz/mesh"), Some((200, _)))
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sum of every sample of a metric (all label sets). Panics when the
    /// agent does not export the metric at all, so that a renamed metric
    /// fails the test that reads it instead of reading as 0.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self
            .get("/metrics")
            .unwrap_or_else(|| panic!("agent {} has no /metrics", self.node_id));
        metric_sum(&body, name)
    }

    /// Like [`Agent::metric`], None when the metric is not exported (or
    /// the admin server does not answer).
    pub fn try_metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        metric_value(&body, name)
    }

    /// Peak resident memory of the running process in MiB (`VmHWM`).
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().expect("agent running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("read /proc/<pid>/status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib / 1024.0
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Asks the process to stop (SIGTERM), as an orchestrator does; see
    /// [`Agent::wait_exit`] for its exit code.
    pub fn terminate(&mut self) {
        if let Some(pid) = self.pid() {
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(sent, "kill -TERM {pid} failed");
        }
    }

    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again with the same settings (after
    /// [`Agent::kill`]; kills it first if it runs). The log so far moves to
    /// `agent-<id>.log.previous`.
    pub fn restart(&mut self) {
        self.kill();
        let old = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::write(self.log.with_extension("log.previous"), old);
        let _ = std::fs::write(&self.log, "");
        self.spawn();
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit
    /// code, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let mut code = None;
        poll(timeout, || match child.try_wait() {
            Ok(Some(status)) => {
                code = Some(status.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        if code.is_some() {
            self.child = None;
        }
        code
    }

    /// The replication offset recorded in the data directory (-1: none).
    pub fn recorded_offset(&self) -> i64 {
        std::fs::read_to_string(self.data_dir.join("replication"))
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .and_then(|o| o.parse().ok())
            .unwrap_or(-1)
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- agent {} log (last 40 lines) ----", self.node_id);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// True when the Prometheus text `body` declares the metric family whose
/// samples are named `name` (`# TYPE` lines: a counter's samples end in
/// `_total`, a histogram's in `_bucket`, `_sum` and `_count`, an info
/// metric's in `_info`).
fn is_declared(body: &str, name: &str) -> bool {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .any(|(family, kind)| {
            let suffix = name.strip_prefix(family);
            match kind.trim() {
                "counter" => suffix == Some("_total"),
                "histogram" => matches!(suffix, Some("" | "_bucket" | "_sum" | "_count")),
                "info" => suffix == Some("_info"),
                _ => suffix == Some(""),
            }
        })
}

/// Sums the samples of `name` in a Prometheus text body; None when the
/// body does not export `name` at all. `name` may carry the whole label set
/// of one sample (`geosync_x_total{reason="y"}`): then only that sample
/// counts, and a family without it reads as 0.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    let family = name.split('{').next().unwrap_or(name);
    let mut found = is_declared(body, family);
    let mut sum = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        found = true;
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
        }
    }
    found.then_some(sum)
}

/// Sums the samples of `name` in a Prometheus text body. Panics when the
/// body does not export `name`, naming the metrics it does export.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    metric_value(body, name).unwrap_or_else(|| {
        let mut names: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        names.sort();
        panic!(
            "metric {name} is not exported; the agent exports: {}",
            names.join(", ")
        )
    })
}

/// A minimal HTTP/1.0 GET on 127.0.0.1: (status, body), or None when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP geosync_x_total x.\n# TYPE geosync_x counter\n\
        geosync_x_total{peer=\"2\"} 3\ngeosync_x_total{peer=\"3\"} 4\n\
        # HELP geosync_empty nothing yet.\n# TYPE geosync_empty counter\n\
        # TYPE geosync_g gauge\ngeosync_g 1.5\n";

    #[test]
    fn sums_every_label_set() {
        assert_eq!(metric_value(BODY, "geosync_x_total"), Some(7.0));
        assert_eq!(metric_value(BODY, "geosync_g"), Some(1.5));
        assert_eq!(metric_value(BODY, "geosync_x_total{peer=\"3\"}"), Some(4.0));
        assert_eq!(metric_value(BODY, "geosync_x_total{peer=\"9\"}"), Some(0.0));
        assert_eq!(metric_value(BODY, "geosync_y_total{peer=\"3\"}"), None);
    }

    #[test]
    fn a_declared_family_without_samples_is_zero() {
        assert_eq!(metric_value(BODY, "geosync_empty_total"), Some(0.0));
    }

    #[test]
    fn a_metric_not_exported_is_none_and_metric_sum_panics() {
        assert_eq!(metric_value(BODY, "geosync_renamed_total"), None);
        assert_eq!(metric_value(BODY, "geosync_x"), None); // a counter's samples end in _total
        let panic = std::panic::catch_unwind(|| metric_sum(BODY, "geosync_renamed_total"));
        assert!(panic.is_err());
    }
}
