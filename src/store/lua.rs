//! The Lua scripts geosync runs in the local Redis, each prefixed with the
//! shared `scripts/lib.lua`, and the `--max-key-elements` limit written into
//! them.

const LIB: &str = include_str!("scripts/lib.lua");
const STAMP: &str = include_str!("scripts/stamp.lua");
const APPLY: &str = include_str!("scripts/apply.lua");
const FLUSH: &str = include_str!("scripts/flush.lua");
const READ: &str = include_str!("scripts/read.lua");
const FREEZE: &str = include_str!("scripts/freeze.lua");
const PIECE: &str = include_str!("scripts/piece.lua");
const CLAIM: &str = include_str!("scripts/claim.lua");
const DIGEST: &str = include_str!("scripts/digest.lua");
const COLLECT: &str = include_str!("scripts/collect.lua");
const FORGET: &str = include_str!("scripts/forget.lua");
const FLUSH_SLICE: &str = include_str!("scripts/flushslice.lua");
const REACH: &str = include_str!("scripts/reach.lua");

/// Which of the scripts a pipelined call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Stamp,
    Apply,
    Flush,
    Read,
    Freeze,
    Piece,
    Claim,
    Digest,
    Collect,
    Forget,
    FlushSlice,
    Reach,
}

impl Which {
    pub(super) const ALL: [Which; 12] = [
        Which::Stamp,
        Which::Apply,
        Which::Flush,
        Which::Read,
        Which::Freeze,
        Which::Piece,
        Which::Claim,
        Which::Digest,
        Which::Collect,
        Which::Forget,
        Which::FlushSlice,
        Which::Reach,
    ];

    pub(super) fn source(self) -> &'static str {
        match self {
            Which::Stamp => STAMP,
            Which::Apply => APPLY,
            Which::Flush => FLUSH,
            Which::Read => READ,
            Which::Freeze => FREEZE,
            Which::Piece => PIECE,
            Which::Claim => CLAIM,
            Which::Digest => DIGEST,
            Which::Collect => COLLECT,
            Which::Forget => FORGET,
            Which::FlushSlice => FLUSH_SLICE,
            Which::Reach => REACH,
        }
    }
}

/// One script call of a pipeline: database, script, KEYS, ARGV.
pub(super) type Call = (u32, Which, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// A compiled script: body and SHA1.
pub(super) struct Script {
    pub(super) body: String,
    pub(super) sha: String,
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

/// The line of `scripts/lib.lua` that [`set_max_value_bytes`] rewrites.
const MAX_BYTES_LINE: &str = "local MAX_BYTES = 67100672 -- @max-value-bytes";

/// Default of [`set_max_value_bytes`]: what a 64 MiB peer message holds,
/// less room for the envelope and the key.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = (64 << 20) - (8 << 10);

static MAX_VALUE_BYTES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_VALUE_BYTES);

/// Sets the most bytes of a value the stamp and read scripts ship: a
/// larger one fits in no peer message, so it is reported unsupported
/// (`too_large_bytes:<type>:<bytes>`) before its record is written.
/// Applies to stores created afterwards.
pub fn set_max_value_bytes(n: u64) {
    MAX_VALUE_BYTES.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The line of `scripts/lib.lua` that names the metadata database.
const METADATA_DB_LINE: &str = "local META_DB = 15 -- @metadata-db";

impl Script {
    pub(super) fn new(main: &str) -> Self {
        let meta = crate::store::layout::metadata_db();
        let max = max_key_elements();
        let bytes = MAX_VALUE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
        let lib = LIB
            .replace(
                MAX_ELEMENTS_LINE,
                &format!("local MAX_ELEMENTS = {max} -- @max-key-elements"),
            )
            .replace(
                MAX_BYTES_LINE,
                &format!("local MAX_BYTES = {bytes} -- @max-value-bytes"),
            )
            .replace(
                METADATA_DB_LINE,
                &format!("local META_DB = {meta} -- @metadata-db"),
            );
        let body = format!("{lib}\n{main}");
        let sha = redis::Script::new(&body).get_hash().to_string();
        Script { body, sha }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_name_metadata_keys_as_the_agent_does() {
        use crate::store::layout::{COLLECTED_PREFIX, DIGESTS_PREFIX, FLOOR_PREFIX};
        for (name, prefix) in [
            ("DIGESTS", DIGESTS_PREFIX),
            ("FLOOR", FLOOR_PREFIX),
            ("COLLECTED", COLLECTED_PREFIX),
        ] {
            let line = format!("local {name} = '{prefix}' .. USER_DB");
            assert!(LIB.contains(&line), "lib.lua names {line}");
        }
        assert!(LIB.contains(METADATA_DB_LINE));
    }

    #[test]
    fn the_limits_are_written_into_the_scripts() {
        // The lines replaced must stand in lib.lua as written here.
        assert!(LIB.contains(MAX_ELEMENTS_LINE));
        assert!(LIB.contains(MAX_BYTES_LINE));
        assert_eq!(
            MAX_BYTES_LINE,
            format!("local MAX_BYTES = {DEFAULT_MAX_VALUE_BYTES} -- @max-value-bytes")
        );
    }
}
