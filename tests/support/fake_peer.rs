//! A region's agent played by the test: it connects to a real agent's peer
//! port over gRPC, says hello with its own node id and sends hand-made
//! batches (see `changes`), waiting for each answer. [`Origin`] is the
//! async stream; [`FakePeer`] the same from a plain test.

use geosync::base::change::{Change, encode_batch};
use geosync::mesh::PROTOCOL_VERSION;
use geosync::mesh::pb::replication_client::ReplicationClient;
use geosync::mesh::pb::{Batch, Hello, OriginMessage, PeerMessage, origin_message, peer_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// One origin's stream to an agent (plaintext loopback): its outgoing
/// channel and the agent's answers.
pub struct Origin {
    tx: mpsc::Sender<OriginMessage>,
    rx: tonic::Streaming<PeerMessage>,
}

impl Origin {
    /// Connects to the agent listening on `port` as node `node_id` of mesh
    /// `mesh` and waits for its welcome; the agent's refusal as an error.
    pub async fn connect(port: u16, node_id: u32, mesh: &str) -> Result<Origin, tonic::Status> {
        let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(OriginMessage {
            kind: Some(origin_message::Kind::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                mesh: mesh.into(),
                node_id,
                session: rand::random(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut rx = client
            .replicate(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match rx.message().await?.and_then(|m| m.kind) {
            Some(peer_message::Kind::Welcome(w)) => assert_eq!(w.mesh, mesh),
            other => panic!("expected Welcome, got {other:?}"),
        }
        Ok(Origin { tx, rx })
    }

    /// Sends an encoded batch of `count` changes as batch `seq` and returns
    /// the acknowledged seq (the agent acknowledges once the batch was
    /// applied), or its refusal.
    pub async fn send_encoded(
        &mut self,
        seq: u64,
        changes: Vec<u8>,
        count: u32,
    ) -> Result<u64, tonic::Status> {
        self.tx
            .send(OriginMessage {
                kind: Some(origin_message::Kind::Batch(Batch {
                    seq,
                    changes,
                    count,
                    catch_up: false,
                })),
            })
            .await
            .unwrap();
        match self.rx.message().await?.and_then(|m| m.kind) {
            Some(peer_message::Kind::Ack(a)) => Ok(a.seq),
            other => panic!("expected Ack, got {other:?}"),
        }
    }

    /// Sends one encoded change as batch `seq` (see [`Origin::send_encoded`]).
    pub async fn send(&mut self, seq: u64, payload: Vec<u8>) -> Result<u64, tonic::Status> {
        self.send_encoded(seq, payload, 1).await
    }
}

/// An [`Origin`] of mesh `geosync` for tests that do not run async.
pub struct FakePeer {
    rt: tokio::runtime::Runtime,
    origin: Origin,
}

impl FakePeer {
    /// Connects to the agent listening on `port` as node `node_id` and
    /// waits for its welcome.
    pub fn connect(port: u16, node_id: u32) -> FakePeer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let origin = rt
            .block_on(Origin::connect(port, node_id, "geosync"))
            .unwrap();
        FakePeer { rt, origin }
    }

    /// Sends `changes` as batch `seq` and returns the acknowledged seq, or
    /// its refusal.
    pub fn send(&mut self, seq: u64, changes: &[Change]) -> Result<u64, tonic::Status> {
        let payload = encode_batch(changes);
        self.rt
            .block_on(self.origin.send_encoded(seq, payload, changes.len() as u32))
    }
}
