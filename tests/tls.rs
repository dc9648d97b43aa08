//! TLS to the local Redis: region 1's Redis speaks only TLS and wants a
//! client certificate (mutual TLS), region 2's is plain. Everything the
//! agent does with its Redis (snapshot, stream, stamping, applying, resume)
//! must then go over TLS, and a certificate problem must stop the agent
//! with a message that says what to fix.
//!
//! The servers are [`tls_server_bin`]: the configured server when it has
//! TLS built in, else Debian's `redis-server` (the test prints which).

mod support;

use std::sync::Arc;
use std::time::Duration;

use redis::Commands;
use support::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Region 1's server: TLS only, client certificates required.
fn tls_redis(certs: &Arc<TestCerts>) -> Redis {
    Redis::builder()
        .bin(&tls_server_bin())
        .tls(certs.files())
        .args(&["--repl-backlog-size", "16mb"])
        .start()
}

/// Region 2's server: plain, the same binary.
fn plain_redis() -> Redis {
    Redis::builder().bin(&tls_server_bin()).start()
}

#[test]
fn a_mutual_tls_region_and_a_plain_region_replicate_both_ways() {
    let certs = TestCerts::generate();
    let a = tls_redis(&certs);
    // The server has no plain port: whatever reaches it speaks TLS.
    assert!(
        redis::Client::open(format!("redis://127.0.0.1:{}", a.port))
            .unwrap()
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err(),
        "region 1's Redis refuses plain connections"
    );
    // Written before the agent starts: they reach region 2 through the
    // snapshot read over the TLS replication socket.
    {
        let mut c = a.conn();
        for i in 0..50 {
            let _: () = c.set(format!("before:{i}"), i).unwrap();
        }
        let _: () = c.hset("before:hash", "f", "v").unwrap();
        let _: () = c.rpush("before:list", &["a", "b", "c"]).unwrap();
        let _: () = c.set_ex("before:ttl", "x", 3600).unwrap();
        let _: () = a.conn_db(1).sadd("before:set", &["m1", "m2"]).unwrap();
    }
    let mesh = Mesh::over(vec![a, plain_redis()], None);
    mesh.wait_converged(&[0, 1], SETTLE);
    let mut b = mesh.regions[1].redis.conn();
    assert_eq!(b.get::<_, i64>("before:49").unwrap(), 49);
    assert_eq!(
        b.lrange::<_, Vec<String>>("before:list", 0, -1).unwrap(),
        ["a", "b", "c"]
    );
    assert!(b.ttl::<_, i64>("before:ttl").unwrap() > 3000);

    // Region 1 → region 2: the command stream over TLS, stamped over TLS.
    let mut a = mesh.regions[0].redis.conn();
    let _: () = a.set("from-a", "1").unwrap();
    let _: () = a.hset("shared", "a", "1").unwrap();
    // Region 2 → region 1: applied over TLS.
    let _: () = b.set("from-b", "2").unwrap();
    let _: () = b.hset("shared", "b", "2").unwrap();
    let _: () = b.del("before:0").unwrap();
    mesh.wait_converged(&[0, 1], SETTLE);
    assert_eq!(a.get::<_, String>("from-b").unwrap(), "2");
    assert!(!a.exists::<_, bool>("before:0").unwrap());
    assert_eq!(b.get::<_, String>("from-a").unwrap(), "1");

    // The agent is region 1's replica, connected through the TLS port.
    let r1 = &mesh.regions[0].redis;
    assert_eq!(r1.info_i64("replication", "connected_slaves"), 1);
    assert_eq!(r1.info_i64("stats", "sync_full"), 1);
    let agent = &mesh.regions[0].agent;
    assert_eq!(agent.metric("geosync_sync_full_total"), 1.0);
    // from-b and the delete at least ("shared" may lose to region 1's own
    // write); counted once the apply returned, which may be just after the
    // data is visible.
    wait_until("region 1 counted its applies", SETTLE, || {
        agent.metric("geosync_changes_applied_total") >= 2.0
    });
}

#[test]
fn an_agent_restarted_under_tls_continues_with_psync() {
    let certs = TestCerts::generate();
    partial_resync_after_agent_restart(Mesh::over(vec![tls_redis(&certs), plain_redis()], None));
}

/// Region 2 runs and writes; region 1's agent trusts the wrong CA.
#[test]
fn a_wrong_ca_stops_the_agent_with_a_clear_tls_error_and_nothing_is_applied() {
    let certs = TestCerts::generate();
    let a = tls_redis(&certs);
    let b = plain_redis();
    let _: () = a.conn().set("only-in-a", "1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (listen_a, listen_b) = (free_port(), free_port());
    let mut agent_b = Agent::start(2, &b.url(), listen_b, free_port(), &[listen_a], dir.path());
    let _: () = b.conn().set("only-in-b", "2").unwrap();
    wait_until("region 2 stamped its write", SETTLE, || {
        agent_b
            .get("/metrics")
            .is_some_and(|(_, m)| metric_sum(&m, "geosync_changes_stamped_total") >= 1.0)
    });

    let mut args = a.agent_args();
    let ca = args.iter().position(|x| x == "--redis-tls-ca").unwrap() + 1;
    args[ca] = certs.other_ca.to_str().unwrap().to_string();
    let mut agent_a = Agent::start_with(
        1,
        &a.url(),
        listen_a,
        free_port(),
        &[listen_b],
        dir.path(),
        &args,
    );
    let code = agent_a.wait_exit(SETTLE);
    let log = agent_a.log_text();
    assert_eq!(code, Some(1), "the agent stops at once: {log}");
    for needed in [
        "over TLS",
        "other-ca.pem",
        "invalid peer certificate: UnknownIssuer",
        "--redis-tls-ca",
    ] {
        assert!(log.contains(needed), "the error names {needed:?}: {log}");
    }
    // Nothing crossed: region 1 holds only its own key, no metadata and
    // no apply marker; region 2 never got region 1's key.
    let keys: Vec<String> = a.conn().keys("*").unwrap();
    assert_eq!(keys, ["only-in-a"]);
    assert!(!b.conn().exists::<_, bool>("only-in-a").unwrap());
    assert_eq!(agent_b.metric("geosync_changes_applied_total"), 0.0);
    assert!(!agent_b.is_ready(), "region 2 still waits for region 1");
}

/// The server wants a client certificate; an agent with the right CA but
/// no certificate of its own is refused, and says what to give it.
#[test]
fn an_agent_without_a_client_certificate_is_refused_with_a_clear_error() {
    let certs = TestCerts::generate();
    let a = tls_redis(&certs);
    let dir = tempfile::tempdir().unwrap();
    let ca = [
        "--redis-tls-ca".to_string(),
        certs.ca.to_str().unwrap().to_string(),
    ];
    let mut agent = Agent::start_with(1, &a.url(), free_port(), free_port(), &[], dir.path(), &ca);
    let code = agent.wait_exit(SETTLE);
    let log = agent.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("over TLS"), "{log}");
    assert!(
        log.contains("--redis-tls-cert"),
        "the error says what to give: {log}"
    );
}

/// With `--sentinel-tls` the agent asks a TLS-only sentinel where the
/// master is, and reaches the master it names over TLS too.
#[test]
fn the_master_named_by_a_tls_sentinel_is_reached_over_tls() {
    let certs = TestCerts::generate();
    let master = tls_redis(&certs);
    let _: () = master.conn().set("before", "1").unwrap();
    let sentinel = Sentinel::start(&master);
    let b = plain_redis();
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = (free_port(), free_port());
    let mut extra = certs.agent_args();
    extra.extend([
        "--sentinel".to_string(),
        format!("127.0.0.1:{}", sentinel.port),
        "--master-name".into(),
        "mymaster".into(),
        "--sentinel-tls".into(),
    ]);
    // --redis only says TLS (and would carry credentials); the address
    // comes from the sentinel.
    let mut agent_a = Agent::start_with(
        1,
        "rediss://127.0.0.1:1",
        l1,
        free_port(),
        &[l2],
        dir.path(),
        &extra,
    );
    let mut agent_b = Agent::start(2, &b.url(), l2, free_port(), &[l1], dir.path());
    wait_until("agents ready", SETTLE, || {
        agent_a.is_ready() && agent_b.is_ready()
    });
    let mut bc = b.conn();
    wait_until("the snapshot reaches region 2", SETTLE, || {
        bc.get::<_, Option<String>>("before").unwrap().as_deref() == Some("1")
    });
    let _: () = bc.set("from-b", "2").unwrap();
    let mut mc = master.conn();
    wait_until("region 2's write reaches the master", SETTLE, || {
        mc.get::<_, Option<String>>("from-b").unwrap().as_deref() == Some("2")
    });
    assert_eq!(master.info_i64("replication", "connected_slaves"), 1);
}

/// Name verification stays on: the server also listens on 127.0.0.2, which
/// its certificate does not name (it names 127.0.0.1 and localhost).
#[test]
fn a_certificate_that_does_not_name_the_host_is_refused() {
    let certs = TestCerts::generate();
    let a = Redis::builder()
        .bin(&tls_server_bin())
        .tls(certs.files())
        .args(&["--bind", "127.0.0.1", "127.0.0.2"])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let url = a.url().replace("127.0.0.1", "127.0.0.2");
    let mut agent = Agent::start_with(
        1,
        &url,
        free_port(),
        free_port(),
        &[],
        dir.path(),
        &a.agent_args(),
    );
    let code = agent.wait_exit(SETTLE);
    let log = agent.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("certificate not valid for name \"127.0.0.2\""),
        "{log}"
    );
    assert!(
        log.contains("subjectAltName"),
        "the error says what to fix: {log}"
    );
}
