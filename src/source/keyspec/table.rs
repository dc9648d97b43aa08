//! The table of every command's key specs: loading it from the server and looking an argv up in it.

use std::collections::HashMap;

use redis::Value;

use super::error::{KeySpecError, bad};
use super::eval::KeyLookup;
use super::reply::parse_entry;
use super::spec::CommandEntry;
use super::value::show;

/// Key positions of every command the server knows, built from its own COMMAND reply.
///
/// Exists so the hot path (every replicated write) resolves keys without a round trip; it is
/// loaded once per connection to a server (and again after a server upgrade or module load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpecTable {
    /// Top-level commands by lowercase name.
    pub(super) commands: HashMap<Vec<u8>, CommandEntry>,
}

impl KeySpecTable {
    /// Runs `COMMAND` (all commands, with subcommands) on the connection and builds the table.
    pub async fn load<C: redis::aio::ConnectionLike>(conn: &mut C) -> Result<Self, KeySpecError> {
        let reply: Value = redis::cmd("COMMAND").query_async(conn).await?;
        Self::from_command_reply(&reply)
    }

    /// Builds the table from a COMMAND reply (RESP2 shape as the redis crate returns it).
    ///
    /// Also accepts a `COMMAND INFO` reply (nil entries for unknown names are skipped), RESP3
    /// shapes (maps for key specs, sets for flags) and pre-7 entries without key specs.
    pub fn from_command_reply(reply: &Value) -> Result<Self, KeySpecError> {
        let entries: Vec<&Value> = match reply {
            Value::Array(items) | Value::Set(items) => items.iter().collect(),
            Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
            Value::Attribute { data, .. } => return Self::from_command_reply(data),
            other => {
                return Err(bad(format!(
                    "COMMAND reply is not an array of command entries: {}",
                    show(other)
                )));
            }
        };
        let mut commands = HashMap::with_capacity(entries.len());
        for entry in entries {
            if matches!(entry, Value::Nil) {
                continue;
            }
            let cmd = parse_entry(entry)?;
            commands.insert(cmd.name.to_ascii_lowercase().into_bytes(), cmd);
        }
        Ok(Self { commands })
    }

    /// Keys of one command (`argv[0]` is the command name, any case), restricted to the keys the command may write
    /// (spec flags RW, OW or RM; keys flagged RO only, and specs flagged NOT_KEY, are left out).
    pub fn written_keys(&self, argv: &[&[u8]]) -> KeyLookup {
        match self.resolve(argv) {
            Some(cmd) => cmd.written_keys(argv),
            None => KeyLookup::UnknownCommand,
        }
    }

    /// The entry the server would dispatch argv to (`lookupCommandLogic`): a container with at
    /// least one argument resolves to its subcommand, which must exist.
    pub(super) fn resolve(&self, argv: &[&[u8]]) -> Option<&CommandEntry> {
        let cmd = get_ignore_case(&self.commands, argv.first()?)?;
        if cmd.subcommands.is_empty() || argv.len() < 2 {
            return Some(cmd);
        }
        get_ignore_case(&cmd.subcommands, argv[1])
    }
}

/// Lookup by lowercase name without allocating for ordinary (short) names.
fn get_ignore_case<'a>(
    map: &'a HashMap<Vec<u8>, CommandEntry>,
    name: &[u8],
) -> Option<&'a CommandEntry> {
    let mut buf = [0u8; 64];
    match buf.get_mut(..name.len()) {
        Some(lower) => {
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            map.get(&*lower)
        }
        None => map.get(name.to_ascii_lowercase().as_slice()),
    }
}
