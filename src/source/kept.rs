//! The command stream kept while a resync's work runs.
//!
//! After `PSYNC` answers, the session has work to do before it follows the
//! stream: it reports the snapshot's keys and this node's records, and it
//! may rebuild the region from a peer, which lasts as long as the peer
//! takes. The master does not wait: it goes on writing the stream into the
//! replica's output buffer (which counts against `client-output-buffer-limit
//! replica`) and drops a replica that sent no `REPLCONF ACK` for
//! `repl-timeout` (60 s by default). The agent would then resync, do the
//! same work again, and could loop.
//!
//! So [`keep_while`] runs the work and, beside it, reads the link: every
//! complete command received is appended to a [`Kept`] queue, in order,
//! unhandled; `REPLCONF ACK <received offset>` goes out every second and at
//! once when a `REPLCONF GETACK` arrives. When the work ends, `follow`
//! handles the kept bytes first and the live link after them, exactly as if
//! it had read them live (`stream.rs`).
//!
//! **Which offset.** The ACKs sent meanwhile say what was *received*: the
//! master uses them for liveness and for `WAIT`, and it keeps the largest
//! offset it was told, so the lower offsets `follow` acknowledges while it
//! catches up change nothing there. The position the agent persists is
//! another thing and stays that of what was *handled* (stamped, even:
//! decision 006): after a crash the kept bytes are read again from the
//! master, like the spool's events (decision 008).
//!
//! **Where the bytes go.** Memory up to [`MEMORY_BYTES`], then one file,
//! `<data-dir>/resync-stream`, up to the disk limit the agent is given (the
//! spool's `--spool-disk-mb`, counted separately). Most resync work is short
//! (a partial resync walks this node's records) and the stream meanwhile
//! small, so it never touches the disk; but a rebuild from a slow peer under
//! a steady writer receives that writer's whole stream for minutes, which
//! must not sit in the agent's memory any more than in the master's. Once
//! anything is in the file, new bytes go there too until it has been read
//! back, so the order is the stream's; the file is removed once read. When
//! the file is full the link is no longer read (ACKs still go out), and the
//! master's own buffer limit applies again. The file is not durable and
//! need not be; a write or read that fails ends the session, which resumes
//! from the persisted position.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio_util::sync::CancellationToken;

use super::error::TailError;
use super::link::Link;
use super::resp;
use crate::ops::metrics::Metrics;
use crate::stamp::spool::SpoolTx;

/// Bytes of kept stream held in memory before the file is used.
pub(super) const MEMORY_BYTES: usize = 4 << 20;

/// Small pieces kept in memory are gathered into chunks of this size.
const MEMORY_CHUNK: usize = 64 << 10;

/// How often the replica acknowledges its offset (Redis replicas: every
/// second).
pub(super) const ACK_EVERY: Duration = Duration::from_secs(1);

/// Stream bytes received and not yet handled, in order: memory first, then
/// the file.
pub(super) struct Kept {
    /// Copies, not slices of the link's buffer: a slice would hold the
    /// whole buffer it was cut from.
    mem: VecDeque<BytesMut>,
    mem_bytes: usize,
    file: Option<KeptFile>,
    path: PathBuf,
    disk_limit: u64,
    /// The offset received when the work began, then the largest offset
    /// acknowledged while it ran: `follow` never acknowledges less, nor
    /// answers again a `GETACK` already answered.
    pub(super) acknowledged: i64,
}

/// The part beyond memory.
struct KeptFile {
    writer: BufWriter<File>,
    reader: File,
    written: u64,
    read: u64,
}

impl Kept {
    /// An empty queue for the stream after `offset`, whose file part would
    /// be `path`, at most `disk_limit` bytes (0: memory only).
    pub(super) fn new(path: PathBuf, disk_limit: u64, offset: i64) -> Kept {
        Kept {
            mem: VecDeque::new(),
            mem_bytes: 0,
            file: None,
            path,
            disk_limit,
            acknowledged: offset,
        }
    }

    /// Nothing kept: `follow` reads the link itself.
    pub(super) fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.file.is_none()
    }

    fn file_pending(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.written - f.read)
    }

    /// New bytes go to the file: memory is full, or the file still holds
    /// bytes (which come first).
    fn to_file(&self) -> bool {
        self.file.is_some() || self.mem_bytes >= MEMORY_BYTES
    }

    /// True while more may be read from the link.
    pub(super) fn has_room(&self) -> bool {
        !self.to_file() || self.file_pending() < self.disk_limit
    }

    /// Appends a copy of `bytes` behind everything kept.
    pub(super) fn push(&mut self, bytes: &[u8], metrics: &Metrics) -> Result<(), TailError> {
        if bytes.is_empty() {
            return Ok(());
        }
        metrics.resync_stream_kept_bytes.inc_by(bytes.len() as u64);
        if !self.to_file() || self.disk_limit == 0 {
            self.mem_bytes += bytes.len();
            // Small reads share a chunk.
            match self.mem.back_mut() {
                Some(back) if back.len() + bytes.len() <= MEMORY_CHUNK => {
                    back.extend_from_slice(bytes)
                }
                _ => self.mem.push_back(BytesMut::from(bytes)),
            }
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let writer = File::create(&self.path)?;
                let reader = File::open(&self.path)?;
                self.file.insert(KeptFile {
                    writer: BufWriter::with_capacity(1 << 20, writer),
                    reader,
                    written: 0,
                    read: 0,
                })
            }
        };
        file.writer.write_all(bytes)?;
        file.written += bytes.len() as u64;
        metrics
            .resync_stream_spilled_bytes
            .inc_by(bytes.len() as u64);
        Ok(())
    }

    /// Moves up to `max` of the oldest kept bytes to the end of `dst`.
    pub(super) fn pop_into(&mut self, dst: &mut BytesMut, max: usize) -> Result<(), TailError> {
        if let Some(front) = self.mem.front_mut() {
            let n = front.len().min(max);
            dst.extend_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.mem.pop_front();
            }
            self.mem_bytes -= n;
            return Ok(());
        }
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        file.writer.flush()?;
        let n = (file.written - file.read).min(max as u64) as usize;
        let start = dst.len();
        dst.resize(start + n, 0);
        file.reader.read_exact(&mut dst[start..])?;
        file.read += n as u64;
        if file.read == file.written {
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
        Ok(())
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How many bytes at the start of `buf` are complete commands, and whether
/// one of them is `REPLCONF GETACK`.
fn complete_commands(buf: &[u8]) -> Result<(usize, bool), TailError> {
    let (mut used, mut getack) = (0, false);
    while let Some((frame, n)) =
        resp::parse(&buf[used..]).map_err(|e| TailError::Protocol(e.to_string()))?
    {
        used += n;
        if let Some(argv) = frame.into_command()
            && argv.len() >= 2
            && argv[0].eq_ignore_ascii_case(b"replconf")
            && argv[1].eq_ignore_ascii_case(b"getack")
        {
            getack = true;
        }
    }
    Ok((used, getack))
}

async fn ack(link: &mut Link, offset: i64) -> Result<(), TailError> {
    let off = offset.to_string();
    link.send(&[b"REPLCONF", b"ACK", off.as_bytes()]).await
}

/// Runs `work` while reading the link into `kept` and acknowledging what
/// was received (see the module doc). Ends with the
/// work's result, or at once with the link's error, a protocol error, a
/// failed spool or shutdown (the work is dropped then, as it is when a
/// session ends at shutdown).
pub(super) async fn keep_while<T>(
    link: &mut Link,
    kept: &mut Kept,
    work: impl Future<Output = Result<T, TailError>>,
    tx: &SpoolTx,
    metrics: &Metrics,
    durable: &crate::base::durable::Durable,
    shutdown: &CancellationToken,
) -> Result<T, TailError> {
    let mut received = kept.acknowledged;
    let mut tick = tokio::time::interval(ACK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    let value = loop {
        let (used, getack) = complete_commands(&link.buf)?;
        if used > 0 {
            kept.push(&link.buf[..used], metrics)?;
            link.buf.advance(used);
            received += used as i64;
        }
        if getack {
            ack(link, durable.offset(received)).await?;
            kept.acknowledged = received;
        }
        tokio::select! {
            r = &mut work => break r?,
            r = link.fill(), if kept.has_room() => r?,
            _ = tick.tick() => {
                tx.check()?;
                ack(link, durable.offset(received)).await?;
                kept.acknowledged = received;
            }
            _ = shutdown.cancelled() => return Err(TailError::Shutdown),
        }
    };
    // The start of a command not complete yet follows what was kept.
    if !kept.is_empty() {
        kept.push(&link.buf, metrics)?;
        link.buf.clear();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(kept: &mut Kept, max: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        while !kept.is_empty() {
            kept.pop_into(&mut out, max).unwrap();
        }
        out.to_vec()
    }

    /// Bytes pushed past memory into the file, and pushed again while the
    /// file is read back, come out in the order they went in; the file is
    /// removed once read.
    #[test]
    fn order_is_kept_across_memory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resync-stream");
        let metrics = Metrics::default();
        let mut kept = Kept::new(path.clone(), 1 << 30, 0);
        let mut expected = Vec::new();
        let chunk = |i: usize| vec![(i % 251) as u8; 300 << 10];
        let mut i = 0;
        while kept.file.is_none() {
            kept.push(&chunk(i), &metrics).unwrap();
            expected.extend_from_slice(&chunk(i));
            i += 1;
        }
        assert!(path.exists());
        // Half of memory read back, then more pushed: it goes behind the
        // file's bytes.
        let mut out = BytesMut::new();
        for _ in 0..4 {
            kept.pop_into(&mut out, 1 << 20).unwrap();
        }
        for _ in 0..3 {
            kept.push(&chunk(i), &metrics).unwrap();
            expected.extend_from_slice(&chunk(i));
            i += 1;
        }
        out.extend_from_slice(&drain(&mut kept, 100_000));
        assert_eq!(out.len(), expected.len());
        assert!(out.to_vec() == expected, "bytes out of order");
        assert!(!path.exists(), "the file is removed once read");
        assert!(metrics.resync_stream_spilled_bytes.get() > 0);
        // Empty again: memory first.
        kept.push(b"abc", &metrics).unwrap();
        kept.push(b"de", &metrics).unwrap();
        assert!(kept.file.is_none());
        assert_eq!(kept.mem.len(), 1, "small pieces share a chunk");
        assert_eq!(drain(&mut kept, 2), b"abcde");
    }

    /// Without a disk part, memory is the limit: no more room once full.
    #[test]
    fn without_disk_memory_is_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let mut kept = Kept::new(dir.path().join("resync-stream"), 0, 0);
        while kept.has_room() {
            kept.push(&[1; 1 << 20], &metrics).unwrap();
        }
        assert!(kept.file.is_none());
        assert_eq!(drain(&mut kept, 1 << 20).len(), MEMORY_BYTES);
    }

    #[test]
    fn getack_is_found_among_complete_commands() {
        let mut buf = resp::encode_command(&[b"SET", b"k", b"v"]);
        let set = buf.len();
        assert_eq!(complete_commands(&buf).unwrap(), (set, false));
        buf.extend(resp::encode_command(&[b"REPLCONF", b"GETACK", b"*"]));
        let both = buf.len();
        buf.extend_from_slice(b"*2\r\n$4\r\nPING");
        assert_eq!(complete_commands(&buf).unwrap(), (both, true));
    }
}
