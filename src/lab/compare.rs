//! The convergence checker: a database read into a comparable snapshot,
//! and the differences between two snapshots.
//!
//! Everything that travels between regions is compared: each key's type,
//! value and absolute expiry (hash fields with their own expiries; for a
//! stream its entries, last id, entries-added, max-deleted id, and each
//! consumer group's last-delivered id and entries-read), and geosync's
//! metadata record per key (stamp, value or tombstone). A key that exists
//! in one region only and expires within [`EXPIRY_MARGIN_MS`] may be gone
//! in the other at the moment of reading: it is excused, and counted and
//! named in [`Comparison::expiring`], never skipped silently.

use std::collections::BTreeMap;

use redis::{Commands, Connection, Value};

use super::env::now_ms;
use crate::store::layout::{RESERVED_PREFIX, Record, bucket_prefix, metadata_db};

/// A key's comparable value. Its `Debug` form shows bytes as text (lossy
/// UTF-8), so that a report of differing values reads like the values.
#[derive(Clone, PartialEq)]
pub enum KeyValue {
    /// A string.
    String(Vec<u8>),
    /// A list's elements in order.
    List(Vec<Vec<u8>>),
    /// A set's members, sorted.
    Set(Vec<Vec<u8>>),
    /// A sorted set's members and scores, in order.
    ZSet(Vec<(Vec<u8>, String)>),
    /// A hash's fields and values, sorted.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// A hash with field expiries (Redis 7.4+): field, value, expiry or -1.
    HashTtl(Vec<(Vec<u8>, Vec<u8>, i64)>),
    /// A stream: everything about it that travels.
    Stream(StreamValue),
    /// Another type (a module's), or a key that changed while it was read.
    Other(String),
}

impl KeyValue {
    /// The command that reads a key of type `kind` whole in one reply, for
    /// the types compared from that reply alone (not streams, module types,
    /// nor hashes' field expiries, which take more reads).
    pub fn read_command(kind: &str, key: &[u8]) -> Option<redis::Cmd> {
        let mut c;
        match kind {
            "string" => {
                c = redis::cmd("GET");
                c.arg(key);
            }
            "list" => {
                c = redis::cmd("LRANGE");
                c.arg(key).arg(0).arg(-1);
            }
            "set" => {
                c = redis::cmd("SMEMBERS");
                c.arg(key);
            }
            "zset" => {
                c = redis::cmd("ZRANGE");
                c.arg(key).arg(0).arg(-1).arg("WITHSCORES");
            }
            "hash" => {
                c = redis::cmd("HGETALL");
                c.arg(key);
            }
            _ => return None,
        }
        Some(c)
    }

    /// The comparable value of type `kind` from the reply of its
    /// [`KeyValue::read_command`]: set members and hash fields sorted.
    /// None when the reply is not of that type (the key changed between
    /// the `TYPE` and the read) or the type has no such command.
    pub fn from_reply(kind: &str, reply: Value) -> Option<KeyValue> {
        use redis::FromRedisValue;
        Some(match kind {
            "string" => KeyValue::String(Vec::<u8>::from_redis_value(reply).ok()?),
            "list" => KeyValue::List(Vec::<Vec<u8>>::from_redis_value(reply).ok()?),
            "set" => {
                let mut m = Vec::<Vec<u8>>::from_redis_value(reply).ok()?;
                m.sort();
                KeyValue::Set(m)
            }
            "zset" => {
                let flat = Vec::<Vec<u8>>::from_redis_value(reply).ok()?;
                if flat.len() % 2 != 0 {
                    return None;
                }
                KeyValue::ZSet(
                    flat.chunks(2)
                        .map(|p| (p[0].clone(), String::from_utf8_lossy(&p[1]).into_owned()))
                        .collect(),
                )
            }
            "hash" => {
                let mut m = Vec::<(Vec<u8>, Vec<u8>)>::from_redis_value(reply).ok()?;
                m.sort();
                KeyValue::Hash(m)
            }
            _ => return None,
        })
    }
}

/// Bytes shown as text in reports.
struct Text<'a>(&'a [u8]);

impl std::fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0))
    }
}

fn texts(v: &[Vec<u8>]) -> Vec<Text<'_>> {
    v.iter().map(|x| Text(x)).collect()
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::String(v) => f.debug_tuple("String").field(&Text(v)).finish(),
            KeyValue::List(v) => f.debug_tuple("List").field(&texts(v)).finish(),
            KeyValue::Set(v) => f.debug_tuple("Set").field(&texts(v)).finish(),
            KeyValue::ZSet(v) => {
                let v: Vec<_> = v.iter().map(|(m, s)| (Text(m), s)).collect();
                f.debug_tuple("ZSet").field(&v).finish()
            }
            KeyValue::Hash(v) => {
                let v: Vec<_> = v.iter().map(|(k, x)| (Text(k), Text(x))).collect();
                f.debug_tuple("Hash").field(&v).finish()
            }
            KeyValue::HashTtl(v) => {
                let v: Vec<_> = v.iter().map(|(k, x, t)| (Text(k), Text(x), t)).collect();
                f.debug_tuple("HashTtl").field(&v).finish()
            }
            KeyValue::Stream(v) => f.debug_tuple("Stream").field(v).finish(),
            KeyValue::Other(v) => f.debug_tuple("Other").field(v).finish(),
        }
    }
}

/// The replicated state of a stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamValue {
    /// (id, field/value list) in id order.
    pub entries: Vec<(String, Vec<Vec<u8>>)>,
    /// `last-generated-id`.
    pub last_id: String,
    /// `entries-added`.
    pub entries_added: i64,
    /// `max-deleted-entry-id`.
    pub max_deleted_id: String,
    /// Consumer groups, sorted by name.
    pub groups: Vec<GroupValue>,
}

/// The replicated state of a consumer group.
#[derive(Debug, Clone, PartialEq, PartialOrd, Eq, Ord)]
pub struct GroupValue {
    /// Its name.
    pub name: Vec<u8>,
    /// `last-delivered-id`.
    pub last_delivered_id: String,
    /// `entries-read` (None when the server does not know it).
    pub entries_read: Option<i64>,
}

/// A key's value and absolute expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// The value.
    pub value: KeyValue,
    /// Absolute expiry in Unix ms, if the key has one.
    pub expire_at: Option<i64>,
}

/// A database's user keys and geosync metadata.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every user key.
    pub keys: BTreeMap<Vec<u8>, KeyState>,
    /// key → (stamp, flag `v`/`t`, expiry) from the metadata buckets.
    pub meta: BTreeMap<Vec<u8>, (String, char, Option<i64>)>,
    /// When the reading ended (Unix ms).
    pub taken_at: i64,
}

fn bulk(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        Value::Nil => Vec::new(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(&bulk(v)).into_owned()
}

/// The pairs of a RESP2 flat map reply (`XINFO`), or of a RESP3 map.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(f) => f
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| (text(&p[0]), &p[1]))
            .collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// The fields' expiries (HPEXPIRETIME), or None when the server has no
/// field expiry or no field of the hash expires.
pub fn field_expiries(
    c: &mut Connection,
    key: &[u8],
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Option<Vec<i64>> {
    if fields.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("HPEXPIRETIME");
    cmd.arg(key).arg("FIELDS").arg(fields.len());
    for (f, _) in fields {
        cmd.arg(f);
    }
    let exps: Vec<i64> = cmd.query(c).ok()?;
    exps.iter().any(|e| *e > 0).then_some(exps)
}

/// True when the server supports hash field expiry (Redis 7.4+).
pub fn has_field_expiry(c: &mut Connection) -> bool {
    let r: redis::RedisResult<Value> = redis::cmd("COMMAND").arg("INFO").arg("HPEXPIRE").query(c);
    matches!(r, Ok(Value::Array(v)) if v.first().is_some_and(|x| *x != Value::Nil))
}

/// Reads one key's state; None if it does not exist. A key that changes
/// type or disappears while it is read (an apply or an expiry in between)
/// reads as a value no other region can have, so a convergence wait simply
/// looks again.
pub fn read_key(c: &mut Connection, key: &[u8]) -> Option<KeyState> {
    try_read_key(c, key).unwrap_or_else(|e| {
        Some(KeyState {
            value: KeyValue::Other(format!("changed while read: {e}")),
            expire_at: None,
        })
    })
}

fn read_stream(c: &mut Connection, key: &[u8]) -> redis::RedisResult<StreamValue> {
    let entries: Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(c)?;
    let entries = match entries {
        Value::Array(es) => es
            .iter()
            .map(|e| match e {
                Value::Array(p) if p.len() == 2 => (
                    text(&p[0]),
                    match &p[1] {
                        Value::Array(f) => f.iter().map(bulk).collect(),
                        _ => vec![],
                    },
                ),
                _ => (String::new(), vec![]),
            })
            .collect(),
        _ => vec![],
    };
    let mut s = StreamValue {
        entries,
        ..Default::default()
    };
    let info: Value = redis::cmd("XINFO").arg("STREAM").arg(key).query(c)?;
    for (field, v) in pairs(&info) {
        match field.as_str() {
            "last-generated-id" => s.last_id = text(v),
            "max-deleted-entry-id" => s.max_deleted_id = text(v),
            "entries-added" => s.entries_added = text(v).parse().unwrap_or(-1),
            _ => {}
        }
    }
    let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(key).query(c)?;
    if let Value::Array(list) = groups {
        for g in &list {
            let mut group = GroupValue {
                name: vec![],
                last_delivered_id: String::new(),
                entries_read: None,
            };
            for (field, v) in pairs(g) {
                match field.as_str() {
                    "name" => group.name = bulk(v),
                    "last-delivered-id" => group.last_delivered_id = text(v),
                    "entries-read" => group.entries_read = text(v).parse().ok(),
                    _ => {}
                }
            }
            s.groups.push(group);
        }
    }
    s.groups.sort();
    Ok(s)
}

fn try_read_key(c: &mut Connection, key: &[u8]) -> redis::RedisResult<Option<KeyState>> {
    let t: String = redis::cmd("TYPE").arg(key).query(c)?;
    let whole = |c: &mut Connection| -> redis::RedisResult<KeyValue> {
        let reply: Value = KeyValue::read_command(&t, key)
            .expect("a type read whole")
            .query(c)?;
        // A key that changed type between TYPE and the read is read again
        // by the caller's next look.
        Ok(KeyValue::from_reply(&t, reply)
            .unwrap_or_else(|| KeyValue::Other(format!("changed while read: no longer a {t}"))))
    };
    let value = match t.as_str() {
        "none" => return Ok(None),
        "string" | "list" | "set" | "zset" => whole(c)?,
        "hash" => match whole(c)? {
            KeyValue::Hash(v) => match field_expiries(c, key, &v) {
                Some(exps) => KeyValue::HashTtl(
                    v.into_iter()
                        .zip(exps)
                        .map(|((f, x), e)| (f, x, e))
                        .collect(),
                ),
                None => KeyValue::Hash(v),
            },
            other => other,
        },
        "stream" => KeyValue::Stream(read_stream(c, key)?),
        other => KeyValue::Other(other.to_string()),
    };
    let exp: i64 = redis::cmd("PEXPIRETIME").arg(key).query(c)?;
    Ok(Some(KeyState {
        value,
        expire_at: (exp > 0).then_some(exp),
    }))
}

/// Every key name of the connection's database (SCAN, so a large
/// database does not block the server).
pub fn all_keys(c: &mut Connection) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(c)?;
        out.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The number of user keys (not geosync's own) of the connection's
/// database.
pub fn user_key_count(c: &mut Connection) -> redis::RedisResult<usize> {
    Ok(all_keys(c)?
        .iter()
        .filter(|k| !k.starts_with(RESERVED_PREFIX))
        .count())
}

/// Reads every user key and every metadata record of the connection's
/// database; panics when the server does not answer.
pub fn snapshot(c: &mut Connection) -> Snapshot {
    try_snapshot(c).unwrap_or_else(|e| panic!("cannot read the database: {e}"))
}

/// [`snapshot`], with the error instead of a panic.
pub fn try_snapshot(c: &mut Connection) -> redis::RedisResult<Snapshot> {
    let mut snap = Snapshot::default();
    for k in all_keys(c)? {
        if !k.starts_with(RESERVED_PREFIX)
            && let Some(s) = read_key(c, &k)
        {
            snap.keys.insert(k, s);
        }
    }
    // The records are in the metadata database, in buckets named after
    // this database (decision 020).
    let db = selected_db(c)?;
    redis::cmd("SELECT").arg(metadata_db()).exec(c)?;
    let read = records_of(c, db, &mut snap);
    redis::cmd("SELECT").arg(db).exec(c)?;
    read?;
    // Dated when the reading ended: a key that expired while it was read
    // is within the margin of this moment.
    snap.taken_at = now_ms();
    Ok(snap)
}

/// The database a connection has selected.
fn selected_db(c: &mut Connection) -> redis::RedisResult<u32> {
    let info: String = redis::cmd("CLIENT").arg("INFO").query(c)?;
    info.split_whitespace()
        .find_map(|f| f.strip_prefix("db=")?.parse().ok())
        .ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "CLIENT INFO names no database",
                info.clone(),
            ))
        })
}

/// Adds the records of database `db` to `snap`; `c` has the metadata
/// database selected.
fn records_of(c: &mut Connection, db: u32, snap: &mut Snapshot) -> redis::RedisResult<()> {
    let prefix = bucket_prefix(db);
    let mut cursor = 0u64;
    loop {
        let (next, buckets): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(c)?;
        for b in buckets {
            let recs: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(&b).unwrap_or_default();
            for (key, raw) in recs {
                let raw = String::from_utf8_lossy(&raw).into_owned();
                let Some(rec) = Record::parse(&raw) else {
                    snap.meta.insert(key, (raw.clone(), '?', None));
                    continue;
                };
                let flag = if rec.value { 'v' } else { 't' };
                snap.meta
                    .insert(key, (rec.stamp.to_string(), flag, rec.expire_at));
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Keys expiring this close to the moment of reading may be gone in one
/// region and not yet in another.
pub const EXPIRY_MARGIN_MS: i64 = 1500;

/// The outcome of comparing two snapshots.
#[derive(Debug, Default, Clone)]
pub struct Comparison {
    /// Every difference, one line each.
    pub differences: Vec<String>,
    /// Keys present in one snapshot only that expire within the margin:
    /// excused, one line each.
    pub expiring: Vec<String>,
    /// User keys compared (in either snapshot).
    pub keys: usize,
}

fn shown(k: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(k))
}

/// What [`compare_with`] leaves out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareOptions {
    /// Hashes compare by fields and values only. In a mesh of servers with
    /// and without hash field expiry (Redis 7.4+), a field's expiry exists
    /// only where the server supports it; everything else (values, key
    /// expiries, metadata) must still be identical.
    pub ignore_field_expiries: bool,
}

impl KeyState {
    /// This state with hash field expiries left out: a hash with field
    /// expiries reads as the plain hash of its fields and values.
    pub fn without_field_expiries(&self) -> KeyState {
        match &self.value {
            KeyValue::HashTtl(fields) => KeyState {
                value: KeyValue::Hash(
                    fields
                        .iter()
                        .map(|(f, v, _)| (f.clone(), v.clone()))
                        .collect(),
                ),
                expire_at: self.expire_at,
            },
            _ => self.clone(),
        }
    }
}

/// Compares two snapshots of the same database in two regions.
pub fn compare(a: &Snapshot, b: &Snapshot) -> Comparison {
    compare_with(a, b, CompareOptions::default())
}

/// [`compare`], leaving out what `options` says.
pub fn compare_with(a: &Snapshot, b: &Snapshot, options: CompareOptions) -> Comparison {
    let now = a.taken_at.max(b.taken_at);
    let expiring_soon = |s: &KeyState| s.expire_at.is_some_and(|e| e <= now + EXPIRY_MARGIN_MS);
    let mut out = Comparison::default();
    let mut keys: Vec<&Vec<u8>> = a.keys.keys().chain(b.keys.keys()).collect();
    keys.sort();
    keys.dedup();
    out.keys = keys.len();
    let read = |s: &Snapshot, k: &Vec<u8>| {
        let state = s.keys.get(k)?;
        Some(if options.ignore_field_expiries {
            state.without_field_expiries()
        } else {
            state.clone()
        })
    };
    for k in keys {
        let (x, y) = (read(a, k), read(b, k));
        let (x, y) = (x.as_ref(), y.as_ref());
        match (x, y) {
            _ if x == y => {}
            (Some(s), None) | (None, Some(s)) if expiring_soon(s) => {
                out.expiring.push(format!(
                    "key {} expires at {:?}, {} ms after the reading, and is gone on one side",
                    shown(k),
                    s.expire_at,
                    s.expire_at.unwrap_or(now) - now
                ));
            }
            _ => out
                .differences
                .push(format!("key {}: {:?} vs {:?}", shown(k), x, y)),
        }
    }
    // Metadata: an expired value record counts as the tombstone it becomes.
    let norm = |m: Option<&(String, char, Option<i64>)>| {
        m.map(|(s, f, e)| match (f, e) {
            ('v', Some(e)) if *e <= now + EXPIRY_MARGIN_MS => (s.clone(), 't'),
            _ => (s.clone(), *f),
        })
    };
    let mut mkeys: Vec<&Vec<u8>> = a.meta.keys().chain(b.meta.keys()).collect();
    mkeys.sort();
    mkeys.dedup();
    for k in mkeys {
        let (x, y) = (norm(a.meta.get(k)), norm(b.meta.get(k)));
        if x != y {
            out.differences
                .push(format!("metadata of {}: {:?} vs {:?}", shown(k), x, y));
        }
    }
    out
}

/// The differences between two snapshots, one line each (see [`compare`]).
pub fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    compare(a, b).differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: &str, expire_at: Option<i64>) -> KeyState {
        KeyState {
            value: KeyValue::String(v.as_bytes().to_vec()),
            expire_at,
        }
    }

    fn snap(keys: &[(&str, KeyState)]) -> Snapshot {
        Snapshot {
            keys: keys
                .iter()
                .map(|(k, s)| (k.as_bytes().to_vec(), s.clone()))
                .collect(),
            taken_at: 1_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_key_expiring_on_one_side_is_excused_and_counted() {
        let a = snap(&[("k", state("v", Some(1_000_500)))]);
        let b = snap(&[]);
        let c = compare(&a, &b);
        assert!(c.differences.is_empty(), "{:?}", c.differences);
        assert_eq!(c.expiring.len(), 1);
    }

    #[test]
    fn different_values_differ_even_when_about_to_expire() {
        let a = snap(&[("k", state("v", Some(1_000_500)))]);
        let b = snap(&[("k", state("w", Some(1_000_500)))]);
        let c = compare(&a, &b);
        assert_eq!(c.differences.len(), 1, "{c:?}");
        assert!(c.expiring.is_empty());
        // The report shows the values as text, not as bytes.
        assert!(
            c.differences[0].contains(r#"String("v")"#),
            "{}",
            c.differences[0]
        );
    }

    #[test]
    fn field_expiries_can_be_left_out() {
        let hash = |e: i64| KeyState {
            value: KeyValue::HashTtl(vec![(b"f".to_vec(), b"1".to_vec(), e)]),
            expire_at: Some(2_000_000),
        };
        let plain = KeyState {
            value: KeyValue::Hash(vec![(b"f".to_vec(), b"1".to_vec())]),
            expire_at: Some(2_000_000),
        };
        let a = snap(&[("h", hash(1_900_000))]);
        let b = snap(&[("h", plain.clone())]);
        assert_eq!(compare(&a, &b).differences.len(), 1);
        let leave = CompareOptions {
            ignore_field_expiries: true,
        };
        assert!(compare_with(&a, &b, leave).differences.is_empty());
        // Values and key expiries still count.
        let other = KeyState {
            expire_at: None,
            ..plain
        };
        let c = snap(&[("h", other)]);
        assert_eq!(compare_with(&a, &c, leave).differences.len(), 1);
    }

    #[test]
    fn a_key_missing_on_one_side_with_a_later_expiry_differs() {
        let a = snap(&[("k", state("v", Some(1_000_000 + EXPIRY_MARGIN_MS + 1)))]);
        let c = compare(&a, &snap(&[]));
        assert_eq!(c.differences.len(), 1, "{c:?}");
    }
}
