//! `geosync run` processes and what their admin server tells: readiness
//! and metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::wait::poll;

/// A running `geosync run` process, killed on drop; its log is printed when
/// the test is failing.
pub struct Agent {
    pub node_id: u32,
    pub redis_url: String,
    pub peers: Vec<u16>,
    pub extra: Vec<String>,
    pub dir: PathBuf,
    pub listen: u16,
    pub admin: u16,
    child: Option<Child>,
    pub log: PathBuf,
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an agent for `redis` with the given ports and peers.
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
        let data_dir = dir.join(format!("agent-{node_id}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let log = dir.join(format!("agent-{node_id}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_geosync"));
        cmd.arg("run")
            .args(["--node-id", &node_id.to_string()])
            .args(["--redis", redis_url])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--data-dir")
            .arg(&data_dir);
        // Peer links with TLS (mutual TLS or a mesh secret) dial https://.
        let scheme = if extra
            .iter()
            .any(|a| a == "--peer-tls-ca" || a == "--peer-secret-file")
        {
            "https"
        } else {
            "http"
        };
        for p in peers {
            cmd.args(["--peer", &format!("{scheme}://127.0.0.1:{p}")]);
        }
        cmd.args(extra);
        let logf = std::fs::File::create(&log).unwrap();
        cmd.env(
            "GEOSYNC_LOG",
            std::env::var("GEOSYNC_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
        let child = cmd.spawn().expect("start geosync");
        Agent {
            node_id,
            redis_url: redis_url.to_string(),
            peers: peers.to_vec(),
            extra: extra.to_vec(),
            dir: dir.to_path_buf(),
            listen,
            admin,
            child: Some(child),
            log,
            data_dir,
        }
    }

    /// GET on the admin server: (status, body), or None when not reachable.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path)
    }

    /// True once `/readyz` answers 200. Panics with the log if the process
    /// has exited.
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
        matches!(self.get("/readyz"), Some((200, _)))
    }

    /// Sum of every sample of a metric (all label sets) whose line starts with `name`.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self
            .get("/metrics")
            .unwrap_or_else(|| panic!("agent {} has no /metrics", self.node_id));
        metric_sum(&body, name)
    }

    /// Peak resident memory of the running process in MiB (`VmHWM`).
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().expect("agent running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib / 1024.0
    }

    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again with the same settings (after [`Agent::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let old = std::fs::read_to_string(&self.log).unwrap_or_default();
        std::fs::write(self.log.with_extension("log.previous"), old).unwrap();
        let mut fresh = Agent::start_with(
            self.node_id,
            &self.redis_url,
            self.listen,
            self.admin,
            &self.peers,
            &self.dir,
            &self.extra,
        );
        self.child = fresh.child.take();
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

/// Sums the samples of `name` in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.0 GET.
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
