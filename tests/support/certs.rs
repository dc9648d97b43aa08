//! TLS test certificates, made at test time, and the server, agent and
//! client settings that use them.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use geosync::lab::{TlsFiles, free_port, poll, redis_server_bin};

/// Certificates for TLS tests, made at test time in a temp dir: a CA, a
/// server certificate it signed for `localhost` and `127.0.0.1` (IP SAN),
/// a client certificate it signed, and a second CA that signed nothing
/// here (a wrong CA).
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    pub fn generate() -> std::sync::Arc<TestCerts> {
        use super::peer_certs::test_ca as ca;
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
        let leaf = |issuer: &Issuer<'_, KeyPair>, names: &[&str], usage| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = usage;
            (params.signed_by(&key, issuer).unwrap(), key)
        };
        let (ca_cert, issuer) = ca("geosync test CA");
        let (other_cert, _) = ca("geosync other CA");
        // Redis also presents the server certificate as a client (replication,
        // Sentinel), so it may authenticate either side.
        let (server, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(
            &issuer,
            &["geosync-agent"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        std::sync::Arc::new(TestCerts {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            other_ca: write("other-ca.pem", other_cert.pem()),
            _dir: dir,
        })
    }

    /// The files as the lab's servers and agents take them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            server_cert: self.server_cert.clone(),
            server_key: self.server_key.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }

    /// The `geosync run` flags that reach a server with these certificates.
    pub fn agent_args(&self) -> Vec<String> {
        self.files().agent_args()
    }

    /// A test client's certificates (the agent's client certificate).
    pub fn client_certificates(&self) -> redis::TlsCertificates {
        self.files().client_certificates().unwrap()
    }
}

/// The server binary for TLS tests: `GEOSYNC_TEST_REDIS_SERVER` (or
/// `redis-server`) when it was built with TLS, else Debian's
/// `/usr/bin/redis-server`, which is. Decided once per test process and
/// printed; panics when neither has TLS, so that a TLS test never passes
/// without TLS.
pub fn tls_server_bin() -> String {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let configured = redis_server_bin();
            let fallback = "/usr/bin/redis-server".to_string();
            if has_tls(&configured) {
                println!("TLS tests run on {configured} (the configured server has TLS)");
                configured
            } else if has_tls(&fallback) {
                println!(
                    "TLS tests run on {fallback}: the configured server {configured} has no TLS built in"
                );
                fallback
            } else {
                panic!("neither {configured} nor {fallback} has TLS built in: TLS is not tested");
            }
        })
        .clone()
}

/// True when `bin` starts and listens on a TLS port.
fn has_tls(bin: &str) -> bool {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Ok(mut child) = Command::new(bin)
        .args(certs.files().server_args(port))
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let mut exited = false;
    let up = poll(Duration::from_secs(10), || {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    up.is_some() && !exited
}
