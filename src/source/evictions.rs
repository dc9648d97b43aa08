//! Evictions told from deletes (decision 016).
//!
//! Redis replicates a key it evicts for memory as a `DEL` (or `UNLINK`),
//! exactly like a client's delete. With `--evictions local` a region's
//! evictions must not delete the key in the other regions, so each `DEL`
//! of the stream is matched against the `evicted` keyspace events of the
//! same Redis.
//!
//! The two arrive on different connections, so they are put in one order
//! with ticks: this agent publishes `PUBLISH __geosync:tick <session>:<n>`,
//! which Redis both delivers to the subscriber (after every event sent
//! before it) and replicates into the stream (after every command
//! propagated before it). The stream between two ticks is an epoch; the
//! events the subscriber received between the same two ticks are that
//! epoch's evictions. The tailer holds what it reads in an epoch until the
//! epoch's closing tick arrives, then drops, from the deletes it holds,
//! the keys Redis evicted in that epoch, and passes the rest on in order.
//!
//! Within one epoch, a key deleted by a client and also evicted (written
//! again in between) is ambiguous: its deletes all travel
//! (`geosync_evictions_total{outcome="ambiguous"}`). Ticks are published
//! only while the tailer holds something, at least
//! 2 ms apart, so epochs are short and nothing waits long.
//!
//! Only regions that can evict are watched: a `volatile-*` policy with a
//! `maxmemory` (the `allkeys-*` policies are refused at start). Nothing
//! else pays for it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::Evictions;
use super::error::TailError;
use crate::base::event::TailEvent;
use crate::ops::metrics::Metrics;
use crate::stamp::spool::SpoolTx;

/// The channel this agent's ticks are published on.
pub const TICK_CHANNEL: &str = "__geosync:tick";

/// Least time between two ticks.
const TICK_SPACING: Duration = Duration::from_millis(2);

/// Longest wait for the subscriber to receive a tick the stream already
/// delivered; past it the session ends (and starts again).
const TICK_WAIT: Duration = Duration::from_secs(5);

/// Longest time the tailer holds events waiting for a tick; past it the
/// session ends.
const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// What the subscriber received, in Redis's order.
#[derive(Default)]
struct Seen {
    /// This session's last tick received (0: none yet).
    tick: u64,
    /// Keys evicted after each tick, by that tick.
    evicted: BTreeMap<u64, Vec<(u32, Bytes)>>,
    /// Why the subscription or the ticks stopped, if they did.
    ended: Option<String>,
}

struct Shared {
    seen: Mutex<Seen>,
    /// The subscriber received something.
    changed: Notify,
    /// The tailer holds events: a tick is wanted.
    want: Notify,
}

/// Whether the local Redis can evict keys, and so whether to watch it:
/// a `volatile-*` policy with a `maxmemory`.
pub async fn can_evict<C: redis::aio::ConnectionLike>(conn: &mut C) -> redis::RedisResult<bool> {
    let policy: (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await?;
    let limit: (String, u64) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query_async(conn)
        .await?;
    Ok(policy.1.starts_with("volatile-") && limit.1 > 0)
}

/// Makes sure Redis sends `evicted` keyevent notifications
/// (`notify-keyspace-events` with `E` and `e`, or `A`), turning them on
/// when this user may (`CONFIG SET`); an error names what to set.
pub async fn ensure_notifications<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> Result<(), String> {
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await
        .map_err(|e| format!("CONFIG GET notify-keyspace-events: {e}"))?;
    if notifies_evictions(&flags) {
        return Ok(());
    }
    let mut wanted = flags.clone();
    for c in ['E', 'e'] {
        if !wanted.contains(c) {
            wanted.push(c);
        }
    }
    let set: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(conn)
        .await;
    match set {
        Ok(()) => {
            warn!(
                before = %flags,
                now = %wanted,
                "notify-keyspace-events turned on for evicted keys, so that evictions stay in this region (--evictions local)"
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "this Redis may evict keys (a volatile-* maxmemory-policy and a maxmemory), and \
             telling its evictions from deletes needs its evicted-key events, which are off \
             (notify-keyspace-events is {flags:?}) and could not be turned on ({e}): set \
             `CONFIG SET notify-keyspace-events {wanted}`, or run with --evictions global to \
             delete evicted keys in every region"
        )),
    }
}

/// True when `notify-keyspace-events` flags send `evicted` keyevents.
fn notifies_evictions(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('e') || flags.contains('A'))
}

/// Where the tailer's events go: straight to the spool, or, while
/// evictions are watched, held per epoch and passed on once the epoch's
/// evictions are known.
pub(super) struct Outlet {
    watch: Option<Watch>,
}

struct Watch {
    shared: Arc<Shared>,
    /// Tells this session's ticks from an earlier session's, still in the
    /// backlog.
    session: String,
    task: tokio::task::JoinHandle<()>,
    /// The tick that opened the epoch the stream is in; None before this
    /// session's first tick (what comes before is not watched).
    epoch: Option<u64>,
    /// The epoch's events, each with the keys only a `DEL`/`UNLINK` wrote
    /// in it.
    held: Vec<(TailEvent, Vec<(u32, Bytes)>)>,
    /// Per key, the deletes of the epoch.
    deletes: HashMap<(u32, Bytes), u32>,
    held_since: Option<Instant>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Outlet {
    /// Events go straight to the spool.
    pub(super) fn direct() -> Self {
        Outlet { watch: None }
    }

    /// For one replication session: watches the evictions of the Redis
    /// `client` reaches when `mode` keeps them local and the Redis can
    /// evict (asked on `side`); else [`Outlet::direct`].
    pub(super) async fn for_session<C: redis::aio::ConnectionLike>(
        mode: Evictions,
        client: &redis::Client,
        side: &mut C,
        databases: u32,
    ) -> Result<Self, TailError> {
        if mode == Evictions::Global || !can_evict(side).await? {
            return Ok(Outlet::direct());
        }
        ensure_notifications(side)
            .await
            .map_err(TailError::Evictions)?;
        let mut pubsub = client.get_async_pubsub().await?;
        let mut channels: Vec<String> = (0..databases)
            .map(|db| format!("__keyevent@{db}__:evicted"))
            .collect();
        channels.push(TICK_CHANNEL.to_string());
        pubsub.subscribe(channels).await?;
        let session = format!("{:016x}", rand_u64());
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen::default()),
            changed: Notify::new(),
            want: Notify::new(),
        });
        let publisher = crate::store::locator::connect(client).await?;
        let task = tokio::spawn(run(pubsub, publisher, shared.clone(), session.clone()));
        info!("evictions are watched: an evicted key stays in the other regions");
        Ok(Outlet {
            watch: Some(Watch {
                shared,
                session,
                task,
                epoch: None,
                held: Vec::new(),
                deletes: HashMap::new(),
                held_since: None,
            }),
        })
    }

    /// Asks for a tick: this session's first one, published after the
    /// stream's start, opens the first watched epoch.
    pub(super) fn ask_tick(&self) {
        if let Some(w) = &self.watch {
            w.shared.want.notify_one();
        }
    }

    /// Passes `ev` on (or holds it).
    pub(super) async fn send(&mut self, ev: TailEvent, tx: &SpoolTx) -> Result<(), TailError> {
        self.send_with(ev, Vec::new(), tx).await
    }

    /// Passes `ev` on (or holds it); `deleted` are the keys of it that only
    /// a `DEL` or `UNLINK` wrote, which an eviction may have sent.
    pub(super) async fn send_with(
        &mut self,
        ev: TailEvent,
        deleted: Vec<(u32, Bytes)>,
        tx: &SpoolTx,
    ) -> Result<(), TailError> {
        match &mut self.watch {
            Some(w) if w.epoch.is_some() => {
                for k in &deleted {
                    *w.deletes.entry(k.clone()).or_default() += 1;
                }
                w.held.push((ev, deleted));
                w.held_since.get_or_insert_with(Instant::now);
                w.shared.want.notify_one();
                Ok(())
            }
            Some(w) => {
                // Not watched until this session's first tick comes
                // through the stream: ask for it, and tell the stamper
                // these deletes may be evictions.
                w.shared.want.notify_one();
                tx.send(ev).await.map_err(TailError::from)?;
                if deleted.is_empty() {
                    return Ok(());
                }
                tx.send(TailEvent::Unwatched(deleted))
                    .await
                    .map_err(TailError::from)
            }
            None => tx.send(ev).await.map_err(TailError::from),
        }
    }

    /// A `PUBLISH` on [`TICK_CHANNEL`] read from the stream: this
    /// session's tick closes the epoch; what was held in it is passed on,
    /// without the deletes Redis's evictions sent.
    pub(super) async fn tick(
        &mut self,
        payload: &[u8],
        tx: &SpoolTx,
        metrics: &Metrics,
    ) -> Result<(), TailError> {
        let Some(w) = &mut self.watch else {
            return Ok(());
        };
        let Some(n) = tick_number(payload, &w.session) else {
            return Ok(());
        };
        // This session's first tick opens the first watched epoch.
        if w.epoch.replace(n).is_none() {
            return Ok(());
        }
        let evicted = w.evictions_until(n).await?;
        let mut count: HashMap<(u32, Bytes), u32> = HashMap::new();
        for k in evicted {
            *count.entry(k).or_default() += 1;
        }
        let deletes = std::mem::take(&mut w.deletes);
        let mut local = HashSet::new();
        for (k, e) in count {
            let d = deletes.get(&k).copied().unwrap_or(0);
            let outcome = if e == d {
                local.insert(k);
                "local"
            } else if d == 0 {
                // Evicted, yet no delete of it in the epoch: cannot be
                // with Redis's order; counted, nothing to hold back.
                "unmatched"
            } else {
                "ambiguous"
            };
            metrics
                .evictions
                .get_or_create(&Metrics::outcome(outcome))
                .inc_by(u64::from(e));
        }
        w.held_since = None;
        for (ev, deleted) in std::mem::take(&mut w.held) {
            let ev = match ev {
                TailEvent::Dirty(keys) if !local.is_empty() => {
                    let keys: Vec<(u32, Bytes)> = keys
                        .into_iter()
                        .filter(|k| !(local.contains(k) && deleted.contains(k)))
                        .collect();
                    if keys.is_empty() {
                        continue;
                    }
                    TailEvent::Dirty(keys)
                }
                ev => ev,
            };
            tx.send(ev).await.map_err(TailError::from)?;
        }
        Ok(())
    }

    /// An error once events were held too long without a tick (the ticks
    /// or the subscription stopped).
    pub(super) fn check(&self) -> Result<(), TailError> {
        let Some(w) = &self.watch else {
            return Ok(());
        };
        if w.epoch.is_none() {
            w.shared.want.notify_one();
        }
        if let Some(why) = &w.shared.seen.lock().expect("seen lock").ended {
            return Err(TailError::Evictions(format!(
                "watching evictions stopped: {why}"
            )));
        }
        if w.held_since.is_some_and(|t| t.elapsed() > HOLD_LIMIT) {
            return Err(TailError::Evictions(format!(
                "no eviction tick came back through the stream within {HOLD_LIMIT:?}"
            )));
        }
        Ok(())
    }
}

impl Watch {
    /// Waits until the subscriber received tick `n`, and takes the keys
    /// evicted before it.
    async fn evictions_until(&mut self, n: u64) -> Result<Vec<(u32, Bytes)>, TailError> {
        let deadline = tokio::time::Instant::now() + TICK_WAIT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut seen = self.shared.seen.lock().expect("seen lock");
                if seen.tick >= n {
                    let later = seen.evicted.split_off(&n);
                    let before = std::mem::replace(&mut seen.evicted, later);
                    return Ok(before.into_values().flatten().collect());
                }
                if let Some(why) = &seen.ended {
                    return Err(TailError::Evictions(format!(
                        "watching evictions stopped: {why}"
                    )));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(TailError::Evictions(format!(
                    "the eviction subscriber did not receive tick {n} within {TICK_WAIT:?}"
                )));
            }
        }
    }
}

/// The subscriber and the ticker of one session.
async fn run(
    pubsub: redis::aio::PubSub,
    mut publisher: redis::aio::MultiplexedConnection,
    shared: Arc<Shared>,
    session: String,
) {
    let end = |why: String| {
        shared.seen.lock().expect("seen lock").ended = Some(why);
        shared.changed.notify_waiters();
    };
    let mut messages = pubsub.into_on_message();
    let mut next = 1u64;
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    end("the subscription connection closed".into());
                    return;
                };
                let channel = msg.get_channel_name();
                let payload = msg.get_payload_bytes();
                let mut seen = shared.seen.lock().expect("seen lock");
                if channel == TICK_CHANNEL {
                    if let Some(n) = tick_number(payload, &session) {
                        seen.tick = n;
                    }
                } else if seen.tick > 0
                    && let Some(db) = evicted_db(channel)
                {
                    let tick = seen.tick;
                    seen.evicted
                        .entry(tick)
                        .or_default()
                        .push((db, Bytes::copy_from_slice(payload)));
                }
                drop(seen);
                shared.changed.notify_waiters();
            }
            _ = shared.want.notified() => {
                let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(TICK_CHANNEL)
                    .arg(format!("{session}:{next}"))
                    .query_async(&mut publisher)
                    .await;
                if let Err(e) = published {
                    end(format!("publishing a tick failed: {e}"));
                    return;
                }
                next += 1;
                tokio::time::sleep(TICK_SPACING).await;
            }
        }
    }
}

/// The number of a tick of `session` (`<session>:<n>`); None for another
/// session's.
fn tick_number(payload: &[u8], session: &str) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix(session)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

/// The database of an `__keyevent@<db>__:evicted` channel.
fn evicted_db(channel: &str) -> Option<u32> {
    channel
        .strip_prefix("__keyevent@")?
        .strip_suffix("__:evicted")?
        .parse()
        .ok()
}

/// A number unlikely to repeat across sessions.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_that_send_evicted_keyevents() {
        assert!(notifies_evictions("Ee"));
        assert!(notifies_evictions("KEA"));
        assert!(notifies_evictions("xeE"));
        assert!(!notifies_evictions(""));
        assert!(!notifies_evictions("Ex"));
        assert!(!notifies_evictions("Ke"));
    }

    #[test]
    fn evicted_channels_name_their_database() {
        assert_eq!(evicted_db("__keyevent@0__:evicted"), Some(0));
        assert_eq!(evicted_db("__keyevent@15__:evicted"), Some(15));
        assert_eq!(evicted_db("__keyevent@1__:expired"), None);
        assert_eq!(evicted_db(TICK_CHANNEL), None);
    }
}
