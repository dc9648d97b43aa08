//! Evaluating a command's key specs against one argv, as the server's `getKeysUsingKeySpecs` does.

use super::spec::{BeginSearch, CommandEntry, FindKeys, KeySpec, SpecFlags};

/// Result of resolving the written keys of one command locally.
///
/// Exists because the key specs cannot always answer: the caller then needs to know whether to
/// fall back to the server ([`written_keys_from_server`]).
///
/// [`written_keys_from_server`]: super::server::written_keys_from_server
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

impl CommandEntry {
    pub(super) fn written_keys(&self, argv: &[&[u8]]) -> KeyLookup {
        self.evaluate(argv, false).0
    }

    /// The written keys, and whether some spec was invalid for this argv (out of range, empty
    /// range, bad numkeys): the case where the server gives up on its specs (`invalid_spec`) and
    /// uses the command's own getkeys procedure instead. Read-only specs only take part in that
    /// flag when `check_read_only` is set (the tests need it; the hot path skips them).
    pub(super) fn evaluate(&self, argv: &[&[u8]], check_read_only: bool) -> (KeyLookup, bool) {
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
pub(super) fn parse_ll(raw: &[u8]) -> Option<i64> {
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
