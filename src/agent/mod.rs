//! The agent as a whole: settings in ([`config`]), every stage built and
//! wired by [`run`], the decisions no single stage can make taken by the
//! [`supervisor`], progress kept in the data directory
//! (`data_dir.rs`).

pub mod config;
mod data_dir;
pub mod guard;
pub mod membership;
pub mod supervisor;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::config::Config;
use crate::apply;
use crate::base::hlc;
use crate::mesh::outbox::Outbox;
use crate::mesh::security::PeerAuth;
use crate::mesh::{self, acklog};
use crate::ops::admin;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::source;
use crate::stamp::{spool, stamper};
use crate::store::version::{self, VersionError};
use crate::store::{self, Store, locator, tls};

/// Errors that stop the agent: at start, or later when a stage cannot go
/// on.
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
    /// Replication from the local Redis cannot go on (a failover brought a
    /// server this version does not support).
    #[error("local redis {url}: {source}")]
    Source {
        /// Its URL, without password.
        url: String,
        /// Why the tailer stopped.
        source: source::TailError,
    },
}

/// Refuses a `maxmemory-policy` under which Redis may evict geosync's own
/// keys: the `allkeys-*` policies evict any key, metadata buckets included,
/// which loses tombstones (deleted keys come back) and records. The
/// `volatile-*` policies evict only keys with a TTL, and geosync's keys
/// have none.
pub fn check_eviction_policy(policy: &str) -> Result<(), String> {
    if policy.starts_with("allkeys-") {
        return Err(format!(
            "maxmemory-policy is {policy}, which may evict geosync's metadata (its records and \
             tombstones) like any key, so deleted keys could come back: set a volatile-* policy \
             (for example `CONFIG SET maxmemory-policy volatile-lru`: only keys with a TTL are \
             evicted, and geosync's have none) or noeviction"
        ));
    }
    Ok(())
}

/// How long a shutdown waits for connected peers to acknowledge what was
/// stamped before it closes the links.
pub const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the agent until `shutdown` is cancelled (gracefully: see
/// [`SHUTDOWN_DRAIN`]) or a stage fails fatally. With `reload`, SIGHUP
/// reads the configuration again and changes the peers to its list
/// ([`membership`]).
pub async fn run(
    config: Config,
    reload: Option<membership::Reload>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    // SIGHUP is taken from the start (its default would end the process);
    // reloads begin once everything runs.
    let hangup = match &reload {
        Some(_) => match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => Some(h),
            Err(e) => {
                error!(error = %e, "cannot handle SIGHUP; the peers cannot be reloaded");
                None
            }
        },
        None => None,
    };
    data_dir::claim(&config.data_dir, config.node_id).map_err(|message| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        message,
    })?;
    store::set_max_key_elements(config.max_key_elements);
    store::set_metadata_db(config.metadata_db);
    // A value that fits no peer message is refused before it is recorded
    // (less room for the key and the change's other fields).
    store::set_max_value_bytes(
        mesh::wire::max_payload(config.peer_max_message).saturating_sub(8 << 10) as u64,
    );
    let url = config::redacted(&config.redis_url);
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
    // The first reply (where a server that refuses the client after the
    // TLS handshake shows it): which server this is, and whether this
    // version supports it.
    let first_reply_hint = |e: &dyn std::fmt::Display| match &config.redis_tls {
        Some(t) => t.first_reply_hint(&e.to_string()),
        None => "",
    };
    let server = version::check(&mut conn).await.map_err(|e| match e {
        VersionError::Redis { .. } if !e.is_refusal() => {
            redis_err(format!("cannot connect{over}: {e}{}", first_reply_hint(&e)))
        }
        e => {
            error!(error = %e, "the local redis is not a server geosync supports; stopping");
            redis_err(e.to_string())
        }
    })?;
    info!(server = %server.server, version = %server.version, "local redis");
    let databases: (String, u32) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async(&mut conn)
        .await
        .map_err(|e| {
            redis_err(format!(
                "cannot connect{over}: CONFIG GET databases: {e}{}",
                first_reply_hint(&e)
            ))
        })?;
    let databases = databases.1;
    let policy: (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn)
        .await
        .map_err(|e| redis_err(format!("CONFIG GET maxmemory-policy: {e}")))?;
    check_eviction_policy(&policy.1).map_err(redis_err)?;
    match store::layout::claim_layout(&mut conn, databases).await {
        Ok(None) => {}
        Ok(Some(message)) => {
            error!(%message, "geosync's metadata cannot be kept in the local redis as found; stopping");
            return Err(redis_err(message));
        }
        Err(e) => {
            let message = format!("reading {}: {e}", store::layout::LAYOUT_KEY);
            return Err(redis_err(message));
        }
    }
    let evictable = config.evictions == source::Evictions::Local
        && source::evictions::can_evict(&mut conn)
            .await
            .map_err(|e| redis_err(format!("reading the memory settings: {e}")))?;
    if evictable {
        source::evictions::ensure_notifications(&mut conn)
            .await
            .map_err(redis_err)?;
    }
    drop(conn);

    let metrics = Arc::new(Metrics::new());
    metrics.label_peers(&config.peers, &config.peer_ids);
    // The peer list as reloads change it (membership below).
    let (peers_tx, peers_rx) = tokio::sync::watch::channel(config.peers.clone());
    let clock = hlc::new_clock(config.node_id, config.max_clock_skew).expect("node id validated");
    let ready = Arc::new(Readiness::new(&config.peers));
    let acked = acklog::load(&config.data_dir).map_err(|e| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        message: format!(
            "cannot read {}: {e}",
            acklog::path(&config.data_dir).display()
        ),
    })?;
    let durable = Arc::new(crate::base::durable::Durable::new(config.ack_after));
    let outbox = Arc::new(
        Outbox::new(
            &config.peers,
            config.outbox_batches,
            config.outbox_bytes,
            acked,
            metrics.clone(),
        )
        .with_max_batch_bytes(mesh::wire::max_payload(config.peer_max_message))
        .with_durable(durable.clone()),
    );
    let tracker = TaskTracker::new();
    // Every task stops on `token`. At shutdown the intake (reading the
    // local Redis, stamping) stops first, and the links to peers stay up
    // until they acknowledged what was stamped (see the end of this
    // function); a fatal error stops everything at once.
    let token = CancellationToken::new();
    let intake = token.child_token();

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
    let supervisor = supervisor::Supervisor {
        locator: locator.clone(),
        rebuild: mesh::rebuild::Rebuild {
            peers: peers_rx.clone(),
            node_id: config.node_id,
            mesh: config.mesh.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            auth: config.peer_auth.clone(),
            max_message: config.peer_max_message,
        },
    };
    let tailer = tracker.spawn(source::run(
        source::TailerConfig {
            locator: locator.clone(),
            announce_port: config.listen.port(),
            data_dir: config.data_dir.clone(),
            databases,
            node_id: config.node_id,
            kept_disk_bytes: config.spool.disk_bytes,
            evictions: config.evictions,
            durable: durable.clone(),
        },
        Arc::new(supervisor),
        tail_tx,
        metrics.clone(),
        intake.clone(),
    ));
    let (position_tx, position_rx) = tokio::sync::watch::channel(None);
    let stamper = stamper::Stamper {
        store: Store::new(locator.clone()),
        clock: clock.clone(),
        outbox: outbox.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        batch_keys: config.batch_keys,
        coalesce_keys: config.coalesce_keys,
        databases,
        node_id: config.node_id,
        peers: peers_rx.clone(),
        key_filter: config.key_filter.clone(),
        reship: None,
        reshipped_large: Default::default(),
        snapshots_done: false,
        snapshot_keys: Default::default(),
        evictable,
        position: position_tx,
        module_keys: Default::default(),
        too_large_logged: Default::default(),
    };
    tracker.spawn(stamper.run(tail_rx, intake.clone()));
    // The lag gauges age while nothing is stamped or acknowledged (a peer
    // that went away keeps lagging more).
    {
        let outbox = outbox.clone();
        let token = token.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => outbox.update_lag(),
                    _ = token.cancelled() => return,
                }
            }
        });
    }

    // Outbox → peers.
    let me = mesh::client::Identity {
        locator: locator.clone(),
        databases,
        node_id: config.node_id,
        mesh: config.mesh.clone(),
        session: rand::random(),
        auth: config.peer_auth.clone(),
        max_message: config.peer_max_message,
        key_filter: config.key_filter.fingerprint(),
    };
    // What the links with peers tell anti-entropy (reconnects, deliveries).
    let links = Arc::new(mesh::repair::PeerLinks::new(&config.peers));

    // Peers → applier.
    let (apply_tx, apply_rx) = mpsc::channel(16);
    tracker.spawn(apply::run(
        Store::new(locator.clone()),
        apply_rx,
        ready.clone(),
        metrics.clone(),
        token.clone(),
    ));
    // What this node delivered, and what its peers say they did: the
    // frontier tombstones are collected below (peers tell it in
    // anti-entropy rounds, so collection needs anti-entropy).
    let frontier = Arc::new(mesh::frontier::Frontier::new(
        outbox.clone(),
        &config.peers,
        position_rx.clone(),
    ));
    if let (Some(interval), Some(_)) = (
        config.tombstone_collect_interval,
        config.anti_entropy_interval,
    ) {
        let collector = mesh::frontier::Collector {
            frontier: frontier.clone(),
            databases,
            interval,
            horizon: config.tombstone_horizon,
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        tracker.spawn(collector.run(Store::new(locator.clone()), token.clone()));
    }
    // Anti-entropy: compare with each peer, pull what differs.
    if let Some(interval) = config.anti_entropy_interval {
        let anti_entropy = mesh::repair::AntiEntropy {
            peers: peers_rx.clone(),
            node_id: config.node_id,
            mesh: config.mesh.clone(),
            databases,
            clock: clock.clone(),
            metrics: metrics.clone(),
            auth: config.peer_auth.clone(),
            max_message: config.peer_max_message,
            interval,
            max_bytes_per_sec: config.anti_entropy_max_bytes_per_sec,
            apply: apply_tx.clone(),
            ready: ready.clone(),
            links: links.clone(),
            frontier: Some(frontier.clone()),
        };
        tracker.spawn(anti_entropy.run(Store::new(locator.clone()), token.clone()));
    }
    let receiver = mesh::server::Receiver::new(
        locator.clone(),
        config.node_id,
        config.mesh.clone(),
        databases,
        clock.clone(),
        apply_tx,
        metrics.clone(),
    )
    .with_tls(config.peer_auth.tls().map(|t| t.mode))
    .with_max_message(config.peer_max_message)
    .with_links(links.clone())
    .with_frontier(frontier.clone())
    .with_key_filter(config.key_filter.clone());
    let service = mesh::pb::replication_server::ReplicationServer::new(receiver)
        .max_decoding_message_size(config.peer_max_message)
        .max_encoding_message_size(config.peer_max_message);
    let grpc_token = token.clone();
    let peer_auth = config.peer_auth.clone();
    let metrics_for_grpc = metrics.clone();
    let grpc_task = tracker.spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(mesh::dial::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(mesh::dial::KEEPALIVE_TIMEOUT))
            .add_service(service)
            .serve_with_incoming_shutdown(
                mesh::listener::incoming(
                    grpc,
                    &peer_auth,
                    mesh::listener::Limits::default(),
                    mesh::listener::Refusals::new(metrics_for_grpc),
                    grpc_token.clone(),
                ),
                grpc_token.cancelled_owned(),
            )
            .await
    });
    tracker.spawn(guard::run(
        Store::new(locator.clone()),
        clock.clone(),
        config.max_clock_skew,
        databases,
        metrics.clone(),
        token.clone(),
    ));
    tracker.spawn(data_dir::persist_progress(
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
    // The senders to peers, started here and by reloads.
    let mut members = membership::Membership::start(
        peers_tx,
        config.peer_ids.clone(),
        outbox.clone(),
        links,
        ready.clone(),
        frontier,
        metrics.clone(),
        me,
        tracker.clone(),
        token.clone(),
    );
    if let (Some(reload), Some(mut hangup)) = (reload, hangup) {
        let token = token.clone();
        let running = config.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = hangup.recv() => {
                        info!("SIGHUP: reloading the configuration");
                        members.reload(&reload, &running).await;
                    }
                    _ = token.cancelled() => return,
                }
            }
        });
    }
    tracker.close();
    info!(node_id = config.node_id, listen = %config.listen, peers = config.peers.len(), redis = %url, "geosync started");
    for peer in config
        .peers
        .iter()
        .filter(|p| !config.peer_ids.contains_key(*p))
    {
        warn!(%peer, "peer given without its node id: its outgoing metrics are labelled with the address, not the node id, and the node id it answers with is not checked; write it ID=URL");
    }
    match &config.peer_auth {
        PeerAuth::None { insecure: false } => info!(
            "peer links are plaintext and unauthenticated: listening and dialing on loopback only"
        ),
        PeerAuth::None { insecure: true } => warn!(
            "--insecure-peers: peer links are plaintext and unauthenticated; anyone who reaches the peer port can read and write this region's data, so a VPN or service mesh must secure it"
        ),
        PeerAuth::Tls(t) => info!(mode = %t.mode, "peer links use TLS"),
    }

    let mut grpc_task = grpc_task;
    // Resolves only when the tailer stopped on an error it cannot mend.
    let tailer_failed = async {
        match tailer.await {
            Ok(Err(e)) => e,
            _ => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => {
            // Graceful: no new changes; what was stamped reaches the
            // connected peers (and their acknowledgements are recorded)
            // before the links close, so a restart re-ships nothing.
            intake.cancel();
            let drained = outbox.wait_drained(SHUTDOWN_DRAIN).await;
            if drained {
                info!("every connected peer acknowledged what was stamped; stopping");
            } else {
                warn!(
                    seconds = SHUTDOWN_DRAIN.as_secs(),
                    "peers did not acknowledge everything in time; the rest is re-shipped after a restart"
                );
            }
            Ok(())
        }
        _ = token.cancelled() => Ok(()),
        e = tailer_failed => Err(StartError::Source { url: url.clone(), source: e }),
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
    // The gRPC server's own shutdown waits for peers to close their streams
    // to this agent, which they never do on their own: stop it. A batch a
    // peer sent and this agent did not acknowledge is sent again.
    grpc_task.abort();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        error!("some tasks did not stop within 10 s");
    }
    info!("geosync stopped");
    result
}
