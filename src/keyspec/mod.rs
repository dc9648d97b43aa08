//! Which keys a replicated write command may modify, computed from the server's own key specs.
//!
//! The agent tails Redis as a replica and must know, for every write command in the replication
//! stream, which keys it may have changed. A hand-written table would drift from the server (new
//! commands, modules, version differences), so this module asks the server once for its command
//! table (`COMMAND`, Redis 7 shape with key specs) and then evaluates the key specs locally, the
//! same way the server does in `getKeysUsingKeySpecs` (redis/redis `src/db.c`). When the specs
//! cannot answer locally (unknown/incomplete specs, commands the server does not describe) the
//! caller is told to ask the server with [`written_keys_from_server`], which runs
//! `COMMAND GETKEYSANDFLAGS`.
//!
//! `COMMAND DOCS` carries no key specs (only argument docs), so the table is built from the
//! `COMMAND` / `COMMAND INFO` reply, which has them.
//!
//! # Decisions and surprises (checked against Redis 7.0.15 in the tests below)
//!
//! * A key is "written" when its spec flags contain `RW`, `OW` or `RM`. A spec that carries none
//!   of the access flags (`RO`, `RW`, `OW`, `RM`) says nothing about how the key is used (module
//!   commands created with only first/last/step get such a spec): it is treated as written, both
//!   locally and in [`written_keys_from_server`], because missing a written key loses data while
//!   an extra key only costs a redundant read. Specs flagged `RO` only are left out. No built-in
//!   7.0 key spec lacks an access flag (except the `NOT_KEY` channel specs).
//! * `SET` carries `VARIABLE_FLAGS` (flags differ with/without `GET`), so the server itself does
//!   not use its specs for it. Locally a `VARIABLE_FLAGS` spec whose declared flags include a write
//!   flag is used as declared ("may write"); one declared read-only could turn into a write, so it
//!   answers [`KeyLookup::AskServer`]. Consequence: `BITFIELD k GET u8 0` (declared `RW`,
//!   `VARIABLE_FLAGS`) is reported locally as writing `k`, while the server narrows it to `RO`.
//!   That is the one intended over-approximation; a read-only `BITFIELD` never reaches the
//!   replication stream anyway (it does not dirty the dataset).
//! * `SORT k` is [`KeyLookup::AskServer`] even without `STORE`: in 7.0 the `STORE` spec has
//!   begin_search and find_keys of type `unknown` (the keyword may appear anywhere), so the specs
//!   alone cannot prove there is no destination key. `MIGRATE` (`INCOMPLETE` `KEYS` spec) also
//!   asks. `GEORADIUS ... STORE d` does not: its `STORE`/`STOREDIST` specs are plain keyword specs.
//!   Incomplete/unknown specs that are read-only (the `BY`/`GET` patterns of `SORT`) cannot add
//!   written keys and are ignored.
//! * `PFCOUNT` is a `readonly` command whose key spec is `RW` (it caches the cardinality in the
//!   HLL and is propagated), so its keys are written keys. `XREADGROUP` is a `write` command whose
//!   only key spec is `RO` (its effects are replicated as `XCLAIM` / `XGROUP SETID`): no keys.
//! * `SPUBLISH` has a key spec, flagged `NOT_KEY` (the shard channel), and `COMMAND` still reports
//!   legacy first/last/step = 1/1/1 for it: the legacy range is therefore only used for commands
//!   that have no key specs at all (pre-7 servers, some modules), never as a complement.
//! * The server's keyword search for a positive `startfrom` stops before the last argument, and
//!   a backwards search stops before `argv[1]`; this is mirrored exactly. For `keynum`, the server
//!   computes `last = first + numkeys - 1` whatever the keystep; mirrored too.
//! * `COMMAND GETKEYSANDFLAGS` has arity -4: it rejects a bare command name (`PING`, `MULTI`,
//!   `EXEC`, `FLUSHALL`), so [`written_keys_from_server`] answers `Ok(vec![])` for a one-element
//!   argv without asking (keys are arguments; there are none).
//! * `COMMAND GETKEYSANDFLAGS` answers an error, not an empty list, for commands whose key specs
//!   found no key and that lack `NO_MANDATORY_KEYS` ("Invalid arguments specified for command"),
//!   and for arity violations; those stay errors in [`written_keys_from_server`]. Only "The
//!   command has no key arguments" (PUBLISH, SELECT, SPUBLISH, ...) maps to an empty list.
//! * For specs that do not fit argv (numkeys larger than the arguments, a missing or unparsable
//!   numkeys, an index past the end) the server abandons its specs (`invalid_spec`) and runs the
//!   command's own getkeys procedure, which may answer differently: `EVAL s 2 a` gives `[]` on the
//!   server (NO_MANDATORY_KEYS) but `[a]` locally, because locally the positions that are inside
//!   argv are still returned (an unusable numkeys contributes no keys). Such commands are rejected
//!   before execution, so they never appear in a replication stream; the local answer only has to
//!   be safe (no panic, nothing outside argv, `argv[0]` never a key).

use std::collections::{HashMap, HashSet};

use redis::Value;

/// Why the key-spec table could not be built or the server could not be asked.
///
/// Exists so callers can tell a connection/server problem (retry, reconnect) from a reply this
/// module does not understand (a protocol or version mismatch worth reporting).
#[derive(Debug, thiserror::Error)]
pub enum KeySpecError {
    /// The connection failed or the server answered with an error reply.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The reply did not have the expected shape; the text names what was unexpected.
    #[error("unexpected reply: {0}")]
    BadReply(String),
    /// An empty argv was given where a command name is required.
    #[error("empty argv: no command name")]
    EmptyArgv,
}

/// Result of resolving the written keys of one command locally.
///
/// Exists because the key specs cannot always answer: the caller then needs to know whether to
/// fall back to the server ([`written_keys_from_server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// Argument indices (into argv) of the keys that may be written, in argv order, no duplicates.
    Keys(Vec<usize>),
    /// The specs cannot resolve it locally (a write spec with begin_search or find_keys of type
    /// "unknown", or flagged INCOMPLETE, e.g. SORT ... STORE; or a read-only spec flagged
    /// VARIABLE_FLAGS; or a keyless legacy entry flagged movablekeys): ask the server.
    AskServer,
    /// The server does not know this command (e.g. a module command not in the table, an
    /// unknown subcommand of a container, or an empty argv): also ask the server.
    UnknownCommand,
}

/// Key positions of every command the server knows, built from its own COMMAND reply.
///
/// Exists so the hot path (every replicated write) resolves keys without a round trip; it is
/// loaded once per connection to a server (and again after a server upgrade or module load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpecTable {
    /// Top-level commands by lowercase name.
    commands: HashMap<Vec<u8>, CommandEntry>,
}

/// One command (or subcommand) as described by `COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommandEntry {
    /// Full name as the server spells it ("xgroup|create").
    name: String,
    /// Only read by the tests (to build argv of valid length); kept so `Debug` shows it.
    #[cfg_attr(not(test), allow(dead_code))]
    arity: i64,
    /// Command flags ("write", "movablekeys", ...), lowercase.
    flags: Vec<String>,
    /// Legacy first/last/step (last >= 0 is absolute, negative counts from the end).
    legacy_first: i64,
    legacy_last: i64,
    legacy_step: i64,
    specs: Vec<KeySpec>,
    /// Subcommands by lowercase name without the container prefix ("create").
    subcommands: HashMap<Vec<u8>, CommandEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpec {
    flags: SpecFlags,
    begin: BeginSearch,
    find: FindKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BeginSearch {
    Index(i64),
    Keyword { keyword: Vec<u8>, startfrom: i64 },
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FindKeys {
    Range {
        lastkey: i64,
        keystep: i64,
        limit: i64,
    },
    Keynum {
        keynumidx: i64,
        firstkey: i64,
        keystep: i64,
    },
    Unknown,
}

/// Key-spec flags (`addReplyFlagsForKeyArgs` in server.c); unknown names are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SpecFlags(u32);

impl SpecFlags {
    const RO: u32 = 1 << 0;
    const RW: u32 = 1 << 1;
    const OW: u32 = 1 << 2;
    const RM: u32 = 1 << 3;
    const ACCESS: u32 = 1 << 4;
    const UPDATE: u32 = 1 << 5;
    const INSERT: u32 = 1 << 6;
    const DELETE: u32 = 1 << 7;
    const NOT_KEY: u32 = 1 << 8;
    const INCOMPLETE: u32 = 1 << 9;
    const VARIABLE_FLAGS: u32 = 1 << 10;

    const WRITE: u32 = Self::RW | Self::OW | Self::RM;
    const ANY_ACCESS: u32 = Self::RO | Self::WRITE;

    fn bit(name: &[u8]) -> u32 {
        const NAMES: [(&[u8], u32); 11] = [
            (b"ro", SpecFlags::RO),
            (b"rw", SpecFlags::RW),
            (b"ow", SpecFlags::OW),
            (b"rm", SpecFlags::RM),
            (b"access", SpecFlags::ACCESS),
            (b"update", SpecFlags::UPDATE),
            (b"insert", SpecFlags::INSERT),
            (b"delete", SpecFlags::DELETE),
            (b"not_key", SpecFlags::NOT_KEY),
            (b"incomplete", SpecFlags::INCOMPLETE),
            (b"variable_flags", SpecFlags::VARIABLE_FLAGS),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(0, |(_, b)| *b)
    }

    fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }

    /// RW, OW or RM; or no access flag at all (unknown access, treated as written).
    fn may_write(self) -> bool {
        self.has(Self::WRITE) || !self.has(Self::ANY_ACCESS)
    }
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
    fn resolve(&self, argv: &[&[u8]]) -> Option<&CommandEntry> {
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

impl CommandEntry {
    fn written_keys(&self, argv: &[&[u8]]) -> KeyLookup {
        self.evaluate(argv, false).0
    }

    /// The written keys, and whether some spec was invalid for this argv (out of range, empty
    /// range, bad numkeys): the case where the server gives up on its specs (`invalid_spec`) and
    /// uses the command's own getkeys procedure instead. Read-only specs only take part in that
    /// flag when `check_read_only` is set (the tests need it; the hot path skips them).
    fn evaluate(&self, argv: &[&[u8]], check_read_only: bool) -> (KeyLookup, bool) {
        let argc = i64::try_from(argv.len()).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut invalid = false;
        if self.specs.is_empty() {
            // No key specs (pre-7 server, or a module command without them): legacy range, flags
            // unknown, so every key in it counts as written. Movable keys cannot be found that way.
            if self.flags.iter().any(|f| f == "movablekeys") {
                return (KeyLookup::AskServer, false);
            }
            if self.legacy_first > 0 {
                let last = if self.legacy_last < 0 {
                    argc.saturating_add(self.legacy_last)
                } else {
                    self.legacy_last
                };
                invalid = push_range(self.legacy_first, last, self.legacy_step, argc, &mut out);
            }
        } else {
            let mut scratch = Vec::new();
            for spec in &self.specs {
                if spec.flags.has(SpecFlags::NOT_KEY) {
                    continue;
                }
                if !spec.flags.may_write() {
                    if spec.flags.has(SpecFlags::VARIABLE_FLAGS) {
                        // Declared read-only but may turn into a write depending on arguments.
                        return (KeyLookup::AskServer, false);
                    }
                    if check_read_only {
                        scratch.clear();
                        invalid |= spec_positions(spec, argv, argc, &mut scratch) == Eval::Invalid;
                    }
                    continue;
                }
                if spec.flags.has(SpecFlags::INCOMPLETE) {
                    return (KeyLookup::AskServer, false);
                }
                match spec_positions(spec, argv, argc, &mut out) {
                    Eval::Unknown => return (KeyLookup::AskServer, false),
                    Eval::Invalid => invalid = true,
                    Eval::InRange => {}
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        (KeyLookup::Keys(out), invalid)
    }
}

/// How one spec evaluated against an argv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eval {
    /// All positions the spec describes are inside argv (or its keyword is absent).
    InRange,
    /// The spec points outside argv, at an empty range or at an unusable numkeys: the server's
    /// `invalid_spec`. The positions that are inside argv were still pushed.
    Invalid,
    /// begin_search or find_keys of type unknown: not evaluable locally.
    Unknown,
}

/// Appends the key positions of one spec to `out`.
fn spec_positions(spec: &KeySpec, argv: &[&[u8]], argc: i64, out: &mut Vec<usize>) -> Eval {
    let first = match &spec.begin {
        BeginSearch::Index(pos) => *pos,
        BeginSearch::Keyword { keyword, startfrom } => {
            match keyword_search(argv, argc, keyword, *startfrom) {
                Some(first) => first,
                None => return Eval::InRange, // keyword not present: this spec has no keys
            }
        }
        BeginSearch::Unknown => return Eval::Unknown,
    };
    match spec.find {
        FindKeys::Range {
            lastkey,
            keystep,
            limit,
        } => {
            let last = if lastkey >= 0 {
                first.saturating_add(lastkey)
            } else if limit <= 0 {
                argc.saturating_add(lastkey)
            } else {
                // Same integer arithmetic as the server (C division truncates toward zero).
                first.saturating_add(argc.saturating_sub(first) / limit + lastkey)
            };
            clip(push_range(first, last, keystep, argc, out))
        }
        FindKeys::Keynum {
            keynumidx,
            firstkey,
            keystep,
        } => {
            let idx = first.saturating_add(keynumidx);
            let Some(raw) = usize::try_from(idx).ok().and_then(|i| argv.get(i)) else {
                return Eval::Invalid; // numkeys argument missing: arity error, no keys
            };
            let Some(numkeys) = parse_ll(raw).filter(|n| *n >= 0) else {
                return Eval::Invalid; // unparsable numkeys: the server rejects the command
            };
            let first = first.saturating_add(firstkey);
            let last = first.saturating_add(numkeys).saturating_sub(1);
            clip(push_range(first, last, keystep, argc, out))
        }
        FindKeys::Unknown => Eval::Unknown,
    }
}

fn clip(invalid: bool) -> Eval {
    if invalid {
        Eval::Invalid
    } else {
        Eval::InRange
    }
}

/// The server's keyword search: forward from `startfrom` up to (not including) the last
/// argument, or, for `startfrom <= 0`, backwards from `argc + startfrom` down to (not including)
/// `argv[1]`. Returns the index after the keyword.
fn keyword_search(argv: &[&[u8]], argc: i64, keyword: &[u8], startfrom: i64) -> Option<i64> {
    let matches = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| argv.get(i))
            .is_some_and(|a| a.eq_ignore_ascii_case(keyword))
    };
    let found = if startfrom > 0 {
        (startfrom..argc - 1).find(|&i| matches(i))
    } else {
        let start = argc.saturating_add(startfrom);
        if start >= argc {
            return None;
        }
        (2..=start).rev().find(|&i| matches(i))
    };
    found.map(|i| i + 1)
}

/// Pushes `first, first+step, ... <= last`, keeping only indices inside argv and past `argv[0]`.
/// Returns true when the range is invalid for this argv (the server's
/// `last >= argc || last < first || first >= argc` check, plus `first < 1`).
fn push_range(first: i64, last: i64, step: i64, argc: i64, out: &mut Vec<usize>) -> bool {
    let invalid = last >= argc || last < first || first >= argc || first < 1;
    let step = step.max(1);
    let last = last.min(argc - 1);
    let mut i = first;
    if i < 1 {
        // Skip ahead to the first aligned index >= 1 without looping over a huge gap.
        let gap = 1 - i;
        let steps = gap.saturating_add(step - 1) / step;
        i = i.saturating_add(steps.saturating_mul(step));
    }
    while i <= last {
        if let Ok(pos) = usize::try_from(i) {
            out.push(pos);
        }
        i = match i.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    invalid
}

/// `string2ll` semantics: optional '-', no '+', no spaces, no leading zeros (except "0").
fn parse_ll(raw: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(raw).ok()?;
    if s == "0" {
        return Some(0);
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    let mut bytes = digits.bytes();
    if !matches!(bytes.next(), Some(b'1'..=b'9')) || !bytes.all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

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

// ---------------------------------------------------------------------------------------------
// Reply parsing
// ---------------------------------------------------------------------------------------------

fn bad(msg: String) -> KeySpecError {
    KeySpecError::BadReply(msg)
}

/// Short rendering of a value for error messages.
fn show(v: &Value) -> String {
    let mut s = format!("{v:?}");
    if s.len() > 120 {
        let mut cut = 117;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn list(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Attribute { data, .. } => list(data),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        Value::Attribute { data, .. } => text(data),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
        Value::Attribute { data, .. } => int(data),
        other => std::str::from_utf8(text(other)?).ok()?.trim().parse().ok(),
    }
}

/// Field/value pairs of a map-shaped reply.
type Fields<'a> = Vec<(&'a Value, &'a Value)>;

/// Field/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Option<Fields<'_>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) if items.len() % 2 == 0 => {
            Some(items.chunks(2).map(|c| (&c[0], &c[1])).collect())
        }
        Value::Attribute { data, .. } => pairs(data),
        _ => None,
    }
}

fn field<'a>(pairs: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| text(k).is_some_and(|k| k.eq_ignore_ascii_case(name.as_bytes())))
        .map(|(_, v)| *v)
}

fn parse_flags(v: &Value) -> Option<SpecFlags> {
    let mut bits = 0;
    for f in list(v)? {
        bits |= SpecFlags::bit(text(f)?);
    }
    Some(SpecFlags(bits))
}

fn parse_entry(v: &Value) -> Result<CommandEntry, KeySpecError> {
    let items =
        list(v).ok_or_else(|| bad(format!("command entry is not an array: {}", show(v))))?;
    if items.len() < 6 {
        return Err(bad(format!(
            "command entry has {} elements, expected at least 6: {}",
            items.len(),
            show(v)
        )));
    }
    let name = text(&items[0])
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .ok_or_else(|| bad(format!("command name is not a string: {}", show(&items[0]))))?;
    let num = |i: usize, what: &str| {
        int(&items[i]).ok_or_else(|| {
            bad(format!(
                "command {name}: {what} is not an integer: {}",
                show(&items[i])
            ))
        })
    };
    let arity = num(1, "arity")?;
    let legacy_first = num(3, "first key")?;
    let legacy_last = num(4, "last key")?;
    let legacy_step = num(5, "key step")?;
    let flags = list(&items[2])
        .and_then(|fs| {
            fs.iter()
                .map(|f| text(f).map(|t| String::from_utf8_lossy(t).to_ascii_lowercase()))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            bad(format!(
                "command {name}: flags are not a list of strings: {}",
                show(&items[2])
            ))
        })?;

    let mut specs = Vec::new();
    match items.get(8) {
        None | Some(Value::Nil) => {}
        Some(raw) => {
            let raw_specs = list(raw).ok_or_else(|| {
                bad(format!(
                    "command {name}: key specs are not an array: {}",
                    show(raw)
                ))
            })?;
            for (i, spec) in raw_specs.iter().enumerate() {
                specs.push(parse_spec(spec, &name, i)?);
            }
        }
    }

    let mut subcommands = HashMap::new();
    match items.get(9) {
        None | Some(Value::Nil) => {}
        Some(raw) => {
            let subs: Vec<&Value> = match raw {
                Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
                other => list(other)
                    .ok_or_else(|| {
                        bad(format!(
                            "command {name}: subcommands are not an array: {}",
                            show(other)
                        ))
                    })?
                    .iter()
                    .collect(),
            };
            for sub in subs {
                let sub = parse_entry(sub)?;
                let short = sub.name.rsplit('|').next().unwrap_or(&sub.name);
                subcommands.insert(short.to_ascii_lowercase().into_bytes(), sub);
            }
        }
    }

    Ok(CommandEntry {
        name,
        arity,
        flags,
        legacy_first,
        legacy_last,
        legacy_step,
        specs,
        subcommands,
    })
}

fn parse_spec(v: &Value, cmd: &str, idx: usize) -> Result<KeySpec, KeySpecError> {
    let what = |msg: String| bad(format!("command {cmd}: key spec #{idx}: {msg}"));
    let fields = pairs(v).ok_or_else(|| what(format!("not a field/value map: {}", show(v))))?;
    let flags_raw = field(&fields, "flags").ok_or_else(|| what("no 'flags' field".into()))?;
    let flags = parse_flags(flags_raw).ok_or_else(|| {
        what(format!(
            "flags are not a list of strings: {}",
            show(flags_raw)
        ))
    })?;

    let (bs_type, bs_spec) = typed_part(&fields, "begin_search").map_err(what)?;
    let begin = match bs_type.as_str() {
        "index" => BeginSearch::Index(spec_int(&bs_spec, "begin_search", "index").map_err(what)?),
        "keyword" => {
            let keyword = field(&bs_spec, "keyword")
                .and_then(text)
                .ok_or_else(|| what("begin_search keyword spec has no string 'keyword'".into()))?
                .to_vec();
            let startfrom = spec_int(&bs_spec, "begin_search", "startfrom").map_err(what)?;
            BeginSearch::Keyword { keyword, startfrom }
        }
        // "unknown", or a type from a newer server: cannot be evaluated locally.
        _ => BeginSearch::Unknown,
    };

    let (fk_type, fk_spec) = typed_part(&fields, "find_keys").map_err(what)?;
    let get = |name: &str| spec_int(&fk_spec, "find_keys", name).map_err(what);
    let find = match fk_type.as_str() {
        "range" => FindKeys::Range {
            lastkey: get("lastkey")?,
            keystep: get("keystep")?,
            limit: get("limit")?,
        },
        "keynum" => FindKeys::Keynum {
            keynumidx: get("keynumidx")?,
            firstkey: get("firstkey")?,
            keystep: get("keystep")?,
        },
        _ => FindKeys::Unknown,
    };
    Ok(KeySpec { flags, begin, find })
}

/// The `{"type": ..., "spec": {...}}` value of `begin_search` / `find_keys`, type lowercased.
fn typed_part<'a>(
    fields: &[(&'a Value, &'a Value)],
    part: &str,
) -> Result<(String, Fields<'a>), String> {
    let raw = field(fields, part).ok_or_else(|| format!("no '{part}' field"))?;
    let inner = pairs(raw).ok_or_else(|| format!("{part} is not a map: {}", show(raw)))?;
    let ty = field(&inner, "type")
        .and_then(text)
        .ok_or_else(|| format!("{part} has no string 'type'"))?;
    let ty = String::from_utf8_lossy(ty).to_ascii_lowercase();
    let spec = match field(&inner, "spec") {
        None | Some(Value::Nil) => Vec::new(),
        // An empty RESP2 map is an empty array, which `pairs` handles.
        Some(s) => pairs(s).ok_or_else(|| format!("{part} spec is not a map: {}", show(s)))?,
    };
    Ok((ty, spec))
}

fn spec_int(spec: &[(&Value, &Value)], part: &str, name: &str) -> Result<i64, String> {
    let raw = field(spec, name).ok_or_else(|| format!("{part} spec has no '{name}'"))?;
    int(raw).ok_or_else(|| format!("{part} '{name}' is not an integer: {}", show(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::aio::MultiplexedConnection;
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    // -----------------------------------------------------------------------------------------
    // A real redis-server per test, killed on drop.
    // -----------------------------------------------------------------------------------------

    struct RedisServer {
        child: Child,
        port: u16,
        dir: PathBuf,
    }

    impl RedisServer {
        fn start() -> Self {
            for _attempt in 0..5 {
                let port = TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("pick a free port")
                    .port();
                let dir = std::env::temp_dir()
                    .join(format!("geosync-keyspec-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("create redis dir");
                let mut child = Command::new("/usr/bin/redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn /usr/bin/redis-server");
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Self { child, port, dir };
                    }
                    if child.try_wait().expect("poll redis-server").is_some()
                        || Instant::now() > deadline
                    {
                        // Port taken in the meantime (or a slow start): try another port.
                        let _ = child.kill();
                        let _ = child.wait();
                        let _ = std::fs::remove_dir_all(&dir);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            panic!("could not start redis-server");
        }

        async fn connect(&self, resp3: bool) -> MultiplexedConnection {
            let proto = if resp3 { "?protocol=resp3" } else { "" };
            let client = redis::Client::open(format!("redis://127.0.0.1:{}/{proto}", self.port))
                .expect("client");
            client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to test redis-server")
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn setup() -> (RedisServer, MultiplexedConnection, KeySpecTable) {
        let server = RedisServer::start();
        let mut conn = server.connect(false).await;
        let table = KeySpecTable::load(&mut conn).await.expect("load table");
        (server, conn, table)
    }

    fn argv<'a>(args: &[&'a str]) -> Vec<&'a [u8]> {
        args.iter().map(|a| a.as_bytes()).collect()
    }

    fn strings(keys: &[Vec<u8>]) -> Vec<String> {
        keys.iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Against the real server
    // -----------------------------------------------------------------------------------------

    enum Expect {
        /// Local answer: these argv indices.
        Keys(&'static [usize]),
        /// Local answer AskServer; the server fallback returns these keys.
        Ask(&'static [&'static str]),
    }
    use Expect::{Ask, Keys};

    const SCRIPT: &str = "return redis.call('set', KEYS[1], '1')";

    const CASES: &[(&[&str], Expect)] = &[
        (&["SET", "k", "v"], Keys(&[1])),
        (&["set", "k", "v", "GET"], Keys(&[1])),
        (&["MSET", "a", "1", "b", "2", "c", "3"], Keys(&[1, 3, 5])),
        (&["DEL", "k1", "k2", "k3"], Keys(&[1, 2, 3])),
        (&["UNLINK", "k1", "k2"], Keys(&[1, 2])),
        (&["RENAME", "a", "b"], Keys(&[1, 2])),
        (&["RENAMENX", "a", "b"], Keys(&[1, 2])),
        (&["SMOVE", "src", "dst", "m"], Keys(&[1, 2])),
        (&["LMOVE", "src", "dst", "LEFT", "RIGHT"], Keys(&[1, 2])),
        (
            &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"],
            Keys(&[1, 2]),
        ),
        (&["RPOPLPUSH", "src", "dst"], Keys(&[1, 2])),
        (&["COPY", "a", "b"], Keys(&[2])),
        (&["MOVE", "k", "2"], Keys(&[1])),
        (&["SORT", "k", "STORE", "d"], Ask(&["d"])),
        (&["SORT", "k"], Ask(&[])),
        (&["ZUNIONSTORE", "d", "2", "a", "b"], Keys(&[1])),
        (&["SINTERSTORE", "d", "a", "b"], Keys(&[1])),
        (&["SUNIONSTORE", "d", "a", "b"], Keys(&[1])),
        (
            &[
                "GEOSEARCHSTORE",
                "d",
                "src",
                "FROMLONLAT",
                "0",
                "0",
                "BYRADIUS",
                "1",
                "km",
            ],
            Keys(&[1]),
        ),
        (&["BITOP", "AND", "d", "a", "b"], Keys(&[2])),
        (&["PFMERGE", "d", "a", "b"], Keys(&[1])),
        (&["LMPOP", "2", "a", "b", "LEFT"], Keys(&[2, 3])),
        (
            &["ZMPOP", "2", "a", "b", "MIN", "COUNT", "3"],
            Keys(&[2, 3]),
        ),
        (&["XADD", "s", "*", "f", "v"], Keys(&[1])),
        (&["XGROUP", "CREATE", "s", "g", "$"], Keys(&[2])),
        (&["xgroup", "createconsumer", "s", "g", "c"], Keys(&[2])),
        (&["XCLAIM", "s", "g", "c", "0", "0-1"], Keys(&[1])),
        (&["XAUTOCLAIM", "s", "g", "c", "0", "0-0"], Keys(&[1])),
        (&["XSETID", "s", "5-0"], Keys(&[1])),
        (&["HSET", "h", "f", "v", "f2", "v2"], Keys(&[1])),
        (&["HSETNX", "h", "f", "v"], Keys(&[1])),
        (&["EXPIRE", "k", "10"], Keys(&[1])),
        (&["PEXPIREAT", "k", "1000000"], Keys(&[1])),
        (&["PERSIST", "k"], Keys(&[1])),
        (&["RESTORE", "k", "0", "payload", "REPLACE"], Keys(&[1])),
        (&["SETRANGE", "k", "0", "v"], Keys(&[1])),
        (&["APPEND", "k", "v"], Keys(&[1])),
        (&["INCRBYFLOAT", "k", "1.5"], Keys(&[1])),
        (&["GETDEL", "k"], Keys(&[1])),
        (&["GETEX", "k", "EX", "10"], Keys(&[1])),
        (&["OBJECT", "ENCODING", "k"], Keys(&[])),
        (&["OBJECT", "FREQ", "k"], Keys(&[])),
        (&["PUBLISH", "ch", "msg"], Keys(&[])),
        (&["SPUBLISH", "ch", "msg"], Keys(&[])),
        (&["PING"], Keys(&[])),
        (&["SELECT", "1"], Keys(&[])),
        (&["MULTI"], Keys(&[])),
        (&["EXEC"], Keys(&[])),
        (&["FLUSHALL"], Keys(&[])),
        (&["EVAL", SCRIPT, "1", "k"], Keys(&[3])),
        (&["EVAL", SCRIPT, "0"], Keys(&[])),
        (
            &["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d"],
            Keys(&[7]),
        ),
        // Surprise (see module docs): PFCOUNT is a "readonly" command but its spec is RW
        // (it caches the cardinality in the HLL) and it is propagated.
        (&["PFCOUNT", "a", "b"], Keys(&[1, 2])),
        // Surprise: XREADGROUP is a "write" command, but its only key spec is RO (its effects
        // are replicated as XCLAIM / XGROUP SETID, not as XREADGROUP).
        (
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "STREAMS",
                "s1",
                "s2",
                ">",
                ">",
            ],
            Keys(&[]),
        ),
    ];

    #[tokio::test]
    async fn listed_commands_written_keys_and_fallback() {
        let (_server, mut conn, table) = setup().await;
        let mut failures = Vec::new();
        for (args, expect) in CASES {
            let av = argv(args);
            let local = table.written_keys(&av);
            let remote = written_keys_from_server(&mut conn, &av).await;
            match expect {
                Keys(idx) => {
                    if local != KeyLookup::Keys(idx.to_vec()) {
                        failures.push(format!("{args:?}: local {local:?}, expected {idx:?}"));
                    }
                    let want: Vec<Vec<u8>> = idx.iter().map(|&i| av[i].to_vec()).collect();
                    match remote {
                        Ok(mut got) => {
                            got.sort();
                            let mut want = want;
                            want.sort();
                            if got != want {
                                failures.push(format!(
                                    "{args:?}: server {:?}, expected {:?}",
                                    strings(&got),
                                    strings(&want)
                                ));
                            }
                        }
                        Err(e) => failures.push(format!("{args:?}: server error {e}")),
                    }
                }
                Ask(keys) => {
                    if local != KeyLookup::AskServer {
                        failures.push(format!("{args:?}: local {local:?}, expected AskServer"));
                    }
                    match remote {
                        Ok(got) if strings(&got) == *keys => {}
                        other => failures.push(format!(
                            "{args:?}: server {:?}, expected {keys:?}",
                            other.map(|g| strings(&g))
                        )),
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[tokio::test]
    async fn bitfield_is_the_documented_over_approximation() {
        let (_server, mut conn, table) = setup().await;
        let get_only = argv(&["BITFIELD", "k", "GET", "u8", "0"]);
        assert_eq!(table.written_keys(&get_only), KeyLookup::Keys(vec![1]));
        let remote = written_keys_from_server(&mut conn, &get_only)
            .await
            .unwrap();
        assert!(remote.is_empty(), "server narrows BITFIELD GET to RO");
        let set = argv(&["BITFIELD", "k", "SET", "u8", "0", "1"]);
        assert_eq!(table.written_keys(&set), KeyLookup::Keys(vec![1]));
        let remote = written_keys_from_server(&mut conn, &set).await.unwrap();
        assert_eq!(strings(&remote), ["k"]);
    }

    /// ~60 ordinary write commands with concrete arguments: where the local answer is `Keys`, it
    /// must agree exactly with `COMMAND GETKEYSANDFLAGS` on the same server.
    #[tokio::test]
    async fn cross_check_sample_write_commands() {
        const SAMPLES: &[&[&str]] = &[
            &["SET", "k", "v", "EX", "10"],
            &["SET", "k", "v", "KEEPTTL", "GET"],
            &["SETNX", "k", "v"],
            &["SETEX", "k", "10", "v"],
            &["PSETEX", "k", "100", "v"],
            &["MSET", "a", "1", "b", "2", "c", "3"],
            &["MSETNX", "a", "1", "b", "2"],
            &["GETSET", "k", "v"],
            &["GETDEL", "k"],
            &["GETEX", "k", "PERSIST"],
            &["APPEND", "k", "v"],
            &["SETRANGE", "k", "3", "v"],
            &["INCR", "k"],
            &["INCRBY", "k", "3"],
            &["DECRBY", "k", "3"],
            &["INCRBYFLOAT", "k", "0.5"],
            &["DEL", "k1", "k2", "k3"],
            &["UNLINK", "k1", "k2", "k3"],
            &["EXPIRE", "k", "10", "NX"],
            &["PEXPIRE", "k", "10"],
            &["EXPIREAT", "k", "100"],
            &["PEXPIREAT", "k", "100"],
            &["PERSIST", "k"],
            &["RENAME", "a", "b"],
            &["RENAMENX", "a", "b"],
            &["MOVE", "k", "2"],
            &["COPY", "a", "b", "DB", "1", "REPLACE"],
            &["RESTORE", "k", "0", "payload", "REPLACE", "ABSTTL"],
            &["LPUSH", "l", "a", "b"],
            &["RPUSHX", "l", "a"],
            &["LPOP", "l", "2"],
            &["LSET", "l", "0", "v"],
            &["LINSERT", "l", "BEFORE", "p", "v"],
            &["LREM", "l", "0", "v"],
            &["LTRIM", "l", "0", "1"],
            &["LMOVE", "a", "b", "LEFT", "RIGHT"],
            &["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"],
            &["RPOPLPUSH", "a", "b"],
            &["BRPOPLPUSH", "a", "b", "0"],
            &["BLPOP", "a", "b", "0"],
            &["BRPOP", "a", "b", "c", "1.5"],
            &["LMPOP", "2", "a", "b", "LEFT"],
            &["BLMPOP", "0", "3", "a", "b", "c", "RIGHT", "COUNT", "2"],
            &["SADD", "s", "m1", "m2"],
            &["SREM", "s", "m1"],
            &["SPOP", "s", "2"],
            &["SMOVE", "src", "dst", "m"],
            &["SINTERSTORE", "d", "a", "b"],
            &["SUNIONSTORE", "d", "a", "b", "c"],
            &["SDIFFSTORE", "d", "a", "b"],
            &["ZADD", "z", "NX", "1", "m"],
            &["ZINCRBY", "z", "1", "m"],
            &["ZREM", "z", "m"],
            &["ZPOPMIN", "z", "2"],
            &["BZPOPMAX", "a", "b", "0"],
            &["ZMPOP", "2", "a", "b", "MIN"],
            &["BZMPOP", "0", "2", "a", "b", "MAX", "COUNT", "1"],
            &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
            &["ZINTERSTORE", "d", "3", "a", "b", "c"],
            &["ZDIFFSTORE", "d", "2", "a", "b"],
            &["ZRANGESTORE", "d", "src", "0", "-1"],
            &["ZREMRANGEBYSCORE", "z", "0", "1"],
            &["HSET", "h", "f", "v"],
            &["HMSET", "h", "f", "v", "g", "w"],
            &["HSETNX", "h", "f", "v"],
            &["HDEL", "h", "f", "g"],
            &["HINCRBY", "h", "f", "1"],
            &["HINCRBYFLOAT", "h", "f", "1.5"],
            &["XADD", "s", "MAXLEN", "~", "10", "*", "f", "v"],
            &["XDEL", "s", "1-1"],
            &["XTRIM", "s", "MAXLEN", "10"],
            &["XACK", "s", "g", "1-1"],
            &["XCLAIM", "s", "g", "c", "0", "1-1", "FORCE"],
            &["XAUTOCLAIM", "s", "g", "c", "0", "0-0", "COUNT", "5"],
            &["XSETID", "s", "5-0", "ENTRIESADDED", "5"],
            &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"],
            &["XGROUP", "CREATECONSUMER", "s", "g", "c"],
            &["XGROUP", "DELCONSUMER", "s", "g", "c"],
            &["XGROUP", "DESTROY", "s", "g"],
            &["XGROUP", "SETID", "s", "g", "0"],
            &["PFADD", "hll", "a", "b"],
            &["PFMERGE", "d", "a", "b"],
            &["BITOP", "OR", "d", "a", "b", "c"],
            &["SETBIT", "k", "7", "1"],
            &["BITFIELD", "k", "INCRBY", "u8", "0", "1"],
            &["GEOADD", "g", "0", "0", "m"],
            &[
                "GEOSEARCHSTORE",
                "d",
                "src",
                "FROMMEMBER",
                "m",
                "BYBOX",
                "1",
                "1",
                "km",
            ],
            &["GEORADIUSBYMEMBER", "src", "m", "1", "km", "STOREDIST", "d"],
            &["EVAL", SCRIPT, "2", "a", "b", "arg"],
            &[
                "EVALSHA",
                "0123456789012345678901234567890123456789",
                "1",
                "k",
            ],
            &["FCALL", "f", "2", "a", "b"],
            &["FLUSHDB", "ASYNC"],
            &["SWAPDB", "0", "1"],
            &["PUBLISH", "ch", "m"],
            &["SPUBLISH", "ch", "m"],
            &["SELECT", "3"],
            &["MULTI"],
            &["EXEC"],
            &["PING"],
            &["SORT", "k", "BY", "w_*", "GET", "#", "STORE", "d"],
        ];
        let (_server, mut conn, table) = setup().await;
        let mut failures = Vec::new();
        let mut compared = 0;
        for args in SAMPLES {
            let av = argv(args);
            let local = table.written_keys(&av);
            let remote = written_keys_from_server(&mut conn, &av).await;
            match (&local, remote) {
                (KeyLookup::Keys(idx), Ok(mut got)) => {
                    compared += 1;
                    let mut want: Vec<Vec<u8>> = idx.iter().map(|&i| av[i].to_vec()).collect();
                    want.sort();
                    got.sort();
                    if want != got {
                        failures.push(format!(
                            "{args:?}: local {:?} server {:?}",
                            strings(&want),
                            strings(&got)
                        ));
                    }
                }
                (KeyLookup::AskServer, Ok(_)) if args[0] == "SORT" => {}
                (_, remote) => failures.push(format!(
                    "{args:?}: local {local:?}, server {:?}",
                    remote.map(|g| strings(&g))
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(compared >= 60, "only {compared} comparisons");
    }

    /// Every command and subcommand the server knows, with synthetic argv of every valid length
    /// (numbers as arguments so numkeys parses, and each key-spec keyword at every position).
    /// Wherever the local answer is `Keys` and the server answers, they must agree exactly; the
    /// only tolerated difference is the documented VARIABLE_FLAGS over-approximation.
    #[tokio::test]
    async fn cross_check_every_command_synthetic() {
        let (_server, mut conn, table) = setup().await;
        let mut entries: Vec<(Vec<String>, &CommandEntry)> = Vec::new();
        for cmd in table.commands.values() {
            entries.push((vec![cmd.name.clone()], cmd));
            for sub in cmd.subcommands.values() {
                let parts = sub.name.split('|').map(str::to_owned).collect();
                entries.push((parts, sub));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(entries.len() > 300, "only {} commands", entries.len());

        let (mut compared, mut nonempty, mut skipped_invalid) = (0, 0, 0);
        let (mut server_refused, mut variable_narrowed) = (0, 0);
        let mut failures = Vec::new();
        for (prefix, entry) in &entries {
            if !entry.subcommands.is_empty() {
                continue; // a container: with arguments, argv resolves to its subcommands
            }
            let min = usize::try_from(entry.arity.unsigned_abs())
                .unwrap()
                .max(prefix.len());
            let lens: Vec<usize> = if entry.arity > 0 {
                vec![min]
            } else {
                (min..=min + 4).collect()
            };
            let keywords: Vec<&[u8]> = entry
                .specs
                .iter()
                .filter_map(|s| match &s.begin {
                    BeginSearch::Keyword { keyword, .. } => Some(keyword.as_slice()),
                    _ => None,
                })
                .collect();
            for len in lens {
                let base: Vec<Vec<u8>> = (0..len)
                    .map(|i| match prefix.get(i) {
                        Some(p) => p.as_bytes().to_vec(),
                        None => i.to_string().into_bytes(),
                    })
                    .collect();
                let mut variants = vec![base.clone()];
                for kw in &keywords {
                    for pos in prefix.len()..len {
                        let mut v = base.clone();
                        v[pos] = kw.to_vec();
                        variants.push(v);
                    }
                }
                for v in variants {
                    let av: Vec<&[u8]> = v.iter().map(Vec::as_slice).collect();
                    let resolved = table.resolve(&av).expect("resolves");
                    assert!(std::ptr::eq(resolved, *entry), "{:?}", strings(&v));
                    let (KeyLookup::Keys(idx), invalid) = entry.evaluate(&av, true) else {
                        continue;
                    };
                    assert_eq!(table.written_keys(&av), KeyLookup::Keys(idx.clone()));
                    if invalid {
                        // The server abandons its specs here (arity/syntax error) and uses the
                        // command's getkeys procedure; the local answer is the in-range keys.
                        skipped_invalid += 1;
                        continue;
                    }
                    let Ok(mut got) = written_keys_from_server(&mut conn, &av).await else {
                        server_refused += 1; // arity or syntax the server rejects: nothing to compare
                        continue;
                    };
                    compared += 1;
                    let mut want: Vec<Vec<u8>> = idx.iter().map(|&i| av[i].to_vec()).collect();
                    nonempty += usize::from(!want.is_empty());
                    want.sort();
                    got.sort();
                    if want == got {
                        continue;
                    }
                    let variable = entry
                        .specs
                        .iter()
                        .any(|s| s.flags.has(SpecFlags::VARIABLE_FLAGS));
                    // Documented over-approximation: only BITFIELD (GET-only) in Redis 7.0.
                    if variable && entry.name == "bitfield" && got.iter().all(|k| want.contains(k))
                    {
                        variable_narrowed += 1;
                        continue;
                    }
                    failures.push(format!(
                        "{:?}: local {:?} server {:?}",
                        strings(&v),
                        strings(&want),
                        strings(&got)
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(compared > 1000, "only {compared} comparisons");
        assert!(
            nonempty > 300,
            "only {nonempty} comparisons with written keys"
        );
        eprintln!(
            "synthetic cross-check: {compared} compared ({nonempty} with written keys, \
             {variable_narrowed} narrowed by the server for VARIABLE_FLAGS), \
             {skipped_invalid} skipped as invalid for the specs, {server_refused} refused by the server"
        );
    }

    #[tokio::test]
    async fn resp3_table_and_fallback_match_resp2() {
        let (server, mut conn2, table2) = setup().await;
        let mut conn3 = server.connect(true).await;
        let raw: Value = redis::cmd("COMMAND").query_async(&mut conn3).await.unwrap();
        // Make sure this really exercised the RESP3 shapes (maps/sets), not a RESP2 reply.
        let first = &list(&raw).unwrap()[0];
        assert!(
            matches!(list(first).unwrap()[2], Value::Set(_)),
            "expected RESP3 flags set, got {}",
            show(first)
        );
        let table3 = KeySpecTable::from_command_reply(&raw).unwrap();
        assert_eq!(table2, table3);
        for (args, _) in CASES {
            let av = argv(args);
            let r2 = written_keys_from_server(&mut conn2, &av).await.unwrap();
            let r3 = written_keys_from_server(&mut conn3, &av).await.unwrap();
            assert_eq!(r2, r3, "{args:?}");
        }
    }

    #[tokio::test]
    async fn command_info_reply_and_unknown_commands() {
        let (_server, mut conn, table) = setup().await;
        let info: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg("rename")
            .arg("no-such-command")
            .arg("xgroup")
            .query_async(&mut conn)
            .await
            .unwrap();
        let small = KeySpecTable::from_command_reply(&info).unwrap();
        assert_eq!(small.commands.len(), 2);
        assert_eq!(
            small.written_keys(&argv(&["rename", "a", "b"])),
            KeyLookup::Keys(vec![1, 2])
        );
        assert_eq!(
            small.written_keys(&argv(&["XGROUP", "SETID", "s", "g", "$"])),
            KeyLookup::Keys(vec![2])
        );
        assert_eq!(
            small.written_keys(&argv(&["SET", "k", "v"])),
            KeyLookup::UnknownCommand
        );

        for args in [
            &["NOSUCHCMD", "k"][..],
            &["XGROUP", "NOSUCHSUB", "s"],
            &["CONFIG", "x"],
        ] {
            assert_eq!(table.written_keys(&argv(args)), KeyLookup::UnknownCommand);
        }
        assert_eq!(table.written_keys(&[]), KeyLookup::UnknownCommand);
        let long = vec![b'x'; 100];
        assert_eq!(
            table.written_keys(&[&long, b"k"]),
            KeyLookup::UnknownCommand
        );
        assert_eq!(
            table.written_keys(&argv(&["xGroup", "CrEaTe", "s", "g", "$"])),
            KeyLookup::Keys(vec![2])
        );
        // A container alone resolves to the container, which has no keys.
        assert_eq!(
            table.written_keys(&argv(&["XGROUP"])),
            KeyLookup::Keys(vec![])
        );
        // The fallback reports the server's refusal as an error.
        let err = written_keys_from_server(&mut conn, &argv(&["NOSUCHCMD", "k"]))
            .await
            .unwrap_err();
        assert!(matches!(err, KeySpecError::Redis(_)), "{err}");
        assert!(matches!(
            written_keys_from_server(&mut conn, &[]).await,
            Err(KeySpecError::EmptyArgv)
        ));
    }

    /// Arity violations, garbage numkeys and out-of-range indices never panic and only ever
    /// return indices inside argv (and never `argv[0]`).
    #[tokio::test]
    async fn never_panics_or_leaves_argv() {
        let (_server, _conn, table) = setup().await;
        let pool: &[&[u8]] = &[
            b"k",
            b"0",
            b"1",
            b"2",
            b"3",
            b"-1",
            b"-5",
            b"99999999999",
            b"9223372036854775807",
            b"",
            b"STORE",
            b"streams",
            b"KEYS",
            b"GET",
            b"x",
            b"01",
            b"+1",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut names: Vec<Vec<Vec<u8>>> = Vec::new();
        for cmd in table.commands.values() {
            names.push(vec![cmd.name.clone().into_bytes()]);
            for sub in cmd.subcommands.values() {
                names.push(sub.name.split('|').map(|p| p.as_bytes().to_vec()).collect());
            }
        }
        let mut calls = 0;
        for name in &names {
            for len in 0..=12usize {
                for _ in 0..4 {
                    let mut v: Vec<&[u8]> = name.iter().map(Vec::as_slice).collect();
                    v.truncate(len.max(1));
                    while v.len() < len {
                        v.push(pool[(next() % pool.len() as u64) as usize]);
                    }
                    calls += 1;
                    if let KeyLookup::Keys(idx) = table.written_keys(&v) {
                        assert!(idx.iter().all(|&i| i >= 1 && i < v.len()), "{v:?} {idx:?}");
                        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{v:?} {idx:?}");
                    }
                }
            }
        }
        assert!(calls > 10_000);
    }

    // -----------------------------------------------------------------------------------------
    // Synthetic replies (no server): algorithm corners and reply shapes
    // -----------------------------------------------------------------------------------------

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    fn strs(items: &[&str]) -> Value {
        arr(items.iter().map(|s| b(s)).collect())
    }

    /// RESP2 flat-array map, or RESP3 map.
    fn map(resp3: bool, fields: Vec<(&str, Value)>) -> Value {
        if resp3 {
            Value::Map(fields.into_iter().map(|(k, v)| (b(k), v)).collect())
        } else {
            arr(fields.into_iter().flat_map(|(k, v)| [b(k), v]).collect())
        }
    }

    fn typed(resp3: bool, ty: &str, fields: Vec<(&str, Value)>) -> Value {
        map(resp3, vec![("type", b(ty)), ("spec", map(resp3, fields))])
    }

    fn index(resp3: bool, pos: i64) -> Value {
        typed(resp3, "index", vec![("index", Value::Int(pos))])
    }

    fn keyword(resp3: bool, kw: &str, startfrom: i64) -> Value {
        typed(
            resp3,
            "keyword",
            vec![("keyword", b(kw)), ("startfrom", Value::Int(startfrom))],
        )
    }

    fn range(resp3: bool, lastkey: i64, keystep: i64, limit: i64) -> Value {
        typed(
            resp3,
            "range",
            vec![
                ("lastkey", Value::Int(lastkey)),
                ("keystep", Value::Int(keystep)),
                ("limit", Value::Int(limit)),
            ],
        )
    }

    fn keynum(resp3: bool, idx: i64, firstkey: i64, keystep: i64) -> Value {
        typed(
            resp3,
            "keynum",
            vec![
                ("keynumidx", Value::Int(idx)),
                ("firstkey", Value::Int(firstkey)),
                ("keystep", Value::Int(keystep)),
            ],
        )
    }

    fn unknown(resp3: bool) -> Value {
        typed(resp3, "unknown", vec![])
    }

    fn spec(resp3: bool, flags: &[&str], begin: Value, find: Value) -> Value {
        map(
            resp3,
            vec![
                ("notes", b("synthetic")),
                ("flags", strs(flags)),
                ("begin_search", begin),
                ("find_keys", find),
            ],
        )
    }

    fn entry(name: &str, arity: i64, flags: &[&str], specs: Vec<Value>, subs: Vec<Value>) -> Value {
        arr(vec![
            b(name),
            Value::Int(arity),
            strs(flags),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            strs(&["@write"]),
            arr(vec![]),
            arr(specs),
            arr(subs),
        ])
    }

    /// A table of synthetic commands exercising every spec shape.
    fn synthetic(resp3: bool) -> KeySpecTable {
        let r = resp3;
        let reply = arr(vec![
            // XREAD-like, but writing: STREAMS keyword, half of the rest are keys.
            entry(
                "wxread",
                -4,
                &["write"],
                vec![spec(
                    r,
                    &["RW"],
                    keyword(r, "STREAMS", 1),
                    range(r, -1, 1, 2),
                )],
                vec![],
            ),
            // MIGRATE-like backwards keyword search, without INCOMPLETE.
            entry(
                "wmigrate",
                -6,
                &["write"],
                vec![
                    spec(r, &["RW", "delete"], index(r, 3), range(r, 0, 1, 0)),
                    spec(
                        r,
                        &["RW", "delete"],
                        keyword(r, "KEYS", -2),
                        range(r, -1, 1, 0),
                    ),
                ],
                vec![],
            ),
            entry(
                "wlmpop",
                -4,
                &["write"],
                vec![spec(r, &["RW"], index(r, 1), keynum(r, 0, 1, 1))],
                vec![],
            ),
            // numkeys at argv[2], keys from argv[3] every other argument.
            entry(
                "wkn2",
                -4,
                &["write"],
                vec![spec(r, &["RW"], index(r, 1), keynum(r, 1, 2, 2))],
                vec![],
            ),
            entry(
                "wmset",
                -3,
                &["write"],
                vec![spec(r, &["OW"], index(r, 1), range(r, -1, 2, 0))],
                vec![],
            ),
            entry(
                "wrename",
                3,
                &["write"],
                vec![
                    spec(r, &["RW"], index(r, 1), range(r, 0, 1, 0)),
                    spec(r, &["OW"], index(r, 2), range(r, 0, 1, 0)),
                ],
                vec![],
            ),
            // Unknown write spec: ask. Unknown read-only spec: ignored.
            entry(
                "wsort",
                -2,
                &["write"],
                vec![
                    spec(r, &["RO"], index(r, 1), range(r, 0, 1, 0)),
                    spec(r, &["RO"], unknown(r), unknown(r)),
                ],
                vec![],
            ),
            entry(
                "wsortstore",
                -2,
                &["write"],
                vec![spec(r, &["OW"], unknown(r), unknown(r))],
                vec![],
            ),
            entry(
                "wincomplete",
                -2,
                &["write"],
                vec![spec(
                    r,
                    &["RW", "incomplete"],
                    index(r, 1),
                    range(r, 0, 1, 0),
                )],
                vec![],
            ),
            entry(
                "wvarro",
                -2,
                &["write"],
                vec![spec(
                    r,
                    &["RO", "variable_flags"],
                    index(r, 1),
                    range(r, 0, 1, 0),
                )],
                vec![],
            ),
            // NOT_KEY specs are skipped even when they could not be evaluated.
            entry(
                "wchannel",
                3,
                &["pubsub"],
                vec![spec(r, &["not_key"], unknown(r), unknown(r))],
                vec![],
            ),
            // No access flag at all (module-style): treated as written.
            entry(
                "wmodule",
                2,
                &["write"],
                vec![spec(r, &[], index(r, 1), range(r, 0, 1, 0))],
                vec![],
            ),
            // Container.
            entry(
                "wgroup",
                -2,
                &[],
                vec![],
                vec![
                    entry(
                        "wgroup|create",
                        -5,
                        &["write"],
                        vec![spec(r, &["RW", "insert"], index(r, 2), range(r, 0, 1, 0))],
                        vec![],
                    ),
                    entry(
                        "wgroup|info",
                        3,
                        &["readonly"],
                        vec![spec(r, &["RO"], index(r, 2), range(r, 0, 1, 0))],
                        vec![],
                    ),
                ],
            ),
            // Pre-7 shape: no tips / key specs / subcommands; legacy range only.
            arr(vec![
                b("oldmset"),
                Value::Int(-3),
                strs(&["write"]),
                Value::Int(1),
                Value::Int(-1),
                Value::Int(2),
                strs(&["@write"]),
            ]),
            arr(vec![
                b("oldeval"),
                Value::Int(-3),
                strs(&["write", "movablekeys"]),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ]),
            Value::Nil,
        ]);
        KeySpecTable::from_command_reply(&reply).expect("synthetic table parses")
    }

    fn keys(table: &KeySpecTable, args: &[&str]) -> KeyLookup {
        table.written_keys(&argv(args))
    }

    fn k(idx: &[usize]) -> KeyLookup {
        KeyLookup::Keys(idx.to_vec())
    }

    #[test]
    fn keyword_search_and_limit() {
        let t = synthetic(false);
        // STREAMS a b 0 0 -> keys are the first half after the keyword.
        assert_eq!(
            keys(&t, &["wxread", "COUNT", "2", "streams", "a", "b", "0", "0"]),
            k(&[4, 5])
        );
        assert_eq!(keys(&t, &["wxread", "STREAMS", "a", "0"]), k(&[2]));
        // Keyword as the last argument is not searched (as in the server): no keys.
        assert_eq!(keys(&t, &["wxread", "COUNT", "STREAMS"]), k(&[]));
        assert_eq!(keys(&t, &["wxread", "COUNT", "2"]), k(&[]));
        // Backwards search from argc-2 for KEYS.
        assert_eq!(
            keys(
                &t,
                &["wmigrate", "h", "p", "", "0", "5000", "KEYS", "a", "b"]
            ),
            k(&[3, 7, 8])
        );
        assert_eq!(
            keys(&t, &["wmigrate", "h", "p", "key", "0", "5000"]),
            k(&[3])
        );
        // The backwards search stops before argv[1].
        assert_eq!(keys(&t, &["wmigrate", "KEYS", "a"]), k(&[]));
    }

    #[test]
    fn keynum_range_step_and_out_of_range() {
        let t = synthetic(false);
        assert_eq!(keys(&t, &["wlmpop", "2", "a", "b", "LEFT"]), k(&[2, 3]));
        assert_eq!(keys(&t, &["WLMPOP", "0", "LEFT"]), k(&[]));
        // numkeys larger than what is there: the keys that are in range.
        assert_eq!(keys(&t, &["wlmpop", "5", "a"]), k(&[2]));
        assert_eq!(
            keys(&t, &["wlmpop", "9223372036854775807", "a", "b"]),
            k(&[2, 3])
        );
        // numkeys missing or unparsable: no keys.
        for bad in ["x", "-1", "01", "+1", " 1", ""] {
            assert_eq!(keys(&t, &["wlmpop", bad, "a"]), k(&[]), "{bad:?}");
        }
        assert_eq!(keys(&t, &["wlmpop"]), k(&[]));
        // Like the server, last = first + numkeys - 1 regardless of keystep.
        assert_eq!(
            keys(&t, &["wkn2", "x", "3", "a", "1", "b", "2"]),
            k(&[3, 5])
        );
        assert_eq!(
            keys(&t, &["wkn2", "x", "4", "a", "1", "b", "2"]),
            k(&[3, 5])
        );
        assert_eq!(keys(&t, &["wmset", "a", "1", "b", "2"]), k(&[1, 3]));
        assert_eq!(keys(&t, &["wmset", "a", "1", "b"]), k(&[1, 3]));
        assert_eq!(keys(&t, &["wmset"]), k(&[]));
        assert_eq!(keys(&t, &["wrename", "a", "b"]), k(&[1, 2]));
        assert_eq!(keys(&t, &["wrename", "a"]), k(&[1]));
        assert_eq!(keys(&t, &["wrename"]), k(&[]));
    }

    #[test]
    fn unknown_incomplete_variable_and_not_key() {
        let t = synthetic(false);
        assert_eq!(keys(&t, &["wsort", "k", "BY", "x"]), k(&[]));
        assert_eq!(keys(&t, &["wsortstore", "k"]), KeyLookup::AskServer);
        assert_eq!(keys(&t, &["wincomplete", "k"]), KeyLookup::AskServer);
        assert_eq!(keys(&t, &["wvarro", "k"]), KeyLookup::AskServer);
        assert_eq!(keys(&t, &["wchannel", "ch", "m"]), k(&[]));
        assert_eq!(keys(&t, &["wmodule", "k"]), k(&[1]));
    }

    #[test]
    fn containers_and_legacy_entries() {
        let t = synthetic(false);
        assert_eq!(keys(&t, &["WGROUP", "Create", "s", "g", "$"]), k(&[2]));
        assert_eq!(keys(&t, &["wgroup", "info", "s"]), k(&[]));
        assert_eq!(keys(&t, &["wgroup"]), k(&[]));
        assert_eq!(keys(&t, &["wgroup", "nope"]), KeyLookup::UnknownCommand);
        assert_eq!(keys(&t, &["nope"]), KeyLookup::UnknownCommand);
        assert_eq!(keys(&t, &["oldmset", "a", "1", "b", "2"]), k(&[1, 3]));
        assert_eq!(keys(&t, &["oldmset", "a"]), k(&[1]));
        assert_eq!(keys(&t, &["oldeval", "s", "1", "k"]), KeyLookup::AskServer);
    }

    #[test]
    fn resp3_shape_parses_to_the_same_table() {
        assert_eq!(synthetic(false), synthetic(true));
        // Top-level map (name -> entry) and sets are accepted too.
        let entry = entry(
            "wx",
            2,
            &["write"],
            vec![spec(true, &["RW"], index(true, 1), range(true, 0, 1, 0))],
            vec![],
        );
        let reply = Value::Map(vec![(b("wx"), entry)]);
        let t = KeySpecTable::from_command_reply(&reply).unwrap();
        assert_eq!(keys(&t, &["wx", "k"]), k(&[1]));
    }

    #[test]
    fn bad_replies_name_the_problem() {
        let msg = |v: Value| match KeySpecTable::from_command_reply(&v) {
            Err(KeySpecError::BadReply(m)) => m,
            other => panic!("expected BadReply, got {other:?}"),
        };
        assert!(msg(Value::Int(3)).contains("not an array"));
        assert!(msg(arr(vec![strs(&["get", "2"])])).contains("at least 6"));
        let bad_index = entry(
            "wx",
            2,
            &["write"],
            vec![spec(
                false,
                &["RW"],
                typed(false, "index", vec![("index", b("one"))]),
                range(false, 0, 1, 0),
            )],
            vec![],
        );
        let m = msg(arr(vec![bad_index]));
        assert!(m.contains("wx") && m.contains("'index'"), "{m}");
        let no_flags = entry(
            "wy",
            2,
            &["write"],
            vec![map(
                false,
                vec![
                    ("begin_search", index(false, 1)),
                    ("find_keys", range(false, 0, 1, 0)),
                ],
            )],
            vec![],
        );
        assert!(msg(arr(vec![no_flags])).contains("'flags'"));
        let bad_arity = arr(vec![
            b("wz"),
            b("many"),
            strs(&[]),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ]);
        assert!(msg(arr(vec![bad_arity])).contains("arity"));
    }

    #[test]
    fn parse_ll_matches_string2ll() {
        assert_eq!(parse_ll(b"0"), Some(0));
        assert_eq!(parse_ll(b"12"), Some(12));
        assert_eq!(parse_ll(b"-3"), Some(-3));
        assert_eq!(parse_ll(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b"01"[..],
            b"+1",
            b" 1",
            b"1 ",
            b"",
            b"-",
            b"-0",
            b"9223372036854775808",
            b"1e3",
        ] {
            assert_eq!(parse_ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
