//! A region's agent played by the test: it connects to a real agent's peer
//! port over gRPC, says hello with its own node id and sends hand-made
//! batches (see `changes`), waiting for each answer.

use geosync::base::change::{Change, encode_batch};
use geosync::mesh::PROTOCOL_VERSION;
use geosync::mesh::pb::replication_client::ReplicationClient;
use geosync::mesh::pb::{Batch, Hello, OriginMessage, PeerMessage, origin_message, peer_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// One origin's stream to an agent (mesh `geosync`, plaintext loopback).
pub struct FakePeer {
    rt: tokio::runtime::Runtime,
    tx: mpsc::Sender<OriginMessage>,
    rx: tonic::Streaming<PeerMessage>,
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
        let (tx, rx) = rt.block_on(async {
            let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .unwrap();
            let (tx, rx) = mpsc::channel(16);
            tx.send(OriginMessage {
                kind: Some(origin_message::Kind::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    mesh: "geosync".into(),
                    node_id,
                    session: rand::random(),
                })),
            })
            .await
            .unwrap();
            let mut rx = client
                .replicate(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            match rx.message().await.unwrap().and_then(|m| m.kind) {
                Some(peer_message::Kind::Welcome(_)) => {}
                other => panic!("expected Welcome, got {other:?}"),
            }
            (tx, rx)
        });
        FakePeer { rt, tx, rx }
    }

    /// Sends `changes` as batch `seq` and returns the acknowledged seq (the
    /// agent acknowledges once the batch was applied), or its refusal.
    pub fn send(&mut self, seq: u64, changes: &[Change]) -> Result<u64, tonic::Status> {
        let msg = OriginMessage {
            kind: Some(origin_message::Kind::Batch(Batch {
                seq,
                changes: encode_batch(changes),
                count: changes.len() as u32,
                catch_up: false,
            })),
        };
        let (tx, rx) = (&self.tx, &mut self.rx);
        self.rt.block_on(async {
            tx.send(msg).await.unwrap();
            match rx.message().await?.and_then(|m| m.kind) {
                Some(peer_message::Kind::Ack(a)) => Ok(a.seq),
                other => panic!("expected Ack, got {other:?}"),
            }
        })
    }
}
