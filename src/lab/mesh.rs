//! Regions (a Redis and its agent) in a full mesh, the faults a lab puts
//! between them, and waiting until they converge.

use std::time::Duration;

use super::agent::Agent;
use super::compare::{CompareOptions, Snapshot, compare_with, try_snapshot};
use super::env::free_port;
use super::proxy::{Faults, Proxy};
use super::redis::{Redis, RedisBuilder};
use super::wait::{poll, wait_until};

/// One region: a Redis and its agent.
pub struct Region {
    /// Its name in scenarios and reports (`1`, `2`, ... unless named).
    pub name: String,
    /// The regional Redis.
    pub redis: Redis,
    /// The agent beside it (node id = position + 1).
    pub agent: Agent,
}

/// The proxied link on which region `from` dials region `to`.
struct Link {
    from: usize,
    to: usize,
    proxy: Proxy,
}

/// N regions in a full mesh, all ready.
pub struct Mesh {
    /// The regions, node ids 1..=n in order.
    pub regions: Vec<Region>,
    /// The folder of the agents' logs and data directories.
    pub dir: tempfile::TempDir,
    links: Vec<Link>,
    /// Agents read their peers from a file ([`MeshBuilder::peer_files`]).
    peer_files: bool,
}

/// How to start a [`Mesh`].
pub struct MeshBuilder<'a> {
    n: usize,
    names: Vec<String>,
    servers: Option<Vec<Redis>>,
    redis: RedisBuilder,
    urls: Option<Vec<String>>,
    per_node: Box<dyn Fn(u32) -> Vec<String> + 'a>,
    proxied: bool,
    wait: bool,
    peer_files: bool,
}

impl<'a> MeshBuilder<'a> {
    /// Names the regions (as many names as regions).
    pub fn names(mut self, names: &[String]) -> Self {
        assert_eq!(names.len(), self.n, "one name per region");
        self.names = names.to_vec();
        self
    }

    /// Starts each region's Redis with this builder.
    pub fn redis(mut self, redis: RedisBuilder) -> Self {
        self.redis = redis;
        self
    }

    /// Uses these servers (one per region) instead of starting new ones.
    pub fn servers(mut self, servers: Vec<Redis>) -> Self {
        self.n = servers.len();
        self.names = default_names(self.n);
        self.servers = Some(servers);
        self
    }

    /// Agents connect with these URLs instead of their servers' own.
    pub fn urls(mut self, urls: Vec<String>) -> Self {
        self.urls = Some(urls);
        self
    }

    /// Every agent gets these extra `geosync run` arguments.
    pub fn agent_args<S: AsRef<str>>(self, args: &[S]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        self.per_node(move |_| args.clone())
    }

    /// Each agent gets the extra arguments `per_node(node_id)` gives it.
    pub fn per_node(mut self, per_node: impl Fn(u32) -> Vec<String> + 'a) -> Self {
        self.per_node = Box::new(per_node);
        self
    }

    /// Agents reach each other through fault-injecting proxies, so that
    /// [`Mesh::partition`] and the other faults work.
    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// Each agent reads its peers from a configuration file (`--config`)
    /// instead of `--peer` flags, so that [`Mesh::set_peers`] can change
    /// them while it runs.
    pub fn peer_files(mut self) -> Self {
        self.peer_files = true;
        self
    }

    /// [`MeshBuilder::start`] returns as soon as the agents run, without
    /// waiting until they are ready (agents that will refuse each other).
    pub fn unready(mut self) -> Self {
        self.wait = false;
        self
    }

    /// Starts the agents and waits until every one is ready.
    pub fn start(self) -> Mesh {
        let servers = match self.servers {
            Some(s) => s,
            None => (0..self.n).map(|_| self.redis.clone().start()).collect(),
        };
        let n = servers.len();
        let dir = tempfile::tempdir().expect("a temp dir for the agents");
        let listens: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut links = Vec::new();
        if self.proxied {
            for from in 0..n {
                for to in (0..n).filter(|&to| to != from) {
                    let target = ([127, 0, 0, 1], listens[to]).into();
                    let proxy = Proxy::start(target).expect("start a lab proxy");
                    links.push(Link { from, to, proxy });
                }
            }
        }
        let urls = self
            .urls
            .unwrap_or_else(|| servers.iter().map(Redis::url).collect());
        let mut regions = Vec::new();
        for (i, redis) in servers.into_iter().enumerate() {
            // Peers by node id and port: `--peer ID=URL`, so that every
            // metric's peer label is the node id.
            let peers: Vec<(u32, u16)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let port = links
                        .iter()
                        .find(|l| l.from == i && l.to == j)
                        .map_or(listens[j], |l| l.proxy.port());
                    (j as u32 + 1, port)
                })
                .collect();
            let mut args = redis.agent_args();
            args.extend((self.per_node)(i as u32 + 1));
            let mut flags = peers.as_slice();
            if self.peer_files {
                assert!(!self.proxied, "peer files are for meshes without proxies");
                let file = write_peer_file(dir.path(), i as u32 + 1, &args, &peers);
                args.extend(["--config".to_string(), file]);
                flags = &[];
            }
            let agent = Agent::start_named(
                i as u32 + 1,
                &urls[i],
                (listens[i], free_port()),
                flags,
                dir.path(),
                &args,
            );
            regions.push(Region {
                name: self.names[i].clone(),
                redis,
                agent,
            });
        }
        let mut mesh = Mesh {
            regions,
            dir,
            links,
            peer_files: self.peer_files,
        };
        if self.wait {
            mesh.wait_ready();
        }
        mesh
    }
}

/// `ID=URL` for each (node id, port) of an agent with these arguments.
fn peer_urls(args: &[String], peers: &[(u32, u16)]) -> Vec<String> {
    let scheme = Agent::peer_scheme(args);
    peers
        .iter()
        .map(|(id, port)| format!("{id}={scheme}://127.0.0.1:{port}"))
        .collect()
}

/// Writes the configuration file that names node `node_id`'s peers (by
/// node id and port) and returns its path.
fn write_peer_file(
    dir: &std::path::Path,
    node_id: u32,
    args: &[String],
    peers: &[(u32, u16)],
) -> String {
    let urls: Vec<String> = peer_urls(args, peers)
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let path = dir.join(format!("peers-{node_id}.toml"));
    std::fs::write(&path, format!("peer = [{}]\n", urls.join(", ")))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.display().to_string()
}

fn default_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

/// What one look at every region found.
#[derive(Debug, Default, Clone)]
pub struct Look {
    /// Every difference between region 1 and the others, one line each.
    pub differences: Vec<String>,
    /// Keys excused as expiring at the moment of reading, one line each.
    pub expiring: Vec<String>,
    /// User keys compared (per region pair and database, summed).
    pub keys: usize,
}

impl Mesh {
    /// A mesh of `n` regions, to be configured.
    pub fn builder<'a>(n: usize) -> MeshBuilder<'a> {
        MeshBuilder {
            n,
            names: default_names(n),
            servers: None,
            redis: Redis::builder(),
            urls: None,
            per_node: Box::new(|_| Vec::new()),
            proxied: false,
            wait: true,
            peer_files: false,
        }
    }

    /// Starts `n` Redis servers and `n` agents (node ids 1..=n) and waits
    /// until every agent is ready.
    pub fn start(n: usize) -> Mesh {
        Mesh::builder(n).start()
    }

    /// Like [`Mesh::start`], with extra redis-server arguments.
    pub fn start_with(n: usize, redis_args: &[&str]) -> Mesh {
        Mesh::builder(n)
            .redis(Redis::builder().args(redis_args))
            .start()
    }

    /// Like [`Mesh::start`], every agent with extra settings.
    pub fn with_agent_args(n: usize, agent_args: &[&str]) -> Mesh {
        Mesh::builder(n).agent_args(agent_args).start()
    }

    /// Starts one agent per given server (node ids 1..=n, each connecting
    /// with its server's URL or the given one) and waits until all are
    /// ready.
    pub fn over(servers: Vec<Redis>, urls: Option<Vec<String>>) -> Mesh {
        Mesh::over_with(servers, urls, &[])
    }

    /// [`Mesh::over`], every agent with extra settings.
    pub fn over_with(servers: Vec<Redis>, urls: Option<Vec<String>>, agent_args: &[&str]) -> Mesh {
        let args: Vec<String> = agent_args.iter().map(|a| a.to_string()).collect();
        Mesh::over_each(servers, urls, move |_| args.clone())
    }

    /// `n` regions, each agent with the settings `args(node_id)` gives it
    /// (its own certificate, say).
    pub fn each(n: usize, args: impl Fn(u32) -> Vec<String>) -> Mesh {
        Mesh::builder(n).per_node(args).start()
    }

    /// [`Mesh::over`], each agent with the settings `per_node(node_id)`.
    pub fn over_each(
        servers: Vec<Redis>,
        urls: Option<Vec<String>>,
        per_node: impl Fn(u32) -> Vec<String>,
    ) -> Mesh {
        let mut b = Mesh::builder(servers.len())
            .servers(servers)
            .per_node(per_node);
        if let Some(urls) = urls {
            b = b.urls(urls);
        }
        b.start()
    }

    /// The position of the region named `name` (or numbered, from 1).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|i| (1..=self.regions.len()).contains(i))
                    .map(|i| i - 1)
            })
    }

    /// Waits until every running agent's `/readyz/mesh` is 200.
    pub fn wait_ready(&mut self) {
        for r in &mut self.regions {
            if !r.agent.is_running() {
                continue;
            }
            let what = format!("agent {} ready", r.agent.node_id);
            wait_until(&what, Duration::from_secs(30), || r.agent.is_ready());
        }
    }

    /// Sum of a metric over all agents (each must export it).
    pub fn metric(&self, name: &str) -> f64 {
        self.regions.iter().map(|r| r.agent.metric(name)).sum()
    }

    /// True when the agents reach each other through proxies.
    pub fn is_proxied(&self) -> bool {
        !self.links.is_empty()
    }

    /// The two links between regions `a` and `b` (a dials b, b dials a).
    fn links_between(&self, a: usize, b: usize) -> impl Iterator<Item = &Link> {
        assert!(
            self.is_proxied(),
            "faults between regions need a mesh started with proxied()"
        );
        self.links
            .iter()
            .filter(move |l| (l.from, l.to) == (a, b) || (l.from, l.to) == (b, a))
    }

    /// Cuts regions `a` and `b` apart: open connections between them are
    /// reset and new ones refused, both ways.
    pub fn partition(&self, a: usize, b: usize) {
        for l in self.links_between(a, b) {
            l.proxy.set(|f| {
                f.refuse = true;
                f.forward.stall = true;
                f.backward.stall = true;
            });
            l.proxy.reset_connections();
        }
    }

    /// Bytes from region `from` stop reaching region `to` (held, as TCP
    /// holds them on a dead link); the other way still works and
    /// connections stay open until an end gives up on them.
    pub fn partition_one_way(&self, from: usize, to: usize) {
        for l in self.links_between(from, to) {
            l.proxy.set(|f| {
                if l.from == from {
                    f.forward.stall = true;
                } else {
                    f.backward.stall = true;
                }
            });
        }
    }

    /// Nothing gets through between `a` and `b`, both ways, on connections
    /// that stay open (a link that died without a word); new connections
    /// are accepted and stall too.
    pub fn blackhole(&self, a: usize, b: usize) {
        for l in self.links_between(a, b) {
            l.proxy.set(|f| {
                f.forward.stall = true;
                f.backward.stall = true;
            });
        }
    }

    /// Bytes between `a` and `b` take `delay` longer, each way.
    pub fn delay(&self, a: usize, b: usize, delay: Duration) {
        for l in self.links_between(a, b) {
            l.proxy.set(|f| {
                f.forward.delay = delay;
                f.backward.delay = delay;
            });
        }
    }

    /// Resets (TCP RST) the connections between `a` and `b` once; new
    /// ones are let through.
    pub fn reset(&self, a: usize, b: usize) {
        for l in self.links_between(a, b) {
            l.proxy.reset_connections();
        }
    }

    /// Clears every fault between `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) {
        for l in self.links_between(a, b) {
            l.proxy.heal();
        }
    }

    /// Clears every fault between every pair of regions.
    pub fn heal_all(&self) {
        for l in &self.links {
            l.proxy.heal();
        }
    }

    /// The links with faults, as `from -> to: faults` lines.
    pub fn faults(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|l| !l.proxy.faults().is_healthy())
            .map(|l| {
                let f: Faults = l.proxy.faults();
                format!(
                    "{} dials {}: {f:?}",
                    self.regions[l.from].name, self.regions[l.to].name
                )
            })
            .collect()
    }

    /// Rewrites region `i`'s peer file to name the regions `peers` (by
    /// position) and sends its agent SIGHUP, which reloads it. Needs a
    /// mesh started with [`MeshBuilder::peer_files`].
    pub fn set_peers(&self, i: usize, peers: &[usize]) {
        assert!(
            self.peer_files,
            "set_peers needs a mesh started with peer_files()"
        );
        let agent = &self.regions[i].agent;
        let peers: Vec<(u32, u16)> = peers
            .iter()
            .map(|&j| (self.regions[j].agent.node_id, self.regions[j].agent.listen))
            .collect();
        write_peer_file(self.dir.path(), agent.node_id, &agent.extra, &peers);
        agent.signal("HUP");
    }

    /// Adds a region: an agent (node id = the new count) for `redis` whose
    /// peers are every region so far, ready once it synced with its Redis
    /// and reached them. The others do not know it until [`Mesh::set_peers`]
    /// tells them. Needs a mesh started with [`MeshBuilder::peer_files`].
    pub fn join(&mut self, redis: Redis, agent_args: &[String]) -> usize {
        assert!(
            self.peer_files,
            "join needs a mesh started with peer_files()"
        );
        let node_id = self.regions.len() as u32 + 1;
        let peers: Vec<(u32, u16)> = self
            .regions
            .iter()
            .map(|r| (r.agent.node_id, r.agent.listen))
            .collect();
        let mut args = redis.agent_args();
        args.extend(agent_args.iter().cloned());
        let file = write_peer_file(self.dir.path(), node_id, &args, &peers);
        args.extend(["--config".to_string(), file]);
        let mut agent = Agent::start_named(
            node_id,
            &redis.url(),
            (free_port(), free_port()),
            &[],
            self.dir.path(),
            &args,
        );
        let what = format!("agent {node_id} ready");
        wait_until(&what, Duration::from_secs(60), || agent.is_ready());
        self.regions.push(Region {
            name: node_id.to_string(),
            redis,
            agent,
        });
        self.regions.len() - 1
    }

    /// Kills region `i`'s agent with SIGKILL.
    pub fn kill_agent(&mut self, i: usize) {
        self.regions[i].agent.kill();
    }

    /// Starts region `i`'s agent again (killing it first if it runs) and
    /// waits until it is ready.
    pub fn restart_agent(&mut self, i: usize) {
        self.regions[i].agent.restart();
        let agent = &mut self.regions[i].agent;
        let what = format!("agent {} ready", agent.node_id);
        wait_until(&what, Duration::from_secs(60), || agent.is_ready());
    }

    /// Waits until region `i`'s agent has stamped every write its Redis
    /// took so far (the position it records covers the master's offset);
    /// how long that took. A write made after this is stamped later than
    /// all of them.
    pub fn wait_stamped(&self, i: usize, timeout: Duration) -> Duration {
        let region = &self.regions[i];
        let target = region.redis.master_repl_offset();
        wait_until(
            &format!(
                "region {}'s agent to stamp up to offset {target}",
                region.name
            ),
            timeout,
            || region.agent.recorded_offset() >= target,
        )
    }

    /// Restarts region `i`'s Redis empty (no persistence): its agent must
    /// notice and rebuild the region from a peer.
    pub fn restart_redis_empty(&mut self, i: usize) {
        self.regions[i].redis.restart_empty();
    }

    /// Every database that holds keys in some region.
    pub fn databases_in_use(&self) -> Vec<u32> {
        let mut dbs: Vec<u32> = self
            .regions
            .iter()
            .flat_map(|r| r.redis.databases_in_use())
            .collect();
        dbs.sort();
        dbs.dedup();
        if dbs.is_empty() {
            dbs.push(0);
        }
        dbs
    }

    /// Compares every region with region 1 in `dbs`, once.
    pub fn look(&self, dbs: &[u32]) -> Look {
        self.look_with(dbs, CompareOptions::default())
    }

    /// [`Mesh::look`], leaving out what `options` says.
    pub fn look_with(&self, dbs: &[u32], options: CompareOptions) -> Look {
        let mut out = Look::default();
        for &db in dbs {
            // Read the regions side by side: large datasets take a while.
            let snaps: Vec<Result<Snapshot, String>> = std::thread::scope(|s| {
                let readers: Vec<_> = self
                    .regions
                    .iter()
                    .map(|r| {
                        s.spawn(move || {
                            let mut c = r
                                .redis
                                .client_db(db)
                                .and_then(|c| c.get_connection())
                                .map_err(|e| e.to_string())?;
                            try_snapshot(&mut c).map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                readers
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("reader panicked".into())))
                    .collect()
            });
            let first = &snaps[0];
            for (i, s) in snaps.iter().enumerate().skip(1) {
                let pair = format!(
                    "db {db}, region {} vs region {}",
                    self.regions[0].name, self.regions[i].name
                );
                match (first, s) {
                    (Ok(a), Ok(b)) => {
                        let c = compare_with(a, b, options);
                        out.keys += c.keys;
                        out.differences
                            .extend(c.differences.iter().map(|d| format!("{pair}: {d}")));
                        out.expiring
                            .extend(c.expiring.iter().map(|d| format!("{pair}: {d}")));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        out.differences.push(format!("{pair}: cannot read: {e}"))
                    }
                }
            }
        }
        out
    }

    /// Every difference between region 1 and the others in `dbs`.
    pub fn differences(&self, dbs: &[u32]) -> Vec<String> {
        self.look(dbs).differences
    }

    /// Waits until every region holds the same data in `dbs` (and the
    /// same metadata): Ok with how long it took and the last look, or Err
    /// with the differences at the deadline.
    pub fn converge(&self, dbs: &[u32], timeout: Duration) -> Result<(Duration, Look), Look> {
        self.converge_with(dbs, timeout, CompareOptions::default())
    }

    /// [`Mesh::converge`], comparing as `options` says.
    pub fn converge_with(
        &self,
        dbs: &[u32],
        timeout: Duration,
        options: CompareOptions,
    ) -> Result<(Duration, Look), Look> {
        let mut last = Look::default();
        match poll(timeout, || {
            last = self.look_with(dbs, options);
            last.differences.is_empty()
        }) {
            Some(took) => Ok((took, last)),
            None => Err(last),
        }
    }

    /// Waits until every region holds the same data in `dbs` (and the same
    /// metadata); returns how long that took. Panics with the differences.
    pub fn wait_converged(&self, dbs: &[u32], timeout: Duration) -> Duration {
        self.wait_converged_with(dbs, timeout, CompareOptions::default())
    }

    /// [`Mesh::wait_converged`], comparing as `options` says.
    pub fn wait_converged_with(
        &self,
        dbs: &[u32],
        timeout: Duration,
        options: CompareOptions,
    ) -> Duration {
        match self.converge_with(dbs, timeout, options) {
            Ok((took, look)) => {
                if !look.expiring.is_empty() {
                    println!(
                        "converged in {took:?}; {} keys about to expire were excused:\n  {}",
                        look.expiring.len(),
                        look.expiring.join("\n  ")
                    );
                }
                took
            }
            Err(look) => panic!(
                "regions did not converge within {timeout:?}; {}",
                report(&look)
            ),
        }
    }
}

/// A look's differences as a report: their count and the first 30.
pub fn report(look: &Look) -> String {
    let shown: Vec<String> = look
        .differences
        .iter()
        .take(30)
        .map(|d| format!("  {d}"))
        .collect();
    let mut out = format!(
        "{} differences, first ones:\n{}",
        look.differences.len(),
        shown.join("\n")
    );
    if !look.expiring.is_empty() {
        out.push_str(&format!(
            "\n{} keys about to expire were excused",
            look.expiring.len()
        ));
    }
    out
}
