//! redis-server processes: which binary (with TLS or not), started on a
//! free port in a temp dir with test settings, killed on drop.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Connection;

use super::certs::TestCerts;
use super::env::free_port;
use super::wait::{poll, wait_until};

/// The Redis server binary: `GEOSYNC_TEST_REDIS_SERVER` or `redis-server`.
pub fn redis_server_bin() -> String {
    std::env::var("GEOSYNC_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
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
    pub(super) bin: String,
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

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
