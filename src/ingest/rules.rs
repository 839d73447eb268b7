//! Routing rules applied to a mail: which queue, priority, category and
//! tags its ticket gets, or whether a rule keeps it out.

use crate::config::Rules;

use super::ParsedMail;

/// What the rules decided for one mail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub queue: Option<String>,
    pub priority: Option<String>,
    pub category: Option<String>,
    pub tags: Vec<String>,
    /// The rule with `action = "ignore"` that matched, if one did.
    pub ignored_by: Option<String>,
    /// Names of the rules that matched, in order.
    pub matched: Vec<String>,
}

/// Applies `rules` to `mail`, read by `reader`.
pub fn route(mail: &ParsedMail, reader: &str, rules: &Rules) -> Routing {
    let _ = (mail, reader, rules);
    Routing::default()
}
