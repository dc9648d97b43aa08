//! The peer protocol against a real agent: this test plays other regions'
//! agents over gRPC, sending hand-made batches.

mod support;

use std::time::Duration;

use geosync::base::change::{Change, Collection, Op, Value, encode_batch};
use geosync::base::hlc;
use redis::Commands;
use serde_bytes::ByteBuf;
use support::*;
use uhlc::{NTP64, Timestamp};

const SETTLE: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str, at: &Timestamp) -> Vec<u8> {
    encode_batch(&[string_put(key, value, at)])
}

fn now_ntp() -> u64 {
    uhlc::system_time_clock().as_u64()
}

/// Two regions receive the same two equal-time changes in opposite orders
/// and both keep the one `uhlc` orders higher (node 1 over node 256).
#[test]
fn equal_time_changes_resolve_identically_in_every_region() {
    let mesh = Mesh::start(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = now_ntp();
    let a = Timestamp::new(NTP64(t), hlc::node_id_to_id(1000).unwrap()); // bytes e8 03
    let b = Timestamp::new(NTP64(t), hlc::node_id_to_id(259).unwrap()); // bytes 03 01
    assert!(a > b);
    rt.block_on(async {
        let (r1, r2) = (mesh.regions[0].agent.listen, mesh.regions[1].agent.listen);
        let mut o_a1 = Origin::connect(r1, 1000, "geosync").await.unwrap();
        let mut o_b1 = Origin::connect(r1, 259, "geosync").await.unwrap();
        let mut o_a2 = Origin::connect(r2, 1000, "geosync").await.unwrap();
        let mut o_b2 = Origin::connect(r2, 259, "geosync").await.unwrap();
        // region 1 gets a then b; region 2 gets b then a
        assert_eq!(o_a1.send(1, put("tie", "from-1000", &a)).await.unwrap(), 1);
        assert_eq!(o_b1.send(1, put("tie", "from-259", &b)).await.unwrap(), 1);
        assert_eq!(o_b2.send(1, put("tie", "from-259", &b)).await.unwrap(), 1);
        assert_eq!(o_a2.send(1, put("tie", "from-1000", &a)).await.unwrap(), 1);
    });
    for r in &mesh.regions {
        let v: String = r.redis.conn().get("tie").unwrap();
        assert_eq!(v, "from-1000", "region {}", r.agent.node_id);
    }
    mesh.wait_converged(&[0], SETTLE);
}

/// Bad input gets a clear refusal and a metric, nothing is half-applied,
/// and the agent keeps serving other origins.
#[test]
fn bad_batches_are_refused_and_counted() {
    let mesh = Mesh::start(1);
    let agent = &mesh.regions[0].agent;
    let mut c = mesh.regions[0].redis.conn();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let port = agent.listen;
        // the agent's own node id
        let err = Origin::connect(port, 1, "geosync")
            .await
            .err()
            .expect("own node id refused");
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert!(err.message().contains("unique"), "{}", err.message());
        // another mesh
        let err = Origin::connect(port, 9, "other")
            .await
            .err()
            .expect("other mesh refused");
        assert!(err.message().contains("mesh"), "{}", err.message());

        // garbage payload
        let mut o = Origin::connect(port, 9, "geosync").await.unwrap();
        let err = o.send(1, b"\xc1garbage".to_vec()).await.unwrap_err();
        assert!(err.message().contains("malformed"), "{}", err.message());

        // a batch whose second change is bad: nothing of it is applied
        let mut o = Origin::connect(port, 9, "geosync").await.unwrap();
        let now = Timestamp::new(NTP64(now_ntp()), hlc::node_id_to_id(9).unwrap());
        let mut changes = geosync::base::change::decode_batch(&put("good", "v", &now)).unwrap();
        changes.push(Change {
            db: 0,
            key: ByteBuf::from(b"bad".to_vec()),
            stamp: "not-a-stamp".into(),
            op: Op::Delete,
        });
        let err = o.send(1, encode_batch(&changes)).await.unwrap_err();
        assert!(err.message().contains("malformed"), "{}", err.message());

        // a stamp ten seconds in the future
        let mut o = Origin::connect(port, 9, "geosync").await.unwrap();
        let ahead = Timestamp::new(
            NTP64(now_ntp() + (10 << 32)),
            hlc::node_id_to_id(9).unwrap(),
        );
        let err = o.send(1, put("future", "v", &ahead)).await.unwrap_err();
        assert!(err.message().contains("future"), "{}", err.message());

        // a change stamped by another node than the sender
        let mut o = Origin::connect(port, 9, "geosync").await.unwrap();
        let other = Timestamp::new(NTP64(now_ntp()), hlc::node_id_to_id(10).unwrap());
        let err = o.send(1, put("forwarded", "v", &other)).await.unwrap_err();
        assert!(err.message().contains("node 10"), "{}", err.message());

        // and a good batch still goes through
        let mut o = Origin::connect(port, 9, "geosync").await.unwrap();
        let ok = Timestamp::new(NTP64(now_ntp()), hlc::node_id_to_id(9).unwrap());
        assert_eq!(o.send(7, put("fine", "v", &ok)).await.unwrap(), 7);
    });
    assert!(
        !c.exists::<_, bool>("good").unwrap(),
        "a refused batch is not half-applied"
    );
    assert!(!c.exists::<_, bool>("future").unwrap());
    assert!(!c.exists::<_, bool>("forwarded").unwrap());
    assert_eq!(c.get::<_, String>("fine").unwrap(), "v");
    assert_eq!(
        metric_sum(
            &agent.get("/metrics").unwrap().1,
            "geosync_batches_refused_total"
        ),
        4.0
    );
    let body = agent.get("/metrics").unwrap().1;
    assert!(body.contains("reason=\"clock_skew\""), "{body}");
}

/// A set of `members` as a piece of a large key.
fn part(key: &str, at: u64, members: &[&str], stamp: &Timestamp) -> Change {
    Change {
        db: 0,
        key: ByteBuf::from(key.as_bytes().to_vec()),
        stamp: hlc::encode(stamp),
        op: Op::Part {
            at,
            value: Value::Set(
                members
                    .iter()
                    .map(|m| ByteBuf::from(m.as_bytes().to_vec()))
                    .collect(),
            ),
        },
    }
}

fn seal(key: &str, len: u64, digest: &str, stamp: &Timestamp) -> Change {
    Change {
        db: 0,
        key: ByteBuf::from(key.as_bytes().to_vec()),
        stamp: hlc::encode(stamp),
        op: Op::Seal {
            kind: Collection::Set,
            expire_at_ms: None,
            len,
            digest: digest.into(),
        },
    }
}

/// A large key whose pieces do not all arrive is not applied; the same key
/// sent whole in pieces is; malformed pieces and seals are quarantined (the
/// stream goes on).
#[test]
fn a_large_key_with_a_missing_piece_is_not_applied() {
    let mesh = Mesh::start(1);
    let agent = &mesh.regions[0].agent;
    let mut c = mesh.regions[0].redis.conn();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let digest = "0123456789abcdef";
    rt.block_on(async {
        let mut o = Origin::connect(agent.listen, 9, "geosync").await.unwrap();
        let id = hlc::node_id_to_id(9).unwrap();
        let t1 = Timestamp::new(NTP64(now_ntp()), id);
        // elements 2..4 never arrive
        let gap = [
            part("pieces", 0, &["a", "b"], &t1),
            part("pieces", 4, &["e"], &t1),
            seal("pieces", 5, digest, &t1),
        ];
        assert_eq!(o.send(1, encode_batch(&gap)).await.unwrap(), 1);
        let t2 = Timestamp::new(NTP64(now_ntp()), id);
        let whole = [
            part("pieces", 0, &["a", "b"], &t2),
            part("pieces", 2, &["c", "d", "e"], &t2),
        ];
        assert_eq!(o.send(2, encode_batch(&whole)).await.unwrap(), 2);
        assert!(
            !c.exists::<_, bool>("pieces").unwrap(),
            "nothing shows before the seal"
        );
        assert_eq!(
            o.send(3, encode_batch(&[seal("pieces", 5, digest, &t2)]))
                .await
                .unwrap(),
            3
        );

        // (other node ids: node 9's stream is still open)
        let t3 = Timestamp::new(NTP64(now_ntp()), hlc::node_id_to_id(10).unwrap());
        let mut o = Origin::connect(agent.listen, 10, "geosync").await.unwrap();
        let string_piece = Change {
            op: Op::Part {
                at: 0,
                value: Value::String(ByteBuf::from(b"s".to_vec())),
            },
            ..part("bad", 0, &[], &t3)
        };
        assert_eq!(o.send(1, encode_batch(&[string_piece])).await.unwrap(), 1);
        let t4 = Timestamp::new(NTP64(now_ntp()), hlc::node_id_to_id(11).unwrap());
        let mut o = Origin::connect(agent.listen, 11, "geosync").await.unwrap();
        assert_eq!(
            o.send(1, encode_batch(&[seal("bad", 5, "XYZ", &t4)]))
                .await
                .unwrap(),
            1
        );
    });
    let mut members: Vec<String> = c.smembers("pieces").unwrap();
    members.sort();
    assert_eq!(members, ["a", "b", "c", "d", "e"]);
    assert_eq!(agent.metric("geosync_large_keys_incomplete_total"), 1.0);
    assert!(!c.exists::<_, bool>("bad").unwrap());
    assert_eq!(agent.metric("geosync_changes_quarantined_total"), 2.0);
    let building: Vec<String> = c.keys("__geosync:in:*").unwrap();
    assert!(
        building.is_empty(),
        "built keys are cleaned up: {building:?}"
    );
    let rec: String = mesh.regions[0].redis.record(0, "pieces").expect("recorded");
    assert!(rec.ends_with(&format!("v{digest}")), "recorded: {rec}");
}

/// Regions whose `--max-key-elements` or `databases` differ would cut large
/// keys differently or send changes of a database the other lacks: each
/// agent refuses the other when it connects, and says which setting.
#[test]
fn regions_with_different_settings_refuse_each_other_naming_the_setting() {
    let mesh = Mesh::builder(2)
        .per_node(|n| {
            let elements = if n == 1 { "1000" } else { "2000" };
            vec!["--max-key-elements".to_string(), elements.to_string()]
        })
        .unready()
        .start();
    for r in &mesh.regions {
        wait_until(
            "the other region is refused for its settings",
            SETTLE,
            || {
                // try_metric: the admin server may not answer yet.
                r.agent
                    .try_metric("geosync_peer_refused_total{reason=\"settings\"}")
                    .is_some_and(|n| n >= 1.0)
            },
        );
    }
    // Region 1 refused region 2 and logs why.
    let refusing = &mesh.regions[0].agent;
    wait_until("region 1's log names the setting", SETTLE, || {
        refusing
            .log_text()
            .contains("runs with --max-key-elements 2000, this region with 1000")
    });

    let other = Mesh::builder(2)
        .servers(vec![
            Redis::start(&[]),
            Redis::start(&["--databases", "32"]),
        ])
        .unready()
        .start();
    wait_until("a different `databases` is refused", SETTLE, || {
        other.regions[1]
            .agent
            .try_metric("geosync_peer_refused_total{reason=\"settings\"}")
            .is_some_and(|n| n >= 1.0)
    });
    // The refused agent hears why, as it retries.
    let refused = &other.regions[0].agent;
    wait_until("region 1 is told why region 2 refuses it", SETTLE, || {
        refused
            .log_text()
            .contains("Redis has `databases` 16, this region's has 32")
    });
}
