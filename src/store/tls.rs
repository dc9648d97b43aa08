//! TLS to the local Redis: one set of trust anchors and client certificate,
//! loaded and checked once at start, used by every connection the agent
//! makes to its Redis (the `redis` crate's clients and the tailer's raw
//! replication socket).
//!
//! rustls with the `ring` provider is the only TLS stack compiled in
//! (decision 007). The server's name is always verified: it is the host of
//! the URL, or of the address Sentinel names, so a certificate must carry it
//! as a DNS name or, for an address like `127.0.0.1`, as an IP address SAN.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::base::setting::{SettingError, bad};

/// Makes `ring` the process's rustls provider, so that code which asks
/// rustls for the default (the `redis` crate does) never meets an
/// ambiguous choice. Idempotent; the first provider installed stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A PEM file as read: its path (for messages) and its bytes.
#[derive(Clone)]
struct Pem {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// TLS settings of the local Redis, checked: the trust anchors (the CA
/// bundle, or the system's store), the optional client certificate and
/// key, and the rustls configuration built from them.
#[derive(Clone)]
pub struct RedisTls {
    ca: Option<Pem>,
    client: Option<(Pem, Pem)>,
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key's bytes: only where things came from.
        f.debug_struct("RedisTls")
            .field("trust", &self.trust())
            .field("client_cert", &self.client.as_ref().map(|(c, _)| &c.path))
            .finish()
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Pem, SettingError> {
    let bytes = std::fs::read(path)
        .map_err(|e| bad(setting, format!("cannot read {}: {e}", path.display())))?;
    Ok(Pem {
        path: path.to_path_buf(),
        bytes,
    })
}

fn certificates(
    setting: &'static str,
    pem: &Pem,
) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    let certs = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(
                setting,
                format!("{} is not a readable PEM file: {e}", pem.path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            setting,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                pem.path.display()
            ),
        ));
    }
    Ok(certs)
}

impl RedisTls {
    /// Reads and checks the CA bundle (`None`: the system's trust store)
    /// and the client certificate and key for mutual TLS (both or neither).
    /// Every error names the setting and the file.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<RedisTls, SettingError> {
        install_crypto_provider();
        let ca = ca.map(|p| read("redis-tls-ca", p)).transpose()?;
        // The redis crate reads the system's trust store for every TLS
        // connection, even with a CA bundle, and fails when it cannot:
        // refuse that here rather than on every connection.
        let system = rustls_native_certs::load_native_certs();
        if let Some(e) = system.errors.first() {
            let why = match &ca {
                None => "not given, and",
                Some(_) => {
                    "given, but the redis client library reads the system's trust store too, and"
                }
            };
            return Err(bad(
                "redis-tls-ca",
                format!(
                    "{why} the system's trust store cannot be read: {e} (check SSL_CERT_FILE and SSL_CERT_DIR)"
                ),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        match &ca {
            Some(pem) => {
                for (i, cert) in certificates("redis-tls-ca", pem)?.into_iter().enumerate() {
                    roots.add(cert).map_err(|e| {
                        bad(
                            "redis-tls-ca",
                            format!(
                                "certificate {} in {} is not a usable CA certificate: {e}",
                                i + 1,
                                pem.path.display()
                            ),
                        )
                    })?;
                }
            }
            None => {
                roots.add_parsable_certificates(system.certs);
            }
        }
        let client = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(bad(
                    "redis-tls-key",
                    "is required with --redis-tls-cert (the client certificate's private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "redis-tls-cert",
                    "is required with --redis-tls-key (the key's client certificate)",
                ));
            }
            (Some(c), Some(k)) => Some((read("redis-tls-cert", c)?, read("redis-tls-key", k)?)),
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots);
        let config = match &client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates("redis-tls-cert", cert)?;
                let der = PrivateKeyDer::from_pem_slice(&key.bytes).map_err(|e| {
                    bad(
                        "redis-tls-key",
                        format!(
                            "{} holds no readable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                            key.path.display()
                        ),
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => bad(
                            "redis-tls-key",
                            format!(
                                "{} is not the key of the certificate in {}: {e}",
                                key.path.display(),
                                cert.path.display()
                            ),
                        ),
                        e => {
                            let hint = if format!("{e:?}").contains("UnsupportedCertVersion") {
                                " (an X.509 v1 certificate; issue a v3 one, e.g. with a subjectAltName extension)"
                            } else {
                                ""
                            };
                            bad(
                                "redis-tls-cert",
                                format!(
                                    "{} cannot be used as a client certificate: {e}{hint}",
                                    cert.path.display()
                                ),
                            )
                        }
                    })?
            }
        };
        Ok(RedisTls {
            ca,
            client,
            config: Arc::new(config),
        })
    }

    /// What the server's certificate is checked against, for messages.
    pub fn trust(&self) -> String {
        match &self.ca {
            Some(p) => format!("CA {}", p.path.display()),
            None => "the system's trust store".into(),
        }
    }

    /// The same certificates in the form the `redis` crate takes them.
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.bytes.clone(),
                    client_key: key.bytes.clone(),
                }),
            root_cert: self.ca.as_ref().map(|p| p.bytes.clone()),
        }
    }

    /// A `redis` client for a `rediss://` URL with these certificates.
    pub fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        redis::Client::build_with_tls(url, self.certificates())
    }

    /// A TLS connection to `host:port`, the server verified as `host`.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host:?} is not a DNS name or IP address: {e}"),
            )
        })?;
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// The hint for a server that refused the client's certificate (or its lack).
const CLIENT_CERTIFICATE_HINT: &str = " (the server refused the client: it may want a client certificate its CA trusts, --redis-tls-cert and --redis-tls-key)";

impl RedisTls {
    /// What an operator should check when the first reply over a new TLS
    /// connection fails with `message`, or "". With TLS 1.3 the server
    /// checks the client's certificate after the client's handshake has
    /// ended, so a server that wants one and got none just closes the
    /// connection: the first command fails with a broken pipe or a reset.
    pub fn first_reply_hint(&self, message: &str) -> &'static str {
        let known = hint(message);
        let closed = ["broken pipe", "reset", "closed", "eof", "unexpected end"]
            .iter()
            .any(|m| message.to_lowercase().contains(m));
        if known.is_empty() && self.client.is_none() && closed {
            CLIENT_CERTIFICATE_HINT
        } else {
            known
        }
    }
}

/// What an operator should check for a TLS failure `message`, or "".
pub fn hint(message: &str) -> &'static str {
    if message.contains("UnknownIssuer") {
        " (the server's certificate is not signed by a CA in the trusted bundle: check --redis-tls-ca)"
    } else if message.contains("NotValidForName") || message.contains("not valid for name") {
        " (the server's certificate does not name the host connected to: it needs that DNS name or IP address as a subjectAltName)"
    } else if message.contains("CertificateRequired") || message.contains("HandshakeFailure") {
        CLIENT_CERTIFICATE_HINT
    } else if message.contains("Expired") || message.contains("NotValidYet") {
        " (a certificate is outside its validity period)"
    } else {
        ""
    }
}

/// A `redis` client for `url`: over TLS with `tls`, plain otherwise.
///
/// Its connections do not send `CLIENT SETINFO`: the agent's least-privilege
/// ACL user (README) cannot be granted it on servers older than 7.2, and
/// every refused command would land in the server's `ACL LOG`.
pub fn open(url: &str, tls: Option<&RedisTls>) -> redis::RedisResult<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let redis = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(redis);
    match tls {
        Some(t) => redis::Client::build_with_tls(info, t.certificates()),
        None => redis::Client::open(info),
    }
}
