//! Peer links a stranger cannot read, write or stall: mutual TLS with node
//! ids bound to certificates, a mesh secret with rotation, loopback-only
//! plaintext by default, and refusals that are counted while the real
//! peers keep flowing. Real agents and real Redis servers throughout; the
//! strangers are test clients dialing the agents' peer ports.

mod support;

use std::sync::Arc;
use std::time::Duration;

use geosync::mesh::PROTOCOL_VERSION;
use geosync::mesh::dial::dial;
use geosync::mesh::pb::replication_client::ReplicationClient;
use geosync::mesh::pb::{Hello, OriginMessage, SnapshotRequest, origin_message, peer_message};
use geosync::mesh::security::{PeerAuth, PeerTls};
use redis::Commands;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SETTLE: Duration = Duration::from_secs(20);

/// `geosync_peer_refused_total` for one reason.
fn refused(agent: &Agent, reason: &str) -> f64 {
    agent.metric(&format!(
        "geosync_peer_refused_total{{reason=\"{reason}\"}}"
    ))
}

/// Writes `key` in region `from` and waits until every region has it.
fn write_and_see(mesh: &Mesh, from: usize, key: &str) {
    let _: () = mesh.regions[from].redis.conn().set(key, "v").unwrap();
    for r in &mesh.regions {
        wait_until(&format!("{key} everywhere"), SETTLE, || {
            r.redis.conn().exists::<_, bool>(key).unwrap()
        });
    }
}

/// A `Hello` in this mesh, claiming `node_id`.
fn hello_message(protocol_version: u32, node_id: u32) -> OriginMessage {
    OriginMessage {
        kind: Some(origin_message::Kind::Hello(Hello {
            protocol_version,
            mesh: "geosync".into(),
            node_id,
            session: rand::random(),
            ..Default::default()
        })),
    }
}

/// Dials `port` and says Hello as `node_id`: Ok once welcomed.
async fn hello(port: u16, auth: &PeerAuth, node_id: u32) -> Result<(), String> {
    let channel = dial(&format!("{}://127.0.0.1:{port}", auth.scheme()), auth)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = ReplicationClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello_message(PROTOCOL_VERSION, node_id))
        .await
        .unwrap();
    let mut answers = client
        .replicate(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    match answers.message().await.map_err(|s| s.to_string())? {
        Some(m) if matches!(m.kind, Some(peer_message::Kind::Welcome(_))) => Ok(()),
        other => Err(format!("no Welcome: {other:?}")),
    }
}

/// Asks `port` for a snapshot as `node_id`: Ok once the first answer came.
async fn snapshot_call(port: u16, auth: &PeerAuth, node_id: u32) -> Result<(), String> {
    let channel = dial(&format!("{}://127.0.0.1:{port}", auth.scheme()), auth)
        .await
        .map_err(|e| e.to_string())?;
    ReplicationClient::new(channel)
        .snapshot(SnapshotRequest {
            protocol_version: PROTOCOL_VERSION,
            mesh: "geosync".into(),
            node_id,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

fn mutual(certs: &PeerCerts, cert: &NodeCert) -> PeerAuth {
    PeerAuth::Tls(Arc::new(
        PeerTls::mutual(&certs.client_files(cert), None).unwrap(),
    ))
}

fn plaintext() -> PeerAuth {
    PeerAuth::None { insecure: false }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_links_regions_and_refuses_strangers_and_impostors() {
    let certs = PeerCerts::generate();
    let node_certs: Vec<NodeCert> = (1..=3).map(|n| certs.node(n)).collect();
    let mesh = Mesh::each(2, |n| certs.agent_args(&node_certs[n as usize - 1]));
    write_and_see(&mesh, 0, "from-1");
    write_and_see(&mesh, 1, "from-2");
    let port = mesh.regions[0].agent.listen;
    let agent = &mesh.regions[0].agent;

    // A plaintext client: the TLS handshake fails.
    let before = refused(agent, "tls");
    let plain = hello(port, &plaintext(), 3).await;
    assert!(plain.is_err(), "a plaintext client was welcomed");
    wait_until("plaintext client refused and counted", SETTLE, || {
        refused(agent, "tls") > before
    });

    // A certificate from another CA.
    let before = refused(agent, "tls");
    let stranger = certs.stranger(3);
    let r = hello(port, &mutual(&certs, &stranger), 3).await;
    assert!(r.is_err(), "a stranger CA's certificate was welcomed");
    wait_until("stranger certificate refused and counted", SETTLE, || {
        refused(agent, "tls") > before
    });

    // The mesh's CA, but node 3's certificate claiming node 2.
    let before = refused(agent, "node_id_not_in_certificate");
    let r = hello(port, &mutual(&certs, &node_certs[2]), 2).await;
    let err = r.expect_err("an impostor of node 2 was welcomed");
    assert!(
        err.contains("not named in the caller's certificate"),
        "{err}"
    );
    assert_eq!(refused(agent, "node_id_not_in_certificate"), before + 1.0);
    // The same impostor cannot read the dataset either.
    let err = snapshot_call(port, &mutual(&certs, &node_certs[2]), 2)
        .await
        .expect_err("an impostor read a snapshot");
    assert!(err.contains("not named"), "{err}");
    // And a Snapshot without any credentials never gets past TLS.
    assert!(snapshot_call(port, &plaintext(), 3).await.is_err());

    // Node 3 with its own certificate is a member.
    hello(port, &mutual(&certs, &node_certs[2]), 3)
        .await
        .expect("node 3 with its own certificate");

    // The real peers kept flowing.
    write_and_see(&mesh, 0, "after-1");
    write_and_see(&mesh, 1, "after-2");
    mesh.wait_converged(&[0], SETTLE);
}

#[test]
fn an_agent_whose_certificate_names_another_node_does_not_start() {
    let certs = PeerCerts::generate();
    let other = certs.node(2);
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "run".to_string(),
        "--node-id".into(),
        "1".into(),
        "--data-dir".into(),
        dir.path().to_str().unwrap().into(),
    ];
    args.extend(certs.agent_args(&other));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_geosync"))
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`peer-tls-cert`"), "{stderr}");
    assert!(stderr.contains("geosync-node-1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mesh_secret_links_regions_and_a_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(
        dir.path(),
        "secret",
        &["0123456789abcdef0123456789abcdef-mesh"],
    );
    let wrong = secret_file(
        dir.path(),
        "wrong",
        &["0123456789abcdef0123456789abcdef-xxxx"],
    );
    let path = secret.to_str().unwrap().to_string();
    let mesh = Mesh::each(2, |_| vec!["--peer-secret-file".into(), path.clone()]);
    write_and_see(&mesh, 0, "from-1");
    write_and_see(&mesh, 1, "from-2");
    let agent = &mesh.regions[0].agent;
    let port = agent.listen;

    let before = refused(agent, "tls");
    let auth = PeerAuth::Tls(Arc::new(PeerTls::secret(&wrong).unwrap()));
    assert!(
        hello(port, &auth, 3).await.is_err(),
        "a wrong secret was welcomed"
    );
    assert!(
        snapshot_call(port, &auth, 3).await.is_err(),
        "a wrong secret read a snapshot"
    );
    wait_until("wrong secret refused and counted", SETTLE, || {
        refused(agent, "tls") >= before + 2.0
    });
    // Without the secret at all.
    assert!(hello(port, &plaintext(), 3).await.is_err());

    let right = PeerAuth::Tls(Arc::new(PeerTls::secret(&secret).unwrap()));
    hello(port, &right, 3).await.expect("the mesh secret");
    write_and_see(&mesh, 0, "after-1");
    mesh.wait_converged(&[0], SETTLE);
}

#[test]
fn regions_mid_rotation_accept_each_other_and_a_retired_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        "old-secret-0123456789abcdef0123456789abcdef",
        "new-secret-0123456789abcdef0123456789abcdef",
    );
    // Step 2 of a rotation: one region presents the new secret, the other
    // still the old one; both accept both.
    let files = [
        secret_file(dir.path(), "one", &[new, old]),
        secret_file(dir.path(), "two", &[old, new]),
    ];
    let mesh = Mesh::each(2, |n| {
        vec![
            "--peer-secret-file".into(),
            files[n as usize - 1].to_str().unwrap().into(),
        ]
    });
    write_and_see(&mesh, 0, "rotating-1");
    write_and_see(&mesh, 1, "rotating-2");
    // After the rotation, region 1 knows only the new secret: a client
    // with only the old one is refused.
    drop(mesh);
    let only_new = secret_file(dir.path(), "new", &[new]);
    let only_old = secret_file(dir.path(), "old", &[old]);
    let mesh = Mesh::each(1, |_| {
        vec![
            "--peer-secret-file".into(),
            only_new.to_str().unwrap().into(),
        ]
    });
    let agent = &mesh.regions[0].agent;
    let port = agent.listen;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let retired = PeerAuth::Tls(Arc::new(PeerTls::secret(&only_old).unwrap()));
    assert!(rt.block_on(hello(port, &retired, 2)).is_err());
    wait_until("retired secret refused and counted", SETTLE, || {
        refused(agent, "tls") >= 1.0
    });
}

#[test]
fn plaintext_links_stay_on_loopback_unless_insecure_peers_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--node-id", "1", "--data-dir", d];
        args.extend(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_geosync"))
            .args(&args)
            .env("GEOSYNC_REDIS", "redis://127.0.0.1:1")
            .output()
            .unwrap()
    };
    for (extra, setting, words) in [
        (
            vec!["--listen", "0.0.0.0:7001"],
            "listen",
            "not a loopback address",
        ),
        (
            vec!["--peer", "http://10.1.2.3:7001"],
            "peer",
            "not a loopback address",
        ),
        (
            vec!["--peer", "https://127.0.0.1:7002"],
            "peer",
            "want http://",
        ),
        (
            vec!["--insecure-peers", "--peer-secret-file", "/nonexistent"],
            "insecure-peers",
            "without TLS or a secret",
        ),
        (
            vec!["--peer-tls-ca", "/nonexistent"],
            "peer-tls-cert",
            "is required",
        ),
    ] {
        let o = run(&extra);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(&format!("`{setting}`")),
            "{extra:?}: {stderr}"
        );
        assert!(stderr.contains(words), "{extra:?}: {stderr}");
    }
    // With --insecure-peers the same listen address passes the settings
    // check: the start then fails on the (absent) local Redis, exit 1.
    let o = run(&["--listen", "0.0.0.0:0", "--insecure-peers"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("local redis"), "{stderr}");
}

/// Writes `bytes` to the peer port of `port` and waits until the agent
/// closes the connection.
fn send_and_expect_close(port: u16, bytes: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(SETTLE)).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the agent kept a connection of {bytes:?} open: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_http1_and_a_wrong_protocol_are_refused_while_peers_keep_flowing() {
    let mesh = Mesh::start(2);
    let agent = &mesh.regions[0].agent;
    let port = agent.listen;
    send_and_expect_close(
        port,
        b"\x16\x03\x01\x00\x05garbage that is no protocol at all",
    );
    send_and_expect_close(port, b"GET /metrics HTTP/1.1\r\nHost: geosync\r\n\r\n");
    wait_until("garbage and HTTP/1 refused and counted", SETTLE, || {
        refused(agent, "not_http2") >= 2.0
    });
    // A gRPC client speaking another protocol version.
    let channel = dial(&format!("http://127.0.0.1:{port}"), &plaintext())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello_message(PROTOCOL_VERSION + 100, 3))
        .await
        .unwrap();
    let err = ReplicationClient::new(channel)
        .replicate(ReceiverStream::new(rx))
        .await
        .expect_err("another protocol version was welcomed");
    assert!(err.message().contains("protocol version"), "{err}");
    assert_eq!(refused(agent, "protocol_version"), 1.0);
    write_and_see(&mesh, 0, "after-garbage-1");
    write_and_see(&mesh, 1, "after-garbage-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_connections_is_bounded_and_peers_keep_flowing() {
    let mesh = Mesh::start(2);
    let agent = &mesh.regions[0].agent;
    let port = agent.listen;
    // Idle connections from another loopback address: the agent holds at
    // most 16 from one address and refuses the rest at once.
    let mut held = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        held.push(socket.connect(([127, 0, 0, 1], port).into()).await.unwrap());
    }
    wait_until("connections past the bound refused", SETTLE, || {
        refused(agent, "too_many_connections") >= 24.0
    });
    // The real peer (another address) is not held back.
    write_and_see(&mesh, 0, "during-flood-1");
    write_and_see(&mesh, 1, "during-flood-2");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_are_bounded_and_the_next_caller_is_told_to_come_back() {
    let mesh = Mesh::start(1);
    let agent = &mesh.regions[0].agent;
    let mut c = mesh.regions[0].redis.conn();
    let mut p = redis::pipe();
    for i in 0..20_000 {
        p.set(format!("k{i}"), "x".repeat(100)).ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    wait_until("keys stamped", SETTLE, || {
        agent.metric("geosync_changes_stamped_total") >= 20_000.0
    });
    let port = agent.listen;
    // Two callers that do not read: their snapshots wait, holding places.
    let mut open = Vec::new();
    for node in [2, 3] {
        let channel = dial(&format!("http://127.0.0.1:{port}"), &plaintext())
            .await
            .unwrap();
        let stream = ReplicationClient::new(channel)
            .snapshot(SnapshotRequest {
                protocol_version: PROTOCOL_VERSION,
                mesh: "geosync".into(),
                node_id: node,
                ..Default::default()
            })
            .await
            .expect("a snapshot place");
        open.push(stream);
    }
    let err = snapshot_call(port, &plaintext(), 4)
        .await
        .expect_err("a third snapshot at once");
    assert!(err.contains("snapshots are being sent"), "{err}");
    assert_eq!(refused(agent, "snapshot_busy"), 1.0);
    // Reading one to its end gives its place back.
    let mut first = open.remove(0).into_inner();
    while first.message().await.unwrap().is_some() {}
    snapshot_call(port, &plaintext(), 4)
        .await
        .expect("a place once a snapshot is done");
}

/// A peer played by the test: its first session answers Welcome with an
/// acknowledged sequence this agent never sent, once told to; later
/// sessions answer honestly, record every key they receive and ack.
struct LyingPeer {
    first: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    keys: Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>,
}

type Answers = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<geosync::mesh::pb::PeerMessage, tonic::Status>> + Send>,
>;
type Chunks = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<geosync::mesh::pb::SnapshotChunk, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl geosync::mesh::pb::replication_server::Replication for LyingPeer {
    type ReplicateStream = Answers;
    type SnapshotStream = Chunks;

    async fn snapshot(
        &self,
        _: tonic::Request<SnapshotRequest>,
    ) -> Result<tonic::Response<Chunks>, tonic::Status> {
        Err(tonic::Status::unimplemented("no snapshots here"))
    }

    async fn digests(
        &self,
        _: tonic::Request<geosync::mesh::pb::DigestRequest>,
    ) -> Result<tonic::Response<geosync::mesh::pb::DigestReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("no digests here"))
    }

    async fn records(
        &self,
        _: tonic::Request<geosync::mesh::pb::RecordsRequest>,
    ) -> Result<tonic::Response<geosync::mesh::pb::RecordsReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("no records here"))
    }

    async fn replicate(
        &self,
        request: tonic::Request<tonic::Streaming<OriginMessage>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        use geosync::mesh::pb::{Ack, PeerMessage, Welcome};
        let mut inbound = request.into_inner();
        let _hello = inbound.message().await?;
        let go = self.first.lock().unwrap().take();
        let acked_seq = match go {
            Some(go) => {
                let _ = go.await;
                1_000_000
            }
            None => 0,
        };
        let (tx, rx) = mpsc::channel(64);
        let welcome = PeerMessage {
            kind: Some(peer_message::Kind::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                mesh: "geosync".into(),
                node_id: 2,
                acked_seq,
            })),
        };
        tx.send(Ok(welcome)).await.unwrap();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(origin_message::Kind::Batch(b)) = m.kind {
                    let changes = geosync::base::change::decode_batch(&b.changes).unwrap();
                    keys.lock()
                        .unwrap()
                        .extend(changes.into_iter().map(|c| c.key.into_vec()));
                    let ack = PeerMessage {
                        kind: Some(peer_message::Kind::Ack(Ack { seq: b.seq })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_acknowledges_what_it_was_never_sent_is_not_trusted() {
    let (go, wait) = tokio::sync::oneshot::channel();
    let keys: Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>> = Default::default();
    let peer = LyingPeer {
        first: std::sync::Mutex::new(Some(wait)),
        keys: keys.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(geosync::mesh::pb::replication_server::ReplicationServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let redis = Redis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(
        1,
        &redis.url(),
        free_port(),
        free_port(),
        &[peer_port],
        dir.path(),
        &redis.agent_args(),
    );
    wait_until("agent serving metrics", SETTLE, || {
        agent.get("/metrics").is_some()
    });
    let mut c = redis.conn();
    for i in 0..50 {
        let _: () = c.set(format!("k{i}"), i).unwrap();
    }
    wait_until("50 keys stamped", SETTLE, || {
        agent.metric("geosync_changes_stamped_total") >= 50.0
    });
    // Now the peer claims to hold batch 1,000,000 of this agent's session.
    go.send(()).unwrap();
    wait_until("the peer received every key", SETTLE, || {
        keys.lock().unwrap().len() == 50
    });
    assert!(refused(&agent, "acked_beyond_sent") >= 1.0);
}

#[test]
fn certificates_made_by_the_readme_recipe_link_regions() {
    // scripts/peer-certs.sh is the openssl recipe the README gives.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/peer-certs.sh"
        ))
        .arg(dir.path())
        .args([
            "1=DNS:localhost,IP:127.0.0.1",
            "2=DNS:localhost,IP:127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mesh = Mesh::each(2, |n| {
        vec![
            "--peer-tls-ca".into(),
            file("ca.pem"),
            "--peer-tls-cert".into(),
            file(&format!("node-{n}.pem")),
            "--peer-tls-key".into(),
            file(&format!("node-{n}.key")),
        ]
    });
    write_and_see(&mesh, 0, "openssl-1");
    write_and_see(&mesh, 1, "openssl-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_stay_under_the_limit_and_larger_ones_are_refused() {
    let mesh = Mesh::with_agent_args(2, &["--peer-max-message-mb", "1"]);
    let agent = &mesh.regions[0].agent;
    let mut c1 = mesh.regions[0].redis.conn();
    let mut c2 = mesh.regions[1].redis.conn();
    // A transaction of three 400 KB values is one stamp batch of 1.2 MB:
    // it travels as several messages, each under the limit.
    let value = "v".repeat(400_000);
    let _: () = redis::pipe()
        .atomic()
        .set("t1", &value)
        .set("t2", &value)
        .set("t3", &value)
        .query(&mut c1)
        .unwrap();
    for key in ["t1", "t2", "t3"] {
        wait_until(&format!("{key} in region 2"), SETTLE, || {
            c2.strlen::<_, usize>(key).unwrap() == value.len()
        });
    }
    // A 2 MB value fits in no message: counted, logged, and the link goes on.
    let _: () = c1.set("huge", "h".repeat(2_000_000)).unwrap();
    wait_until("the huge change counted", SETTLE, || {
        agent.metric("geosync_changes_too_large_total") >= 1.0
    });
    write_and_see(&mesh, 0, "after-huge");
    assert!(!c2.exists::<_, bool>("huge").unwrap());
    // Refused before its record was written: region 1's metadata does not
    // claim a stamp its peers never received.
    let record: Option<String> = mesh.regions[0].redis.record(0, "huge");
    assert_eq!(record, None, "a record for a value that was never shipped");
    // A stranger's message over the limit is refused before it is decoded.
    let port = agent.listen;
    let channel = dial(&format!("http://127.0.0.1:{port}"), &plaintext())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello_message(PROTOCOL_VERSION, 3)).await.unwrap();
    let mut answers = ReplicationClient::new(channel)
        .replicate(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some(), "welcomed");
    tx.send(OriginMessage {
        kind: Some(origin_message::Kind::Batch(geosync::mesh::pb::Batch {
            seq: 1,
            changes: vec![0u8; 2 << 20],
            count: 1,
            catch_up: false,
        })),
    })
    .await
    .unwrap();
    wait_until("the oversized message refused and counted", SETTLE, || {
        refused(agent, "too_large") >= 1.0
    });
    write_and_see(&mesh, 1, "after-stranger");
}
