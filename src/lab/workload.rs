//! Random writes for scenarios: a mix of data types over a fixed set of
//! keys, reproducible from a seed.

use rand::Rng;
use rand::rngs::StdRng;

/// A kind of write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SET` of a random value.
    String,
    /// `INCRBY` of a small amount.
    Counter,
    /// `HSET` of a field.
    Hash,
    /// `RPUSH` (and now and then `LPOP`).
    List,
    /// `SADD` (and now and then `SREM`).
    Set,
    /// `ZADD` with a random score.
    ZSet,
    /// `XADD` with a capped length.
    Stream,
    /// `SET ... PX` with a time to live from the workload's range.
    Session,
    /// `DEL` of a key of any of the kinds above.
    Delete,
}

impl Kind {
    /// Every kind, in the order of [`Kind::name`].
    pub const ALL: [Kind; 9] = [
        Kind::String,
        Kind::Counter,
        Kind::Hash,
        Kind::List,
        Kind::Set,
        Kind::ZSet,
        Kind::Stream,
        Kind::Session,
        Kind::Delete,
    ];

    /// Its name in scenarios.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Counter => "counter",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::Stream => "stream",
            Kind::Session => "session",
            Kind::Delete => "delete",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A batch of random writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// How many writes.
    pub ops: usize,
    /// How many keys of each kind they spread over.
    pub keys: usize,
    /// Prefix of every key name (`<prefix><kind>:<n>`).
    pub prefix: String,
    /// The kinds of write, chosen evenly.
    pub kinds: Vec<Kind>,
    /// Time to live of `session` writes, in ms (from, to).
    pub ttl_ms: (u64, u64),
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            ops: 1000,
            keys: 100,
            prefix: String::new(),
            kinds: Kind::ALL.to_vec(),
            ttl_ms: (5_000, 60_000),
        }
    }
}

impl Workload {
    /// Runs the writes on `c`, pipelined 100 at a time; how many it wrote.
    pub fn run(&self, c: &mut redis::Connection, rng: &mut StdRng) -> redis::RedisResult<usize> {
        let value_kinds: Vec<Kind> = self
            .kinds
            .iter()
            .copied()
            .filter(|k| *k != Kind::Delete)
            .collect();
        let mut done = 0;
        while done < self.ops {
            let mut p = redis::pipe();
            let n = (self.ops - done).min(100);
            for _ in 0..n {
                let kind = self.kinds[rng.gen_range(0..self.kinds.len())];
                self.one(&mut p, kind, &value_kinds, rng);
            }
            p.query::<()>(c)?;
            done += n;
        }
        Ok(done)
    }

    fn key(&self, kind: Kind, rng: &mut StdRng) -> String {
        format!(
            "{}{}:{}",
            self.prefix,
            kind.name(),
            rng.gen_range(0..self.keys.max(1))
        )
    }

    fn one(&self, p: &mut redis::Pipeline, kind: Kind, value_kinds: &[Kind], rng: &mut StdRng) {
        let n: u32 = rng.gen_range(0..1000);
        match kind {
            Kind::String => {
                p.cmd("SET").arg(self.key(kind, rng)).arg(format!("v{n}"));
            }
            Kind::Counter => {
                p.cmd("INCRBY").arg(self.key(kind, rng)).arg(n % 10 + 1);
            }
            Kind::Hash => {
                p.cmd("HSET")
                    .arg(self.key(kind, rng))
                    .arg(format!("f{}", n % 8))
                    .arg(n);
            }
            Kind::List if n.is_multiple_of(4) => {
                p.cmd("LPOP").arg(self.key(kind, rng));
            }
            Kind::List => {
                p.cmd("RPUSH").arg(self.key(kind, rng)).arg(n);
            }
            Kind::Set if n.is_multiple_of(4) => {
                p.cmd("SREM").arg(self.key(kind, rng)).arg(n % 20);
            }
            Kind::Set => {
                p.cmd("SADD").arg(self.key(kind, rng)).arg(n % 20);
            }
            Kind::ZSet => {
                p.cmd("ZADD")
                    .arg(self.key(kind, rng))
                    .arg(rng.gen_range(0..100))
                    .arg(format!("m{}", n % 20));
            }
            Kind::Stream => {
                p.cmd("XADD")
                    .arg(self.key(kind, rng))
                    .arg("MAXLEN")
                    .arg(50)
                    .arg("*")
                    .arg("n")
                    .arg(n);
            }
            Kind::Session => {
                let (lo, hi) = self.ttl_ms;
                p.cmd("SET")
                    .arg(self.key(kind, rng))
                    .arg(format!("s{n}"))
                    .arg("PX")
                    .arg(rng.gen_range(lo..=hi.max(lo)));
            }
            Kind::Delete => {
                if value_kinds.is_empty() {
                    return;
                }
                let of = value_kinds[rng.gen_range(0..value_kinds.len())];
                p.cmd("DEL").arg(self.key(of, rng));
            }
        }
        p.ignore();
    }
}
