//! The sending side: one task per peer streams this region's batches to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{error, info, warn};

use super::PROTOCOL_VERSION;
use super::pb::replication_client::ReplicationClient;
use super::pb::{Batch, Hello, OriginMessage, origin_message, peer_message};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::state::Readiness;

/// Most batches sent to a peer ahead of its acks.
const WINDOW: u64 = 32;

/// Who this agent is, as told in `Hello`.
#[derive(Clone)]
pub struct Identity {
    /// This region's node id.
    pub node_id: u32,
    /// The mesh name.
    pub mesh: String,
    /// Random per process.
    pub session: u64,
}

/// Why a session with a peer ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("peer refused: {0}")]
    Refused(tonic::Status),
    #[error("stream: {0}")]
    Stream(tonic::Status),
    #[error("peer closed the stream")]
    Closed,
    #[error("peer is misconfigured: {0}")]
    Misconfigured(String),
    #[error("shutdown")]
    Shutdown,
}

/// Streams batches to one peer until shutdown, reconnecting with backoff.
pub async fn run(
    peer: String,
    me: Identity,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let label = Metrics::peer(&peer);
    let mut backoff = Backoff::with(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let started = Instant::now();
        let end = session(&peer, &me, &outbox, &metrics, &ready, &shutdown).await;
        metrics.peer_connected.get_or_create(&label).set(0);
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Misconfigured(why) => {
                error!(%peer, %why, "peer refused this agent; fix the configuration")
            }
            SessionEnd::Refused(status)
                if status.code() == tonic::Code::AlreadyExists
                    || status.code() == tonic::Code::FailedPrecondition
                        && !status.message().contains("batch") =>
            {
                error!(%peer, reason = %status.message(), "peer refused this agent")
            }
            other => warn!(%peer, reason = %other, "peer session ended"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset(Duration::from_millis(100));
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn session(
    peer: &str,
    me: &Identity,
    outbox: &Outbox,
    metrics: &Metrics,
    ready: &Readiness,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let label = Metrics::peer(peer);
    let endpoint = match Endpoint::from_shared(peer.to_string()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true),
        Err(e) => return SessionEnd::Misconfigured(e.to_string()),
    };
    let channel = tokio::select! {
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return SessionEnd::Connect(e),
        },
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<OriginMessage>(WINDOW as usize + 1);
    let hello = OriginMessage {
        kind: Some(origin_message::Kind::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            mesh: me.mesh.clone(),
            node_id: me.node_id,
            session: me.session,
        })),
    };
    if tx.send(hello).await.is_err() {
        return SessionEnd::Closed;
    }
    let mut inbound = tokio::select! {
        r = client.replicate(ReceiverStream::new(rx)) => match r {
            Ok(r) => r.into_inner(),
            Err(s) => return SessionEnd::Refused(s),
        },
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    let welcome = match inbound.message().await {
        Ok(Some(m)) => match m.kind {
            Some(peer_message::Kind::Welcome(w)) => w,
            _ => return SessionEnd::Misconfigured("first answer was not Welcome".into()),
        },
        Ok(None) => return SessionEnd::Closed,
        Err(s) => return SessionEnd::Refused(s),
    };
    if welcome.node_id == me.node_id {
        return SessionEnd::Misconfigured(format!("peer uses this agent's node id {}", me.node_id));
    }
    if welcome.mesh != me.mesh {
        return SessionEnd::Misconfigured(format!("peer is in mesh {:?}", welcome.mesh));
    }
    outbox.ack(peer, welcome.acked_seq);
    let mut acked = outbox.acked(peer);
    let mut sent = acked;
    ready.peer_reached(peer);
    metrics.peer_connected.get_or_create(&label).set(1);
    info!(%peer, peer_node = welcome.node_id, acked, "peer connected");
    let mut latest = outbox.subscribe();
    loop {
        // Fill the window.
        while sent < acked + WINDOW {
            let Some(batch) = outbox.next_after(sent) else {
                break;
            };
            let msg = OriginMessage {
                kind: Some(origin_message::Kind::Batch(Batch {
                    seq: batch.seq,
                    changes: batch.payload.to_vec(),
                    count: batch.count,
                })),
            };
            if tx.send(msg).await.is_err() {
                return SessionEnd::Closed;
            }
            metrics
                .changes_shipped
                .get_or_create(&label)
                .inc_by(batch.count as u64);
            sent = batch.seq;
        }
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    if let Some(peer_message::Kind::Ack(a)) = m.kind
                        && a.seq > acked
                    {
                        metrics.batches_acked.get_or_create(&label).inc_by(a.seq - acked);
                        acked = a.seq;
                        outbox.ack(peer, a.seq);
                    }
                }
                Ok(None) => return SessionEnd::Closed,
                Err(s) => return SessionEnd::Stream(s),
            },
            r = latest.changed() => {
                if r.is_err() {
                    return SessionEnd::Shutdown;
                }
            }
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        }
    }
}
