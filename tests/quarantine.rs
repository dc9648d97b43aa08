//! A change the local Redis cannot take never stalls the stream: values no
//! server accepts are set aside before any write, a value this server
//! refuses leaves its key as it was, and a hash whose field expiries this
//! server cannot hold is written without them. Each is counted and the
//! changes around it are applied.

mod support;

use geosync::base::change::{Change, Op, StreamState, Value};
use geosync::base::hlc;
use geosync::lab::compare::has_field_expiry;
use redis::Commands;
use serde_bytes::ByteBuf;
use support::*;
use uhlc::{NTP64, Timestamp};

const SETTLE: std::time::Duration = std::time::Duration::from_secs(20);

/// The node id the test's fake origin uses.
const ORIGIN: u32 = 9;

fn b(s: &str) -> ByteBuf {
    ByteBuf::from(s.as_bytes().to_vec())
}

/// A stamp of the fake origin, now.
fn now() -> Timestamp {
    Timestamp::new(
        NTP64(uhlc::system_time_clock().as_u64()),
        hlc::node_id_to_id(ORIGIN).unwrap(),
    )
}

fn put(key: &str, value: Value) -> Change {
    Change {
        db: 0,
        key: b(key),
        stamp: hlc::encode(&now()),
        op: Op::Put {
            value,
            expire_at_ms: None,
        },
    }
}

fn stream(entries: &[&str], groups: &[&str]) -> Value {
    Value::Stream(StreamState {
        entries: entries
            .iter()
            .map(|id| (id.to_string(), vec![(b("f"), b("v"))]))
            .collect(),
        last_id: entries.iter().max().unwrap_or(&"0-0").to_string(),
        entries_added: entries.len() as u64,
        max_deleted_id: "0-0".into(),
        groups: groups.iter().map(|g| (b(g), "0-0".into(), None)).collect(),
    })
}

fn quarantined(mesh: &Mesh) -> f64 {
    mesh.regions[0]
        .agent
        .metric("geosync_changes_quarantined_total")
}

/// A sorted set with a NaN score and a stream whose ids go backwards
/// arrive in one batch with good changes: the good ones are applied, the
/// two keys keep the values they had, both are counted, and the next batch
/// is applied as well.
#[test]
fn values_no_server_accepts_are_set_aside_and_the_rest_is_applied() {
    let mesh = Mesh::start(1);
    let mut c = mesh.regions[0].redis.conn();
    let _: () = c.set("z", "old").unwrap();
    let _: () = c.set("s", "old").unwrap();
    mesh.wait_stamped(0, SETTLE);
    let mut peer = FakePeer::connect(mesh.regions[0].agent.listen, ORIGIN);
    let batch = [
        put("before", Value::String(b("v"))),
        put("z", Value::ZSet(vec![(b("m"), b("nan"))])),
        put("s", stream(&["2-0", "1-0"], &[])),
        put("after", Value::String(b("v"))),
    ];
    assert_eq!(peer.send(1, &batch).expect("the batch is acknowledged"), 1);
    assert_eq!(
        peer.send(2, &[put("next", Value::String(b("v")))])
            .expect("the next batch is acknowledged"),
        2
    );
    for k in ["before", "after", "next"] {
        assert_eq!(c.get::<_, String>(k).unwrap(), "v", "{k} applied");
    }
    assert_eq!(c.get::<_, String>("z").unwrap(), "old", "z kept its value");
    assert_eq!(c.get::<_, String>("s").unwrap(), "old", "s kept its value");
    assert_eq!(quarantined(&mesh), 2.0);
    assert!(
        mesh.regions[0].agent.log_text().contains("quarantined"),
        "the agent logs the keys it set aside"
    );
}

/// The server refuses a write half-way through a key (here the agent's
/// user may not run XGROUP, so a stream with a consumer group fails after
/// its entries were added): the key keeps the value it had, nothing of the
/// new one shows, and the changes around it are applied.
#[test]
fn a_write_the_server_refuses_half_way_leaves_the_key_as_it_was() {
    let mesh = Mesh::start(1);
    let mut c = mesh.regions[0].redis.conn();
    let _: () = c.set("s", "old").unwrap();
    mesh.wait_stamped(0, SETTLE);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-xgroup")
        .query(&mut c)
        .unwrap();
    let mut peer = FakePeer::connect(mesh.regions[0].agent.listen, ORIGIN);
    let batch = [
        put("before", Value::String(b("v"))),
        put("s", stream(&["1-0", "2-0"], &["readers"])),
        put("after", Value::String(b("v"))),
    ];
    assert_eq!(peer.send(1, &batch).expect("the batch is acknowledged"), 1);
    assert_eq!(c.get::<_, String>("s").unwrap(), "old", "s kept its value");
    for k in ["before", "after"] {
        assert_eq!(c.get::<_, String>(k).unwrap(), "v", "{k} applied");
    }
    let building: Vec<String> = c.keys("__geosync:in:*").unwrap();
    assert!(
        building.is_empty(),
        "nothing half-built is left: {building:?}"
    );
    assert_eq!(quarantined(&mesh), 1.0);
    // The same stream without a group is a write the server takes.
    assert_eq!(
        peer.send(2, &[put("s", stream(&["1-0", "2-0"], &[]))])
            .expect("acknowledged"),
        2
    );
    let n: usize = c.xlen("s").unwrap();
    assert_eq!(n, 2, "a later change of the key is applied");
}

/// A hash with field expiries (written in a Redis 7.4+ region) reaches a
/// server without them: its live fields are written without their
/// expiries, a field already expired is left out, and it is counted.
#[test]
fn field_expiries_a_server_cannot_hold_are_dropped_and_counted() {
    let mesh = Mesh::start(1);
    let mut c = mesh.regions[0].redis.conn();
    if !feature::ran_if(
        !has_field_expiry(&mut c),
        "a server without hash field expiry",
    ) {
        return;
    }
    let now_ms = geosync::lab::now_ms();
    let hash = Value::HashTtl(vec![
        (b("kept"), b("1"), -1),
        (b("expires"), b("2"), now_ms + 3_600_000),
        (b("expired"), b("3"), now_ms - 1_000),
    ]);
    let mut peer = FakePeer::connect(mesh.regions[0].agent.listen, ORIGIN);
    let batch = [put("h", hash), put("after", Value::String(b("v")))];
    assert_eq!(peer.send(1, &batch).expect("the batch is acknowledged"), 1);
    let mut fields: Vec<(String, String)> = c.hgetall("h").unwrap();
    fields.sort();
    assert_eq!(
        fields,
        [("expires".into(), "2".into()), ("kept".into(), "1".into())]
    );
    assert_eq!(c.get::<_, String>("after").unwrap(), "v");
    assert_eq!(
        mesh.regions[0]
            .agent
            .metric("geosync_changes_degraded_total"),
        1.0
    );
    assert_eq!(quarantined(&mesh), 0.0);
}
