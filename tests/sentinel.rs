//! Following the local master through Sentinel: three real redis-sentinel
//! processes, a master with replicas, and failovers: planned (the stream
//! continues), after the backlog moved on (a full resync), and after the
//! old master died with writes its replica never got (pulled back from the
//! peer).

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Region 1 is a master with `replicas` replicas behind three sentinels;
/// region 2 is a plain Redis. Returns the servers, the sentinels and the mesh.
struct Setup {
    servers: Vec<Redis>,
    sentinels: Vec<Sentinel>,
    region1: Agent,
    region2: Region,
    _dir: tempfile::TempDir,
}

fn setup(master_args: &[&str], replicas: usize, agent_args: &[&str]) -> Setup {
    let master = Redis::start(master_args);
    let mut args: Vec<String> = master_args.iter().map(|a| a.to_string()).collect();
    args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.port.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replicas: Vec<Redis> = (0..replicas).map(|_| Redis::start(&args)).collect();
    for r in &replicas {
        wait_until("replica in sync", SETTLE, || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut r.conn())
                .unwrap();
            info.contains("master_link_status:up")
        });
    }
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(&master)).collect();
    wait_until("sentinels see every replica", SETTLE, || {
        let n: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("mymaster")
            .query(&mut sentinels[0].conn())
            .unwrap();
        n.len() == replicas.len()
    });
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2, a1, a2) = (free_port(), free_port(), free_port(), free_port());
    let agent_args: Vec<String> = agent_args.iter().map(|a| a.to_string()).collect();
    let mut extra = vec!["--master-name".to_string(), "mymaster".to_string()];
    extra.extend(agent_args.clone());
    for s in &sentinels {
        extra.push("--sentinel".into());
        extra.push(format!("127.0.0.1:{}", s.port));
    }
    // --redis only carries credentials here; the address comes from Sentinel.
    let mut region1 =
        Agent::start_with(1, "redis://127.0.0.1:1", l1, a1, &[l2], dir.path(), &extra);
    let other = Redis::start(&[]);
    let mut agent2 = Agent::start_with(2, &other.url(), l2, a2, &[l1], dir.path(), &agent_args);
    wait_until("agents ready", SETTLE, || {
        region1.is_ready() && agent2.is_ready()
    });
    Setup {
        servers: std::iter::once(master).chain(replicas).collect(),
        sentinels,
        region1,
        region2: Region {
            name: "2".into(),
            redis: other,
            agent: agent2,
        },
        _dir: dir,
    }
}

/// A replication offset from INFO, or -1 while the server cannot say (Sentinel
/// kills client connections while it reconfigures servers).
fn repl_offset(r: &Redis, field: &str) -> i64 {
    let info: Option<String> = redis::Client::open(r.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
        .ok();
    let Some(info) = info else { return -1 };
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(-1)
}

impl Setup {
    /// Waits until every server but the master on `master_port` has
    /// everything the master has.
    fn replicas_caught_up(&self, master_port: u16) {
        let master = self.servers.iter().find(|r| r.port == master_port).unwrap();
        let target = repl_offset(master, "master_repl_offset:");
        for r in self.servers.iter().filter(|r| r.port != master_port) {
            wait_until("replica caught up", SETTLE, || {
                repl_offset(r, "slave_repl_offset:") >= target
            });
        }
    }

    /// Cuts the replica off from the master on `master_port` for real
    /// (see below); a connection to it.
    fn cut_off_replica(&self, master_port: u16) -> redis::Connection {
        let replica = self.servers.iter().find(|r| r.port != master_port).unwrap();
        let mut rc = replica.conn();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("masterauth")
            .arg("not-the-password")
            .query(&mut rc)
            .unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("master")
            .query(&mut rc)
            .unwrap();
        wait_until("the replica's link to the master is down", SETTLE, || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut rc)
                .unwrap();
            info.contains("master_link_status:down")
        });
        rc
    }

    /// Kills the master on `port` and waits until Sentinel promoted another.
    fn kill_master(&mut self, port: u16) {
        let pos = self.servers.iter().position(|r| r.port == port).unwrap();
        drop(self.servers.remove(pos));
        wait_until("the replica is promoted", SETTLE, || {
            self.sentinels
                .iter()
                .all(|x| x.master().is_some_and(|p| p != port))
        });
    }

    fn master(&self) -> &Redis {
        let port = self.sentinels[0].master().unwrap();
        self.servers.iter().find(|r| r.port == port).unwrap()
    }

    /// Waits until region 2 holds `key` = `value`.
    fn wait_in_region2(&self, key: &str, value: &str) {
        let mut c = self.region2.redis.conn();
        wait_until(&format!("{key} reaches region 2"), SETTLE, || {
            c.get::<_, Option<String>>(key).unwrap().as_deref() == Some(value)
        });
    }

    /// Region 1's master and region 2 hold the same data.
    fn converged(&self) {
        let a = snapshot(&mut self.master().conn());
        let b = snapshot(&mut self.region2.redis.conn());
        let d = diff(&a, &b);
        if !d.is_empty() {
            for r in &self.servers {
                let log =
                    std::fs::read_to_string(r.dir.path().join("redis.log")).unwrap_or_default();
                eprintln!("---- redis {} log ----\n{log}", r.port);
            }
        }
        assert!(d.is_empty(), "regions differ: {d:#?}");
    }

    fn failover(&self) -> u16 {
        let old = self.sentinels[0].master().unwrap();
        // Replicas first catch up (a replica fed by a diskless sync gets the
        // stream only after its first ACK): a failover that loses writes is
        // the other test's subject.
        let offset = |r: &Redis, field: &str| -> i64 {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut r.conn())
                .unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(-1)
        };
        let master = self.servers.iter().find(|r| r.port == old).unwrap();
        let target = offset(master, "master_repl_offset:");
        for r in self.servers.iter().filter(|r| r.port != old) {
            wait_until("replica caught up", SETTLE, || {
                offset(r, "slave_repl_offset:") >= target
            });
        }
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("mymaster")
            .query(&mut self.sentinels[0].conn())
            .unwrap();
        wait_until("a replica is promoted", SETTLE, || {
            self.sentinels
                .iter()
                .all(|s| s.master().is_some_and(|p| p != old))
        });
        self.sentinels[0].master().unwrap()
    }
}

#[test]
fn a_failover_continues_the_stream_with_psync() {
    let s = setup(&[], 2, &[]);
    let _: () = s.master().conn().set("before", "1").unwrap();
    s.wait_in_region2("before", "1");
    // A planned failover: the old master stops taking writes (Sentinel's
    // hello messages included) so the promoted replica has every byte of it.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .query(&mut s.master().conn())
        .unwrap();
    let new = s.failover();
    // The promoted replica takes writes, and they reach region 2.
    let mut m = s.servers.iter().find(|r| r.port == new).unwrap().conn();
    wait_until("the new master takes writes", SETTLE, || {
        m.set::<_, _, ()>("after", "2").is_ok()
    });
    s.wait_in_region2("after", "2");
    // Writes from region 2 land on the new master.
    let _: () = s.region2.redis.conn().set("from2", "3").unwrap();
    wait_until("region 2's write reaches the new master", SETTLE, || {
        m.get::<_, Option<String>>("from2").unwrap().as_deref() == Some("3")
    });
    s.converged();
    assert_eq!(
        s.region1.metric("geosync_sync_full_total"),
        1.0,
        "only the first sync was full"
    );
    assert!(
        s.region1.metric("geosync_sync_partial_ok_total") >= 1.0,
        "the promoted replica continued the stream"
    );
    // A continued stream under the promoted replica's new replication id
    // still pulls a peer's state, once: the replica may lack the old
    // master's last writes. (A reconnect to the same master later does not.)
    assert_eq!(
        s.region1.metric("geosync_rebuilds_total"),
        1.0,
        "the promoted replica was reconciled with a peer once"
    );
}

#[test]
fn a_failover_after_the_backlog_moved_on_resyncs_fully() {
    let mut s = setup(&["--repl-backlog-size", "16kb"], 2, &[]);
    let _: () = s.master().conn().set("before", "1").unwrap();
    s.wait_in_region2("before", "1");
    s.region1.kill();
    let new = s.failover();
    let mut m = s.servers.iter().find(|r| r.port == new).unwrap().conn();
    wait_until("the new master takes writes", SETTLE, || {
        m.set::<_, _, ()>("after", "2").is_ok()
    });
    // Far more traffic than the 16 kB backlog holds. The backlog shares its
    // blocks with the replicas' output buffers, so it is trimmed only once
    // no replica still needs them: let them catch up, then write more.
    fill_past_backlog(&mut m, 0, 2000);
    s.replicas_caught_up(new);
    let filler = fill_past_backlog(&mut m, 2000, 2100);
    s.region1.restart();
    wait_until("agent 1 ready", SETTLE, || s.region1.is_ready());
    s.wait_in_region2("after", "2");
    s.wait_in_region2("filler2099", &filler);
    s.converged();
    // The restart had to resync fully and pull a peer's state (a late
    // +switch-master may add a partial resync with the same master).
    assert_eq!(
        s.region1.metric("geosync_sync_full_total"),
        1.0,
        "the backlog no longer held the position"
    );
    assert_eq!(
        s.region1.metric("geosync_rebuilds_total"),
        1.0,
        "the new master was reconciled with a peer"
    );
}

/// The failover the README's Sentinel promise is about: the old master took
/// writes that its agent stamped and shipped to region 2 but that its
/// replica never got, then it died and Sentinel promoted the replica. The
/// agent pulls region 2's state once, so the new master gets those writes
/// back (new keys, an overwrite and a delete) and both regions converge.
///
/// The replica is cut off for real: a wrong `masterauth` and a killed link
/// keep it from reconnecting, so nothing the old master writes afterwards
/// reaches it. (SIGSTOP would not do: the writes would wait in the stopped
/// replica's socket buffer and be read when it resumes.)
#[test]
fn writes_the_promoted_replica_lacks_come_back_from_a_peer() {
    let mut s = setup(&[], 1, &[]);
    let old = s.master().port;
    let mut m = s.master().conn();
    let _: () = m.set("kept", "1").unwrap();
    let _: () = m.set("overwritten", "old").unwrap();
    let _: () = m.set("deleted", "x").unwrap();
    s.wait_in_region2("deleted", "x");
    s.wait_in_region2("overwritten", "old");
    s.replicas_caught_up(old);

    let mut rc = s.cut_off_replica(old);

    // Writes only the old master (and through its agent, region 2) gets.
    let lost: Vec<String> = (0..20).map(|i| format!("lost:{i}")).collect();
    for (i, k) in lost.iter().enumerate() {
        let _: () = m.set(k, i).unwrap();
    }
    let _: () = m.hset("lost-hash", "f", "v").unwrap();
    let _: () = m.set("overwritten", "new").unwrap();
    let _: () = m.del("deleted").unwrap();
    s.wait_in_region2("lost:19", "19");
    s.wait_in_region2("overwritten", "new");
    let mut c2 = s.region2.redis.conn();
    wait_until("the delete reaches region 2", SETTLE, || {
        !c2.exists::<_, bool>("deleted").unwrap()
    });
    // The replica (serving stale reads) really lacks them.
    assert_eq!(rc.get::<_, Option<String>>("lost:0").unwrap(), None);
    assert_eq!(
        rc.get::<_, Option<String>>("overwritten")
            .unwrap()
            .as_deref(),
        Some("old")
    );
    assert!(rc.exists::<_, bool>("deleted").unwrap());

    // The old master dies; Sentinel promotes the replica.
    drop(m);
    s.kill_master(old);
    let new = s.master();
    let mut nm = new.conn();
    wait_until("the lost writes reach the new master", SETTLE, || {
        let n: usize = redis::cmd("EXISTS").arg(&lost).query(&mut nm).unwrap();
        n == lost.len()
            && !nm.exists::<_, bool>("deleted").unwrap()
            && nm
                .get::<_, Option<String>>("overwritten")
                .unwrap()
                .as_deref()
                == Some("new")
    });
    for (i, k) in lost.iter().enumerate() {
        assert_eq!(nm.get::<_, Option<usize>>(k).unwrap(), Some(i), "{k}");
    }
    assert_eq!(
        nm.hget::<_, _, Option<String>>("lost-hash", "f")
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert_eq!(
        nm.get::<_, Option<String>>("kept").unwrap().as_deref(),
        Some("1")
    );
    // And region 2 lost nothing: the new master's older state was not
    // shipped over its newer one.
    let _: () = nm.set("after", "2").unwrap();
    s.wait_in_region2("after", "2");
    assert_eq!(
        c2.get::<_, Option<String>>("lost:0").unwrap().as_deref(),
        Some("0")
    );
    s.converged();
    assert_eq!(
        s.region1.metric("geosync_rebuilds_total"),
        1.0,
        "the new master was reconciled with a peer once"
    );
}

/// The promoted replica holds a write region 1's agent had not stamped when
/// the replica lost its link (its record still describes the value before),
/// and region 2 overwrote that write since. The promoted replica's older
/// value must not win: it was first seen in a snapshot, so it is stamped
/// just above what region 1 had reached, below region 2's write (decision
/// 019). Region 2's agent is away during the failover, so no rebuild from
/// it comes first; anti-entropy repairs region 1 afterwards.
#[test]
fn a_promoted_replica_with_unstamped_writes_does_not_bring_back_old_values() {
    // Rounds every second: region 1 records what it reached (decision 019).
    let mut s = setup(&[], 1, &["--anti-entropy-interval-secs", "1"]);
    let old = s.master().port;
    let mut m = s.master().conn();
    let _: () = m.set("k", "v1").unwrap();
    let _: () = m.set("gone", "v1").unwrap();
    s.wait_in_region2("k", "v1");
    s.wait_in_region2("gone", "v1");
    let mut meta = s.master().conn();
    let _: () = redis::cmd("SELECT")
        .arg(geosync::store::metadata_db())
        .query(&mut meta)
        .unwrap();
    wait_until("region 1 records the stamp it reached", SETTLE, || {
        meta.get::<_, Option<String>>("__geosync:reached")
            .unwrap()
            .is_some()
    });

    // Writes region 1's agent stamps only after the replica lost its link.
    s.region1.kill();
    let _: () = m.set("k", "v2").unwrap();
    let _: () = m.set("gone", "v2").unwrap();
    s.replicas_caught_up(old);
    let mut rc = s.cut_off_replica(old);
    s.region1.restart();
    wait_until("region 1's agent ready", SETTLE, || s.region1.is_ready());
    s.wait_in_region2("k", "v2");
    s.wait_in_region2("gone", "v2");

    // Region 2 writes after them; the old master gets it.
    let mut c2 = s.region2.redis.conn();
    let _: () = c2.set("k", "v3").unwrap();
    let _: () = c2.del("gone").unwrap();
    wait_until("region 2's writes reach the old master", SETTLE, || {
        m.get::<_, Option<String>>("k").unwrap().as_deref() == Some("v3")
            && !m.exists::<_, bool>("gone").unwrap()
    });
    assert_eq!(
        rc.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("v2"),
        "the replica holds the unstamped write"
    );

    // The old master dies while region 2's agent is away.
    s.region2.agent.kill();
    drop(m);
    s.kill_master(old);
    // Whether the promoted replica continues the stream or not, the two
    // keys that differ from their records are stamped low.
    wait_until(
        "region 1's agent stamps the new master's older values",
        SETTLE,
        || s.region1.metric("geosync_changes_stamped_low_total") >= 2.0,
    );
    s.region2.agent.restart();
    wait_until("region 2's agent ready", SETTLE, || {
        s.region2.agent.is_ready()
    });
    let mut nm = s.master().conn();
    wait_until("region 2's writes win on the new master", SETTLE, || {
        nm.get::<_, Option<String>>("k").unwrap().as_deref() == Some("v3")
            && !nm.exists::<_, bool>("gone").unwrap()
    });
    s.converged();
    assert_eq!(
        c2.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("v3"),
        "the promoted replica's older value reached region 2"
    );
    assert!(!c2.exists::<_, bool>("gone").unwrap());
}
