//! What the fuzz targets do with each input, shared with the regression test
//! `tests/fuzz_regressions.rs` (which includes this file with `#[path]`), so
//! a saved input replays exactly the code path that found it.
//!
//! Each function feeds untrusted bytes to one decoder and panics only when
//! the decoder breaks a promise its documentation makes; decoding errors are
//! the expected outcome for most inputs.

use geosync::base::change::{Op, Value, decode_batch, encode_batch};
use geosync::source::rdb::{RdbEntry, RdbError, RdbReader, RdbValueType};
use geosync::source::resp;

/// Per-string cap for the RDB reader: a fuzz input is small, and a corrupt
/// length must fail instead of asking for gigabytes.
pub const RDB_MAX_STRING_LEN: u64 = 16 << 20;

/// RDB items read from one input at most (every item consumes at least one
/// byte, so this only guards against a regression that stops consuming).
const RDB_MAX_ENTRIES: usize = 1 << 20;

/// The replication-stream decoder: frames are taken off the front of the
/// buffer one after another, as the tailer does.
///
/// Checked: a frame uses at least one byte and no more than the buffer; the
/// same frame is parsed from exactly its own bytes; a cut inside a frame is
/// "incomplete", never an error (the tailer waits for more bytes then); a
/// command re-encodes to bytes that parse back to it.
pub fn resp(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        let buf = &data[at..];
        let (frame, used) = match resp::parse(buf) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return,
        };
        assert!(
            used > 0 && used <= buf.len(),
            "frame used {used} of {} bytes",
            buf.len()
        );
        let own = &buf[..used];
        assert_eq!(
            resp::parse(own),
            Ok(Some((frame.clone(), used))),
            "the frame parses differently from its own bytes"
        );
        for cut in [0, 1, used / 2, used - 1] {
            if cut < used {
                assert_eq!(
                    resp::parse(&own[..cut]),
                    Ok(None),
                    "a frame cut after {cut} of {used} bytes is not reported incomplete"
                );
            }
        }
        if let Some(args) = frame.into_command() {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
            let bytes = resp::encode_command(&refs);
            let (again, n) = resp::parse(&bytes)
                .expect("an encoded command parses")
                .expect("an encoded command is complete");
            assert_eq!(n, bytes.len());
            assert_eq!(again.into_command(), Some(args));
        }
        at += used;
    }
}

/// The RDB snapshot parser, both ways the agent reads a snapshot: decoding
/// every value (`next_entry`) and key-only (`next_key`, what the tailer uses
/// for a full resync), each from the header until the end or the first error.
///
/// Checked: each reader stops (finished or failed) and stays stopped, never
/// reads past the input, and after a clean end leaves exactly the bytes after
/// the trailer unread. And the two agree, as `next_key` documents ("exactly
/// the keys `next_entry` yields", checking the same framing but not the
/// content of skipped payloads): the keys `next_entry` read before it stopped
/// are the first keys `next_key` reads, in the same order, with the same
/// database, expiry and type; when `next_entry` reached the end cleanly, so
/// did `next_key`, with the same keys and bytes.
pub fn rdb(data: &[u8]) {
    let Some(full) = read_rdb(data, |r| {
        r.next_entry().map(|e| {
            e.map(|e| match e {
                RdbEntry::Key(k) => Some(KeyHead {
                    db: k.db,
                    key: k.key,
                    expire_at_ms: k.expire_at_ms,
                    value_type: k.value.value_type(),
                }),
                _ => None,
            })
        })
    }) else {
        return;
    };
    let keys_only = read_rdb(data, |r| {
        r.next_key().map(|k| {
            k.map(|k| {
                Some(KeyHead {
                    db: k.db,
                    key: k.key,
                    expire_at_ms: k.expire_at_ms,
                    value_type: k.value_type,
                })
            })
        })
    })
    .expect("the header was read once already");
    let n = full.keys.len();
    assert!(
        keys_only.keys.len() >= n && keys_only.keys[..n] == full.keys[..],
        "next_key disagrees with next_entry on the first {n} keys:\n{:?}\nvs\n{:?}",
        &keys_only.keys[..n.min(keys_only.keys.len())],
        full.keys
    );
    if full.end.is_some() {
        assert_eq!(keys_only.keys, full.keys, "next_key read more keys");
        assert_eq!(
            keys_only.end, full.end,
            "next_entry read the whole snapshot but next_key did not (None: failed)"
        );
    }
}

/// What identifies a key in both reading modes.
#[derive(Debug, PartialEq)]
struct KeyHead {
    db: u64,
    key: Vec<u8>,
    expire_at_ms: Option<i64>,
    value_type: RdbValueType,
}

/// The keys one reading mode yielded, and the bytes it used if it reached
/// the end cleanly (None if it failed).
struct RdbRead {
    keys: Vec<KeyHead>,
    end: Option<u64>,
}

/// Reads a whole snapshot with `step` (Ok(Some(Some(key))) for a key,
/// Ok(Some(None)) for any other item); None if the header is rejected.
fn read_rdb(
    data: &[u8],
    mut step: impl FnMut(&mut RdbReader<&[u8]>) -> Result<Option<Option<KeyHead>>, RdbError>,
) -> Option<RdbRead> {
    let mut reader = RdbReader::new(data).ok()?;
    reader.set_max_string_len(RDB_MAX_STRING_LEN);
    let mut keys = Vec::new();
    for _ in 0..RDB_MAX_ENTRIES {
        match step(&mut reader) {
            Ok(Some(key)) => {
                assert!(reader.bytes_read() <= data.len() as u64);
                keys.extend(key);
            }
            Ok(None) => {
                assert!(
                    matches!(step(&mut reader), Ok(None)),
                    "a finished reader must stay finished"
                );
                let used = reader.bytes_read();
                let rest = reader.into_inner();
                assert_eq!(
                    rest.len() as u64 + used,
                    data.len() as u64,
                    "bytes after the RDB trailer were consumed"
                );
                return Some(RdbRead {
                    keys,
                    end: Some(used),
                });
            }
            Err(_) => {
                assert!(
                    step(&mut reader).is_err(),
                    "a failed reader must stay failed"
                );
                return Some(RdbRead { keys, end: None });
            }
        }
    }
    panic!("{RDB_MAX_ENTRIES} RDB items from {} bytes", data.len());
}

/// The peer batch decoder (a peer's gRPC payload), then what the applier does
/// with each value: its flat form for the Lua scripts, and back.
///
/// Checked: a decoded batch re-encodes to an equal batch; every value
/// survives `to_flat` then `from_flat`; and any flat list that `from_flat`
/// accepts (here: every decoded value's items read as every type) survives
/// the same round trip.
pub fn peer_batch(data: &[u8]) {
    let Ok(changes) = decode_batch(data) else {
        return;
    };
    let again = decode_batch(&encode_batch(&changes)).expect("a re-encoded batch decodes");
    assert_eq!(again, changes, "batch changed through encode/decode");
    for change in &changes {
        let (Op::Put { value, .. } | Op::Part { value, .. }) = &change.op else {
            continue;
        };
        let flat = value.to_flat();
        let back = Value::from_flat(value.type_name(), &flat).unwrap_or_else(|e| {
            panic!("value's own flat form rejected: {e}");
        });
        assert_eq!(&back, value, "value changed through to_flat/from_flat");
        assert_eq!(back.len(), value.len());
        for type_name in ["string", "list", "set", "zset", "hash", "stream", "other"] {
            if let Ok(v) = Value::from_flat(type_name, &flat) {
                assert_eq!(v.type_name(), type_name);
                let round = Value::from_flat(type_name, &v.to_flat())
                    .expect("a value read from flat items reads back");
                assert_eq!(round, v, "{type_name} changed through to_flat/from_flat");
            }
        }
    }
}

/// What a caller sends before any batch, and the certificate it presents:
/// `data` is a two-byte big-endian length, that many bytes of certificate
/// DER, then an `OriginMessage` or a `SnapshotRequest` (protobuf).
///
/// Checked: reading a certificate never panics and names a node only if
/// it is a certificate; a caller is admitted only with this agent's
/// protocol version and mesh and, under mutual TLS, a certificate naming
/// the node id it claims; under mutual TLS a caller without a certificate
/// is always refused.
pub fn handshake(data: &[u8]) {
    use geosync::mesh::PROTOCOL_VERSION;
    use geosync::mesh::pb::{OriginMessage, SnapshotRequest, origin_message};
    use geosync::mesh::security::binds_node_der;
    use geosync::mesh::server::{Claim, caller_refusal};
    use prost::Message;

    let (cert, msg) = match data {
        [hi, lo, rest @ ..] => {
            let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
            rest.split_at(n)
        }
        _ => return,
    };
    let mut claims = Vec::new();
    if let Ok(OriginMessage {
        kind: Some(origin_message::Kind::Hello(h)),
    }) = OriginMessage::decode(msg)
    {
        claims.push((h.protocol_version, h.mesh, h.node_id));
    }
    if let Ok(r) = SnapshotRequest::decode(msg) {
        claims.push((r.protocol_version, r.mesh, r.node_id));
    }
    for (protocol_version, mesh, node_id) in claims {
        let claim = Claim {
            protocol_version,
            mesh: &mesh,
            node_id,
        };
        let names = binds_node_der(cert, node_id);
        for mutual_tls in [false, true] {
            let admitted = caller_refusal("geosync", mutual_tls, Some(cert), &claim).is_none();
            let expected =
                protocol_version == PROTOCOL_VERSION && mesh == "geosync" && (!mutual_tls || names);
            assert_eq!(
                admitted, expected,
                "claim {claim:?}, mutual TLS {mutual_tls}"
            );
        }
        assert!(
            caller_refusal("geosync", true, None, &claim).is_some(),
            "admitted without a certificate under mutual TLS"
        );
    }
}
