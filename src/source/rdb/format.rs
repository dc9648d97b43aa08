//! The numbers of the RDB format: opcode and value type bytes, module
//! sub-opcodes, quicklist and stream flags, and the version and size limits
//! this parser applies.

// ----------------------------------------------------------------- opcodes

/// Valkey 9: in-progress slot import job (same byte as Redis' future KEY_META).
pub(super) const OP_SLOT_IMPORT: u8 = 0xF3;
pub(super) const OP_SLOT_INFO: u8 = 0xF4;
pub(super) const OP_FUNCTION2: u8 = 0xF5;
pub(super) const OP_FUNCTION_PRE_GA: u8 = 0xF6;
pub(super) const OP_MODULE_AUX: u8 = 0xF7;
pub(super) const OP_IDLE: u8 = 0xF8;
pub(super) const OP_FREQ: u8 = 0xF9;
pub(super) const OP_AUX: u8 = 0xFA;
pub(super) const OP_RESIZEDB: u8 = 0xFB;
pub(super) const OP_EXPIRETIME_MS: u8 = 0xFC;
pub(super) const OP_EXPIRETIME: u8 = 0xFD;
pub(super) const OP_SELECTDB: u8 = 0xFE;
pub(super) const OP_EOF: u8 = 0xFF;
/// Bytes from here up are opcodes, bytes below are value types.
pub(super) const FIRST_OPCODE: u8 = 0xF0;

// -------------------------------------------------------------- value types

pub(super) const T_STRING: u8 = 0;
pub(super) const T_LIST: u8 = 1;
pub(super) const T_SET: u8 = 2;
pub(super) const T_ZSET: u8 = 3;
pub(super) const T_HASH: u8 = 4;
pub(super) const T_ZSET_2: u8 = 5;
pub(super) const T_MODULE_PRE_GA: u8 = 6;
pub(super) const T_MODULE_2: u8 = 7;
pub(super) const T_HASH_ZIPMAP: u8 = 9;
pub(super) const T_LIST_ZIPLIST: u8 = 10;
pub(super) const T_SET_INTSET: u8 = 11;
pub(super) const T_ZSET_ZIPLIST: u8 = 12;
pub(super) const T_HASH_ZIPLIST: u8 = 13;
pub(super) const T_LIST_QUICKLIST: u8 = 14;
pub(super) const T_STREAM_LISTPACKS: u8 = 15;
pub(super) const T_HASH_LISTPACK: u8 = 16;
pub(super) const T_ZSET_LISTPACK: u8 = 17;
pub(super) const T_LIST_QUICKLIST_2: u8 = 18;
pub(super) const T_STREAM_LISTPACKS_2: u8 = 19;
pub(super) const T_SET_LISTPACK: u8 = 20;
pub(super) const T_STREAM_LISTPACKS_3: u8 = 21;
/// Redis 7.4 RC: hash with field TTLs, absolute TTLs. Valkey 9: RDB_TYPE_HASH_2.
pub(super) const T_22: u8 = 22;
/// Redis 7.4 RC: listpack hash with field TTLs, no min-expire prefix.
pub(super) const T_HASH_LISTPACK_EX_PRE_GA: u8 = 23;
/// Redis 7.4+: hash with field TTLs relative to a leading min-expire.
pub(super) const T_HASH_METADATA: u8 = 24;
/// Redis 7.4+: listpack hash with field TTLs, leading min-expire.
pub(super) const T_HASH_LISTPACK_EX: u8 = 25;

// ------------------------------------------------------- module sub-opcodes

pub(super) const MODULE_OP_EOF: u64 = 0;
pub(super) const MODULE_OP_SINT: u64 = 1;
pub(super) const MODULE_OP_UINT: u64 = 2;
pub(super) const MODULE_OP_FLOAT: u64 = 3;
pub(super) const MODULE_OP_DOUBLE: u64 = 4;
pub(super) const MODULE_OP_STRING: u64 = 5;

pub(super) const QUICKLIST_NODE_PLAIN: u64 = 1;
pub(super) const QUICKLIST_NODE_PACKED: u64 = 2;

pub(super) const STREAM_ITEM_FLAG_DELETED: i64 = 1;
pub(super) const STREAM_ITEM_FLAG_SAMEFIELDS: i64 = 2;

/// Largest field expiration time Redis accepts (EB_EXPIRE_TIME_MAX, 2^48-1 ms).
pub(super) const MAX_FIELD_EXPIRE_MS: u64 = (1 << 48) - 1;

/// Capacity reserved up front for collections whose declared size comes from
/// the (untrusted) stream; they grow beyond it only as data actually arrives.
pub(super) const PREALLOC_CAP: usize = 1024;

/// Highest RDB version with the `REDIS` magic this parser accepts (Redis
/// 7.4–8.x write 12).
pub const MAX_REDIS_RDB_VERSION: u32 = 12;

/// RDB version written by Valkey 9 with the `VALKEY` magic ("VALKEY080").
pub const VALKEY_RDB_VERSION: u32 = 80;

/// Default upper bound for a single string length, a sanity limit that makes
/// absurd lengths from a corrupt stream fail fast (see
/// [`RdbReader::set_max_string_len`]).
///
/// [`RdbReader::set_max_string_len`]: super::RdbReader::set_max_string_len
pub const DEFAULT_MAX_STRING_LEN: u64 = 1 << 32;
