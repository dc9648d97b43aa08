//! `geosync verify`: compares the regions' data directly, Redis against
//! Redis, without the agents.
//!
//! Every region's keyspace is walked with `SCAN`, a batch at a time, so the
//! memory used does not grow with the number of keys: a key is read (type,
//! value, absolute expiry; hash fields' own expiries where the server has
//! them) in every region at once and compared there. A key first met in a
//! later region is compared only if no earlier region has it (else the
//! earlier region's walk compared it). geosync's own keys (`__geosync:`)
//! are left out.
//!
//! Writes may be in flight while it runs: a key that differs is put aside
//! and read again after `--settle-ms`, up to `--rechecks` times; only a key
//! that differed at every look is reported. The set aside is bounded too:
//! when it fills, it is settled before the walk goes on.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use redis::{Connection, FromRedisValue, Value};

use crate::agent::config::redacted;
use crate::lab::compare::{KeyState, KeyValue, has_field_expiry, read_key};
use crate::lab::redis::databases_in_use;
use crate::store::layout::RESERVED_PREFIX;

/// `geosync verify`'s arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Exit status: 0 when every region holds the same data, 1 when keys differ \
(they are listed), 2 when a region cannot be read or the arguments are wrong.

Example:
  geosync verify --redis redis://10.0.1.5:6379 --redis redis://10.0.2.5:6379 \\
                 --redis rediss://user:pass@10.0.3.5:6380")]
pub struct VerifyArgs {
    /// A region's Redis (`redis://` or `rediss://` URL); give two or more.
    #[arg(long = "redis", value_name = "URL", required = true)]
    pub redis: Vec<String>,
    /// Compare only this database (repeatable); default: every database
    /// any region has keys in.
    #[arg(long = "db", value_name = "N")]
    pub dbs: Vec<u32>,
    /// How long to wait before reading a differing key again (writes and
    /// changes in flight between regions).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub settle_ms: u64,
    /// How many times a differing key is read again before it is reported.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rechecks: u32,
    /// List at most this many differing keys (all are counted).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_listed: usize,
    /// Keys per `SCAN` batch (and per pipelined read).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub batch: usize,
    /// Differing keys set aside before they are settled (bounds memory).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_pending: usize,
}

/// What went wrong reading the regions (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Fewer than two regions.
    #[error("give at least two regions (--redis URL --redis URL ...), got {0}")]
    TooFewRegions(usize),
    /// A URL that does not parse.
    #[error("region {region}: {url}: {source}")]
    Url {
        /// 1-based region number.
        region: usize,
        /// The URL as given (password hidden).
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// A region that does not answer.
    #[error("region {region} ({url}): {source}")]
    Redis {
        /// 1-based region number.
        region: usize,
        /// The URL (password hidden).
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// A setting out of range.
    #[error("{0}")]
    Setting(String),
}

/// One key that differed at every look.
#[derive(Debug, Clone)]
pub struct Difference {
    /// Its database.
    pub db: u32,
    /// Its name.
    pub key: Vec<u8>,
    /// Its state in each region, in the order the regions were given.
    pub states: Vec<Option<KeyState>>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "db {} key {:?}:",
            self.db,
            String::from_utf8_lossy(&self.key)
        )?;
        for (i, s) in self.states.iter().enumerate() {
            write!(f, "\n  region {}: {}", i + 1, shown_state(s.as_ref()))?;
        }
        Ok(())
    }
}

fn shown_state(s: Option<&KeyState>) -> String {
    const MAX: usize = 200;
    let Some(s) = s else {
        return "missing".to_string();
    };
    let mut v = format!("{:?}", s.value);
    if v.len() > MAX {
        let mut cut = MAX;
        while !v.is_char_boundary(cut) {
            cut -= 1;
        }
        v.truncate(cut);
        v.push_str("...");
    }
    match s.expire_at {
        Some(at) => format!("{v}, expires at {at} ms"),
        None => v,
    }
}

/// The outcome of a verification.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys compared across the regions.
    pub keys: u64,
    /// Databases compared.
    pub dbs: Vec<u32>,
    /// Keys that differed at every look.
    pub differing: u64,
    /// The first `--max-listed` of them.
    pub listed: Vec<Difference>,
    /// Keys that differed at first and agreed when read again.
    pub settled: u64,
}

struct Region {
    url: String,
    conn: Connection,
    field_expiry: bool,
}

impl Region {
    fn open(i: usize, url: &str) -> Result<Region, VerifyError> {
        let shown = redacted(url);
        let client = redis::Client::open(url).map_err(|source| VerifyError::Url {
            region: i + 1,
            url: shown.clone(),
            source,
        })?;
        let err = |source| VerifyError::Redis {
            region: i + 1,
            url: shown.clone(),
            source,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .map_err(err)?;
        redis::cmd("PING").exec(&mut conn).map_err(err)?;
        let field_expiry = has_field_expiry(&mut conn);
        Ok(Region {
            url: shown,
            conn,
            field_expiry,
        })
    }

    fn err(&self, i: usize, source: redis::RedisError) -> VerifyError {
        VerifyError::Redis {
            region: i + 1,
            url: self.url.clone(),
            source,
        }
    }
}

/// Reads `keys` in one region: `TYPE` and `PEXPIRETIME` of all in one
/// pipeline, then the values of the plain types in a second one. Streams,
/// module types, hashes on servers with field expiry, and keys whose type
/// changed between the two reads are read one by one.
fn read_batch(r: &mut Region, keys: &[Vec<u8>]) -> redis::RedisResult<Vec<Option<KeyState>>> {
    let mut p = redis::pipe();
    for k in keys {
        p.cmd("TYPE").arg(k).cmd("PEXPIRETIME").arg(k);
    }
    let heads: Vec<Value> = p.query(&mut r.conn)?;
    let mut p = redis::pipe();
    let mut planned = Vec::with_capacity(keys.len());
    for (k, pair) in keys.iter().zip(heads.chunks(2)) {
        let t = String::from_redis_value(pair[0].clone()).unwrap_or_default();
        // Hashes with field expiries take more reads (read_key below).
        let whole = KeyValue::read_command(&t, k).filter(|_| t != "hash" || !r.field_expiry);
        let plain = whole.is_some();
        if let Some(cmd) = whole {
            p.add_command(cmd);
        }
        planned.push((t, plain));
    }
    let values: Vec<Value> = if planned.iter().any(|(_, plain)| *plain) {
        p.query(&mut r.conn)?
    } else {
        Vec::new()
    };
    let mut values = values.into_iter();
    let mut out = Vec::with_capacity(keys.len());
    for ((k, (t, plain)), pair) in keys.iter().zip(planned).zip(heads.chunks(2)) {
        if t == "none" {
            out.push(None);
            continue;
        }
        let value = if plain {
            values.next().and_then(|v| KeyValue::from_reply(&t, v))
        } else {
            None
        };
        let state = match value {
            Some(value) => {
                let exp = i64::from_redis_value(pair[1].clone()).unwrap_or(-1);
                Some(KeyState {
                    value,
                    expire_at: (exp > 0).then_some(exp),
                })
            }
            None => read_key(&mut r.conn, k),
        };
        out.push(state);
    }
    Ok(out)
}

/// A key's state in each region, in the order the regions were given.
type States = Vec<Option<KeyState>>;

/// The keys among `keys` whose state is not the same in every region, with
/// their states.
fn differing(
    regions: &mut [Region],
    keys: &[Vec<u8>],
) -> Result<Vec<(Vec<u8>, States)>, VerifyError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut per_region = Vec::with_capacity(regions.len());
    for (i, r) in regions.iter_mut().enumerate() {
        per_region.push(read_batch(r, keys).map_err(|e| r.err(i, e))?);
    }
    let mut out = Vec::new();
    for (j, k) in keys.iter().enumerate() {
        let first = &per_region[0][j];
        if per_region.iter().any(|states| &states[j] != first) {
            out.push((
                k.clone(),
                per_region.iter().map(|states| states[j].clone()).collect(),
            ));
        }
    }
    Ok(out)
}

fn select(regions: &mut [Region], db: u32) -> Result<(), VerifyError> {
    for (i, r) in regions.iter_mut().enumerate() {
        redis::cmd("SELECT")
            .arg(db)
            .exec(&mut r.conn)
            .map_err(|e| r.err(i, e))?;
    }
    Ok(())
}

/// The verification of one run, with its progress lines written to
/// `log` (standard error for the command).
pub struct Verifier<'a> {
    args: &'a VerifyArgs,
    regions: Vec<Region>,
    report: Report,
    pending: BTreeSet<Vec<u8>>,
    log: &'a mut dyn std::io::Write,
}

impl<'a> Verifier<'a> {
    /// Connects to every region.
    pub fn connect(
        args: &'a VerifyArgs,
        log: &'a mut dyn std::io::Write,
    ) -> Result<Self, VerifyError> {
        if args.redis.len() < 2 {
            return Err(VerifyError::TooFewRegions(args.redis.len()));
        }
        if args.batch == 0 || args.max_pending == 0 {
            return Err(VerifyError::Setting(
                "--batch and --max-pending must be at least 1".into(),
            ));
        }
        let regions = args
            .redis
            .iter()
            .enumerate()
            .map(|(i, u)| Region::open(i, u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier {
            args,
            regions,
            report: Report::default(),
            pending: BTreeSet::new(),
            log,
        })
    }

    /// Walks every database and returns what differs.
    pub fn run(mut self) -> Result<Report, VerifyError> {
        let dbs = if self.args.dbs.is_empty() {
            let mut all = BTreeSet::new();
            for (i, r) in self.regions.iter_mut().enumerate() {
                all.extend(databases_in_use(&mut r.conn).map_err(|e| r.err(i, e))?);
            }
            all.into_iter().collect()
        } else {
            self.args.dbs.clone()
        };
        for &db in &dbs {
            self.db(db)?;
        }
        self.report.dbs = dbs;
        Ok(self.report)
    }

    fn db(&mut self, db: u32) -> Result<(), VerifyError> {
        select(&mut self.regions, db)?;
        for walked in 0..self.regions.len() {
            let mut cursor: u64 = 0;
            loop {
                let r = &mut self.regions[walked];
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(self.args.batch)
                    .query(&mut r.conn)
                    .map_err(|e| r.err(walked, e))?;
                let mut keys: Vec<Vec<u8>> = batch
                    .into_iter()
                    .filter(|k| !k.starts_with(RESERVED_PREFIX))
                    .collect();
                keys.sort();
                keys.dedup();
                let keys = self.not_in_earlier(walked, keys)?;
                if walked == 0 {
                    self.report.keys += keys.len() as u64;
                }
                for (k, _) in differing(&mut self.regions, &keys)? {
                    self.pending.insert(k);
                }
                if self.pending.len() >= self.args.max_pending {
                    self.settle(db)?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        self.settle(db)
    }

    /// The keys of a later region's batch that no earlier region holds
    /// (the earlier regions' walks compared the others); they count as
    /// compared keys.
    fn not_in_earlier(
        &mut self,
        walked: usize,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, VerifyError> {
        if walked == 0 || keys.is_empty() {
            return Ok(keys);
        }
        let mut held = vec![false; keys.len()];
        for (i, r) in self.regions[..walked].iter_mut().enumerate() {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("EXISTS").arg(k);
            }
            let exists: Vec<i64> = p.query(&mut r.conn).map_err(|e| r.err(i, e))?;
            for (h, e) in held.iter_mut().zip(exists) {
                *h |= e > 0;
            }
        }
        let out: Vec<_> = keys
            .into_iter()
            .zip(held)
            .filter(|(_, h)| !h)
            .map(|(k, _)| k)
            .collect();
        self.report.keys += out.len() as u64;
        Ok(out)
    }

    /// Reads the keys set aside again, up to `--rechecks` times, and
    /// reports those that differed at every look.
    fn settle(&mut self, db: u32) -> Result<(), VerifyError> {
        let mut keys: Vec<Vec<u8>> = std::mem::take(&mut self.pending).into_iter().collect();
        let mut last = Vec::new();
        for round in 1..=self.args.rechecks.max(1) {
            if keys.is_empty() {
                return Ok(());
            }
            let _ = writeln!(
                self.log,
                "verify: db {db}: {} keys differ; reading them again in {} ms ({round} of {})",
                keys.len(),
                self.args.settle_ms,
                self.args.rechecks.max(1)
            );
            std::thread::sleep(Duration::from_millis(self.args.settle_ms));
            let before = keys.len();
            last.clear();
            for chunk in keys.chunks(self.args.batch) {
                last.extend(differing(&mut self.regions, chunk)?);
            }
            keys = last.iter().map(|(k, _)| k.clone()).collect();
            self.report.settled += (before - keys.len()) as u64;
        }
        for (key, states) in last {
            self.report.differing += 1;
            if self.report.listed.len() < self.args.max_listed {
                self.report.listed.push(Difference { db, key, states });
            }
        }
        Ok(())
    }
}

/// `geosync verify`: prints the report and returns the exit status.
pub fn main(args: VerifyArgs) -> i32 {
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    let result = Verifier::connect(&args, &mut stderr).and_then(Verifier::run);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("geosync verify: {e}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    for d in &report.listed {
        let _ = writeln!(out, "{d}");
    }
    let secs = started.elapsed().as_secs_f64();
    let regions = args.redis.len();
    // Keys that differed only at first were writes in flight.
    let settled = match report.settled {
        0 => String::new(),
        n => format!("; {n} differed at first and agreed when read again"),
    };
    if report.differing == 0 {
        let _ = writeln!(
            out,
            "verify: {} keys in {} databases are the same in all {regions} regions ({secs:.1} s){settled}",
            report.keys,
            report.dbs.len(),
        );
        0
    } else {
        let more = report.differing - report.listed.len() as u64;
        let _ = writeln!(
            out,
            "verify: {} of {} keys differ between the {regions} regions{} ({secs:.1} s){settled}",
            report.differing,
            report.keys,
            if more > 0 {
                format!(" ({more} not listed; --max-listed)")
            } else {
                String::new()
            },
        );
        1
    }
}
