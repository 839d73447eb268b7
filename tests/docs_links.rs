//! Every relative link in the documentation resolves.
//!
//! README.md, BENCHMARKS.md and docs/*.md link to each other and to files of
//! the repository; a moved section or a renamed heading silently breaks such
//! a link on GitHub. This reads those pages and fails for a link to a file
//! that does not exist, or to an `#anchor` that no heading of the target
//! produces under GitHub's rules. Links to other sites are not fetched.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The pages whose links are checked: README.md, BENCHMARKS.md, docs/*.md.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    let docs = root.join("docs");
    let entries = fs::read_dir(&docs).unwrap_or_else(|e| panic!("{}: {e}", docs.display()));
    let mut found: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", docs.display()))
                .path()
        })
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "docs/ holds no .md page");
    pages.extend(found);
    pages
}

/// The lines of `text` outside fenced code blocks, with their line numbers:
/// a `#` in a shell or TOML example is no heading, and `[a](b)` in code no link.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"]
            .into_iter()
            .find(|marker| trimmed.starts_with(marker));
        match (fence, marker) {
            (None, Some(marker)) => fence = Some(marker),
            (Some(open), Some(marker)) if open == marker => fence = None,
            (None, None) => out.push((index + 1, line)),
            _ => {}
        }
    }
    out
}

/// `line` without its inline code spans, so that `[x](y)` quoted in
/// backticks is not taken for a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push('`');
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of the inline links `[text](target)` in `line`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        // `[text](target "title")`: the target is the first word.
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end..];
    }
    targets
}

/// A heading's text as GitHub renders it: links become their text.
fn rendered_heading(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find("](").and_then(|mid| {
            after[mid + 2..]
                .find(')')
                .map(|close| (mid, mid + 2 + close))
        }) {
            Some((mid, close)) => {
                out.push_str(&rest[..open]);
                out.push_str(&after[..mid]);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// GitHub's anchor for a heading text: lowercase, punctuation dropped except
/// `-` and `_`, each space a `-`.
fn slug(heading: &str) -> String {
    rendered_heading(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor the headings of `text` produce; a repeated one gets `-1`,
/// `-2`, ... in order, as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let text = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(text);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The broken links of the page at `path` (whose text is `text`), each as
/// `file:line: target: why`.
fn broken_links(path: &Path, text: &str) -> Vec<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut broken = Vec::new();
    for (number, line) in prose_lines(text) {
        for target in link_targets(line) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let where_ = format!("{}:{number}: {target}", path.display());
            let (target_path, target_text) = if file.is_empty() {
                (path.to_path_buf(), text.to_string())
            } else {
                let target_path = dir.join(file);
                if !target_path.exists() {
                    broken.push(format!("{where_}: no file {}", target_path.display()));
                    continue;
                }
                let text = if anchor.is_some() {
                    fs::read_to_string(&target_path).unwrap_or_default()
                } else {
                    String::new()
                };
                (target_path, text)
            };
            if let Some(anchor) = anchor
                && !anchors(&target_text).contains(anchor)
            {
                broken.push(format!(
                    "{where_}: no heading of {} makes #{anchor}",
                    target_path.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut links = 0;
    for page in pages(root) {
        let text = fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        links += prose_lines(&text)
            .iter()
            .map(|(_, line)| link_targets(line).len())
            .sum::<usize>();
        broken.extend(broken_links(&page, &text));
    }
    // Guards the parser itself: the README links to docs/ many times.
    assert!(
        links > 20,
        "found only {links} links; is the link parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug("First contact: `backfill`"), "first-contact-backfill");
    assert_eq!(
        slug("`[[oauth]]`: one Entra ID app registration"),
        "oauth-one-entra-id-app-registration"
    );
    assert_eq!(
        slug("Health, readiness and the watchdog"),
        "health-readiness-and-the-watchdog"
    );
    assert_eq!(
        slug("snake_case and kebab-case"),
        "snake_case-and-kebab-case"
    );
    assert_eq!(slug("See [the guard](guard.md#x)"), "see-the-guard");
    let text = "# A\n## Same\n```sh\n# Same\n```\n## Same\n### Same\n";
    let made = anchors(text);
    for anchor in ["a", "same", "same-1", "same-2"] {
        assert!(made.contains(anchor), "{anchor} missing from {made:?}");
    }
    assert!(
        !made.contains("same-3"),
        "a # in a code block made a heading"
    );
}

#[test]
fn a_missing_file_or_anchor_is_reported() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let page = dir.join("page.md");
    let text = "# Top\n\n[ok](#top) [ok](../README.md#quick-start) [web](https://example.org/#x)\n\
                [gone](missing.md) [bad](#nowhere) [bad](../README.md#nowhere)\n\
                `[quoted](missing-too.md)`\n";
    let broken = broken_links(&page, text);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].contains("missing.md: no file"), "{}", broken[0]);
    assert!(broken[1].contains("#nowhere: no heading"), "{}", broken[1]);
    assert!(
        broken[2].contains("README.md#nowhere: no heading"),
        "{}",
        broken[2]
    );
}
