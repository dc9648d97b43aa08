//! What the source tells the stamper: which keys a write touched, flushes,
//! the bounds of a resync, and stream positions. The stamper reads the
//! keys' values inside Redis (DESIGN.md, "Why ship state, and why stamp
//! inside Redis"), except for a string the stream itself says a key was
//! set to, whose state the stamp script only has to confirm (decision 022).

use bytes::Bytes;

use crate::base::position::Position;

/// What the tailer tells the stamper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailEvent {
    /// Keys written together: one command, or one MULTI/EXEC (a client's
    /// transaction or a script's effects). Stamped in one batch.
    Dirty(Vec<(u32, Bytes)>),
    /// As `Dirty`, with the state the stream says some of the keys were
    /// left in (each key at most once; the others are read in Redis).
    Known(Vec<(u32, Bytes)>, Vec<Known>),
    /// FLUSHDB of one database, or FLUSHALL (`None`).
    Flush(Option<u32>),
    /// A resync starts: the keys that follow, up to `SnapshotDone`, are the
    /// snapshot's and the metadata's (a full resync), or this node's own
    /// records and the backlog of writes made while the agent was away (a
    /// partial one).
    SnapshotStart {
        /// The Redis may hold less than the agent saw: a replication id
        /// other than the one the agent followed (a Redis restarted, maybe
        /// from an older RDB, or a promoted replica), or none recorded. The
        /// keys reported until `SnapshotDone` changed at unknown times
        /// since their record (decision 019).
        rewound: bool,
    },
    /// Keys a `DEL`/`UNLINK` wrote (reported just before, as `Dirty`) while
    /// evictions were not watched yet (before the session's first tick,
    /// decision 016): an eviction may have sent them, so a key with a TTL
    /// found gone is taken as evicted.
    Unwatched(Vec<(u32, Bytes)>),
    /// Every key of a full resync's snapshot has been reported.
    SnapshotDone,
    /// Every write up to this point of the stream has been reported; once
    /// the keys reported so far are stamped, the position may be recorded.
    Position(Position),
}

impl TailEvent {
    /// Keeps the written keys of a `Dirty` or `Known` event that `keep`
    /// accepts, with their known states; false when none is left. Other
    /// events are kept whole.
    pub fn retain_written(&mut self, mut keep: impl FnMut(&(u32, Bytes)) -> bool) -> bool {
        match self {
            TailEvent::Dirty(keys) => {
                keys.retain(&mut keep);
                !keys.is_empty()
            }
            TailEvent::Known(keys, known) => {
                keys.retain(&mut keep);
                known.retain(|k| keys.iter().any(|(db, key)| *db == k.db && *key == k.key));
                !keys.is_empty()
            }
            _ => true,
        }
    }
}

/// A string value the replication stream says a key was left holding (a
/// plain `SET key value`, or `SET key value PXAT ms`, the form Redis
/// replicates every expiring `SET` in), with the key's metadata record as
/// the stream last showed it before that write. The stamp script takes this
/// state without reading the key when the record is still exactly that: no
/// peer's change was applied to the key since (decision 022).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The database.
    pub db: u32,
    /// The key.
    pub key: Bytes,
    /// Its value.
    pub value: Bytes,
    /// Its absolute expiry, in ms since the epoch.
    pub expire_at_ms: Option<i64>,
    /// The key's metadata record before the write.
    pub record: Bytes,
}

impl Known {
    /// What it costs in memory, roughly.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len() + self.record.len() + 64
    }
}
