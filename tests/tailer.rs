//! The tailer against real servers: both snapshot transfer forms, AUTH,
//! existing data of every type, and the commands whose keys are not simply
//! "the first argument".

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(20);

fn write_every_type(c: &mut redis::Connection, prefix: &str) {
    let _: () = c.set(format!("{prefix}str"), "v").unwrap();
    let _: () = c.set(format!("{prefix}int"), 12345).unwrap();
    let _: () = c.set(format!("{prefix}big"), "x".repeat(10_000)).unwrap();
    let _: () = c.rpush(format!("{prefix}list"), &["a", "b", "c"]).unwrap();
    let big: Vec<String> = (0..600).map(|i| format!("e{i}")).collect();
    let _: () = c.rpush(format!("{prefix}biglist"), &big).unwrap();
    let _: () = c.sadd(format!("{prefix}intset"), &[1, 2, 3]).unwrap();
    let _: () = c.sadd(format!("{prefix}set"), &big).unwrap();
    let _: () = c
        .zadd_multiple(format!("{prefix}zset"), &[(1.5, "a"), (2.0, "b")])
        .unwrap();
    let big_z: Vec<(f64, String)> = (0..300)
        .map(|i| (i as f64 / 3.0, format!("m{i}")))
        .collect();
    let _: () = c.zadd_multiple(format!("{prefix}bigzset"), &big_z).unwrap();
    let _: () = c
        .hset_multiple(format!("{prefix}hash"), &[("f", "v"), ("g", "w")])
        .unwrap();
    let big_h: Vec<(String, String)> = (0..300)
        .map(|i| (format!("f{i}"), format!("v{i}")))
        .collect();
    let _: () = c.hset_multiple(format!("{prefix}bighash"), &big_h).unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}stream"))
        .arg("1-1")
        .arg("f")
        .arg("v")
        .query(c)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}stream"))
        .arg("2-1")
        .arg("g")
        .arg("w")
        .query(c)
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("{prefix}stream"))
        .arg("grp")
        .arg("1-1")
        .query(c)
        .unwrap();
    let _: () = c.set_ex(format!("{prefix}ttl"), "v", 3600).unwrap();
}

fn existing_data_reaches_peers(redis_args: &[&str]) {
    // Data written before any agent runs travels through the snapshot.
    let r1 = Redis::start(redis_args);
    let r2 = Redis::start(redis_args);
    write_every_type(&mut r1.conn(), "pre:");
    write_every_type(&mut r1.conn_db(3), "db3:");
    let mesh = Mesh::over(vec![r1, r2], None);
    mesh.wait_converged(&[0, 3], SETTLE);
    assert_eq!(
        mesh.regions[1]
            .redis
            .conn_db(3)
            .get::<_, String>("db3:str")
            .unwrap(),
        "v"
    );
    // and the live stream after it
    write_every_type(&mut mesh.regions[0].redis.conn(), "live:");
    mesh.wait_converged(&[0, 3], SETTLE);
    // Region 2 holds every user key: db 3 got one set of every type (the
    // snapshot), db 0 two (the snapshot and the live stream).
    let b = &mesh.regions[1].redis;
    let db0 = user_key_count(&mut b.conn()).unwrap();
    let db3 = user_key_count(&mut b.conn_db(3)).unwrap();
    assert!(db3 >= 7, "region 2's db 3 holds a key of every type: {db3}");
    assert_eq!(
        db0,
        2 * db3,
        "region 2's db 0 holds the snapshot's and the stream's keys"
    );
}

#[test]
fn diskless_snapshot_and_stream() {
    existing_data_reaches_peers(&["--repl-diskless-sync", "yes"]);
}

#[test]
fn disk_snapshot_and_stream() {
    existing_data_reaches_peers(&["--repl-diskless-sync", "no"]);
}

#[test]
fn password_protected_redis() {
    let mesh = Mesh::start_with(2, &["--requirepass", "s3cret"]);
    let _: () = mesh.regions[0].redis.conn().set("k", "v").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(
        mesh.regions[1].redis.conn().get::<_, String>("k").unwrap(),
        "v"
    );
}

/// Commands that write keys in other positions or other databases.
#[test]
fn multi_key_and_cross_db_commands() {
    let mesh = Mesh::start(2);
    let mut c = mesh.regions[0].redis.conn();
    let mut q = |args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query(&mut c).unwrap();
    };
    q(&["MSET", "m1", "a", "m2", "b", "m3", "c"]);
    q(&["RENAME", "m1", "renamed"]);
    q(&["SADD", "s1", "x", "y"]);
    q(&["SMOVE", "s1", "s2", "x"]);
    q(&["RPUSH", "l1", "a", "b"]);
    q(&["LMOVE", "l1", "l2", "LEFT", "RIGHT"]);
    q(&["COPY", "m2", "copied"]);
    q(&["COPY", "m3", "copied-to-2", "DB", "2"]);
    q(&["SET", "mover", "v"]);
    q(&["MOVE", "mover", "1"]);
    q(&["RPUSH", "tosort", "3", "1", "2"]);
    q(&["SORT", "tosort", "STORE", "sorted"]);
    q(&["ZADD", "z1", "1", "a"]);
    q(&["ZADD", "z2", "2", "b"]);
    q(&["ZUNIONSTORE", "zu", "2", "z1", "z2"]);
    q(&[
        "EVAL",
        "redis.call('SET', KEYS[1], 'x'); redis.call('SET', KEYS[2], 'y')",
        "2",
        "e1",
        "e2",
    ]);
    q(&["SET", "gone", "v"]);
    q(&["UNLINK", "gone"]);
    mesh.wait_converged(&[0, 1, 2], SETTLE);
    let mut r2 = mesh.regions[1].redis.conn();
    assert_eq!(r2.get::<_, String>("renamed").unwrap(), "a");
    assert!(!r2.exists::<_, bool>("m1").unwrap());
    assert_eq!(
        r2.lrange::<_, Vec<String>>("sorted", 0, -1).unwrap(),
        vec!["1", "2", "3"]
    );
    assert_eq!(
        mesh.regions[1]
            .redis
            .conn_db(1)
            .get::<_, String>("mover")
            .unwrap(),
        "v"
    );
    assert!(!r2.exists::<_, bool>("mover").unwrap());
    assert_eq!(
        mesh.regions[1]
            .redis
            .conn_db(2)
            .get::<_, String>("copied-to-2")
            .unwrap(),
        "c"
    );
    assert_eq!(r2.get::<_, String>("e2").unwrap(), "y");
}

/// FLUSHDB and FLUSHALL are stamped deletes of everything older.
#[test]
fn flushes_travel_as_stamped_deletes() {
    let mesh = Mesh::start(2);
    let mut a0 = mesh.regions[0].redis.conn();
    let mut a1 = mesh.regions[0].redis.conn_db(1);
    let mut b0 = mesh.regions[1].redis.conn();
    for i in 0..20 {
        let _: () = a0.set(format!("k{i}"), i).unwrap();
        let _: () = a1.set(format!("k{i}"), i).unwrap();
    }
    mesh.wait_converged(&[0, 1], SETTLE);
    let _: () = redis::cmd("FLUSHDB").query(&mut a1).unwrap();
    let _: () = a1.set("after-flush", "v").unwrap();
    mesh.wait_converged(&[0, 1], SETTLE);
    assert_eq!(
        mesh.regions[1]
            .redis
            .conn_db(1)
            .keys::<_, Vec<String>>("k*")
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        mesh.regions[1]
            .redis
            .conn_db(1)
            .get::<_, String>("after-flush")
            .unwrap(),
        "v"
    );
    assert_eq!(
        b0.keys::<_, Vec<String>>("k*").unwrap().len(),
        20,
        "db 0 untouched"
    );
    let _: () = redis::cmd("FLUSHALL").query(&mut b0).unwrap();
    mesh.wait_converged(&[0, 1], SETTLE);
    assert_eq!(
        a0.keys::<_, Vec<String>>("*")
            .unwrap()
            .iter()
            .filter(|k| !k.starts_with("__geosync:"))
            .count(),
        0
    );
}

/// A transaction arrives whole: a reader in the other region never sees
/// half of one.
#[test]
fn transactions_arrive_whole() {
    let mesh = Mesh::start(2);
    let url = mesh.regions[0].redis.url();
    let writer = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        for i in 0..300 {
            let _: () = redis::pipe()
                .atomic()
                .set("ta", i)
                .set("tb", i)
                .incr("tc", 1)
                .query(&mut c)
                .unwrap();
        }
    });
    let mut r = mesh.regions[1].redis.conn();
    let mut seen = 0;
    // Read as often as possible (no pause between reads, to catch half a
    // transaction if one ever shows), until the last one is there.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (a, b): (Option<i64>, Option<i64>) = redis::cmd("MGET")
            .arg("ta")
            .arg("tb")
            .query(&mut r)
            .unwrap();
        assert_eq!(a, b, "region 2 saw half a transaction");
        if a.is_some() {
            seen += 1;
        }
        if writer.is_finished() && a == Some(299) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {SETTLE:?} waiting for region 2 to hold the last transaction \
             (ta = tb = 299); it holds {a:?} (writer finished: {})",
            writer.is_finished()
        );
    }
    writer.join().unwrap();
    assert!(seen > 0);
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(r.get::<_, i64>("tc").unwrap(), 300);
}

/// Client keys under the reserved prefix stay local and are reported.
#[test]
fn reserved_prefix_is_not_replicated() {
    let mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    let _: () = a.set("__geosync:mine", "x").unwrap();
    let _: () = a.set("marker", "x").unwrap();
    mesh.wait_converged(&[0], SETTLE);
    assert!(
        !mesh.regions[1]
            .redis
            .conn()
            .exists::<_, bool>("__geosync:mine")
            .unwrap()
    );
    wait_until("the reserved write is counted", SETTLE, || {
        mesh.regions[0]
            .agent
            .metric("geosync_reserved_key_writes_total")
            == 1.0
    });
    assert!(
        mesh.regions[0]
            .agent
            .log_text()
            .contains("reserved __geosync: prefix")
    );
}

/// A client's WAIT makes the master send REPLCONF GETACK; the agent answers
/// at once with its offset, so WAIT counts it as a replica that has the write.
#[test]
fn getack_is_answered() {
    let mesh = Mesh::start(1);
    let mut c = mesh.regions[0].redis.conn();
    let _: () = c.set("k", "v").unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(&mut c).unwrap();
    assert_eq!(acked, 1);
}

/// /healthz is up at once; /readyz is 200 once the local side is synced,
/// whatever the peers do (a sidecar's readiness); /readyz/mesh says what
/// it waits for until every peer has been reached.
#[test]
fn readiness_is_local_and_the_mesh_view_waits_for_every_peer() {
    let dir = tempfile::tempdir().unwrap();
    let r = Redis::start(&[]);
    let (l1, l2, a1) = (free_port(), free_port(), free_port());
    let mut agent = Agent::start(1, &r.url(), l1, a1, &[l2], dir.path());
    wait_until("healthz", SETTLE, || {
        matches!(agent.get("/healthz"), Some((200, _)))
    });
    wait_until("ready with the peer down", SETTLE, || {
        matches!(agent.get("/readyz"), Some((200, _)))
    });
    let (status, body) = agent.get("/readyz/mesh").unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains(&format!("peer http://127.0.0.1:{l2}")),
        "{body}"
    );
    // the peer comes up: the mesh view is ready too
    let r2 = Redis::start(&[]);
    let _peer = Agent::start(2, &r2.url(), l2, free_port(), &[l1], dir.path());
    wait_until("mesh ready once the peer answers", SETTLE, || {
        agent.is_ready()
    });
}

/// Writes right after a FLUSHDB, in the same transaction or just behind it,
/// are stamped after the flush and survive it in every region.
#[test]
fn writes_after_a_flush_survive_it() {
    let mesh = Mesh::start(2);
    let mut a0 = mesh.regions[0].redis.conn();
    let mut a1 = mesh.regions[0].redis.conn_db(1);
    for i in 0..50 {
        let _: () = a0.set(format!("k{i}"), "before").unwrap();
        let _: () = a1.set(format!("k{i}"), "before").unwrap();
    }
    // db 0: a flush with writes just before and just behind it
    let _: () = redis::pipe()
        .set("k1", "pre-flush")
        .cmd("FLUSHDB")
        .set("k2", "after")
        .set("k3", "after")
        .query(&mut a0)
        .unwrap();
    // db 1: the same inside one transaction
    let _: () = redis::pipe()
        .atomic()
        .set("k4", "pre-flush")
        .cmd("FLUSHDB")
        .set("k5", "after-in-multi")
        .query(&mut a1)
        .unwrap();
    mesh.wait_converged(&[0, 1], SETTLE);
    for (db, want) in [(0, vec!["k2", "k3"]), (1, vec!["k5"])] {
        let mut b = mesh.regions[1].redis.conn_db(db);
        let mut keys: Vec<String> = b.keys("k*").unwrap();
        keys.sort();
        assert_eq!(
            keys, want,
            "db {db}: only the writes after the flush are left"
        );
    }
}

/// Hash field expiry (Redis 7.4+): field TTLs travel as absolute times and
/// expire in every region. On servers without it the test says so and
/// checks nothing else (./scripts/test.sh runs it on Redis 8.2 too, and
/// fails when it was skipped on every server).
#[test]
fn hash_field_expiry_travels() {
    let mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    if !feature::ran_if(has_field_expiry(&mut a), "hash field expiry") {
        return;
    }
    let _: () = a
        .hset_multiple("h", &[("keep", "1"), ("long", "2"), ("short", "3")])
        .unwrap();
    let _: redis::Value = redis::cmd("HPEXPIRE")
        .arg("h")
        .arg(3_600_000)
        .arg("FIELDS")
        .arg(1)
        .arg("long")
        .query(&mut a)
        .unwrap();
    let _: redis::Value = redis::cmd("HPEXPIRE")
        .arg("h")
        .arg(300)
        .arg("FIELDS")
        .arg(1)
        .arg("short")
        .query(&mut a)
        .unwrap();
    let mut b = mesh.regions[1].redis.conn();
    wait_until(
        "the hash reaches region 2 with its field expiry",
        SETTLE,
        || {
            let t: Vec<i64> = redis::cmd("HPEXPIRETIME")
                .arg("h")
                .arg("FIELDS")
                .arg(1)
                .arg("long")
                .query(&mut b)
                .unwrap();
            t[0] > 0
        },
    );
    let ta: Vec<i64> = redis::cmd("HPEXPIRETIME")
        .arg("h")
        .arg("FIELDS")
        .arg(1)
        .arg("long")
        .query(&mut a)
        .unwrap();
    let tb: Vec<i64> = redis::cmd("HPEXPIRETIME")
        .arg("h")
        .arg("FIELDS")
        .arg(1)
        .arg("long")
        .query(&mut b)
        .unwrap();
    assert_eq!(ta, tb, "the same absolute field expiry");
    wait_until("the short field expires in both regions", SETTLE, || {
        !a.hexists::<_, _, bool>("h", "short").unwrap()
            && !b.hexists::<_, _, bool>("h", "short").unwrap()
    });
    mesh.wait_converged(&[0], SETTLE);
    assert_eq!(b.hget::<_, _, String>("h", "keep").unwrap(), "1");
}

/// Redis 8's hash commands (HSETEX, HGETEX, HGETDEL) reach the other
/// region with their field expiries, as the state they leave. On servers
/// without them the test says so and checks nothing else.
#[test]
fn redis_8_hash_commands_travel() {
    let mesh = Mesh::start(2);
    let mut a = mesh.regions[0].redis.conn();
    let has: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("HSETEX")
        .query(&mut a)
        .unwrap();
    let available = matches!(&has, redis::Value::Array(v) if v.first().is_some_and(|x| *x != redis::Value::Nil));
    if !feature::ran_if(available, "HSETEX (Redis 8)") {
        return;
    }
    let run = |c: &mut redis::Connection, args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(c)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    };
    // One command at a time, each converged before the next: a command
    // whose keys the agent missed leaves region 2 behind.
    for cmd in [
        &[
            "HSETEX", "h", "PX", "3600000", "FIELDS", "2", "a", "1", "b", "2",
        ][..],
        &["HSET", "h", "c", "3", "d", "4"],
        &["HGETEX", "h", "PX", "7200000", "FIELDS", "1", "c"],
        &["HGETEX", "h", "PERSIST", "FIELDS", "1", "b"],
        &["HGETDEL", "h", "FIELDS", "1", "d"],
        &["HSETEX", "gone", "FIELDS", "1", "x", "1"],
        &["HGETDEL", "gone", "FIELDS", "1", "x"],
    ] {
        run(&mut a, cmd);
        mesh.wait_converged(&[0], SETTLE);
    }
    let mut b = mesh.regions[1].redis.conn();
    let fields: Vec<String> = {
        let mut f: Vec<String> = b.hkeys("h").unwrap();
        f.sort();
        f
    };
    assert_eq!(fields, ["a", "b", "c"]);
    let ttl: Vec<i64> = redis::cmd("HPEXPIRETIME")
        .arg("h")
        .arg("FIELDS")
        .arg(3)
        .arg("a")
        .arg("b")
        .arg("c")
        .query(&mut b)
        .unwrap();
    assert!(ttl[0] > 0 && ttl[1] == -1 && ttl[2] > ttl[0], "{ttl:?}");
    assert!(!b.exists::<_, bool>("gone").unwrap());
}
