//! Key filters against real servers and agents: the glob patterns match
//! what Redis's own `KEYS` matches; keys and databases the filters keep
//! local stay in their region (no record, nothing shipped, a different
//! value elsewhere stays different) while the rest converges; and a peer
//! whose filters differ is refused, with the reason counted.

mod support;

use std::time::Duration;

use geosync::base::filter::KeyFilter;
use geosync::lab::{Mesh, Redis, wait_until};
use rand::{Rng, SeedableRng};
use redis::Commands;

const SETTLE: Duration = Duration::from_secs(30);

/// The patterns are Redis's: for random keys, a filter including one
/// pattern admits exactly the keys `KEYS pattern` returns.
#[test]
fn patterns_match_what_redis_keys_matches() {
    let seed: u64 = std::env::var("GEOSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (GEOSYNC_TEST_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let r = Redis::start(&[]);
    let mut c = r.conn();
    let alphabet = b"ab:*?[]^-\\x";
    let mut keys = Vec::new();
    for _ in 0..400 {
        let len = rng.gen_range(0..7);
        let k: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        let _: () = c.set(&k, 1).unwrap();
        keys.push(k);
    }
    keys.sort();
    keys.dedup();
    let mut patterns: Vec<String> = [
        "*", "a*", "*b", "a?b", "[ab]*", "[^a]*", "[a-b]:*", "\\**", "*\\?", "a[*]b", "*:*",
        "[b-a]*", "x", "", "[", "a[", "\\",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..200 {
        let len = rng.gen_range(1..6);
        patterns.push(
            (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                .collect(),
        );
    }
    for p in patterns.iter().filter(|p| !p.is_empty()) {
        let mut want: Vec<Vec<u8>> = redis::cmd("KEYS").arg(p).query(&mut c).unwrap();
        want.sort();
        let f = KeyFilter::new(std::slice::from_ref(p), &[], &[], &[]).unwrap();
        let got: Vec<Vec<u8>> = keys.iter().filter(|k| f.admits(0, k)).cloned().collect();
        assert_eq!(got, want, "pattern {p:?} (seed {seed})");
    }
}

#[test]
fn keys_the_filters_keep_local_stay_in_their_region() {
    let args = ["--exclude-keys", "cache:*,*:tmp", "--exclude-db", "2"];
    let mesh = Mesh::builder(2).agent_args(&args).start();
    let (mut a, mut b) = (mesh.regions[0].redis.conn(), mesh.regions[1].redis.conn());
    let (mut a2, mut b2) = (
        mesh.regions[0].redis.conn_db(2),
        mesh.regions[1].redis.conn_db(2),
    );
    let _: () = a.set("cache:1", "a's").unwrap();
    let _: () = b.set("cache:1", "b's").unwrap();
    let _: () = a.set("job:tmp", "x").unwrap();
    let _: () = a2.set("k", "db 2 of a").unwrap();
    let _: () = a.set("user:1", "ann").unwrap();
    let _: () = a2.set("k2", "db 2 of a").unwrap();
    let _: () = a.set("user:2", "bob").unwrap();
    wait_until("user:2 arrives in b", SETTLE, || {
        b.get::<_, Option<String>>("user:2").unwrap().as_deref() == Some("bob")
    });
    mesh.wait_stamped(0, SETTLE);
    mesh.wait_stamped(1, SETTLE);
    assert_eq!(b.get::<_, String>("user:1").unwrap(), "ann");
    assert_eq!(a.get::<_, String>("cache:1").unwrap(), "a's");
    assert_eq!(b.get::<_, String>("cache:1").unwrap(), "b's");
    assert!(!b.exists::<_, bool>("job:tmp").unwrap());
    assert!(!b2.exists::<_, bool>("k").unwrap() && !b2.exists::<_, bool>("k2").unwrap());
    for r in &mesh.regions {
        assert_eq!(
            r.redis.record(0, "cache:1"),
            None,
            "{}: cache:1 recorded",
            r.name
        );
        assert_eq!(r.redis.record(0, "job:tmp"), None);
        assert_eq!(r.redis.record(2, "k"), None);
        assert!(r.redis.record(0, "user:1").is_some());
    }
    // A flush of a database kept local stays local too.
    let _: () = b2.set("b-only", 1).unwrap();
    let _: () = redis::cmd("FLUSHDB").exec(&mut a2).unwrap();
    let _: () = a.set("user:3", "cy").unwrap();
    wait_until("user:3 arrives in b", SETTLE, || {
        b.exists::<_, bool>("user:3").unwrap()
    });
    assert!(b2.exists::<_, bool>("b-only").unwrap());
}

#[test]
fn a_peer_with_other_filters_is_refused() {
    let mesh = Mesh::builder(2)
        .per_node(|id| {
            if id == 1 {
                vec!["--exclude-keys".into(), "cache:*".into()]
            } else {
                vec![]
            }
        })
        .unready()
        .start();
    let refused = "geosync_peer_refused_total{reason=\"settings\"}";
    for r in &mesh.regions {
        wait_until(
            &format!("region {} refuses the other", r.name),
            SETTLE,
            || {
                r.agent
                    .get("/metrics")
                    .and_then(|(_, body)| geosync::lab::metric_value(&body, refused))
                    .is_some_and(|v| v >= 1.0)
            },
        );
    }
    let log = mesh.regions[1].agent.log_text();
    let log0 = mesh.regions[0].agent.log_text();
    assert!(
        format!("{log}{log0}").contains("key filters"),
        "the refusal names the key filters:\n{log}\n{log0}"
    );
    let _: () = mesh.regions[0].redis.conn().set("user:1", 1).unwrap();
    mesh.wait_stamped(0, SETTLE);
    assert!(
        !mesh.regions[1]
            .redis
            .conn()
            .exists::<_, bool>("user:1")
            .unwrap()
    );
}
