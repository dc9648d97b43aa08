//! The source tree keeps the shape `src/lib.rs` draws: one folder per
//! layer, each importing only from the layers under it, and no import
//! circle between the files of `src/`.
//!
//! Read from the code's own `crate::` and `super::` paths (doc comments
//! and `//` comments are left out: a doc link is not an import).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders of `src/`, from the top of the picture down. A file may
/// name items of its own folder and of the folders after it, never of
/// the folders before it.
const LAYERS: &[&str] = &[
    "tools", "lab", "agent", "source", "stamp", "mesh", "apply", "store", "ops", "base",
];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/store/mod.rs` is `["store"]`,
/// `src/store/layout.rs` is `["store", "layout"]`, `src/lib.rs` is `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments, one string.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits the inside of a `{...}` group at its top-level commas.
fn group_items(inside: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in inside.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    items.push(cur);
    items
        .into_iter()
        .map(|i| i.split_whitespace().collect::<String>())
        .filter(|i| !i.is_empty())
        .collect()
}

/// Expands one path that may end in a `{...}` group into plain paths.
fn expand(path: &str) -> Vec<String> {
    match path.find('{') {
        Some(open) => {
            let close = path.rfind('}').unwrap_or(path.len());
            let head = &path[..open];
            group_items(&path[open + 1..close])
                .into_iter()
                .flat_map(|item| expand(&format!("{head}{item}")))
                .collect()
        }
        None => vec![path.trim_end_matches("::self").to_string()],
    }
}

/// Every path the code names that starts with `crate::` or `super::`,
/// written from the crate root.
fn named_paths(module: &[String], is_mod_file: bool, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // The path: identifiers, `::`, and one balanced `{...}` group.
            let mut end = at;
            let mut depth = 0;
            for (j, ch) in code[at..].char_indices() {
                let ok = ch.is_ascii_alphanumeric()
                    || ch == '_'
                    || ch == ':'
                    || (depth > 0 && (ch == ',' || ch.is_whitespace() || ch == '*'))
                    || ch == '{'
                    || (ch == '}' && depth > 0);
                if !ok {
                    break;
                }
                if ch == '{' {
                    depth += 1;
                }
                if ch == '}' {
                    depth -= 1;
                }
                end = at + j + ch.len_utf8();
                if depth == 0 && ch == '}' {
                    break;
                }
            }
            for p in expand(&code[at..end]) {
                let mut segs: Vec<String> = p
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if segs.first().map(String::as_str) == Some("crate") {
                    segs.remove(0);
                } else {
                    // super:: from a mod.rs is the folder's parent; from
                    // another file, the folder itself.
                    let mut base = module.to_vec();
                    if is_mod_file {
                        base.pop();
                    }
                    while segs.first().map(String::as_str) == Some("super") {
                        segs.remove(0);
                        base.pop();
                    }
                    // The first `super` already went up one from the file.
                    let mut full = base;
                    full.extend(segs);
                    segs = full;
                }
                out.push(segs);
            }
        }
    }
    out
}

struct Tree {
    /// Module path → file.
    files: BTreeMap<Vec<String>, PathBuf>,
    /// File module → the file modules it names.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn read_tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: BTreeMap<Vec<String>, PathBuf> = paths
        .iter()
        .filter(|p| !p.ends_with("main.rs"))
        .map(|p| (module_of(&src, p), p.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let is_mod_file = path.ends_with("mod.rs");
        let mut to = BTreeSet::new();
        for named in named_paths(module, is_mod_file, &code(&text)) {
            // The longest prefix that is a file of its own.
            let target = (1..=named.len())
                .rev()
                .map(|n| named[..n].to_vec())
                .find(|p| files.contains_key(p));
            if let Some(t) = target
                && &t != module
            {
                to.insert(t);
            }
        }
        edges.insert(module.clone(), to);
    }
    Tree { files, edges }
}

fn layer(module: &[String]) -> Option<usize> {
    LAYERS
        .iter()
        .position(|l| module.first().map(String::as_str) == Some(*l))
}

fn show(module: &[String]) -> String {
    module.join("::")
}

#[test]
fn every_folder_of_src_is_a_layer_of_the_picture() {
    let tree = read_tree();
    let stray: Vec<String> = tree
        .files
        .keys()
        .filter(|m| !m.is_empty() && layer(m).is_none())
        .map(|m| show(m))
        .collect();
    assert!(
        stray.is_empty(),
        "modules outside the layers of src/lib.rs's picture: {stray:?}"
    );
}

#[test]
fn no_file_imports_from_a_layer_above_its_own() {
    let tree = read_tree();
    let mut upward = Vec::new();
    for (from, tos) in &tree.edges {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            if let Some(lt) = layer(to)
                && lt < lf
            {
                upward.push(format!("{} -> {}", show(from), show(to)));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that climb to a layer above (order: {LAYERS:?}):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_circle_between_files() {
    let tree = read_tree();
    // Depth-first search; a back edge closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks: BTreeMap<&Vec<String>, Mark> =
        tree.edges.keys().map(|k| (k, Mark::New)).collect();
    let mut circles = Vec::new();
    fn visit<'a>(
        node: &'a Vec<String>,
        tree: &'a Tree,
        marks: &mut BTreeMap<&'a Vec<String>, Mark>,
        stack: &mut Vec<&'a Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        marks.insert(node, Mark::Open);
        stack.push(node);
        for next in tree.edges.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::Done) {
                Mark::New => visit(next, tree, marks, stack, circles),
                Mark::Open => {
                    let at = stack.iter().position(|n| *n == next).unwrap();
                    let ring: Vec<String> = stack[at..].iter().map(|m| show(m)).collect();
                    circles.push(format!("{} -> {}", ring.join(" -> "), show(next)));
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
    }
    let nodes: Vec<&Vec<String>> = tree.edges.keys().collect();
    for node in nodes {
        if marks[node] == Mark::New {
            visit(node, &tree, &mut marks, &mut Vec::new(), &mut circles);
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_sees_imports_it_must_judge() {
    // The checks above are only as good as the reading: a grouped import
    // and a `super::` path must both come out as edges.
    let module = vec!["store".to_string(), "read".to_string()];
    let code = "use super::pieces::{LargeError, ship_recorded};\nuse crate::base::{change::Change, hlc};\n";
    let named = named_paths(&module, false, code);
    let named: Vec<String> = named.iter().map(|p| show(p)).collect();
    assert!(
        named.contains(&"store::pieces::LargeError".to_string()),
        "{named:?}"
    );
    assert!(
        named.contains(&"base::change::Change".to_string()),
        "{named:?}"
    );
    assert!(named.contains(&"base::hlc".to_string()), "{named:?}");
    // From a mod.rs, super:: is the parent folder.
    let named = named_paths(&module[..1], true, "use super::ops::metrics;");
    assert_eq!(show(&named[0]), "ops::metrics");
    let tree = read_tree();
    let read = tree.edges.get(&module).expect("src/store/read.rs is read");
    assert!(
        read.contains(&vec!["store".to_string(), "pieces".to_string()]),
        "{read:?}"
    );
}
