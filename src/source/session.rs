//! One replication session: connect, handshake, `PSYNC`, a partial or a
//! full resync (its work done while the link is still read and
//! acknowledged, `kept.rs`), then the command stream.

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::error::TailError;
use super::evictions::Outlet;
use super::kept::{Kept, keep_while};
use super::link::{Link, handshake};
use super::recorded::report_recorded;
use super::side::Side;
use super::snapshot::{receive_snapshot, report_snapshot};
use super::stream::{StreamState, follow};
use super::{MasterChange, ResyncHook, TailerConfig};
use crate::base::event::TailEvent;
use crate::base::position::Position;
use crate::ops::metrics::Metrics;
use crate::source::keyspec::KeySpecTable;
use crate::stamp::spool::SpoolTx;

/// One replication session, from connect to the first error.
pub(super) async fn session(
    cfg: &TailerConfig,
    hook: &dyn ResyncHook,
    tx: &SpoolTx,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    let mut epoch = cfg.locator.epoch();
    epoch.mark_unchanged();
    let client = cfg.locator.master().await?;
    let mut side = Side::connect(&client).await?;
    // A failover may have brought a server this version cannot follow.
    let server = crate::store::version::check(&mut side).await?;
    debug!(server = %server.server, version = %server.version, "local redis");
    let specs = KeySpecTable::load(&mut side).await?;
    // Subscribed before the stream starts: what it delivers from this
    // session's first tick on is watched for evictions.
    let outlet = Outlet::for_session(cfg.evictions, &client, &mut side, cfg.databases).await?;
    let mut link = Link::connect(&client, cfg.locator.tls()).await?;
    handshake(cfg.announce_port, &client, &mut link).await?;
    metrics.redis_link_up.set(1);
    // Continue from the recorded position when there is one.
    let resume = crate::base::position::load(&cfg.data_dir);
    match &resume {
        Some(p) => {
            let next = (p.offset + 1).to_string();
            link.send(&[b"PSYNC", p.replid.as_bytes(), next.as_bytes()])
                .await?
        }
        None => link.send(&[b"PSYNC", b"?", b"-1"]).await?,
    }
    let reply = link.line().await?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let mut parts = reply.trim_start_matches('+').split(' ');
    // What the link delivers while the resync's work runs (kept.rs).
    let kept_path = cfg.data_dir.join("resync-stream");
    let (replid, offset, db, kept, done_at) = match (parts.next(), resume) {
        (Some("CONTINUE"), Some(p)) => {
            metrics.sync_partial_ok.inc();
            // A new id means the master was promoted; the offsets carry on.
            let replid = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| p.replid.clone());
            info!(%replid, offset = p.offset, "partial resync");
            // The writes made while the agent was away are in the stream
            // up to here: the resync is done once they are reported.
            let backlog_end = master_offset(&mut side).await?;
            let mut kept = Kept::new(kept_path, cfg.kept_disk_bytes, p.offset);
            let work = async {
                // The outbox did not survive a restart: re-ship what this
                // node stamped and no peer acknowledged.
                tx.send(TailEvent::SnapshotStart {
                    rewound: replid != p.replid,
                })
                .await
                .map_err(TailError::from)?;
                let recorded =
                    report_recorded(&mut side, cfg.databases, cfg.node_id, false, tx).await?;
                // A promoted replica continued the stream, but may lack the
                // old master's last writes, which this agent may have
                // shipped or applied already: peers' recorded state brings
                // them back.
                if replid != p.replid {
                    let change = MasterChange::Continued {
                        replid: replid.clone(),
                    };
                    if !hook.master_changed(change, shutdown).await {
                        return Err(TailError::Shutdown);
                    }
                }
                Ok(recorded)
            };
            let recorded = keep_while(
                &mut link,
                &mut kept,
                work,
                tx,
                metrics,
                &cfg.durable,
                shutdown,
            )
            .await?;
            info!(recorded, backlog_end, "own records reported");
            (replid, p.offset, p.db, kept, Some(backlog_end))
        }
        (Some("FULLRESYNC"), previous) => {
            let replid = parts.next().unwrap_or_default().to_string();
            let offset: i64 = parts
                .next()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| TailError::Protocol(format!("bad FULLRESYNC {reply:?}")))?;
            metrics.sync_full.inc();
            // Offsets of another stream: nothing of it is acknowledged yet.
            cfg.durable.restart();
            info!(%replid, offset, "full resync");
            let path = cfg.data_dir.join("sync.rdb");
            let diskless = receive_snapshot(&mut link, &path).await?;
            if diskless {
                // After a diskless transfer the master waits for our first ACK.
                let off = offset.to_string();
                link.send(&[b"REPLCONF", b"ACK", off.as_bytes()]).await?;
            }
            let mut kept = Kept::new(kept_path, cfg.kept_disk_bytes, offset);
            let work = async {
                // The same replication id as before: the same Redis, whose
                // backlog moved on; its history is the one stamped.
                let rewound = previous.as_ref().is_none_or(|p| p.replid != replid);
                tx.send(TailEvent::SnapshotStart { rewound })
                    .await
                    .map_err(TailError::from)?;
                let keys = report_snapshot(path, tx).await?;
                let recorded =
                    report_recorded(&mut side, cfg.databases, cfg.node_id, true, tx).await?;
                // A new replication id that could not continue the old
                // stream: the Redis restarted empty (it lost its data), or
                // another server became master and did not have everything
                // the old one had (what this agent shipped or applied there
                // may be gone). Peers' recorded state brings it back;
                // applying it only lets newer stamps win, so it is safe in
                // every case.
                if previous.is_some_and(|p| p.replid != replid) {
                    let change = MasterChange::Replaced {
                        replid: replid.clone(),
                        keys,
                        recorded,
                    };
                    if !hook.master_changed(change, shutdown).await {
                        return Err(TailError::Shutdown);
                    }
                }
                tx.send(TailEvent::SnapshotDone)
                    .await
                    .map_err(TailError::from)?;
                Ok((keys, recorded))
            };
            let (keys, recorded) = keep_while(
                &mut link,
                &mut kept,
                work,
                tx,
                metrics,
                &cfg.durable,
                shutdown,
            )
            .await?;
            info!(keys, recorded, diskless, "snapshot reported");
            (replid, offset, 0, kept, None)
        }
        _ => {
            return Err(TailError::Handshake {
                step: "PSYNC",
                reply,
            });
        }
    };
    let start = Position { replid, offset, db };
    tx.send(TailEvent::Position(start.clone()))
        .await
        .map_err(TailError::from)?;
    // After `PSYNC` was answered: the tick is in the stream followed.
    outlet.ask_tick();
    let state = StreamState {
        db: start.db,
        multi: None,
        specs,
        side,
        done_at,
        outlet,
        durable: cfg.durable.clone(),
    };
    follow(link, kept, start, state, tx, metrics, &mut epoch, shutdown).await
}

/// The master's replication offset, from `ROLE` (which the documented
/// least-privilege user may run; `INFO` it may not).
async fn master_offset(side: &mut Side) -> Result<i64, TailError> {
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(side).await?;
    // ["master", offset, replicas]; a replica (chained) ends with its offset.
    let at = match role.first() {
        Some(redis::Value::BulkString(r)) if r.as_slice() == b"master" => role.get(1),
        _ => role.last(),
    };
    match at {
        Some(redis::Value::Int(n)) => Ok(*n),
        _ => Err(TailError::Protocol(format!(
            "ROLE gave no replication offset: {role:?}"
        ))),
    }
}
