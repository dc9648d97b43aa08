//! The decisions no single stage makes: what to do when the local master
//! turned out to be another one.
//!
//! The source reports a [`MasterChange`] and waits; the supervisor decides
//! and the mesh carries it out ([`crate::mesh::rebuild`]): peers' recorded
//! state is pulled and applied with the usual stamp comparison, which only
//! lets newer stamps win, so it is safe in every case.
//!
//! - A promoted replica that continued the stream may lack the old master's
//!   last writes, which this agent may have shipped or applied already: one
//!   round over the peers brings them back.
//! - A full resync under a new replication id: the Redis restarted (it may
//!   have lost its data), or a server that did not have everything became
//!   master. An empty Redis (no keys, no metadata) must be rebuilt before it
//!   counts as synced, so the pull is retried until a peer answers; after a
//!   failover one round is enough to try.

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::mesh::rebuild::Rebuild;
use crate::source::{MasterChange, ResyncHook};
use crate::store::Store;
use crate::store::locator::Locator;

/// What the supervisor needs to rebuild the region from its peers.
pub struct Supervisor {
    /// The local master, which the rebuild writes into.
    pub locator: Locator,
    /// Who asks, and where.
    pub rebuild: Rebuild,
}

impl Supervisor {
    /// Pulls a peer's recorded state into the local Redis; with
    /// `until_done`, retries until a peer answers. False when shutdown
    /// stopped it.
    async fn rebuild(&self, until_done: bool, shutdown: &CancellationToken) -> bool {
        let mut store = Store::new(self.locator.clone());
        self.rebuild
            .run(&mut store, until_done, shutdown)
            .await
            .is_some()
            || !shutdown.is_cancelled()
    }
}

impl ResyncHook for Supervisor {
    fn master_changed<'a>(
        &'a self,
        change: MasterChange,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match change {
                MasterChange::Continued { replid } => {
                    warn!(%replid, "the local master changed; reconciling with a peer");
                    self.rebuild(false, shutdown).await
                }
                MasterChange::Replaced {
                    replid,
                    keys,
                    recorded,
                } => {
                    warn!(%replid, keys, recorded, "the local master changed and could not continue; rebuilding the region from a peer");
                    self.rebuild(keys == 0 && recorded == 0, shutdown).await
                }
            }
        })
    }
}
