//! What the agent acknowledges to its Redis (`REPLCONF ACK <offset>`), so
//! that `WAIT` means what `--ack-after` says (decision 017).
//!
//! Redis's `WAIT n` returns once `n` replicas acknowledged the client's
//! offset, and the agent is one of the replicas. With `local` it
//! acknowledges what it has read; with `one-peer` (the default) or
//! `all-peers` only offsets whose writes one peer, or every peer, applied.
//!
//! The stamper reports, per position of the stream, the outbox sequence
//! that holds everything stamped up to it ([`Durable::stamped`]); the
//! outbox reports the sequence peers acknowledged ([`Durable::acked`]);
//! the tailer acknowledges [`Durable::offset`] and is told when it moves.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

/// When a replication offset is acknowledged to the local Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckAfter {
    /// Once the agent has read it.
    Local,
    /// Once one peer applied every write up to it.
    #[default]
    OnePeer,
    /// Once every peer applied every write up to it.
    AllPeers,
}

impl std::str::FromStr for AckAfter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(AckAfter::Local),
            "one-peer" => Ok(AckAfter::OnePeer),
            "all-peers" => Ok(AckAfter::AllPeers),
            other => Err(format!("{other:?} is not local, one-peer or all-peers")),
        }
    }
}

/// The offset acknowledged to the local Redis, as `--ack-after` says.
pub struct Durable {
    mode: AckAfter,
    state: Mutex<State>,
    offset: watch::Sender<i64>,
}

#[derive(Default)]
struct State {
    /// (offset, outbox sequence holding everything up to it), oldest first.
    stamped: VecDeque<(i64, u64)>,
    /// The sequence the peers hold, as the mode counts them.
    acked: u64,
}

/// Most positions remembered; older ones are merged (the newest of
/// them is kept), so a peer away for long costs nothing.
const MAX_PENDING: usize = 4096;

impl Durable {
    /// A tracker acknowledging as `mode` says.
    pub fn new(mode: AckAfter) -> Self {
        Durable {
            mode,
            state: Mutex::new(State::default()),
            offset: watch::channel(0).0,
        }
    }

    /// The mode.
    pub fn mode(&self) -> AckAfter {
        self.mode
    }

    /// The offset to acknowledge, given the tailer read up to `read`.
    pub fn offset(&self, read: i64) -> i64 {
        match self.mode {
            AckAfter::Local => read,
            _ => (*self.offset.borrow()).min(read),
        }
    }

    /// Follows the offset to acknowledge.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.offset.subscribe()
    }

    /// A new stream (a full resync): its offsets start again, and nothing
    /// of it is acknowledged yet.
    pub fn restart(&self) {
        let mut s = self.state.lock().expect("durable lock");
        s.stamped.clear();
        s.acked = 0;
        self.offset.send_replace(0);
    }

    /// Every write of the stream up to `offset` has been stamped and its
    /// changes are in the outbox at sequences up to `seq`.
    pub fn stamped(&self, offset: i64, seq: u64) {
        if self.mode == AckAfter::Local {
            return;
        }
        let mut s = self.state.lock().expect("durable lock");
        if s.stamped.back().is_some_and(|(o, _)| *o >= offset) {
            return;
        }
        if s.stamped.len() >= MAX_PENDING {
            // The oldest goes: its offset is acknowledged with the next
            // one's, later, never sooner.
            s.stamped.pop_front();
        }
        s.stamped.push_back((offset, seq));
        self.advance(&mut s);
    }

    /// The peers (as the mode counts them) acknowledged every batch up to
    /// sequence `seq`.
    pub fn acked(&self, seq: u64) {
        if self.mode == AckAfter::Local {
            return;
        }
        let mut s = self.state.lock().expect("durable lock");
        if seq > s.acked {
            s.acked = seq;
        }
        self.advance(&mut s);
    }

    fn advance(&self, s: &mut State) {
        let mut newest = None;
        while let Some((offset, seq)) = s.stamped.front().copied() {
            if seq > s.acked {
                break;
            }
            newest = Some(offset);
            s.stamped.pop_front();
        }
        if let Some(offset) = newest {
            self.offset.send_if_modified(|o| {
                let moved = offset > *o;
                if moved {
                    *o = offset;
                }
                moved
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_acknowledged_once_its_batches_are() {
        let d = Durable::new(AckAfter::OnePeer);
        d.stamped(100, 3);
        d.stamped(250, 5);
        assert_eq!(d.offset(300), 0);
        d.acked(4);
        assert_eq!(d.offset(300), 100);
        d.acked(5);
        assert_eq!(d.offset(300), 250);
        // Never beyond what the tailer read.
        assert_eq!(d.offset(200), 200);
        // A position whose writes made no batch is held by what came before.
        d.stamped(400, 5);
        assert_eq!(d.offset(500), 400);
    }

    #[test]
    fn local_acknowledges_what_was_read() {
        let d = Durable::new(AckAfter::Local);
        d.stamped(100, 3);
        assert_eq!(d.offset(300), 300);
    }

    #[test]
    fn a_long_absence_keeps_the_queue_bounded_and_acknowledges_late_not_early() {
        let d = Durable::new(AckAfter::AllPeers);
        for i in 1..=(MAX_PENDING as i64 * 3) {
            d.stamped(i * 10, i as u64);
        }
        assert!(d.state.lock().unwrap().stamped.len() <= MAX_PENDING);
        d.acked(5);
        assert!(d.offset(i64::MAX) <= 50);
        d.acked(u64::MAX);
        assert_eq!(d.offset(i64::MAX), MAX_PENDING as i64 * 30);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("one-peer".parse::<AckAfter>().unwrap(), AckAfter::OnePeer);
        assert_eq!("all-peers".parse::<AckAfter>().unwrap(), AckAfter::AllPeers);
        assert_eq!("local".parse::<AckAfter>().unwrap(), AckAfter::Local);
        assert!("two".parse::<AckAfter>().is_err());
    }
}
