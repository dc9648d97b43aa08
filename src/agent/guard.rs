//! The guard: every [`INTERVAL`], removes floors and reached stamps a
//! client forged in any database, and sets the layout marker again if a
//! client changed it ([`crate::store::guard`]), so that a forged one holds
//! writes back for at most that long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;
use uhlc::HLC;

use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::store::guard::{latest_plausible, report};

/// How often the floors are checked: a few GETs per database.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Runs until shutdown.
pub async fn run(
    mut store: Store,
    clock: Arc<HLC>,
    max_skew: Duration,
    databases: u32,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        match store.repair_layout().await {
            Ok(repairs) => report(&repairs, &metrics),
            Err(e) => {
                warn!(error = %e, "checking geosync's layout marker failed; trying again later")
            }
        }
        let latest = latest_plausible(&clock, max_skew);
        for (i, db) in crate::store::user_dbs(databases).enumerate() {
            match store.repair_floors(db, &latest, i == 0).await {
                Ok(repairs) => report(&repairs, &metrics),
                Err(e) => {
                    warn!(db, error = %e, "checking geosync's floors failed; trying again later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
