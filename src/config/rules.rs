//! `[[rule]]` routing rules and `[rules]`, as the admin writes them.
//!
//! Owns validation (an invalid regex is an error naming the rule and its
//! line); what a rule does to a mail is `crate::ingest::rules`.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator};

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
#[allow(dead_code)] // filled in by the rules change
pub(super) struct RawRule {
    name: Option<Spanned<String>>,
}

/// Validates the rules.
pub(super) fn build(
    _locate: &Locator<'_>,
    section: RawRules,
    rules: Vec<Spanned<RawRule>>,
) -> Result<Rules, ConfigError> {
    let _ = rules;
    Ok(Rules {
        mode: section.mode,
        rules: Vec::new(),
    })
}
