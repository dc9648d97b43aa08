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
//! # Decisions and surprises (checked against Redis 7.0.15 in this module's tests)
//!
//! The tests run against the server `GEOSYNC_TEST_REDIS_SERVER` names (`scripts/test.sh` runs
//! them against every server it tests: Redis 7.0, Valkey 8.1, Redis 8.2), including a random
//! workload that uses the newer servers' commands (`HSETEX`, `HGETDEL`, `HGETEX`, hash field
//! expiry, `XACKDEL`, `XDELEX`, vector sets) where they exist and checks the keys each command
//! wrote against the server's keyspace notifications.
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

mod error;
mod eval;
mod reply;
mod server;
mod spec;
mod table;
mod value;

#[cfg(test)]
mod tests;

pub use error::KeySpecError;
pub use eval::KeyLookup;
pub use server::written_keys_from_server;
pub use table::KeySpecTable;
