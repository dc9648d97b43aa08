//! Measures what geosync's per-key metadata costs in Redis memory.
//!
//! Loads the same keys into two fresh redis-servers, one followed by a
//! geosync agent (which stamps every key), and compares Redis's own
//! `used_memory_dataset` (data without buffers and client overhead). Prints
//! the metadata bytes per key, and the ratio against what the user's key
//! itself costs, measured in the same run.
//!
//! ```text
//! cargo bench --bench metadata_memory            # 100000 keys
//! GEOSYNC_BENCH_KEYS=1000000 cargo bench --bench metadata_memory
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(
        std::env::var("GEOSYNC_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
    )
    .args([
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ])
    .arg("--dir")
    .arg(dir)
    .stdout(Stdio::null())
    .spawn()
    .expect("redis-server");
    let p = Proc(child);
    wait("redis", || conn(port).is_some());
    (p, port)
}

fn conn(port: u16) -> Option<redis::Connection> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection()
        .ok()?;
    redis::cmd("PING").query::<String>(&mut c).ok()?;
    Some(c)
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn info_field(c: &mut redis::Connection, field: &str) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO"))
}

fn load(c: &mut redis::Connection, n: usize, key_len: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            let key = format!("{:0>width$}", format!("k{i}"), width = key_len);
            p.cmd("SET").arg(key).arg("value-of-16-byte").ignore();
        }
        p.query::<()>(c).unwrap();
    }
}

fn stamped(admin: u16) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) else {
        return 0.0;
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("geosync_changes_stamped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn measure(n: usize, key_len: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Baseline: the keys alone.
    let (_plain, plain_port) = redis(&dir.path().join("plain").tap_mkdir());
    let mut plain = conn(plain_port).unwrap();
    let empty = info_field(&mut plain, "used_memory_dataset");
    load(&mut plain, n, key_len);
    let keys_only = info_field(&mut plain, "used_memory_dataset") - empty;

    // The same keys with geosync stamping them.
    let (_geo, geo_port) = redis(&dir.path().join("geo").tap_mkdir());
    let (listen, admin) = (free_port(), free_port());
    let _agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_geosync"))
            .args([
                "run",
                "--node-id",
                "1",
                "--redis",
                &format!("redis://127.0.0.1:{geo_port}"),
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("geosync"),
    );
    let mut geo = conn(geo_port).unwrap();
    wait("agent", || {
        stamped(admin) >= 0.0 && conn(geo_port).is_some()
    });
    let empty = info_field(&mut geo, "used_memory_dataset");
    load(&mut geo, n, key_len);
    wait("every key stamped", || stamped(admin) >= n as f64);
    let with_meta = info_field(&mut geo, "used_memory_dataset") - empty;
    let meta = with_meta - keys_only;
    println!(
        "keys={n} key_len={key_len}: key+value {:.1} B/key, geosync metadata {:.1} B/key, ratio metadata/key {:.2}",
        keys_only as f64 / n as f64,
        meta as f64 / n as f64,
        meta as f64 / keys_only as f64
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

fn main() {
    // Test runners list targets with `--list`; this is a benchmark, not a test.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("GEOSYNC_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for key_len in [8, 32] {
        measure(n, key_len);
    }
}
