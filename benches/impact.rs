//! What geosync costs the Redis it replicates, next to native replication.
//!
//! Three setups, each started fresh for every workload: (A) a plain Redis
//! alone, (B) a Redis with a native replica (`--replicaof`), (C) a
//! two-region geosync mesh (writes go to region 1, the peer is region 2).
//! The same four workloads run against each:
//!
//! 1. `redis-benchmark -t set -r 100000 -c 50 -n 300000` (no pipeline);
//! 2. the same with `-P 16 -n 1000000`;
//! 3. SETs over 100k keys drawn from a Zipf distribution (s = 1.0),
//!    pipelined 16 deep over several connections (500k writes);
//! 4. every data type: SET, INCR, HSET, SADD, ZADD, RPUSH+LTRIM (lists of
//!    at most 100 items), XADD with `MAXLEN ~ 100`, over 10k keys per type,
//!    pipelined 16 deep over several connections (300k writes; a
//!    RPUSH+LTRIM pair counts as one write).
//!
//! Each workload ends with a sentinel key written last on the origin; for
//! B and C the clock stops when it is on the replica or the peer, so
//! "arrival" covers every write. For each setup and workload it prints the
//! CPU time (utime + stime from `/proc/<pid>/stat`, from before the
//! workload until the sentinel arrived) per write of the origin Redis, of
//! the replica or peer Redis and of both agents, the client's write rate,
//! the rate of distinct keys arriving at the receiving side, the origin
//! Redis's CPU per write as a ratio of setup A's for the same workload
//! (the target is at most 1.5), and the agents' peak RSS.
//!
//! Then the latency part, for B and C: a rate-limited writer (no
//! pipeline, a few connections each at a share of the rate) writes
//! `lat:<i>` keys at 2,000 and then 20,000 writes/s while a subscriber on
//! the receiving Redis (keyspace notifications on) notes when each key
//! shows up there; it prints p50, p99 and max of write ->
//! arrival, the keys that never arrived, and the ratio C/B of the p99
//! (the target is at most 3 at 20k/s). Both ends use one monotonic clock.
//!
//! ```text
//! cargo bench --bench impact                            # 2 to 3 minutes on 2 cores
//! GEOSYNC_BENCH_WRITES_PCT=20 cargo bench --bench impact  # every workload at 20% of its writes
//! GEOSYNC_SEED=1234 cargo bench --bench impact          # replay the random workloads
//! ```
//!
//! Settings (environment):
//!
//! - `GEOSYNC_BENCH_WRITES_PCT`: scales every workload's number of writes
//!   (percent, default 100).
//! - `GEOSYNC_BENCH_SECONDS`: seconds of writing per latency rate (default 5).
//! - `GEOSYNC_SEED`: the seed of workloads 3 and 4 (default: from the
//!   clock; it is printed).
//! - `GEOSYNC_BENCH_WORKLOADS`: which workloads run (default `1,2,3,4`;
//!   `none` for the latency part only).
//! - `GEOSYNC_BENCH_RATES`: the latency part's rates in writes/s (default
//!   `2000,20000`; `none` skips it).
//! - `GEOSYNC_BENCH_THREADS`: connections of workloads 3 and 4 (default 4).
//! - `GEOSYNC_BENCH_LAT_CONNS`: connections of the latency writer, each at
//!   its share of the rate (default 4: on 2 cores one connection does not
//!   keep up 20k/s while geosync runs beside it).
//! - `GEOSYNC_BENCH_DEADLINE`: seconds to wait for a sentinel or for the
//!   last latency key before giving up (default 300).
//! - `GEOSYNC_BENCH_HASH_FIELDS`: fields of the hash of the last part
//!   (default 100000; 0 skips it).
//! - `GEOSYNC_TEST_REDIS_SERVER`, `GEOSYNC_AGENT_BIN`: the server and agent
//!   binaries, as for the tests (cargo builds a release agent beside the
//!   bench).
//!
//! CPU times come in clock ticks (`getconf CLK_TCK`, 100 when it cannot be
//! read: 10 ms resolution, small next to a workload's total).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use support::{Mesh, Redis, poll, user_key_count, wait_until};

/// The key written last in every workload.
const SENTINEL: &str = "impact:done";
/// The key that warms a setup up before a workload.
const PROBE: &str = "impact:probe";
/// Keys of the Zipf workload.
const ZIPF_KEYS: usize = 100_000;
/// Keys per type of the all-types workload.
const TYPE_KEYS: usize = 10_000;
/// Pipeline depth of the Rust writers.
const DEPTH: usize = 16;

struct Settings {
    /// Fields of the hash of the large-collection part (0: skipped).
    big_hash_fields: usize,
    pct: usize,
    seconds: usize,
    seed: u64,
    workloads: Vec<Workload>,
    rates: Vec<usize>,
    threads: usize,
    lat_conns: usize,
    deadline: Duration,
    clk_tck: f64,
    clk_tck_read: bool,
}

/// A comma-separated list of numbers from the environment; `none` is empty.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) if v.trim() == "none" => Vec::new(),
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`) and whether it was read.
fn clk_tck() -> (f64, bool) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(|t| (t, true))
        .unwrap_or((100.0, false))
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of
/// `/proc/<pid>/stat`; the process's threads included).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a command name in /proc/<pid>/stat") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields[14 - 3].parse().expect("utime");
    let stime: u64 = fields[15 - 3].parse().expect("stime");
    utime + stime
}

/// A field of `INFO section`, as text.
fn info_field(redis: &Redis, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut redis.conn())
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Plain,
    Replica,
    Geosync,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Plain => "A plain",
            Setup::Replica => "B replica",
            Setup::Geosync => "C geosync",
        }
    }
}

/// A running setup.
enum Env {
    Plain(Redis),
    Replica {
        master: Box<Redis>,
        replica: Box<Redis>,
    },
    Mesh(Mesh),
}

/// The processes whose CPU a row reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    OriginRedis,
    ReceiverRedis,
    OriginAgent,
    PeerAgent,
}

const ROLES: [Role; 4] = [
    Role::OriginRedis,
    Role::ReceiverRedis,
    Role::OriginAgent,
    Role::PeerAgent,
];

impl Env {
    fn start(setup: Setup) -> Env {
        let env = match setup {
            Setup::Plain => Env::Plain(Redis::start(&[])),
            Setup::Replica => {
                let master = Redis::start(&[]);
                let port = master.port.to_string();
                let replica = Redis::start(&["--replicaof", "127.0.0.1", &port]);
                wait_until(
                    "the replica's link up and its initial sync done",
                    Duration::from_secs(60),
                    || {
                        info_field(&replica, "replication", "master_link_status").as_deref()
                            == Some("up")
                            && info_field(&replica, "replication", "master_sync_in_progress")
                                .as_deref()
                                == Some("0")
                    },
                );
                Env::Replica {
                    master: Box::new(master),
                    replica: Box::new(replica),
                }
            }
            Setup::Geosync => Env::Mesh(Mesh::start(2)),
        };
        env.warm_up();
        env
    }

    /// Waits until a write on the origin reaches the receiving side, and
    /// its deletion too. Without this the first second of writes arrived
    /// up to a second late in B and in C: a replica that just synced (an
    /// agent tails Redis as one) gets the command stream once it has
    /// acknowledged, which it does once a second.
    fn warm_up(&self) {
        let Some(receiver) = self.receiver() else {
            return;
        };
        let (mut o, mut r) = (self.origin().conn(), receiver.conn());
        for present in [true, false] {
            let cmd = if present {
                redis::cmd("SET").arg(PROBE).arg(1).clone()
            } else {
                redis::cmd("DEL").arg(PROBE).clone()
            };
            let _: () = cmd.query(&mut o).expect("write the probe");
            wait_until(
                &format!("the probe {PROBE} (present: {present}) on the receiving side"),
                Duration::from_secs(60),
                || redis::cmd("EXISTS").arg(PROBE).query::<bool>(&mut r).ok() == Some(present),
            );
        }
    }

    /// Where the writes go.
    fn origin(&self) -> &Redis {
        match self {
            Env::Plain(r) => r,
            Env::Replica { master, .. } => master,
            Env::Mesh(m) => &m.regions[0].redis,
        }
    }

    /// Where they arrive: the replica or the peer region's Redis.
    fn receiver(&self) -> Option<&Redis> {
        match self {
            Env::Plain(_) => None,
            Env::Replica { replica, .. } => Some(replica),
            Env::Mesh(m) => Some(&m.regions[1].redis),
        }
    }

    fn pid(&self, role: Role) -> Option<u32> {
        match (self, role) {
            (_, Role::OriginRedis) => Some(self.origin().pid()),
            (_, Role::ReceiverRedis) => self.receiver().map(Redis::pid),
            (Env::Mesh(m), Role::OriginAgent) => m.regions[0].agent.pid(),
            (Env::Mesh(m), Role::PeerAgent) => m.regions[1].agent.pid(),
            _ => None,
        }
    }

    /// CPU ticks of every process of the setup, by role.
    fn ticks(&self) -> [Option<u64>; 4] {
        ROLES.map(|r| self.pid(r).map(cpu_ticks))
    }

    /// Peak RSS of the origin's and the peer's agent, in MiB.
    fn agent_rss(&self) -> Option<(f64, f64)> {
        match self {
            Env::Mesh(m) => Some((
                m.regions[0].agent.peak_rss_mib(),
                m.regions[1].agent.peak_rss_mib(),
            )),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Bench,
    BenchPipelined,
    Zipf,
    Types,
}

impl Workload {
    fn from_number(n: usize) -> Option<Workload> {
        match n {
            1 => Some(Workload::Bench),
            2 => Some(Workload::BenchPipelined),
            3 => Some(Workload::Zipf),
            4 => Some(Workload::Types),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Bench => "1 bench SET -c50",
            Workload::BenchPipelined => "2 bench SET -c50 -P16",
            Workload::Zipf => "3 zipf SET -P16",
            Workload::Types => "4 all types -P16",
        }
    }

    /// Writes at the default scale.
    fn default_writes(self) -> usize {
        match self {
            Workload::Bench => 300_000,
            Workload::BenchPipelined => 1_000_000,
            Workload::Zipf => 500_000,
            Workload::Types => 300_000,
        }
    }

    fn writes(self, s: &Settings) -> usize {
        (self.default_writes() * s.pct / 100).max(DEPTH)
    }

    /// Runs the workload against `origin` (without the sentinel); the
    /// client's rate in writes/s.
    fn run(self, origin: &Redis, n: usize, s: &Settings, zipf: &[f64]) -> f64 {
        match self {
            Workload::Bench => redis_benchmark(origin, n, 1),
            Workload::BenchPipelined => redis_benchmark(origin, n, DEPTH),
            Workload::Zipf => threaded(origin, n, s, |rng, p| {
                let k = zipf_rank(zipf, rng);
                p.cmd("SET")
                    .arg(format!("zipf:{k}"))
                    .arg(format!("v{:08}", rng.gen_range(0..100_000_000u32)))
                    .ignore();
            }),
            Workload::Types => threaded(origin, n, s, typed_write),
        }
    }
}

/// Runs redis-benchmark (`-t set -r 100000 -c 50`, pipelined `depth`
/// deep); its requests per second (or writes over the time it ran).
fn redis_benchmark(origin: &Redis, n: usize, depth: usize) -> f64 {
    let start = Instant::now();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &origin.port.to_string()])
        .args(["-t", "set", "-r", "100000", "-c", "50"])
        .args(["-n", &n.to_string(), "-P", &depth.to_string(), "-q"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-benchmark: {e} (install Debian's redis-tools)")
        });
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "redis-benchmark failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // `-q` prints progress lines ending in \r, then
    // "SET: 12345.67 requests per second, p50=...".
    stdout
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .filter_map(|l| l.trim().strip_prefix("SET:")?.split_whitespace().next())
        .filter_map(|v| v.parse::<f64>().ok())
        .next_back()
        .unwrap_or(n as f64 / took.as_secs_f64())
}

/// Writes `n` writes over `s.threads` connections, each `DEPTH` deep
/// pipelines; each thread's RNG is seeded from the seed and its number.
/// The client's rate in writes/s.
fn threaded(
    origin: &Redis,
    n: usize,
    s: &Settings,
    one: impl Fn(&mut StdRng, &mut redis::Pipeline) + Sync,
) -> f64 {
    let threads = s.threads.max(1);
    let one = &one;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let share = n / threads + usize::from(t < n % threads);
            let mut c = origin.conn();
            let seed = s.seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut left = share;
                while left > 0 {
                    let mut p = redis::pipe();
                    for _ in 0..left.min(DEPTH) {
                        one(&mut rng, &mut p);
                    }
                    left -= left.min(DEPTH);
                    p.query::<()>(&mut c)
                        .unwrap_or_else(|e| panic!("a pipelined write: {e}"));
                }
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// The cumulative weights of ranks 1..=`keys` with exponent `s`.
fn zipf_cdf(keys: usize, s: f64) -> Vec<f64> {
    let mut sum = 0.0;
    (1..=keys)
        .map(|k| {
            sum += 1.0 / (k as f64).powf(s);
            sum
        })
        .collect()
}

/// A rank (0 is the hottest key) drawn from `cdf`.
fn zipf_rank(cdf: &[f64], rng: &mut StdRng) -> usize {
    let u = rng.gen_range(0.0..cdf[cdf.len() - 1]);
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
}

/// One write of the all-types workload: a type, then a key of that type.
fn typed_write(rng: &mut StdRng, p: &mut redis::Pipeline) {
    let k = rng.gen_range(0..TYPE_KEYS);
    let v = rng.gen_range(0..1_000_000u32);
    match rng.gen_range(0..7) {
        0 => {
            p.cmd("SET").arg(format!("t:str:{k}")).arg(v).ignore();
        }
        1 => {
            p.cmd("INCR").arg(format!("t:cnt:{k}")).ignore();
        }
        2 => {
            let f = rng.gen_range(0..8);
            p.cmd("HSET")
                .arg(format!("t:hash:{k}"))
                .arg(format!("f{f}"))
                .arg(v)
                .ignore();
        }
        3 => {
            let m = rng.gen_range(0..16);
            p.cmd("SADD")
                .arg(format!("t:set:{k}"))
                .arg(format!("m{m}"))
                .ignore();
        }
        4 => {
            let m = rng.gen_range(0..16);
            p.cmd("ZADD")
                .arg(format!("t:zset:{k}"))
                .arg(v)
                .arg(format!("m{m}"))
                .ignore();
        }
        5 => {
            let key = format!("t:list:{k}");
            p.cmd("RPUSH").arg(&key).arg(v).ignore();
            p.cmd("LTRIM").arg(&key).arg(-100).arg(-1).ignore();
        }
        _ => {
            p.cmd("XADD")
                .arg(format!("t:stream:{k}"))
                .arg("MAXLEN")
                .arg("~")
                .arg(100)
                .arg("*")
                .arg("f")
                .arg(v)
                .ignore();
        }
    }
}

/// CPU µs per write by role, from ticks before and after `n` writes.
fn per_write(
    before: &[Option<u64>; 4],
    after: &[Option<u64>; 4],
    n: usize,
    clk_tck: f64,
) -> [Option<f64>; 4] {
    let mut out = [None; 4];
    for i in 0..4 {
        if let (Some(b), Some(a)) = (before[i], after[i]) {
            out[i] = Some(a.saturating_sub(b) as f64 / clk_tck * 1e6 / n as f64);
        }
    }
    out
}

/// One setup x workload.
struct Row {
    workload: Workload,
    setup: Setup,
    writes: usize,
    keys: usize,
    client_rate: f64,
    /// Distinct keys per second arriving at the replica or peer.
    arrival_rate: Option<f64>,
    /// CPU µs per write, by role.
    cpu_us: [Option<f64>; 4],
    rss: Option<(f64, f64)>,
    took: Duration,
}

fn run_workload(setup: Setup, w: Workload, s: &Settings, zipf: &[f64]) -> Row {
    let env = Env::start(setup);
    let origin = env.origin();
    let n = w.writes(s);
    let before = env.ticks();
    let start = Instant::now();
    let client_rate = w.run(origin, n, s, zipf);
    let _: () = redis::cmd("SET")
        .arg(SENTINEL)
        .arg(n)
        .query(&mut origin.conn())
        .expect("write the sentinel");
    if let Some(receiver) = env.receiver() {
        let mut c = receiver.conn();
        let want = n.to_string();
        wait_until(
            &format!("{SENTINEL} on the receiving side ({})", setup.name()),
            s.deadline,
            || {
                redis::cmd("GET")
                    .arg(SENTINEL)
                    .query::<Option<String>>(&mut c)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(want.as_str())
            },
        );
    }
    let took = start.elapsed();
    let after = env.ticks();
    let cpu_us = per_write(&before, &after, n, s.clk_tck);
    let keys = user_key_count(&mut origin.conn()).expect("count the keys written") - 1;
    Row {
        workload: w,
        setup,
        writes: n,
        keys,
        client_rate,
        arrival_rate: env.receiver().map(|_| keys as f64 / took.as_secs_f64()),
        cpu_us,
        rss: env.agent_rss(),
        took,
    }
}

/// One latency run: a setup at a rate.
struct LatRow {
    setup: Setup,
    rate: usize,
    sent: usize,
    achieved: f64,
    /// Writes sent later than their time by more than 1 ms.
    late: usize,
    arrived: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// CPU µs per write by role, from the first write until the last key
    /// arrived.
    cpu_us: [Option<f64>; 4],
}

/// Nanoseconds since `base`, plus one (zero means not yet).
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64 + 1
}

fn latency(setup: Setup, rate: usize, s: &Settings) -> LatRow {
    let env = Env::start(setup);
    let origin = env.origin();
    let receiver = env.receiver().expect("a receiving side");
    // Keyspace events on the receiving side, keeping flags already set
    // (an agent may want keyevents for evictions).
    let mut rc = receiver.conn();
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query(&mut rc)
        .expect("CONFIG GET notify-keyspace-events");
    let mut wanted = String::from("KA");
    if flags.contains('E') {
        wanted.push('E');
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query(&mut rc)
        .expect("CONFIG SET notify-keyspace-events");

    let n = (rate * s.seconds).max(1);
    let written: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let arrived_at: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let arrived = AtomicUsize::new(0);
    let late = AtomicUsize::new(0);
    let base = Instant::now();
    let conns = s.lat_conns.max(1);
    let mut send_span = Duration::ZERO;
    let (mut before, mut after) = ([None; 4], [None; 4]);

    std::thread::scope(|scope| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sub_client = receiver.client().expect("a client of the receiving side");
        let (written, arrived_at, arrived, late) = (&written, &arrived_at, &arrived, &late);
        scope.spawn(move || {
            let mut c = sub_client.get_connection().expect("connect the subscriber");
            let mut ps = c.as_pubsub();
            ps.psubscribe("__keyspace@0__:lat:*")
                .expect("PSUBSCRIBE __keyspace@0__:lat:*");
            ready_tx.send(()).unwrap();
            while let Ok(msg) = ps.get_message() {
                let now = stamp(base);
                let Some(rest) = msg.get_channel_name().strip_prefix("__keyspace@0__:lat:") else {
                    continue;
                };
                if rest == "stop" {
                    break;
                }
                // Any event on the key counts (geosync may build a key aside
                // and rename it into place); the first one wins.
                if let Ok(i) = rest.parse::<usize>()
                    && i < n
                    && arrived_at[i]
                        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    arrived.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the subscriber subscribed");

        before = env.ticks();
        // Write i is due at start + i / rate; connection c sends the writes
        // i with i % conns == c. A write that is behind goes at once.
        let start = Instant::now();
        let writers: Vec<_> = (0..conns)
            .map(|c| {
                let mut conn = origin.conn();
                scope.spawn(move || {
                    for i in (c..n).step_by(conns) {
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        } else if now - due > Duration::from_millis(1) {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        written[i].store(stamp(base), Ordering::SeqCst);
                        let _: () = redis::cmd("SET")
                            .arg(format!("lat:{i}"))
                            .arg(i)
                            .query(&mut conn)
                            .unwrap_or_else(|e| panic!("SET lat:{i}: {e}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a latency writer");
        }
        send_span = start.elapsed();

        poll(s.deadline, || arrived.load(Ordering::SeqCst) >= n);
        after = env.ticks();
        let _: () = redis::cmd("PUBLISH")
            .arg("__keyspace@0__:lat:stop")
            .arg("stop")
            .query(&mut receiver.conn())
            .expect("stop the subscriber");
    });

    let mut lat: Vec<Duration> = (0..n)
        .filter_map(|i| {
            let a = arrived_at[i].load(Ordering::SeqCst);
            let w = written[i].load(Ordering::SeqCst);
            (a != 0 && w != 0).then(|| Duration::from_nanos(a.saturating_sub(w)))
        })
        .collect();
    lat.sort();
    let cpu_us = per_write(&before, &after, n, s.clk_tck);
    let pct = |q: f64| {
        if lat.is_empty() {
            Duration::ZERO
        } else {
            lat[((lat.len() - 1) as f64 * q).round() as usize]
        }
    };
    LatRow {
        setup,
        rate,
        sent: n,
        achieved: n as f64 / send_span.as_secs_f64(),
        late: late.load(Ordering::Relaxed),
        arrived: arrived.load(Ordering::SeqCst),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or_default(),
        cpu_us,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn kilo(v: f64) -> String {
    format!("{:.1}k", v / 1000.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn print_rows(rows: &[Row], clk_tck: f64) {
    println!();
    println!(
        "CPU: µs of CPU per write (utime+stime at {clk_tck} ticks/s) of the origin Redis, the replica or peer Redis (rx), the origin and peer agents, and all of them"
    );
    println!(
        "ratio: origin Redis CPU per write / setup A's, same workload (target <= 1.5); keys/s@rx: distinct keys / time until the sentinel arrived"
    );
    println!(
        "{:<22} {:<10} {:>8} {:>7} {:>9} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>13} {:>7}",
        "workload",
        "setup",
        "writes",
        "keys",
        "client/s",
        "keys/s@rx",
        "origin",
        "ratio",
        "rx redis",
        "o.agent",
        "p.agent",
        "all",
        "agent RSS MiB",
        "secs"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.workload == r.workload && b.setup == Setup::Plain)
            .and_then(|b| b.cpu_us[0]);
        let ratio = match (r.cpu_us[0], base) {
            (Some(o), Some(b)) if b > 0.0 => Some(o / b),
            _ => None,
        };
        let all: f64 = r.cpu_us.iter().flatten().sum();
        println!(
            "{:<22} {:<10} {:>8} {:>7} {:>9} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>13} {:>7.1}",
            r.workload.name(),
            r.setup.name(),
            r.writes,
            r.keys,
            kilo(r.client_rate),
            r.arrival_rate.map_or_else(|| "-".to_string(), kilo),
            opt(r.cpu_us[0], 2),
            opt(ratio, 2),
            opt(r.cpu_us[1], 2),
            opt(r.cpu_us[2], 2),
            opt(r.cpu_us[3], 2),
            format!("{all:.2}"),
            r.rss
                .map_or_else(|| "-".to_string(), |(o, p)| format!("{o:.1} / {p:.1}")),
            r.took.as_secs_f64(),
        );
    }
}

fn print_latency(rows: &[LatRow], conns: usize) {
    println!();
    println!(
        "latency write -> arrival on the replica / peer (ms), one monotonic clock; {conns} writer connection(s), no pipeline"
    );
    println!(
        "late: writes sent over 1 ms after their time; CPU µs per write (first write until the last arrival) as above"
    );
    println!(
        "{:<10} {:>8} {:>10} {:>8} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "setup",
        "rate/s",
        "achieved/s",
        "sent",
        "late",
        "arrived",
        "missing",
        "p50",
        "p99",
        "max",
        "origin",
        "rx redis",
        "o.agent",
        "p.agent",
        "all"
    );
    for r in rows {
        println!(
            "{:<10} {:>8} {:>10.0} {:>8} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.2}",
            r.setup.name(),
            r.rate,
            r.achieved,
            r.sent,
            r.late,
            r.arrived,
            r.sent - r.arrived,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            opt(r.cpu_us[0], 2),
            opt(r.cpu_us[1], 2),
            opt(r.cpu_us[2], 2),
            opt(r.cpu_us[3], 2),
            r.cpu_us.iter().flatten().sum::<f64>(),
        );
    }
    let rates: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().map(|r| r.rate).collect();
        v.dedup();
        v
    };
    for rate in rates {
        let p99 = |setup| {
            rows.iter()
                .find(|r| r.rate == rate && r.setup == setup)
                .map(|r| r.p99)
        };
        if let (Some(b), Some(c)) = (p99(Setup::Replica), p99(Setup::Geosync)) {
            println!(
                "p99 ratio C/B at {rate}/s: {:.2} ({} ms / {} ms)",
                c.as_secs_f64() / b.as_secs_f64().max(1e-9),
                ms(c),
                ms(b)
            );
        }
    }
}

fn main() {
    if support::listing_only() {
        return;
    }
    let (clk_tck, clk_tck_read) = clk_tck();
    let s = Settings {
        pct: support::env_usize("GEOSYNC_BENCH_WRITES_PCT", 100).max(1),
        seconds: support::env_usize("GEOSYNC_BENCH_SECONDS", 5).max(1),
        seed: support::seed_from_env(),
        workloads: env_list("GEOSYNC_BENCH_WORKLOADS", &[1, 2, 3, 4])
            .into_iter()
            .filter_map(Workload::from_number)
            .collect(),
        rates: env_list("GEOSYNC_BENCH_RATES", &[2_000, 20_000]),
        threads: support::env_usize("GEOSYNC_BENCH_THREADS", 4).max(1),
        lat_conns: support::env_usize("GEOSYNC_BENCH_LAT_CONNS", 4).max(1),
        deadline: Duration::from_secs(support::env_usize("GEOSYNC_BENCH_DEADLINE", 300) as u64),
        clk_tck,
        clk_tck_read,
        big_hash_fields: support::env_usize("GEOSYNC_BENCH_HASH_FIELDS", 100_000),
    };
    let server = support::redis_server_bin();
    let version = Command::new(&server)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("impact: geosync's cost to the Redis it replicates, next to native replication");
    println!("server: {server} ({version})");
    println!("agent: {}", geosync::lab::agent::agent_bin().display());
    println!(
        "seed={} (replay with GEOSYNC_SEED={}); writes at {}% (GEOSYNC_BENCH_WRITES_PCT); {} s per latency rate; {} writer thread(s) for workloads 3-4",
        s.seed, s.seed, s.pct, s.seconds, s.threads
    );
    if !s.clk_tck_read {
        println!("CLK_TCK could not be read: assuming 100 ticks/s");
    }
    let total = Instant::now();
    let zipf = zipf_cdf(ZIPF_KEYS, 1.0);

    let mut rows = Vec::new();
    for &w in &s.workloads {
        for setup in [Setup::Plain, Setup::Replica, Setup::Geosync] {
            let row = run_workload(setup, w, &s, &zipf);
            eprintln!(
                "impact: {} on {}: {} writes in {:.1} s",
                w.name(),
                setup.name(),
                row.writes,
                row.took.as_secs_f64()
            );
            rows.push(row);
        }
    }
    if !rows.is_empty() {
        print_rows(&rows, s.clk_tck);
    }

    let mut lat = Vec::new();
    for &rate in &s.rates {
        for setup in [Setup::Replica, Setup::Geosync] {
            let row = latency(setup, rate, &s);
            eprintln!(
                "impact: latency on {} at {rate}/s: {} of {} arrived",
                setup.name(),
                row.arrived,
                row.sent
            );
            lat.push(row);
        }
    }
    if !lat.is_empty() {
        print_latency(&lat, s.lat_conns);
    }
    if s.big_hash_fields > 0 {
        big_hash(&s);
    }
    println!();
    println!("total {:.0} s", total.elapsed().as_secs_f64());
}

/// The cost of a small write to a large collection: a key travels as its
/// whole state, so one `HSET` on a hash of many fields makes the stamp
/// script read, digest and ship all of them, and the peer rebuild it.
/// Prints, per `HSET`, the time until it is on the peer and the CPU the
/// origin and peer Redis spent, next to the same `HSET`s on a plain Redis.
fn big_hash(s: &Settings) {
    const WRITES: usize = 5;
    let hset = |c: &mut redis::Connection, n: usize| {
        let _: () = redis::cmd("HSET")
            .arg("big")
            .arg("field:1")
            .arg(format!("changed {n}"))
            .query(c)
            .expect("HSET");
    };
    let fill = |r: &Redis| {
        let mut c = r.conn();
        for chunk in (0..s.big_hash_fields).collect::<Vec<_>>().chunks(1000) {
            let mut p = redis::pipe();
            for i in chunk {
                p.cmd("HSET")
                    .arg("big")
                    .arg(format!("field:{i}"))
                    .arg(format!("value:{i}"))
                    .ignore();
            }
            p.query::<()>(&mut c).expect("fill the hash");
        }
    };
    let field_on = |r: &Redis, n: usize| {
        let mut c = r.conn();
        move || {
            redis::cmd("HGET")
                .arg("big")
                .arg("field:1")
                .query::<Option<String>>(&mut c)
                .ok()
                .flatten()
                == Some(format!("changed {n}"))
        }
    };
    let plain = Redis::start(&[]);
    fill(&plain);
    // Enough writes for the plain figure to span many CPU ticks.
    const PLAIN_WRITES: usize = 20_000;
    let before = cpu_ticks(plain.pid());
    let mut c = plain.conn();
    for n in 0..PLAIN_WRITES {
        hset(&mut c, n);
    }
    let plain_us = (cpu_ticks(plain.pid()) - before) as f64 * 1e6 / s.clk_tck / PLAIN_WRITES as f64;
    drop(plain);

    let mesh = Mesh::start(2);
    let (origin, peer) = (&mesh.regions[0].redis, &mesh.regions[1].redis);
    fill(origin);
    let mut pc = peer.conn();
    wait_until("the whole hash on the peer", s.deadline, || {
        redis::cmd("HLEN").arg("big").query::<usize>(&mut pc).ok() == Some(s.big_hash_fields)
    });
    let mut c = origin.conn();
    let mut took = Vec::new();
    let ticks = |r: &Redis| cpu_ticks(r.pid());
    let (o0, p0) = (ticks(origin), ticks(peer));
    for n in 0..WRITES {
        let start = Instant::now();
        hset(&mut c, n);
        wait_until("the HSET on the peer", s.deadline, field_on(peer, n));
        took.push(start.elapsed());
    }
    let per = |t0: u64, r: &Redis| (ticks(r) - t0) as f64 * 1e3 / s.clk_tck / WRITES as f64;
    let (o_ms, p_ms) = (per(o0, origin), per(p0, peer));
    took.sort();
    println!();
    println!(
        "one HSET on a hash of {} fields, {WRITES} times, one at a time: plain Redis {:.1} µs CPU each; with geosync origin Redis {:.1} ms CPU, peer Redis {:.1} ms CPU, on the peer after {} ms (median; max {} ms)",
        s.big_hash_fields,
        plain_us,
        o_ms,
        p_ms,
        ms(took[WRITES / 2]),
        ms(took[WRITES - 1]),
    );
}
