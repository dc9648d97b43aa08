//! The key-spec model: one command (or subcommand) and its key specs as `COMMAND` describes them.

use std::collections::HashMap;

/// One command (or subcommand) as described by `COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CommandEntry {
    /// Full name as the server spells it ("xgroup|create").
    pub(super) name: String,
    /// Only read by the tests (to build argv of valid length); kept so `Debug` shows it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) arity: i64,
    /// Command flags ("write", "movablekeys", ...), lowercase.
    pub(super) flags: Vec<String>,
    /// Legacy first/last/step (last >= 0 is absolute, negative counts from the end).
    pub(super) legacy_first: i64,
    pub(super) legacy_last: i64,
    pub(super) legacy_step: i64,
    pub(super) specs: Vec<KeySpec>,
    /// Subcommands by lowercase name without the container prefix ("create").
    pub(super) subcommands: HashMap<Vec<u8>, CommandEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeySpec {
    pub(super) flags: SpecFlags,
    pub(super) begin: BeginSearch,
    pub(super) find: FindKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BeginSearch {
    Index(i64),
    Keyword { keyword: Vec<u8>, startfrom: i64 },
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FindKeys {
    Range {
        lastkey: i64,
        keystep: i64,
        limit: i64,
    },
    Keynum {
        keynumidx: i64,
        firstkey: i64,
        keystep: i64,
    },
    Unknown,
}

/// Key-spec flags (`addReplyFlagsForKeyArgs` in server.c); unknown names are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct SpecFlags(pub(super) u32);

impl SpecFlags {
    const RO: u32 = 1 << 0;
    const RW: u32 = 1 << 1;
    const OW: u32 = 1 << 2;
    const RM: u32 = 1 << 3;
    const ACCESS: u32 = 1 << 4;
    const UPDATE: u32 = 1 << 5;
    const INSERT: u32 = 1 << 6;
    const DELETE: u32 = 1 << 7;
    pub(super) const NOT_KEY: u32 = 1 << 8;
    pub(super) const INCOMPLETE: u32 = 1 << 9;
    pub(super) const VARIABLE_FLAGS: u32 = 1 << 10;

    const WRITE: u32 = Self::RW | Self::OW | Self::RM;
    const ANY_ACCESS: u32 = Self::RO | Self::WRITE;

    pub(super) fn bit(name: &[u8]) -> u32 {
        const NAMES: [(&[u8], u32); 11] = [
            (b"ro", SpecFlags::RO),
            (b"rw", SpecFlags::RW),
            (b"ow", SpecFlags::OW),
            (b"rm", SpecFlags::RM),
            (b"access", SpecFlags::ACCESS),
            (b"update", SpecFlags::UPDATE),
            (b"insert", SpecFlags::INSERT),
            (b"delete", SpecFlags::DELETE),
            (b"not_key", SpecFlags::NOT_KEY),
            (b"incomplete", SpecFlags::INCOMPLETE),
            (b"variable_flags", SpecFlags::VARIABLE_FLAGS),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(0, |(_, b)| *b)
    }

    pub(super) fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }

    /// RW, OW or RM; or no access flag at all (unknown access, treated as written).
    pub(super) fn may_write(self) -> bool {
        self.has(Self::WRITE) || !self.has(Self::ANY_ACCESS)
    }
}
