//! Dialing a peer: one HTTP/2 connection with keepalive pings, so a dead
//! link is noticed within seconds, over TLS when the links use it (the
//! handshake is ours: tonic is built without TLS, decision 011).

use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::security::PeerAuth;

/// Time between HTTP/2 pings on an idle or busy link.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A ping not answered within this ends the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a peer could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The peer URL is not usable.
    #[error("peer URL {url:?}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Connecting failed (TCP, TLS or HTTP/2).
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
}

/// Opens a channel to `peer` (`http://host:port`, or `https://` with TLS).
pub async fn dial(peer: &str, auth: &PeerAuth) -> Result<Channel, DialError> {
    let bad = |why: String| DialError::Url {
        url: peer.to_string(),
        why,
    };
    let uri: Uri = peer.parse().map_err(|e| bad(format!("{e}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad("no host:port".into()))?
        .clone();
    // tonic dials http://; TLS, when used, is done by the connector below.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let Some(tls) = auth.tls() else {
        return Ok(endpoint.connect().await?);
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| bad(format!("{host:?} is not a server name: {e}")))?;
    let connector = TlsConnector::from(tls.client.clone());
    let addr = authority.to_string();
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
        async move {
            let tcp = TcpStream::connect(addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector(connect).await?)
}
