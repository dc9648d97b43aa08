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
}

impl Which {
    pub(super) const ALL: [Which; 7] = [
        Which::Stamp,
        Which::Apply,
        Which::Flush,
        Which::Read,
        Which::Freeze,
        Which::Piece,
        Which::Claim,
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

impl Script {
    pub(super) fn new(main: &str) -> Self {
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
