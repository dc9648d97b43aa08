//! geosync: active-active geo-replication for Redis.
//!
//! One agent runs beside each regional Redis. A change flows through the
//! modules in this order:
//!
//! ```text
//!  clients ─► local Redis ─PSYNC─► tailer ─dirty keys─► stamper ─► outbox ─gRPC─► peer's receiver ─► applier ─► peer's Redis
//!             (resp, rdb,          (keyspec)           (store: stamp   (per-peer     (transport::     (store: apply
//!              tailer)                                  script)         cursors)      server)          script)
//! ```
//!
//! - [`tailer`] follows the local Redis as a replica ([`resp`], [`rdb`]) and
//!   names the keys each write touched ([`keyspec`]).
//! - [`stamper`] stamps batches of dirty keys with the agent's `uhlc` clock
//!   ([`stamp`]) inside Redis, reading each key's state in the same script
//!   ([`store`]); the result is a [`change::Change`] per key. Keys of module
//!   data types are skipped, counted and logged ([`module_keys`]).
//! - [`outbox`] holds stamped batches until every peer acknowledged them;
//!   [`transport`] streams them over gRPC.
//! - [`applier`] applies peers' batches with last-writer-wins.
//! - [`admin`] serves health, readiness and [`metrics`].
//! - [`locator`] finds the local master (directly or through Sentinel);
//!   [`tls`] carries every connection to it over TLS when `--redis` is
//!   `rediss://`.
//!
//! [`run`] is the whole agent; the binary and the tests both call it.

pub mod acklog;
pub mod admin;
pub mod applier;
pub mod backoff;
pub mod change;
pub mod config;
pub mod keyspec;
pub mod large;
pub mod locator;
pub mod metrics;
pub mod module_keys;
pub mod outbox;
pub mod position;
pub mod rdb;
pub mod rebuild;
pub mod resp;
pub mod spool;
pub mod stamp;
pub mod stamper;
pub mod state;
pub mod store;
pub mod tailer;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::state::Readiness;
use crate::store::Store;

/// Errors that stop the agent at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory is unusable or belongs to another node.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// The directory.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The local Redis cannot be reached or used.
    #[error("local redis {url}: {message}")]
    Redis {
        /// Its URL, without password.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A listen address cannot be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Checks the data directory and records the node id in it, so that a data
/// directory is never reused by another node by mistake.
fn prepare_data_dir(config: &Config) -> Result<(), StartError> {
    let path = config.data_dir.display().to_string();
    let err = |message: String| StartError::DataDir {
        path: path.clone(),
        message,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    let id_file = config.data_dir.join("node-id");
    match std::fs::read_to_string(&id_file) {
        Ok(s) if s.trim() == config.node_id.to_string() => Ok(()),
        Ok(s) => Err(err(format!(
            "it belongs to node {}, not node {}; use another --data-dir",
            s.trim(),
            config.node_id
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&id_file, format!("{}\n", config.node_id))
                .map_err(|e| err(format!("cannot write {}: {e}", id_file.display())))
        }
        Err(e) => Err(err(format!("cannot read {}: {e}", id_file.display()))),
    }
}

/// `url` without its password, for messages and logs.
pub(crate) fn redacted(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => match u.authority() {
            Some(a) if a.as_str().contains('@') => {
                url.replace(a.as_str(), a.as_str().rsplit('@').next().unwrap_or(""))
            }
            _ => url.to_string(),
        },
        Err(_) => "(unparsable url)".into(),
    }
}

/// Writes the agent's progress to the data directory when it changed, and
/// once more at shutdown: the peers' acknowledged stamps and the
/// replication position up to which everything has been stamped.
async fn persist_progress(
    outbox: Arc<Outbox>,
    mut position: tokio::sync::watch::Receiver<Option<position::Position>>,
    data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut last_acks = outbox.acked_stamps();
    let mut last_position = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        // Positions are written as they come (about once a second, and at
        // once after a full sync, so a restart soon after it can resume);
        // acks once a second.
        let stop = tokio::select! {
            _ = tick.tick() => false,
            r = position.changed() => r.is_err(),
            _ = shutdown.cancelled() => true,
        };
        let acks = outbox.acked_stamps();
        if acks != last_acks {
            match acklog::save(&data_dir, &acks) {
                Ok(()) => last_acks = acks,
                Err(e) => {
                    error!(error = %e, "cannot record peers' acknowledgements; after a crash more will be re-shipped")
                }
            }
        }
        let p = position.borrow_and_update().clone();
        if p != last_position
            && let Some(pos) = &p
        {
            match position::save(&data_dir, pos) {
                Ok(()) => last_position = p,
                Err(e) => {
                    error!(error = %e, "cannot record the replication position; a restart will do a full resync")
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Runs the agent until `shutdown` is cancelled or a stage fails fatally.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    prepare_data_dir(&config)?;
    store::set_max_key_elements(config.max_key_elements);
    let url = redacted(&config.redis_url);
    let redis_err = |message: String| StartError::Redis {
        url: url.clone(),
        message,
    };
    let mut locator = locator::Locator::new(
        &config.redis_url,
        &config.sentinels,
        config.master_name.as_deref(),
    );
    // Names what the connection was checked against when it fails.
    let mut over = String::new();
    let tls_hint = |e: &dyn std::fmt::Display| match &config.redis_tls {
        Some(_) => tls::hint(&e.to_string()),
        None => "",
    };
    if let Some(tls) = &config.redis_tls {
        tls::install_crypto_provider();
        locator = locator.with_tls(tls.clone(), config.sentinel_tls);
        over = format!(" over TLS (server checked against {})", tls.trust());
    }
    let client = locator
        .master()
        .await
        .map_err(|e| redis_err(format!("cannot find the master{over}: {e}{}", tls_hint(&e))))?;
    let mut conn = locator::connect(&client)
        .await
        .map_err(|e| redis_err(format!("cannot connect{over}: {e}{}", tls_hint(&e))))?;
    let databases: (String, u32) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_err(format!("CONFIG GET databases: {e}")))?;
    let databases = databases.1;
    drop(conn);

    let metrics = Arc::new(Metrics::new());
    let clock = stamp::new_clock(config.node_id, config.max_clock_skew).expect("node id validated");
    let ready = Arc::new(Readiness::new(&config.peers));
    let acked = acklog::load(&config.data_dir).map_err(|e| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        message: format!(
            "cannot read {}: {e}",
            acklog::path(&config.data_dir).display()
        ),
    })?;
    let outbox = Arc::new(Outbox::new(
        &config.peers,
        config.outbox_batches,
        config.outbox_bytes,
        acked,
        metrics.clone(),
    ));
    let tracker = TaskTracker::new();
    let token = shutdown.child_token();

    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "--listen",
            addr: config.listen,
            source,
        })?;
    let admin = match config.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "--admin",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };

    tracker.spawn(locator.clone().watch_switches(token.clone()));
    // Tailer → stamper.
    let spool_dir = config.data_dir.join("spool");
    let (tail_tx, tail_rx) = spool::channel(spool_dir.clone(), config.spool, metrics.clone())
        .map_err(|e| StartError::DataDir {
            path: spool_dir.display().to_string(),
            message: format!("cannot prepare the spool: {e}"),
        })?;
    tracker.spawn(tailer::run(
        tailer::TailerConfig {
            locator: locator.clone(),
            announce_port: config.listen.port(),
            data_dir: config.data_dir.clone(),
            databases,
            node_id: config.node_id,
            peers: config.peers.clone(),
            mesh: config.mesh.clone(),
            clock: clock.clone(),
        },
        tail_tx,
        metrics.clone(),
        token.clone(),
    ));
    let (position_tx, position_rx) = tokio::sync::watch::channel(None);
    let stamper = stamper::Stamper {
        store: Store::new(locator.clone()),
        clock: clock.clone(),
        outbox: outbox.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        batch_keys: config.batch_keys,
        databases,
        node_id: config.node_id,
        peers: config.peers.clone(),
        reship: None,
        reshipped_large: Default::default(),
        position: position_tx,
        module_keys: Default::default(),
        too_large_logged: Default::default(),
    };
    tracker.spawn(stamper.run(tail_rx, token.clone()));

    // Outbox → peers.
    let me = transport::client::Identity {
        locator: locator.clone(),
        databases,
        node_id: config.node_id,
        mesh: config.mesh.clone(),
        session: rand::random(),
    };
    for peer in &config.peers {
        tracker.spawn(transport::client::run(
            peer.clone(),
            me.clone(),
            outbox.clone(),
            metrics.clone(),
            ready.clone(),
            token.clone(),
        ));
    }

    // Peers → applier.
    let (apply_tx, apply_rx) = mpsc::channel(16);
    tracker.spawn(applier::run(
        Store::new(locator.clone()),
        apply_rx,
        ready.clone(),
        token.clone(),
    ));
    let receiver = transport::server::Receiver::new(
        locator.clone(),
        config.node_id,
        config.mesh.clone(),
        databases,
        clock.clone(),
        apply_tx,
        metrics.clone(),
    );
    let service = transport::pb::replication_server::ReplicationServer::new(receiver)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let grpc_token = token.clone();
    let grpc_task = tracker.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                grpc_token.cancelled_owned(),
            )
            .await
    });
    tracker.spawn(persist_progress(
        outbox.clone(),
        position_rx,
        config.data_dir.clone(),
        token.clone(),
    ));
    if let Some(listener) = admin {
        tracker.spawn(admin::serve(
            listener,
            metrics.clone(),
            ready.clone(),
            token.clone(),
        ));
    }
    tracker.close();
    info!(node_id = config.node_id, listen = %config.listen, peers = config.peers.len(), redis = %url, "geosync started");

    let mut grpc_task = grpc_task;
    let result = tokio::select! {
        _ = token.cancelled() => Ok(()),
        r = &mut grpc_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                error!(error = %e, "grpc server failed");
                Err(StartError::Grpc(e))
            }
            Err(e) => {
                error!(error = %e, "grpc server task failed");
                Ok(())
            }
        },
    };
    token.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        error!("some tasks did not stop within 10 s");
    }
    info!("geosync stopped");
    result
}
