//! The decoded data model: entries, keys and values as the reader returns
//! them, independent of how the stream encoded them.

use std::fmt;

use super::format::{
    T_22, T_HASH, T_HASH_LISTPACK, T_HASH_LISTPACK_EX, T_HASH_LISTPACK_EX_PRE_GA, T_HASH_METADATA,
    T_HASH_ZIPLIST, T_HASH_ZIPMAP, T_LIST, T_LIST_QUICKLIST, T_LIST_QUICKLIST_2, T_LIST_ZIPLIST,
    T_MODULE_2, T_MODULE_PRE_GA, T_SET, T_SET_INTSET, T_SET_LISTPACK, T_STREAM_LISTPACKS,
    T_STREAM_LISTPACKS_2, T_STREAM_LISTPACKS_3, T_STRING, T_ZSET, T_ZSET_2, T_ZSET_LISTPACK,
    T_ZSET_ZIPLIST,
};

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
///
/// [`RdbReader::next_key`]: super::RdbReader::next_key
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

    pub(super) fn from_be_bytes(raw: &[u8; 16]) -> Self {
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
