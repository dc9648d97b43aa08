//! The command stream after a resync: every command's written keys
//! reported (a transaction's together), the position reported as it moves,
//! and the offset acknowledged every second and on `REPLCONF GETACK`. What
//! was received while the resync's work ran (`kept.rs`) is handled first,
//! as if it had been read live.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::error::TailError;
use super::evictions::{Outlet, TICK_CHANNEL};
use super::kept::{ACK_EVERY, Kept};
use super::link::{Link, READ_CHUNK};
use super::resp;
use super::side::Side;
use crate::base::event::TailEvent;
use crate::base::position::Position;
use crate::ops::metrics::Metrics;
use crate::source::keyspec::{KeyLookup, KeySpecError, KeySpecTable, written_keys_from_server};
use crate::stamp::spool::SpoolTx;
use crate::store::locator::is_connection_error;
use crate::store::{self, is_reserved};

/// An open MULTI block of the stream.
#[derive(Default)]
pub(super) struct Multi {
    /// Keys written so far.
    keys: Vec<(u32, Bytes)>,
    /// Of those, keys a `DEL` or `UNLINK` wrote, and keys other commands
    /// wrote (an eviction sends a `DEL`; decision 016).
    deleted: Vec<(u32, Bytes)>,
    written: std::collections::HashSet<(u32, Bytes)>,
    /// The block is geosync's own apply script (its first write is the marker).
    ours: bool,
    /// No command of the block has been seen yet.
    seen_first: bool,
}

/// State of the command stream between commands, and what reading it needs.
pub(super) struct StreamState {
    pub(super) db: u32,
    pub(super) multi: Option<Multi>,
    /// The server's key specs.
    pub(super) specs: KeySpecTable,
    /// The side connection, for `COMMAND GETKEYSANDFLAGS`.
    pub(super) side: Side,
    /// After a partial resync, the master's offset when it continued the
    /// stream: the backlog up to it holds the writes made while the agent
    /// was away, and the resync is done (`SnapshotDone`, which lets the
    /// applier start) only once they are reported, so that they are
    /// stamped before any older change from a peer is applied over them.
    pub(super) done_at: Option<i64>,
    /// Where the events go: the spool, through the eviction watch when it
    /// runs (decision 016).
    pub(super) outlet: Outlet,
    /// The offset acknowledged to Redis (decision 017).
    pub(super) durable: std::sync::Arc<crate::base::durable::Durable>,
}

/// Follows the command stream from `start`: the bytes `kept` while the
/// resync's work ran first, then the link.
#[allow(clippy::too_many_arguments)]
pub(super) async fn follow(
    mut link: Link,
    mut kept: Kept,
    start: Position,
    mut state: StreamState,
    tx: &SpoolTx,
    metrics: &Metrics,
    epoch: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    let Position {
        replid, mut offset, ..
    } = start;
    let mut reported = offset;
    let mut reported_at = Instant::now();
    let mut durable = state.durable.watch();
    // The offset last acknowledged: never less (the master keeps the
    // largest it was told anyway), and a GETACK is answered with it.
    let mut acked = state.durable.offset(kept.acknowledged);
    let mut ack = tokio::time::interval(ACK_EVERY);
    ack.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the link delivers while kept bytes are still being handled.
    let mut incoming = BytesMut::new();
    loop {
        // Handle every complete command in the buffer.
        while let Some((frame, used)) =
            resp::parse(&link.buf).map_err(|e| TailError::Protocol(e.to_string()))?
        {
            link.buf.advance(used);
            let argv = frame.into_command().ok_or_else(|| {
                TailError::Protocol("command is not an array of bulk strings".into())
            })?;
            let getack = handle(&argv, &mut state, tx, metrics).await?;
            offset += used as i64;
            metrics.repl_offset.set(offset);
            // A GETACK kept during the resync's work was answered then.
            if getack && offset > kept.acknowledged {
                acked = acked.max(state.durable.offset(offset));
                send_ack(&mut link, acked).await?;
                // A client waits (`WAIT`): the position goes to the
                // stamper now, not within a tenth of a second.
                reported_at = Instant::now() - Duration::from_secs(1);
            }
        }
        if let Some(at) = state.done_at
            && offset >= at
            && state.multi.is_none()
        {
            state.outlet.send(TailEvent::SnapshotDone, tx).await?;
            state.done_at = None;
        }
        // Report the position (between transactions, at most ten times a
        // second) so that a restart resumes close to where this one stopped.
        if offset != reported
            && state.multi.is_none()
            && reported_at.elapsed() >= Duration::from_millis(100)
        {
            let p = Position {
                replid: replid.clone(),
                offset,
                db: state.db,
            };
            state.outlet.send(TailEvent::Position(p), tx).await?;
            reported = offset;
            reported_at = Instant::now();
        }
        if !kept.is_empty() {
            // Catching up with the bytes kept during the resync's work, in
            // order, a chunk at a time; the link is still read (behind
            // them, without waiting), acknowledged and watched.
            if kept.has_room()
                && let Some(r) = link.read_now(&mut incoming)
            {
                r?;
                kept.push(&incoming, metrics)?;
                incoming.clear();
            }
            kept.pop_into(&mut link.buf, READ_CHUNK)?;
            if ack.tick().now_or_never().is_some() {
                tx.check()?;
                state.outlet.check()?;
                acked = acked.max(state.durable.offset(offset));
                send_ack(&mut link, acked).await?;
            }
            if shutdown.is_cancelled() {
                return Err(TailError::Shutdown);
            }
            if epoch.has_changed().unwrap_or(true) {
                return Err(TailError::MasterSwitched);
            }
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            r = link.fill() => r?,
            _ = ack.tick() => {
                tx.check()?;
                state.outlet.check()?;
                acked = acked.max(state.durable.offset(offset));
                send_ack(&mut link, acked).await?;
            }
            // Peers now hold more (`--ack-after`): say so at once, for
            // the clients waiting in `WAIT`.
            Ok(()) = durable.changed() => {
                let now = state.durable.offset(offset);
                if now > acked {
                    acked = now;
                    send_ack(&mut link, acked).await?;
                }
            }
            _ = epoch.changed() => return Err(TailError::MasterSwitched),
            _ = shutdown.cancelled() => return Err(TailError::Shutdown),
        }
    }
}

async fn send_ack(link: &mut Link, offset: i64) -> Result<(), TailError> {
    let off = offset.to_string();
    link.send(&[b"REPLCONF", b"ACK", off.as_bytes()]).await
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// Handles one command; returns true when the master asked for an ACK.
async fn handle(
    argv: &[Bytes],
    state: &mut StreamState,
    tx: &SpoolTx,
    metrics: &Metrics,
) -> Result<bool, TailError> {
    let Some(name) = argv.first().map(|n| lower(n)) else {
        return Ok(false);
    };
    match name.as_str() {
        "ping" => return Ok(false),
        "replconf" => {
            return Ok(argv.get(1).map(|a| lower(a)) == Some("getack".into()));
        }
        "select" => {
            state.db = argv
                .get(1)
                .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
                .ok_or_else(|| TailError::Protocol("bad SELECT".into()))?;
            return Ok(false);
        }
        "publish"
            if argv
                .get(1)
                .is_some_and(|c| c.as_ref() == TICK_CHANNEL.as_bytes()) =>
        {
            let payload = argv.get(2).cloned().unwrap_or_default();
            state.outlet.tick(&payload, tx, metrics).await?;
            return Ok(false);
        }
        "multi" => {
            state.multi = Some(Multi::default());
            return Ok(false);
        }
        "exec" => {
            if let Some(m) = state.multi.take()
                && !m.ours
                && !m.keys.is_empty()
            {
                let deleted = m
                    .deleted
                    .into_iter()
                    .filter(|k| !m.written.contains(k))
                    .collect();
                state
                    .outlet
                    .send_with(TailEvent::Dirty(m.keys), deleted, tx)
                    .await?;
            }
            return Ok(false);
        }
        "flushdb" | "flushall" => {
            // Keys written earlier in the same transaction go first.
            if let Some(m) = &mut state.multi
                && !m.ours
                && !m.keys.is_empty()
            {
                let keys = std::mem::take(&mut m.keys);
                state.outlet.send(TailEvent::Dirty(keys), tx).await?;
            }
            let ours = state.multi.as_ref().is_some_and(|m| m.ours);
            if name == "flushdb" && state.db == store::metadata_db() {
                metrics.reserved_key_writes.inc();
                error!(
                    db = state.db,
                    "a client flushed geosync's metadata database (--metadata-db): every record is gone; this region is repaired from its peers by anti-entropy"
                );
            } else if !ours {
                let db = (name == "flushdb").then_some(state.db);
                state.outlet.send(TailEvent::Flush(db), tx).await?;
            }
            return Ok(false);
        }
        "swapdb" => {
            metrics
                .unsupported_commands
                .get_or_create(&Metrics::reason("swapdb"))
                .inc();
            warn!(
                command = "SWAPDB",
                "SWAPDB is not replicated: the swapped databases diverge from the other regions until rewritten (see docs/decisions/004-swapdb.md)"
            );
            return Ok(false);
        }
        _ => {}
    }
    let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_ref()).collect();
    let mut keys: Vec<(u32, Bytes)> = match state.specs.written_keys(&refs) {
        KeyLookup::Keys(idx) => idx
            .into_iter()
            .filter_map(|i| argv.get(i))
            .map(|k| (state.db, k.clone()))
            .collect(),
        KeyLookup::AskServer | KeyLookup::UnknownCommand => {
            match written_keys_from_server(&mut state.side, &refs).await {
                Ok(keys) => keys
                    .into_iter()
                    .map(|k| (state.db, Bytes::from(k)))
                    .collect(),
                // The side connection failed twice (`side.rs`): end the
                // session before this command counts as read, so that the
                // next one reads it again (the position is reported only
                // past commands handled).
                Err(KeySpecError::Redis(e)) if is_connection_error(&e) => {
                    return Err(TailError::SideConnection {
                        command: name,
                        source: e,
                    });
                }
                Err(e) => {
                    metrics
                        .unsupported_commands
                        .get_or_create(&Metrics::reason(&name))
                        .inc();
                    error!(command = %name, error = %e, "cannot tell which keys a replicated command wrote; its change is not shipped");
                    Vec::new()
                }
            }
        }
    };
    // MOVE and COPY ... DB n write the key into another database.
    match name.as_str() {
        "move" => {
            if let (Some(k), Some(db)) = (
                argv.get(1),
                argv.get(2)
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok()),
            ) {
                keys.push((db, k.clone()));
            }
        }
        "copy" => {
            if let Some(pos) = argv.iter().position(|a| a.eq_ignore_ascii_case(b"db"))
                && let (Some(dst), Some(db)) = (
                    argv.get(2),
                    argv.get(pos + 1)
                        .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok()),
                )
            {
                keys.retain(|(_, k)| k != dst);
                keys.push((db, dst.clone()));
            }
        }
        _ => {}
    }
    // A `DEL`/`UNLINK` may be Redis's eviction (decision 016).
    let deletes = name == "del" || name == "unlink";
    if let Some(m) = &mut state.multi {
        if !m.seen_first {
            m.seen_first = true;
            m.ours = keys.iter().any(|(db, k)| {
                *db == store::metadata_db() && k.as_ref() == store::APPLY_MARKER_KEY.as_bytes()
            });
        }
        if !m.ours {
            let keys = filter_reserved(keys, &name, metrics);
            if deletes {
                m.deleted.extend(keys.iter().cloned());
            } else {
                m.written.extend(keys.iter().cloned());
            }
            m.keys.extend(keys);
        }
        return Ok(false);
    }
    let keys = filter_reserved(keys, &name, metrics);
    if !keys.is_empty() {
        let deleted = if deletes { keys.clone() } else { Vec::new() };
        state
            .outlet
            .send_with(TailEvent::Dirty(keys), deleted, tx)
            .await?;
    }
    Ok(false)
}

/// The keys of `keys` that are users' to replicate: not geosync's own,
/// and none of the metadata database, whose keys are all geosync's. A
/// client's write to a reserved key or into the metadata database is
/// counted and logged.
fn filter_reserved(keys: Vec<(u32, Bytes)>, command: &str, metrics: &Metrics) -> Vec<(u32, Bytes)> {
    let meta = store::metadata_db();
    keys.into_iter()
        .filter(|(db, k)| {
            if *db != meta && !is_reserved(k) {
                return true;
            }
            if store::is_own_key(*db, k) {
                debug!(key = %String::from_utf8_lossy(k), "own key");
                return false;
            }
            metrics.reserved_key_writes.inc();
            let what = if *db == meta {
                "a client wrote into geosync's metadata database (--metadata-db); it is not replicated, and that database must hold geosync's keys only"
            } else {
                "a client wrote a key under the reserved __geosync: prefix; it is not replicated"
            };
            warn!(db, key = %String::from_utf8_lossy(k), command, "{what}");
            false
        })
        .collect()
}
