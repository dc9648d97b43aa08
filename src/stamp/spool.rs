//! The spool: the queue between the tailer and the stamper.
//!
//! The tailer must read the replication stream as fast as the master writes
//! it. If it stopped whenever the stamper fell behind, the master would hold
//! the difference in the agent's replica output buffer, and past
//! `client-output-buffer-limit replica` it drops the agent, which then needs
//! a full resync (a fork of the master and a whole snapshot), during which
//! it falls behind again. So the tailer never waits for the stamper: events
//! stay in memory up to a limit, and beyond it they are appended to segment
//! files in `<data-dir>/spool/` and read back in order. Once anything is on
//! disk, new events go to disk too until the reader has caught up, so the
//! order is kept. Only when the disk part is full as well does the tailer
//! wait (and the master's limit applies again).
//!
//! The spool is not durable, and need not be: the replication position is
//! recorded only after every event before it has been stamped
//! ([`crate::base::position`]), so after a crash the stream is read again from
//! there. It is emptied at start. If a segment cannot be written or read
//! back, the disk part is dropped and the tailer starts a new session from
//! the recorded position ([`SpoolError::Lost`]); nothing is lost either.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{error, info};

use crate::base::event::TailEvent;
use crate::base::position::Position;
use crate::ops::metrics::Metrics;

/// Most events read from disk at once.
const READ_AHEAD: usize = 256;

/// How much the spool may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of events kept in memory (estimated).
    pub memory_bytes: usize,
    /// Bytes of segment files on disk; 0 keeps everything in memory (and
    /// makes the tailer wait when memory is full).
    pub disk_bytes: u64,
}

impl Limits {
    /// Size of one segment file: small enough that read segments are
    /// removed while the spool is still in use.
    fn segment_bytes(&self) -> u64 {
        (self.disk_bytes / 4).clamp(1 << 20, 64 << 20)
    }
}

/// Why an event could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The stamper is gone (shutdown).
    #[error("the stamper stopped")]
    Closed,
    /// The disk part failed and was dropped; the stream must be read again
    /// from the recorded position.
    #[error("the disk spool failed: {0}")]
    Lost(String),
}

/// One segment file.
struct Segment {
    path: PathBuf,
    /// Events written (and counted) so far.
    written: u64,
    /// Events read back so far.
    read: u64,
    /// Bytes in the file.
    bytes: u64,
    reader: Option<BufReader<File>>,
}

#[derive(Default)]
struct State {
    memory: VecDeque<(TailEvent, usize)>,
    memory_bytes: usize,
    /// Oldest first; the writer appends to the last.
    segments: VecDeque<Segment>,
    writer: Option<BufWriter<File>>,
    /// Bytes of every segment file.
    disk_bytes: u64,
    next_segment: u64,
    senders: usize,
    receiver_alive: bool,
    /// Set when the disk part was dropped; reported to the next send.
    lost: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Something was queued (or the last sender left).
    readable: Notify,
    /// Something was taken out (or the receiver left).
    writable: Notify,
    dir: PathBuf,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &State) {
        self.metrics.spool_memory_bytes.set(st.memory_bytes as i64);
        self.metrics.spool_disk_bytes.set(st.disk_bytes as i64);
    }

    /// Drops every segment (their events are lost).
    fn drop_disk(&self, st: &mut State, why: &str) {
        error!(error = %why, "the disk spool failed; its events are dropped and the stream is read again from the recorded position");
        st.writer = None;
        for s in st.segments.drain(..) {
            let _ = std::fs::remove_file(&s.path);
        }
        st.disk_bytes = 0;
        self.metrics.spool_lost.inc();
        self.publish(st);
        self.writable.notify_one();
    }

    /// Queues `ev`, or hands it back when the spool is full.
    fn try_push(&self, ev: TailEvent) -> Result<Option<TailEvent>, SpoolError> {
        let mut st = self.lock();
        if !st.receiver_alive {
            return Err(SpoolError::Closed);
        }
        if let Some(why) = st.lost.take() {
            return Err(SpoolError::Lost(why));
        }
        let size = memory_size(&ev);
        if st.segments.is_empty()
            && (st.memory.is_empty() || st.memory_bytes + size <= self.limits.memory_bytes)
        {
            st.memory_bytes += size;
            st.memory.push_back((ev, size));
            self.publish(&st);
            drop(st);
            self.readable.notify_one();
            return Ok(None);
        }
        if self.limits.disk_bytes == 0 {
            return Ok(Some(ev));
        }
        let record = encode(&ev);
        if st.disk_bytes + record.len() as u64 > self.limits.disk_bytes {
            return Ok(Some(ev));
        }
        if let Err(e) = self.append(&mut st, &record) {
            let why = format!("writing to {}: {e}", self.dir.display());
            self.drop_disk(&mut st, &why);
            return Err(SpoolError::Lost(why));
        }
        self.metrics.spool_spilled_events.inc();
        self.publish(&st);
        drop(st);
        self.readable.notify_one();
        Ok(None)
    }

    /// Appends one record, starting a new segment when needed.
    fn append(&self, st: &mut State, record: &[u8]) -> io::Result<()> {
        let full = st
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.limits.segment_bytes());
        if full || st.writer.is_none() {
            if let Some(mut w) = st.writer.take() {
                w.flush()?;
            }
            let path = self.dir.join(format!("{:016}.seg", st.next_segment));
            st.next_segment += 1;
            let file = File::create(&path)?;
            if st.segments.is_empty() {
                info!(dir = %self.dir.display(), "the stamper is behind the stream; spooling to disk");
            }
            st.segments.push_back(Segment {
                path,
                written: 0,
                read: 0,
                bytes: 0,
                reader: None,
            });
            st.writer = Some(BufWriter::with_capacity(1 << 20, file));
        }
        let w = st.writer.as_mut().expect("writer set above");
        w.write_all(&(record.len() as u32).to_le_bytes())?;
        w.write_all(record)?;
        let n = 4 + record.len() as u64;
        let seg = st.segments.back_mut().expect("segment pushed above");
        seg.written += 1;
        seg.bytes += n;
        st.disk_bytes += n;
        Ok(())
    }

    /// Reads the next events of the oldest segment into `out`.
    fn read_disk(&self, st: &mut State, out: &mut VecDeque<TailEvent>) -> io::Result<()> {
        let last = st.segments.len() == 1;
        if last && let Some(w) = st.writer.as_mut() {
            w.flush()?;
        }
        let seg = st.segments.front_mut().expect("caller checked");
        if seg.reader.is_none() {
            seg.reader = Some(BufReader::with_capacity(1 << 20, File::open(&seg.path)?));
        }
        let reader = seg.reader.as_mut().expect("opened above");
        let n = (seg.written - seg.read).min(READ_AHEAD as u64);
        let mut buf = Vec::new();
        for _ in 0..n {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len)?;
            buf.resize(u32::from_le_bytes(len) as usize, 0);
            reader.read_exact(&mut buf)?;
            out.push_back(decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?);
            seg.read += 1;
        }
        if seg.read == seg.written {
            // Done with this segment: the writer has moved on, or it is the
            // last and everything written was read (back to memory).
            let seg = st.segments.pop_front().expect("front exists");
            let _ = std::fs::remove_file(&seg.path);
            st.disk_bytes -= seg.bytes;
            if st.segments.is_empty() {
                st.writer = None;
                info!("the stamper caught up with the disk spool");
            }
            self.writable.notify_one();
        }
        Ok(())
    }
}

/// The tailer's end.
pub struct SpoolTx {
    shared: Arc<Shared>,
}

/// The stamper's end.
pub struct SpoolRx {
    shared: Arc<Shared>,
    /// Events read from disk, not yet handed out.
    local: VecDeque<TailEvent>,
}

/// Creates the spool in `dir` (emptied first).
pub fn channel(
    dir: PathBuf,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> io::Result<(SpoolTx, SpoolRx)> {
    empty_dir(&dir)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            senders: 1,
            receiver_alive: true,
            ..State::default()
        }),
        readable: Notify::new(),
        writable: Notify::new(),
        dir,
        limits,
        metrics,
    });
    Ok((
        SpoolTx {
            shared: shared.clone(),
        },
        SpoolRx {
            shared,
            local: VecDeque::new(),
        },
    ))
}

/// Creates `dir` if needed and removes segments a previous run left.
fn empty_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "seg") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

impl SpoolTx {
    /// Queues an event; waits only while both memory and disk are full.
    pub async fn send(&self, mut ev: TailEvent) -> Result<(), SpoolError> {
        loop {
            let room = self.shared.writable.notified();
            match self.shared.try_push(ev)? {
                None => return Ok(()),
                Some(back) => ev = back,
            }
            self.shared.metrics.spool_full_waits.inc();
            room.await;
        }
    }

    /// [`SpoolTx::send`] for blocking threads (the snapshot parser).
    pub fn blocking_send(&self, ev: TailEvent) -> Result<(), SpoolError> {
        tokio::runtime::Handle::current().block_on(self.send(ev))
    }

    /// Reports a failure of the disk part that no send has reported yet.
    pub fn check(&self) -> Result<(), SpoolError> {
        let mut st = self.shared.lock();
        if !st.receiver_alive {
            return Err(SpoolError::Closed);
        }
        match st.lost.take() {
            Some(why) => Err(SpoolError::Lost(why)),
            None => Ok(()),
        }
    }
}

impl Clone for SpoolTx {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        SpoolTx {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SpoolTx {
    fn drop(&mut self) {
        self.shared.lock().senders -= 1;
        self.shared.readable.notify_one();
    }
}

impl SpoolRx {
    /// The next event; `None` once every sender is gone and all is read.
    pub async fn recv(&mut self) -> Option<TailEvent> {
        let shared = self.shared.clone();
        loop {
            let ready = shared.readable.notified();
            if let Some(ev) = self.try_recv() {
                return Some(ev);
            }
            {
                let st = self.shared.lock();
                if st.senders == 0 && st.memory.is_empty() && st.segments.is_empty() {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<TailEvent> {
        if let Some(ev) = self.local.pop_front() {
            return Some(ev);
        }
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if let Some((ev, size)) = st.memory.pop_front() {
            st.memory_bytes -= size;
            shared.publish(&st);
            drop(st);
            shared.writable.notify_one();
            return Some(ev);
        }
        if st.segments.is_empty() {
            return None;
        }
        if let Err(e) = shared.read_disk(&mut st, &mut self.local) {
            // The sender learns it on its next send or check.
            let why = format!("reading {}: {e}", shared.dir.display());
            shared.drop_disk(&mut st, &why);
            st.lost = Some(why);
        }
        shared.publish(&st);
        drop(st);
        self.local.pop_front()
    }
}

impl Drop for SpoolRx {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_alive = false;
        st.writer = None;
        for s in st.segments.drain(..) {
            let _ = std::fs::remove_file(&s.path);
        }
        drop(st);
        self.shared.writable.notify_one();
    }
}

/// What an event costs in memory, roughly.
fn memory_size(ev: &TailEvent) -> usize {
    match ev {
        TailEvent::Dirty(keys) | TailEvent::Unwatched(keys) => {
            32 + keys.iter().map(|(_, k)| k.len() + 48).sum::<usize>()
        }
        _ => 64,
    }
}

const TAG_DIRTY: u8 = 0;
const TAG_FLUSH_DB: u8 = 1;
const TAG_FLUSH_ALL: u8 = 2;
const TAG_SNAPSHOT_START: u8 = 3;
const TAG_SNAPSHOT_DONE: u8 = 4;
const TAG_POSITION: u8 = 5;
const TAG_SNAPSHOT_START_REWOUND: u8 = 6;
const TAG_UNWATCHED: u8 = 7;

/// The on-disk form of an event (little-endian, lengths as u32).
fn encode(ev: &TailEvent) -> Vec<u8> {
    let mut out = Vec::new();
    match ev {
        TailEvent::Dirty(keys) | TailEvent::Unwatched(keys) => {
            out.push(if matches!(ev, TailEvent::Dirty(_)) {
                TAG_DIRTY
            } else {
                TAG_UNWATCHED
            });
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for (db, key) in keys {
                out.extend_from_slice(&db.to_le_bytes());
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
        }
        TailEvent::Flush(Some(db)) => {
            out.push(TAG_FLUSH_DB);
            out.extend_from_slice(&db.to_le_bytes());
        }
        TailEvent::Flush(None) => out.push(TAG_FLUSH_ALL),
        TailEvent::SnapshotStart { rewound: false } => out.push(TAG_SNAPSHOT_START),
        TailEvent::SnapshotStart { rewound: true } => out.push(TAG_SNAPSHOT_START_REWOUND),
        TailEvent::SnapshotDone => out.push(TAG_SNAPSHOT_DONE),
        TailEvent::Position(p) => {
            out.push(TAG_POSITION);
            out.extend_from_slice(&p.offset.to_le_bytes());
            out.extend_from_slice(&p.db.to_le_bytes());
            out.extend_from_slice(&(p.replid.len() as u32).to_le_bytes());
            out.extend_from_slice(p.replid.as_bytes());
        }
    }
    out
}

/// Reads what [`encode`] wrote.
fn decode(mut b: &[u8]) -> Result<TailEvent, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("record cut short ({} of {n} bytes)", b.len()));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn u32_of(b: &mut &[u8]) -> Result<u32, String> {
        Ok(u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")))
    }
    let tag = take(&mut b, 1)?[0];
    let ev = match tag {
        TAG_DIRTY | TAG_UNWATCHED => {
            let n = u32_of(&mut b)? as usize;
            let mut keys = Vec::with_capacity(n.min(b.len() / 8));
            for _ in 0..n {
                let db = u32_of(&mut b)?;
                let len = u32_of(&mut b)? as usize;
                keys.push((db, Bytes::copy_from_slice(take(&mut b, len)?)));
            }
            if tag == TAG_DIRTY {
                TailEvent::Dirty(keys)
            } else {
                TailEvent::Unwatched(keys)
            }
        }
        TAG_FLUSH_DB => TailEvent::Flush(Some(u32_of(&mut b)?)),
        TAG_FLUSH_ALL => TailEvent::Flush(None),
        TAG_SNAPSHOT_START => TailEvent::SnapshotStart { rewound: false },
        TAG_SNAPSHOT_START_REWOUND => TailEvent::SnapshotStart { rewound: true },
        TAG_SNAPSHOT_DONE => TailEvent::SnapshotDone,
        TAG_POSITION => {
            let offset = i64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8 bytes"));
            let db = u32_of(&mut b)?;
            let len = u32_of(&mut b)? as usize;
            let replid = String::from_utf8(take(&mut b, len)?.to_vec())
                .map_err(|_| "replication id is not UTF-8".to_string())?;
            TailEvent::Position(Position { replid, offset, db })
        }
        other => return Err(format!("unknown record tag {other}")),
    };
    if !b.is_empty() {
        return Err(format!("{} bytes after the record", b.len()));
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dirty(keys: &[&str]) -> TailEvent {
        TailEvent::Dirty(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (i as u32, Bytes::copy_from_slice(k.as_bytes())))
                .collect(),
        )
    }

    fn events() -> Vec<TailEvent> {
        vec![
            dirty(&["a", "b"]),
            TailEvent::Flush(Some(3)),
            TailEvent::Flush(None),
            TailEvent::SnapshotStart { rewound: true },
            dirty(&["", "x\r\n\0"]),
            TailEvent::SnapshotDone,
            TailEvent::Position(Position {
                replid: "8a1b".into(),
                offset: 1 << 40,
                db: 7,
            }),
            TailEvent::Dirty(Vec::new()),
        ]
    }

    #[test]
    fn records_round_trip() {
        for ev in events() {
            assert_eq!(decode(&encode(&ev)).unwrap(), ev);
        }
    }

    #[test]
    fn bad_records_are_errors() {
        for ev in events() {
            let rec = encode(&ev);
            for cut in 0..rec.len() {
                assert!(decode(&rec[..cut]).is_err(), "{ev:?} cut at {cut}");
            }
            let mut long = rec.clone();
            long.push(0);
            assert!(decode(&long).is_err(), "{ev:?} with a trailing byte");
        }
        assert!(decode(&[9]).unwrap_err().contains("unknown record tag 9"));
    }

    fn spool(memory_bytes: usize, disk_bytes: u64) -> (tempfile::TempDir, SpoolTx, SpoolRx) {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel(
            dir.path().join("spool"),
            Limits {
                memory_bytes,
                disk_bytes,
            },
            Arc::new(Metrics::new()),
        )
        .unwrap();
        (dir, tx, rx)
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("spool")).unwrap().count()
    }

    #[tokio::test]
    async fn order_is_kept_across_memory_and_disk() {
        let (dir, tx, mut rx) = spool(1000, 64 << 20);
        let n = 20_000;
        for i in 0..n {
            tx.send(dirty(&[&format!("key{i}")])).await.unwrap();
        }
        assert!(segments(dir.path()) > 0, "spilled to disk");
        // Memory is used again once the reader has caught up.
        for i in 0..n {
            assert_eq!(rx.recv().await.unwrap(), dirty(&[&format!("key{i}")]));
        }
        assert!(rx.try_recv().is_none());
        assert_eq!(segments(dir.path()), 0, "read segments are removed");
        tx.send(dirty(&["again"])).await.unwrap();
        assert_eq!(segments(dir.path()), 0, "back to memory");
        assert_eq!(rx.recv().await.unwrap(), dirty(&["again"]));
        drop(tx);
        assert!(rx.recv().await.is_none(), "closed once the sender is gone");
    }

    #[tokio::test]
    async fn interleaved_reads_and_writes_keep_order() {
        let (_dir, tx, mut rx) = spool(500, 1 << 30);
        let mut next_read = 0;
        for i in 0..30_000u32 {
            tx.send(dirty(&[&i.to_string()])).await.unwrap();
            if i % 3 == 0 {
                assert_eq!(rx.recv().await.unwrap(), dirty(&[&next_read.to_string()]));
                next_read += 1;
            }
        }
        while next_read < 30_000 {
            assert_eq!(rx.recv().await.unwrap(), dirty(&[&next_read.to_string()]));
            next_read += 1;
        }
    }

    #[tokio::test]
    async fn segments_rotate_and_go_once_read_within_the_disk_limit() {
        // 4 MiB on disk: 1 MiB segments. 12 MiB of keys pass through.
        let (dir, tx, mut rx) = spool(1, 4 << 20);
        let big = "k".repeat(1000);
        let mut next = 0;
        let mut most_segments = 0;
        for i in 0..12_000 {
            let ev = dirty(&[&format!("{i}{big}")]);
            // Reading keeps up only now and then: the disk part fills and
            // the writer waits when it is full.
            while tx.shared.try_push(ev.clone()).unwrap().is_some() {
                assert_eq!(rx.recv().await.unwrap(), dirty(&[&format!("{next}{big}")]));
                next += 1;
            }
            let st = tx.shared.lock();
            assert!(st.disk_bytes <= 4 << 20, "{} bytes on disk", st.disk_bytes);
            drop(st);
            most_segments = most_segments.max(segments(dir.path()));
        }
        assert!(
            most_segments >= 3,
            "rotated: {most_segments} segments at most"
        );
        while next < 12_000 {
            assert_eq!(rx.recv().await.unwrap(), dirty(&[&format!("{next}{big}")]));
            next += 1;
        }
        assert_eq!(segments(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_full_spool_makes_the_sender_wait() {
        let (_dir, tx, mut rx) = spool(200, 0);
        tx.send(dirty(&["a"])).await.unwrap();
        tx.send(dirty(&["b"])).await.unwrap();
        let third = tokio::spawn(async move {
            tx.send(dirty(&["c"])).await.unwrap();
            tx
        });
        // The third waits for room; taking one event makes it.
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await.unwrap(), dirty(&["a"]));
        let _tx = third.await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), dirty(&["b"]));
        assert_eq!(rx.recv().await.unwrap(), dirty(&["c"]));
    }

    #[tokio::test]
    async fn a_damaged_segment_is_reported_to_the_sender() {
        let (dir, tx, mut rx) = spool(100, 64 << 20);
        for i in 0..100 {
            tx.send(dirty(&[&format!("key{i}")])).await.unwrap();
        }
        // The segment disappears before it is read back.
        for entry in std::fs::read_dir(dir.path().join("spool")).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let mut got = 0;
        while rx.try_recv().is_some() {
            got += 1;
        }
        assert!(got < 100, "the damaged part is not handed out");
        assert!(matches!(tx.check(), Err(SpoolError::Lost(_))));
        assert!(tx.check().is_ok(), "reported once");
        assert_eq!(segments(dir.path()), 0);
        tx.send(dirty(&["after"])).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), dirty(&["after"]));
    }

    fn event() -> impl Strategy<Value = TailEvent> {
        let key = proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from);
        prop_oneof![
            proptest::collection::vec((0u32..16, key.clone()), 0..8).prop_map(TailEvent::Dirty),
            proptest::collection::vec((0u32..16, key), 0..8).prop_map(TailEvent::Unwatched),
            proptest::option::of(0u32..16).prop_map(TailEvent::Flush),
            Just(TailEvent::SnapshotStart { rewound: false }),
            Just(TailEvent::SnapshotStart { rewound: true }),
            Just(TailEvent::SnapshotDone),
            ("[0-9a-f]{0,40}", any::<i64>(), any::<u32>()).prop_map(|(replid, offset, db)| {
                TailEvent::Position(Position { replid, offset, db })
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_event_round_trips(ev in event()) {
            prop_assert_eq!(decode(&encode(&ev)).unwrap(), ev);
        }

        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&data);
        }

        /// Random sends and receives against a plain queue: with a memory
        /// part of a few hundred bytes, events go from memory to disk and
        /// back, always in order.
        #[test]
        fn order_matches_a_plain_queue(
            ops in proptest::collection::vec((event(), 0usize..4), 1..300),
            memory in 0usize..600,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (_dir, tx, mut rx) = spool(memory, 64 << 20);
                let mut model = std::collections::VecDeque::new();
                for (ev, reads) in ops {
                    model.push_back(ev.clone());
                    tx.send(ev).await.unwrap();
                    for _ in 0..reads {
                        let got = rx.try_recv();
                        assert_eq!(got, model.pop_front());
                    }
                }
                while let Some(want) = model.pop_front() {
                    assert_eq!(rx.recv().await, Some(want));
                }
                assert!(rx.try_recv().is_none());
            });
        }
    }

    #[tokio::test]
    async fn a_gone_receiver_closes_the_sender() {
        let (_dir, tx, rx) = spool(100, 0);
        drop(rx);
        assert!(matches!(
            tx.send(dirty(&["a"])).await,
            Err(SpoolError::Closed)
        ));
    }
}
