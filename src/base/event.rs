//! What the source tells the stamper: which keys a write touched, flushes,
//! the bounds of a resync, and stream positions. Never values: the stamper
//! reads those inside Redis (DESIGN.md, "Why ship state, and why stamp
//! inside Redis").

use bytes::Bytes;

use crate::base::position::Position;

/// What the tailer tells the stamper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailEvent {
    /// Keys written together: one command, or one MULTI/EXEC (a client's
    /// transaction or a script's effects). Stamped in one batch.
    Dirty(Vec<(u32, Bytes)>),
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
