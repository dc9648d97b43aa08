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

/// Dials `port` and says Hello as `node_id`: Ok once welcomed.
async fn hello(port: u16, auth: &PeerAuth, node_id: u32) -> Result<(), String> {
    let channel = dial(&format!("{}://127.0.0.1:{port}", auth.scheme()), auth)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = ReplicationClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
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
