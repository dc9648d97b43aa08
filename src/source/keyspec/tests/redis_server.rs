//! A real redis-server per test, killed on drop: `GEOSYNC_TEST_REDIS_SERVER`
//! (as the integration tests; `scripts/test.sh` runs these tests against
//! every server it tests), else `redis-server`.

use redis::aio::MultiplexedConnection;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// The server binary the tests run.
    pub(super) fn bin() -> String {
        std::env::var("GEOSYNC_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
    }

    pub(super) fn start() -> Self {
        let bin = Self::bin();
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("pick a free port")
                .port();
            let dir =
                std::env::temp_dir().join(format!("geosync-keyspec-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create redis dir");
            let mut child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port, dir };
                }
                if child.try_wait().expect("poll redis-server").is_some()
                    || Instant::now() > deadline
                {
                    // Port taken in the meantime (or a slow start): try another port.
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start {bin}");
    }

    /// A client for the server (RESP2).
    pub(super) fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client")
    }

    pub(super) async fn connect(&self, resp3: bool) -> MultiplexedConnection {
        let proto = if resp3 { "?protocol=resp3" } else { "" };
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/{proto}", self.port))
            .expect("client");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
