//! Keys first seen in a full resync's snapshot, or in the backlog a
//! promoted replica continued the stream with (decision 019).
//!
//! Such a change happened at some unknown time after its record: while the
//! agent was away, or before a Redis that came back from an older RDB, or a
//! replica promoted without everything, saved it. It must never beat a
//! write made after it, so the stamp script gives it a stamp just above the
//! newest stamp the key or the region is known to have had
//! ([`Seen::Snapshot`]). Such a low stamp must
//! not stick to a write a client makes during the resync: the snapshot's
//! key is read live, so it may already hold that write, which the stream
//! reports afterwards; the key is then stamped again with a fresh stamp
//! ([`Seen::Rewritten`]).

use std::collections::HashSet;

use bytes::Bytes;
use indexmap::IndexSet;

use crate::store::Seen;

type Key = (u32, Bytes);

/// What the stamper knows of the keys of the current resync.
#[derive(Default)]
pub struct SnapshotKeys {
    /// Between the start of a resync with a Redis that may hold less than
    /// the agent saw and the end of its snapshot or backlog: the dirty
    /// keys reported changed at unknown times.
    reporting: bool,
    /// The stamp the region had reached when the resync began (its Redis's
    /// `__geosync:reached`), None when it holds none.
    reached: Option<String>,
    /// Pending keys first seen in the snapshot.
    seen: HashSet<Key>,
    /// Keys whose change got a low stamp in this resync.
    low: HashSet<Key>,
    /// Pending keys of `low` that the stream reported written since.
    rewritten: HashSet<Key>,
    /// Between any resync's start and the end of its snapshot or backlog.
    catching_up: bool,
    /// Pending keys reported while catching up (not first seen in a
    /// snapshot of a Redis that may be older).
    caught: HashSet<Key>,
}

impl SnapshotKeys {
    /// A resync starts (`rewound`: with a Redis that may hold less than the
    /// agent saw); `reached` is what the Redis held as reached then.
    pub fn start(&mut self, rewound: bool, reached: Option<String>) {
        self.reporting = rewound;
        self.catching_up = true;
        self.reached = reached;
        self.seen.clear();
        self.low.clear();
        self.rewritten.clear();
        self.caught.clear();
    }

    /// The snapshot or backlog has been reported: keys from now on are the
    /// live stream's.
    pub fn done(&mut self) {
        self.reporting = false;
        self.catching_up = false;
    }

    /// The stamp the region had reached when the resync began.
    pub fn reached(&self) -> Option<&str> {
        self.reached.as_deref()
    }

    /// Takes note of dirty keys about to join `pending` (not yet added).
    pub fn reported(&mut self, keys: &[Key], pending: &IndexSet<Key>) {
        for k in keys {
            if self.reporting {
                // A key already pending from the stream keeps a fresh stamp.
                if !pending.contains(k) {
                    self.seen.insert(k.clone());
                }
            } else if self.catching_up {
                if !pending.contains(k) {
                    self.caught.insert(k.clone());
                }
            } else {
                self.seen.remove(k);
                self.caught.remove(k);
                if self.low.contains(k) {
                    self.rewritten.insert(k.clone());
                }
            }
        }
    }

    /// Pending keys a delete wrote while evictions were not watched: a key
    /// with a TTL found gone may have been evicted.
    pub fn unwatched(&mut self, keys: Vec<Key>) {
        for k in keys {
            if !self.seen.contains(&k) {
                self.caught.insert(k);
            }
        }
    }

    /// A key stamped low outside a batch (a large collection, in pieces).
    pub fn add_low(&mut self, k: Key) {
        self.low.insert(k);
    }

    /// How a pending key was seen.
    pub fn mode(&self, k: &Key) -> Seen {
        if self.seen.contains(k) {
            Seen::Snapshot
        } else if self.rewritten.contains(k) {
            Seen::Rewritten
        } else if self.caught.contains(k) {
            Seen::CaughtUp
        } else {
            Seen::Live
        }
    }

    /// A batch was stamped: `low` got stamps below the batch's; keys still
    /// in `pending` (retried or deferred) keep how they were seen.
    pub fn stamped(&mut self, batch: &[Key], low: Vec<Key>, pending: &IndexSet<Key>) {
        for k in batch {
            if !pending.contains(k) {
                self.seen.remove(k);
                self.rewritten.remove(k);
                self.caught.remove(k);
            }
        }
        self.low.extend(low);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        (0, Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_snapshot_key_rewritten_after_its_low_stamp_is_stamped_fresh() {
        let mut s = SnapshotKeys::default();
        let mut pending = IndexSet::new();
        s.start(true, Some("00000000000000010001".into()));
        s.reported(&[key("a"), key("b")], &pending);
        pending.extend([key("a"), key("b")]);
        assert_eq!(s.mode(&key("a")), Seen::Snapshot);
        // "b" was retried: it stays a snapshot key.
        let batch: Vec<Key> = pending.drain(..).collect();
        pending.insert(key("b"));
        s.stamped(&batch, vec![key("a")], &pending);
        assert_eq!(s.mode(&key("b")), Seen::Snapshot);
        s.done();
        assert_eq!(s.mode(&key("a")), Seen::Live);
        s.reported(&[key("a"), key("c")], &pending);
        assert_eq!(s.mode(&key("a")), Seen::Rewritten);
        assert_eq!(s.mode(&key("c")), Seen::Live);
        // The stream also wrote "b" before it was stamped: a fresh stamp.
        s.reported(&[key("b")], &pending);
        assert_eq!(s.mode(&key("b")), Seen::Live);
        // A new resync forgets the last one's.
        s.start(false, None);
        assert_eq!(s.mode(&key("a")), Seen::Live);
        assert_eq!(s.reached(), None);
    }

    #[test]
    fn a_key_pending_from_the_stream_keeps_a_fresh_stamp() {
        let mut s = SnapshotKeys::default();
        let mut pending = IndexSet::new();
        pending.insert(key("a"));
        s.start(true, None);
        s.reported(&[key("a")], &pending);
        assert_eq!(s.mode(&key("a")), Seen::Live);
    }
}
