//! Peak memory of parsing an RDB snapshot with huge collections: the full
//! decoder (`RdbReader::next_entry`) against the key-only mode
//! (`RdbReader::next_key`) that the tailer uses to report a snapshot's keys.
//!
//! Observed bound: key-only mode stays under 8 MiB peak RSS regardless of
//! value sizes: 3.5-3.8 MiB in every run, of which ~2.5 MiB is the process
//! before parsing (the rest is mostly the 1 MiB read buffer), the same for
//! 200 000, 2 000 000 and 5 000 000 members per collection. The full
//! decoder's peak grows with the largest value (34 MiB, 278 MiB and 690 MiB
//! in those runs).
//!
//! Starts a real redis-server (`/usr/bin/redis-server`, or
//! `GEOSYNC_TEST_REDIS_SERVER`) on a free port in a temporary directory with
//! `--save "" --appendonly no`, and writes one hash with N fields (LZF
//! compressible values), one list, one set and one sorted set with N members
//! each (pipelines of 10 000 members, 1 000 per command), plus K plain keys
//! (`DEBUG POPULATE`, or pipelined `SET` where DEBUG is not allowed). After
//! `SAVE`, the dump is parsed twice, each time in a fresh child process (this
//! binary re-executed as `--child full|keys FILE`), which reports its peak RSS
//! (`VmHWM` from /proc/self/status) at the end. One line per mode: file size,
//! peak RSS (and the full/keys ratio), parse time and throughput.
//!
//! ```text
//! cargo bench --bench rdb_memory          # N = 2 000 000, K = 1 000 000
//! GEOSYNC_BENCH_MEMBERS=200000 GEOSYNC_BENCH_KEYS=100000 cargo bench --bench rdb_memory
//! ```

use std::fs::File;
use std::hint::black_box;
use std::io::BufReader;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geosync::source::rdb::{RdbEntry, RdbReader};

const MIB: f64 = 1024.0 * 1024.0;
/// Members sent per pipeline round trip.
const PIPELINE: usize = 10_000;
/// Members per variadic command inside a pipeline.
const PER_COMMAND: usize = 1_000;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn conn(port: u16) -> Option<redis::Connection> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection()
        .ok()?;
    redis::cmd("PING").query::<String>(&mut c).ok()?;
    Some(c)
}

/// Starts redis-server in `dir`; first with DEBUG enabled for local clients
/// (Redis 7+), then, if that option is unknown, without it.
fn start_redis(dir: &Path) -> (Proc, redis::Connection) {
    let bin = std::env::var("GEOSYNC_TEST_REDIS_SERVER")
        .unwrap_or_else(|_| "/usr/bin/redis-server".into());
    for extra in [&["--enable-debug-command", "local"][..], &[]] {
        let port = free_port();
        let mut proc = Proc(
            Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(extra)
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(c) = conn(port) {
                return (proc, c);
            }
            if proc.0.try_wait().unwrap().is_some() {
                break; // exited: maybe an unknown option
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    panic!("redis-server did not start:\n{log}");
}

/// Adds `n` members to `key` with `cmd`, `args(i)` giving each member's
/// arguments, in pipelines of [`PIPELINE`] members.
fn fill(
    c: &mut redis::Connection,
    cmd: &str,
    key: &str,
    n: usize,
    mut args: impl FnMut(usize, &mut redis::Cmd),
) {
    let mut i = 0;
    while i < n {
        let end = (i + PIPELINE).min(n);
        let mut p = redis::pipe();
        while i < end {
            let stop = (i + PER_COMMAND).min(end);
            let mut command = redis::cmd(cmd);
            command.arg(key);
            for j in i..stop {
                args(j, &mut command);
            }
            p.add_command(command).ignore();
            i = stop;
        }
        p.query::<()>(c)
            .unwrap_or_else(|e| panic!("{cmd} {key}: {e}"));
    }
}

fn plain_keys(c: &mut redis::Connection, n: usize) {
    let populated: redis::RedisResult<()> = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(n)
        .arg("plain")
        .arg(16)
        .query(c);
    if populated.is_ok() {
        return;
    }
    let mut i = 0;
    while i < n {
        let end = (i + PIPELINE).min(n);
        let mut p = redis::pipe();
        for j in i..end {
            p.cmd("SET")
                .arg(format!("plain:{j}"))
                .arg(format!("value:{j}"))
                .ignore();
        }
        p.query::<()>(c).unwrap();
        i = end;
    }
}

/// Writes the data set and saves it; returns the dump's path.
fn make_dump(dir: &Path, members: usize, keys: usize) -> PathBuf {
    let (_server, mut c) = start_redis(dir);
    let start = Instant::now();
    fill(&mut c, "HSET", "big:hash", members, |i, cmd| {
        cmd.arg(format!("field:{i}")).arg(format!("value-{i:0>32}"));
    });
    fill(&mut c, "RPUSH", "big:list", members, |i, cmd| {
        cmd.arg(format!("member:{i}"));
    });
    fill(&mut c, "SADD", "big:set", members, |i, cmd| {
        cmd.arg(format!("member:{i}"));
    });
    fill(&mut c, "ZADD", "big:zset", members, |i, cmd| {
        cmd.arg(i as f64 / 3.0).arg(format!("member:{i}"));
    });
    plain_keys(&mut c, keys);
    let dbsize: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    eprintln!(
        "rdb_memory: wrote {dbsize} keys and saved in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    dir.join("dump.rdb")
}

/// Peak resident set size of this process so far, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Child process: parses `path` in `mode` like the tailer does (1 MiB
/// buffered file), then prints what the parent needs.
fn child(mode: &str, path: &str) {
    let baseline = vm_hwm_kib();
    let start = Instant::now();
    let file = BufReader::with_capacity(1 << 20, File::open(path).expect("dump file"));
    let mut rdb = RdbReader::new(file).expect("RDB header");
    let mut keys = 0u64;
    match mode {
        "full" => {
            while let Some(entry) = rdb.next_entry().expect("full parse") {
                if let RdbEntry::Key(k) = entry {
                    keys += 1;
                    black_box(&k);
                }
            }
        }
        "keys" => {
            while let Some(k) = rdb.next_key().expect("key-only parse") {
                keys += 1;
                black_box(&k);
            }
        }
        other => panic!("unknown mode {other}"),
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "keys={keys} secs={secs} hwm_kib={} baseline_kib={baseline}",
        vm_hwm_kib()
    );
}

struct ChildResult {
    keys: u64,
    secs: f64,
    hwm_kib: u64,
    baseline_kib: u64,
}

fn run_child(mode: &str, dump: &Path) -> ChildResult {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", mode])
        .arg(dump)
        .stderr(Stdio::inherit())
        .output()
        .expect("child process");
    assert!(out.status.success(), "{mode} child failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> &str {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name} in child output {text:?}"))
    };
    ChildResult {
        keys: field("keys").parse().unwrap(),
        secs: field("secs").parse().unwrap(),
        hwm_kib: field("hwm_kib").parse().unwrap(),
        baseline_kib: field("baseline_kib").parse().unwrap(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Test runners list targets with `--list`; this is a benchmark, not a test.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], &args[i + 2]);
        return;
    }
    let members = env_usize("GEOSYNC_BENCH_MEMBERS", 2_000_000);
    let keys = env_usize("GEOSYNC_BENCH_KEYS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let dump = make_dump(dir.path(), members, keys);
    let size = std::fs::metadata(&dump).unwrap().len() as f64;
    println!("rdb_memory: {members} members in each of a hash/list/set/zset, {keys} plain keys");
    let full = run_child("full", &dump);
    let key_only = run_child("keys", &dump);
    assert_eq!(
        full.keys, key_only.keys,
        "both modes must see the same keys"
    );
    let ratio = full.hwm_kib as f64 / key_only.hwm_kib as f64;
    for (label, r, extra) in [
        ("full (next_entry)", &full, String::new()),
        (
            "keys (next_key)  ",
            &key_only,
            format!(", full/keys {ratio:.1}x"),
        ),
    ] {
        println!(
            "rdb_memory {label}: file {:.1} MiB, peak RSS {:.1} MiB (process baseline {:.1} MiB){extra}, parse {:.2} s, {:.1} MB/s, {} keys",
            size / MIB,
            r.hwm_kib as f64 / 1024.0,
            r.baseline_kib as f64 / 1024.0,
            r.secs,
            size / 1e6 / r.secs,
            r.keys
        );
    }
}
