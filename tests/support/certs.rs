//! TLS test certificates, made at test time, and the server, agent and
//! client settings that use them.

use std::path::PathBuf;

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

    /// The `geosync run` flags that reach a server with these certificates.
    pub fn agent_args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--redis-tls-ca".into(),
            p(&self.ca),
            "--redis-tls-cert".into(),
            p(&self.client_cert),
            "--redis-tls-key".into(),
            p(&self.client_key),
        ]
    }

    /// The redis-server arguments of a TLS-only server (`--port 0`) on
    /// `port` that wants a client certificate and also replicates over TLS.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let p = |p: &PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }

    /// A test client's certificates (the agent's client certificate).
    pub fn client_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&self.client_cert).unwrap(),
                client_key: std::fs::read(&self.client_key).unwrap(),
            }),
            root_cert: Some(std::fs::read(&self.ca).unwrap()),
        }
    }
}
