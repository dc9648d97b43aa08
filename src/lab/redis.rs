//! redis-server processes: started on a free port in a temp dir with
//! settings suited to a lab (no persistence, no diskless-sync delay),
//! killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::env::free_port;
use super::wait::wait_until;

/// The longest a lab connection waits for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The Redis server binary: `GEOSYNC_TEST_REDIS_SERVER`, or `redis-server`
/// from the PATH.
pub fn redis_server_bin() -> String {
    std::env::var("GEOSYNC_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The files of a TLS-only server and of the clients that reach it: a CA,
/// the server's certificate and key, a client certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed both certificates.
    pub ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// The certificate agents and clients present.
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl TlsFiles {
    /// The redis-server arguments of a TLS-only server (`--port 0`) on
    /// `port` that wants a client certificate and replicates over TLS.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path_arg(&self.server_cert),
            "--tls-key-file".into(),
            path_arg(&self.server_key),
            "--tls-ca-cert-file".into(),
            path_arg(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }

    /// The `geosync run` flags that reach such a server.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--redis-tls-ca".into(),
            path_arg(&self.ca),
            "--redis-tls-cert".into(),
            path_arg(&self.client_cert),
            "--redis-tls-key".into(),
            path_arg(&self.client_key),
        ]
    }

    /// A client's certificates, for `redis::Client::build_with_tls`.
    pub fn client_certificates(&self) -> std::io::Result<redis::TlsCertificates> {
        Ok(redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&self.client_cert)?,
                client_key: std::fs::read(&self.client_key)?,
            }),
            root_cert: Some(std::fs::read(&self.ca)?),
        })
    }
}

/// A redis-server process in its own temp dir, killed on drop.
pub struct Redis {
    /// The port it listens on (its TLS port when TLS-only).
    pub port: u16,
    /// The `--requirepass` it was given.
    pub password: Option<String>,
    /// TLS-only with these files.
    pub tls: Option<TlsFiles>,
    /// The server binary.
    pub bin: String,
    args: Vec<String>,
    child: Child,
    /// Its working directory (`redis.log` is there).
    pub dir: tempfile::TempDir,
}

/// How to start a [`Redis`]: which binary, TLS, extra arguments.
#[derive(Default, Clone)]
pub struct RedisBuilder {
    bin: Option<String>,
    tls: Option<TlsFiles>,
    args: Vec<String>,
}

impl RedisBuilder {
    /// Another server binary than [`redis_server_bin`].
    pub fn bin(mut self, bin: &str) -> Self {
        self.bin = Some(bin.to_string());
        self
    }

    /// TLS only, with client certificates required.
    pub fn tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Extra redis-server arguments.
    pub fn args<S: AsRef<str>>(mut self, extra: &[S]) -> Self {
        self.args
            .extend(extra.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Starts the server and waits until it answers PING; panics with its
    /// log if it exits instead.
    pub fn start(self) -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir for redis-server");
        let port = free_port();
        let password = self
            .args
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        let bin = self.bin.unwrap_or_else(redis_server_bin);
        let child = Redis::spawn(&bin, port, dir.path(), self.tls.as_ref(), &self.args);
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
    /// Starts a server with lab settings plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Redis {
        Redis::builder().args(extra).start()
    }

    /// Like [`Redis::start`] with a given server binary.
    pub fn start_bin(bin: &str, extra: &[&str]) -> Redis {
        Redis::builder().bin(bin).args(extra).start()
    }

    /// A server with other than the default settings.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    fn spawn(bin: &str, port: u16, dir: &Path, tls: Option<&TlsFiles>, extra: &[String]) -> Child {
        let listen = match tls {
            Some(t) => t.server_args(port),
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
        let log = self.log_path();
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

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The process id (for signals: stop, continue).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server and starts it again on the same port. It has no
    /// persistence, so it comes back empty, with a new replication id.
    pub fn restart_empty(&mut self) {
        self.restart_with(None);
    }

    /// Saves the dataset now (`SAVE`) and keeps a copy of the file under
    /// `name` in the server's directory, for [`Redis::restart_from`].
    pub fn save_copy(&self, name: &str) -> PathBuf {
        let _: () = redis::cmd("SAVE")
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("SAVE on port {}: {e}", self.port));
        let copy = self.dir.path().join(name);
        std::fs::copy(self.dir.path().join("dump.rdb"), &copy)
            .unwrap_or_else(|e| panic!("copy the dump of port {}: {e}", self.port));
        copy
    }

    /// Kills the server (SIGKILL) and starts it again on the same port from
    /// the dataset in `dump` (a file [`Redis::save_copy`] kept): a Redis
    /// restarted from an older snapshot than its last state, with a new
    /// replication id.
    pub fn restart_from(&mut self, dump: &Path) {
        self.restart_with(Some(dump));
    }

    /// Kills the server and starts it again from `dump`, or empty.
    fn restart_with(&mut self, dump: Option<&Path>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let file = self.dir.path().join("dump.rdb");
        match dump {
            Some(d) => {
                std::fs::copy(d, &file).unwrap_or_else(|e| panic!("put back {}: {e}", d.display()));
            }
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
        self.child = Self::spawn(
            &self.bin,
            self.port,
            self.dir.path(),
            self.tls.as_ref(),
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

    /// A client for database `db`.
    pub fn client_db(&self, db: u32) -> redis::RedisResult<redis::Client> {
        let url = format!("{}/{db}", self.url());
        match &self.tls {
            Some(t) => redis::Client::build_with_tls(url, t.client_certificates()?),
            None => redis::Client::open(url),
        }
    }

    /// A new client connection (database 0); panics if there is none.
    pub fn conn(&self) -> redis::Connection {
        self.conn_db(0)
    }

    /// A new client connection to geosync's metadata database
    /// (`--metadata-db`, as this process was told).
    pub fn meta_conn(&self) -> redis::Connection {
        self.conn_db(crate::store::metadata_db())
    }

    /// The metadata record of `key` of database `db`, if it has one.
    pub fn record(&self, db: u32, key: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(crate::store::meta_bucket(db, key.as_bytes()))
            .arg(key)
            .query(&mut self.meta_conn())
            .unwrap_or_else(|e| panic!("read the record of {key} on port {}: {e}", self.port))
    }

    /// A new client connection to database `db`; panics if there is none.
    /// A reply that takes over [`REPLY_TIMEOUT`] is an error, so that a
    /// server that stops answering fails the step that waits for it.
    pub fn conn_db(&self, db: u32) -> redis::Connection {
        let c = self
            .client_db(db)
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to redis on port {}: {e}", self.port));
        c.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| c.set_write_timeout(Some(REPLY_TIMEOUT)))
            .unwrap_or_else(|e| panic!("set timeouts on a connection to port {}: {e}", self.port));
        c
    }

    /// A field of `INFO section` as a number (e.g. `stats`, `sync_full`).
    pub fn info_i64(&self, section: &str, field: &str) -> i64 {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("INFO {section}: {e}"));
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{field} in INFO {section}: {e}"))
    }

    /// The master's replication offset: what a replica that saw every
    /// write so far has read.
    pub fn master_repl_offset(&self) -> i64 {
        self.info_i64("replication", "master_repl_offset")
    }

    /// The databases that hold keys (`INFO keyspace`).
    pub fn databases_in_use(&self) -> Vec<u32> {
        databases_in_use(&mut self.conn()).unwrap_or_default()
    }
}

/// The databases that hold keys, from `INFO keyspace`.
pub fn databases_in_use(c: &mut redis::Connection) -> redis::RedisResult<Vec<u32>> {
    let info: String = redis::cmd("INFO").arg("keyspace").query(c)?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect())
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
