//! Key filters: which keys travel between regions (`--include-keys`,
//! `--exclude-keys`, `--include-db`, `--exclude-db`). A key that does not
//! pass stays in its region: it is never stamped, so it has no record and
//! nothing of it ships, not by the stream, catch-ups, anti-entropy or
//! rebuilds. The filters must be the same in every region; peers compare
//! them ([`KeyFilter::fingerprint`]) when they connect.
//!
//! Patterns are Redis glob patterns, as `SCAN MATCH` and `KEYS` read them:
//! `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to take the next character
//! as it is.

use std::collections::BTreeSet;

/// The filters of one agent. The default passes every key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    include: Vec<Vec<u8>>,
    exclude: Vec<Vec<u8>>,
    include_dbs: BTreeSet<u32>,
    exclude_dbs: BTreeSet<u32>,
}

impl KeyFilter {
    /// Filters from the settings: a key passes when its database is in
    /// `include_dbs` (or that is empty) and not in `exclude_dbs`, and its
    /// name matches a pattern of `include` (or that is empty) and none of
    /// `exclude`. The error names the setting that is wrong.
    pub fn new(
        include: &[String],
        exclude: &[String],
        include_dbs: &[u32],
        exclude_dbs: &[u32],
    ) -> Result<KeyFilter, (&'static str, String)> {
        if include.iter().any(String::is_empty) {
            return Err(("include-keys", "a pattern is empty".into()));
        }
        if exclude.iter().any(String::is_empty) {
            return Err(("exclude-keys", "a pattern is empty".into()));
        }
        if let Some(db) = include_dbs.iter().find(|d| exclude_dbs.contains(d)) {
            return Err((
                "exclude-db",
                format!("database {db} is both included (--include-db) and excluded"),
            ));
        }
        let sorted = |v: &[String]| -> Vec<Vec<u8>> {
            let mut v: Vec<Vec<u8>> = v.iter().map(|p| p.as_bytes().to_vec()).collect();
            v.sort();
            v.dedup();
            v
        };
        Ok(KeyFilter {
            include: sorted(include),
            exclude: sorted(exclude),
            include_dbs: include_dbs.iter().copied().collect(),
            exclude_dbs: exclude_dbs.iter().copied().collect(),
        })
    }

    /// True when every key passes.
    pub fn passes_all(&self) -> bool {
        *self == KeyFilter::default()
    }

    /// True when changes of database `db` travel at all.
    pub fn admits_db(&self, db: u32) -> bool {
        (self.include_dbs.is_empty() || self.include_dbs.contains(&db))
            && !self.exclude_dbs.contains(&db)
    }

    /// True when key `key` of database `db` travels between regions.
    pub fn admits(&self, db: u32, key: &[u8]) -> bool {
        self.admits_db(db)
            && (self.include.is_empty() || self.include.iter().any(|p| glob_match(p, key)))
            && !self.exclude.iter().any(|p| glob_match(p, key))
    }

    /// The filters in one canonical line (patterns sorted, escaped), the
    /// same for the same filters however they were given; "" when every
    /// key passes. Peers refuse each other when theirs differ.
    pub fn fingerprint(&self) -> String {
        if self.passes_all() {
            return String::new();
        }
        let pats = |v: &[Vec<u8>]| -> String {
            v.iter()
                .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let dbs = |s: &BTreeSet<u32>| -> String {
            s.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        };
        format!(
            "include-db=[{}] exclude-db=[{}] include-keys=[{}] exclude-keys=[{}]",
            dbs(&self.include_dbs),
            dbs(&self.exclude_dbs),
            pats(&self.include),
            pats(&self.exclude)
        )
    }
}

/// Redis's glob match (`stringmatchlen`), case-sensitive.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    // Redis compares nothing against an empty name: only the empty pattern
    // matches it, and `*`, which `KEYS` and `SCAN MATCH` take for "every
    // key" without matching (so `**` or `*a*` do not).
    if s.is_empty() {
        return pattern.is_empty() || pattern == b"*";
    }
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, string index).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' if i < s.len() => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' if i < s.len() => {
                    if let Some((matched, next)) = class(pattern, p, s[i])
                        && matched
                    {
                        p = next;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && i < s.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                // An escape that does not match: a mismatch (not a literal `\`).
                b'\\' if p + 1 < pattern.len() => {}
                c if c != b'?' && c != b'[' && c != b'\\' && i < s.len() && c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                // A trailing `\` or an unclosed `[` is taken literally.
                b'\\' | b'[' if p + 1 >= pattern.len() && i < s.len() && pattern[p] == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        // Mismatch: let the last `*` take one more character.
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// A `[...]` class at `pattern[p]` against `c`: (whether it matches, the
/// pattern index after the class). An unclosed class runs to the end, as
/// in Redis.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let not = pattern.get(j) == Some(&b'^');
    if not {
        j += 1;
    }
    let mut matched = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            j += 1;
            matched |= pattern[j] == c;
            j += 1;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' {
            let (mut lo, mut hi) = (pattern[j], pattern[j + 2]);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    let next = if j < pattern.len() { j + 1 } else { j };
    Some((matched != not, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_matches_them() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("**", "", false),
            ("*a*", "", false),
            ("*", "anything", true),
            ("cache:*", "cache:user:1", true),
            ("cache:*", "cach", false),
            ("cache:*", "user:cache:1", false),
            ("*:tmp", "a:b:tmp", true),
            ("*:tmp", "a:b:tmpx", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("h[a-c]llo", "hdllo", false),
            ("h[c-a]llo", "hbllo", true),
            // Redis reads `-]` as a range ending at `]` (the class then runs on).
            ("[x-]", "a", true),
            ("[x-]", "-", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("session:[0-9]*", "session:42", true),
            ("session:[0-9]*", "session:x", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**x", "abx", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob_match(p.as_bytes(), s.as_bytes()), *want, "{p} vs {s}");
        }
    }

    #[test]
    fn a_key_passes_its_database_and_the_patterns() {
        let all = KeyFilter::default();
        assert!(all.passes_all() && all.admits(7, b"x") && all.fingerprint().is_empty());
        let f = KeyFilter::new(
            &["user:*".into(), "cart:*".into()],
            &["*:cache".into()],
            &[],
            &[3],
        )
        .unwrap();
        assert!(f.admits(0, b"user:1"));
        assert!(!f.admits(0, b"user:1:cache"), "excluded wins");
        assert!(!f.admits(0, b"session:1"), "not included");
        assert!(!f.admits(3, b"user:1"), "database excluded");
        assert!(!f.admits_db(3) && f.admits_db(0));
        let only = KeyFilter::new(&[], &[], &[0, 2], &[]).unwrap();
        assert!(only.admits(2, b"k") && !only.admits(1, b"k"));
    }

    #[test]
    fn the_fingerprint_does_not_depend_on_the_order_given() {
        let a = KeyFilter::new(&["b*".into(), "a*".into()], &[], &[2, 1], &[]).unwrap();
        let b =
            KeyFilter::new(&["a*".into(), "b*".into(), "a*".into()], &[], &[1, 2], &[]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = KeyFilter::new(&["a*".into()], &[], &[1, 2], &[]).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn contradictory_or_empty_filters_are_refused() {
        assert!(KeyFilter::new(&["".into()], &[], &[], &[]).is_err());
        assert!(KeyFilter::new(&[], &[], &[1], &[1]).is_err());
    }
}
