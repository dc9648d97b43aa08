//! The session's side connection to the master: the server's version
//! (`HELLO`), the key specs (`COMMAND`), `ROLE`, a resync's own records (`SELECT`, `SCAN`, `HSCAN`),
//! and the written keys of commands the key specs cannot resolve (`COMMAND
//! GETKEYSANDFLAGS`, `stream.rs`).
//!
//! The server may close it at any time (its `timeout` setting, `CLIENT
//! KILL`) while the replication link goes on (`timeout` spares replicas).
//! So a command that fails on a closed connection is sent again, once, on a
//! fresh connection from the same client; the database selected before is
//! selected again first. Every command sent here only reads, so sending one
//! twice is harmless. A second connection failure is the caller's: the
//! stream ends the session rather than drop a command's change.

use futures::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tracing::info;

use crate::store::locator::{self, is_connection_error};

/// A connection to the master that connects again once when it was closed.
pub(super) struct Side {
    client: redis::Client,
    conn: MultiplexedConnection,
    /// The database last selected with `SELECT` (None: the client's).
    db: Option<i64>,
}

impl Side {
    /// Connects to the master `client` points at.
    pub(super) async fn connect(client: &redis::Client) -> RedisResult<Side> {
        Ok(Side {
            client: client.clone(),
            conn: locator::connect(client).await?,
            db: None,
        })
    }

    /// Replaces the connection after `error` closed it, selecting the
    /// database selected before.
    async fn reconnect(&mut self, error: &RedisError) -> RedisResult<()> {
        info!(%error, "the side connection to the local redis failed; connecting again");
        let mut conn = locator::connect(&self.client).await?;
        if let Some(db) = self.db {
            redis::cmd("SELECT").arg(db).exec_async(&mut conn).await?;
        }
        self.conn = conn;
        Ok(())
    }
}

/// The database a `SELECT db` command selects; None for other commands.
fn selects(cmd: &Cmd) -> Option<i64> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(a) => Some(a),
        _ => None,
    });
    let name = args.next()??;
    if !name.eq_ignore_ascii_case(b"SELECT") {
        return None;
    }
    std::str::from_utf8(args.next()??).ok()?.parse().ok()
}

impl ConnectionLike for Side {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let reply = match self.conn.req_packed_command(cmd).await {
                Err(e) if is_connection_error(&e) => {
                    self.reconnect(&e).await?;
                    self.conn.req_packed_command(cmd).await
                }
                r => r,
            }?;
            if let Some(db) = selects(cmd) {
                self.db = Some(db);
            }
            Ok(reply)
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // Nothing pipelines here (a SELECT in a pipeline would not be seen).
        async move {
            match self.conn.req_packed_commands(pipeline, offset, count).await {
                Err(e) if is_connection_error(&e) => {
                    self.reconnect(&e).await?;
                    self.conn.req_packed_commands(pipeline, offset, count).await
                }
                r => r,
            }
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.db.unwrap_or_else(|| self.conn.get_db())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_is_seen() {
        assert_eq!(selects(redis::cmd("SELECT").arg(3)), Some(3));
        assert_eq!(selects(redis::cmd("select").arg("12")), Some(12));
        assert_eq!(selects(redis::cmd("SELECT").arg("x")), None);
        assert_eq!(selects(&redis::cmd("SELECT")), None);
        assert_eq!(selects(redis::cmd("SCAN").arg(0)), None);
        assert_eq!(selects(redis::cmd("COMMAND").arg("GETKEYSANDFLAGS")), None);
    }
}
