//! How agents prove who they are to each other (decision 011).
//!
//! - **Mutual TLS** (`--peer-tls-ca`, `--peer-tls-cert`, `--peer-tls-key`):
//!   every agent checks the other's certificate against the CA; the server
//!   requires a client certificate, and the node id a client claims must be
//!   named in its certificate as the DNS name `geosync-node-<id>`.
//! - **A mesh secret** (`--peer-secret-file`): TLS whose only certificate is
//!   derived from the secret. Every agent that knows the secret makes the
//!   same Ed25519 key and the same self-signed certificate; a peer is
//!   accepted when it presents exactly that certificate and proves, in the
//!   handshake, that it holds its key. Two secrets are accepted at once
//!   during a rotation; the first is the one presented.
//! - **None**: plaintext without authentication, for loopback only (or
//!   behind a VPN or service mesh, with `--insecure-peers`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::base::setting::{SettingError, bad};

/// The DNS name a certificate carries to bind node `id`.
pub fn node_name(id: u32) -> String {
    format!("geosync-node-{id}")
}

/// Shortest accepted mesh secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// How the links between agents are secured.
#[derive(Clone)]
pub enum PeerAuth {
    /// Plaintext, no authentication. `insecure`: also off loopback.
    None {
        /// `--insecure-peers` was given.
        insecure: bool,
    },
    /// TLS: mutual TLS with a CA, or keys derived from the mesh secret.
    Tls(Arc<PeerTls>),
}

impl fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAuth::None { insecure } => write!(f, "None {{ insecure: {insecure} }}"),
            PeerAuth::Tls(t) => write!(f, "Tls({})", t.mode),
        }
    }
}

impl PeerAuth {
    /// The TLS settings, when the links use TLS.
    pub fn tls(&self) -> Option<&Arc<PeerTls>> {
        match self {
            PeerAuth::Tls(t) => Some(t),
            PeerAuth::None { .. } => None,
        }
    }

    /// The URL scheme of peers: `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        match self {
            PeerAuth::Tls(_) => "https",
            PeerAuth::None { .. } => "http",
        }
    }
}

/// Which kind of TLS the links use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// A CA and per-node certificates.
    MutualTls,
    /// Keys derived from the mesh secret.
    Secret,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::MutualTls => "mutual TLS",
            TlsMode::Secret => "mesh secret",
        })
    }
}

/// Checked TLS settings of the peer links: both sides of every link.
pub struct PeerTls {
    /// Which kind.
    pub mode: TlsMode,
    /// What the agent serves with.
    pub server: Arc<rustls::ServerConfig>,
    /// What the agent dials with.
    pub client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, SettingError> {
    std::fs::read(path).map_err(|e| bad(setting, format!("cannot read {}: {e}", path.display())))
}

fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    let bytes = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(
                setting,
                format!("{} is not a readable PEM file: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            setting,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The files of mutual TLS.
#[derive(Debug, Clone)]
pub struct MutualTlsFiles {
    /// The CA bundle every peer's certificate is checked against.
    pub ca: PathBuf,
    /// This agent's certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl PeerTls {
    /// Mutual TLS from PEM files; with `node_id`, this agent's certificate
    /// must name it (`geosync-node-<id>`).
    pub fn mutual(files: &MutualTlsFiles, node_id: Option<u32>) -> Result<PeerTls, SettingError> {
        let ca = certificates("peer-tls-ca", &files.ca)?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| {
                bad(
                    "peer-tls-ca",
                    format!("{}: not a usable CA certificate: {e}", files.ca.display()),
                )
            })?;
        }
        let chain = certificates("peer-tls-cert", &files.cert)?;
        let key_bytes = read("peer-tls-key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
            bad(
                "peer-tls-key",
                format!(
                    "{} holds no usable PEM private key: {e}",
                    files.key.display()
                ),
            )
        })?;
        if let Some(id) = node_id
            && !binds_node(&chain[0], id)
        {
            return Err(bad(
                "peer-tls-cert",
                format!(
                    "{} does not name this node: it needs the DNS name {} (subjectAltName)",
                    files.cert.display(),
                    node_name(id)
                ),
            ));
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("peer-tls-ca", format!("{}: {e}", files.ca.display())))?;
        let key_error = |e: rustls::Error| {
            bad(
                "peer-tls-key",
                format!(
                    "{} does not go with {}: {e}",
                    files.key.display(),
                    files.cert.display()
                ),
            )
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_error)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(key_error)?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(PeerTls {
            mode: TlsMode::MutualTls,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// TLS with the certificates derived from the secrets in `path`: one
    /// secret per line, at least [`MIN_SECRET_LEN`] bytes each, at most
    /// two (the first is presented; both are accepted).
    pub fn secret(path: &Path) -> Result<PeerTls, SettingError> {
        let setting = "peer-secret-file";
        let text = read(setting, path)?;
        let text = String::from_utf8(text)
            .map_err(|_| bad(setting, format!("{} is not UTF-8 text", path.display())))?;
        let secrets: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if secrets.is_empty() || secrets.len() > 2 {
            return Err(bad(
                setting,
                format!(
                    "{} must hold one secret, or two during a rotation (one per line); it holds {}",
                    path.display(),
                    secrets.len()
                ),
            ));
        }
        if let Some(short) = secrets.iter().position(|s| s.len() < MIN_SECRET_LEN) {
            return Err(bad(
                setting,
                format!(
                    "{}: secret on line {} is shorter than {MIN_SECRET_LEN} bytes (make one with `openssl rand -hex 32`)",
                    path.display(),
                    short + 1
                ),
            ));
        }
        let derived: Vec<Derived> = secrets
            .iter()
            .map(|s| Derived::from_secret(s.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(setting, format!("{}: {e}", path.display())))?;
        Ok(PeerTls::from_derived(&derived))
    }

    fn from_derived(derived: &[Derived]) -> PeerTls {
        let provider = provider();
        let accepted: Vec<CertificateDer<'static>> =
            derived.iter().map(|d| d.cert.clone()).collect();
        let verifier = Arc::new(SecretVerifier {
            accepted,
            algorithms: provider.signature_verification_algorithms,
        });
        let own = &derived[0];
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(vec![own.cert.clone()], own.key.clone_key())
            .expect("a derived key goes with its certificate");
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![own.cert.clone()], own.key.clone_key())
            .expect("a derived key goes with its certificate");
        client.alpn_protocols = vec![b"h2".to_vec()];
        PeerTls {
            mode: TlsMode::Secret,
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}

/// True when `cert` names node `id` (a DNS name `geosync-node-<id>`).
pub fn binds_node(cert: &CertificateDer<'_>, id: u32) -> bool {
    binds_node_der(cert.as_ref(), id)
}

/// [`binds_node`] for a certificate's DER bytes as received (untrusted:
/// anything that is not a certificate names no node).
pub fn binds_node_der(der: &[u8], id: u32) -> bool {
    let cert = CertificateDer::from(der);
    let Ok(ee) = webpki::EndEntityCert::try_from(&cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The key and certificate every holder of one secret derives alike.
struct Derived {
    key: PrivateKeyDer<'static>,
    cert: CertificateDer<'static>,
}

impl Derived {
    fn from_secret(secret: &[u8]) -> Result<Derived, String> {
        // A 32-byte Ed25519 seed: HMAC-SHA256 of a fixed label under the
        // secret (the secret is the HMAC key, so its entropy is what counts).
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let seed = ring::hmac::sign(&mac, b"geosync peer link key v1");
        // PKCS#8 v1 of an Ed25519 private key: a fixed prefix, then the seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(seed.as_ref());
        let key_pair = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(vec!["geosync-mesh".to_string()])
            .map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "geosync mesh secret");
        // Fixed dates and a serial taken from the key: the same secret
        // makes the same certificate, byte for byte, on every agent.
        let cert = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
        Ok(Derived {
            key: PrivateKeyDer::try_from(pkcs8).map_err(|e| e.to_string())?,
            cert: cert.der().clone(),
        })
    }
}

/// Compares without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts exactly the certificates derived from the mesh secrets, on both
/// ends of a link; rustls then checks the handshake signature with the
/// certificate's key, which only a holder of the secret has.
#[derive(Debug)]
struct SecretVerifier {
    accepted: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SecretVerifier {
    fn known(&self, cert: &CertificateDer<'_>) -> bool {
        // Every accepted certificate is compared, whichever matches.
        self.accepted
            .iter()
            .fold(false, |found, a| same_bytes(a, cert) | found)
    }
}

impl SecretVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.known(cert) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

/// The handshake-signature checks both verifier traits ask for: rustls
/// verifies the signature with the presented certificate's own key.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for SecretVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for SecretVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    signature_checks!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_makes_one_certificate_everywhere() {
        let a = Derived::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let b = Derived::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let c = Derived::from_secret(b"0123456789abcdef0123456789abcdeX").unwrap();
        assert_eq!(
            a.cert, b.cert,
            "two agents with one secret present the same certificate"
        );
        assert_ne!(a.cert, c.cert);
    }

    #[test]
    fn the_verifier_knows_only_the_secrets_certificates() {
        let a = Derived::from_secret(&[1u8; 32]).unwrap();
        let b = Derived::from_secret(&[2u8; 32]).unwrap();
        let c = Derived::from_secret(&[3u8; 32]).unwrap();
        let v = SecretVerifier {
            accepted: vec![a.cert.clone(), b.cert.clone()],
            algorithms: provider().signature_verification_algorithms,
        };
        assert!(v.known(&a.cert) && v.known(&b.cert));
        assert!(!v.known(&c.cert));
    }

    #[test]
    fn same_bytes_compares_whole_slices() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
    }
}
