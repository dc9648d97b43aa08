//! Keys of module data types (FalkorDB graphs, RedisJSON documents, Redis
//! 8's vector sets, ...): geosync skips them, and says so once per key,
//! naming the module.
//!
//! The stamp script reads a key's state by `TYPE`; a type it cannot carry
//! comes back as unsupported with the name `TYPE` gave, which for a module
//! type is the module's 9-character type name (`graphdata`), the same name
//! the RDB snapshot encodes in its module id. Snapshot keys take the same
//! path (the tailer reports every snapshot key as dirty), so both the
//! snapshot and the live stream are classified here.
//!
//! Redis does not say which loaded module registered a type, so the owner
//! is worked out from `MODULE LIST` (asked once per type, when its first key
//! is met): the only module loaded, or the only one whose name starts the
//! type name (`graph` for `graphdata`, `vectorset` for `vectorset`);
//! otherwise the log lists the loaded modules.
//!
//! Every skipped key counts in `geosync_unsupported_keys_total{reason}`
//! (reason `module:<type name>`). The log names each key once, and at most
//! [`LOGGED_KEYS_PER_TYPE`] keys per type, so a graph written a thousand
//! times a second, or a million module keys in a snapshot, do not flood it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use redis::Value;
use tracing::{debug, warn};

use crate::ops::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Keys of one type named in the log before further ones are only counted.
pub const LOGGED_KEYS_PER_TYPE: usize = 10;

/// True for a name a module type can have: exactly 9 characters of
/// `A-Z a-z 0-9 - _` (Redis refuses any other). Core types never have one.
pub fn is_module_type_name(t: &str) -> bool {
    t.len() == 9
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The metric reason for a skipped key of type `t`: `module:<t>` for module
/// types, `type:<t>` for anything else the script could not read. The
/// number of types is small and fixed by what the server has loaded.
pub fn reason(t: &str) -> String {
    if is_module_type_name(t) {
        format!("module:{t}")
    } else {
        format!("type:{t}")
    }
}

/// Module names from a `MODULE LIST` reply (RESP2 arrays of field/value
/// pairs, or RESP3 maps).
pub fn module_names(reply: &Value) -> Vec<String> {
    let Value::Array(modules) = reply else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    };
    modules
        .iter()
        .filter_map(|m| {
            let pairs: Vec<(&Value, &Value)> = match m {
                Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|p| p.first().zip(p.get(1)))
                    .collect(),
                Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
                _ => return None,
            };
            pairs
                .into_iter()
                .find(|(k, _)| text(k).as_deref() == Some("name"))
                .and_then(|(_, v)| text(v))
        })
        .collect()
}

/// The names of the modules the server has loaded (`MODULE LIST`), to say
/// which module a skipped key's type belongs to.
pub async fn loaded_modules(store: &mut Store) -> Result<Vec<String>, StoreError> {
    let conn = store.conn().await?;
    let reply: Value = redis::cmd("MODULE").arg("LIST").query_async(conn).await?;
    Ok(module_names(&reply))
}

/// Which loaded module a module type belongs to, as far as can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This module: the only one loaded, or the only one whose name starts
    /// the type name.
    Module(String),
    /// One of these loaded modules; nothing says which.
    OneOf(Vec<String>),
    /// `MODULE LIST` failed or listed nothing.
    Unknown(String),
}

impl Owner {
    /// Attributes type `t` among the loaded `modules`.
    pub fn attribute(t: &str, modules: &[String]) -> Owner {
        match modules {
            [] => return Owner::Unknown("MODULE LIST lists no module".into()),
            [only] => return Owner::Module(only.clone()),
            _ => {}
        }
        let lower = t.to_ascii_lowercase();
        let starts: Vec<&String> = modules
            .iter()
            .filter(|m| !m.is_empty() && lower.starts_with(&m.to_ascii_lowercase()))
            .collect();
        match starts.as_slice() {
            [one] => Owner::Module((*one).clone()),
            _ => Owner::OneOf(modules.to_vec()),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Module(m) => f.write_str(m),
            Owner::OneOf(ms) => write!(f, "one of the loaded modules: {}", ms.join(", ")),
            Owner::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// What one type has logged so far.
struct TypeLog {
    owner: Owner,
    /// Hashes of the (database, key) pairs named in the log.
    logged: HashSet<u64>,
    /// The log said further keys are only counted.
    capped: bool,
}

/// Counts and logs skipped keys; see the module docs for the limits.
#[derive(Default)]
pub struct ModuleKeys {
    types: HashMap<String, TypeLog>,
}

impl ModuleKeys {
    /// True once the owner of type `t` has been worked out
    /// ([`Self::learn`]); before that the stamper asks `MODULE LIST`.
    pub fn knows(&self, t: &str) -> bool {
        !is_module_type_name(t) || self.types.contains_key(t)
    }

    /// Records who owns module type `t`.
    pub fn learn(&mut self, t: &str, owner: Owner) {
        self.types.entry(t.to_string()).or_insert(TypeLog {
            owner,
            logged: HashSet::new(),
            capped: false,
        });
    }

    /// Counts one skipped key of type `t` and logs it the first time (up to
    /// [`LOGGED_KEYS_PER_TYPE`] keys per type). Returns true when it was
    /// logged at WARN.
    pub fn skipped(&mut self, metrics: &Metrics, db: u32, key: &[u8], t: &str) -> bool {
        metrics
            .unsupported_keys
            .get_or_create(&Metrics::reason(&reason(t)))
            .inc();
        let shown = String::from_utf8_lossy(key);
        if !is_module_type_name(t) {
            warn!(db, key = %shown, r#type = %t, "key type is not replicated");
            return true;
        }
        let log = self.types.entry(t.to_string()).or_insert_with(|| TypeLog {
            owner: Owner::Unknown("not asked".into()),
            logged: HashSet::new(),
            capped: false,
        });
        let mut h = DefaultHasher::new();
        (db, key).hash(&mut h);
        let id = h.finish();
        if log.logged.contains(&id) {
            debug!(db, key = %shown, module_type = %t, "module key written again; not replicated");
            return false;
        }
        if log.logged.len() < LOGGED_KEYS_PER_TYPE {
            log.logged.insert(id);
            warn!(
                db,
                key = %shown,
                module_type = %t,
                module = %log.owner,
                "key of a module data type is not replicated (module data is skipped)"
            );
            return true;
        }
        if !log.capped {
            log.capped = true;
            warn!(
                module_type = %t,
                module = %log.owner,
                logged = LOGGED_KEYS_PER_TYPE,
                "more keys of this module data type are not replicated; they are counted in geosync_unsupported_keys_total, not logged one by one"
            );
            return true;
        }
        debug!(db, key = %shown, module_type = %t, "module key not replicated");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn module_type_names_are_nine_characters() {
        for t in [
            "graphdata",
            "vectorset",
            "ReJSON-RL",
            "MBbloom--",
            "ft_index0",
        ] {
            assert!(is_module_type_name(t), "{t}");
            assert_eq!(reason(t), format!("module:{t}"));
        }
        for t in ["string", "stream", "graphdata2", "graph dat", ""] {
            assert!(!is_module_type_name(t), "{t}");
        }
        assert_eq!(reason("newtype"), "type:newtype");
    }

    #[test]
    fn owners() {
        // Redis 8.2 with FalkorDB lists the built-in vectorset module too.
        let loaded = names(&["graph", "vectorset"]);
        assert_eq!(
            Owner::attribute("graphdata", &loaded),
            Owner::Module("graph".into())
        );
        assert_eq!(
            Owner::attribute("vectorset", &loaded),
            Owner::Module("vectorset".into())
        );
        assert_eq!(
            Owner::attribute("ReJSON-RL", &names(&["ReJSON", "bf"])),
            Owner::Module("ReJSON".into())
        );
        // RedisBloom's module is "bf"; its types do not say so.
        let stack = names(&["bf", "timeseries", "vectorset"]);
        let owner = Owner::attribute("MBbloom--", &stack);
        assert_eq!(owner, Owner::OneOf(stack.clone()));
        assert_eq!(
            owner.to_string(),
            "one of the loaded modules: bf, timeseries, vectorset"
        );
        assert_eq!(
            Owner::attribute("MBbloom--", &names(&["bf"])),
            Owner::Module("bf".into())
        );
        assert!(matches!(
            Owner::attribute("graphdata", &[]),
            Owner::Unknown(_)
        ));
    }

    #[test]
    fn module_list_replies() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            Value::Array(vec![
                b("name"),
                b("graph"),
                b("ver"),
                Value::Int(41603),
                b("path"),
                b("/x/falkordb.so"),
                b("args"),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![b("name"), b("vectorset"), b("ver"), Value::Int(1)]),
        ]);
        assert_eq!(module_names(&resp2), names(&["graph", "vectorset"]));
        let resp3 = Value::Array(vec![Value::Map(vec![
            (b("name"), b("graph")),
            (b("ver"), Value::Int(1)),
        ])]);
        assert_eq!(module_names(&resp3), names(&["graph"]));
        assert!(module_names(&Value::Array(vec![])).is_empty());
        assert!(module_names(&Value::Nil).is_empty());
    }

    #[test]
    fn each_key_is_logged_once_and_the_log_is_capped() {
        let metrics = Metrics::new();
        let mut keys = ModuleKeys::default();
        assert!(!keys.knows("graphdata"));
        keys.learn("graphdata", Owner::Module("graph".into()));
        assert!(keys.knows("graphdata"));
        // A graph written over and over: logged once, counted every time.
        assert!(keys.skipped(&metrics, 0, b"g", "graphdata"));
        for _ in 0..100 {
            assert!(!keys.skipped(&metrics, 0, b"g", "graphdata"));
        }
        // The same name in another database is another key.
        assert!(keys.skipped(&metrics, 1, b"g", "graphdata"));
        // Many keys: the first ones, then one line saying the rest are counted.
        let logged = (0..1000)
            .filter(|i| keys.skipped(&metrics, 0, format!("k{i}").as_bytes(), "graphdata"))
            .count();
        assert_eq!(logged, LOGGED_KEYS_PER_TYPE - 2 + 1);
        let body = metrics.render();
        assert!(
            body.contains("geosync_unsupported_keys_total{reason=\"module:graphdata\"} 1102"),
            "{body}"
        );
        // Another type has its own allowance.
        assert!(keys.skipped(&metrics, 0, b"v", "vectorset"));
    }
}
