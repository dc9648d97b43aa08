//! A stage's connection to the local Redis: found through the locator,
//! dropped when Sentinel switches the master, and running pipelines of
//! script calls (loading the scripts again when the server lost them).

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value as RValue};

use super::locator::{self, Locator};
use super::lua::{Call, Script, Which};

/// Errors talking to the local Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection or command failure.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The master could not be found (Sentinel).
    #[error("{0}")]
    Locate(#[from] crate::store::locator::LocateError),
    /// A script failed: the error, and the line of the script it failed
    /// at, which names the command (Redis 7.0 does not name a command a
    /// script was refused by the ACL).
    #[error("redis: {error} (script line {line}: {text})")]
    Script {
        /// The server's error.
        error: RedisError,
        /// The line of the script body (shared library first) it names.
        line: usize,
        /// That line's text.
        text: String,
    },
    /// A script answered something this version does not understand.
    #[error("unexpected script reply: {0}")]
    BadReply(String),
}

impl StoreError {
    /// The local Redis did not reply within the response timeout
    /// ([`locator::RESPONSE_TIMEOUT`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Redis(e) if e.is_timeout())
    }

    /// The local Redis refused a write for memory (`OOM`: over its
    /// `maxmemory` with nothing it may evict).
    pub fn is_oom(&self) -> bool {
        match self {
            StoreError::Redis(e) | StoreError::Script { error: e, .. } => {
                let text = e.to_string();
                // A script's error comes wrapped (a pipeline failure).
                e.code() == Some("OOM")
                    || text.contains("\"OOM\":")
                    || text.contains("OOM command not allowed")
            }
            _ => false,
        }
    }

    /// Connection trouble is worth retrying, and so is a Redis out of
    /// memory (it frees some, or its limit is raised); a bad reply is a bug.
    pub fn is_retryable(&self) -> bool {
        let retryable = match self {
            StoreError::Redis(e) | StoreError::Script { error: e, .. } => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::ReadOnly
                        )
                    )
            }
            StoreError::Locate(_) => true,
            StoreError::BadReply(_) => false,
        };
        retryable || self.is_oom()
    }

    /// Counts a failure of `stage` ("stamp", "apply", ...) that is worth
    /// counting, and says what it means: a timeout, or a Redis out of
    /// memory.
    pub fn count(&self, stage: &str, metrics: &crate::ops::metrics::Metrics) {
        if self.is_timeout() {
            metrics.redis_timeouts.inc();
        }
        if self.is_oom() {
            metrics
                .redis_oom
                .get_or_create(&crate::ops::metrics::Metrics::stage(stage))
                .inc();
            tracing::error!(
                stage,
                "the local Redis is at its maxmemory limit and refuses geosync's writes as it refuses clients': \
                 nothing is lost, the work waits until memory is freed (raise maxmemory, or free keys)"
            );
        }
    }
}

/// A connection to the local Redis for one pipeline stage.
///
/// Each stage owns its own `Store`, so `SELECT` state is never shared.
pub struct Store {
    locator: Locator,
    epoch: tokio::sync::watch::Receiver<u64>,
    conn: Option<MultiplexedConnection>,
    /// One per [`Which`], in the order of [`Which::ALL`].
    scripts: Vec<Script>,
}

impl Store {
    /// A store for the Redis at `url` (connects lazily).
    pub fn new(locator: Locator) -> Self {
        Store {
            epoch: locator.epoch(),
            locator,
            conn: None,
            scripts: Which::ALL.iter().map(|w| Script::new(w.source())).collect(),
        }
    }

    /// The live connection, connecting if needed.
    pub async fn conn(&mut self) -> Result<&mut MultiplexedConnection, StoreError> {
        // Sentinel switched the master: leave the old one now.
        if self.epoch.has_changed().unwrap_or(false) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.epoch.mark_unchanged();
            let client = self.locator.master().await?;
            self.conn = Some(locator::connect(&client).await?);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Drops the connection after an error that means it is gone (or, with
    /// READONLY after a failover, that it reaches the old master), so that
    /// the next call connects anew.
    pub(super) fn forget_broken(&mut self, e: &RedisError) {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        {
            self.conn = None;
        }
    }

    /// Sends `pipe`, dropping the connection on connection errors so the
    /// next call reconnects.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let conn = self.conn().await?;
        let reply: Result<T, RedisError> = pipe.query_async(conn).await;
        reply.map_err(|e| {
            self.forget_broken(&e);
            e.into()
        })
    }

    pub(super) fn script(&self, which: Which) -> &Script {
        &self.scripts[which as usize]
    }

    /// Runs a pipeline of `SELECT db` + script calls (each script is also
    /// given its database as its last argument, which `scripts/lib.lua`
    /// takes off: scripts switch to the metadata database and back), loading the scripts
    /// when the server lost them (a restart), and dropping the connection on
    /// connection errors so the next call reconnects.
    pub(super) async fn run(&mut self, calls: &[Call]) -> Result<Vec<RValue>, StoreError> {
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            for (db, which, keys, args) in calls {
                let script = self.script(*which);
                pipe.cmd("SELECT").arg(*db).ignore();
                pipe.cmd("EVALSHA")
                    .arg(&script.sha)
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args)
                    .arg(*db);
            }
            let conn = self.conn().await?;
            let res: Result<Vec<RValue>, RedisError> = pipe.query_async(conn).await;
            match res {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    let bodies: Vec<String> = self.scripts.iter().map(|s| s.body.clone()).collect();
                    let conn = self.conn().await?;
                    for body in bodies {
                        let _: String = redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(body)
                            .query_async(conn)
                            .await?;
                    }
                }
                Err(e) => {
                    self.forget_broken(&e);
                    return Err(self.at_script_line(e));
                }
            }
        }
        unreachable!("second attempt returns")
    }

    /// A script's error with the script line it names (`script: <sha>, on
    /// @user_script:<line>`), or the error as it is.
    fn at_script_line(&self, error: RedisError) -> StoreError {
        let message = error.to_string();
        let sha = message
            .split("script: ")
            .nth(1)
            .and_then(|rest| rest.get(..40));
        let line = message
            .split("@user_script:")
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|n| n.parse::<usize>().ok());
        let text = sha
            .and_then(|sha| self.scripts.iter().find(|s| s.sha == sha))
            .zip(line)
            .and_then(|(script, line)| script.body.lines().nth(line.checked_sub(1)?));
        match (line, text) {
            (Some(line), Some(text)) => StoreError::Script {
                error,
                line,
                text: text.trim().to_string(),
            },
            _ => StoreError::Redis(error),
        }
    }

    /// Runs one script and returns its reply.
    pub(super) async fn run_one(
        &mut self,
        db: u32,
        which: Which,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<RValue, StoreError> {
        self.run(&[(db, which, keys, args)])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::BadReply("no reply".into()))
    }
}
