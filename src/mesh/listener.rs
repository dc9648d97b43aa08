//! The peer port: accepts connections, bounds them per remote address and
//! in all, completes TLS when the links use it, checks that what arrives is
//! HTTP/2, and only then hands the connection to the gRPC server.
//!
//! Whatever is refused here is counted in
//! `geosync_peer_refused_total{reason}` and logged with its remote address
//! (at most one line per address and reason every ten seconds, so a flood
//! does not flood the log), and the agent goes on serving its peers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::security::PeerAuth;
use crate::ops::metrics::Metrics;

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds on the peer port.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections from one remote address.
    pub per_address: usize,
    /// Open connections in all.
    pub total: usize,
    /// Time from accept to a complete TLS handshake and HTTP/2 preface.
    pub handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_address: 16,
            total: 256,
            handshake: Duration::from_secs(10),
        }
    }
}

/// Who is on the other end of a connection, as the gRPC handlers see it
/// (a request extension).
#[derive(Clone, Debug)]
pub struct PeerConn {
    /// The remote address.
    pub remote: SocketAddr,
    /// The certificate the peer presented (TLS links only).
    pub cert: Option<Arc<CertificateDer<'static>>>,
}

/// Counts refusals and logs them, a line per address and reason at most
/// every ten seconds.
#[derive(Clone)]
pub struct Refusals {
    metrics: Arc<Metrics>,
    logged: Arc<Mutex<HashMap<(IpAddr, &'static str), Instant>>>,
}

impl Refusals {
    /// Refusals counted into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Refusals {
            metrics,
            logged: Default::default(),
        }
    }

    /// Counts one refusal of `remote` for `reason`, and logs it.
    pub fn refuse(&self, remote: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.metrics
            .peer_refused
            .get_or_create(&Metrics::reason(reason))
            .inc();
        let now = Instant::now();
        let mut logged = self.logged.lock().expect("refusal log lock");
        let key = (remote.ip(), reason);
        let quiet = logged
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(10));
        if !quiet {
            if logged.len() > 4096 {
                logged.retain(|_, at| now.duration_since(*at) < Duration::from_secs(10));
            }
            logged.insert(key, now);
            drop(logged);
            warn!(%remote, reason, detail = %detail, "refused a connection or call on the peer port");
        }
    }
}

impl Refusals {
    /// Counts and logs a refused call; `conn` names the caller when known.
    pub fn refuse_call(
        &self,
        conn: Option<&PeerConn>,
        reason: &'static str,
        detail: &dyn std::fmt::Display,
    ) {
        match conn {
            Some(c) => self.refuse(c.remote, reason, detail),
            None => {
                self.metrics
                    .peer_refused
                    .get_or_create(&Metrics::reason(reason))
                    .inc();
                warn!(reason, detail = %detail, "refused a call on the peer port");
            }
        }
    }
}

/// Open connections, per remote address and in all.
#[derive(Default)]
struct Open {
    per_address: HashMap<IpAddr, usize>,
    total: usize,
}

/// Releases a connection's place when the connection is dropped.
struct Place {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("open connections lock");
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

/// The stream of a connection: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, handed to the gRPC server: the preface already
/// read is given back first.
pub struct PeerIo {
    stream: Stream,
    preface: Option<usize>,
    info: PeerConn,
    _place: Place,
}

impl tonic::transport::server::Connected for PeerIo {
    type ConnectInfo = PeerConn;

    fn connect_info(&self) -> PeerConn {
        self.info.clone()
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(at) = self.preface {
            let n = (PREFACE.len() - at).min(buf.remaining());
            buf.put_slice(&PREFACE[at..at + n]);
            self.preface = (at + n < PREFACE.len()).then_some(at + n);
            return Poll::Ready(Ok(()));
        }
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener` until shutdown; yields those that
/// passed the bounds, TLS and the HTTP/2 preface.
pub fn incoming(
    listener: TcpListener,
    auth: &PeerAuth,
    limits: Limits,
    refusals: Refusals,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<PeerIo>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = auth.tls().map(|t| TlsAcceptor::from(t.server.clone()));
    let open: Arc<Mutex<Open>> = Default::default();
    tokio::spawn(async move {
        loop {
            let (socket, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a
                        // little rather than spin.
                        warn!(error = %e, "cannot accept a peer connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let place = {
                let mut o = open.lock().expect("open connections lock");
                let here = o.per_address.get(&remote.ip()).copied().unwrap_or(0);
                if here >= limits.per_address || o.total >= limits.total {
                    drop(o);
                    refusals.refuse(
                        remote,
                        "too_many_connections",
                        &format!(
                            "more than {} connections from this address or {} in all",
                            limits.per_address, limits.total
                        ),
                    );
                    continue;
                }
                *o.per_address.entry(remote.ip()).or_default() += 1;
                o.total += 1;
                Place {
                    open: open.clone(),
                    ip: remote.ip(),
                }
            };
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let ready =
                    tokio::time::timeout(limits.handshake, open_connection(socket, acceptor)).await;
                match ready {
                    Ok(Ok((stream, cert))) => {
                        let io = PeerIo {
                            stream,
                            preface: Some(0),
                            info: PeerConn { remote, cert },
                            _place: place,
                        };
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err((reason, detail))) => refusals.refuse(remote, reason, &detail),
                    Err(_) => refusals.refuse(
                        remote,
                        "handshake_timeout",
                        &format!(
                            "no TLS handshake and HTTP/2 preface within {:?}",
                            limits.handshake
                        ),
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

type Opened = (Stream, Option<Arc<CertificateDer<'static>>>);

/// TLS (when configured), then the HTTP/2 preface.
async fn open_connection(
    socket: TcpStream,
    acceptor: Option<TlsAcceptor>,
) -> Result<Opened, (&'static str, String)> {
    let _ = socket.set_nodelay(true);
    let (mut stream, cert) = match acceptor {
        None => (Stream::Plain(socket), None),
        Some(acceptor) => {
            let tls = acceptor
                .accept(socket)
                .await
                .map_err(|e| ("tls", format!("TLS handshake failed: {e}")))?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.clone().into_owned()));
            (Stream::Tls(Box::new(tls)), cert)
        }
    };
    let mut first = [0u8; 24];
    let read = match &mut stream {
        Stream::Plain(s) => s.read_exact(&mut first).await,
        Stream::Tls(s) => s.read_exact(&mut first).await,
    };
    if let Err(e) = read {
        return Err((
            "not_http2",
            format!("closed before the HTTP/2 preface: {e}"),
        ));
    }
    if &first != PREFACE {
        // The first line, at most 16 bytes of it, says what it was.
        let line = first.iter().position(|b| *b == b'\r' || *b == b'\n');
        let shown = String::from_utf8_lossy(&first[..line.unwrap_or(16).min(16)]).into_owned();
        return Err((
            "not_http2",
            format!("not an HTTP/2 gRPC connection (it began {shown:?})"),
        ));
    }
    Ok((stream, cert))
}
