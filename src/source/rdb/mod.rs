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
mod encoding;
mod error;
mod format;
mod intset;
mod listpack;
mod lzf;
mod module;
mod reader;
mod skip;
mod source;
mod stream;
mod types;
mod values;
mod ziplist;

pub use crc64::crc64;
pub use error::RdbError;
pub use format::{DEFAULT_MAX_STRING_LEN, MAX_REDIS_RDB_VERSION, VALKEY_RDB_VERSION};
pub use reader::RdbReader;
pub use types::{
    HashField, RdbEntry, RdbFlavor, RdbKey, RdbKeyInfo, RdbStream, RdbValue, RdbValueType,
    StreamConsumer, StreamConsumerGroup, StreamEntry, StreamId, StreamPendingEntry,
    module_type_name,
};

#[cfg(test)]
mod tests;
