//! Convergence under a random concurrent workload: three regions write at the
//! same time to an overlapping key space with every data type, transactions,
//! scripts, multi-key commands, TTLs and FLUSHDB, and must end identical
//! (data, expiries and metadata) once the writers stop.
//!
//! Replay: every run prints, at the start and again on failure, one command
//! that runs the test again with the same settings (`GEOSYNC_SEED`,
//! `GEOSYNC_TEST_OPS` where the test reads it, `GEOSYNC_TEST_REDIS_SERVER`):
//! `replay: GEOSYNC_SEED=N ... cargo nextest run --test convergence NAME`. Each writer
//! derives its RNG from the seed and its region index, so the sequence of
//! operations each writer issues is the same for the same seed. The
//! interleaving across regions (and with the agents' replication) is not
//! replayable: it depends on scheduling. A seed that failed once may need a
//! few runs to fail again.
//!
//! `GEOSYNC_TEST_OPS` sets the operations per writer (default 1500).

mod support;

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis::{Commands, Connection, RedisError, RedisResult, Value};
use support::*;

const SETTLE: Duration = Duration::from_secs(20);

/// Keys per pool; the first `HOT` of each pool take a large share of the
/// operations so that regions write the same keys at the same time often.
const KEYS_PER_POOL: usize = 60;
const HOT: usize = 6;

/// Key pools (`POOLS`), one per kind of value. The pools keep the random mix free of
/// errors other than WRONGTYPE (a "not an integer" or "not a valid float"
/// would otherwise appear as soon as a text string meets INCR):
/// - text strings only ever live in `str:` (SET/APPEND/SETRANGE/MSET of text
///   never stray to other pools, and `str:` keys are only renamed or copied
///   within `str:`);
/// - `int:` holds integer strings or collections; INCR may stray into the
///   collection pools, so those may hold integer strings too;
/// - `flt:` holds numbers or collections (INCRBYFLOAT never strays);
/// - collection commands stray into every pool (WRONGTYPE, or a collection
///   created under another pool's name, which the rules above allow);
/// - RENAME/COPY/MOVE stay within one pool, or go from a collection pool to
///   another collection pool;
/// - hash fields `n0..n3` only hold integers (HINCRBY), `f0..f7` text.
const STR: &str = "str";
const INT: &str = "int";
const FLT: &str = "flt";
const LIST: &str = "list";
const SET: &str = "set";
const ZSET: &str = "zset";
const HASH: &str = "hash";
const STREAM: &str = "strm";
const POOLS: [&str; 8] = [STR, INT, FLT, LIST, SET, ZSET, HASH, STREAM];
const COLLECTIONS: [&str; 5] = [LIST, SET, ZSET, HASH, STREAM];

/// Scripts that write two or three keys: source, the pool of each KEYS entry
/// (`*`: any pool), number of keys. A WRONGTYPE inside aborts the script after its earlier
/// writes, which stay and are replicated: that is part of the test.
const SCRIPTS: [(&str, [&str; 3], usize); 4] = [
    // str, list
    (
        "redis.call('SET', KEYS[1], ARGV[1]) redis.call('RPUSH', KEYS[2], ARGV[2]) return 1",
        [STR, LIST, ""],
        2,
    ),
    // int, set, hash
    (
        "redis.call('INCR', KEYS[1]) redis.call('SADD', KEYS[2], ARGV[1]) redis.call('HINCRBY', KEYS[3], 'n' .. (tonumber(ARGV[2]) % 4), 1) return 1",
        [INT, SET, HASH],
        3,
    ),
    // zset, stream, any (deleted)
    (
        "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) redis.call('XADD', KEYS[2], '*', 'f', ARGV[2]) redis.call('DEL', KEYS[3]) return 1",
        [ZSET, STREAM, "*"],
        3,
    ),
    // list -> set, with a TTL on the set
    (
        "local v = redis.call('LPOP', KEYS[1]) if v then redis.call('SADD', KEYS[2], v) end redis.call('PEXPIRE', KEYS[2], ARGV[1]) return 1",
        [LIST, SET, ""],
        2,
    ),
];

/// LSET without "no such key" / "index out of range" races against the
/// applier (which may shorten or delete the list between a check and the
/// LSET): the check and the LSET run atomically. LLEN gives WRONGTYPE.
const LSET_GUARDED: &str = "local n = redis.call('LLEN', KEYS[1]) \
    if n == 0 then return 0 end \
    redis.call('LSET', KEYS[1], tonumber(ARGV[1]) % n, ARGV[2]) return 1";

/// XGROUP CREATE (unless the group exists: BUSYGROUP) / XGROUP SETID (only
/// if the group exists: NOGROUP), atomically for the same reason. On a key of
/// another type the XGROUP call itself answers WRONGTYPE.
const XGROUP_GUARDED: &str = "local t = redis.call('TYPE', KEYS[1])['ok'] \
    if t ~= 'stream' and t ~= 'none' then \
      return redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[2], '$', 'MKSTREAM') end \
    local exists = false \
    if t == 'stream' then \
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do \
        if g[2] == ARGV[2] then exists = true end end end \
    if ARGV[1] == 'CREATE' then \
      if exists then return 0 end \
      redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[2], ARGV[3], 'MKSTREAM') return 1 \
    end \
    if not exists then return 0 end \
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[2], ARGV[3]) return 1";

fn seed_from_env_or_clock() -> u64 {
    match std::env::var("GEOSYNC_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GEOSYNC_SEED={s:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn ops_per_writer() -> usize {
    std::env::var("GEOSYNC_TEST_OPS")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("GEOSYNC_TEST_OPS={s:?} is not a number"))
        })
        .unwrap_or(1500)
}

/// The command that runs `test` again with this run's settings: the seed,
/// the operations per writer (for the tests that read
/// `GEOSYNC_TEST_OPS`) and the server binary.
fn replay_command(test: &str, seed: u64, ops: Option<usize>) -> String {
    let mut settings = vec![format!("GEOSYNC_SEED={seed}")];
    if let Some(ops) = ops {
        settings.push(format!("GEOSYNC_TEST_OPS={ops}"));
    }
    settings.push(format!(
        "GEOSYNC_TEST_REDIS_SERVER={}",
        shell_quoted(&redis_server_bin())
    ));
    format!(
        "{} cargo nextest run --test convergence {test}",
        settings.join(" ")
    )
}

/// `s` as one shell word.
fn shell_quoted(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Prints the replay command at the start, and again when the test fails,
/// whatever panicked (a writer, the convergence check, an assertion).
struct SeedGuard(String);

impl SeedGuard {
    fn new(test: &str, seed: u64, ops: Option<usize>) -> SeedGuard {
        let command = replay_command(test, seed, ops);
        println!("replay: {command}");
        SeedGuard(command)
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("FAILED; replay: {}", self.0);
        }
    }
}

/// On failure, prints what helps to diagnose a divergence: each region's
/// flush floor per database with the metadata records older than it (there
/// should be none), the differences those records do not explain, and (with
/// `GEOSYNC_KEEP_LOGS=dir`) copies the agents' whole logs into `dir/seed-N/`.
struct Diagnostics<'a> {
    mesh: &'a Mesh,
    seed: u64,
    dbs: &'a [u32],
}

impl Drop for Diagnostics<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // A panic escaping a destructor during unwinding would abort the
        // process (and hide the original failure): keep it in here.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.report()));
    }
}

impl Diagnostics<'_> {
    fn report(&self) {
        // Metadata older than its database's flush floor should not exist
        // (a flush drops it, and nothing older than the floor is applied).
        let mut below_floor = std::collections::BTreeSet::new();
        for (i, r) in self.mesh.regions.iter().enumerate() {
            for &db in self.dbs {
                let Ok(mut c) = redis::Client::open(format!("{}/{db}", r.redis.url()))
                    .and_then(|c| c.get_connection())
                else {
                    continue;
                };
                let floor: Option<String> = r
                    .redis
                    .meta_conn()
                    .get(geosync::store::floor_key(db))
                    .unwrap_or(None);
                let snap = snapshot(&mut c);
                let old: Vec<_> = match &floor {
                    Some(f) => snap.meta.iter().filter(|(_, (s, _, _))| s < f).collect(),
                    None => vec![],
                };
                eprintln!(
                    "region {} db {db}: flush floor {floor:?}, {} metadata records older than it{}",
                    i + 1,
                    old.len(),
                    old.iter()
                        .take(5)
                        .map(|(k, (s, f, _))| format!(" {:?}={s}{f}", String::from_utf8_lossy(k)))
                        .collect::<String>()
                );
                below_floor.extend(
                    old.iter()
                        .map(|(k, _)| (db, String::from_utf8_lossy(k).into_owned())),
                );
            }
        }
        // Differences not explained by such records.
        let mut other = Vec::new();
        for &db in self.dbs {
            for d in self.mesh.differences(&[db]) {
                let key = d.split('"').nth(1).unwrap_or("").to_string();
                if !below_floor.contains(&(db, key)) {
                    other.push(d);
                }
            }
        }
        eprintln!(
            "{} differences concern keys without metadata older than a floor{}",
            other.len(),
            other
                .iter()
                .take(20)
                .map(|d| format!("\n  {d}"))
                .collect::<String>()
        );
        if let Ok(dir) = std::env::var("GEOSYNC_KEEP_LOGS") {
            let dir = std::path::Path::new(&dir).join(format!("seed-{}", self.seed));
            let _ = std::fs::create_dir_all(&dir);
            for r in &self.mesh.regions {
                let _ = std::fs::copy(
                    &r.agent.log,
                    dir.join(format!("agent-{}.log", r.agent.node_id)),
                );
            }
            eprintln!("agent logs kept in {}", dir.display());
        }
    }
}

fn is_wrongtype(e: &RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

#[derive(Debug, Default, Clone)]
struct WriterStats {
    /// Top-level operations.
    ops: u64,
    /// Commands issued, counting each one inside a transaction; an EVAL
    /// counts as one.
    writes: u64,
    wrongtype: u64,
    transactions: u64,
    scripts: u64,
    flushes: u64,
    last_write: Option<Instant>,
}

/// One region's writer: its own connections (db 0 and db 1) and RNG.
struct Writer {
    region: usize,
    seed: u64,
    rng: StdRng,
    conns: [Connection; 2],
    stats: WriterStats,
    flush_at: Option<usize>,
}

impl Writer {
    fn new(region: usize, seed: u64, redis: &Redis, ops: usize) -> Writer {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (region as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // At most one FLUSHDB of database 1 per writer, and some seeds have none.
        let flush_at = rng
            .gen_bool(0.4)
            .then(|| rng.gen_range(ops / 4..ops.max(2)));
        Writer {
            region,
            seed,
            rng,
            conns: [redis.conn_db(0), redis.conn_db(1)],
            stats: WriterStats::default(),
            flush_at,
        }
    }

    fn fail(&self, what: &str, e: &RedisError) -> ! {
        panic!(
            "region {} (seed={}, op {}): {what} failed with an error other than WRONGTYPE: {e:?}",
            self.region + 1,
            self.seed,
            self.stats.ops
        );
    }

    /// Ok → Some; WRONGTYPE → counted, None; anything else fails the test.
    fn check<T>(&mut self, what: &str, r: RedisResult<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if is_wrongtype(&e) => {
                self.stats.wrongtype += 1;
                None
            }
            Err(e) => self.fail(what, &e),
        }
    }

    fn wrote(&mut self, n: u64) {
        self.stats.writes += n;
        self.stats.last_write = Some(Instant::now());
    }

    // ---- random pieces ----

    fn idx(&mut self) -> usize {
        if self.rng.gen_bool(0.4) {
            self.rng.gen_range(0..HOT)
        } else {
            self.rng.gen_range(0..KEYS_PER_POOL)
        }
    }

    fn key_in(&mut self, pool: &str) -> String {
        let i = self.idx();
        format!("{pool}:{i}")
    }

    /// A key of `pool`, now and then (for WRONGTYPE) one of another pool,
    /// within the rules above the pool names: collection commands stray anywhere,
    /// INCR (`int:`) into collection pools, text and float commands never.
    fn key(&mut self, pool: &str) -> String {
        let strays = !matches!(pool, STR | FLT);
        if strays && self.rng.gen_bool(0.05) {
            let other = if pool == INT {
                *COLLECTIONS.choose(&mut self.rng).unwrap()
            } else {
                *POOLS.choose(&mut self.rng).unwrap()
            };
            return self.key_in(other);
        }
        self.key_in(pool)
    }

    fn any_key(&mut self) -> String {
        let pool = *POOLS.choose(&mut self.rng).unwrap();
        self.key_in(pool)
    }

    fn text(&mut self) -> String {
        const WORDS: [&str; 8] = ["a", "bb", "ccc", "x", "yy", "zz", "hello", "wörld"];
        format!(
            "{}{}",
            WORDS.choose(&mut self.rng).unwrap(),
            self.rng.gen_range(0..50)
        )
    }

    fn member(&mut self) -> String {
        format!("m{}", self.rng.gen_range(0..12))
    }

    fn float(&mut self) -> f64 {
        // multiples of 0.25: exact in binary, so no formatting surprises
        self.rng.gen_range(-8..=8) as f64 * 0.25
    }

    /// 200 ms to 60 s, short ones often, so that some expire during the run
    /// and some after it.
    fn ttl_ms(&mut self) -> u64 {
        if self.rng.gen_bool(0.4) {
            self.rng.gen_range(200..2_000)
        } else {
            self.rng.gen_range(2_000..60_000)
        }
    }

    /// For RENAME/COPY: source and destination in one pool, or both in
    /// collection pools.
    fn src_dst(&mut self) -> (String, String) {
        let pool = *POOLS.choose(&mut self.rng).unwrap();
        let src = self.key_in(pool);
        let dst = if !COLLECTIONS.contains(&pool) || self.rng.gen_bool(0.8) {
            self.key_in(pool)
        } else {
            let other = *COLLECTIONS.choose(&mut self.rng).unwrap();
            self.key_in(other)
        };
        (src, dst)
    }

    /// A command that creates or modifies `key` according to its pool (so
    /// that the key exists afterwards, or the command failed with WRONGTYPE,
    /// which also means the key exists).
    fn touch_cmd(&mut self, key: &str) -> redis::Cmd {
        let pool = key.split(':').next().unwrap();
        match pool {
            STR => redis::cmd("APPEND").arg(key).arg(self.text()).clone(),
            INT => redis::cmd("INCR").arg(key).clone(),
            FLT => redis::cmd("INCRBYFLOAT").arg(key).arg(self.float()).clone(),
            LIST => redis::cmd("RPUSH").arg(key).arg(self.text()).clone(),
            SET => redis::cmd("SADD").arg(key).arg(self.member()).clone(),
            ZSET => redis::cmd("ZADD")
                .arg(key)
                .arg(self.rng.gen_range(0..20))
                .arg(self.member())
                .clone(),
            HASH => redis::cmd("HINCRBY")
                .arg(key)
                .arg(format!("n{}", self.rng.gen_range(0..4)))
                .arg(1)
                .clone(),
            _ => redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("f")
                .arg(self.text())
                .clone(),
        }
    }

    /// One random single command that can only fail with WRONGTYPE, for
    /// top-level use and inside transactions. `db` is the database the
    /// connection is on.
    fn simple_cmd(&mut self, db: usize) -> redis::Cmd {
        let r = self.rng.gen_range(0..100);
        let mut c;
        match r {
            // strings
            0..=4 => {
                let k = self.key(STR);
                c = redis::cmd("SET");
                c.arg(k).arg(self.text());
            }
            5..=7 => {
                let k = self.key(STR);
                c = redis::cmd("APPEND");
                c.arg(k).arg(self.text());
            }
            8..=11 => {
                let k = self.key(INT);
                c = redis::cmd("INCR");
                c.arg(k);
            }
            12..=13 => {
                let k = self.key(FLT);
                c = redis::cmd("INCRBYFLOAT");
                c.arg(k).arg(self.float());
            }
            14..=15 => {
                let k = self.key(STR);
                c = redis::cmd("SETRANGE");
                c.arg(k).arg(self.rng.gen_range(0..12)).arg(self.text());
            }
            16..=18 => {
                // SET with PX (replicated as SET ... PXAT)
                let pool = *[STR, INT, FLT].choose(&mut self.rng).unwrap();
                let k = self.key(pool);
                let v = match pool {
                    STR => self.text(),
                    INT => self.rng.gen_range(-100..100).to_string(),
                    _ => self.float().to_string(),
                };
                c = redis::cmd("SET");
                c.arg(k).arg(v).arg("PX").arg(self.ttl_ms());
            }
            19..=20 => {
                // MSET within one string pool (integers now and then into a collection pool)
                let pool = *[STR, INT, FLT].choose(&mut self.rng).unwrap();
                c = redis::cmd("MSET");
                for _ in 0..self.rng.gen_range(2..=4) {
                    let k = self.key(pool);
                    let v = match pool {
                        STR => self.text(),
                        INT => self.rng.gen_range(-100..100).to_string(),
                        _ => self.float().to_string(),
                    };
                    c.arg(k).arg(v);
                }
            }
            // lists
            21..=24 => {
                let k = self.key(LIST);
                c = redis::cmd(if self.rng.gen_bool(0.5) {
                    "LPUSH"
                } else {
                    "RPUSH"
                });
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(self.text());
                }
            }
            25..=26 => {
                let k = self.key(LIST);
                c = redis::cmd("LPOP");
                c.arg(k);
                if self.rng.gen_bool(0.3) {
                    c.arg(self.rng.gen_range(1..4));
                }
            }
            27..=28 => {
                let k = self.key(LIST);
                c = redis::cmd("LREM");
                c.arg(k).arg(self.rng.gen_range(-2..=2)).arg(self.text());
            }
            29..=30 => {
                let k = self.key(LIST);
                c = redis::cmd("LTRIM");
                c.arg(k)
                    .arg(self.rng.gen_range(0..3))
                    .arg(self.rng.gen_range(-1..12));
            }
            // sets
            31..=34 => {
                let k = self.key(SET);
                c = redis::cmd("SADD");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(self.member());
                }
            }
            35..=36 => {
                let k = self.key(SET);
                c = redis::cmd("SREM");
                c.arg(k).arg(self.member());
            }
            37 => {
                let k = self.key(SET);
                c = redis::cmd("SPOP");
                c.arg(k);
                if self.rng.gen_bool(0.5) {
                    c.arg(self.rng.gen_range(1..3));
                }
            }
            38..=39 => {
                let (a, b) = (self.key(SET), self.key(SET));
                c = redis::cmd("SMOVE");
                c.arg(a).arg(b).arg(self.member());
            }
            // sorted sets
            40..=43 => {
                let k = self.key(ZSET);
                c = redis::cmd("ZADD");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(self.rng.gen_range(-10..30) as f64 * 0.5)
                        .arg(self.member());
                }
            }
            44..=45 => {
                let k = self.key(ZSET);
                c = redis::cmd("ZINCRBY");
                c.arg(k).arg(self.float()).arg(self.member());
            }
            46..=47 => {
                let k = self.key(ZSET);
                c = redis::cmd("ZREM");
                c.arg(k).arg(self.member()).arg(self.member());
            }
            48 => {
                let k = self.key(ZSET);
                c = redis::cmd("ZPOPMIN");
                c.arg(k);
                if self.rng.gen_bool(0.5) {
                    c.arg(self.rng.gen_range(1..3));
                }
            }
            // hashes
            49..=52 => {
                let k = self.key(HASH);
                c = redis::cmd("HSET");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    if self.rng.gen_bool(0.8) {
                        c.arg(format!("f{}", self.rng.gen_range(0..8)))
                            .arg(self.text());
                    } else {
                        c.arg(format!("n{}", self.rng.gen_range(0..4)))
                            .arg(self.rng.gen_range(-5..5));
                    }
                }
            }
            53..=54 => {
                let k = self.key(HASH);
                c = redis::cmd("HDEL");
                c.arg(k).arg(format!("f{}", self.rng.gen_range(0..8)));
                if self.rng.gen_bool(0.3) {
                    c.arg(format!("n{}", self.rng.gen_range(0..4)));
                }
            }
            55..=56 => {
                let k = self.key(HASH);
                c = redis::cmd("HINCRBY");
                c.arg(k)
                    .arg(format!("n{}", self.rng.gen_range(0..4)))
                    .arg(self.rng.gen_range(-3..=5));
            }
            // streams
            57..=60 => {
                let k = self.key(STREAM);
                c = redis::cmd("XADD");
                c.arg(k);
                if self.rng.gen_bool(0.2) {
                    c.arg("MAXLEN").arg(self.rng.gen_range(3..10));
                }
                c.arg("*").arg("f").arg(self.text());
                if self.rng.gen_bool(0.3) {
                    c.arg("g").arg(self.member());
                }
            }
            61..=62 => {
                let k = self.key(STREAM);
                c = redis::cmd("XTRIM");
                if self.rng.gen_bool(0.7) {
                    c.arg(k).arg("MAXLEN").arg(self.rng.gen_range(0..6));
                } else {
                    // entries of the last few seconds stay
                    let ms = now_ms() - self.rng.gen_range(0..3_000);
                    c.arg(k).arg("MINID").arg(format!("{ms}-0"));
                }
            }
            63 => {
                // XDEL of a guessed id: mostly deletes nothing
                let k = self.key(STREAM);
                c = redis::cmd("XDEL");
                c.arg(k)
                    .arg(format!("{}-0", now_ms() - self.rng.gen_range(0..50)));
            }
            // keys
            64..=68 => {
                c = redis::cmd(if self.rng.gen_bool(0.5) {
                    "DEL"
                } else {
                    "UNLINK"
                });
                for _ in 0..self.rng.gen_range(1..=4) {
                    c.arg(self.any_key());
                }
            }
            69..=73 => {
                let k = self.any_key();
                let ttl = self.ttl_ms();
                if self.rng.gen_bool(0.5) {
                    c = redis::cmd("PEXPIRE");
                    c.arg(k).arg(ttl);
                } else {
                    c = redis::cmd("EXPIRE");
                    c.arg(k).arg(ttl.div_ceil(1000));
                }
            }
            74..=75 => {
                let k = self.any_key();
                c = redis::cmd("PERSIST");
                c.arg(k);
            }
            76..=78 => {
                // COPY, within this db or into the other one
                let (src, dst) = self.src_dst();
                c = redis::cmd("COPY");
                c.arg(&src).arg(&dst);
                // (the same key in the same db: "source and destination
                // objects are the same", so that one goes to the other db)
                if src == dst || self.rng.gen_bool(0.4) {
                    c.arg("DB").arg(1 - db);
                }
                if self.rng.gen_bool(0.5) {
                    c.arg("REPLACE");
                }
            }
            79 => {
                // MOVE to the other database (no-op when the target exists)
                let k = self.any_key();
                c = redis::cmd("MOVE");
                c.arg(k).arg(1 - db);
            }
            _ => {
                // more of the common writes
                let pool = *POOLS.choose(&mut self.rng).unwrap();
                let k = self.key(pool);
                c = self.touch_cmd(&k);
            }
        }
        c
    }

    fn conn(&mut self, db: usize) -> &mut Connection {
        &mut self.conns[db]
    }

    /// One top-level operation.
    fn step(&mut self, i: usize) {
        let db = if self.rng.gen_bool(0.6) { 0 } else { 1 };
        if self.flush_at == Some(i) {
            let r: RedisResult<()> = redis::cmd("FLUSHDB").query(self.conn(1));
            self.check("FLUSHDB", r);
            self.stats.flushes += 1;
            self.wrote(1);
            return;
        }
        let r = self.rng.gen_range(0..100);
        match r {
            0..=9 => self.transaction(db),
            10..=15 => self.script(db),
            16..=17 => self.rename(db),
            18..=19 => self.lset(db),
            20..=21 => self.xgroup(db),
            22 => self.xdel_existing(db),
            _ => {
                let cmd = self.simple_cmd(db);
                let r: RedisResult<Value> = cmd.query(self.conn(db));
                let name = cmd_text(&cmd);
                self.check(&name, r);
                self.wrote(1);
            }
        }
    }

    /// MULTI/EXEC of 2–5 random commands; sometimes switching database in the
    /// middle (SELECT inside the transaction), and back at the end.
    fn transaction(&mut self, db: usize) {
        let n = self.rng.gen_range(2..=5);
        let switch_at = self.rng.gen_bool(0.2).then(|| self.rng.gen_range(1..n));
        let mut p = redis::pipe();
        p.atomic().ignore_errors();
        let mut cur = db;
        let mut names = Vec::new();
        for j in 0..n {
            if switch_at == Some(j) {
                cur = 1 - db;
                p.cmd("SELECT").arg(cur);
                names.push("SELECT".to_string());
            }
            let c = self.simple_cmd(cur);
            names.push(cmd_text(&c));
            p.add_command(c);
        }
        if cur != db {
            p.cmd("SELECT").arg(db);
            names.push("SELECT".to_string());
        }
        let res: RedisResult<Vec<RedisResult<Value>>> = p.query(self.conn(db));
        let Some(results) = self.check("MULTI/EXEC", res) else {
            return;
        };
        for (r, name) in results.into_iter().zip(&names) {
            self.check(&format!("{name} in MULTI ({})", names.join(" ")), r);
        }
        self.stats.transactions += 1;
        self.wrote(n as u64);
    }

    fn script(&mut self, db: usize) {
        let (src, pools, nkeys) = SCRIPTS[self.rng.gen_range(0..SCRIPTS.len())];
        let mut c = redis::cmd("EVAL");
        c.arg(src).arg(nkeys);
        for pool in &pools[..nkeys] {
            let k = if *pool == "*" {
                self.any_key()
            } else {
                self.key(pool)
            };
            c.arg(k);
        }
        // ARGV[1]: a number (score / TTL in ms / text), ARGV[2]: text or number
        let a1 = if src.contains("PEXPIRE") {
            self.ttl_ms().to_string()
        } else {
            self.rng.gen_range(1..40).to_string()
        };
        let a2 = if src.contains("HINCRBY") {
            self.rng.gen_range(0..8).to_string()
        } else {
            self.text()
        };
        c.arg(a1).arg(a2);
        let r: RedisResult<Value> = c.query(self.conn(db));
        self.check("EVAL", r);
        self.stats.scripts += 1;
        self.wrote(1);
    }

    /// RENAME, in a transaction after a command that makes sure the source
    /// exists (a bare RENAME races with a peer's delete: "no such key").
    fn rename(&mut self, db: usize) {
        let (src, dst) = self.src_dst();
        let touch = self.touch_cmd(&src);
        let mut p = redis::pipe();
        p.atomic().ignore_errors();
        p.add_command(touch);
        p.cmd("RENAME").arg(&src).arg(&dst);
        let res: RedisResult<Vec<RedisResult<Value>>> = p.query(self.conn(db));
        if let Some(results) = self.check("MULTI/EXEC (RENAME)", res) {
            for r in results {
                self.check("RENAME", r);
            }
        }
        self.stats.transactions += 1;
        self.wrote(2);
    }

    /// LSET: either guarded in a script, or in a transaction after an RPUSH
    /// (so index 0 and -1 exist).
    fn lset(&mut self, db: usize) {
        let k = self.key(LIST);
        let v = self.text();
        if self.rng.gen_bool(0.5) {
            let r: RedisResult<Value> = redis::cmd("EVAL")
                .arg(LSET_GUARDED)
                .arg(1)
                .arg(&k)
                .arg(self.rng.gen_range(0..10))
                .arg(v)
                .query(self.conn(db));
            self.check("EVAL (LSET)", r);
            self.stats.scripts += 1;
            self.wrote(1);
        } else {
            let idx: i64 = if self.rng.gen_bool(0.5) { 0 } else { -1 };
            let pushed = self.text();
            let mut p = redis::pipe();
            p.atomic().ignore_errors();
            p.cmd("RPUSH").arg(&k).arg(pushed);
            p.cmd("LSET").arg(&k).arg(idx).arg(v);
            let res: RedisResult<Vec<RedisResult<Value>>> = p.query(self.conn(db));
            if let Some(results) = self.check("MULTI/EXEC (LSET)", res) {
                for r in results {
                    self.check("LSET", r);
                }
            }
            self.stats.transactions += 1;
            self.wrote(2);
        }
    }

    /// XGROUP CREATE (MKSTREAM: also creates empty streams) or SETID.
    fn xgroup(&mut self, db: usize) {
        let k = self.key(STREAM);
        let group = format!("g{}", self.rng.gen_range(0..3));
        let op = if self.rng.gen_bool(0.5) {
            "CREATE"
        } else {
            "SETID"
        };
        let id = *["$", "0", "0-1"].choose(&mut self.rng).unwrap();
        let r: RedisResult<Value> = redis::cmd("EVAL")
            .arg(XGROUP_GUARDED)
            .arg(1)
            .arg(&k)
            .arg(op)
            .arg(group)
            .arg(id)
            .query(self.conn(db));
        self.check(&format!("EVAL (XGROUP {op})"), r);
        self.stats.scripts += 1;
        self.wrote(1);
    }

    /// XDEL of an entry that existed a moment ago.
    fn xdel_existing(&mut self, db: usize) {
        let k = self.key(STREAM);
        // drawn before the read, so that the RNG sequence does not depend on
        // what the read finds (the operation sequence stays replayable)
        let pick = self.rng.gen_range(0..4usize);
        let r: RedisResult<Value> = redis::cmd("XRANGE")
            .arg(&k)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(4)
            .query(self.conn(db));
        let Some(Value::Array(entries)) = self.check("XRANGE", r) else {
            return;
        };
        let ids: Vec<Vec<u8>> = entries
            .iter()
            .filter_map(|e| match e {
                Value::Array(p) => match p.first() {
                    Some(Value::BulkString(id)) => Some(id.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[pick % ids.len()].clone();
        let r: RedisResult<Value> = redis::cmd("XDEL").arg(&k).arg(id).query(self.conn(db));
        self.check("XDEL", r);
        self.wrote(1);
    }

    fn run(mut self, ops: usize, start: &Barrier) -> WriterStats {
        start.wait();
        for i in 0..ops {
            self.step(i);
            self.stats.ops += 1;
        }
        self.stats
    }
}

/// The command as text, for error messages.
fn cmd_text(c: &redis::Cmd) -> String {
    c.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            _ => "?".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn user_keys(redis: &Redis, db: u32) -> usize {
    snapshot(&mut redis.conn_db(db)).keys.len()
}

/// Three regions write the same keys at the same time with a random mix of
/// every data type, transactions, scripts, multi-key and cross-database
/// commands, TTLs and FLUSHDB; once the writers stop, every region holds the
/// same keys, values, expiries and metadata in databases 0 and 1.
#[test]
fn three_regions_random_workload_converges() {
    let seed = seed_from_env_or_clock();
    let ops = ops_per_writer();
    println!("seed={seed}; {ops} operations per writer");
    let _guard = SeedGuard::new("three_regions_random_workload_converges", seed, Some(ops));
    let started = Instant::now();

    let mesh = Mesh::start(3);
    let _diag = Diagnostics {
        mesh: &mesh,
        seed,
        dbs: &[0, 1],
    };
    let n = mesh.regions.len();
    let barrier = Barrier::new(n);
    let stats: Vec<WriterStats> = std::thread::scope(|s| {
        let handles: Vec<_> = mesh
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let w = Writer::new(i, seed, &r.redis, ops);
                if let Some(at) = w.flush_at {
                    println!("region {}: FLUSHDB of db 1 at operation {at}", i + 1);
                }
                let barrier = &barrier;
                s.spawn(move || w.run(ops, barrier))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let last_write = stats
        .iter()
        .filter_map(|s| s.last_write)
        .max()
        .expect("writers wrote");
    let writing = last_write.duration_since(started);

    mesh.wait_converged(&[0, 1], Duration::from_secs(60));
    let to_converge = last_write.elapsed();

    let keys_db0 = user_keys(&mesh.regions[0].redis, 0);
    let keys_db1 = user_keys(&mesh.regions[0].redis, 1);

    // Converged means settled: one more write per region, seen everywhere,
    // proves every agent has processed everything before it; the regions must
    // still be identical (checked once, no waiting).
    let mut conns: Vec<Connection> = mesh.regions.iter().map(|r| r.redis.conn()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let _: () = c.set(format!("__marker:{i}"), seed.to_string()).unwrap();
    }
    for (j, c) in conns.iter_mut().enumerate() {
        wait_until(&format!("markers reach region {}", j + 1), SETTLE, || {
            (0..n).all(|i| c.exists::<_, bool>(format!("__marker:{i}")).unwrap())
        });
    }
    let after = mesh.differences(&[0, 1]);
    assert!(
        after.is_empty(),
        "regions diverged again after converging; {} differences:\n{}",
        after.len(),
        after
            .iter()
            .take(30)
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let total = |f: fn(&WriterStats) -> u64| stats.iter().map(f).sum::<u64>();
    let per_agent =
        |name: &str| -> Vec<f64> { mesh.regions.iter().map(|r| r.agent.metric(name)).collect() };
    let stamped = per_agent("geosync_changes_stamped_total");
    let shipped = mesh.metric("geosync_changes_shipped_total");
    let applied = mesh.metric("geosync_changes_applied_total");
    let rejected = mesh.metric("geosync_changes_rejected_older_total");
    println!(
        "convergence: seed={seed} regions={n} writes={} (ops={} transactions={} scripts={} flushdb={}) \
         keys_db0={} keys_db1={} wrongtype={} writing={:.2}s converged_after_last_write={:.2}s \
         stamped={} shipped={} applied={} rejected_older={}",
        total(|s| s.writes),
        total(|s| s.ops),
        total(|s| s.transactions),
        total(|s| s.scripts),
        total(|s| s.flushes),
        keys_db0,
        keys_db1,
        total(|s| s.wrongtype),
        writing.as_secs_f64(),
        to_converge.as_secs_f64(),
        stamped.iter().sum::<f64>(),
        shipped,
        applied,
        rejected,
    );
    for (i, s) in stamped.iter().enumerate() {
        assert!(*s > 0.0, "agent {} stamped nothing", i + 1);
    }
    assert!(
        rejected > 0.0,
        "no change was rejected as older: the workload produced no conflicts"
    );
}

/// How close to its expiry the convergence checker excuses a key missing on
/// one side: short-TTL keys must be further from it than this when the
/// regions are compared, so that they are really compared.
const CHECKER_MARGIN_MS: i64 = EXPIRY_MARGIN_MS;

/// The short TTLs, in ms: long enough that writing the keys and waiting for
/// convergence (well under a second) leaves every key more than
/// `CHECKER_MARGIN_MS` from expiring when it is compared (the test prints
/// what was left as `spare_ms`).
const SHORT_TTL_MS: std::ops::RangeInclusive<u64> = 4500..=5500;

/// The fake region that tries to revive an expired key.
const FAKE_NODE: u32 = 3;

/// Keys with short TTLs are compared while they live (same values, same
/// absolute expiries, same metadata in both regions), expire everywhere,
/// leave in every region a tombstone record that keeps the stamp they were
/// written with, and nothing brings them back: neither later activity nor
/// an older change from a peer, which the agents count as rejected.
#[test]
fn short_ttls_expire_everywhere_and_stay_deleted() {
    let seed = seed_from_env_or_clock();
    println!("seed={seed}");
    let _guard = SeedGuard::new("short_ttls_expire_everywhere_and_stay_deleted", seed, None);
    let mut rng = StdRng::seed_from_u64(seed);

    let mesh = Mesh::start(2);
    let _diag = Diagnostics {
        mesh: &mesh,
        seed,
        dbs: &[0],
    };
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();

    let short: Vec<String> = (0..200).map(|i| format!("short:{i}")).collect();
    let long: Vec<String> = (0..5).map(|i| format!("long:{i}")).collect();
    for (i, k) in short.iter().enumerate() {
        let ttl: u64 = rng.gen_range(SHORT_TTL_MS);
        match i % 4 {
            0 => {
                let _: () = redis::cmd("SET")
                    .arg(k)
                    .arg(i)
                    .arg("PX")
                    .arg(ttl)
                    .query(&mut a)
                    .unwrap();
            }
            1 => {
                let _: () = redis::pipe()
                    .atomic()
                    .rpush(k, &["x", "y"])
                    .ignore()
                    .pexpire(k, ttl as i64)
                    .ignore()
                    .query(&mut a)
                    .unwrap();
            }
            2 => {
                let _: () = redis::pipe()
                    .atomic()
                    .hset(k, "f", i)
                    .ignore()
                    .pexpire(k, ttl as i64)
                    .ignore()
                    .query(&mut a)
                    .unwrap();
            }
            _ => {
                // value first, TTL in a separate command (stamped separately)
                let _: () = a.sadd(k, i).unwrap();
                let _: () = a.pexpire(k, ttl as i64).unwrap();
            }
        }
    }
    for (i, k) in long.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(i)
            .arg("EX")
            .arg(60)
            .query(&mut a)
            .unwrap();
    }
    let _: () = a.set("persistent", "p").unwrap();
    mesh.wait_converged(&[0], SETTLE);

    // Compared for real while alive: both regions hold every short key with
    // the same value and absolute expiry, far enough from it that the
    // checker compared it too, and the same live metadata record.
    let (sa, sb) = (snapshot(&mut a), snapshot(&mut b));
    let compared_at = sa.taken_at.max(sb.taken_at);
    let mut written = BTreeMap::new();
    let mut spare_ms = i64::MAX;
    for k in &short {
        let key = k.as_bytes();
        let x = sa.keys.get(key).unwrap_or_else(|| {
            panic!("{k} is gone from region 1 before it was compared: the TTLs are too short")
        });
        assert_eq!(Some(x), sb.keys.get(key), "{k} while alive");
        let exp = x.expire_at.unwrap_or_else(|| panic!("{k} has no TTL"));
        assert!(
            exp > compared_at + CHECKER_MARGIN_MS,
            "{k} expires at {exp}, within the checker's margin of {compared_at}: the TTLs are too short"
        );
        let rec = sa.meta.get(key);
        assert_eq!(rec, sb.meta.get(key), "metadata of {k} while alive");
        let (stamp, flag, rec_exp) = rec.unwrap_or_else(|| panic!("{k} has no metadata"));
        assert_eq!(
            (*flag, *rec_exp),
            ('v', Some(exp)),
            "metadata of {k}: a value record with its expiry"
        );
        written.insert(k.clone(), stamp.clone());
        spare_ms = spare_ms.min(exp - compared_at - CHECKER_MARGIN_MS);
    }

    let exists = |c: &mut Connection| -> usize {
        let n: usize = redis::cmd("EXISTS").arg(&short).query(c).unwrap();
        n
    };
    wait_until("short-TTL keys gone in both regions", SETTLE, || {
        exists(&mut a) == 0 && exists(&mut b) == 0
    });
    let expired_at = Instant::now();
    // Each region's agent turns the expired key's record into a tombstone
    // that keeps the stamp the key was written with.
    let tombstone = |k: &String| Some((written[k].clone(), 't', None));
    let not_tombstones = |a: &mut Connection, b: &mut Connection| {
        let (sa, sb) = (snapshot(a), snapshot(b));
        let mut bad = BTreeMap::new();
        for k in &short {
            let (x, y) = (sa.meta.get(k.as_bytes()), sb.meta.get(k.as_bytes()));
            if x.cloned() != tombstone(k) || y.cloned() != tombstone(k) {
                bad.insert(k.clone(), (x.cloned(), y.cloned()));
            }
        }
        bad
    };
    if poll(SETTLE, || not_tombstones(&mut a, &mut b).is_empty()).is_none() {
        panic!(
            "expired keys without the same tombstone in both regions (expected (written stamp, 't', None)): {:#?}",
            not_tombstones(&mut a, &mut b)
        );
    }
    mesh.wait_converged(&[0], SETTLE);

    // Two more seconds of agent activity (and at least one write each way):
    // writes in both regions, each waited for in the other region.
    let mut ticks = 0u32;
    while ticks < 2 || expired_at.elapsed() < Duration::from_secs(2) {
        let (from, to) = if ticks.is_multiple_of(2) {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let k = format!("tick:{ticks}");
        let _: () = from.set(&k, ticks).unwrap();
        wait_until(&format!("{k} replicated"), SETTLE, || {
            to.exists::<_, bool>(&k).unwrap()
        });
        ticks += 1;
    }

    // A third region sends each region an older change to one key of each
    // kind: a persistent string stamped just before the key's tombstone.
    let revive: Vec<geosync::base::change::Change> = short[..4]
        .iter()
        .map(|k| {
            let t = geosync::base::hlc::decode(written[k].as_bytes()).unwrap();
            string_put(
                k,
                "revived",
                &stamp_at(t.get_time().as_u64() - 1, FAKE_NODE),
            )
        })
        .collect();
    let rejected = "geosync_changes_rejected_older_total";
    for r in &mesh.regions {
        // Both agents have applied the other's ticks, so the metric is there.
        let before = r.agent.metric(rejected);
        let mut peer = FakePeer::connect(r.agent.listen, FAKE_NODE);
        let acked = peer.send(1, &revive).unwrap_or_else(|e| {
            panic!("region {} refused the older changes: {e}", r.agent.node_id)
        });
        assert_eq!(
            acked, 1,
            "region {} acknowledged the batch",
            r.agent.node_id
        );
        assert_eq!(
            r.agent.metric(rejected),
            before + revive.len() as f64,
            "region {} counts the older changes as rejected",
            r.agent.node_id
        );
    }

    assert_eq!(exists(&mut a), 0, "a short-TTL key came back in region 1");
    assert_eq!(exists(&mut b), 0, "a short-TTL key came back in region 2");
    let bad = not_tombstones(&mut a, &mut b);
    assert!(bad.is_empty(), "tombstones changed: {bad:#?}");
    let (sa, sb) = (snapshot(&mut a), snapshot(&mut b));
    for k in &long {
        let (x, y) = (sa.keys.get(k.as_bytes()), sb.keys.get(k.as_bytes()));
        assert!(x.is_some() && x == y, "long-TTL key {k}: {x:?} vs {y:?}");
    }
    let diffs = mesh.differences(&[0]);
    assert!(
        diffs.is_empty(),
        "regions differ after the short TTLs expired:\n{}",
        diffs.join("\n")
    );
    println!(
        "short_ttls: seed={seed} expired={} long={} ticks={ticks} spare_ms={spare_ms} \
         stamped={} applied={} rejected_older={}",
        short.len(),
        long.len(),
        mesh.metric("geosync_changes_stamped_total"),
        mesh.metric("geosync_changes_applied_total"),
        mesh.metric(rejected),
    );
}
