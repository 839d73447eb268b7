//! `[[rule]]` routing rules and `[rules]`, as the admin writes them.
//!
//! Owns validation (an invalid regex is an error naming the rule and its
//! line); what a rule does to a mail is `crate::ingest::rules`.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

/// The rules, in file order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub mode: RuleMode,
    pub rules: Vec<Rule>,
}

/// How many rules apply to one mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    /// The first rule that matches, only.
    #[default]
    First,
    /// Every rule that matches, in order: later values win, tags add up.
    All,
}

/// One `[[rule]]`: every condition given must hold.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `name`, or `rule N` (its position, from 1).
    pub name: String,
    pub from: Option<Matcher>,
    /// Matches any To or Cc address.
    pub to: Option<Matcher>,
    pub subject: Option<Matcher>,
    pub body: Option<Matcher>,
    /// Header name (case-insensitive) and what its value must match.
    pub headers: Vec<(String, Matcher)>,
    /// Reader names; empty for any reader.
    pub readers: Vec<String>,
    pub has_attachment: Option<bool>,
    pub action: RuleAction,
}

/// A condition on a text.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Case-insensitive substring; stored lower-case.
    Contains(String),
    Regex(regex::Regex),
}

impl Matcher {
    /// A case-insensitive substring condition.
    pub fn contains(text: &str) -> Matcher {
        Matcher::Contains(text.to_lowercase())
    }

    /// Whether `text` satisfies the condition. A regex is taken as written:
    /// it is case-sensitive unless it says `(?i)`.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Contains(needle) => {
                needle.is_empty() || text.to_lowercase().contains(needle.as_str())
            }
            Matcher::Regex(re) => re.is_match(text),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RuleAction {
    Route(Route),
    /// The mail opens no ticket; recorded as `ignored: rule (NAME)`.
    Ignore,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub queue: Option<String>,
    pub priority: Option<String>,
    pub category: Option<String>,
    pub tags: Vec<String>,
}

/// `[rules]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    #[serde(default)]
    mode: RuleMode,
}

/// One `[[rule]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    name: Option<Spanned<String>>,
    from: Option<Spanned<RawMatcher>>,
    to: Option<Spanned<RawMatcher>>,
    subject: Option<Spanned<RawMatcher>>,
    body: Option<Spanned<RawMatcher>>,
    #[serde(default)]
    header: BTreeMap<String, Spanned<RawMatcher>>,
    reader: Option<RawReaders>,
    has_attachment: Option<bool>,
    queue: Option<Spanned<String>>,
    priority: Option<Spanned<String>>,
    category: Option<Spanned<String>>,
    tags: Option<Spanned<Vec<String>>>,
    action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a text to look for (a string) or { regex = \"...\" }"
)]
enum RawMatcher {
    Contains(String),
    Regex(RawRegex),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegex {
    regex: String,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a reader name or a list of reader names")]
enum RawReaders {
    One(String),
    Many(Vec<String>),
}

/// Validates the rules.
pub(super) fn build(
    locate: &Locator<'_>,
    section: RawRules,
    rules: Vec<Spanned<RawRule>>,
) -> Result<Rules, ConfigError> {
    let mut built: Vec<Rule> = Vec::with_capacity(rules.len());
    let mut names = HashSet::new();
    for (index, raw) in rules.into_iter().enumerate() {
        let table = raw.span();
        let raw = raw.into_inner();
        let at = whole_rule(locate, &raw, table);
        let rule = rule(locate, raw, index + 1, at.clone())?;
        // Dispositions (`ignored: rule (NAME)`) and logs name the rule; two
        // rules of one name could not be told apart there.
        if !names.insert(rule.name.clone()) {
            return Err(locate.at(
                at,
                "name",
                &format!(
                    "rule {:?}: another [[rule]] has this name; rule names must be unique",
                    rule.name
                ),
            ));
        }
        built.push(rule);
    }
    Ok(Rules {
        mode: section.mode,
        rules: built,
    })
}

/// Where to point for a problem of the rule as a whole: its name, or else
/// the line after `[[rule]]`. The header line itself would be reported
/// under the table before it, since a located key is looked up from the
/// table headers above its line.
fn whole_rule(locate: &Locator<'_>, raw: &RawRule, table: Range<usize>) -> Range<usize> {
    if let Some(name) = &raw.name {
        return name.span();
    }
    let text = locate.text;
    match text.get(table.start..).and_then(|rest| rest.find('\n')) {
        Some(end) => {
            let next = table.start + end + 1;
            next..next
        }
        None => table,
    }
}

/// One rule; `position` counts from 1 and names an unnamed rule, `at` is
/// where to point for problems of the rule as a whole.
fn rule(
    locate: &Locator<'_>,
    raw: RawRule,
    position: usize,
    at: Range<usize>,
) -> Result<Rule, ConfigError> {
    let name = match raw.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            return Err(locate.at(
                n.span(),
                "name",
                &format!(
                    "a rule's name cannot be empty; remove it to have this rule called \"rule {position}\""
                ),
            ));
        }
        Some(n) => n.into_inner(),
        None => format!("rule {position}"),
    };
    let matcher = |value: Option<Spanned<RawMatcher>>, key: &str| {
        value.map(|v| compile(locate, &name, v, key)).transpose()
    };
    let from = matcher(raw.from, "from")?;
    let to = matcher(raw.to, "to")?;
    let subject = matcher(raw.subject, "subject")?;
    let body = matcher(raw.body, "body")?;
    let mut headers = Vec::with_capacity(raw.header.len());
    for (header, value) in raw.header {
        // A name like "X-Priority:" would never match any header; say so
        // rather than let the rule silently never apply.
        if header.is_empty() || header.contains(|c: char| c == ':' || c.is_whitespace()) {
            return Err(locate.at(
                value.span(),
                "header",
                &format!(
                    "rule {name:?}: {header:?} is not a header name (write it without the colon, e.g. \"X-Priority\")"
                ),
            ));
        }
        let key = format!("header.{header}");
        headers.push((header, compile(locate, &name, value, &key)?));
    }
    let readers = match raw.reader {
        None => Vec::new(),
        Some(RawReaders::One(r)) => vec![r],
        Some(RawReaders::Many(rs)) => rs,
    };

    // Empty values are refused rather than read as "not set", so that a
    // rule never looks like it routes when it does not.
    let text = |value: Option<Spanned<String>>, key: &str| match value {
        Some(v) if v.get_ref().trim().is_empty() => Err(locate.at(
            v.span(),
            key,
            &format!("rule {name:?}: {key} is empty; remove it or give a value"),
        )),
        Some(v) => Ok(Some(v.into_inner())),
        None => Ok(None),
    };
    let queue = text(raw.queue, "queue")?;
    let priority = text(raw.priority, "priority")?;
    let category = text(raw.category, "category")?;
    let tags = match raw.tags {
        Some(t) if t.get_ref().iter().any(|tag| tag.trim().is_empty()) => {
            return Err(locate.at(
                t.span(),
                "tags",
                &format!("rule {name:?}: a tag cannot be empty"),
            ));
        }
        Some(t) => {
            let mut tags: Vec<String> = Vec::new();
            for tag in t.into_inner() {
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            tags
        }
        None => Vec::new(),
    };

    let routes: Vec<&str> = [
        queue.as_ref().map(|_| "queue"),
        priority.as_ref().map(|_| "priority"),
        category.as_ref().map(|_| "category"),
        (!tags.is_empty()).then_some("tags"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let action = match raw.action {
        Some(a) if a.get_ref() == "ignore" => {
            if !routes.is_empty() {
                return Err(locate.at(
                    a.span(),
                    "action",
                    &format!(
                        "rule {name:?}: action = \"ignore\" keeps the mail from opening a ticket, \
                         so {} would never apply; remove {} or the action",
                        routes.join(", "),
                        if routes.len() == 1 { "it" } else { "them" }
                    ),
                ));
            }
            RuleAction::Ignore
        }
        Some(a) => {
            return Err(locate.at(
                a.span(),
                "action",
                &format!(
                    "rule {name:?}: {:?} is not an action; the only action is \"ignore\" \
                     (to route a mail, set queue, priority, category or tags instead)",
                    a.get_ref()
                ),
            ));
        }
        None if routes.is_empty() => {
            return Err(locate.at(
                at,
                "name",
                &format!(
                    "rule {name:?} does nothing: set queue, priority, category or tags, \
                     or action = \"ignore\""
                ),
            ));
        }
        None => RuleAction::Route(Route {
            queue,
            priority,
            category,
            tags,
        }),
    };

    Ok(Rule {
        name,
        from,
        to,
        subject,
        body,
        headers,
        readers,
        has_attachment: raw.has_attachment,
        action,
    })
}

/// A matcher as written; an invalid regex is reported with the rule's name.
fn compile(
    locate: &Locator<'_>,
    rule: &str,
    value: Spanned<RawMatcher>,
    key: &str,
) -> Result<Matcher, ConfigError> {
    let span = value.span();
    match value.into_inner() {
        RawMatcher::Contains(text) => Ok(Matcher::contains(&text)),
        RawMatcher::Regex(RawRegex { regex }) => regex::Regex::new(&regex)
            .map(Matcher::Regex)
            .map_err(|e| locate.at(span, key, &format!("rule {rule:?}: invalid regex: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// A valid configuration with one reader; rules are appended to it.
    const BASE: &str = crate::config::tests::GOOD;

    /// Lines of `BASE`, so that tests can name the line a rule's key is on.
    fn base_lines() -> usize {
        BASE.lines().count()
    }

    fn parse(rules: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/m2t/config.toml"), &format!("{BASE}{rules}"))
    }

    fn rules(text: &str) -> Rules {
        match parse(text) {
            Ok(config) => config.readers[0].mail.current().rules.clone(),
            Err(e) => panic!("rules should be valid: {e}"),
        }
    }

    fn error_text(rules: &str) -> String {
        match parse(rules) {
            Ok(_) => panic!("rules should have been rejected:\n{rules}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_rules_is_first_match_with_nothing() {
        let r = rules("");
        assert_eq!(r.mode, RuleMode::First);
        assert!(r.rules.is_empty());
    }

    #[test]
    fn documented_rule_parses() {
        let r = rules(
            r#"
[rules]
mode = "all"

[[rule]]
name = "vip"
from = "@BigCorp.example"
to = "vip@contoso.com"
subject = { regex = "(?i)outage|down" }
body = "invoice"
header = { "X-Priority" = "1", "X-Mailer" = { regex = "^Outlook" } }
reader = "helpdesk"
has_attachment = true
queue = "vip"
priority = "high"
category = "incident"
tags = ["vip", "outage", "vip"]

[[rule]]
reader = ["helpdesk", "sales"]
action = "ignore"
"#,
        );
        assert_eq!(r.mode, RuleMode::All);
        assert_eq!(r.rules.len(), 2);
        let vip = &r.rules[0];
        assert_eq!(vip.name, "vip");
        assert!(matches!(&vip.from, Some(Matcher::Contains(s)) if s == "@bigcorp.example"));
        assert!(matches!(&vip.subject, Some(Matcher::Regex(_))));
        assert!(
            vip.subject
                .as_ref()
                .is_some_and(|m| m.matches("Server DOWN"))
        );
        assert_eq!(vip.headers.len(), 2);
        let mailer = vip
            .headers
            .iter()
            .find(|(n, _)| n == "X-Mailer")
            .map(|(_, m)| m);
        assert!(mailer.is_some_and(|m| m.matches("Outlook 16.0") && !m.matches("Thunderbird")));
        assert_eq!(vip.readers, vec!["helpdesk".to_string()]);
        assert_eq!(vip.has_attachment, Some(true));
        match &vip.action {
            RuleAction::Route(route) => assert_eq!(
                route,
                &Route {
                    queue: Some("vip".into()),
                    priority: Some("high".into()),
                    category: Some("incident".into()),
                    tags: vec!["vip".into(), "outage".into()],
                }
            ),
            RuleAction::Ignore => panic!("vip routes"),
        }
        let second = &r.rules[1];
        assert_eq!(second.name, "rule 2");
        assert_eq!(second.readers, vec!["helpdesk", "sales"]);
        assert!(matches!(second.action, RuleAction::Ignore));
    }

    #[test]
    fn contains_is_case_insensitive_and_regex_as_written() {
        let m = Matcher::contains("Invoice");
        assert!(m.matches("Your INVOICE is attached"));
        assert!(!m.matches("Your receipt"));
        let Ok(re) = regex::Regex::new("^Outlook") else {
            panic!("valid regex");
        };
        let m = Matcher::Regex(re);
        assert!(m.matches("Outlook 16"));
        assert!(!m.matches("outlook 16"));
    }

    #[test]
    fn invalid_regex_names_file_line_and_rule() {
        let err = error_text(
            r#"
[[rule]]
name = "vip"
subject = { regex = "(outage" }
queue = "vip"
"#,
        );
        let line = base_lines() + 4;
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:{line}: rule.subject: ")),
            "{err}"
        );
        assert!(err.contains("rule \"vip\": invalid regex: "), "{err}");
        assert!(err.contains("unclosed group"), "{err}");
    }

    #[test]
    fn invalid_header_regex_names_the_header() {
        let err = error_text(
            r#"
[[rule]]
name = "mailer"
header = { "X-Mailer" = { regex = "[a-" } }
tags = ["x"]
"#,
        );
        let line = base_lines() + 4;
        assert!(
            err.starts_with(&format!(
                "/etc/m2t/config.toml:{line}: rule.header.X-Mailer: rule \"mailer\": invalid regex"
            )),
            "{err}"
        );
    }

    #[test]
    fn unnamed_rule_is_named_by_position_in_errors() {
        let err = error_text(
            r#"
[[rule]]
queue = "a"

[[rule]]
from = { regex = "(" }
queue = "b"
"#,
        );
        assert!(err.contains("rule \"rule 2\": invalid regex"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = error_text(
            r#"
[[rule]]
name = "vip"
queue = "a"

[[rule]]
name = "vip"
queue = "b"
"#,
        );
        let line = base_lines() + 7;
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:{line}: rule.name: ")),
            "{err}"
        );
        assert!(err.contains("another [[rule]] has this name"), "{err}");

        // A written name may also collide with a default one.
        let err = error_text(
            r#"
[[rule]]
name = "rule 2"
queue = "a"

[[rule]]
queue = "b"
"#,
        );
        assert!(err.contains("another [[rule]] has this name"), "{err}");
    }

    #[test]
    fn ignore_with_routing_is_rejected() {
        let err = error_text(
            r#"
[[rule]]
name = "news"
action = "ignore"
queue = "x"
tags = ["a"]
"#,
        );
        let line = base_lines() + 4;
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:{line}: rule.action: ")),
            "{err}"
        );
        assert!(err.contains("rule \"news\""), "{err}");
        assert!(err.contains("queue, tags would never apply"), "{err}");
    }

    #[test]
    fn rule_that_sets_nothing_is_rejected() {
        let err = error_text(
            r#"
[[rule]]
name = "idle"
from = "x@example.net"
"#,
        );
        let line = base_lines() + 3;
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:{line}: rule.name: ")),
            "{err}"
        );
        assert!(err.contains("rule \"idle\" does nothing"), "{err}");

        // Empty tags route nothing either. An unnamed rule is located inside
        // its table, not under the table before it.
        let err = error_text(
            r#"
[[rule]]
from = "x@example.net"
tags = []
"#,
        );
        let line = base_lines() + 3;
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:{line}: rule.name: ")),
            "{err}"
        );
        assert!(err.contains("rule \"rule 1\" does nothing"), "{err}");
        let err = error_text("\n[[rule]]\n");
        assert!(
            err.contains(": rule.name: rule \"rule 1\" does nothing"),
            "{err}"
        );
    }

    #[test]
    fn unknown_action_is_rejected() {
        let err = error_text(
            r#"
[[rule]]
name = "spam"
action = "delete"
"#,
        );
        let line = base_lines() + 4;
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:{line}: rule.action: ")),
            "{err}"
        );
        assert!(err.contains("\"delete\" is not an action"), "{err}");
    }

    #[test]
    fn written_mistakes_are_located() {
        let err = error_text("\n[[rule]]\nname = \"x\"\nqueue = \"\"\n");
        assert!(
            err.contains("rule.queue") && err.contains("queue is empty"),
            "{err}"
        );

        let err = error_text("\n[[rule]]\nname = \"x\"\ntags = [\"a\", \" \"]\n");
        assert!(
            err.contains("rule.tags") && err.contains("a tag cannot be empty"),
            "{err}"
        );

        let err = error_text("\n[[rule]]\nname = \"\"\nqueue = \"a\"\n");
        assert!(
            err.contains("rule.name") && err.contains("\"rule 1\""),
            "{err}"
        );

        let err = error_text("\n[[rule]]\nheader = { \"X-Priority:\" = \"1\" }\nqueue = \"a\"\n");
        assert!(err.contains("is not a header name"), "{err}");

        let err = error_text("\n[[rule]]\nsubject = { regexp = \"x\" }\nqueue = \"a\"\n");
        assert!(err.contains("rule.subject"), "{err}");

        let err = error_text("\n[[rule]]\nfrm = \"x\"\nqueue = \"a\"\n");
        assert!(err.contains("frm"), "{err}");

        let err = error_text("\n[rules]\nmode = \"some\"\n");
        assert!(err.contains("rules.mode"), "{err}");
    }

    #[test]
    fn a_reader_that_does_not_exist_is_not_checked_here() {
        let r = rules("\n[[rule]]\nreader = \"nobody\"\nqueue = \"a\"\n");
        assert_eq!(r.rules[0].readers, vec!["nobody"]);
    }
}
