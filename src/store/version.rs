//! Which server the local Redis is, and whether geosync supports it: Redis
//! 7.0 and newer (its key specs, `COMMAND GETKEYSANDFLAGS`, the RDB and
//! replication forms the tailer reads), Valkey 7.2 and newer.
//!
//! The version is read with `HELLO` without arguments (it keeps the
//! connection's protocol). The server lets every client run `HELLO`, whatever
//! its ACL user, unlike `INFO`, which the least-privilege user (README) may
//! not run. Valkey says `server: valkey` and its own version; Redis says
//! `server: redis`.

use redis::Value;

/// The oldest Redis geosync supports.
pub const MIN_REDIS: Version = Version(7, 0, 0);

/// The oldest Valkey geosync supports (the first Valkey release).
pub const MIN_VALKEY: Version = Version(7, 2, 0);

/// A server version: major, minor, patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads `7.0.15`; a missing minor or patch is 0, and each part is its
    /// leading digits (`7.4.0-rc1` is 7.4.0). None without a leading major
    /// number.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().splitn(3, '.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let mut rest = || parts.next().flatten().unwrap_or(0);
        Some(Version(major, rest(), rest()))
    }

    /// How the minimum is said: `7.0`, or `7.0.1` when a patch matters.
    fn short(&self) -> String {
        match self {
            Version(major, minor, 0) => format!("{major}.{minor}"),
            Version(major, minor, patch) => format!("{major}.{minor}.{patch}"),
        }
    }
}

/// What the server said it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// `redis` or `valkey` (lowercase; `redis` when not said).
    pub server: String,
    /// The version as the server wrote it.
    pub version: String,
}

impl ServerVersion {
    /// The oldest version of this server geosync supports.
    pub fn minimum(&self) -> Version {
        if self.server == "valkey" {
            MIN_VALKEY
        } else {
            MIN_REDIS
        }
    }

    /// Refuses a server older than [`ServerVersion::minimum`], or one whose
    /// version cannot be read.
    pub fn supported(self) -> Result<ServerVersion, VersionError> {
        let found = Version::parse(&self.version)
            .ok_or_else(|| VersionError::Unreadable(format!("version {:?}", self.version)))?;
        let minimum = self.minimum();
        if found < minimum {
            return Err(VersionError::TooOld {
                server: self.server,
                version: self.version,
                minimum: minimum.short(),
            });
        }
        Ok(self)
    }

    /// Reads `server` and `version` from a `HELLO` reply: a map (RESP3) or
    /// a flat array of names and values (RESP2).
    pub fn from_hello(reply: &Value) -> Result<ServerVersion, VersionError> {
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            Value::VerbatimString { text, .. } => Some(text.clone()),
            _ => None,
        };
        let pairs: Vec<(&Value, &Value)> = match reply {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(items) => items.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
            Value::Attribute { data, .. } => return Self::from_hello(data),
            other => {
                return Err(VersionError::Unreadable(format!(
                    "HELLO answered {other:?}"
                )));
            }
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| text(k).is_some_and(|k| k.eq_ignore_ascii_case(name)))
                .and_then(|(_, v)| text(v))
        };
        let version = field("version")
            .ok_or_else(|| VersionError::Unreadable(format!("no version in HELLO: {reply:?}")))?;
        let server = field("server")
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_else(|| "redis".to_string());
        Ok(ServerVersion { server, version })
    }
}

/// The server is not one geosync supports, or did not say which it is.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// Older than geosync supports.
    #[error("{server} {version} is older than the {minimum} geosync needs")]
    TooOld {
        /// `redis` or `valkey`.
        server: String,
        /// The version it reported.
        version: String,
        /// The oldest supported version.
        minimum: String,
    },
    /// `HELLO` answered without a readable version.
    #[error("cannot read the server's version: {0}")]
    Unreadable(String),
    /// `HELLO` failed.
    #[error("HELLO: {source}{}", hello_hint(source))]
    Redis {
        /// The error.
        #[from]
        source: redis::RedisError,
    },
}

/// What an unknown `HELLO` means.
fn hello_hint(e: &redis::RedisError) -> &'static str {
    if e.to_string().to_lowercase().contains("unknown command") {
        " (a server older than Redis 6; geosync needs Redis 7.0 or newer, or Valkey 7.2 or newer)"
    } else {
        ""
    }
}

impl VersionError {
    /// True when the server answered and geosync cannot use it (asking
    /// again gives the same answer); false for a failed connection.
    pub fn is_refusal(&self) -> bool {
        match self {
            VersionError::TooOld { .. } | VersionError::Unreadable(_) => true,
            VersionError::Redis { source: e } => {
                matches!(
                    e.kind(),
                    redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                ) && !super::locator::is_connection_error(e)
            }
        }
    }
}

/// Asks the server which it is (`HELLO`) and refuses one geosync does not
/// support.
pub async fn check<C: redis::aio::ConnectionLike>(
    conn: &mut C,
) -> Result<ServerVersion, VersionError> {
    let reply: Value = redis::cmd("HELLO").query_async(conn).await?;
    ServerVersion::from_hello(&reply)?.supported()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_version_strings() {
        for (text, want) in [
            ("7.0.15", Some(Version(7, 0, 15))),
            ("8.2.3", Some(Version(8, 2, 3))),
            ("6.2.14", Some(Version(6, 2, 14))),
            ("7.2", Some(Version(7, 2, 0))),
            ("7", Some(Version(7, 0, 0))),
            (" 7.0.0 ", Some(Version(7, 0, 0))),
            ("7.4.0-rc1", Some(Version(7, 4, 0))),
            ("255.255.255", Some(Version(255, 255, 255))),
            ("8.1.x", Some(Version(8, 1, 0))),
            ("7.0.15.1", Some(Version(7, 0, 15))),
            ("", None),
            ("unstable", None),
            ("v7.0.0", None),
            (".1.2", None),
            ("99999999999.0.0", None),
        ] {
            assert_eq!(Version::parse(text), want, "{text:?}");
        }
    }

    fn server(server: &str, version: &str) -> ServerVersion {
        ServerVersion {
            server: server.to_string(),
            version: version.to_string(),
        }
    }

    #[test]
    fn the_minimum_depends_on_the_server() {
        for (s, v) in [
            ("redis", "7.0.0"),
            ("redis", "7.0.15"),
            ("redis", "7.4.2"),
            ("redis", "8.2.3"),
            ("redis", "10.0.0"),
            ("valkey", "7.2.0"),
            ("valkey", "7.2.4"),
            ("valkey", "8.1.8"),
        ] {
            assert!(server(s, v).supported().is_ok(), "{s} {v}");
        }
        for (s, v, msg) in [
            (
                "redis",
                "6.2.14",
                "redis 6.2.14 is older than the 7.0 geosync needs",
            ),
            (
                "redis",
                "6.9.9",
                "redis 6.9.9 is older than the 7.0 geosync needs",
            ),
            (
                "valkey",
                "7.1.0",
                "valkey 7.1.0 is older than the 7.2 geosync needs",
            ),
        ] {
            let e = server(s, v).supported().unwrap_err();
            assert_eq!(e.to_string(), msg);
            assert!(e.is_refusal());
        }
        let e = server("redis", "unstable").supported().unwrap_err();
        assert!(matches!(e, VersionError::Unreadable(_)), "{e}");
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn hello_replies_of_both_protocols() {
        let resp2 = Value::Array(vec![
            bulk("server"),
            bulk("valkey"),
            bulk("version"),
            bulk("8.1.8"),
            bulk("proto"),
            Value::Int(2),
            bulk("modules"),
            Value::Array(vec![]),
        ]);
        assert_eq!(
            ServerVersion::from_hello(&resp2).unwrap(),
            server("valkey", "8.1.8")
        );
        let resp3 = Value::Map(vec![
            (Value::SimpleString("server".into()), bulk("Redis")),
            (Value::SimpleString("version".into()), bulk("7.0.15")),
        ]);
        assert_eq!(
            ServerVersion::from_hello(&resp3).unwrap(),
            server("redis", "7.0.15")
        );
        // No server field: Redis.
        let bare = Value::Array(vec![bulk("version"), bulk("6.2.0")]);
        assert_eq!(
            ServerVersion::from_hello(&bare).unwrap(),
            server("redis", "6.2.0")
        );
        assert!(
            ServerVersion::from_hello(&Value::Array(vec![bulk("proto"), Value::Int(2)])).is_err()
        );
        assert!(ServerVersion::from_hello(&Value::Okay).is_err());
    }
}
