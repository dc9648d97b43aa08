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

/// Certificates for TLS tests, made at test time in a temp dir: a CA, a
/// server certificate it signed for `localhost` and `127.0.0.1` (IP SAN),
/// a client certificate it signed, and a second CA that signed nothing
/// here (a wrong CA).
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    pub fn generate() -> std::sync::Arc<TestCerts> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            (cert, Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>, names: &[&str], usage| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = usage;
            (params.signed_by(&key, issuer).unwrap(), key)
        };
        let (ca_cert, issuer) = ca("geosync test CA");
        let (other_cert, _) = ca("geosync other CA");
        // Redis also presents the server certificate as a client (replication,
        // Sentinel), so it may authenticate either side.
        let (server, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(
            &issuer,
            &["geosync-agent"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        std::sync::Arc::new(TestCerts {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            other_ca: write("other-ca.pem", other_cert.pem()),
            _dir: dir,
        })
    }

    /// The `geosync run` flags that reach a server with these certificates.
    pub fn agent_args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--redis-tls-ca".into(),
            p(&self.ca),
            "--redis-tls-cert".into(),
            p(&self.client_cert),
            "--redis-tls-key".into(),
            p(&self.client_key),
        ]
    }

    /// The redis-server arguments of a TLS-only server (`--port 0`) on
    /// `port` that wants a client certificate and also replicates over TLS.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let p = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }

    /// A test client's certificates (the agent's client certificate).
    pub fn client_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&self.client_cert).unwrap(),
                client_key: std::fs::read(&self.client_key).unwrap(),
            }),
            root_cert: Some(std::fs::read(&self.ca).unwrap()),
        }
    }
}

/// The server binary for TLS tests: `GEOSYNC_TEST_REDIS_SERVER` (or
/// `redis-server`) when it was built with TLS, else Debian's
/// `/usr/bin/redis-server`, which is. Decided once per test process and
/// printed; panics when neither has TLS, so that a TLS test never passes
/// without TLS.
pub fn tls_server_bin() -> String {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let configured = redis_server_bin();
            let fallback = "/usr/bin/redis-server".to_string();
            if has_tls(&configured) {
                println!("TLS tests run on {configured} (the configured server has TLS)");
                configured
            } else if has_tls(&fallback) {
                println!(
                    "TLS tests run on {fallback}: the configured server {configured} has no TLS built in"
                );
                fallback
            } else {
                panic!("neither {configured} nor {fallback} has TLS built in: TLS is not tested");
            }
        })
        .clone()
}

/// True when `bin` starts and listens on a TLS port.
fn has_tls(bin: &str) -> bool {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Ok(mut child) = Command::new(bin)
        .args(certs.server_args(port))
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let mut exited = false;
    let up = poll(Duration::from_secs(10), || {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    up.is_some() && !exited
}

/// A redis-server process in its own temp dir, killed on drop.
pub struct Redis {
    pub port: u16,
    pub password: Option<String>,
    /// TLS-only (`--port 0`) with these certificates.
    pub tls: Option<std::sync::Arc<TestCerts>>,
    bin: String,
    args: Vec<String>,
    child: Child,
    pub dir: tempfile::TempDir,
}

/// How to start a [`Redis`]: which binary, TLS, extra arguments.
#[derive(Default)]
pub struct RedisBuilder {
    bin: Option<String>,
    tls: Option<std::sync::Arc<TestCerts>>,
    args: Vec<String>,
}

impl RedisBuilder {
    /// Another server binary than [`redis_server_bin`].
    pub fn bin(mut self, bin: &str) -> Self {
        self.bin = Some(bin.to_string());
        self
    }

    /// TLS only, with client certificates required (see [`TestCerts::server_args`]).
    pub fn tls(mut self, certs: &std::sync::Arc<TestCerts>) -> Self {
        self.tls = Some(certs.clone());
        self
    }

    /// Extra redis-server arguments.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    pub fn start(self) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let password = self
            .args
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        let bin = self.bin.unwrap_or_else(redis_server_bin);
        let child = Redis::spawn(&bin, port, dir.path(), self.tls.as_deref(), &self.args);
        let mut r = Redis {
            port,
            password,
            tls: self.tls,
            bin,
            child,
            dir,
            args: self.args,
        };
        r.wait_up();
        r
    }
}

impl Redis {
    /// Starts a server with settings suited to tests (no persistence, no
    /// diskless-sync delay) plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Redis {
        Redis::builder().args(extra).start()
    }

    /// Like [`Redis::start`] with a given server binary, whatever
    /// `GEOSYNC_TEST_REDIS_SERVER` says (a module goes with its server).
    pub fn start_bin(bin: &str, extra: &[&str]) -> Redis {
        Redis::builder().bin(bin).args(extra).start()
    }

    /// A server with other than the default settings.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    fn spawn(bin: &str, port: u16, dir: &Path, tls: Option<&TestCerts>, extra: &[String]) -> Child {
        let listen = match tls {
            Some(certs) => certs.server_args(port),
            None => vec!["--port".into(), port.to_string()],
        };
        Command::new(bin)
            .args(listen)
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
        let client = self.client();
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
                client
                    .clone()
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
        self.child = Self::spawn(
            &self.bin,
            self.port,
            self.dir.path(),
            self.tls.as_deref(),
            &self.args,
        );
        self.wait_up();
    }

    /// The URL agents and clients use (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The `geosync run` flags besides `--redis` an agent needs to reach
    /// this server (the TLS files).
    pub fn agent_args(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(|t| t.agent_args())
            .unwrap_or_default()
    }

    /// A client for database 0, over TLS with the client certificate when
    /// the server is TLS.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        self.client_db(0)
    }

    fn client_db(&self, db: u32) -> redis::RedisResult<redis::Client> {
        let url = format!("{}/{db}", self.url());
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(url, certs.client_certificates()),
            None => redis::Client::open(url),
        }
    }

    /// A new client connection (database 0).
    pub fn conn(&self) -> Connection {
        self.conn_db(0)
    }

    /// A new client connection to database `db`.
    pub fn conn_db(&self, db: u32) -> Connection {
        self.client_db(db).unwrap().get_connection().unwrap()
    }

    /// A field of `INFO section` as a number (e.g. `stats`, `sync_full`).
    pub fn info_i64(&self, section: &str, field: &str) -> i64 {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The master's replication offset: what a replica that saw every
    /// write so far has read.
    pub fn master_repl_offset(&self) -> i64 {
        self.info_i64("replication", "master_repl_offset")
    }
}

/// A redis-server in sentinel mode watching one master as `mymaster`,
/// killed on drop. It speaks TLS (to its clients and to the servers it
/// watches) when the master does, with the same certificates and binary.
pub struct Sentinel {
    pub port: u16,
    tls: Option<std::sync::Arc<TestCerts>>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(master: &Redis) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let listen = match &master.tls {
            None => format!("port {port}\n"),
            Some(certs) => {
                // The same directives as the server's flags, one per line.
                let args = certs.server_args(port);
                let lines: Vec<String> = args
                    .chunks(2)
                    .map(|kv| format!("{} {}", &kv[0][2..], kv[1]))
                    .collect();
                lines.join("\n") + "\n"
            }
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n\
                 sentinel parallel-syncs mymaster 2\n",
                dir.path().display(),
                master.port,
            ),
        )
        .unwrap();
        let child = Command::new(&master.bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sentinel");
        let s = Sentinel {
            port,
            tls: master.tls.clone(),
            child,
            _dir: dir,
        };
        wait_until("sentinel up", Duration::from_secs(30), || {
            s.master().is_some()
        });
        s
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{}", self.port),
                certs.client_certificates(),
            ),
            None => redis::Client::open(format!("redis://127.0.0.1:{}", self.port)),
        }
    }

    pub fn conn(&self) -> Connection {
        self.client().unwrap().get_connection().unwrap()
    }

    /// The port of the master this sentinel names.
    pub fn master(&self) -> Option<u16> {
        let mut c = self.client().ok()?.get_connection().ok()?;
        let a: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut c)
            .ok()?;
        a.map(|(_, p)| p)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
            args.extend(agent_args.iter().map(|a| a.to_string()));
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

/// Writes 2000 keys `filler<i>` of 1000 bytes each: far more than a
/// 16 kB replication backlog holds, whatever its block size. Returns the
/// value written.
pub fn fill_past_backlog(c: &mut Connection, from: usize, to: usize) -> String {
    let filler = "x".repeat(1000);
    for i in from..to {
        let _: () = c.set(format!("filler{i}"), &filler).unwrap();
    }
    filler
}

/// The resume scenario, on any two-region mesh: region 1's agent is killed
/// after recording its position in database 1, writes go on in database 1
/// (the master does not repeat SELECT after a partial resync), and the
/// restarted agent continues the stream with PSYNC: region 1's Redis counts
/// one more partial resync and no full one, and the writes land in
/// database 1 of region 2.
pub fn partial_resync_after_agent_restart(mut mesh: Mesh) {
    const SETTLE: Duration = Duration::from_secs(30);
    let mut a1 = mesh.regions[0].redis.conn_db(1);
    let _: () = a1.set("x", "1").unwrap();
    mesh.wait_converged(&[0, 1], SETTLE);
    // Wait until the agent recorded the position after that write.
    let target = mesh.regions[0].redis.master_repl_offset();
    let agent = &mesh.regions[0].agent;
    wait_until(
        "the position after the db 1 write is recorded",
        SETTLE,
        || agent.recorded_offset() >= target,
    );
    let redis = &mesh.regions[0].redis;
    let (full, partial) = (
        redis.info_i64("stats", "sync_full"),
        redis.info_i64("stats", "sync_partial_ok"),
    );
    mesh.regions[0].agent.kill();
    // The master's stream is still in database 1: no SELECT precedes these.
    let _: () = a1.set("y", "2").unwrap();
    let _: () = a1.del("x").unwrap();
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0, 1], SETTLE);
    let redis = &mesh.regions[0].redis;
    assert_eq!(
        redis.info_i64("stats", "sync_partial_ok"),
        partial + 1,
        "the master continued the stream"
    );
    assert_eq!(redis.info_i64("stats", "sync_full"), full, "no full resync");
    let agent = &mesh.regions[0].agent;
    assert_eq!(agent.metric("geosync_sync_partial_ok_total"), 1.0);
    assert_eq!(agent.metric("geosync_sync_full_total"), 0.0);
    let mut b1 = mesh.regions[1].redis.conn_db(1);
    assert_eq!(
        b1.get::<_, Option<String>>("y").unwrap().as_deref(),
        Some("2")
    );
    assert!(!b1.exists::<_, bool>("x").unwrap());
    assert!(
        !mesh.regions[1].redis.conn().exists::<_, bool>("y").unwrap(),
        "nothing landed in db 0"
    );
}

/// A stamp at `time` (NTP64) made by `node`.
pub fn stamp_at(time: u64, node: u32) -> uhlc::Timestamp {
    uhlc::Timestamp::new(
        uhlc::NTP64(time),
        geosync::base::hlc::node_id_to_id(node).unwrap(),
    )
}

/// A change setting string `key` (database 0) to `value` at `at`.
pub fn string_put(key: &str, value: &str, at: &uhlc::Timestamp) -> geosync::base::change::Change {
    use serde_bytes::ByteBuf;
    geosync::base::change::Change {
        db: 0,
        key: ByteBuf::from(key.as_bytes().to_vec()),
        stamp: geosync::base::hlc::encode(at),
        op: geosync::base::change::Op::Put {
            value: geosync::base::change::Value::String(ByteBuf::from(value.as_bytes().to_vec())),
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
