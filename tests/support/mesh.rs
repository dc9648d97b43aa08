//! Regions (a Redis and its agent) in a full mesh, and waiting until they
//! converge.

use std::time::Duration;

use super::agent::Agent;
use super::compare::{Snapshot, diff, snapshot};
use super::env::free_port;
use super::server::Redis;
use super::wait::{poll, wait_until};

/// One region: a Redis and its agent.
pub struct Region {
    pub redis: Redis,
    pub agent: Agent,
}

/// N regions in a full mesh, all ready.
pub struct Mesh {
    pub regions: Vec<Region>,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts `n` Redis servers and `n` agents (node ids 1..=n) and waits
    /// until every agent is ready.
    pub fn start(n: usize) -> Mesh {
        Self::start_with(n, &[])
    }

    /// Like [`Mesh::start`], with extra redis-server arguments.
    pub fn start_with(n: usize, redis_args: &[&str]) -> Mesh {
        Mesh::over((0..n).map(|_| Redis::start(redis_args)).collect(), None)
    }

    /// Like [`Mesh::start`], every agent with extra settings.
    pub fn with_agent_args(n: usize, agent_args: &[&str]) -> Mesh {
        let servers = (0..n).map(|_| Redis::start(&[])).collect();
        Mesh::over_with(servers, None, agent_args)
    }

    /// Starts one agent per given server (node ids 1..=n, each connecting
    /// with its server's URL or the given one, and its TLS files) and waits
    /// until all are ready.
    pub fn over(servers: Vec<Redis>, urls: Option<Vec<String>>) -> Mesh {
        Mesh::over_with(servers, urls, &[])
    }

    /// [`Mesh::over`], every agent with extra settings.
    pub fn over_with(servers: Vec<Redis>, urls: Option<Vec<String>>, agent_args: &[&str]) -> Mesh {
        let args: Vec<String> = agent_args.iter().map(|a| a.to_string()).collect();
        Mesh::over_each(servers, urls, |_| args.clone())
    }

    /// `n` regions, each agent with the settings `args(node_id)` gives it
    /// (its own certificate, say).
    pub fn each(n: usize, args: impl Fn(u32) -> Vec<String>) -> Mesh {
        Mesh::over_each((0..n).map(|_| Redis::start(&[])).collect(), None, args)
    }

    /// [`Mesh::over`], each agent with the settings `per_node(node_id)`.
    pub fn over_each(
        servers: Vec<Redis>,
        urls: Option<Vec<String>>,
        per_node: impl Fn(u32) -> Vec<String>,
    ) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let n = servers.len();
        let listens: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let urls = urls.unwrap_or_else(|| servers.iter().map(|r| r.url()).collect());
        let mut regions = Vec::new();
        for (i, redis) in servers.into_iter().enumerate() {
            let peers: Vec<u16> = listens
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            let mut args = redis.agent_args();
            args.extend(per_node(i as u32 + 1));
            let agent = Agent::start_with(
                i as u32 + 1,
                &urls[i],
                listens[i],
                free_port(),
                &peers,
                dir.path(),
                &args,
            );
            regions.push(Region { redis, agent });
        }
        let mut mesh = Mesh { regions, dir };
        mesh.wait_ready();
        mesh
    }

    /// Waits until every agent's `/readyz` is 200.
    pub fn wait_ready(&mut self) {
        for r in &mut self.regions {
            let what = format!("agent {} ready", r.agent.node_id);
            wait_until(&what, Duration::from_secs(30), || r.agent.is_ready());
        }
    }

    /// Sum of a metric over all agents.
    pub fn metric(&self, name: &str) -> f64 {
        self.regions.iter().map(|r| r.agent.metric(name)).sum()
    }

    /// Waits until every region holds the same data in `dbs` (and the same
    /// metadata); returns how long that took. Panics with the differences.
    pub fn wait_converged(&self, dbs: &[u32], timeout: Duration) -> Duration {
        if let Some(took) = poll(timeout, || self.differences(dbs).is_empty()) {
            return took;
        }
        let diffs = self.differences(dbs);
        assert!(
            !diffs.is_empty(),
            "regions converged only after the {timeout:?} deadline"
        );
        let shown: Vec<String> = diffs.iter().take(30).map(|d| format!("  {d}")).collect();
        panic!(
            "regions did not converge within {timeout:?}; {} differences, first ones:\n{}",
            diffs.len(),
            shown.join("\n")
        );
    }

    /// Every difference between region 1 and the others.
    pub fn differences(&self, dbs: &[u32]) -> Vec<String> {
        let mut out = Vec::new();
        for &db in dbs {
            // Read the regions side by side: large datasets take a while.
            let snaps: Vec<Snapshot> = std::thread::scope(|s| {
                let readers: Vec<_> = self
                    .regions
                    .iter()
                    .map(|r| s.spawn(move || snapshot(&mut r.redis.conn_db(db))))
                    .collect();
                readers.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (i, s) in snaps.iter().enumerate().skip(1) {
                for d in diff(&snaps[0], s) {
                    out.push(format!("db {db}, region 1 vs region {}: {d}", i + 1));
                }
            }
        }
        out
    }
}
