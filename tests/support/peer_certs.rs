//! Peer-link security material made at test time: a CA with one
//! certificate per node (DNS name `geosync-node-<id>`, plus `localhost` and
//! `127.0.0.1`), a second CA with certificates of its own, and mesh secret
//! files.

use std::path::{Path, PathBuf};

/// A node's certificate and key files.
pub struct NodeCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and node certificates it signed, and a stranger CA's.
pub struct PeerCerts {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    other_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A self-signed test CA named `name`, and the issuer that signs with it.
pub fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

impl PeerCerts {
    pub fn generate() -> PeerCerts {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, issuer) = test_ca("geosync peers test CA");
        let (other_cert, other_issuer) = test_ca("geosync stranger CA");
        let ca = dir.path().join("peer-ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let other_ca = dir.path().join("stranger-ca.pem");
        std::fs::write(&other_ca, other_cert.pem()).unwrap();
        PeerCerts {
            ca,
            other_ca,
            dir,
            issuer,
            other_issuer,
        }
    }

    fn sign(
        &self,
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        tag: &str,
        node: u32,
    ) -> NodeCert {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let names = vec![
            format!("geosync-node-{node}"),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, issuer).unwrap();
        let out = NodeCert {
            cert: self.dir.path().join(format!("{tag}-node-{node}.pem")),
            key: self.dir.path().join(format!("{tag}-node-{node}.key")),
        };
        std::fs::write(&out.cert, cert.pem()).unwrap();
        std::fs::write(&out.key, key.serialize_pem()).unwrap();
        out
    }

    /// A certificate of the mesh's CA for `node`.
    pub fn node(&self, node: u32) -> NodeCert {
        self.sign(&self.issuer, "mesh", node)
    }

    /// A certificate for `node` from a CA the mesh does not trust.
    pub fn stranger(&self, node: u32) -> NodeCert {
        self.sign(&self.other_issuer, "stranger", node)
    }

    /// `geosync run` flags for mutual TLS with `cert`.
    pub fn agent_args(&self, cert: &NodeCert) -> Vec<String> {
        let p = |p: &Path| p.to_str().unwrap().to_string();
        vec![
            "--peer-tls-ca".into(),
            p(&self.ca),
            "--peer-tls-cert".into(),
            p(&cert.cert),
            "--peer-tls-key".into(),
            p(&cert.key),
        ]
    }

    /// The files a test client dials with, presenting `cert`.
    pub fn client_files(&self, cert: &NodeCert) -> geosync::mesh::security::MutualTlsFiles {
        geosync::mesh::security::MutualTlsFiles {
            ca: self.ca.clone(),
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        }
    }
}

/// A mesh secret file holding `secrets`, one per line, in `dir`.
pub fn secret_file(dir: &Path, name: &str, secrets: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, secrets.join("\n") + "\n").unwrap();
    path
}
