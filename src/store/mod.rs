//! The agent's side of its own Redis: reserved key names, metadata buckets,
//! and the Lua scripts that stamp and apply changes atomically.
//!
//! Everything geosync writes into a user's Redis lives under
//! [`RESERVED_PREFIX`]. Per-key metadata sits in bucket hashes
//! (`__geosync:m:<n>`), one field per user key, so that small buckets keep
//! Redis's compact listpack encoding.

pub mod locator;
pub mod tls;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value as RValue};
use serde_bytes::ByteBuf;

use crate::base::change::{Change, Collection, Op, Value};
use crate::store::locator::Locator;

/// Every key geosync owns starts with this; client keys with it are not replicated.
pub const RESERVED_PREFIX: &[u8] = b"__geosync:";
/// Prefix of the metadata bucket hashes.
pub const META_PREFIX: &str = "__geosync:m:";
/// Number of metadata buckets per database. Fixed: changing it would orphan
/// existing metadata. 16384 buckets stay in listpack encoding (at most 128
/// fields each) up to about two million keys per database.
pub const META_BUCKETS: u32 = 16384;
/// Key holding the database's flush floor: the stamp of the last FLUSHDB.
pub const FLOOR_KEY: &str = "__geosync:floor";
/// Offset of the flag byte ('v' value, 't' tombstone) in a metadata record
/// (after the 20-byte stamp; see scripts/lib.lua).
pub const RECORD_FLAG_AT: usize = crate::base::hlc::ENCODED_LEN;
/// Key the apply scripts write first, marking their transaction as geosync's.
pub const APPLY_MARKER_KEY: &str = "__geosync:applied";

const LIB: &str = include_str!("scripts/lib.lua");
const STAMP: &str = include_str!("scripts/stamp.lua");
const APPLY: &str = include_str!("scripts/apply.lua");
const FLUSH: &str = include_str!("scripts/flush.lua");
const READ: &str = include_str!("scripts/read.lua");
const FREEZE: &str = include_str!("scripts/freeze.lua");
const PIECE: &str = include_str!("scripts/piece.lua");
const CLAIM: &str = include_str!("scripts/claim.lua");
/// Metadata buckets listed per round trip when records are read back.
const BUCKETS_PER_READ: usize = 64;
/// Prefix of the private copies of collections being read in pieces.
pub const COPY_PREFIX: &[u8] = b"__geosync:x:";
/// Prefix of the keys collections arriving in pieces are built in.
pub const BUILD_PREFIX: &[u8] = b"__geosync:in:";

/// The key a collection arriving in pieces with `stamp` is built in.
pub fn build_key(stamp: &str, key: &[u8]) -> Vec<u8> {
    let mut k = BUILD_PREFIX.to_vec();
    k.extend_from_slice(stamp.as_bytes());
    k.push(b':');
    k.extend_from_slice(key);
    k
}

/// True for keys in geosync's reserved namespace.
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// The metadata bucket of a key (FNV-1a, stable across versions and hosts).
pub fn meta_bucket(key: &[u8]) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in key {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("{META_PREFIX}{}", h % META_BUCKETS)
}

/// Errors talking to the local Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection or command failure.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The master could not be found (Sentinel).
    #[error("{0}")]
    Locate(#[from] crate::store::locator::LocateError),
    /// A script answered something this version does not understand.
    #[error("unexpected script reply: {0}")]
    BadReply(String),
}

impl StoreError {
    /// Connection trouble is worth retrying; a bad reply is a bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::ReadOnly
                        )
                    )
            }
            StoreError::Locate(_) => true,
            StoreError::BadReply(_) => false,
        }
    }
}

/// Which of the scripts a pipelined call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Stamp,
    Apply,
    Flush,
    Read,
    Freeze,
    Piece,
    Claim,
}

impl Which {
    const ALL: [Which; 7] = [
        Which::Stamp,
        Which::Apply,
        Which::Flush,
        Which::Read,
        Which::Freeze,
        Which::Piece,
        Which::Claim,
    ];

    fn source(self) -> &'static str {
        match self {
            Which::Stamp => STAMP,
            Which::Apply => APPLY,
            Which::Flush => FLUSH,
            Which::Read => READ,
            Which::Freeze => FREEZE,
            Which::Piece => PIECE,
            Which::Claim => CLAIM,
        }
    }
}

/// One script call of a pipeline: database, script, KEYS, ARGV.
type Call = (u32, Which, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// A compiled script: body and SHA1.
struct Script {
    body: String,
    sha: String,
}

/// The line of `scripts/lib.lua` that [`set_max_key_elements`] rewrites.
const MAX_ELEMENTS_LINE: &str = "local MAX_ELEMENTS = 250000 -- @max-key-elements";

/// Default of `--max-key-elements`.
pub const DEFAULT_MAX_KEY_ELEMENTS: u64 = 250_000;

static MAX_KEY_ELEMENTS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_KEY_ELEMENTS);

/// Sets the most elements of a collection the scripts read (and the most
/// elements one stamp script reads); applies to stores created afterwards.
pub fn set_max_key_elements(n: u64) {
    MAX_KEY_ELEMENTS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The current `--max-key-elements`.
pub fn max_key_elements() -> u64 {
    MAX_KEY_ELEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

impl Script {
    fn new(main: &str) -> Self {
        let max = max_key_elements();
        let lib = LIB.replace(
            MAX_ELEMENTS_LINE,
            &format!("local MAX_ELEMENTS = {max} -- @max-key-elements"),
        );
        let body = format!("{lib}\n{main}");
        let sha = redis::Script::new(&body).get_hash().to_string();
        Script { body, sha }
    }
}

/// What the stamp script found for one database.
#[derive(Debug, Default)]
pub struct StampOutcome {
    /// Changes to ship.
    pub changes: Vec<Change>,
    /// Keys whose metadata holds a newer stamp: (key, that stamp).
    pub retry: Vec<(Bytes, String)>,
    /// Keys geosync cannot carry: (key, reason). The reason is the name
    /// `TYPE` gives (a module's type name for module data), or
    /// `too_large:<type>:<elements>` past `--max-key-elements`.
    pub unsupported: Vec<(Bytes, String)>,
    /// Keys left for the next batch: the script had read enough elements.
    pub deferred: Vec<Bytes>,
}

/// What the freeze script did with a key.
#[derive(Debug)]
pub enum Freeze {
    /// The key was copied.
    Frozen(Frozen),
    /// The floor or the key's record holds this newer stamp.
    Retry(String),
    /// The key is gone, or travels whole.
    Whole,
}

/// A collection copied for reading in pieces.
#[derive(Debug, Clone)]
pub struct Frozen {
    /// Its type.
    pub kind: Collection,
    /// Its absolute expiry.
    pub expire_at_ms: Option<i64>,
    /// Its number of elements.
    pub len: u64,
    /// Its metadata record when it was copied ("" when none).
    pub record: String,
}

/// One piece of a frozen copy.
#[derive(Debug)]
pub enum Piece {
    /// Flat items, and where to go on (None: this was the last piece).
    Items {
        /// Where the next piece starts.
        next: Option<String>,
        /// The piece's flat items.
        items: Vec<Vec<u8>>,
    },
    /// The copy cannot be shipped: `gone`, or `hash+ttl`.
    Refused(String),
}

/// What applying one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes that won and were written.
    pub applied: u64,
    /// Changes older than (or equal to) what the key already had.
    pub older: u64,
    /// Collections that arrived in pieces whose seal did not match what
    /// had been built: a piece went missing, and it was not applied.
    pub incomplete: u64,
}

/// A connection to the local Redis for one pipeline stage.
///
/// Each stage owns its own `Store`, so `SELECT` state is never shared.
pub struct Store {
    locator: Locator,
    epoch: tokio::sync::watch::Receiver<u64>,
    conn: Option<MultiplexedConnection>,
    /// One per [`Which`], in the order of [`Which::ALL`].
    scripts: Vec<Script>,
}

impl Store {
    /// A store for the Redis at `url` (connects lazily).
    pub fn new(locator: Locator) -> Self {
        Store {
            epoch: locator.epoch(),
            locator,
            conn: None,
            scripts: Which::ALL.iter().map(|w| Script::new(w.source())).collect(),
        }
    }

    /// The live connection, connecting if needed.
    pub async fn conn(&mut self) -> Result<&mut MultiplexedConnection, StoreError> {
        // Sentinel switched the master: leave the old one now.
        if self.epoch.has_changed().unwrap_or(false) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.epoch.mark_unchanged();
            let client = self.locator.master().await?;
            self.conn = Some(crate::store::locator::connect(&client).await?);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    fn script(&self, which: Which) -> &Script {
        &self.scripts[which as usize]
    }

    /// Runs a pipeline of `SELECT db` + script calls, loading the scripts
    /// when the server lost them (a restart), and dropping the connection on
    /// connection errors so the next call reconnects.
    async fn run(&mut self, calls: &[Call]) -> Result<Vec<RValue>, StoreError> {
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            for (db, which, keys, args) in calls {
                let script = self.script(*which);
                pipe.cmd("SELECT").arg(*db).ignore();
                pipe.cmd("EVALSHA")
                    .arg(&script.sha)
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args);
            }
            let conn = self.conn().await?;
            let res: Result<Vec<RValue>, RedisError> = pipe.query_async(conn).await;
            match res {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    let bodies: Vec<String> = self.scripts.iter().map(|s| s.body.clone()).collect();
                    let conn = self.conn().await?;
                    for body in bodies {
                        let _: String = redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(body)
                            .query_async(conn)
                            .await?;
                    }
                }
                Err(e) => {
                    // After a failover the old master answers READONLY: find the new one.
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_unrecoverable_error()
                        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    {
                        self.conn = None;
                    }
                    return Err(e.into());
                }
            }
        }
        unreachable!("second attempt returns")
    }

    /// Stamps dirty keys, grouped by database, with one stamp, in one
    /// pipelined round trip (one atomic script per database).
    ///
    /// With `reship = Some(floor)`, unchanged keys last stamped by this node
    /// (`node_id`) after `floor` are shipped again with their recorded stamp
    /// (used after a restart, when the outbox is gone).
    pub async fn stamp(
        &mut self,
        per_db: &[(u32, Vec<Bytes>)],
        stamp: &str,
        reship: Option<&str>,
        node_id: u32,
    ) -> Result<Vec<StampOutcome>, StoreError> {
        let args = vec![
            stamp.as_bytes().to_vec(),
            reship.unwrap_or("").as_bytes().to_vec(),
            node_suffix(node_id).into_bytes(),
        ];
        let calls: Vec<_> = per_db
            .iter()
            .map(|(db, keys)| {
                let mut k: Vec<Vec<u8>> = Vec::with_capacity(keys.len() * 2 + 1);
                k.push(FLOOR_KEY.as_bytes().to_vec());
                for key in keys {
                    k.push(key.to_vec());
                    k.push(meta_bucket(key).into_bytes());
                }
                (*db, Which::Stamp, k, args.clone())
            })
            .collect();
        let replies = self.run(&calls).await?;
        per_db
            .iter()
            .zip(replies)
            .map(|((db, _), reply)| parse_stamp_reply(*db, reply))
            .collect()
    }

    /// Applies one peer batch: one atomic script per database (flushes in
    /// their own call, in order), all in one pipelined round trip.
    pub async fn apply(&mut self, changes: &[Change]) -> Result<ApplyOutcome, StoreError> {
        let mut calls: Vec<Call> = Vec::new();
        // Segments: consecutive changes of one database without a flush.
        let mut open: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        let mut counts: Vec<usize> = Vec::new();
        for c in changes {
            if let Op::FlushDb = c.op {
                open.remove(&c.db);
                calls.push((
                    c.db,
                    Which::Flush,
                    vec![FLOOR_KEY.into(), APPLY_MARKER_KEY.into()],
                    vec![
                        c.stamp.clone().into_bytes(),
                        META_PREFIX.into(),
                        b"peer".to_vec(),
                    ],
                ));
                counts.push(0);
                continue;
            }
            let idx = *open.entry(c.db).or_insert_with(|| {
                calls.push((
                    c.db,
                    Which::Apply,
                    vec![FLOOR_KEY.into(), APPLY_MARKER_KEY.into()],
                    vec![],
                ));
                counts.push(0);
                calls.len() - 1
            });
            let (_, _, keys, args) = &mut calls[idx];
            counts[idx] += 1;
            keys.push(c.key.to_vec());
            keys.push(meta_bucket(&c.key).into_bytes());
            keys.push(build_key(&c.stamp, &c.key));
            args.push(c.stamp.clone().into_bytes());
            let mut value_args = |op: &[u8], value: &Value, n: i64| {
                let flat = value.to_flat();
                args.push(op.to_vec());
                args.push(value.type_name().into());
                args.push(n.to_string().into_bytes());
                args.push(flat.len().to_string().into_bytes());
                args.extend(flat);
            };
            match &c.op {
                Op::Put {
                    value,
                    expire_at_ms,
                } => value_args(b"p", value, expire_at_ms.unwrap_or(-1)),
                Op::Part { at, value } => value_args(b"P", value, *at as i64),
                Op::Seal {
                    kind,
                    expire_at_ms,
                    len,
                    digest,
                } => {
                    args.push(b"S".to_vec());
                    args.push(kind.type_name().into());
                    args.push(expire_at_ms.unwrap_or(-1).to_string().into_bytes());
                    args.push(len.to_string().into_bytes());
                    args.push(digest.clone().into_bytes());
                }
                Op::Delete => args.push(b"d".to_vec()),
                Op::FlushDb => unreachable!("handled above"),
            }
        }
        if calls.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let replies = self.run(&calls).await?;
        let mut out = ApplyOutcome::default();
        for ((_, which, _, _), reply) in calls.iter().zip(replies) {
            if *which == Which::Flush {
                let (deleted, _) = parse_flush_reply(reply)?;
                if deleted >= 0 {
                    out.applied += 1;
                } else {
                    out.older += 1;
                }
                continue;
            }
            let RValue::Array(items) = reply else {
                return Err(StoreError::BadReply(format!("apply: {reply:?}")));
            };
            for it in items {
                match it {
                    RValue::Int(1) => out.applied += 1,
                    RValue::Int(0) => out.older += 1,
                    RValue::Int(2) => out.incomplete += 1,
                    other => return Err(StoreError::BadReply(format!("apply item: {other:?}"))),
                }
            }
        }
        Ok(out)
    }

    /// Every key of database `db` that has a metadata record, as changes
    /// carrying their recorded stamps, sent to `out` in batches of about
    /// `batch` keys; stops early when `out` closes. Used to rebuild a peer's
    /// region.
    ///
    /// With `only = Some((after, node_id))`, only records stamped by that
    /// node after `after` (an outbox catch-up for one peer).
    pub async fn read_recorded(
        &mut self,
        db: u32,
        batch: usize,
        only: Option<(&str, u32)>,
        out: &tokio::sync::mpsc::Sender<Vec<Change>>,
    ) -> Result<u64, StoreError> {
        let (after, own) = match only {
            Some((after, node)) => (after.to_string(), node_suffix(node)),
            None => (String::new(), String::new()),
        };
        let filter = vec![after.clone().into_bytes(), own.clone().into_bytes()];
        let mut buckets: Vec<Vec<u8>> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let conn = self.conn().await?;
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::pipe()
                .cmd("SELECT")
                .arg(db)
                .ignore()
                .cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{META_PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async::<((u64, Vec<Vec<u8>>),)>(conn)
                .await?
                .0;
            buckets.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut sent = 0u64;
        let mut keys: Vec<Bytes> = Vec::new();
        let groups = buckets.chunks(BUCKETS_PER_READ).count();
        for (i, group) in buckets.chunks(BUCKETS_PER_READ).enumerate() {
            let conn = self.conn().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(db).ignore();
            for bucket in group {
                pipe.cmd("HKEYS").arg(bucket);
            }
            let fields: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
            keys.extend(fields.into_iter().flatten().map(Bytes::from));
            let last = i + 1 == groups;
            while keys.len() >= batch || (last && !keys.is_empty()) {
                let take = keys.len().min(batch);
                let mut k: Vec<Vec<u8>> = Vec::with_capacity(take * 2);
                for key in keys.drain(..take) {
                    let bucket = meta_bucket(&key);
                    k.push(key.to_vec());
                    k.push(bucket.into_bytes());
                }
                let reply = self.run_one(db, Which::Read, k, filter.clone()).await?;
                let outcome = parse_stamp_reply(db, reply)?;
                sent += outcome.changes.len() as u64;
                if !outcome.changes.is_empty() && out.send(outcome.changes).await.is_err() {
                    return Ok(sent);
                }
                for (key, reason) in outcome.unsupported {
                    if !crate::stamp::large::travels_in_pieces(&reason) {
                        continue;
                    }
                    let sink = crate::stamp::large::Sink::Channel(out);
                    match crate::stamp::large::ship_recorded(self, db, &key, &after, &own, &sink)
                        .await
                    {
                        Ok(true) => sent += 1,
                        Ok(false) => {}
                        Err(crate::stamp::large::LargeError::Store(e)) => return Err(e),
                        Err(crate::stamp::large::LargeError::Stopped) => return Ok(sent),
                        Err(e) => {
                            tracing::warn!(db, key = %String::from_utf8_lossy(&key), error = %e, "a large key was left out")
                        }
                    }
                }
            }
        }
        Ok(sent)
    }

    /// Runs one script and returns its reply.
    async fn run_one(
        &mut self,
        db: u32,
        which: Which,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<RValue, StoreError> {
        self.run(&[(db, which, keys, args)])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::BadReply("no reply".into()))
    }

    /// Copies a collection too large to read in one script to `copy`, if it
    /// still is one and (with `stamp`) nothing newer is recorded for it
    /// (scripts/freeze.lua).
    pub async fn freeze(
        &mut self,
        db: u32,
        key: &[u8],
        copy: &[u8],
        stamp: Option<&str>,
    ) -> Result<Freeze, StoreError> {
        let keys = vec![
            FLOOR_KEY.into(),
            key.to_vec(),
            meta_bucket(key).into_bytes(),
            copy.to_vec(),
        ];
        let reply = self
            .run_one(db, Which::Freeze, keys, vec![stamp.unwrap_or("").into()])
            .await?;
        let bad = || StoreError::BadReply(format!("freeze: {reply:?}"));
        let RValue::Array(parts) = &reply else {
            return Err(bad());
        };
        let word = parts.first().and_then(bulk).ok_or_else(bad)?;
        match word.as_slice() {
            b"whole" => Ok(Freeze::Whole),
            b"retry" => {
                let s = parts.get(1).and_then(bulk).ok_or_else(bad)?;
                Ok(Freeze::Retry(String::from_utf8_lossy(&s).into_owned()))
            }
            b"frozen" => {
                let [_, t, RValue::Int(exp), RValue::Int(len), record] = parts.as_slice() else {
                    return Err(bad());
                };
                let t = bulk(t).ok_or_else(bad)?;
                let kind =
                    Collection::from_type_name(&String::from_utf8_lossy(&t)).ok_or_else(bad)?;
                let record = bulk(record).ok_or_else(bad)?;
                Ok(Freeze::Frozen(Frozen {
                    kind,
                    expire_at_ms: (*exp > 0).then_some(*exp),
                    len: u64::try_from(*len).map_err(|_| bad())?,
                    record: String::from_utf8(record).map_err(|_| bad())?,
                }))
            }
            _ => Err(bad()),
        }
    }

    /// One piece of a frozen copy from position `pos` ("0" to start):
    /// the position to go on from (None after the last piece) and the flat
    /// items (scripts/piece.lua).
    pub async fn piece(
        &mut self,
        db: u32,
        copy: &[u8],
        kind: Collection,
        pos: &str,
        elements: usize,
    ) -> Result<Piece, StoreError> {
        let args = vec![
            kind.type_name().into(),
            pos.into(),
            elements.to_string().into_bytes(),
        ];
        let reply = self
            .run_one(db, Which::Piece, vec![copy.to_vec()], args)
            .await?;
        let bad = || StoreError::BadReply(format!("piece: {reply:?}"));
        let RValue::Array(parts) = &reply else {
            return Err(bad());
        };
        let [next, RValue::Array(items), refusal] = parts.as_slice() else {
            return Err(bad());
        };
        let refusal = bulk(refusal).ok_or_else(bad)?;
        if !refusal.is_empty() {
            return Ok(Piece::Refused(
                String::from_utf8_lossy(&refusal).into_owned(),
            ));
        }
        let next = String::from_utf8(bulk(next).ok_or_else(bad)?).map_err(|_| bad())?;
        let items = items
            .iter()
            .map(bulk)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok(Piece::Items {
            next: (!next.is_empty()).then_some(next),
            items,
        })
    }

    /// Records `stamp` and `digest` for a frozen collection, unless its
    /// record is no longer `seen` (scripts/claim.lua). Err(newer stamp, or
    /// "" when the record went away) when it must be tried again.
    pub async fn claim(
        &mut self,
        db: u32,
        key: &[u8],
        stamp: &str,
        seen: &str,
        digest: &str,
        expire_at_ms: Option<i64>,
    ) -> Result<Result<(), String>, StoreError> {
        let keys = vec![
            FLOOR_KEY.into(),
            key.to_vec(),
            meta_bucket(key).into_bytes(),
        ];
        let args = vec![
            stamp.into(),
            seen.into(),
            digest.into(),
            expire_at_ms.unwrap_or(-1).to_string().into_bytes(),
        ];
        let reply = self.run_one(db, Which::Claim, keys, args).await?;
        let bad = || StoreError::BadReply(format!("claim: {reply:?}"));
        let RValue::Array(parts) = &reply else {
            return Err(bad());
        };
        match parts.as_slice() {
            [ok] if bulk(ok).as_deref() == Some(b"ok") => Ok(Ok(())),
            [word, newer] if bulk(word).as_deref() == Some(b"retry") => Ok(Err(
                String::from_utf8_lossy(&bulk(newer).ok_or_else(bad)?).into_owned(),
            )),
            _ => Err(bad()),
        }
    }

    /// Deletes a private copy (in the background: it may be large).
    pub async fn drop_copy(&mut self, db: u32, copy: &[u8]) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        redis::pipe()
            .cmd("SELECT")
            .arg(db)
            .ignore()
            .cmd("UNLINK")
            .arg(copy)
            .ignore()
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// The names of the modules the server has loaded (`MODULE LIST`), to
    /// say which module a skipped key's type belongs to.
    pub async fn module_names(&mut self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        let reply: RValue = redis::cmd("MODULE").arg("LIST").query_async(conn).await?;
        Ok(crate::stamp::module_keys::module_names(&reply))
    }

    /// Records a local FLUSHDB/FLUSHALL: raises the floor of each database
    /// to `stamp` and removes what peers' changes wrote between the flush
    /// and this stamp (see scripts/flush.lua). Returns, per database, the
    /// keys clients wrote after the FLUSHDB that were stamped before it and
    /// must be stamped again.
    pub async fn flush_local(
        &mut self,
        dbs: &[u32],
        stamp: &str,
        node_id: u32,
    ) -> Result<Vec<(u32, Vec<Bytes>)>, StoreError> {
        let calls: Vec<Call> = dbs
            .iter()
            .map(|db| {
                (
                    *db,
                    Which::Flush,
                    vec![FLOOR_KEY.into(), APPLY_MARKER_KEY.into()],
                    vec![
                        stamp.as_bytes().to_vec(),
                        META_PREFIX.into(),
                        b"local".to_vec(),
                        node_suffix(node_id).into_bytes(),
                    ],
                )
            })
            .collect();
        let replies = self.run(&calls).await?;
        dbs.iter()
            .zip(replies)
            .map(|(db, r)| Ok((*db, parse_flush_reply(r)?.1)))
            .collect()
    }
}

/// A flush script's reply: keys deleted (-1: already flushed later) and keys
/// to stamp again.
fn parse_flush_reply(reply: RValue) -> Result<(i64, Vec<Bytes>), StoreError> {
    let bad = || StoreError::BadReply(format!("flush: {reply:?}"));
    let RValue::Array(parts) = &reply else {
        return Err(bad());
    };
    match parts.as_slice() {
        [RValue::Int(n), RValue::Array(keys)] => {
            let keys = keys
                .iter()
                .map(|k| bulk(k).map(Bytes::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?;
            Ok((*n, keys))
        }
        _ => Err(bad()),
    }
}

fn bulk(v: &RValue) -> Option<Vec<u8>> {
    match v {
        RValue::BulkString(b) => Some(b.clone()),
        RValue::SimpleString(s) => Some(s.clone().into_bytes()),
        RValue::Okay => Some(b"OK".to_vec()),
        RValue::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn bulk_pairs(v: &RValue, what: &str) -> Result<Vec<(Bytes, String)>, StoreError> {
    let RValue::Array(items) = v else {
        return Err(StoreError::BadReply(format!("{what}: {v:?}")));
    };
    items
        .chunks(2)
        .map(|c| match c {
            [a, b] => match (bulk(a), bulk(b)) {
                (Some(a), Some(b)) => {
                    Ok((Bytes::from(a), String::from_utf8_lossy(&b).into_owned()))
                }
                _ => Err(StoreError::BadReply(format!("{what}: {c:?}"))),
            },
            _ => Err(StoreError::BadReply(format!("{what}: odd length"))),
        })
        .collect()
}

/// The last four hex digits of every stamp this node makes.
pub fn node_suffix(node_id: u32) -> String {
    let id = crate::base::hlc::node_id_to_id(node_id).expect("validated node id");
    let ts = uhlc::Timestamp::new(uhlc::NTP64(0), id);
    crate::base::hlc::encode(&ts)[16..].to_string()
}

fn parse_stamp_reply(db: u32, reply: RValue) -> Result<StampOutcome, StoreError> {
    let bad = |what: &str| StoreError::BadReply(format!("stamp: {what}"));
    let RValue::Array(parts) = reply else {
        return Err(bad("not an array"));
    };
    let [changes, retry, unsupported, RValue::Array(deferred)] = parts.as_slice() else {
        return Err(bad("want four parts"));
    };
    let deferred = deferred
        .iter()
        .map(|k| bulk(k).map(Bytes::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("deferred key"))?;
    let RValue::Array(changes) = changes else {
        return Err(bad("changes not an array"));
    };
    let mut out = StampOutcome {
        retry: bulk_pairs(retry, "retry")?,
        unsupported: bulk_pairs(unsupported, "unsupported")?,
        deferred,
        ..Default::default()
    };
    for c in changes {
        let RValue::Array(f) = c else {
            return Err(bad("change not an array"));
        };
        let key = f.first().and_then(bulk).ok_or_else(|| bad("key"))?;
        let stamp = f.get(1).and_then(bulk).ok_or_else(|| bad("stamp"))?;
        let op = f.get(2).and_then(bulk).ok_or_else(|| bad("op"))?;
        let op = match op.as_slice() {
            b"d" => Op::Delete,
            b"p" => {
                let t = f.get(3).and_then(bulk).ok_or_else(|| bad("type"))?;
                let t = String::from_utf8_lossy(&t).into_owned();
                let exp = match f.get(4) {
                    Some(RValue::Int(n)) => *n,
                    _ => return Err(bad("expiry")),
                };
                let Some(RValue::Array(flat)) = f.get(5) else {
                    return Err(bad("value"));
                };
                let flat: Vec<Vec<u8>> = flat
                    .iter()
                    .map(bulk)
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("value item"))?;
                let value = Value::from_flat(&t, &flat).map_err(|e| bad(&e.to_string()))?;
                Op::Put {
                    value,
                    expire_at_ms: (exp > 0).then_some(exp),
                }
            }
            _ => return Err(bad("unknown op")),
        };
        out.changes.push(Change {
            db,
            key: ByteBuf::from(key),
            stamp: String::from_utf8_lossy(&stamp).into_owned(),
            op,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        // Fixed values: a change here would orphan every deployed metadata record.
        assert_eq!(
            meta_bucket(b""),
            format!("{META_PREFIX}{}", 0x811c9dc5u32 % META_BUCKETS)
        );
        assert_eq!(meta_bucket(b"user:1"), meta_bucket(b"user:1"));
        for k in 0..1000u32 {
            let b = meta_bucket(k.to_string().as_bytes());
            let n: u32 = b[META_PREFIX.len()..].parse().unwrap();
            assert!(n < META_BUCKETS);
        }
    }

    #[test]
    fn node_suffix_is_the_end_of_every_stamp() {
        let clock =
            crate::base::hlc::new_clock(300, std::time::Duration::from_millis(500)).unwrap();
        let s = crate::base::hlc::encode(&clock.new_timestamp());
        assert!(s.ends_with(&node_suffix(300)));
        assert_eq!(node_suffix(1), "0100");
    }

    #[test]
    fn reserved_prefix() {
        assert!(is_reserved(b"__geosync:m:1"));
        assert!(!is_reserved(b"__geosync"));
        assert!(!is_reserved(b"user"));
    }
}
