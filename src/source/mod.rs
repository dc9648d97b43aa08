//! Stage 1: the source. The tailer follows the local Redis as a replica
//! and reports which keys each write touched.
//!
//! One session is: connect, `AUTH`, `REPLCONF listening-port`, `REPLCONF capa
//! eof capa psync2`, `PSYNC`, receive the RDB snapshot (length-prefixed or
//! diskless with an EOF marker) into the data directory, hand every key in it
//! to the stamper, then follow the command stream, acknowledging the offset
//! every second and on `REPLCONF GETACK`. While a resync's work runs (the
//! snapshot's keys, this node's records, a rebuild from a peer) the stream
//! is already read, kept in order and acknowledged, so the master does not
//! drop the agent for it. A session ends with a reason; the tailer
//! reconnects with capped, jittered backoff.
//!
//! What it emits is [`TailEvent`](crate::base::event::TailEvent)s: sets of
//! dirty keys, never values. The stamper reads the values atomically inside
//! Redis (DESIGN.md, "Why ship state, and why stamp inside Redis").
//!
//! What to do when the master turned out to be another one (a promoted
//! replica, a Redis restarted empty) is not the source's decision: it tells
//! a [`ResyncHook`] (the agent's supervisor) and waits for it before it
//! reports the resync done.
//!
//! Files, in the order a session uses them: `link.rs` (socket and
//! handshake), `session.rs` (`PSYNC`), `side.rs` (the session's other
//! connection, which connects again on its own once), `snapshot.rs` and
//! `recorded.rs` (a resync's keys), `kept.rs` (the stream read meanwhile),
//! `stream.rs` (the command stream, read with [`resp`]).

mod error;
pub mod evictions;
mod kept;
pub mod keyspec;
mod link;
pub mod rdb;
mod recorded;
pub mod resp;
mod session;
mod side;
mod snapshot;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use error::TailError;

use crate::base::backoff::Backoff;
use crate::ops::metrics::Metrics;
use crate::stamp::spool::SpoolTx;
use crate::store::locator::Locator;

/// Settings the tailer needs.
pub struct TailerConfig {
    /// Where the local master is.
    pub locator: Locator,
    /// Port announced with `REPLCONF listening-port`.
    pub announce_port: u16,
    /// Where the snapshot is written while it is parsed.
    pub data_dir: PathBuf,
    /// Number of databases of the local Redis.
    pub databases: u32,
    /// This region's node id (its own records are re-shipped after a
    /// resync).
    pub node_id: u32,
    /// Most bytes of the command stream kept on disk while a resync's work
    /// runs (`<data-dir>/resync-stream`); 0 keeps only the memory part.
    pub kept_disk_bytes: u64,
    /// Whether Redis's evictions stay in their region.
    pub evictions: Evictions,
    /// The offset acknowledged to Redis (`--ack-after`, decision 017).
    pub durable: std::sync::Arc<crate::base::durable::Durable>,
}

/// What a key Redis evicts for memory becomes in the other regions
/// (`--evictions`; decision 016).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Evictions {
    /// Kept there: the evicting region loses its copy only.
    #[default]
    Local,
    /// Deleted there too, as a client's delete is.
    Global,
}

/// A resync that met another master than the one followed before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterChange {
    /// `PSYNC` continued the stream under a new replication id: a promoted
    /// replica, which may lack the old master's last writes.
    Continued {
        /// The new replication id.
        replid: String,
    },
    /// A full resync under a new replication id that could not continue the
    /// old stream: the Redis restarted (perhaps empty), or a server that did
    /// not have everything the old one had became master.
    Replaced {
        /// The new replication id.
        replid: String,
        /// Keys in the snapshot.
        keys: u64,
        /// Keys the metadata records.
        recorded: u64,
    },
}

/// Acts on a [`MasterChange`] before the source reports the resync done
/// (the agent's supervisor: it rebuilds the region from peers).
pub trait ResyncHook: Send + Sync {
    /// Handles the change; false when shutdown interrupted it.
    fn master_changed<'a>(
        &'a self,
        change: MasterChange,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, bool>;
}

/// Runs replication sessions until shutdown, or until one ends with an
/// error another session cannot mend ([`TailError::is_fatal`]: a server
/// this version does not support), which it returns.
pub async fn run(
    cfg: TailerConfig,
    hook: Arc<dyn ResyncHook>,
    tx: SpoolTx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), TailError> {
    let mut backoff = Backoff::with(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session::session(&cfg, hook.as_ref(), &tx, &metrics, &shutdown) => r,
            _ = shutdown.cancelled() => Err(TailError::Shutdown),
        };
        match result {
            Err(TailError::Shutdown) | Err(TailError::StamperGone) => {
                info!("tailer stopped");
                return Ok(());
            }
            Err(e) if e.is_fatal() => {
                error!(error = %e, "the local redis cannot be replicated from; stopping");
                return Err(e);
            }
            // A snapshot this version cannot read fails the same way on
            // every retry: say so loudly, not as a passing network hiccup.
            Err(e @ TailError::Rdb(_)) => error!(
                error = %e,
                "the master's snapshot cannot be read; retrying, but the agent cannot sync until this is fixed (a newer geosync, or a server version it supports)"
            ),
            Err(e) => warn!(error = %e, "replication session ended"),
            Ok(()) => warn!("replication session ended"),
        }
        metrics.replication_sessions_ended.inc();
        metrics.redis_link_up.set(0);
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset(Duration::from_millis(100));
        }
        if !backoff.wait(&shutdown).await {
            return Ok(());
        }
    }
}
