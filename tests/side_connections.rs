//! The tailer's side connection to the local Redis: it asks the server
//! which keys a replicated command wrote when the key specs cannot tell
//! (`COMMAND GETKEYSANDFLAGS`, e.g. for `SORT ... STORE`). A server that
//! closes it (`CLIENT KILL`, its `timeout` setting) must not make the agent
//! drop those commands' changes: every `SORT ... STORE` destination reaches
//! the peer.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// One line of `CLIENT LIST` per connection: its id and its last command.
fn clients(redis: &Redis) -> Vec<(u64, String)> {
    clients_on(&mut redis.conn())
}

/// [`clients`] over a given connection.
fn clients_on(c: &mut redis::Connection) -> Vec<(u64, String)> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(c).unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_string)
            };
            Some((field("id")?.parse().ok()?, field("cmd").unwrap_or_default()))
        })
        .collect()
}

/// The agent's side connections: the connections whose last command was
/// `COMMAND GETKEYSANDFLAGS` (nothing else here asks it).
fn side_connections(redis: &Redis) -> Vec<u64> {
    clients(redis)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("getkeysandflags"))
        .map(|(id, _)| id)
        .collect()
}

/// `SORT src STORE dst` and a plain SET, with values that tell `i` apart.
fn sort_into(c: &mut redis::Connection, src: &str, dst: &str, i: usize) {
    let _: () = c.rpush(src, i).unwrap();
    let _: () = c.ltrim(src, -5, -1).unwrap();
    let _: usize = redis::cmd("SORT")
        .arg(src)
        .arg("STORE")
        .arg(dst)
        .query(c)
        .unwrap();
    let _: () = c.set(format!("plain:{}", i % 100), i).unwrap();
}

/// The side connection is killed again and again while a writer runs
/// `SORT ... STORE` into region 1: every destination reaches region 2 with
/// its last value, and no command is counted as one whose keys are unknown.
#[test]
fn killed_side_connections_lose_no_sort_store() {
    /// Kills to see before the writer stops (it stops after `WRITE_FOR`
    /// anyway: without reconnecting, the first kill is the last).
    const KILLS: usize = 10;
    const WRITE_FOR: Duration = Duration::from_secs(15);
    let mesh = Mesh::start(2);
    let r1 = &mesh.regions[0].redis;
    let kills = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let mut writes = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            poll(WRITE_FOR + SETTLE, || {
                for id in side_connections(r1) {
                    let killed: usize = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(id)
                        .query(&mut r1.conn())
                        .unwrap();
                    kills.fetch_add(killed, Ordering::SeqCst);
                }
                done.load(Ordering::SeqCst)
            });
        });
        let mut c = r1.conn();
        let started = Instant::now();
        while kills.load(Ordering::SeqCst) < KILLS && started.elapsed() < WRITE_FOR {
            sort_into(
                &mut c,
                &format!("src:{}", writes % 10),
                &format!("dst:{}", writes % 300),
                writes,
            );
            writes += 1;
        }
        done.store(true, Ordering::SeqCst);
    });
    mesh.wait_converged(&[0], SETTLE);
    let kills = kills.into_inner();
    println!("{kills} kills of the side connection during {writes} writes");
    assert!(
        kills >= KILLS,
        "the side connection came back after each kill: {kills} kills in {writes} writes"
    );
    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_unsupported_commands_total"),
        0.0,
        "no command was given up on"
    );
}

/// The server closes the idle side connection (`timeout 1`); the next
/// `SORT ... STORE` still reaches region 2.
#[test]
fn sort_store_after_the_idle_side_connection_timed_out_reaches_the_peer() {
    let mesh = Mesh::start_with(2, &["--timeout", "1"]);
    let r1 = &mesh.regions[0].redis;
    // The server closes idle clients, the test's own too: a new
    // connection for each step.
    sort_into(&mut r1.conn(), "src", "dst:0", 0);
    mesh.wait_converged(&[0], SETTLE);
    // Nothing else asks the side connection anything: it stays listed with
    // that last command until the server closes it (maybe already).
    wait_until(
        "the server to close the idle side connection",
        SETTLE,
        || side_connections(r1).is_empty(),
    );
    sort_into(&mut r1.conn(), "src", "dst:1", 1);
    mesh.wait_converged(&[0], SETTLE);
    let dst: Vec<String> = mesh.regions[1].redis.conn().lrange("dst:1", 0, -1).unwrap();
    assert_eq!(dst, ["0", "1"]);
    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_unsupported_commands_total"),
        0.0,
        "no command was given up on"
    );
}

/// The side connection is killed and cannot come back (the server takes no
/// more clients): the session ends instead of dropping the `SORT ...
/// STORE` it was asked about, and the next one continues the stream
/// (`PSYNC`, no full resync) from before that command, so its destination
/// reaches region 2.
#[test]
fn a_side_connection_that_cannot_come_back_ends_the_session_and_loses_nothing() {
    let mesh = Mesh::start(2);
    let r1 = &mesh.regions[0].redis;
    let agent = &mesh.regions[0].agent;
    // The one connection the test keeps while the server takes no more.
    let mut c = r1.conn();
    sort_into(&mut c, "src", "dst:0", 0);
    mesh.wait_converged(&[0], SETTLE);
    let side: Vec<u64> = clients_on(&mut c)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("getkeysandflags"))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(side.len(), 1, "one side connection: {:?}", clients(r1));
    // The recorded position is past what came before: resuming from it
    // reads the SORT below only if the session ended before it counted.
    let before = r1.master_repl_offset();
    wait_until("the position to be recorded", SETTLE, || {
        agent.recorded_offset() >= before
    });
    let ended = agent.metric("geosync_replication_sessions_ended_total");
    let full = agent.metric("geosync_sync_full_total");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let _: usize = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(side[0])
        .query(&mut c)
        .unwrap();
    sort_into(&mut c, "src", "dst:1", 1);
    // The session ends, and the next one cannot start yet (its own new
    // connections are refused too): the agent keeps trying.
    wait_until("two replication sessions to end", SETTLE, || {
        agent.metric("geosync_replication_sessions_ended_total") >= ended + 2.0
    });
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query(&mut c)
        .unwrap();
    mesh.wait_converged(&[0], SETTLE);
    let dst: Vec<String> = mesh.regions[1].redis.conn().lrange("dst:1", 0, -1).unwrap();
    assert_eq!(dst, ["0", "1"]);
    assert_eq!(
        agent.metric("geosync_sync_full_total"),
        full,
        "the stream was continued, not sent again whole"
    );
    assert_eq!(agent.metric("geosync_unsupported_commands_total"), 0.0);
}
