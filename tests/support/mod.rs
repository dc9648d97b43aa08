//! Test support: real `redis-server` processes and real `geosync` agents on
//! free ports, condition waits with deadlines, and the convergence checker
//! every scenario test ends with.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Commands, Connection, Value};

/// The Redis server binary: `GEOSYNC_TEST_REDIS_SERVER` or `redis-server`.
pub fn redis_server_bin() -> String {
    std::env::var("GEOSYNC_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// Polls `cond` every 20 ms until it holds (how long that took) or
/// `timeout` passes (None). The one condition wait every test uses.
pub fn poll<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `cond` holds; panics with `what` at the deadline.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, cond: F) -> Duration {
    poll(timeout, cond).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// A port that was free a moment ago and that this test process has not
/// handed out before (the OS may offer a just-released port again, and two
/// servers of one test must never be given the same one).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// For benchmarks: true when a test runner is only listing targets
/// (`--list`), which a benchmark must answer with nothing.
pub fn listing_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// For benchmarks: a whole-number setting from the environment.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A redis-server process in its own temp dir, killed on drop.
pub struct Redis {
    pub port: u16,
    pub password: Option<String>,
    bin: String,
    args: Vec<String>,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server with settings suited to tests (no persistence, no
    /// diskless-sync delay) plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Redis {
        Self::start_bin(&redis_server_bin(), extra)
    }

    /// Like [`Redis::start`] with a given server binary, whatever
    /// `GEOSYNC_TEST_REDIS_SERVER` says (a module goes with its server).
    pub fn start_bin(bin: &str, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(bin, port, dir.path(), extra);
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        let mut r = Redis {
            port,
            password,
            child,
            dir,
            bin: bin.to_string(),
            args: extra.iter().map(|a| a.to_string()).collect(),
        };
        r.wait_up();
        r
    }

    fn spawn(bin: &str, port: u16, dir: &Path, extra: &[&str]) -> Child {
        Command::new(bin)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (install redis-server)"))
    }

    /// Waits until the server answers PING; panics with its log if it
    /// exited (a module that failed to load, a bad argument).
    fn wait_up(&mut self) {
        let url = self.url();
        let log = self.dir.path().join("redis.log");
        let child = &mut self.child;
        wait_until(
            &format!("redis on port {}", self.port),
            Duration::from_secs(10),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server exited with {status}; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
        );
    }

    /// Kills the server and starts it again on the same port. It has no
    /// persistence, so it comes back empty, with a new replication id.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = Self::spawn(&self.bin, self.port, self.dir.path(), &args);
        self.wait_up();
    }

    /// The URL agents and clients use.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// A new client connection (database 0).
    pub fn conn(&self) -> Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// A new client connection to database `db`.
    pub fn conn_db(&self, db: u32) -> Connection {
        redis::Client::open(format!("{}/{db}", self.url()))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        for p in peers {
            cmd.args(["--peer", &format!("http://127.0.0.1:{p}")]);
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

    /// Starts one agent per given server (node ids 1..=n, each connecting
    /// with its server's URL or the given one) and waits until all are ready.
    pub fn over(servers: Vec<Redis>, urls: Option<Vec<String>>) -> Mesh {
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
            let agent = Agent::start(
                i as u32 + 1,
                &urls[i],
                listens[i],
                free_port(),
                &peers,
                dir.path(),
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

/// A stamp at `time` (NTP64) made by `node`.
pub fn stamp_at(time: u64, node: u32) -> uhlc::Timestamp {
    uhlc::Timestamp::new(
        uhlc::NTP64(time),
        geosync::stamp::node_id_to_id(node).unwrap(),
    )
}

/// A change setting string `key` (database 0) to `value` at `at`.
pub fn string_put(key: &str, value: &str, at: &uhlc::Timestamp) -> geosync::change::Change {
    use serde_bytes::ByteBuf;
    geosync::change::Change {
        db: 0,
        key: ByteBuf::from(key.as_bytes().to_vec()),
        stamp: geosync::stamp::encode(at),
        op: geosync::change::Op::Put {
            value: geosync::change::Value::String(ByteBuf::from(value.as_bytes().to_vec())),
            expire_at_ms: None,
        },
    }
}

/// A key's comparable state.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    String(Vec<u8>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    ZSet(Vec<(Vec<u8>, String)>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// A hash with field expiries (Redis 7.4+): field, value, expiry or -1.
    HashTtl(Vec<(Vec<u8>, Vec<u8>, i64)>),
    Stream {
        entries: Vec<(String, Vec<Vec<u8>>)>,
        last_id: String,
        groups: Vec<(Vec<u8>, String)>,
    },
    Other(String),
}

/// A key's value and absolute expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub value: KeyValue,
    pub expire_at: Option<i64>,
}

/// A database's user keys and geosync metadata.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub keys: BTreeMap<Vec<u8>, KeyState>,
    /// key → (stamp, flag) from the metadata buckets.
    pub meta: BTreeMap<Vec<u8>, (String, char, Option<i64>)>,
    pub taken_at: i64,
}

fn bulk(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(&bulk(v)).into_owned()
}

/// The fields' expiries (HPEXPIRETIME), or None when the server has no
/// field expiry or no field of the hash expires.
pub fn field_expiries(
    c: &mut Connection,
    key: &[u8],
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Option<Vec<i64>> {
    if fields.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("HPEXPIRETIME");
    cmd.arg(key).arg("FIELDS").arg(fields.len());
    for (f, _) in fields {
        cmd.arg(f);
    }
    let exps: Vec<i64> = cmd.query(c).ok()?;
    exps.iter().any(|e| *e > 0).then_some(exps)
}

/// True when the server supports hash field expiry (Redis 7.4+).
pub fn has_field_expiry(c: &mut Connection) -> bool {
    let r: redis::RedisResult<redis::Value> =
        redis::cmd("COMMAND").arg("INFO").arg("HPEXPIRE").query(c);
    matches!(r, Ok(redis::Value::Array(v)) if v.first().is_some_and(|x| *x != redis::Value::Nil))
}

/// Reads one key's state; None if it does not exist.
/// Reads one key's state; None if it does not exist. A key that changes
/// type or disappears while it is read (an apply or an expiry in between)
/// reads as a value no other region can have, so a convergence wait simply
/// looks again.
pub fn read_key(c: &mut Connection, key: &[u8]) -> Option<KeyState> {
    try_read_key(c, key).unwrap_or_else(|e| {
        Some(KeyState {
            value: KeyValue::Other(format!("changed while read: {e}")),
            expire_at: None,
        })
    })
}

fn try_read_key(c: &mut Connection, key: &[u8]) -> redis::RedisResult<Option<KeyState>> {
    let t: String = redis::cmd("TYPE").arg(key).query(c)?;
    let value = match t.as_str() {
        "none" => return Ok(None),
        "string" => KeyValue::String(c.get(key)?),
        "list" => KeyValue::List(c.lrange(key, 0, -1)?),
        "set" => {
            let mut m: Vec<Vec<u8>> = c.smembers(key)?;
            m.sort();
            KeyValue::Set(m)
        }
        "zset" => {
            let v: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)?;
            KeyValue::ZSet(
                v.chunks(2)
                    .map(|p| (p[0].clone(), String::from_utf8_lossy(&p[1]).into_owned()))
                    .collect(),
            )
        }
        "hash" => {
            let mut v: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(key)?;
            v.sort();
            match field_expiries(c, key, &v) {
                Some(exps) => KeyValue::HashTtl(
                    v.into_iter()
                        .zip(exps)
                        .map(|((f, x), e)| (f, x, e))
                        .collect(),
                ),
                None => KeyValue::Hash(v),
            }
        }
        "stream" => {
            let entries: Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(c)?;
            let entries = match entries {
                Value::Array(es) => es
                    .iter()
                    .map(|e| match e {
                        Value::Array(p) => (
                            text(&p[0]),
                            match &p[1] {
                                Value::Array(f) => f.iter().map(bulk).collect(),
                                _ => vec![],
                            },
                        ),
                        _ => (String::new(), vec![]),
                    })
                    .collect(),
                _ => vec![],
            };
            let info: Value = redis::cmd("XINFO").arg("STREAM").arg(key).query(c)?;
            let mut last_id = String::new();
            if let Value::Array(f) = &info {
                for p in f.chunks(2) {
                    if text(&p[0]) == "last-generated-id" {
                        last_id = text(&p[1]);
                    }
                }
            }
            let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(key).query(c)?;
            let mut gs = vec![];
            if let Value::Array(list) = groups {
                for g in list {
                    if let Value::Array(f) = g {
                        let mut name = vec![];
                        let mut last = String::new();
                        for p in f.chunks(2) {
                            match text(&p[0]).as_str() {
                                "name" => name = bulk(&p[1]),
                                "last-delivered-id" => last = text(&p[1]),
                                _ => {}
                            }
                        }
                        gs.push((name, last));
                    }
                }
            }
            gs.sort();
            KeyValue::Stream {
                entries,
                last_id,
                groups: gs,
            }
        }
        other => KeyValue::Other(other.to_string()),
    };
    let exp: i64 = redis::cmd("PEXPIRETIME").arg(key).query(c)?;
    Ok(Some(KeyState {
        value,
        expire_at: (exp > 0).then_some(exp),
    }))
}

/// Reads every user key and every metadata record of the connection's database.
pub fn snapshot(c: &mut Connection) -> Snapshot {
    let mut snap = Snapshot {
        taken_at: now_ms(),
        ..Default::default()
    };
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    for k in keys {
        if k.starts_with(b"__geosync:m:") {
            let recs: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(&k).unwrap();
            for (key, rec) in recs {
                let rec = String::from_utf8_lossy(&rec).into_owned();
                let exp = rec.get(37..).and_then(|e| e.parse().ok());
                snap.meta.insert(
                    key,
                    (rec[..20].to_string(), rec.as_bytes()[20] as char, exp),
                );
            }
        } else if !k.starts_with(b"__geosync:")
            && let Some(s) = read_key(c, &k)
        {
            snap.keys.insert(k, s);
        }
    }
    snap
}

/// Keys expiring this close to now may legitimately be gone in one region
/// and not yet in another at the moment of reading.
const EXPIRY_MARGIN_MS: i64 = 1500;

fn volatile(s: Option<&KeyState>, now: i64) -> bool {
    s.and_then(|s| s.expire_at)
        .is_some_and(|e| e <= now + EXPIRY_MARGIN_MS)
}

/// Differences between two snapshots, one line each.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let now = a.taken_at.max(b.taken_at);
    let mut out = Vec::new();
    let mut keys: Vec<&Vec<u8>> = a.keys.keys().chain(b.keys.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (a.keys.get(k), b.keys.get(k));
        if x == y || volatile(x, now) || volatile(y, now) {
            continue;
        }
        out.push(format!(
            "key {:?}: {:?} vs {:?}",
            String::from_utf8_lossy(k),
            x,
            y
        ));
    }
    // Metadata: an expired value record counts as the tombstone it becomes.
    let norm = |m: Option<&(String, char, Option<i64>)>| {
        m.map(|(s, f, e)| match (f, e) {
            ('v', Some(e)) if *e <= now + EXPIRY_MARGIN_MS => (s.clone(), 't'),
            _ => (s.clone(), *f),
        })
    };
    let mut mkeys: Vec<&Vec<u8>> = a.meta.keys().chain(b.meta.keys()).collect();
    mkeys.sort();
    mkeys.dedup();
    for k in mkeys {
        let (x, y) = (norm(a.meta.get(k)), norm(b.meta.get(k)));
        if x != y {
            out.push(format!(
                "metadata of {:?}: {:?} vs {:?}",
                String::from_utf8_lossy(k),
                x,
                y
            ));
        }
    }
    out
}
