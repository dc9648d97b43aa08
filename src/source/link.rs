//! The socket to the master: plain TCP or TLS, its read buffer, replies
//! and lines, and the replica's side of the handshake (`AUTH`, `PING`,
//! `REPLCONF`).

use bytes::{Buf, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::error::TailError;
use super::resp::{self, Frame};
use crate::store::tls::RedisTls;

/// Room made in the read buffer before each read of the socket.
pub(super) const READ_CHUNK: usize = 256 << 10;

/// What the replication socket is: plain TCP or TLS over it.
trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// The socket to the master, with its read buffer.
pub(super) struct Link {
    rd: ReadHalf<Box<dyn Socket>>,
    wr: WriteHalf<Box<dyn Socket>>,
    pub(super) buf: BytesMut,
}

impl Link {
    /// Connects to the master `client` points at, over TLS when its URL is
    /// `rediss://` (with the locator's TLS settings).
    pub(super) async fn connect(
        client: &redis::Client,
        tls: Option<&RedisTls>,
    ) -> Result<Link, TailError> {
        let socket: Box<dyn Socket> = match (client.get_connection_info().addr(), tls) {
            (redis::ConnectionAddr::Tcp(host, port), _) => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            (redis::ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                let stream = tls
                    .connect(host, *port)
                    .await
                    .map_err(|source| TailError::Tls {
                        addr: format!("{host}:{port}"),
                        trust: tls.trust(),
                        source,
                    })?;
                Box::new(stream)
            }
            (redis::ConnectionAddr::TcpTls { host, port, .. }, None) => {
                return Err(TailError::Protocol(format!(
                    "{host}:{port} is a rediss:// master but no TLS settings were given"
                )));
            }
            (other, _) => {
                return Err(TailError::Protocol(format!(
                    "unsupported address {other:?}"
                )));
            }
        };
        let (rd, wr) = tokio::io::split(socket);
        Ok(Link {
            rd,
            wr,
            buf: BytesMut::with_capacity(1 << 16),
        })
    }

    /// Reads more of the stream into the buffer. Cancel-safe (the stream
    /// loop selects on it).
    pub(super) async fn fill(&mut self) -> Result<(), TailError> {
        // Without room, `read_buf` reads a few bytes at a time.
        self.buf.reserve(READ_CHUNK);
        let n = self.rd.read_buf(&mut self.buf).await;
        read_result(n)
    }

    /// Reads what the socket holds right now into `dst`, without waiting:
    /// None when nothing is there yet.
    pub(super) fn read_now(&mut self, dst: &mut BytesMut) -> Option<Result<(), TailError>> {
        dst.reserve(READ_CHUNK);
        // `read_buf` is cancel-safe: dropped unfinished, it read nothing.
        self.rd.read_buf(dst).now_or_never().map(read_result)
    }

    pub(super) async fn send(&mut self, args: &[&[u8]]) -> Result<(), TailError> {
        self.wr.write_all(&resp::encode_command(args)).await?;
        // TLS may keep written records until flushed.
        self.wr.flush().await?;
        Ok(())
    }

    /// Reads one reply frame.
    pub(super) async fn reply(&mut self) -> Result<Frame, TailError> {
        loop {
            if let Some((f, used)) =
                resp::parse(&self.buf).map_err(|e| TailError::Protocol(e.to_string()))?
            {
                self.buf.advance(used);
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Sends a command and expects `+OK` (or any simple string).
    pub(super) async fn call_ok(
        &mut self,
        step: &'static str,
        args: &[&[u8]],
    ) -> Result<(), TailError> {
        self.send(args).await?;
        match self.reply().await? {
            Frame::Simple(_) => Ok(()),
            other => Err(TailError::Handshake {
                step,
                reply: format!("{other:?}"),
            }),
        }
    }

    /// Reads one CRLF-terminated line, skipping the bare `\n` keep-alives the
    /// master sends while it prepares a snapshot.
    pub(super) async fn line(&mut self) -> Result<Vec<u8>, TailError> {
        loop {
            while self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.advance(i + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(TailError::Protocol("line too long".into()));
            }
            self.fill().await?;
        }
    }
}

/// A read of the replication socket: the end of the stream is the master
/// closing the connection, also when a TLS peer went away without saying
/// so (a killed or restarted Redis sends no close_notify).
fn read_result(r: std::io::Result<usize>) -> Result<(), TailError> {
    match r {
        Ok(0) => Err(TailError::Closed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TailError::Closed),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn handshake(
    announce_port: u16,
    client: &redis::Client,
    link: &mut Link,
) -> Result<(), TailError> {
    let info = client.get_connection_info();
    let redis = info.redis_settings();
    if let Some(password) = redis.password() {
        match redis.username() {
            Some(user) => {
                link.call_ok("AUTH", &[b"AUTH", user.as_bytes(), password.as_bytes()])
                    .await?
            }
            None => {
                link.call_ok("AUTH", &[b"AUTH", password.as_bytes()])
                    .await?
            }
        }
    }
    link.call_ok("PING", &[b"PING"]).await?;
    let port = announce_port.to_string();
    link.call_ok(
        "REPLCONF listening-port",
        &[b"REPLCONF", b"listening-port", port.as_bytes()],
    )
    .await?;
    link.call_ok(
        "REPLCONF capa",
        &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
    )
    .await
}
