//! The agent under the least-privilege Redis user README.md documents: the
//! `ACL SETUSER` line is read from README.md, so the documented line is the
//! tested one. With it the agent does everything it does (both snapshot and
//! stream, every type, large keys in pieces, a flush, full and partial
//! resyncs, a rebuild from a peer) without Redis refusing a single command;
//! without one of its permissions it names the refused command.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// The `ACL SETUSER geosync ...` line of README.md, split into words.
fn readme_acl() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER geosync "))
        .collect();
    assert_eq!(lines.len(), 1, "one ACL SETUSER line in README.md");
    lines[0].split_whitespace().map(str::to_owned).collect()
}

/// The password the README's line sets (its `>password` rule).
fn password(acl: &[String]) -> String {
    acl.iter()
        .find_map(|w| w.strip_prefix('>'))
        .expect("a >password rule")
        .to_string()
}

/// An ACL file with a full default user (the test's own client) and the
/// agent's user with the rules of `acl` (an `ACL SETUSER` line): a server
/// restarted empty keeps its users.
fn acl_file(dir: &std::path::Path, acl: &[String]) -> String {
    let rules = acl[3..].join(" ");
    let path = dir.join("users.acl");
    std::fs::write(
        &path,
        format!("user default on nopass ~* &* +@all\nuser geosync {rules}\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// A server whose `geosync` user has the rules of `acl`, and the URL an
/// agent connects with as that user.
fn server_with_user(dir: &std::path::Path, acl: &[String], extra: &[&str]) -> (Redis, String) {
    let file = acl_file(dir, acl);
    let mut args = vec!["--aclfile", file.as_str()];
    args.extend_from_slice(extra);
    let redis = Redis::start(&args);
    let url = format!("redis://geosync:{}@127.0.0.1:{}", password(acl), redis.port);
    (redis, url)
}

/// What Redis refused the agent's user (`ACL LOG`): one line per entry.
fn refusals(redis: &Redis) -> Vec<String> {
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut redis.conn())
        .unwrap();
    log.iter()
        .map(|entry| {
            let redis::Value::Array(kv) = entry else {
                return format!("{entry:?}");
            };
            kv.chunks(2)
                .filter_map(|f| {
                    let name: String = redis::FromRedisValue::from_redis_value_ref(&f[0]).ok()?;
                    let value: String =
                        redis::FromRedisValue::from_redis_value_ref(f.get(1)?).ok()?;
                    ["reason", "context", "object", "username"]
                        .contains(&name.as_str())
                        .then(|| format!("{name}={value}"))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Keys of every type, some with expiries, a collection larger than the
/// agent's `--max-key-elements` (it travels in pieces), a hash with a field
/// expiry where the server has them, and a flushed database.
fn write_every_type(c: &mut redis::Connection, p: &str) {
    let _: () = c.set_ex(format!("{p}str"), "v", 3600).unwrap();
    let _: () = c.incr(format!("{p}int"), 7).unwrap();
    let _: () = c.append(format!("{p}str2"), "w").unwrap();
    let _: () = c.rpush(format!("{p}list"), &["a", "b", "c"]).unwrap();
    let _: () = c.sadd(format!("{p}set"), &["x", "y"]).unwrap();
    let big: Vec<String> = (0..1500).map(|i| format!("m{i}")).collect();
    let _: () = c.sadd(format!("{p}bigset"), &big).unwrap();
    let _: () = c
        .zadd_multiple(format!("{p}zset"), &[(1.5, "a"), (2.0, "b")])
        .unwrap();
    let _: () = c
        .hset_multiple(format!("{p}hash"), &[("f", "v"), ("g", "w")])
        .unwrap();
    let big_h: Vec<(String, String)> = (0..1500)
        .map(|i| (format!("f{i}"), format!("v{i}")))
        .collect();
    let _: () = c.hset_multiple(format!("{p}bighash"), &big_h).unwrap();
    let _: () = c.pexpire(format!("{p}hash"), 3_600_000).unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{p}stream"))
        .arg("*")
        .arg("f")
        .arg("v")
        .query(c)
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("{p}stream"))
        .arg("g")
        .arg("0")
        .query(c)
        .unwrap();
    let _: () = c.rename(format!("{p}str2"), format!("{p}renamed")).unwrap();
    if has_field_expiry(c) {
        let _: () = c
            .hset_multiple(format!("{p}fhash"), &[("keep", "1"), ("ttl", "2")])
            .unwrap();
        let _: redis::Value = redis::cmd("HPEXPIRE")
            .arg(format!("{p}fhash"))
            .arg(3_600_000)
            .arg("FIELDS")
            .arg(1)
            .arg("ttl")
            .query(c)
            .unwrap();
    }
    let _: () = c.set(format!("{p}gone"), "x").unwrap();
    let _: () = c.del(format!("{p}gone")).unwrap();
}

fn flush_db_2(c: &mut redis::Connection) {
    let _: () = c.set("flushed", "x").unwrap();
    let _: () = redis::cmd("FLUSHDB").query(c).unwrap();
    let _: () = c.set("after-flush", "y").unwrap();
}

/// The README's ACL line is enough for everything the agent does, on the
/// server under test: Redis refuses it nothing.
#[test]
fn the_readme_acl_is_all_the_agent_needs() {
    let acl = readme_acl();
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("1"), dir.path().join("2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let (r1, url1) = server_with_user(&d1, &acl, &["--repl-backlog-size", "16384"]);
    // Region 2 may evict (decision 016): its agent watches evictions,
    // with the events the README says to turn on (this user may not).
    let evicting = [
        "--maxmemory",
        "500mb",
        "--maxmemory-policy",
        "volatile-lru",
        "--notify-keyspace-events",
        "Ee",
    ];
    let (r2, url2) = server_with_user(&d2, &acl, &evicting);
    // Data already there before the agents start: the first full sync.
    write_every_type(&mut r1.conn(), "pre:");
    let mut mesh = Mesh::over_with(
        vec![r1, r2],
        Some(vec![url1, url2]),
        &[
            "--max-key-elements",
            "1000",
            "--anti-entropy-interval-secs",
            "1",
        ],
    );
    write_every_type(&mut mesh.regions[0].redis.conn(), "a:");
    write_every_type(&mut mesh.regions[1].redis.conn_db(1), "b:");
    flush_db_2(&mut mesh.regions[1].redis.conn_db(2));
    mesh.wait_converged(&[0, 1, 2], SETTLE);
    assert!(
        mesh.metric("geosync_large_keys_shipped_total") >= 4.0,
        "the big sets and hashes travelled in pieces"
    );

    // A full resync: region 1's agent away while more than the backlog is written.
    let full = mesh.regions[0].redis.info_i64("stats", "sync_full");
    mesh.regions[0].agent.kill();
    fill_past_backlog(&mut mesh.regions[0].redis.conn(), 0, 2000);
    write_every_type(&mut mesh.regions[0].redis.conn(), "full:");
    mesh.regions[0].agent.restart();
    mesh.wait_ready();
    mesh.wait_converged(&[0, 1, 2], SETTLE);
    assert_eq!(
        mesh.regions[0].redis.info_i64("stats", "sync_full"),
        full + 1,
        "the restarted agent resynced fully"
    );

    // A rebuild from a peer: region 2's Redis comes back empty.
    mesh.regions[1].redis.restart_empty();
    mesh.wait_ready();
    mesh.wait_converged(&[0, 1, 2], SETTLE);
    assert!(
        mesh.regions[1]
            .redis
            .conn()
            .exists::<_, bool>("a:bigset")
            .unwrap(),
        "region 2 was rebuilt"
    );

    // A partial resync (PSYNC continues the stream).
    partial_resync_after_agent_restart_in(&mut mesh);

    // Anti-entropy rounds (digests, bucket reads) complete under this user.
    for region in &mesh.regions {
        let agent = &region.agent;
        wait_until("an anti-entropy round with the peer", SETTLE, || {
            agent.metric("geosync_anti_entropy_rounds_total") >= 1.0
        });
    }

    for (i, region) in mesh.regions.iter().enumerate() {
        let refused = refusals(&region.redis);
        assert!(
            refused.is_empty(),
            "region {}: Redis refused the agent's user {} time(s):\n{}",
            i + 1,
            refused.len(),
            refused.join("\n")
        );
    }
}

/// Without one of the README's permissions the agent does not get far, and
/// its log names the command Redis refused, for each stage that needs one:
/// the replication handshake, the key specs, the scripts and a command a
/// script calls (Redis 7.0 does not name that one: the agent shows the
/// script's line).
#[test]
fn a_missing_permission_is_named_in_the_log() {
    let acl = readme_acl();
    for (missing, named) in [
        ("+psync", "'psync'"),
        ("+command", "'command'"),
        ("+evalsha", "'evalsha'"),
        ("+copy", "'copy'"),
    ] {
        assert!(acl.iter().any(|w| w == missing), "README grants {missing}");
        let without: Vec<String> = acl.iter().filter(|w| *w != missing).cloned().collect();
        let dir = tempfile::tempdir().unwrap();
        let (redis, url) = server_with_user(dir.path(), &without, &[]);
        let big: Vec<String> = (0..1500).map(|i| format!("m{i}")).collect();
        let _: () = redis.conn().sadd("bigset", &big).unwrap();
        let _: () = redis.conn().set("k", "v").unwrap();
        let agent = Agent::start_with(
            1,
            &url,
            free_port(),
            free_port(),
            &[],
            dir.path(),
            &["--max-key-elements".into(), "1000".into()],
        );
        let seen = poll(SETTLE, || agent.log_text().to_lowercase().contains(named));
        println!("---- without {missing}:\n{}", agent.log_text());
        assert!(seen.is_some(), "without {missing} the log names {named}");
    }
}

/// Through Sentinel the agent also asks the master for its `ROLE`; the
/// README's user may do that too (the sentinels are asked without
/// credentials).
#[test]
fn the_readme_acl_is_enough_through_sentinel() {
    let acl = readme_acl();
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("1"), dir.path().join("2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let (r1, _) = server_with_user(&d1, &acl, &[]);
    let (r2, url2) = server_with_user(&d2, &acl, &[]);
    let sentinel = Sentinel::start(&r1);
    let (l1, l2) = (free_port(), free_port());
    // --redis carries only the credentials here; Sentinel names the master.
    let url1 = format!("redis://geosync:{}@127.0.0.1:1", password(&acl));
    let sentinel_args = [
        "--master-name".to_string(),
        "mymaster".to_string(),
        "--sentinel".to_string(),
        format!("127.0.0.1:{}", sentinel.port),
    ];
    let mut a1 = Agent::start_with(1, &url1, l1, free_port(), &[l2], &d1, &sentinel_args);
    let mut a2 = Agent::start(2, &url2, l2, free_port(), &[l1], &d2);
    wait_until("agents ready", SETTLE, || a1.is_ready() && a2.is_ready());
    let _: () = r1.conn().set("through-sentinel", "1").unwrap();
    let _: () = r2.conn().set("the-other-way", "2").unwrap();
    let mut c2 = r2.conn();
    let mut c1 = r1.conn();
    wait_until("both writes in both regions", SETTLE, || {
        c2.exists::<_, bool>("through-sentinel").unwrap()
            && c1.exists::<_, bool>("the-other-way").unwrap()
    });
    for (i, redis) in [&r1, &r2].into_iter().enumerate() {
        let refused = refusals(redis);
        assert!(
            refused.is_empty(),
            "region {}: Redis refused the agent's user:\n{}",
            i + 1,
            refused.join("\n")
        );
    }
}

/// The README's recipe for applications' users: every key but geosync's
/// (`__geosync:...`), which ACL key patterns cannot subtract, spelled as
/// globs that each refuse one more character of the prefix. Such a user
/// writes any other key, and Redis refuses it geosync's keys, whether it
/// writes them directly or renames a key onto one.
#[test]
fn the_readme_application_acl_keeps_clients_off_geosync_keys() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER app "))
        .expect("README.md has the application user's ACL SETUSER line");
    let redis = Redis::start(&[]);
    let mut admin = redis.conn();
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    let mut cmd = redis::cmd("ACL");
    for w in &words {
        cmd.arg(*w);
    }
    let _: () = cmd.query(&mut admin).unwrap();
    let password = words
        .iter()
        .find_map(|w| w.strip_prefix('>'))
        .expect("a >password rule");
    let client =
        redis::Client::open(format!("redis://app:{password}@127.0.0.1:{}", redis.port)).unwrap();
    let mut app = client.get_connection().unwrap();
    for key in [
        "user:1",
        "_",
        "_x",
        "__",
        "__g",
        "__geosync",
        "__geosyncx",
        "__geosync_",
        "x__geosync:",
    ] {
        let r: redis::RedisResult<()> = app.set(key, "v");
        assert!(r.is_ok(), "{key}: {r:?}");
    }
    for key in [
        "__geosync:floor:0",
        "__geosync:m:0:5",
        "__geosync:collected:0",
        "__geosync:",
    ] {
        let r: redis::RedisResult<()> = app.set(key, "forged");
        let e = r.expect_err(key);
        assert_eq!(e.code(), Some("NOPERM"), "{key}: {e}");
    }
    let r: redis::RedisResult<()> = redis::cmd("RENAME")
        .arg("user:1")
        .arg("__geosync:m:0:7")
        .query(&mut app);
    assert_eq!(r.unwrap_err().code(), Some("NOPERM"));
    assert!(!admin.exists::<_, bool>("__geosync:m:0:7").unwrap());
}
