//! The unit of replication: one key's resulting state and its stamp.
//!
//! geosync ships state, not commands (see `docs/decisions/001-ship-state.md`):
//! a [`Change`] carries everything a peer needs to make the key identical to
//! what the origin region held when it was stamped. A collection travels
//! whole, or, past `--max-key-elements`, as [`Op::Part`]s followed by an
//! [`Op::Seal`] (decision 009).
//!
//! Inside Redis the Lua scripts see a value as a flat list of strings (see
//! [`Value::to_flat`]); on the wire it is rmp-serde of these types.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// One stamped change of one key, or a stamped flush of one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Redis database index.
    pub db: u32,
    /// The key (empty for [`Op::FlushDb`]).
    pub key: ByteBuf,
    /// Encoded stamp (see [`crate::base::hlc::encode`]).
    pub stamp: String,
    /// What happened to the key.
    pub op: Op,
}

/// What a change does to its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The key now holds `value`, expiring at `expire_at_ms` (Unix ms) if set.
    Put {
        /// The whole value.
        value: Value,
        /// Absolute expiry in Unix milliseconds.
        expire_at_ms: Option<i64>,
    },
    /// The key was deleted (a tombstone).
    Delete,
    /// Every key of the database older than the stamp was deleted (FLUSHDB).
    FlushDb,
    /// A piece of a collection too large to travel whole: `value` holds
    /// elements `at..at + value.len()` of it (in the order the origin read
    /// them). The receiver builds the pieces into a private key.
    Part {
        /// Elements of the collection before this piece.
        at: u64,
        /// The piece, as a value of the collection's type.
        value: Value,
    },
    /// The end of a collection that travelled in pieces: when every one of
    /// its `len` elements arrived, the built key replaces the key.
    Seal {
        /// The collection's type.
        kind: Collection,
        /// Absolute expiry in Unix milliseconds.
        expire_at_ms: Option<i64>,
        /// Number of elements.
        len: u64,
        /// The digest recorded for it (16 lowercase hex digits).
        digest: String,
    },
}

/// The types that can travel in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Collection {
    /// A list.
    List,
    /// A set.
    Set,
    /// A sorted set.
    ZSet,
    /// A hash without field expiries.
    Hash,
}

impl Collection {
    /// From the name `TYPE` gives; None for the types that travel whole only.
    pub fn from_type_name(name: &str) -> Option<Collection> {
        Some(match name {
            "list" => Collection::List,
            "set" => Collection::Set,
            "zset" => Collection::ZSet,
            "hash" => Collection::Hash,
            _ => return None,
        })
    }

    /// The name `TYPE` gives.
    pub fn type_name(self) -> &'static str {
        match self {
            Collection::List => "list",
            Collection::Set => "set",
            Collection::ZSet => "zset",
            Collection::Hash => "hash",
        }
    }

    /// Flat items per element: 2 for (member, score) and (field, value).
    pub fn items_per_element(self) -> usize {
        match self {
            Collection::List | Collection::Set => 1,
            Collection::ZSet | Collection::Hash => 2,
        }
    }
}

/// A key's whole value, one variant per Redis data type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A string.
    String(ByteBuf),
    /// A list, head first.
    List(Vec<ByteBuf>),
    /// A set's members.
    Set(Vec<ByteBuf>),
    /// A sorted set: (member, score as Redis prints it).
    ZSet(Vec<(ByteBuf, ByteBuf)>),
    /// A hash: (field, value).
    Hash(Vec<(ByteBuf, ByteBuf)>),
    /// A hash some of whose fields expire (Redis 7.4+): (field, value,
    /// absolute expiry in Unix ms or -1).
    HashTtl(Vec<(ByteBuf, ByteBuf, i64)>),
    /// A stream with its entries and consumer groups.
    Stream(StreamState),
}

/// The replicated part of a stream.
///
/// Consumer groups travel with their last-delivered id and entries-read
/// counter; pending-entry lists and consumers stay local to each region
/// (they describe deliveries to that region's clients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StreamState {
    /// Entries in id order: (id, field/value pairs).
    pub entries: Vec<(String, Vec<(ByteBuf, ByteBuf)>)>,
    /// The stream's last generated id.
    pub last_id: String,
    /// Count of entries ever added.
    pub entries_added: u64,
    /// Largest id ever deleted.
    pub max_deleted_id: String,
    /// Consumer groups: (name, last-delivered id, entries-read if known).
    pub groups: Vec<(ByteBuf, String, Option<u64>)>,
}

/// A flat value could not be read back into a [`Value`].
#[derive(Debug, thiserror::Error)]
#[error("malformed {kind} value: {why}")]
pub struct FlatError {
    kind: String,
    why: &'static str,
}

fn buf(b: &[u8]) -> ByteBuf {
    ByteBuf::from(b.to_vec())
}

fn pairs(items: &[Vec<u8>]) -> Option<Vec<(ByteBuf, ByteBuf)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    Some(
        items
            .chunks_exact(2)
            .map(|c| (buf(&c[0]), buf(&c[1])))
            .collect(),
    )
}

fn triples(items: &[Vec<u8>]) -> Option<Vec<(ByteBuf, ByteBuf, i64)>> {
    if !items.len().is_multiple_of(3) {
        return None;
    }
    items
        .chunks_exact(3)
        .map(|c| Some((buf(&c[0]), buf(&c[1]), text(&c[2])?.parse().ok()?)))
        .collect()
}

fn text(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

impl Value {
    /// The tag of the value's flat form: the Redis type name as `TYPE`
    /// prints it, or `hash+ttl` for a hash with field expiries.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
            Value::Hash(_) => "hash",
            Value::HashTtl(_) => "hash+ttl",
            Value::Stream(_) => "stream",
        }
    }

    /// Number of elements (1 for a string); used for metrics and batch sizing.
    pub fn len(&self) -> usize {
        match self {
            Value::String(_) => 1,
            Value::List(v) | Value::Set(v) => v.len(),
            Value::ZSet(v) | Value::Hash(v) => v.len(),
            Value::HashTtl(v) => v.len(),
            Value::Stream(s) => s.entries.len(),
        }
    }

    /// True when the value has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flat list of strings the Lua scripts read and write.
    ///
    /// Strings: the value. Lists and sets: the elements. Sorted sets and
    /// hashes: member/field and score/value alternating. Streams: last id,
    /// entries added, max deleted id, group count, then per group (name, last
    /// delivered, entries read or ""), then per entry (id, 2 × field count,
    /// fields and values).
    pub fn to_flat(&self) -> Vec<Vec<u8>> {
        fn flat_pairs(v: &[(ByteBuf, ByteBuf)]) -> Vec<Vec<u8>> {
            v.iter()
                .flat_map(|(a, b)| [a.to_vec(), b.to_vec()])
                .collect()
        }
        match self {
            Value::String(s) => vec![s.to_vec()],
            Value::List(v) | Value::Set(v) => v.iter().map(|b| b.to_vec()).collect(),
            Value::ZSet(v) | Value::Hash(v) => flat_pairs(v),
            Value::HashTtl(v) => v
                .iter()
                .flat_map(|(f, x, e)| [f.to_vec(), x.to_vec(), e.to_string().into_bytes()])
                .collect(),
            Value::Stream(s) => {
                let mut out: Vec<Vec<u8>> = vec![
                    s.last_id.clone().into_bytes(),
                    s.entries_added.to_string().into_bytes(),
                    s.max_deleted_id.clone().into_bytes(),
                    s.groups.len().to_string().into_bytes(),
                ];
                for (name, last, read) in &s.groups {
                    out.push(name.to_vec());
                    out.push(last.clone().into_bytes());
                    out.push(read.map(|r| r.to_string()).unwrap_or_default().into_bytes());
                }
                for (id, fields) in &s.entries {
                    out.push(id.clone().into_bytes());
                    out.push((fields.len() * 2).to_string().into_bytes());
                    out.extend(flat_pairs(fields));
                }
                out
            }
        }
    }

    /// Reads a value back from its type name and flat form.
    pub fn from_flat(type_name: &str, items: &[Vec<u8>]) -> Result<Value, FlatError> {
        let err = |why| FlatError {
            kind: type_name.to_string(),
            why,
        };
        match type_name {
            "string" => match items {
                [one] => Ok(Value::String(buf(one))),
                _ => Err(err("a string has exactly one item")),
            },
            "list" => Ok(Value::List(items.iter().map(|b| buf(b)).collect())),
            "set" => Ok(Value::Set(items.iter().map(|b| buf(b)).collect())),
            "zset" => pairs(items)
                .map(Value::ZSet)
                .ok_or_else(|| err("odd item count")),
            "hash" => pairs(items)
                .map(Value::Hash)
                .ok_or_else(|| err("odd item count")),
            "hash+ttl" => triples(items)
                .map(Value::HashTtl)
                .ok_or_else(|| err("want field, value, expiry triples")),
            "stream" => stream_from_flat(items)
                .map(Value::Stream)
                .ok_or_else(|| err("bad stream layout")),
            _ => Err(err("unknown type")),
        }
    }
}

fn stream_from_flat(items: &[Vec<u8>]) -> Option<StreamState> {
    let mut it = items.iter();
    let mut next = || it.next();
    let last_id = text(next()?)?;
    let entries_added = text(next()?)?.parse().ok()?;
    let max_deleted_id = text(next()?)?;
    let ngroups: usize = text(next()?)?.parse().ok()?;
    let mut groups = Vec::with_capacity(ngroups.min(1024));
    for _ in 0..ngroups {
        let name = buf(next()?);
        let last = text(next()?)?;
        let read = text(next()?)?;
        let read = if read.is_empty() {
            None
        } else {
            Some(read.parse().ok()?)
        };
        groups.push((name, last, read));
    }
    let mut entries = Vec::new();
    while let Some(id) = next() {
        let id = text(id)?;
        let n: usize = text(next()?)?.parse().ok()?;
        if !n.is_multiple_of(2) {
            return None;
        }
        let mut fields = Vec::with_capacity((n / 2).min(1024));
        for _ in 0..n / 2 {
            let f = buf(next()?);
            let v = buf(next()?);
            fields.push((f, v));
        }
        entries.push((id, fields));
    }
    Some(StreamState {
        entries,
        last_id,
        entries_added,
        max_deleted_id,
        groups,
    })
}

/// Encodes a batch of changes for the wire.
pub fn encode_batch(changes: &[Change]) -> Vec<u8> {
    rmp_serde::to_vec(changes).expect("changes always serialize")
}

/// Bytes of a batch's encoding besides its changes (the array header).
const BATCH_HEADER: usize = 5;

/// Changes encoded as batches of at most `max_bytes` each, in order: one
/// batch when they fit, else as many as it takes (a change is never cut).
/// A change whose encoding alone is over the bound goes to `oversized` by
/// its index (with its encoded size) and into no batch: no peer could
/// accept it.
#[derive(Debug, Default)]
pub struct Batches {
    /// Each batch's encoding and the indexes of its changes.
    pub batches: Vec<(Vec<u8>, std::ops::Range<usize>)>,
    /// Indexes and encoded sizes of the changes too large for any batch.
    pub oversized: Vec<(usize, usize)>,
}

/// Encodes `changes` as [`Batches`] of at most `max_bytes` each.
pub fn encode_batches(changes: &[Change], max_bytes: usize) -> Batches {
    let whole = encode_batch(changes);
    if whole.len() <= max_bytes {
        return Batches {
            batches: vec![(whole, 0..changes.len())],
            oversized: Vec::new(),
        };
    }
    let mut out = Batches::default();
    let mut start = 0;
    let mut bytes = BATCH_HEADER;
    let close = |out: &mut Batches, range: std::ops::Range<usize>| {
        if !range.is_empty() {
            out.batches
                .push((encode_batch(&changes[range.clone()]), range));
        }
    };
    for (i, c) in changes.iter().enumerate() {
        let size = rmp_serde::to_vec(c)
            .expect("changes always serialize")
            .len();
        if size + BATCH_HEADER > max_bytes {
            close(&mut out, start..i);
            out.oversized.push((i, size));
            start = i + 1;
            bytes = BATCH_HEADER;
            continue;
        }
        if bytes + size > max_bytes {
            close(&mut out, start..i);
            start = i;
            bytes = BATCH_HEADER;
        }
        bytes += size;
    }
    close(&mut out, start..changes.len());
    out
}

/// Decodes a batch of changes received from a peer.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Change>, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(key: &str, len: usize) -> Change {
        Change {
            db: 0,
            key: ByteBuf::from(key.as_bytes().to_vec()),
            stamp: "00000000000000010100".into(),
            op: Op::Put {
                value: Value::String(ByteBuf::from(vec![b'x'; len])),
                expire_at_ms: None,
            },
        }
    }

    #[test]
    fn batches_stay_under_their_bound_and_keep_every_change_in_order() {
        let changes: Vec<Change> = (0..10).map(|i| string(&format!("k{i}"), 300)).collect();
        let one = encode_batches(&changes, 1 << 20);
        assert_eq!(one.batches.len(), 1);
        assert_eq!(one.batches[0].0, encode_batch(&changes));
        let split = encode_batches(&changes, 1000);
        assert!(split.batches.len() > 1);
        assert!(split.oversized.is_empty());
        let mut seen = Vec::new();
        for (payload, range) in &split.batches {
            assert!(payload.len() <= 1000, "{} bytes", payload.len());
            let decoded = decode_batch(payload).unwrap();
            assert_eq!(decoded, changes[range.clone()].to_vec());
            seen.extend(range.clone());
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_change_over_the_bound_is_set_apart() {
        let changes = vec![string("a", 10), string("big", 5000), string("b", 10)];
        let b = encode_batches(&changes, 1000);
        assert_eq!(b.oversized.len(), 1);
        assert_eq!(b.oversized[0].0, 1);
        assert!(b.oversized[0].1 > 5000);
        let ranges: Vec<_> = b.batches.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(ranges, vec![0..1, 2..3]);
    }

    fn b(s: &str) -> ByteBuf {
        ByteBuf::from(s.as_bytes().to_vec())
    }

    #[test]
    fn flat_round_trip_every_type() {
        let values = vec![
            Value::String(b("v")),
            Value::List(vec![b("a"), b("b"), b("a")]),
            Value::Set(vec![b("x"), b("y")]),
            Value::ZSet(vec![(b("m"), b("1.5")), (b("n"), b("inf"))]),
            Value::Hash(vec![(b("f"), b("v"))]),
            Value::HashTtl(vec![
                (b("f"), b("v"), 1_800_000_000_000),
                (b("g"), b("w"), -1),
            ]),
            Value::Stream(StreamState {
                entries: vec![
                    ("1-1".into(), vec![(b("f"), b("v"))]),
                    ("2-0".into(), vec![(b("a"), b("1")), (b("b"), b("2"))]),
                ],
                last_id: "2-0".into(),
                entries_added: 3,
                max_deleted_id: "1-5".into(),
                groups: vec![
                    (b("g"), "1-1".into(), Some(1)),
                    (b("h"), "0-0".into(), None),
                ],
            }),
        ];
        for v in values {
            let flat = v.to_flat();
            assert_eq!(Value::from_flat(v.type_name(), &flat).unwrap(), v);
        }
    }

    #[test]
    fn malformed_flat_values_are_errors() {
        assert!(Value::from_flat("zset", &[b"m".to_vec()]).is_err());
        assert!(Value::from_flat("string", &[]).is_err());
        assert!(Value::from_flat("stream", &[b"1-0".to_vec()]).is_err());
        assert!(Value::from_flat("bitmap", &[]).is_err());
        assert!(Value::from_flat("hash+ttl", &[b"f".to_vec(), b"v".to_vec()]).is_err());
        assert!(
            Value::from_flat(
                "hash+ttl",
                &[b"f".to_vec(), b"v".to_vec(), b"soon".to_vec()]
            )
            .is_err()
        );
    }

    #[test]
    fn batch_round_trip_and_garbage() {
        let c = Change {
            db: 1,
            key: b("k"),
            stamp: "0000000000000001".into(),
            op: Op::Put {
                value: Value::String(b("v")),
                expire_at_ms: Some(5),
            },
        };
        let bytes = encode_batch(std::slice::from_ref(&c));
        assert_eq!(decode_batch(&bytes).unwrap(), vec![c]);
        assert!(decode_batch(b"\xff\x00garbage").is_err());
        assert!(decode_batch(&bytes[..bytes.len() - 1]).is_err());
    }
}
