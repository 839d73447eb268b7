//! The module graph of `src/` stays a DAG at the level of top-level
//! modules (config, auth, source, ingest, store, metrics, ...), so each can
//! be read knowing only the ones it names and the layout in `src/lib.rs`
//! reads as the path of a mail.
//!
//! A text scan, std only: every `crate::X` (in `use` lines, grouped
//! `use crate::{X, Y}` and paths in code) and every `super::` that climbs
//! out of a top-level module to a sibling counts as an edge. Comments are
//! left out: an intra-doc link is not a dependency. `main.rs` belongs to
//! the binary, not the library, and `lib.rs` only declares the modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The file's module path below the crate root: `src/auth/cloud.rs` is
/// `["auth", "cloud"]`, `src/auth/mod.rs` and `src/auth.rs` are `["auth"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" {
            parts.push(stem);
        }
    }
    parts
}

/// Source text without `//` comments (line, doc and inner doc) and without
/// the contents of string literals, so neither a doc link nor a message
/// text is taken for a path.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    let mut in_block = 0usize;
    while let Some(c) = chars.next() {
        if in_block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                in_block -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                in_block += 1;
            }
            continue;
        }
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                in_block = 1;
            }
            '"' => {
                in_str = true;
                out.push('"');
            }
            // A char literal such as '"' must not open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let lit = if rest.starts_with('\\') {
                    rest.find('\'').filter(|&i| i > 1)
                } else {
                    rest.chars().nth(1).filter(|&n| n == '\'').map(|_| 1)
                };
                out.push('\'');
                if let Some(i) = lit {
                    for _ in 0..=i {
                        chars.next();
                    }
                    out.push('\'');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

fn is_word_start(text: &str, at: usize) -> bool {
    text[..at]
        .chars()
        .next_back()
        .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
}

/// The top-level identifiers of a `{ a, b::c, d::{e, f} }` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => start = true,
            c if start && depth == 0 && !c.is_whitespace() => {
                start = false;
                if let Some(id) = ident_at(&group[i..]) {
                    heads.push(id.to_string());
                }
            }
            _ => {}
        }
    }
    heads
}

/// The crate-root names the text refers to, given how deep its module is.
fn referenced_roots(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add_after = |rest: &str| {
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').map_or(group.len(), |_| {
                // the matching brace, nested groups included
                let mut d = 1usize;
                group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => d += 1,
                            '}' => d -= 1,
                            _ => {}
                        }
                        d == 0
                    })
                    .map_or(group.len(), |(i, _)| i)
            });
            found.extend(group_heads(&group[..end]));
        } else if let Some(id) = ident_at(rest) {
            found.insert(id.to_string());
        }
    };
    for (at, _) in code.match_indices("crate::") {
        if is_word_start(code, at) || code[..at].ends_with('$') {
            add_after(&code[at + "crate::".len()..]);
        }
    }
    // `super::` chains that climb to the crate root: a file at depth d
    // reaches it with d supers (an inline `mod tests` one deeper with d+1,
    // which this scan also accepts: over-reporting is the safe side).
    for (at, _) in code.match_indices("super::") {
        if !is_word_start(code, at) || code[..at].ends_with("super::") {
            continue;
        }
        let mut rest = &code[at..];
        let mut n = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            n += 1;
        }
        if depth >= 1 && (n == depth || n == depth + 1) {
            add_after(rest);
        }
    }
    found.remove("self");
    found.remove("super");
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph among the top-level modules of a source tree given as
/// (path below `src/`, text) pairs.
fn build_graph<'a>(files: impl IntoIterator<Item = (PathBuf, &'a str)>) -> Graph {
    let files: Vec<(Vec<String>, &str)> = files
        .into_iter()
        .filter(|(rel, _)| rel != Path::new("lib.rs") && rel != Path::new("main.rs"))
        .map(|(rel, text)| (module_path(&rel), text))
        .collect();
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|(m, _)| m.first().cloned())
        .collect();
    let mut graph: Graph = tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for (module, text) in &files {
        let Some(top) = module.first() else { continue };
        let code = code_only(text);
        for root in referenced_roots(&code, module.len()) {
            if root != *top && tops.contains(&root) {
                graph.entry(top.clone()).or_default().insert(root);
            }
        }
    }
    graph
}

/// One cycle, as the path `a -> b -> ... -> a`, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// For the failure message: which file of `from` names `to`.
fn witnesses(src: &Path, from: &str, to: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(src).ok()?.to_path_buf();
            let text = fs::read_to_string(&path).ok()?;
            let module = module_path(&rel);
            (module.first().is_some_and(|t| t == from)
                && referenced_roots(&code_only(&text), module.len()).contains(to))
            .then(|| rel.display().to_string())
        })
        .collect()
}

#[test]
fn top_level_modules_of_src_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    assert!(!paths.is_empty(), "no sources under {}", src.display());
    let texts: Vec<(PathBuf, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("under src").to_path_buf();
            let text = fs::read_to_string(p).expect("readable source");
            (rel, text)
        })
        .collect();
    let graph = build_graph(texts.iter().map(|(r, t)| (r.clone(), t.as_str())));
    // Guard against a scan that silently finds nothing.
    assert!(
        graph.values().map(BTreeSet::len).sum::<usize>() > 10,
        "the scan found almost no edges: {graph:?}"
    );
    // The shared words stay a leaf, or every module that names them would
    // be one import away from a cycle again.
    assert_eq!(
        graph.get("outcome").map(BTreeSet::len),
        Some(0),
        "src/outcome.rs must import nothing of the crate: {:?}",
        graph.get("outcome")
    );
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                format!(
                    "  {} -> {} (in {})",
                    w[0],
                    w[1],
                    witnesses(&src, &w[0], &w[1]).join(", ")
                )
            })
            .collect();
        panic!(
            "import cycle among src/ modules: {}\n{}",
            cycle.join(" -> "),
            steps.join("\n")
        );
    }
}

fn graph_of(files: &[(&str, &str)]) -> Graph {
    build_graph(files.iter().map(|(p, t)| (PathBuf::from(p), *t)))
}

#[test]
fn a_cycle_through_use_lines_is_named() {
    let graph = graph_of(&[
        ("a.rs", "use crate::b::Thing;\n"),
        ("b/mod.rs", "mod inner;\n"),
        ("b/inner.rs", "use crate::{c::X, std_like};\n"),
        ("c.rs", "fn f() { crate::a::g(); }\n"),
    ]);
    let cycle = find_cycle(&graph).expect("a -> b -> c -> a is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
}

#[test]
fn super_climbing_out_of_a_module_is_an_edge() {
    let graph = graph_of(&[
        ("a/mod.rs", "mod x;\n"),
        ("a/x.rs", "use super::super::b::Y;\nuse super::sibling;\n"),
        ("b.rs", "use super::a::Z;\n"),
    ]);
    assert!(graph["a"].contains("b"), "{graph:?}");
    assert!(graph["b"].contains("a"), "{graph:?}");
    assert!(find_cycle(&graph).is_some());
}

#[test]
fn comments_strings_and_inner_cycles_are_not_edges() {
    let graph = graph_of(&[
        ("a/mod.rs", "//! See [`crate::b::Y`].\nuse crate::b::Y;\n"),
        ("a/x.rs", "use crate::a::y::Z;\n"),
        ("a/y.rs", "use crate::a::x::W;\n"),
        (
            "b.rs",
            "/* crate::a */ fn f() -> &'static str { \"crate::a::Q\" }\n",
        ),
    ]);
    assert_eq!(find_cycle(&graph), None, "{graph:?}");
}
