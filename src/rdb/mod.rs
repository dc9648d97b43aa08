//! Streaming parser for Redis / Valkey RDB snapshots.
//!
//! The replication agent receives the master's snapshot as an RDB stream and
//! has to turn it into keys and values. [`RdbReader`] reads the stream
//! incrementally, one item (aux field, database switch, key, ...) per
//! [`RdbReader::next_entry`] call, and never holds more than the current key in
//! memory. It decodes every type and encoding written by Redis 2.x up to
//! Redis 8.x (RDB versions 1..=12, including hash field expiration) and by
//! Valkey (RDB 11 with the `REDIS` magic, RDB 80 with the `VALKEY` magic),
//! verifies the CRC-64 trailer, and reports malformed or truncated input as an
//! error, never as a panic.
//!
//! Callers that only need to know which keys exist use the key-only mode,
//! [`RdbReader::next_key`]: it walks exactly the same framing (every opcode,
//! value type and encoding, and the checksum over every byte) but skips value
//! payloads through a fixed-size buffer instead of decoding them, so its
//! memory does not depend on how large or how many the values' elements are;
//! only the key name itself is allocated. Both modes can be mixed on one
//! reader.
//!
//! The reader does not buffer: it asks `R` for exactly the bytes it needs, so
//! nothing after the RDB trailer is consumed (the replication stream that
//! follows the snapshot stays in `R`, see [`RdbReader::into_inner`]). Wrap
//! unbuffered sources such as sockets in a [`std::io::BufReader`] for speed.
//!
//! Reference: redis/redis `src/rdb.c`, `rdb.h`, `listpack.c`, `ziplist.c`,
//! `zipmap.c`, `intset.c`, `t_stream.c`, `crc64.c`, `lzf_d.c`, and
//! valkey-io/valkey `src/rdb.c` for the Valkey-specific codes.

mod crc64;
mod intset;
mod listpack;
mod lzf;
mod ziplist;

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read};

use listpack::Elem;

pub use crc64::crc64;

// ----------------------------------------------------------------- opcodes

/// Valkey 9: in-progress slot import job (same byte as Redis' future KEY_META).
const OP_SLOT_IMPORT: u8 = 0xF3;
const OP_SLOT_INFO: u8 = 0xF4;
const OP_FUNCTION2: u8 = 0xF5;
const OP_FUNCTION_PRE_GA: u8 = 0xF6;
const OP_MODULE_AUX: u8 = 0xF7;
const OP_IDLE: u8 = 0xF8;
const OP_FREQ: u8 = 0xF9;
const OP_AUX: u8 = 0xFA;
const OP_RESIZEDB: u8 = 0xFB;
const OP_EXPIRETIME_MS: u8 = 0xFC;
const OP_EXPIRETIME: u8 = 0xFD;
const OP_SELECTDB: u8 = 0xFE;
const OP_EOF: u8 = 0xFF;
/// Bytes from here up are opcodes, bytes below are value types.
const FIRST_OPCODE: u8 = 0xF0;

// -------------------------------------------------------------- value types

const T_STRING: u8 = 0;
const T_LIST: u8 = 1;
const T_SET: u8 = 2;
const T_ZSET: u8 = 3;
const T_HASH: u8 = 4;
const T_ZSET_2: u8 = 5;
const T_MODULE_PRE_GA: u8 = 6;
const T_MODULE_2: u8 = 7;
const T_HASH_ZIPMAP: u8 = 9;
const T_LIST_ZIPLIST: u8 = 10;
const T_SET_INTSET: u8 = 11;
const T_ZSET_ZIPLIST: u8 = 12;
const T_HASH_ZIPLIST: u8 = 13;
const T_LIST_QUICKLIST: u8 = 14;
const T_STREAM_LISTPACKS: u8 = 15;
const T_HASH_LISTPACK: u8 = 16;
const T_ZSET_LISTPACK: u8 = 17;
const T_LIST_QUICKLIST_2: u8 = 18;
const T_STREAM_LISTPACKS_2: u8 = 19;
const T_SET_LISTPACK: u8 = 20;
const T_STREAM_LISTPACKS_3: u8 = 21;
/// Redis 7.4 RC: hash with field TTLs, absolute TTLs. Valkey 9: RDB_TYPE_HASH_2.
const T_22: u8 = 22;
/// Redis 7.4 RC: listpack hash with field TTLs, no min-expire prefix.
const T_HASH_LISTPACK_EX_PRE_GA: u8 = 23;
/// Redis 7.4+: hash with field TTLs relative to a leading min-expire.
const T_HASH_METADATA: u8 = 24;
/// Redis 7.4+: listpack hash with field TTLs, leading min-expire.
const T_HASH_LISTPACK_EX: u8 = 25;

// ------------------------------------------------------- module sub-opcodes

const MODULE_OP_EOF: u64 = 0;
const MODULE_OP_SINT: u64 = 1;
const MODULE_OP_UINT: u64 = 2;
const MODULE_OP_FLOAT: u64 = 3;
const MODULE_OP_DOUBLE: u64 = 4;
const MODULE_OP_STRING: u64 = 5;

const QUICKLIST_NODE_PLAIN: u64 = 1;
const QUICKLIST_NODE_PACKED: u64 = 2;

const STREAM_ITEM_FLAG_DELETED: i64 = 1;
const STREAM_ITEM_FLAG_SAMEFIELDS: i64 = 2;

/// Largest field expiration time Redis accepts (EB_EXPIRE_TIME_MAX, 2^48-1 ms).
const MAX_FIELD_EXPIRE_MS: u64 = (1 << 48) - 1;

/// Capacity reserved up front for collections whose declared size comes from
/// the (untrusted) stream; they grow beyond it only as data actually arrives.
const PREALLOC_CAP: usize = 1024;

/// Chunk size for reading long strings, so a corrupt huge length allocates
/// only as much as the stream really delivers.
const READ_CHUNK: usize = 64 * 1024;

/// Skips up to this many bytes through a stack buffer; longer skips go
/// through `io::copy` (which has its own fixed-size buffer).
const SMALL_SKIP: usize = 64;

/// Highest RDB version with the `REDIS` magic this parser accepts (Redis
/// 7.4–8.x write 12).
pub const MAX_REDIS_RDB_VERSION: u32 = 12;

/// RDB version written by Valkey 9 with the `VALKEY` magic ("VALKEY080").
pub const VALKEY_RDB_VERSION: u32 = 80;

/// Default upper bound for a single string length, a sanity limit that makes
/// absurd lengths from a corrupt stream fail fast (see
/// [`RdbReader::set_max_string_len`]).
pub const DEFAULT_MAX_STRING_LEN: u64 = 1 << 32;

// ------------------------------------------------------------------ errors

/// Why an RDB stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    /// The underlying reader failed (other than by ending early).
    #[error("I/O error while reading the RDB stream: {0}")]
    Io(io::Error),
    /// The stream ended before the RDB was complete.
    #[error(
        "RDB stream ended unexpectedly: the snapshot transfer was truncated before the EOF opcode and checksum"
    )]
    UnexpectedEof,
    /// The stream does not start with "REDIS" or "VALKEY" and a version number.
    #[error("not an RDB stream: it must start with \"REDIS\" or \"VALKEY\" and a version number")]
    BadMagic,
    /// The RDB version is outside the range this parser understands.
    #[error("unsupported RDB version {0}")]
    UnsupportedVersion(u32),
    /// A value type byte this parser does not know.
    #[error(
        "unknown RDB value type {type_byte} (0x{type_byte:02x}) in a version {version} RDB stream"
    )]
    UnknownType {
        /// The type byte read from the stream.
        type_byte: u8,
        /// RDB version of the stream.
        version: u32,
    },
    /// An opcode this parser does not know.
    #[error("unknown RDB opcode {opcode} (0x{opcode:02x}) in a version {version} RDB stream")]
    UnknownOpcode {
        /// The opcode byte read from the stream.
        opcode: u8,
        /// RDB version of the stream.
        version: u32,
    },
    /// The data is malformed; the message names what and where.
    #[error("corrupt RDB data: {0}")]
    Corrupt(String),
    /// Well-formed data this parser deliberately does not decode.
    #[error("unsupported RDB content: {0}")]
    Unsupported(String),
    /// The CRC-64 trailer does not match the received bytes.
    #[error(
        "RDB checksum mismatch: the stream's trailer says {expected:#018x}, the received bytes give {actual:#018x}"
    )]
    ChecksumMismatch {
        /// Checksum stored in the RDB trailer.
        expected: u64,
        /// Checksum computed over the bytes actually received.
        actual: u64,
    },
}

impl From<io::Error> for RdbError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RdbError::UnexpectedEof
        } else {
            RdbError::Io(e)
        }
    }
}

// ------------------------------------------------------------- data model

/// Which server family wrote the stream; Redis and Valkey gave some type and
/// opcode bytes different meanings, so decoding depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdbFlavor {
    /// "REDIS" magic (Redis, and Valkey up to 8.x).
    Redis,
    /// "VALKEY" magic (Valkey 9+).
    Valkey,
}

/// One item of an RDB stream, in stream order, as the replica must replay it.
#[derive(Debug, Clone, PartialEq)]
pub enum RdbEntry {
    /// Auxiliary metadata field (redis-ver, repl-id, repl-offset, ...).
    Aux {
        /// Field name.
        key: Vec<u8>,
        /// Field value.
        value: Vec<u8>,
    },
    /// The following keys belong to this database.
    SelectDb(u64),
    /// Size hint for the current database.
    ResizeDb {
        /// Number of keys.
        db_size: u64,
        /// Number of keys with an expiry.
        expires_size: u64,
    },
    /// A key and its value.
    Key(RdbKey),
    /// Source code of a function library (FUNCTION2, or FUNCTION_PRE_GA
    /// converted to the same "#!engine name=..." form).
    Function {
        /// The library code, as accepted by FUNCTION LOAD.
        payload: Vec<u8>,
    },
    /// Module auxiliary data; the data was skipped, only the module id is kept.
    ModuleAux {
        /// 64-bit module type id (name in the high 54 bits, see
        /// [`module_type_name`]).
        module_id: u64,
    },
    /// Cluster slot size hint (Redis 7.4+/8.x and Valkey 9 cluster mode).
    SlotInfo {
        /// Slot number.
        slot_id: u64,
        /// Keys in the slot.
        slot_size: u64,
        /// Keys with an expiry in the slot.
        expires_slot_size: u64,
    },
    /// Valkey 9 atomic slot migration: an import job in progress.
    SlotImport {
        /// Migration job name.
        job_name: Vec<u8>,
        /// Inclusive slot ranges being imported.
        ranges: Vec<(u64, u64)>,
    },
}

/// A key with its database, expiry and value.
#[derive(Debug, Clone, PartialEq)]
pub struct RdbKey {
    /// Database number (from the last SELECTDB, 0 before any).
    pub db: u64,
    /// The key name.
    pub key: Vec<u8>,
    /// Absolute expiry in Unix milliseconds, if the key has one.
    pub expire_at_ms: Option<i64>,
    /// The decoded value.
    pub value: RdbValue,
}

/// A key as the key-only mode ([`RdbReader::next_key`]) reports it: where it
/// lives and what kind of value it holds, without the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdbKeyInfo {
    /// Database number (from the last SELECTDB, 0 before any).
    pub db: u64,
    /// The key name.
    pub key: Vec<u8>,
    /// Absolute expiry in Unix milliseconds, if the key has one.
    pub expire_at_ms: Option<i64>,
    /// The kind of value the key holds.
    pub value_type: RdbValueType,
    /// The RDB type byte, i.e. the encoding the value was stored with.
    pub type_byte: u8,
}

/// The kind of a key's value, independent of its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RdbValueType {
    /// A string.
    String,
    /// A list.
    List,
    /// A set.
    Set,
    /// A sorted set.
    SortedSet,
    /// A hash.
    Hash,
    /// A stream.
    Stream,
    /// A module value.
    Module,
}

impl RdbValueType {
    /// The name Redis' TYPE command uses ("string", "list", "set", "zset",
    /// "hash", "stream"); "module" for module values, where Redis reports the
    /// module's own type name instead.
    pub fn name(self) -> &'static str {
        match self {
            RdbValueType::String => "string",
            RdbValueType::List => "list",
            RdbValueType::Set => "set",
            RdbValueType::SortedSet => "zset",
            RdbValueType::Hash => "hash",
            RdbValueType::Stream => "stream",
            RdbValueType::Module => "module",
        }
    }

    /// The kind stored under an RDB value type byte (the same in the Redis and
    /// Valkey flavors), or None for a byte that is not a value type.
    pub fn from_type_byte(type_byte: u8) -> Option<Self> {
        Some(match type_byte {
            T_STRING => RdbValueType::String,
            T_LIST | T_LIST_ZIPLIST | T_LIST_QUICKLIST | T_LIST_QUICKLIST_2 => RdbValueType::List,
            T_SET | T_SET_INTSET | T_SET_LISTPACK => RdbValueType::Set,
            T_ZSET | T_ZSET_2 | T_ZSET_ZIPLIST | T_ZSET_LISTPACK => RdbValueType::SortedSet,
            T_HASH
            | T_HASH_ZIPMAP
            | T_HASH_ZIPLIST
            | T_HASH_LISTPACK
            | T_22
            | T_HASH_LISTPACK_EX_PRE_GA
            | T_HASH_METADATA
            | T_HASH_LISTPACK_EX => RdbValueType::Hash,
            T_STREAM_LISTPACKS | T_STREAM_LISTPACKS_2 | T_STREAM_LISTPACKS_3 => {
                RdbValueType::Stream
            }
            T_MODULE_PRE_GA | T_MODULE_2 => RdbValueType::Module,
            _ => return None,
        })
    }
}

impl fmt::Display for RdbValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded value, independent of the encoding it was stored with.
#[derive(Debug, Clone, PartialEq)]
pub enum RdbValue {
    /// A string; integer-encoded strings come back as their decimal text.
    String(Vec<u8>),
    /// List elements, head to tail.
    List(Vec<Vec<u8>>),
    /// Set members (in storage order).
    Set(Vec<Vec<u8>>),
    /// Sorted set members with scores (in storage order).
    SortedSet(Vec<(Vec<u8>, f64)>),
    /// Hash fields (in storage order).
    Hash(Vec<HashField>),
    /// A stream with its consumer groups.
    Stream(RdbStream),
    /// A module value; its payload was skipped.
    Module {
        /// The 9-character module type name decoded from the module id.
        module_name: String,
    },
}

impl RdbValue {
    /// The kind of this value.
    pub fn value_type(&self) -> RdbValueType {
        match self {
            RdbValue::String(_) => RdbValueType::String,
            RdbValue::List(_) => RdbValueType::List,
            RdbValue::Set(_) => RdbValueType::Set,
            RdbValue::SortedSet(_) => RdbValueType::SortedSet,
            RdbValue::Hash(_) => RdbValueType::Hash,
            RdbValue::Stream(_) => RdbValueType::Stream,
            RdbValue::Module { .. } => RdbValueType::Module,
        }
    }
}

/// One hash field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashField {
    /// Field name.
    pub field: Vec<u8>,
    /// Field value.
    pub value: Vec<u8>,
    /// Field expiry in Unix milliseconds (hash field TTL, Redis 7.4+ / Valkey 9).
    pub expire_at_ms: Option<i64>,
}

/// A stream entry id: milliseconds and sequence number, ordered like Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// Builds an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    fn from_be_bytes(raw: &[u8; 16]) -> Self {
        let mut ms = [0u8; 8];
        let mut seq = [0u8; 8];
        ms.copy_from_slice(&raw[..8]);
        seq.copy_from_slice(&raw[8..]);
        StreamId {
            ms: u64::from_be_bytes(ms),
            seq: u64::from_be_bytes(seq),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A live (not deleted) stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Entry id.
    pub id: StreamId,
    /// Field/value pairs in insertion order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A pending (delivered, not acknowledged) entry of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPendingEntry {
    /// Entry id.
    pub id: StreamId,
    /// Last delivery time, Unix milliseconds.
    pub delivery_time_ms: i64,
    /// Number of deliveries.
    pub delivery_count: u64,
}

/// A consumer of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumer {
    /// Consumer name.
    pub name: Vec<u8>,
    /// Last time the consumer was seen, Unix milliseconds.
    pub seen_time_ms: i64,
    /// Last successful interaction (RDB type 21+ only).
    pub active_time_ms: Option<i64>,
    /// Ids of the group's pending entries owned by this consumer.
    pub pending: Vec<StreamId>,
}

/// A stream consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumerGroup {
    /// Group name.
    pub name: Vec<u8>,
    /// Last delivered id.
    pub last_id: StreamId,
    /// Logical read counter (RDB type 19+ only; -1 means unknown).
    pub entries_read: Option<i64>,
    /// The group's pending entries list.
    pub pending: Vec<StreamPendingEntry>,
    /// The group's consumers.
    pub consumers: Vec<StreamConsumer>,
}

/// A decoded stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RdbStream {
    /// Live entries in id order (deleted entries are skipped).
    pub entries: Vec<StreamEntry>,
    /// Number of live entries, as recorded by the server.
    pub length: u64,
    /// Last id ever added.
    pub last_id: StreamId,
    /// First live id (RDB type 19+ only).
    pub first_id: Option<StreamId>,
    /// Highest deleted id (RDB type 19+ only).
    pub max_deleted_id: Option<StreamId>,
    /// Count of entries ever added (RDB type 19+ only).
    pub entries_added: Option<u64>,
    /// Consumer groups.
    pub groups: Vec<StreamConsumerGroup>,
}

/// Decodes a 64-bit module type id into the module's 9-character type name,
/// so module values and aux data can be attributed without the module.
pub fn module_type_name(module_id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = module_id >> 10;
    let mut name = [0u8; 9];
    for slot in name.iter_mut().rev() {
        *slot = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    name.iter().map(|&b| char::from(b)).collect()
}

// ----------------------------------------------------------------- source

/// The byte source: exact reads from `R`, running CRC and offset.
struct Source<R> {
    inner: R,
    crc: u64,
    offset: u64,
}

impl<R: Read> Source<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RdbError> {
        self.inner.read_exact(buf)?;
        self.crc = crc64(self.crc, buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, RdbError> {
        Ok(self.array::<1>()?[0])
    }

    /// Consumes `n` bytes without keeping them, still feeding them to the
    /// CRC. Memory use does not depend on `n`: short runs go through a small
    /// stack buffer, longer ones through `io::copy` (fixed-size buffer) from
    /// `inner` limited to `n` bytes into a sink that only updates the CRC.
    fn skip(&mut self, n: u64) -> Result<(), RdbError> {
        if n <= SMALL_SKIP as u64 {
            let mut buf = [0u8; SMALL_SKIP];
            return self.fill(&mut buf[..n as usize]);
        }
        let mut sink = CrcSink(&mut self.crc);
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut sink)?;
        self.offset += copied;
        if copied < n {
            return Err(RdbError::UnexpectedEof);
        }
        Ok(())
    }

    /// Reads `n` bytes, growing the buffer only as data arrives.
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, RdbError> {
        let mut out = Vec::with_capacity(n.min(READ_CHUNK));
        while out.len() < n {
            let start = out.len();
            let take = (n - start).min(READ_CHUNK);
            out.resize(start + take, 0);
            self.fill(&mut out[start..])?;
        }
        Ok(out)
    }
}

/// A writer that keeps nothing but the running CRC of what it is given.
struct CrcSink<'a>(&'a mut u64);

impl io::Write for CrcSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.0 = crc64(*self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a string is stored, read up to (not including) its payload; shared by
/// the decoding ([`RdbReader::read_string`]) and skipping
/// ([`RdbReader::skip_string`]) paths.
enum StrHead {
    /// `n` plain bytes follow.
    Raw(usize),
    /// An integer stored in binary (already consumed); the string is its
    /// decimal text.
    Int(i64),
    /// `clen` LZF-compressed bytes follow, expanding to `len` bytes.
    Lzf { clen: usize, len: usize },
}

/// Length of the decimal text of `v`.
fn decimal_len(v: i64) -> u64 {
    let digits = v.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1);
    u64::from(digits) + u64::from(v < 0)
}

/// A key whose type byte and name have been read; its value comes next.
struct KeyHead {
    type_byte: u8,
    key: Vec<u8>,
    expire_at_ms: Option<i64>,
}

/// One step of the opcode loop: a non-key item, or a key whose value is
/// still in the stream (to be decoded or skipped by the caller).
enum Item {
    Entry(RdbEntry),
    Key(KeyHead),
}

/// A length as stored in the stream: a plain number or a special string
/// encoding selector (the `11xxxxxx` form).
enum Len {
    Plain(u64),
    Special(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Failed,
}

/// Cursor over decoded listpack elements, for the stream node layout.
struct Cursor<'a, 'b> {
    elems: &'b [Elem<'a>],
    pos: usize,
}

impl<'a> Cursor<'a, '_> {
    fn next(&mut self, what: &str) -> Result<Elem<'a>, String> {
        let e = self
            .elems
            .get(self.pos)
            .copied()
            .ok_or_else(|| format!("stream listpack ends before the {what}"))?;
        self.pos += 1;
        Ok(e)
    }

    fn int(&mut self, what: &str) -> Result<i64, String> {
        self.next(what)?
            .as_i64()
            .ok_or_else(|| format!("stream listpack {what} is not an integer"))
    }

    fn count(&mut self, what: &str) -> Result<u64, String> {
        let v = self.int(what)?;
        u64::try_from(v).map_err(|_| format!("stream listpack {what} is negative ({v})"))
    }
}

/// Decodes one stream listpack node (master entry + delta-encoded entries),
/// appending the live entries to `out`.
fn decode_stream_node(
    master: StreamId,
    elems: &[Elem<'_>],
    out: &mut Vec<StreamEntry>,
) -> Result<(), String> {
    let mut c = Cursor { elems, pos: 0 };
    let live = c.count("entry count")?;
    let deleted = c.count("deleted count")?;
    let nfields = c.count("master field count")?;
    let mut master_fields = Vec::new();
    for _ in 0..nfields {
        master_fields.push(c.next("master field name")?);
    }
    if c.int("master entry terminator")? != 0 {
        return Err("stream master entry is not terminated by 0".to_string());
    }
    let total = live
        .checked_add(deleted)
        .ok_or("stream node entry counts overflow")?;
    let mut live_seen = 0u64;
    for _ in 0..total {
        let flags = c.int("entry flags")?;
        let ms_diff = c.int("entry id ms delta")?;
        let seq_diff = c.int("entry id seq delta")?;
        let id = StreamId {
            ms: master.ms.wrapping_add(ms_diff as u64),
            seq: master.seq.wrapping_add(seq_diff as u64),
        };
        let is_deleted = flags & STREAM_ITEM_FLAG_DELETED != 0;
        let mut fields = Vec::new();
        let expected_lp_count = if flags & STREAM_ITEM_FLAG_SAMEFIELDS != 0 {
            for name in &master_fields {
                let value = c.next("entry value")?;
                if !is_deleted {
                    fields.push((name.to_bytes(), value.to_bytes()));
                }
            }
            (master_fields.len() as u64).checked_add(3)
        } else {
            let n = c.count("entry field count")?;
            for _ in 0..n {
                let name = c.next("entry field name")?;
                let value = c.next("entry value")?;
                if !is_deleted {
                    fields.push((name.to_bytes(), value.to_bytes()));
                }
            }
            n.checked_mul(2).and_then(|v| v.checked_add(4))
        };
        let lp_count = c.count("entry lp-count")?;
        if Some(lp_count) != expected_lp_count {
            return Err(format!(
                "stream entry {id} has lp-count {lp_count}, inconsistent with its fields"
            ));
        }
        if !is_deleted {
            live_seen += 1;
            out.push(StreamEntry { id, fields });
        }
    }
    if live_seen != live {
        return Err(format!(
            "stream node declares {live} live entries but holds {live_seen}"
        ));
    }
    if c.pos != elems.len() {
        return Err("stream listpack has trailing elements after its entries".to_string());
    }
    Ok(())
}

fn show_key(key: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = &key[..key.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(shown));
    if key.len() > MAX {
        s.push_str("...");
    }
    s
}

fn pairs<T>(items: Vec<T>, what: &str) -> Result<Vec<(T, T)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!(
            "{what} has an odd number of elements ({})",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    Ok(out)
}

fn zset_from_elems(elems: Vec<Elem<'_>>, what: &str) -> Result<RdbValue, String> {
    let mut out = Vec::with_capacity(elems.len() / 2);
    for (member, score) in pairs(elems, what)? {
        let score = score
            .as_f64()
            .ok_or_else(|| format!("{what} has an invalid score for a member"))?;
        out.push((member.to_bytes(), score));
    }
    Ok(RdbValue::SortedSet(out))
}

fn hash_from_elems(elems: Vec<Elem<'_>>, what: &str) -> Result<RdbValue, String> {
    Ok(RdbValue::Hash(
        pairs(elems, what)?
            .into_iter()
            .map(|(f, v)| HashField {
                field: f.to_bytes(),
                value: v.to_bytes(),
                expire_at_ms: None,
            })
            .collect(),
    ))
}

fn module_pre_ga_unsupported() -> RdbError {
    RdbError::Unsupported(
        "module value in the Redis 4.0 RC1 format (type 6) cannot be skipped without the module"
            .to_string(),
    )
}

fn is_empty_collection(v: &RdbValue) -> bool {
    match v {
        RdbValue::List(x) | RdbValue::Set(x) => x.is_empty(),
        RdbValue::SortedSet(x) => x.is_empty(),
        RdbValue::Hash(x) => x.is_empty(),
        RdbValue::String(_) | RdbValue::Stream(_) | RdbValue::Module { .. } => false,
    }
}

// ----------------------------------------------------------------- reader

/// Incremental RDB decoder over any byte source, so a replica can consume the
/// master's snapshot key by key without holding it in memory.
pub struct RdbReader<R: Read> {
    src: Source<R>,
    version: u32,
    flavor: RdbFlavor,
    db: u64,
    pending_expire: Option<i64>,
    state: State,
    max_string_len: u64,
}

impl<R: Read> fmt::Debug for RdbReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdbReader")
            .field("version", &self.version)
            .field("flavor", &self.flavor)
            .field("db", &self.db)
            .field("offset", &self.src.offset)
            .field("state", &self.state)
            .finish()
    }
}

impl<R: Read> RdbReader<R> {
    /// Reads and checks the magic "REDIS" + 4-digit version (or "VALKEY" +
    /// 3-digit version).
    pub fn new(reader: R) -> Result<Self, RdbError> {
        let mut src = Source {
            inner: reader,
            crc: 0,
            offset: 0,
        };
        let magic: [u8; 9] = src.array()?;
        let (flavor, digits) = if magic.starts_with(b"REDIS") {
            (RdbFlavor::Redis, &magic[5..])
        } else if magic.starts_with(b"VALKEY") {
            (RdbFlavor::Valkey, &magic[6..])
        } else {
            return Err(RdbError::BadMagic);
        };
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(RdbError::BadMagic);
        }
        let version = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        let supported = match flavor {
            RdbFlavor::Redis => (1..=MAX_REDIS_RDB_VERSION).contains(&version),
            // Versions 12..=79 are "foreign" (other forks) for Valkey.
            RdbFlavor::Valkey => (1..=11).contains(&version) || version == VALKEY_RDB_VERSION,
        };
        if !supported {
            return Err(RdbError::UnsupportedVersion(version));
        }
        Ok(RdbReader {
            src,
            version,
            flavor,
            db: 0,
            pending_expire: None,
            state: State::Running,
            max_string_len: DEFAULT_MAX_STRING_LEN,
        })
    }

    /// The RDB format version from the header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Which server family's magic the stream carries.
    pub fn flavor(&self) -> RdbFlavor {
        self.flavor
    }

    /// Bytes consumed from the source so far (for progress and diagnostics).
    pub fn bytes_read(&self) -> u64 {
        self.src.offset
    }

    /// Overrides the sanity limit on a single string's length (default
    /// [`DEFAULT_MAX_STRING_LEN`]); longer strings are reported as corrupt.
    pub fn set_max_string_len(&mut self, max: u64) {
        self.max_string_len = max;
    }

    /// Borrows the underlying source.
    pub fn get_ref(&self) -> &R {
        &self.src.inner
    }

    /// Returns the underlying source; after `Ok(None)` it is positioned right
    /// after the RDB trailer (e.g. at the start of the replication stream).
    pub fn into_inner(self) -> R {
        self.src.inner
    }

    /// Next item; Ok(None) after the EOF opcode (and checksum, verified when
    /// non-zero) was read.
    pub fn next_entry(&mut self) -> Result<Option<RdbEntry>, RdbError> {
        self.guarded(|r| {
            loop {
                match r.read_item(false)? {
                    None => return Ok(None),
                    Some(Item::Entry(entry)) => return Ok(Some(entry)),
                    Some(Item::Key(head)) => {
                        let value = r.value_of(&head, Self::read_value)?;
                        // An empty collection: Redis drops those on load too.
                        if !is_empty_collection(&value) {
                            return Ok(Some(RdbEntry::Key(RdbKey {
                                db: r.db,
                                key: head.key,
                                expire_at_ms: head.expire_at_ms,
                                value,
                            })));
                        }
                    }
                }
            }
        })
    }

    /// Key-only mode: the next key (database, name, expiry, value type), with
    /// every item in between and the key's value skipped rather than decoded.
    /// Ok(None) after the EOF opcode and checksum, like [`Self::next_entry`].
    ///
    /// It yields exactly the keys `next_entry` yields (empty collections are
    /// dropped in both), and checks the same framing: opcodes, lengths and
    /// encodings of every value type down to each element's length, the
    /// string length limit, and the CRC-64 trailer over every byte, skipped
    /// ones included. What it does not check is the content of the skipped
    /// payloads (listpack/ziplist/intset internals, LZF data, stream entries
    /// and pending-list consistency); damage there is still caught by the
    /// checksum, at the end of the stream.
    ///
    /// Memory does not depend on the values: payloads are skipped through a
    /// fixed-size buffer and collections element by element, and aux fields
    /// and function libraries are skipped too. Only the key name is
    /// allocated (at most [`Self::set_max_string_len`] bytes).
    pub fn next_key(&mut self) -> Result<Option<RdbKeyInfo>, RdbError> {
        self.guarded(|r| {
            loop {
                let head = match r.read_item(true)? {
                    None => return Ok(None),
                    Some(Item::Key(head)) => head,
                    // Not produced in key-only mode.
                    Some(Item::Entry(_)) => continue,
                };
                if r.value_of(&head, Self::skip_value)? {
                    let value_type = RdbValueType::from_type_byte(head.type_byte).ok_or(
                        RdbError::UnknownType {
                            type_byte: head.type_byte,
                            version: r.version,
                        },
                    )?;
                    return Ok(Some(RdbKeyInfo {
                        db: r.db,
                        key: head.key,
                        expire_at_ms: head.expire_at_ms,
                        value_type,
                        type_byte: head.type_byte,
                    }));
                }
            }
        })
    }

    /// Runs one step unless the reader already finished or failed, and
    /// records whether it did.
    fn guarded<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<Option<T>, RdbError>,
    ) -> Result<Option<T>, RdbError> {
        match self.state {
            State::Finished => return Ok(None),
            State::Failed => {
                return Err(RdbError::Corrupt(
                    "the RDB reader already failed; the stream position is unknown".to_string(),
                ));
            }
            State::Running => {}
        }
        match step(self) {
            Ok(Some(item)) => Ok(Some(item)),
            Ok(None) => {
                self.state = State::Finished;
                Ok(None)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn corrupt(&self, msg: impl fmt::Display) -> RdbError {
        RdbError::Corrupt(format!("{msg} (near byte offset {})", self.src.offset))
    }

    /// The opcode loop, shared by both modes: reads up to the next item. A
    /// key is returned after its name, with its value still in the stream.
    /// With `keys_only`, every non-key item is consumed (payloads skipped,
    /// not decoded) and the loop goes on to the next key.
    fn read_item(&mut self, keys_only: bool) -> Result<Option<Item>, RdbError> {
        loop {
            let op = self.src.u8()?;
            let entry = match op {
                OP_EOF => {
                    self.read_trailer()?;
                    return Ok(None);
                }
                OP_SELECTDB => {
                    let db = self.read_length()?;
                    self.db = db;
                    RdbEntry::SelectDb(db)
                }
                OP_RESIZEDB => {
                    let db_size = self.read_length()?;
                    let expires_size = self.read_length()?;
                    RdbEntry::ResizeDb {
                        db_size,
                        expires_size,
                    }
                }
                OP_AUX if keys_only => {
                    self.skip_string()?;
                    self.skip_string()?;
                    continue;
                }
                OP_AUX => {
                    let key = self.read_string()?;
                    let value = self.read_string()?;
                    RdbEntry::Aux { key, value }
                }
                OP_EXPIRETIME => {
                    let secs = i32::from_le_bytes(self.src.array()?);
                    self.pending_expire = Some(i64::from(secs) * 1000);
                    continue;
                }
                OP_EXPIRETIME_MS => {
                    self.pending_expire = Some(self.read_ms()?);
                    continue;
                }
                OP_FREQ => {
                    self.src.u8()?;
                    continue;
                }
                OP_IDLE => {
                    self.read_length()?;
                    continue;
                }
                OP_MODULE_AUX => {
                    let module_id = self.read_length()?;
                    let when_opcode = self.read_length()?;
                    if when_opcode != MODULE_OP_UINT {
                        return Err(self.corrupt(format!(
                            "module aux data for {} has a bad 'when' opcode {when_opcode}",
                            module_type_name(module_id)
                        )));
                    }
                    self.read_length()?; // when
                    self.skip_module_value(module_id)?;
                    RdbEntry::ModuleAux { module_id }
                }
                OP_FUNCTION_PRE_GA if keys_only => {
                    self.skip_string()?; // name
                    self.skip_string()?; // engine
                    if self.read_length()? != 0 {
                        self.skip_string()?; // description
                    }
                    self.skip_string()?; // code
                    continue;
                }
                OP_FUNCTION_PRE_GA => {
                    // Redis 7.0 RC1/RC2 layout: name, engine, optional
                    // description, code. Converted like Redis did.
                    let name = self.read_string()?;
                    let engine = self.read_string()?;
                    if self.read_length()? != 0 {
                        self.read_string()?; // description, dropped by Redis too
                    }
                    let code = self.read_string()?;
                    let mut payload = b"#!".to_vec();
                    payload.extend_from_slice(&engine);
                    payload.extend_from_slice(b" name=");
                    payload.extend_from_slice(&name);
                    payload.push(b'\n');
                    payload.extend_from_slice(&code);
                    RdbEntry::Function { payload }
                }
                OP_FUNCTION2 if keys_only => {
                    self.skip_string()?;
                    continue;
                }
                OP_FUNCTION2 => {
                    let payload = self.read_string()?;
                    RdbEntry::Function { payload }
                }
                OP_SLOT_INFO => {
                    let slot_id = self.read_length()?;
                    let slot_size = self.read_length()?;
                    let expires_slot_size = self.read_length()?;
                    RdbEntry::SlotInfo {
                        slot_id,
                        slot_size,
                        expires_slot_size,
                    }
                }
                OP_SLOT_IMPORT if self.flavor == RdbFlavor::Valkey && keys_only => {
                    self.skip_string()?;
                    for _ in 0..self.read_length()? {
                        self.read_length()?;
                        self.read_length()?;
                    }
                    continue;
                }
                OP_SLOT_IMPORT if self.flavor == RdbFlavor::Valkey => {
                    let job_name = self.read_string()?;
                    let n = self.read_length()?;
                    let mut ranges = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                    for _ in 0..n {
                        let start = self.read_length()?;
                        let end = self.read_length()?;
                        ranges.push((start, end));
                    }
                    RdbEntry::SlotImport { job_name, ranges }
                }
                op if op >= FIRST_OPCODE => {
                    return Err(RdbError::UnknownOpcode {
                        opcode: op,
                        version: self.version,
                    });
                }
                type_byte => {
                    if !self.is_value_type(type_byte) {
                        return Err(RdbError::UnknownType {
                            type_byte,
                            version: self.version,
                        });
                    }
                    let key = self.read_string()?;
                    let expire_at_ms = self.pending_expire.take();
                    return Ok(Some(Item::Key(KeyHead {
                        type_byte,
                        key,
                        expire_at_ms,
                    })));
                }
            };
            if !keys_only {
                return Ok(Some(Item::Entry(entry)));
            }
        }
    }

    fn read_trailer(&mut self) -> Result<(), RdbError> {
        if self.version < 5 {
            return Ok(()); // no checksum before RDB 5
        }
        let actual = self.src.crc;
        let expected = u64::from_le_bytes(self.src.array()?);
        if expected != 0 && expected != actual {
            return Err(RdbError::ChecksumMismatch { expected, actual });
        }
        Ok(())
    }

    fn is_value_type(&self, t: u8) -> bool {
        match t {
            0..=7 | 9..=21 => true,
            T_22 => true,
            T_HASH_LISTPACK_EX_PRE_GA | T_HASH_METADATA | T_HASH_LISTPACK_EX => {
                self.flavor == RdbFlavor::Redis
            }
            _ => false,
        }
    }

    /// Reads (`read_value`) or skips (`skip_value`) the value of `head`,
    /// naming the key in corruption errors.
    fn value_of<T>(
        &mut self,
        head: &KeyHead,
        read: fn(&mut Self, u8) -> Result<T, RdbError>,
    ) -> Result<T, RdbError> {
        read(self, head.type_byte).map_err(|e| match e {
            RdbError::Corrupt(m) => RdbError::Corrupt(format!(
                "{m}, in key {} (type {})",
                show_key(&head.key),
                head.type_byte
            )),
            other => other,
        })
    }

    // ------------------------------------------------------ primitives

    fn read_len(&mut self) -> Result<Len, RdbError> {
        let b = self.src.u8()?;
        match b >> 6 {
            0 => Ok(Len::Plain(u64::from(b & 0x3f))),
            1 => {
                let b2 = self.src.u8()?;
                Ok(Len::Plain((u64::from(b & 0x3f) << 8) | u64::from(b2)))
            }
            3 => Ok(Len::Special(b & 0x3f)),
            _ => match b {
                0x80 => Ok(Len::Plain(u64::from(u32::from_be_bytes(self.src.array()?)))),
                0x81 => Ok(Len::Plain(u64::from_be_bytes(self.src.array()?))),
                _ => Err(self.corrupt(format!("unknown length encoding byte 0x{b:02x}"))),
            },
        }
    }

    fn read_length(&mut self) -> Result<u64, RdbError> {
        match self.read_len()? {
            Len::Plain(n) => Ok(n),
            Len::Special(s) => Err(self.corrupt(format!(
                "expected a length, found special string encoding {s}"
            ))),
        }
    }

    fn checked_len(&self, n: u64, what: &str) -> Result<usize, RdbError> {
        if n > self.max_string_len {
            return Err(self.corrupt(format!(
                "{what} length {n} exceeds the limit of {} bytes",
                self.max_string_len
            )));
        }
        usize::try_from(n)
            .map_err(|_| self.corrupt(format!("{what} length {n} does not fit in memory")))
    }

    /// Reads a string's encoding and lengths, checking them against the
    /// limits, up to the payload.
    fn read_str_head(&mut self) -> Result<StrHead, RdbError> {
        match self.read_len()? {
            Len::Plain(n) => Ok(StrHead::Raw(self.checked_len(n, "string")?)),
            Len::Special(0) => Ok(StrHead::Int(i64::from(i8::from_le_bytes(
                self.src.array()?,
            )))),
            Len::Special(1) => Ok(StrHead::Int(i64::from(i16::from_le_bytes(
                self.src.array()?,
            )))),
            Len::Special(2) => Ok(StrHead::Int(i64::from(i32::from_le_bytes(
                self.src.array()?,
            )))),
            Len::Special(3) => {
                let clen = self.read_length()?;
                let len = self.read_length()?;
                let clen_usize = self.checked_len(clen, "LZF compressed")?;
                let len_usize = self.checked_len(len, "LZF uncompressed")?;
                if len > clen.saturating_mul(lzf::MAX_EXPANSION) {
                    return Err(self.corrupt(format!(
                        "LZF string claims {len} bytes from {clen} compressed bytes"
                    )));
                }
                Ok(StrHead::Lzf {
                    clen: clen_usize,
                    len: len_usize,
                })
            }
            Len::Special(s) => Err(self.corrupt(format!("unknown string encoding {s}"))),
        }
    }

    fn read_string(&mut self) -> Result<Vec<u8>, RdbError> {
        match self.read_str_head()? {
            StrHead::Raw(n) => self.src.bytes(n),
            StrHead::Int(v) => Ok(v.to_string().into_bytes()),
            StrHead::Lzf { clen, len } => {
                let compressed = self.src.bytes(clen)?;
                lzf::decompress(&compressed, len)
                    .map_err(|m| self.corrupt(format!("invalid LZF string: {m}")))
            }
        }
    }

    /// Skipping counterpart of [`Self::read_string`]: consumes the string
    /// without keeping or decompressing it, and returns the length it
    /// decodes to.
    fn skip_string(&mut self) -> Result<u64, RdbError> {
        match self.read_str_head()? {
            StrHead::Raw(n) => {
                self.src.skip(n as u64)?;
                Ok(n as u64)
            }
            StrHead::Int(v) => Ok(decimal_len(v)),
            StrHead::Lzf { clen, len } => {
                self.src.skip(clen as u64)?;
                Ok(len as u64)
            }
        }
    }

    fn read_ms(&mut self) -> Result<i64, RdbError> {
        Ok(i64::from_le_bytes(self.src.array()?))
    }

    fn read_stream_id_lens(&mut self) -> Result<StreamId, RdbError> {
        let ms = self.read_length()?;
        let seq = self.read_length()?;
        Ok(StreamId { ms, seq })
    }

    fn read_raw_stream_id(&mut self) -> Result<StreamId, RdbError> {
        Ok(StreamId::from_be_bytes(&self.src.array()?))
    }

    /// A sorted-set score of a type 3 (text) or type 5 (binary double) set;
    /// NaN is rejected like Redis does.
    fn read_zset_score(&mut self, t: u8) -> Result<f64, RdbError> {
        let score = if t == T_ZSET_2 {
            f64::from_le_bytes(self.src.array()?)
        } else {
            self.read_text_double()?
        };
        if score.is_nan() {
            return Err(self.corrupt("sorted set with a NaN score"));
        }
        Ok(score)
    }

    /// Absolute expiry of a hash field stored as a length-encoded TTL (types
    /// 22 and 24): 0 means none; relative to `min_expire` when given.
    fn field_expiry(&self, ttl: u64, min_expire: Option<u64>) -> Result<Option<i64>, RdbError> {
        if ttl == 0 {
            return Ok(None);
        }
        let at = match min_expire {
            Some(min) => ttl.checked_add(min).map(|v| v - 1),
            None => Some(ttl),
        };
        match at {
            Some(at) if at <= MAX_FIELD_EXPIRE_MS => Ok(Some(at as i64)),
            _ => Err(self.corrupt(format!(
                "hash field expiry out of range (ttl {ttl}, min expire {min_expire:?})"
            ))),
        }
    }

    /// Old (type 3) sorted-set score: length byte + text, or 253/254/255 for
    /// nan/+inf/-inf.
    fn read_text_double(&mut self) -> Result<f64, RdbError> {
        match self.src.u8()? {
            255 => Ok(f64::NEG_INFINITY),
            254 => Ok(f64::INFINITY),
            253 => Ok(f64::NAN),
            n => {
                let text = self.src.bytes(usize::from(n))?;
                std::str::from_utf8(&text)
                    .ok()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .ok_or_else(|| {
                        self.corrupt(format!(
                            "invalid score text {:?}",
                            String::from_utf8_lossy(&text)
                        ))
                    })
            }
        }
    }

    fn skip_module_value(&mut self, module_id: u64) -> Result<(), RdbError> {
        loop {
            match self.read_length()? {
                MODULE_OP_EOF => return Ok(()),
                MODULE_OP_SINT | MODULE_OP_UINT => {
                    self.read_len()?;
                }
                MODULE_OP_FLOAT => {
                    self.src.array::<4>()?;
                }
                MODULE_OP_DOUBLE => {
                    self.src.array::<8>()?;
                }
                MODULE_OP_STRING => {
                    self.skip_string()?;
                }
                other => {
                    return Err(self.corrupt(format!(
                        "unknown module value opcode {other} in data of module {}",
                        module_type_name(module_id)
                    )));
                }
            }
        }
    }

    fn read_blob_elems<'b>(
        &self,
        blob: &'b [u8],
        ziplist_format: bool,
        what: &str,
    ) -> Result<Vec<Elem<'b>>, RdbError> {
        let res = if ziplist_format {
            ziplist::decode(blob)
        } else {
            listpack::decode(blob)
        };
        res.map_err(|m| self.corrupt(format!("{what}: {m}")))
    }

    // ----------------------------------------------------------- values

    fn read_value(&mut self, t: u8) -> Result<RdbValue, RdbError> {
        match t {
            T_STRING => Ok(RdbValue::String(self.read_string()?)),
            T_LIST => Ok(RdbValue::List(self.read_string_seq()?)),
            T_SET => Ok(RdbValue::Set(self.read_string_seq()?)),
            T_ZSET | T_ZSET_2 => {
                let n = self.read_length()?;
                let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                for _ in 0..n {
                    let member = self.read_string()?;
                    let score = self.read_zset_score(t)?;
                    out.push((member, score));
                }
                Ok(RdbValue::SortedSet(out))
            }
            T_HASH => {
                let n = self.read_length()?;
                let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                for _ in 0..n {
                    let field = self.read_string()?;
                    let value = self.read_string()?;
                    out.push(HashField {
                        field,
                        value,
                        expire_at_ms: None,
                    });
                }
                Ok(RdbValue::Hash(out))
            }
            T_MODULE_PRE_GA => Err(module_pre_ga_unsupported()),
            T_MODULE_2 => {
                let module_id = self.read_length()?;
                self.skip_module_value(module_id)?;
                Ok(RdbValue::Module {
                    module_name: module_type_name(module_id),
                })
            }
            T_HASH_ZIPMAP => {
                let blob = self.read_string()?;
                let pairs = ziplist::decode_zipmap(&blob)
                    .map_err(|m| self.corrupt(format!("hash zipmap: {m}")))?;
                Ok(RdbValue::Hash(
                    pairs
                        .into_iter()
                        .map(|(f, v)| HashField {
                            field: f.to_vec(),
                            value: v.to_vec(),
                            expire_at_ms: None,
                        })
                        .collect(),
                ))
            }
            T_LIST_ZIPLIST => {
                let blob = self.read_string()?;
                let elems = self.read_blob_elems(&blob, true, "list ziplist")?;
                Ok(RdbValue::List(
                    elems.into_iter().map(Elem::to_bytes).collect(),
                ))
            }
            T_SET_INTSET => {
                let blob = self.read_string()?;
                let ints =
                    intset::decode(&blob).map_err(|m| self.corrupt(format!("set intset: {m}")))?;
                Ok(RdbValue::Set(
                    ints.into_iter()
                        .map(|v| v.to_string().into_bytes())
                        .collect(),
                ))
            }
            T_ZSET_ZIPLIST | T_ZSET_LISTPACK => {
                let blob = self.read_string()?;
                let what = if t == T_ZSET_ZIPLIST {
                    "sorted set ziplist"
                } else {
                    "sorted set listpack"
                };
                let elems = self.read_blob_elems(&blob, t == T_ZSET_ZIPLIST, what)?;
                zset_from_elems(elems, what).map_err(|m| self.corrupt(m))
            }
            T_HASH_ZIPLIST | T_HASH_LISTPACK => {
                let blob = self.read_string()?;
                let what = if t == T_HASH_ZIPLIST {
                    "hash ziplist"
                } else {
                    "hash listpack"
                };
                let elems = self.read_blob_elems(&blob, t == T_HASH_ZIPLIST, what)?;
                hash_from_elems(elems, what).map_err(|m| self.corrupt(m))
            }
            T_LIST_QUICKLIST | T_LIST_QUICKLIST_2 => self.read_quicklist(t),
            T_SET_LISTPACK => {
                let blob = self.read_string()?;
                let elems = self.read_blob_elems(&blob, false, "set listpack")?;
                Ok(RdbValue::Set(
                    elems.into_iter().map(Elem::to_bytes).collect(),
                ))
            }
            T_STREAM_LISTPACKS | T_STREAM_LISTPACKS_2 | T_STREAM_LISTPACKS_3 => {
                Ok(RdbValue::Stream(self.read_stream(t)?))
            }
            T_22 if self.flavor == RdbFlavor::Valkey => self.read_valkey_hash2(),
            T_22 => self.read_hash_with_ttls(false),
            T_HASH_METADATA => self.read_hash_with_ttls(true),
            T_HASH_LISTPACK_EX_PRE_GA => self.read_listpack_hash_with_ttls(false),
            T_HASH_LISTPACK_EX => self.read_listpack_hash_with_ttls(true),
            _ => Err(RdbError::UnknownType {
                type_byte: t,
                version: self.version,
            }),
        }
    }

    fn read_string_seq(&mut self) -> Result<Vec<Vec<u8>>, RdbError> {
        let n = self.read_length()?;
        let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
        for _ in 0..n {
            out.push(self.read_string()?);
        }
        Ok(out)
    }

    fn read_quicklist(&mut self, t: u8) -> Result<RdbValue, RdbError> {
        let nodes = self.read_length()?;
        let mut out = Vec::new();
        for _ in 0..nodes {
            let container = if t == T_LIST_QUICKLIST_2 {
                self.read_length()?
            } else {
                QUICKLIST_NODE_PACKED
            };
            let blob = self.read_string()?;
            if blob.is_empty() {
                return Err(self.corrupt("empty quicklist node"));
            }
            match container {
                QUICKLIST_NODE_PLAIN => out.push(blob),
                QUICKLIST_NODE_PACKED => {
                    let is_ziplist = t == T_LIST_QUICKLIST;
                    let what = if is_ziplist {
                        "quicklist ziplist node"
                    } else {
                        "quicklist listpack node"
                    };
                    let elems = self.read_blob_elems(&blob, is_ziplist, what)?;
                    out.extend(elems.into_iter().map(Elem::to_bytes));
                }
                other => {
                    return Err(self.corrupt(format!("unknown quicklist container type {other}")));
                }
            }
        }
        Ok(RdbValue::List(out))
    }

    /// Redis types 22 (7.4 RC, absolute TTLs) and 24 (min-expire + relative
    /// TTLs): per field a length-encoded TTL (0 = none), field, value.
    fn read_hash_with_ttls(&mut self, relative: bool) -> Result<RdbValue, RdbError> {
        let min_expire = if relative {
            Some(u64::from_le_bytes(self.src.array()?))
        } else {
            None
        };
        let n = self.read_length()?;
        let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
        for _ in 0..n {
            let ttl = self.read_length()?;
            let field = self.read_string()?;
            let value = self.read_string()?;
            let expire_at_ms = self.field_expiry(ttl, min_expire)?;
            out.push(HashField {
                field,
                value,
                expire_at_ms,
            });
        }
        Ok(RdbValue::Hash(out))
    }

    /// Redis types 23 (7.4 RC) and 25 (with a leading min-expire): a listpack
    /// of field, value, expiry triples (expiry 0 = none).
    fn read_listpack_hash_with_ttls(&mut self, with_min: bool) -> Result<RdbValue, RdbError> {
        if with_min {
            self.src.array::<8>()?; // min expire, informational
        }
        let blob = self.read_string()?;
        let elems = self.read_blob_elems(&blob, false, "hash listpack with TTLs")?;
        if !elems.len().is_multiple_of(3) {
            return Err(self.corrupt(format!(
                "hash listpack with TTLs has {} elements, not a multiple of 3",
                elems.len()
            )));
        }
        let mut out = Vec::with_capacity(elems.len() / 3);
        for triple in elems.chunks_exact(3) {
            let ttl = triple[2].as_i64().filter(|v| *v >= 0).ok_or_else(|| {
                self.corrupt("hash listpack with TTLs has an invalid expiry element")
            })?;
            out.push(HashField {
                field: triple[0].to_bytes(),
                value: triple[1].to_bytes(),
                expire_at_ms: if ttl == 0 { None } else { Some(ttl) },
            });
        }
        Ok(RdbValue::Hash(out))
    }

    /// Valkey 9 RDB_TYPE_HASH_2: per field: field, value, 8-byte LE expiry
    /// in ms (-1 = none).
    fn read_valkey_hash2(&mut self) -> Result<RdbValue, RdbError> {
        let n = self.read_length()?;
        let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
        for _ in 0..n {
            let field = self.read_string()?;
            let value = self.read_string()?;
            let expiry = self.read_ms()?;
            out.push(HashField {
                field,
                value,
                expire_at_ms: if expiry == -1 { None } else { Some(expiry) },
            });
        }
        Ok(RdbValue::Hash(out))
    }

    fn read_stream(&mut self, t: u8) -> Result<RdbStream, RdbError> {
        let nodes = self.read_length()?;
        let mut entries = Vec::new();
        for _ in 0..nodes {
            let node_key = self.read_string()?;
            let raw: [u8; 16] = node_key.as_slice().try_into().map_err(|_| {
                self.corrupt(format!(
                    "stream node key has {} bytes, expected a 16-byte id",
                    node_key.len()
                ))
            })?;
            let master = StreamId::from_be_bytes(&raw);
            let blob = self.read_string()?;
            let elems = self.read_blob_elems(&blob, false, "stream listpack")?;
            if elems.is_empty() {
                return Err(self.corrupt("empty listpack inside a stream"));
            }
            decode_stream_node(master, &elems, &mut entries)
                .map_err(|m| self.corrupt(format!("stream node {master}: {m}")))?;
        }
        let length = self.read_length()?;
        let last_id = self.read_stream_id_lens()?;
        let (first_id, max_deleted_id, entries_added) = if t >= T_STREAM_LISTPACKS_2 {
            let first = self.read_stream_id_lens()?;
            let max_deleted = self.read_stream_id_lens()?;
            let added = self.read_length()?;
            (Some(first), Some(max_deleted), Some(added))
        } else {
            (None, None, None)
        };
        let ngroups = self.read_length()?;
        let mut groups = Vec::new();
        for _ in 0..ngroups {
            let name = self.read_string()?;
            let group_last_id = self.read_stream_id_lens()?;
            let entries_read = if t >= T_STREAM_LISTPACKS_2 {
                // Stored as an unsigned length; -1 (unknown) wraps to u64::MAX.
                Some(self.read_length()? as i64)
            } else {
                None
            };
            let npel = self.read_length()?;
            let mut pending = Vec::new();
            let mut pending_ids = BTreeSet::new();
            for _ in 0..npel {
                let id = self.read_raw_stream_id()?;
                let delivery_time_ms = self.read_ms()?;
                let delivery_count = self.read_length()?;
                if !pending_ids.insert(id) {
                    return Err(self.corrupt(format!("duplicate pending entry {id}")));
                }
                pending.push(StreamPendingEntry {
                    id,
                    delivery_time_ms,
                    delivery_count,
                });
            }
            let nconsumers = self.read_length()?;
            let mut consumers = Vec::new();
            for _ in 0..nconsumers {
                let cname = self.read_string()?;
                let seen_time_ms = self.read_ms()?;
                let active_time_ms = if t >= T_STREAM_LISTPACKS_3 {
                    Some(self.read_ms()?)
                } else {
                    None
                };
                let n = self.read_length()?;
                let mut ids = Vec::new();
                for _ in 0..n {
                    let id = self.read_raw_stream_id()?;
                    if !pending_ids.contains(&id) {
                        return Err(self.corrupt(format!(
                            "consumer pending entry {id} is not in the group's pending list"
                        )));
                    }
                    ids.push(id);
                }
                consumers.push(StreamConsumer {
                    name: cname,
                    seen_time_ms,
                    active_time_ms,
                    pending: ids,
                });
            }
            groups.push(StreamConsumerGroup {
                name,
                last_id: group_last_id,
                entries_read,
                pending,
                consumers,
            });
        }
        Ok(RdbStream {
            entries,
            length,
            last_id,
            first_id,
            max_deleted_id,
            entries_added,
            groups,
        })
    }

    // ------------------------------------------------ key-only skipping

    /// Key-only counterpart of [`Self::read_value`] (keep the two in step):
    /// consumes a value of type `t` with the same framing checks, holding
    /// none of it. Returns whether the value has elements, i.e. false for
    /// the empty collections `next_entry` drops.
    fn skip_value(&mut self, t: u8) -> Result<bool, RdbError> {
        match t {
            T_STRING => {
                self.skip_string()?;
                Ok(true)
            }
            T_LIST | T_SET => self.skip_elements(|r| {
                r.skip_string()?;
                Ok(())
            }),
            T_ZSET | T_ZSET_2 => self.skip_elements(|r| {
                r.skip_string()?;
                r.read_zset_score(t)?;
                Ok(())
            }),
            T_HASH => self.skip_elements(|r| {
                r.skip_string()?;
                r.skip_string()?;
                Ok(())
            }),
            T_MODULE_PRE_GA => Err(module_pre_ga_unsupported()),
            T_MODULE_2 => {
                let module_id = self.read_length()?;
                self.skip_module_value(module_id)?;
                Ok(true)
            }
            T_HASH_ZIPMAP => self.skip_blob(ziplist::EMPTY_ZIPMAP_LEN, "hash zipmap"),
            T_LIST_ZIPLIST => self.skip_blob(ziplist::EMPTY_LEN, "list ziplist"),
            T_ZSET_ZIPLIST => self.skip_blob(ziplist::EMPTY_LEN, "sorted set ziplist"),
            T_HASH_ZIPLIST => self.skip_blob(ziplist::EMPTY_LEN, "hash ziplist"),
            T_SET_INTSET => self.skip_blob(intset::EMPTY_LEN, "set intset"),
            T_SET_LISTPACK => self.skip_blob(listpack::EMPTY_LEN, "set listpack"),
            T_ZSET_LISTPACK => self.skip_blob(listpack::EMPTY_LEN, "sorted set listpack"),
            T_HASH_LISTPACK => self.skip_blob(listpack::EMPTY_LEN, "hash listpack"),
            T_LIST_QUICKLIST | T_LIST_QUICKLIST_2 => self.skip_quicklist(t),
            T_STREAM_LISTPACKS | T_STREAM_LISTPACKS_2 | T_STREAM_LISTPACKS_3 => {
                self.skip_stream(t)?;
                Ok(true)
            }
            T_22 if self.flavor == RdbFlavor::Valkey => self.skip_elements(|r| {
                r.skip_string()?;
                r.skip_string()?;
                r.read_ms()?;
                Ok(())
            }),
            T_22 | T_HASH_METADATA => {
                let min_expire = if t == T_HASH_METADATA {
                    Some(u64::from_le_bytes(self.src.array()?))
                } else {
                    None
                };
                self.skip_elements(|r| {
                    let ttl = r.read_length()?;
                    r.skip_string()?;
                    r.skip_string()?;
                    r.field_expiry(ttl, min_expire)?;
                    Ok(())
                })
            }
            T_HASH_LISTPACK_EX_PRE_GA | T_HASH_LISTPACK_EX => {
                if t == T_HASH_LISTPACK_EX {
                    self.src.array::<8>()?; // min expire
                }
                self.skip_blob(listpack::EMPTY_LEN, "hash listpack with TTLs")
            }
            _ => Err(RdbError::UnknownType {
                type_byte: t,
                version: self.version,
            }),
        }
    }

    /// Reads an element count, then consumes that many elements with
    /// `skip_one`; returns whether there were any.
    fn skip_elements(
        &mut self,
        mut skip_one: impl FnMut(&mut Self) -> Result<(), RdbError>,
    ) -> Result<bool, RdbError> {
        let n = self.read_length()?;
        for _ in 0..n {
            skip_one(self)?;
        }
        Ok(n > 0)
    }

    /// Skips a listpack / ziplist / intset / zipmap blob whose empty form is
    /// `empty_len` bytes; returns whether it holds elements. A valid blob
    /// longer than its empty form holds at least one, so the decoded length
    /// (known without decompressing an LZF blob) tells.
    fn skip_blob(&mut self, empty_len: u64, what: &str) -> Result<bool, RdbError> {
        let len = self.skip_string()?;
        self.blob_has_elems(len, empty_len, what)
    }

    fn blob_has_elems(&self, len: u64, empty_len: u64, what: &str) -> Result<bool, RdbError> {
        if len < empty_len {
            return Err(self.corrupt(format!("{what} of {len} bytes is too short")));
        }
        Ok(len > empty_len)
    }

    /// Key-only counterpart of [`Self::read_quicklist`].
    fn skip_quicklist(&mut self, t: u8) -> Result<bool, RdbError> {
        let nodes = self.read_length()?;
        let mut any = false;
        for _ in 0..nodes {
            let container = if t == T_LIST_QUICKLIST_2 {
                self.read_length()?
            } else {
                QUICKLIST_NODE_PACKED
            };
            let len = self.skip_string()?;
            if len == 0 {
                return Err(self.corrupt("empty quicklist node"));
            }
            any |= match container {
                QUICKLIST_NODE_PLAIN => true,
                QUICKLIST_NODE_PACKED if t == T_LIST_QUICKLIST => {
                    self.blob_has_elems(len, ziplist::EMPTY_LEN, "quicklist ziplist node")?
                }
                QUICKLIST_NODE_PACKED => {
                    self.blob_has_elems(len, listpack::EMPTY_LEN, "quicklist listpack node")?
                }
                other => {
                    return Err(self.corrupt(format!("unknown quicklist container type {other}")));
                }
            };
        }
        Ok(any)
    }

    /// Key-only counterpart of [`Self::read_stream`]: node keys and listpacks,
    /// metadata, and consumer groups with their pending lists and consumers.
    fn skip_stream(&mut self, t: u8) -> Result<(), RdbError> {
        let nodes = self.read_length()?;
        for _ in 0..nodes {
            let key_len = self.skip_string()?;
            if key_len != 16 {
                return Err(self.corrupt(format!(
                    "stream node key has {key_len} bytes, expected a 16-byte id"
                )));
            }
            if self.skip_string()? <= listpack::EMPTY_LEN {
                return Err(self.corrupt("empty listpack inside a stream"));
            }
        }
        self.read_length()?; // length
        self.read_stream_id_lens()?; // last id
        if t >= T_STREAM_LISTPACKS_2 {
            self.read_stream_id_lens()?; // first id
            self.read_stream_id_lens()?; // max deleted id
            self.read_length()?; // entries added
        }
        let ngroups = self.read_length()?;
        for _ in 0..ngroups {
            self.skip_string()?; // name
            self.read_stream_id_lens()?; // last delivered id
            if t >= T_STREAM_LISTPACKS_2 {
                self.read_length()?; // entries read
            }
            let npel = self.read_length()?;
            for _ in 0..npel {
                self.src.skip(16 + 8)?; // id, delivery time
                self.read_length()?; // delivery count
            }
            let nconsumers = self.read_length()?;
            for _ in 0..nconsumers {
                self.skip_string()?; // name
                // Seen time, and active time from type 21 on.
                self.src
                    .skip(if t >= T_STREAM_LISTPACKS_3 { 16 } else { 8 })?;
                // Pending ids, 16 bytes each. A count too large to multiply
                // cannot be satisfied either: the stream ends first.
                let n = self.read_length()?;
                self.src.skip(n.saturating_mul(16))?;
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for RdbReader<R> {
    type Item = Result<RdbEntry, RdbError>;

    /// Yields entries until the end of the RDB; stops after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Failed {
            return None;
        }
        self.next_entry().transpose()
    }
}

#[cfg(test)]
mod tests;
