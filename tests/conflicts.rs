//! One test per trap that makes naive active-active designs diverge
//! (DESIGN.md), each on real redis-server processes and real agents.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(20);

/// INCR in one region against SET in another: what travels is the key's
/// state, so the later stamp's value wins everywhere and no region computes
/// INCR on top of the other's SET (which would give 101).
#[test]
fn incr_against_set_converges_to_one_value() {
    let mut mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let _: () = a.set("k", 5).unwrap();
    wait_until("k reaches region 2", SETTLE, || {
        b.get::<_, Option<i64>>("k").unwrap() == Some(5)
    });

    // Region 2's agent is down while both regions write: the writes conflict.
    mesh.regions[1].agent.kill();
    let six: i64 = a.incr("k", 1).unwrap();
    assert_eq!(six, 6);
    let _: () = b.set("k", 100).unwrap();
    // Region 2's write is stamped when its agent returns, after region 1's INCR.
    mesh.regions[1].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let va: i64 = a.get("k").unwrap();
    let vb: i64 = b.get("k").unwrap();
    assert_eq!(
        (va, vb),
        (100, 100),
        "the later stamp (region 2's SET) wins in both regions"
    );
    wait_until("region 2 rejects the older INCR state", SETTLE, || {
        mesh.regions[1]
            .agent
            .metric("geosync_changes_rejected_older_total")
            >= 1.0
    });
    assert_eq!(b.get::<_, i64>("k").unwrap(), 100);
}

/// A delete against a concurrent update: the later stamp wins, whichever it
/// is, and a delete that wins stays deleted.
#[test]
fn delete_against_update_later_stamp_wins() {
    let mut mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let _: () = a.set("upd", "v1").unwrap();
    let _: () = a.set("del", "v1").unwrap();
    wait_until("keys reach region 2", SETTLE, || {
        b.exists::<_, bool>("del").unwrap() && b.exists::<_, bool>("upd").unwrap()
    });

    // Update after delete: region 1 deletes `upd`, region 2 (agent down) updates it later.
    mesh.regions[1].agent.kill();
    let _: () = a.del("upd").unwrap();
    let _: () = b.set("upd", "v2").unwrap();
    mesh.regions[1].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(
        a.get::<_, Option<String>>("upd").unwrap().as_deref(),
        Some("v2")
    );

    // Delete after update: region 2 updates `del`, region 1 (agent down) deletes it later.
    mesh.regions[0].agent.kill();
    let before = mesh.regions[1]
        .agent
        .metric("geosync_changes_stamped_total");
    let _: () = b.set("del", "v2").unwrap();
    wait_until("region 2 stamped its update", SETTLE, || {
        mesh.regions[1]
            .agent
            .metric("geosync_changes_stamped_total")
            > before
    });
    let _: () = a.del("del").unwrap();
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(
        b.get::<_, Option<String>>("del").unwrap(),
        None,
        "the later delete wins in region 2"
    );
    assert_eq!(
        a.get::<_, Option<String>>("del").unwrap(),
        None,
        "the older update did not revive the key"
    );
}

/// A change applied from a peer is never shipped again: count what each
/// agent stamps and ships.
#[test]
fn applied_changes_are_not_shipped_back() {
    let mesh = Mesh::start(3);
    let mut a = mesh.regions[0].redis.conn();
    for i in 0..50 {
        let _: () = a.set(format!("k{i}"), i).unwrap();
    }
    let _: () = a.hset("h", "f", "v").unwrap();
    let _: () = a.rpush("l", &["x", "y"]).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    // Let every echo that could happen happen: acks for everything region 1 sent.
    wait_until("all batches acked", SETTLE, || {
        mesh.regions[0].agent.metric("geosync_peer_lag_batches") == 0.0
    });
    let r1 = &mesh.regions[0].agent;
    assert_eq!(r1.metric("geosync_changes_stamped_total"), 52.0);
    assert_eq!(
        r1.metric("geosync_changes_shipped_total"),
        104.0,
        "52 changes to each of two peers"
    );
    for r in &mesh.regions[1..] {
        assert_eq!(r.agent.metric("geosync_changes_applied_total"), 52.0);
        assert_eq!(
            r.agent.metric("geosync_changes_stamped_total"),
            0.0,
            "agent {} stamped an applied change",
            r.agent.node_id
        );
        assert_eq!(
            r.agent.metric("geosync_changes_shipped_total"),
            0.0,
            "agent {} shipped an applied change",
            r.agent.node_id
        );
    }
    // And a write in region 2 is stamped once, by region 2 only.
    let mut b = mesh.regions[1].redis.conn();
    let _: () = b.set("from2", "x").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    wait_until("region 2's change acked", SETTLE, || {
        mesh.regions[1].agent.metric("geosync_peer_lag_batches") == 0.0
    });
    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_changes_stamped_total"),
        52.0
    );
    assert_eq!(
        mesh.regions[2]
            .agent
            .metric("geosync_changes_stamped_total"),
        0.0
    );
    assert_eq!(
        mesh.regions[1]
            .agent
            .metric("geosync_changes_stamped_total"),
        1.0
    );
}

/// kill -9 after stamping but before any peer acknowledged: the restarted
/// agent re-ships what its metadata says it stamped and nobody acked.
#[test]
fn stamped_but_unshipped_changes_survive_an_agent_crash() {
    let mut mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let _: () = a.set("before", "1").unwrap();
    wait_until("first key reaches region 2", SETTLE, || {
        b.exists::<_, bool>("before").unwrap()
    });
    // acknowledged stamps reach the data dir (written once a second)
    let acked = mesh.regions[0].agent.data_dir.join("acked");
    wait_until("region 1 records region 2's ack", SETTLE, || acked.exists());

    // Region 2's agent is away, so region 1 can stamp but not ship.
    mesh.regions[1].agent.kill();
    let before = mesh.regions[0]
        .agent
        .metric("geosync_changes_stamped_total");
    let _: () = a.set("lost-if-not-reshipped", "v").unwrap();
    let _: () = a.hset("h-lost", "f", "v").unwrap();
    let _: () = a.del("before").unwrap();
    wait_until("region 1 stamped the writes", SETTLE, || {
        mesh.regions[0]
            .agent
            .metric("geosync_changes_stamped_total")
            >= before + 3.0
    });
    mesh.regions[0].agent.kill();
    mesh.regions[1].agent.restart();
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(
        b.get::<_, Option<String>>("lost-if-not-reshipped")
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert_eq!(
        b.hget::<_, _, Option<String>>("h-lost", "f")
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert!(
        !b.exists::<_, bool>("before").unwrap(),
        "the delete was re-shipped too"
    );
    // They arrived because the restarted agent shipped them again with the
    // stamps it had recorded, not by some other way.
    let reshipped = mesh.regions[0]
        .agent
        .metric("geosync_changes_reshipped_total");
    assert!(
        reshipped >= 3.0,
        "the restarted agent re-shipped the three unacknowledged changes: {reshipped}"
    );
}

/// A peer away long enough to overflow the outbox: stamping never stalls
/// (the replication link keeps flowing, no full resync), and when the peer
/// returns it catches up from the metadata.
#[test]
fn a_long_peer_outage_overflows_the_outbox_and_catches_up() {
    let mut mesh = Mesh::with_agent_args(2, &["--outbox-batches", "3"]);
    let [one, two] = &mut mesh.regions[..] else {
        unreachable!("two regions")
    };
    let (r1, r2, a1, a2) = (&one.redis, &two.redis, &one.agent, &mut two.agent);
    let mut c1 = r1.conn();
    let _: () = c1.set("first", "1").unwrap();
    let mut c2 = r2.conn();
    wait_until("first key arrives", SETTLE, || {
        c2.exists::<_, bool>("first").unwrap()
    });

    a2.kill();
    // Many separate batches while the peer is away: far more than 3.
    for i in 0..300 {
        let _: () = c1.set(format!("k{i}"), i).unwrap();
        if i % 10 == 0 {
            wait_until("region 1 stamps as it goes", SETTLE, || {
                a1.metric("geosync_changes_stamped_total") >= (i + 2) as f64
            });
        }
    }
    let _: () = c1.del("first").unwrap();
    wait_until("region 1 stamped everything", SETTLE, || {
        a1.metric("geosync_changes_stamped_total") >= 302.0
    });
    assert!(
        a1.metric("geosync_outbox_overflows_total") >= 1.0,
        "the outbox overflowed"
    );
    assert!(
        a1.metric("geosync_outbox_batches") <= 3.0,
        "and stayed bounded"
    );

    a2.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], SETTLE);
    let a1 = &mesh.regions[0].agent;
    assert!(
        a1.metric("geosync_catch_up_changes_total") >= 1.0,
        "the peer caught up from the metadata"
    );
    assert_eq!(
        a1.metric("geosync_sync_full_total"),
        1.0,
        "the replication link never stalled"
    );
    assert!(
        !mesh.regions[1]
            .redis
            .conn()
            .exists::<_, bool>("first")
            .unwrap(),
        "the delete caught up too"
    );
}

/// Writes go on while an overflowed peer catches up, and overflow the
/// outbox again during the catch-up: what was stamped meanwhile reaches the
/// peer through the outbox or the next catch-up, never neither. (A
/// catch-up reads the metadata while the stamper goes on; it used to count
/// as delivering everything up to the newest stamp it sent, so the next
/// catch-up skipped what it had missed.)
#[test]
fn writes_during_a_catch_up_that_overflows_again_all_arrive() {
    let mut mesh = Mesh::with_agent_args(2, &["--outbox-batches", "3"]);
    let [one, two] = &mut mesh.regions[..] else {
        unreachable!("two regions")
    };
    let (r1, a1, a2) = (&one.redis, &one.agent, &mut two.agent);
    a2.kill();
    // Enough records that the catch-up takes a while.
    let mut c1 = r1.conn();
    for chunk in 0..20 {
        let mut p = redis::pipe();
        for i in 0..1000 {
            p.set(format!("old{}", chunk * 1000 + i), i).ignore();
        }
        let _: () = p.query(&mut c1).unwrap();
    }
    wait_until("region 1 stamped the old keys", SETTLE, || {
        a1.metric("geosync_changes_stamped_total") >= 20_000.0
    });
    let catch_ups = |a: &Agent| {
        a.log_text()
            .matches("catching up from the metadata")
            .count()
    };
    a2.restart();
    // Ten writes at a time, each round stamped before the next (a batch of
    // its own), until a catch-up has been overtaken by the outbox and a
    // second one started.
    let mut written = 0u64;
    while catch_ups(a1) < 2 {
        for _ in 0..10 {
            let _: () = c1.set(format!("live{written}"), written).unwrap();
            written += 1;
        }
        wait_until("region 1 stamps as it goes", SETTLE, || {
            a1.metric("geosync_changes_stamped_total") >= 20_000.0 + written as f64
        });
        assert!(
            written < 100_000,
            "no second catch-up after {written} writes"
        );
    }
    eprintln!("{written} writes while region 2 caught up");
    mesh.wait_converged(&[0], SETTLE);
}

/// A type of value for [`every_type_has_one_winner_never_a_merge`]: its name
/// and the commands that write variant `n` of it as a whole value (the key
/// is replaced in one transaction). Variants share an element (`common`)
/// and differ in the others, so a merge of two variants is neither of them.
struct Kind {
    name: &'static str,
    fill: fn(&str, u32) -> Vec<redis::Cmd>,
}

impl Kind {
    fn write(&self, c: &mut redis::Connection, key: &str, n: u32) {
        let mut p = redis::pipe();
        p.atomic().del(key).ignore();
        for cmd in (self.fill)(key, n) {
            p.add_command(cmd).ignore();
        }
        let _: () = p.query(c).unwrap();
    }
}

/// `name key args...`.
fn cmd(name: &str, key: &str, args: &[String]) -> redis::Cmd {
    let mut c = redis::cmd(name);
    c.arg(key).arg(args);
    c
}

fn kinds(with_field_expiry: bool) -> Vec<Kind> {
    let mut kinds = vec![
        Kind {
            name: "list",
            fill: |k, n| {
                vec![cmd(
                    "RPUSH",
                    k,
                    &["common".into(), format!("a{n}"), format!("b{n}")],
                )]
            },
        },
        Kind {
            name: "set",
            fill: |k, n| {
                vec![cmd(
                    "SADD",
                    k,
                    &["common".into(), format!("a{n}"), format!("b{n}")],
                )]
            },
        },
        Kind {
            name: "zset",
            fill: |k, n| {
                let args = [
                    n.to_string(),
                    "common".into(),
                    (10 + n).to_string(),
                    format!("a{n}"),
                ];
                vec![cmd("ZADD", k, &args)]
            },
        },
        Kind {
            name: "hash",
            fill: |k, n| {
                vec![cmd(
                    "HSET",
                    k,
                    &[
                        "common".into(),
                        format!("v{n}"),
                        format!("f{n}"),
                        format!("v{n}"),
                    ],
                )]
            },
        },
        Kind {
            name: "stream",
            fill: |k, n| {
                let add = |i| {
                    cmd(
                        "XADD",
                        k,
                        &[format!("{}-{i}", n + 1), "f".into(), format!("v{n}")],
                    )
                };
                let group = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(k)
                    .arg(format!("g{n}"))
                    .arg("0")
                    .clone();
                vec![add(1), add(2), group]
            },
        },
    ];
    if with_field_expiry {
        kinds.push(Kind {
            name: "hash with field expiry",
            fill: |k, n| {
                let set = cmd(
                    "HSET",
                    k,
                    &[
                        "common".into(),
                        format!("v{n}"),
                        format!("f{n}"),
                        format!("v{n}"),
                    ],
                );
                let ttl = (600_000 + n * 1000).to_string();
                let expire = cmd(
                    "HPEXPIRE",
                    k,
                    &[
                        ttl,
                        "FIELDS".into(),
                        "2".into(),
                        "common".into(),
                        format!("f{n}"),
                    ],
                );
                vec![set, expire]
            },
        });
    }
    kinds
}

/// A metric's value, or None while the agent's admin server does not
/// answer yet (just restarted). A metric it does not export fails the test.
fn exported(agent: &Agent, name: &str) -> Option<f64> {
    let (_, body) = agent.get("/metrics")?;
    Some(metric_sum(&body, name))
}

/// The conflict table for every collection type: two regions write
/// different whole values to the same key, and every region ends with
/// exactly the later-stamped one (region 2's), never a merge of both. The
/// same against deletes: a later delete wins over an update, and a later
/// value over a delete. Field expiries only where the server has them.
///
/// The stamps are ordered without racing: region 2's agent is down while
/// region 1 writes and its agent stamps, then region 1's agent goes down
/// before region 2 writes and its agent comes back and stamps; only then
/// does region 1's agent return and ship its (older) changes again.
#[test]
fn every_type_has_one_winner_never_a_merge() {
    let mut mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    // The other types are checked on every server; this one where it exists.
    let with_field_expiry = feature::ran_if(has_field_expiry(&mut a), "hash field expiry");
    let kinds = kinds(with_field_expiry);
    let key = |k: &Kind, role: &str| format!("{}:{role}", k.name);
    // Keys a delete will meet exist in both regions first.
    for k in &kinds {
        k.write(&mut a, &key(k, "del-later"), 0);
        k.write(&mut a, &key(k, "del-earlier"), 0);
    }
    mesh.wait_converged(&[0], SETTLE);
    let changes = (3 * kinds.len()) as f64;

    // Region 1, stamped while region 2's agent is away.
    mesh.regions[1].agent.kill();
    let stamped = mesh.regions[0]
        .agent
        .metric("geosync_changes_stamped_total");
    for k in &kinds {
        k.write(&mut a, &key(k, "value"), 1);
        k.write(&mut a, &key(k, "del-later"), 1);
        let _: () = a.del(key(k, "del-earlier")).unwrap();
    }
    wait_until("region 1 stamped its writes", SETTLE, || {
        mesh.regions[0]
            .agent
            .metric("geosync_changes_stamped_total")
            >= stamped + changes
    });
    mesh.regions[0].agent.kill();

    // Region 2, stamped later.
    for k in &kinds {
        k.write(&mut b, &key(k, "value"), 2);
        let _: () = b.del(key(k, "del-later")).unwrap();
        k.write(&mut b, &key(k, "del-earlier"), 2);
    }
    let mut expected = Vec::new();
    for k in &kinds {
        for role in ["value", "del-later", "del-earlier"] {
            let name = key(k, role);
            let theirs = read_key(&mut a, name.as_bytes());
            let ours = read_key(&mut b, name.as_bytes());
            assert_ne!(
                theirs, ours,
                "{}: the regions wrote the same {name}",
                k.name
            );
            expected.push((k.name, name, ours));
        }
    }
    mesh.regions[1].agent.restart();
    wait_until("region 2 stamped its writes", SETTLE, || {
        exported(&mesh.regions[1].agent, "geosync_changes_stamped_total")
            .is_some_and(|n| n >= changes)
    });
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    // Region 1's changes reach region 2 (applied or not) before the regions
    // are compared, so none can land after the comparison.
    let agent2 = &mesh.regions[1].agent;
    let (applied, rejected) = (
        "geosync_changes_applied_total",
        "geosync_changes_rejected_older_total",
    );
    wait_until("region 1's changes reach region 2", SETTLE, || {
        exported(agent2, applied)
            .zip(exported(agent2, rejected))
            .is_some_and(|(x, y)| x + y >= changes)
    });
    mesh.wait_converged(&[0], SETTLE);
    for (i, r) in mesh.regions.iter().enumerate() {
        let mut c = r.redis.conn();
        for (kind, name, want) in &expected {
            assert_eq!(
                &read_key(&mut c, name.as_bytes()),
                want,
                "{kind}: region {} holds {name} other than region 2's later write",
                i + 1
            );
        }
    }
    assert_eq!(
        agent2.metric(applied),
        0.0,
        "region 2 applied none of region 1's older changes"
    );
    assert!(agent2.metric(rejected) >= changes);
}

/// Writes a region took while its agent was down wait in the replication
/// backlog; the restarted agent continues the stream (partial resync) and
/// must stamp them before it applies anything from peers: here a peer's
/// older deletes of the same keys are already queued for it, and every
/// later write must win in both regions.
#[test]
fn writes_in_the_backlog_are_stamped_before_older_peer_changes_apply() {
    const KEYS: usize = 2000;
    // A backlog that holds every write made while the agent is down.
    let mut mesh = Mesh::start_with(2, &["--repl-backlog-size", "64mb"]);
    let mut a = mesh.regions[0].redis.conn();
    let mut b = mesh.regions[1].redis.conn();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, "v1").ignore();
    }
    let _: () = pipe.query(&mut a).unwrap();
    mesh.wait_converged(&[0], SETTLE);
    mesh.regions[1].agent.kill();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.del(k).ignore();
    }
    let _: () = pipe.query(&mut a).unwrap();
    mesh.wait_stamped(0, SETTLE);
    // Other writes first, so that stamping the backlog takes a while.
    for chunk in (0..30_000).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set(format!("filler{i}"), i).ignore();
        }
        let _: () = pipe.query(&mut b).unwrap();
    }
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, "v2").ignore();
    }
    let _: () = pipe.query(&mut b).unwrap();
    mesh.regions[1].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0], Duration::from_secs(60));
    let lost = keys
        .iter()
        .filter(|k| b.get::<_, Option<String>>(*k).unwrap().as_deref() != Some("v2"))
        .count();
    assert_eq!(
        lost, 0,
        "writes made while the agent was down lost to older deletes"
    );
}
