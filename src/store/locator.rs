//! Finding the local master: a fixed address, or Sentinel.
//!
//! With `--sentinel` and `--master-name`, every new connection asks the
//! sentinels (in order) where the master is and checks with `ROLE` that the
//! answer is a master, so after a failover the agent follows the promoted
//! replica. Credentials and options come from `--redis`; only the address is
//! replaced.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::base::backoff::Backoff;
use crate::store::tls::{self, RedisTls};

/// Where the local master is.
#[derive(Clone, Debug)]
pub struct Locator {
    base_url: String,
    sentinels: Vec<String>,
    master_name: Option<String>,
    /// TLS to the master (and the sentinels, with `sentinel_tls`).
    tls: Option<Arc<RedisTls>>,
    sentinel_tls: bool,
    /// Bumped on every `+switch-master` for our master name.
    epoch: Arc<watch::Sender<u64>>,
}

/// The master could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// A connection or command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No sentinel named a reachable master.
    #[error("no sentinel names a master for {name:?} right now: {why}")]
    NoMaster {
        /// The master name.
        name: String,
        /// What the sentinels said.
        why: String,
    },
}

impl Locator {
    /// The master at `url`, or the one Sentinel names `master_name`.
    pub fn new(url: &str, sentinels: &[String], master_name: Option<&str>) -> Self {
        Locator {
            base_url: url.to_string(),
            sentinels: sentinels.to_vec(),
            master_name: master_name.map(str::to_string),
            tls: None,
            sentinel_tls: false,
            epoch: Arc::new(watch::channel(0).0),
        }
    }

    /// Reaches the master (a `rediss://` URL) over TLS with `tls`, and the
    /// sentinels too when `sentinels_too`.
    pub fn with_tls(mut self, tls: Arc<RedisTls>, sentinels_too: bool) -> Self {
        self.tls = Some(tls);
        self.sentinel_tls = sentinels_too;
        self
    }

    /// The TLS settings of the master, if it is reached over TLS.
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_deref()
    }

    /// A client for one sentinel.
    fn sentinel_client(&self, sentinel: &str) -> redis::RedisResult<redis::Client> {
        if self.sentinel_tls {
            tls::open(&format!("rediss://{sentinel}"), self.tls())
        } else {
            redis::Client::open(format!("redis://{sentinel}"))
        }
    }

    /// Changes whenever Sentinel announces a new master: connections made
    /// before must be dropped and made again.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Listens to every sentinel's `+switch-master` until shutdown, so the
    /// agent leaves an old master at once instead of when it is demoted.
    pub async fn watch_switches(self, shutdown: CancellationToken) {
        let Some(name) = self.master_name.clone().filter(|_| self.uses_sentinel()) else {
            return;
        };
        let tasks: Vec<_> = self
            .sentinels
            .iter()
            .map(|s| {
                tokio::spawn(
                    self.clone()
                        .listen(s.clone(), name.clone(), shutdown.clone()),
                )
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn listen(self, sentinel: String, name: String, shutdown: CancellationToken) {
        let mut backoff = Backoff::with(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let session = async {
                let client = self.sentinel_client(&sentinel)?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if payload.split(' ').next() == Some(name.as_str()) {
                        info!(%sentinel, %payload, "sentinel switched the master");
                        self.epoch.send_modify(|e| *e += 1);
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                r = session => if let Err(e) = r {
                    warn!(%sentinel, error = %e, "sentinel subscription ended");
                },
                _ = shutdown.cancelled() => return,
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// True when the master is found through Sentinel.
    pub fn uses_sentinel(&self) -> bool {
        !self.sentinels.is_empty()
    }

    /// A client for the current master.
    pub async fn master(&self) -> Result<redis::Client, LocateError> {
        let Some(name) = self.master_name.as_deref().filter(|_| self.uses_sentinel()) else {
            return Ok(tls::open(&self.base_url, self.tls())?);
        };
        let mut why = Vec::new();
        for sentinel in &self.sentinels {
            match self.ask(sentinel, name).await {
                Ok(client) => return Ok(client),
                Err(e) => why.push(format!("{sentinel}: {e}")),
            }
        }
        Err(LocateError::NoMaster {
            name: name.to_string(),
            why: why.join("; "),
        })
    }

    async fn ask(
        &self,
        sentinel: &str,
        name: &str,
    ) -> Result<redis::Client, Box<dyn std::error::Error + Send + Sync>> {
        let s = self.sentinel_client(sentinel)?;
        let mut conn =
            tokio::time::timeout(Duration::from_secs(2), s.get_multiplexed_async_connection())
                .await??;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query_async(&mut conn)
            .await?;
        let (host, port) = addr.ok_or("unknown master name")?;
        let mut url = url::Url::parse(&self.base_url)?;
        url.set_host(Some(&host))?;
        url.set_port(Some(port)).map_err(|_| "cannot set port")?;
        let client = tls::open(url.as_str(), self.tls())?;
        let mut m = tokio::time::timeout(Duration::from_secs(2), connect(&client)).await??;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut m).await?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok(client),
            _ => Err(format!("{host}:{port} is not a master (yet)").into()),
        }
    }
}

/// How long geosync waits for a reply from the local Redis. Scripts over
/// large keys take a second or two (bounded by `--max-key-elements`), longer
/// than the redis crate's default of 500 ms, and a timed-out script still
/// runs in Redis: retrying it would only queue more work behind it.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a multiplexed connection with geosync's timeouts.
pub async fn connect(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// True when `e` is the connection failing (closed, reset, timed out, a
/// reply that cannot be read, a server with no room for another client) or
/// the server not answering yet (`LOADING`), not an error reply to the
/// command: the same command on a new connection may succeed.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Parse
                | redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        )
        // Sent instead of an answer, and then the server closes.
        || e.to_string().contains("max number of clients reached")
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::RedisError;

    #[test]
    fn error_replies_are_not_connection_errors() {
        let reply = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "Invalid arguments specified for command",
        ));
        assert!(!is_connection_error(&reply));
        let closed = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_connection_error(&closed));
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_connection_error(&reset));
        let full = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "max number of clients reached".to_string(),
        ));
        assert!(is_connection_error(&full));
    }
}
