//! The agent's side of its own Redis, which every stage stands on: finding
//! the master ([`locator`]) over TLS when asked ([`tls`]), which server it
//! is and whether geosync supports it ([`version`]), the reserved
//! key names and metadata layout ([`layout`]), and the Lua scripts that
//! stamp, apply and read changes atomically, with their Rust callers.
//!
//! Everything geosync writes into a user's Redis lives under
//! [`RESERVED_PREFIX`], and its metadata in a database of its own
//! ([`metadata_db`], decision 020). Per-key metadata sits in bucket hashes
//! (`__geosync:m:<db>:<n>`), one field per user key, so that small buckets
//! keep Redis's compact listpack encoding.
//!
//! Each stage owns its own [`Store`] (`connection.rs`); the scripts it runs
//! are grouped by who calls them: `stamping.rs` (the stamper),
//! `applying.rs` (the applier), `read.rs` (catch-ups and rebuilds),
//! `freeze.rs` and [`pieces`] (large collections, read in pieces),
//! [`digest`] (their digest). `lua.rs` holds the Lua sources; [`guard`]
//! repairs geosync's keys a client damaged.

mod applying;
mod connection;
pub mod digest;
mod freeze;
pub mod guard;
pub mod layout;
pub mod locator;
mod lua;
pub mod pieces;
mod read;
pub use read::{Collected, flush_change};
mod reply;
mod stamping;
pub mod tls;
pub mod version;

pub use applying::{ApplyOutcome, Quarantined};
pub use connection::{Store, StoreError};
pub use freeze::{Freeze, Frozen, Piece};
pub use layout::{
    APPLY_MARKER_KEY, BUILD_PREFIX, COPY_PREFIX, DEFAULT_METADATA_DB, META_BUCKETS, META_PREFIX,
    REACHED_KEY, RECORD_FLAG_AT, RESERVED_PREFIX, bucket_name, bucket_prefix, build_key,
    collected_key, digests_key, floor_key, is_own_key, is_reserved, meta_bucket, metadata_db,
    node_suffix, set_metadata_db, user_dbs,
};
pub use lua::{
    DEFAULT_MAX_KEY_ELEMENTS, DEFAULT_MAX_VALUE_BYTES, max_key_elements, set_max_key_elements,
    set_max_value_bytes,
};
pub use stamping::{Seen, SeenContext, StampOutcome};
