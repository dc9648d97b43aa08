//! The fallback: asking the server which keys an argv writes (`COMMAND GETKEYSANDFLAGS`).

use std::collections::HashSet;

use redis::Value;

use super::error::{KeySpecError, bad};
use super::reply::parse_flags;
use super::value::{list, show, text};

/// Fallback: `COMMAND GETKEYSANDFLAGS argv...` on the server; returns the written keys (flags contain RW, OW or RM) as byte strings. An error reply whose text says the command has no key arguments means Ok(vec![]).
///
/// Keys whose flags carry no access flag at all are also returned (unknown access, see the
/// module docs). The order is the server's (spec order), with byte-identical keys reported once.
/// A bare command name (argv of length 1) has no arguments, hence no keys: `Ok(vec![])` without
/// a round trip (the server would reject it: GETKEYSANDFLAGS needs at least one argument).
/// Other error replies ("Invalid arguments specified for command", arity, unknown command) are
/// returned as [`KeySpecError::Redis`].
pub async fn written_keys_from_server<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    argv: &[&[u8]],
) -> Result<Vec<Vec<u8>>, KeySpecError> {
    if argv.is_empty() {
        return Err(KeySpecError::EmptyArgv);
    }
    if argv.len() == 1 {
        // Keys are arguments, and there are none. The server could not be asked anyway:
        // COMMAND GETKEYSANDFLAGS has arity -4 and rejects `COMMAND GETKEYSANDFLAGS PING`.
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYSANDFLAGS");
    for arg in argv {
        cmd.arg(*arg);
    }
    let reply: Value = match cmd.query_async(conn).await {
        Ok(reply) => reply,
        Err(err) if err.to_string().contains("has no key arguments") => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let items = list(&reply).ok_or_else(|| {
        bad(format!(
            "COMMAND GETKEYSANDFLAGS reply is not an array: {}",
            show(&reply)
        ))
    })?;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    for item in items {
        let pair = list(item).filter(|p| p.len() >= 2).ok_or_else(|| {
            bad(format!(
                "COMMAND GETKEYSANDFLAGS entry is not [key, flags]: {}",
                show(item)
            ))
        })?;
        let key = text(&pair[0]).ok_or_else(|| {
            bad(format!(
                "COMMAND GETKEYSANDFLAGS key is not a string: {}",
                show(&pair[0])
            ))
        })?;
        let flags = parse_flags(&pair[1]).ok_or_else(|| {
            bad(format!(
                "COMMAND GETKEYSANDFLAGS flags of key {:?} are not a list of strings: {}",
                String::from_utf8_lossy(key),
                show(&pair[1])
            ))
        })?;
        if flags.may_write() && seen.insert(key) {
            keys.push(key.to_vec());
        }
    }
    Ok(keys)
}
