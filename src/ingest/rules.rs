//! Routing rules applied to a mail: which queue, priority, category and
//! tags its ticket gets, or whether a rule keeps it out.
//!
//! Owns what each condition of a `[[rule]]` looks at in a mail and how the
//! matching rules combine (`[rules] mode`); what a rule may say is
//! `crate::config::rules`.

use crate::config::{Matcher, Rule, RuleAction, RuleMode, Rules};

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
///
/// First-match mode applies only the first rule that matches. All-match
/// mode applies every matching rule in file order: a later rule's values
/// replace earlier ones, tags add up without repeats, and one ignoring rule
/// is enough to keep the mail out.
pub fn route(mail: &ParsedMail, reader: &str, rules: &Rules) -> Routing {
    let mut routing = Routing::default();
    for rule in &rules.rules {
        if !applies(rule, mail, reader) {
            continue;
        }
        routing.matched.push(rule.name.clone());
        match &rule.action {
            RuleAction::Ignore => {
                // The first ignoring rule is the one the disposition names.
                routing.ignored_by.get_or_insert_with(|| rule.name.clone());
            }
            RuleAction::Route(route) => {
                let set = |field: &mut Option<String>, value: &Option<String>| {
                    if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                        *field = Some(v.clone());
                    }
                };
                set(&mut routing.queue, &route.queue);
                set(&mut routing.priority, &route.priority);
                set(&mut routing.category, &route.category);
                for tag in &route.tags {
                    if !routing.tags.contains(tag) {
                        routing.tags.push(tag.clone());
                    }
                }
            }
        }
        if rules.mode == RuleMode::First {
            break;
        }
    }
    routing
}

/// Whether every condition `rule` sets holds for `mail`.
fn applies(rule: &Rule, mail: &ParsedMail, reader: &str) -> bool {
    if !rule.readers.is_empty() && !rule.readers.iter().any(|r| r == reader) {
        return false;
    }
    if let Some(want) = rule.has_attachment
        && has_attachment(mail) != want
    {
        return false;
    }
    if let Some(m) = &rule.from
        && !any_matches(m, from_texts(mail).iter().map(String::as_str))
    {
        return false;
    }
    // The whole To and Cc texts: a substring finds any one address in
    // them, and a display name counts as much as the address.
    if let Some(m) = &rule.to
        && !any_matches(
            m,
            [mail.to.as_deref(), mail.cc.as_deref()]
                .into_iter()
                .flatten(),
        )
    {
        return false;
    }
    if let Some(m) = &rule.subject
        && !m.matches(&mail.subject)
    {
        return false;
    }
    if let Some(m) = &rule.body
        && !m.matches(body(mail))
    {
        return false;
    }
    rule.headers
        .iter()
        .all(|(name, m)| any_matches(m, mail.header_values(name)))
}

fn any_matches<'a>(m: &Matcher, texts: impl IntoIterator<Item = &'a str>) -> bool {
    texts.into_iter().any(|t| m.matches(t))
}

/// The sender as a rule may name it: the address, the display name, and
/// both as written in a From header (`Name <addr>`), so that an anchored
/// regex can be written against any of them.
fn from_texts(mail: &ParsedMail) -> Vec<String> {
    let addr = mail.from_addr.as_deref();
    let name = mail.from_name.as_deref().filter(|n| !n.is_empty());
    let mut texts: Vec<String> = addr.into_iter().chain(name).map(str::to_string).collect();
    if let (Some(name), Some(addr)) = (name, addr) {
        texts.push(format!("{name} <{addr}>"));
    }
    texts
}

/// The text a body condition reads: the plain text, or the HTML when a
/// mail has no text at all.
fn body(mail: &ParsedMail) -> &str {
    match &mail.body_html {
        Some(html) if mail.body_text.trim().is_empty() => html,
        _ => &mail.body_text,
    }
}

/// Whether a person reading the mail would see an attachment. Inline
/// images are part of the message (logos, signatures, pasted screenshots),
/// not attachments; other inline parts are files all the same (Apple Mail
/// sends a PDF as `Content-Disposition: inline`).
fn has_attachment(mail: &ParsedMail) -> bool {
    mail.attachments
        .iter()
        .any(|a| !a.inline || !a.content_type.starts_with("image/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use crate::ingest::parse;

    const PLAIN: &[u8] = b"From: Ann Example <Ann@BigCorp.example>\r\n\
To: Support <help@contoso.com>, vip@contoso.com\r\nCc: Carl <carl@example.net>\r\n\
Subject: Server DOWN since 9:00\r\nMessage-ID: <p1@bigcorp.example>\r\n\
X-Priority: 1 (Highest)\r\nX-Mailer: Microsoft Outlook 16.0\r\n\r\n\
Please look at the invoice run.\r\n";

    fn regex(pattern: &str) -> Matcher {
        match regex::Regex::new(pattern) {
            Ok(re) => Matcher::Regex(re),
            Err(e) => panic!("test regex {pattern:?}: {e}"),
        }
    }

    /// A rule with no conditions that routes to a queue named like it.
    fn rule(name: &str) -> Rule {
        Rule {
            name: name.into(),
            from: None,
            to: None,
            subject: None,
            body: None,
            headers: Vec::new(),
            readers: Vec::new(),
            has_attachment: None,
            action: RuleAction::Route(Route {
                queue: Some(name.into()),
                ..Route::default()
            }),
        }
    }

    fn routed(route: Route, name: &str) -> Rule {
        Rule {
            action: RuleAction::Route(route),
            ..rule(name)
        }
    }

    fn first(rules: Vec<Rule>) -> Rules {
        Rules {
            mode: RuleMode::First,
            rules,
        }
    }

    fn all(rules: Vec<Rule>) -> Rules {
        Rules {
            mode: RuleMode::All,
            rules,
        }
    }

    /// Whether `rule` alone matches `raw` read by "helpdesk".
    fn hits(rule: Rule, raw: &[u8]) -> bool {
        hits_mail(rule, &parse(raw))
    }

    fn hits_mail(rule: Rule, mail: &ParsedMail) -> bool {
        let name = rule.name.clone();
        route(mail, "helpdesk", &first(vec![rule])).matched == vec![name]
    }

    #[test]
    fn no_rules_route_nothing() {
        assert_eq!(
            route(&parse(PLAIN), "helpdesk", &Rules::default()),
            Routing::default()
        );
    }

    #[test]
    fn a_rule_without_conditions_matches_every_mail() {
        let routing = route(&parse(PLAIN), "helpdesk", &first(vec![rule("default")]));
        assert_eq!(routing.queue.as_deref(), Some("default"));
        assert_eq!(routing.matched, vec!["default"]);
        assert_eq!(routing.ignored_by, None);
    }

    #[test]
    fn from_matches_address_name_and_both() {
        let with = |m: Matcher| Rule {
            from: Some(m),
            ..rule("r")
        };
        assert!(hits(with(Matcher::contains("@bigcorp.example")), PLAIN));
        assert!(hits(with(Matcher::contains("ann example")), PLAIN));
        assert!(hits(with(Matcher::contains("Example <ann@")), PLAIN));
        assert!(hits(with(regex(r"^Ann@BigCorp\.example$")), PLAIN));
        assert!(hits(with(regex(r"^Ann Example$")), PLAIN));
        assert!(hits(with(regex(r"^Ann Example <Ann@")), PLAIN));
        assert!(!hits(with(Matcher::contains("@contoso.com")), PLAIN));
        // A mail without a readable sender matches no from condition.
        let nobody = b"Subject: hello\r\nTo: help@contoso.com\r\n\r\nhi\r\n";
        assert!(!hits(with(Matcher::contains("")), nobody));
    }

    #[test]
    fn to_matches_any_to_or_cc_address() {
        let with = |m: Matcher| Rule {
            to: Some(m),
            ..rule("r")
        };
        assert!(hits(with(Matcher::contains("VIP@contoso.com")), PLAIN));
        assert!(hits(with(Matcher::contains("help@contoso.com")), PLAIN));
        assert!(hits(with(Matcher::contains("carl@example.net")), PLAIN));
        assert!(hits(with(Matcher::contains("Support")), PLAIN));
        assert!(hits(with(regex(r"^Carl <")), PLAIN));
        assert!(!hits(with(Matcher::contains("ann@bigcorp.example")), PLAIN));
        let no_cc = b"From: a@example.net\r\nTo: help@contoso.com\r\nSubject: x\r\n\r\nhi\r\n";
        assert!(!hits(with(Matcher::contains("carl@")), no_cc));
    }

    #[test]
    fn subject_by_substring_or_regex() {
        let with = |m: Matcher| Rule {
            subject: Some(m),
            ..rule("r")
        };
        assert!(hits(with(Matcher::contains("server down")), PLAIN));
        assert!(hits(with(regex("(?i)outage|down")), PLAIN));
        assert!(!hits(with(regex("outage|down")), PLAIN));
        assert!(!hits(with(Matcher::contains("printer")), PLAIN));
    }

    #[test]
    fn body_reads_the_text_or_else_the_html() {
        let with = |m: Matcher| Rule {
            body: Some(m),
            ..rule("r")
        };
        assert!(hits(with(Matcher::contains("INVOICE")), PLAIN));
        assert!(!hits(with(Matcher::contains("receipt")), PLAIN));

        let html_only = ParsedMail {
            body_text: String::new(),
            body_html: Some("<p>Your <b>invoice</b></p>".into()),
            ..ParsedMail::default()
        };
        assert!(hits_mail(with(Matcher::contains("<b>invoice")), &html_only));
        // With a text body the HTML is not read twice over.
        let both = ParsedMail {
            body_text: "Your invoice".into(),
            ..html_only
        };
        assert!(!hits_mail(with(Matcher::contains("<b>")), &both));
    }

    #[test]
    fn header_names_are_case_insensitive_and_all_must_hold() {
        let with = |headers: Vec<(&str, Matcher)>| Rule {
            headers: headers
                .into_iter()
                .map(|(n, m)| (n.to_string(), m))
                .collect(),
            ..rule("r")
        };
        assert!(hits(
            with(vec![("x-priority", Matcher::contains("1"))]),
            PLAIN
        ));
        assert!(hits(
            with(vec![("X-Mailer", regex("^Microsoft Outlook"))]),
            PLAIN
        ));
        assert!(!hits(with(vec![("X-Mailer", regex("^Outlook"))]), PLAIN));
        assert!(!hits(
            with(vec![("X-Spam-Flag", Matcher::contains(""))]),
            PLAIN
        ));
        assert!(hits(
            with(vec![
                ("X-Priority", Matcher::contains("1")),
                ("X-Mailer", Matcher::contains("outlook")),
            ]),
            PLAIN
        ));
        assert!(!hits(
            with(vec![
                ("X-Priority", Matcher::contains("1")),
                ("X-Mailer", Matcher::contains("thunderbird")),
            ]),
            PLAIN
        ));
        // Any one of several headers of that name will do.
        let twice =
            b"From: a@example.net\r\nSubject: x\r\nX-Tag: alpha\r\nX-Tag: beta\r\n\r\nhi\r\n";
        assert!(hits(
            with(vec![("X-Tag", Matcher::contains("beta"))]),
            twice
        ));
    }

    #[test]
    fn reader_names_are_exact() {
        let with = |readers: &[&str]| Rule {
            readers: readers.iter().map(|r| r.to_string()).collect(),
            ..rule("r")
        };
        assert!(hits(with(&["helpdesk"]), PLAIN));
        assert!(hits(with(&["sales", "helpdesk"]), PLAIN));
        assert!(!hits(with(&["sales"]), PLAIN));
        assert!(!hits(with(&["Helpdesk"]), PLAIN));
        assert!(!hits(with(&["help"]), PLAIN));
    }

    #[test]
    fn has_attachment_ignores_inline_images() {
        let with = |want: bool| Rule {
            has_attachment: Some(want),
            ..rule("r")
        };
        let attached = b"From: a@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee file\r\n\
--XX\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n";
        assert!(hits(with(true), attached));
        assert!(!hits(with(false), attached));
        assert!(hits(with(false), PLAIN));
        assert!(!hits(with(true), PLAIN));

        // An HTML mail with its logo embedded by Content-ID.
        let logo = b"From: a@example.net\r\nSubject: signature\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/related; boundary=RR\r\n\r\n--RR\r\nContent-Type: text/html\r\n\r\n\
<p>Hi</p><img src=\"cid:logo@x\">\r\n--RR\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n\
Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--RR--\r\n";
        let mail = parse(logo);
        assert!(mail.attachments.iter().all(|a| a.inline), "{mail:?}");
        assert!(!mail.attachments.is_empty());
        assert!(hits_mail(with(false), &mail));
        assert!(!hits_mail(with(true), &mail));

        // Apple Mail marks a PDF inline; it is still a file to the reader.
        let apple = b"From: a@example.net\r\nSubject: report\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=AA\r\n\r\n--AA\r\nContent-Type: text/plain\r\n\r\nhere\r\n\
--AA\r\nContent-Type: application/pdf; name=r.pdf\r\nContent-Disposition: inline; filename=r.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--AA--\r\n";
        assert!(hits(with(true), apple));
    }

    #[test]
    fn all_conditions_must_hold() {
        let vip = Rule {
            from: Some(Matcher::contains("@bigcorp.example")),
            subject: Some(Matcher::contains("down")),
            readers: vec!["helpdesk".into()],
            ..rule("vip")
        };
        assert!(hits(vip.clone(), PLAIN));
        let wrong_subject = Rule {
            subject: Some(Matcher::contains("printer")),
            ..vip
        };
        assert!(!hits(wrong_subject, PLAIN));
    }

    #[test]
    fn first_mode_applies_only_the_first_match() {
        let rules = first(vec![
            Rule {
                subject: Some(Matcher::contains("printer")),
                ..rule("printers")
            },
            routed(
                Route {
                    queue: Some("vip".into()),
                    tags: vec!["vip".into()],
                    ..Route::default()
                },
                "vip",
            ),
            routed(
                Route {
                    priority: Some("low".into()),
                    tags: vec!["late".into()],
                    ..Route::default()
                },
                "catch-all",
            ),
        ]);
        let routing = route(&parse(PLAIN), "helpdesk", &rules);
        assert_eq!(
            routing,
            Routing {
                queue: Some("vip".into()),
                tags: vec!["vip".into()],
                matched: vec!["vip".into()],
                ..Routing::default()
            }
        );
    }

    #[test]
    fn all_mode_lets_later_values_win_and_adds_tags_once() {
        let rules = all(vec![
            routed(
                Route {
                    queue: Some("general".into()),
                    priority: Some("normal".into()),
                    tags: vec!["mail".into(), "vip".into()],
                    ..Route::default()
                },
                "defaults",
            ),
            Rule {
                subject: Some(Matcher::contains("printer")),
                ..rule("printers")
            },
            Rule {
                from: Some(Matcher::contains("@bigcorp.example")),
                ..routed(
                    Route {
                        queue: Some("vip".into()),
                        category: Some("incident".into()),
                        tags: vec!["vip".into(), "outage".into(), "mail".into()],
                        ..Route::default()
                    },
                    "vip",
                )
            },
            // Sets only tags: the queue chosen above stays.
            routed(
                Route {
                    tags: vec!["outage".into(), "seen".into()],
                    ..Route::default()
                },
                "tagger",
            ),
        ]);
        let routing = route(&parse(PLAIN), "helpdesk", &rules);
        assert_eq!(
            routing,
            Routing {
                queue: Some("vip".into()),
                priority: Some("normal".into()),
                category: Some("incident".into()),
                tags: vec!["mail".into(), "vip".into(), "outage".into(), "seen".into()],
                ignored_by: None,
                matched: vec!["defaults".into(), "vip".into(), "tagger".into()],
            }
        );
    }

    #[test]
    fn ignore_keeps_the_mail_out_in_either_mode() {
        let newsletters = Rule {
            from: Some(Matcher::contains("@bigcorp.example")),
            action: RuleAction::Ignore,
            ..rule("newsletters")
        };
        let mail = parse(PLAIN);

        let routing = route(
            &mail,
            "helpdesk",
            &first(vec![newsletters.clone(), rule("after")]),
        );
        assert_eq!(routing.ignored_by.as_deref(), Some("newsletters"));
        assert_eq!(routing.matched, vec!["newsletters"]);
        assert_eq!(routing.queue, None);

        // In all-match mode an ignore wins wherever it stands, and the first
        // ignoring rule is the one named.
        let also = Rule {
            name: "also".into(),
            ..newsletters.clone()
        };
        let routing = route(
            &mail,
            "helpdesk",
            &all(vec![
                rule("before"),
                newsletters.clone(),
                also,
                rule("after"),
            ]),
        );
        assert_eq!(routing.ignored_by.as_deref(), Some("newsletters"));
        assert_eq!(
            routing.matched,
            vec!["before", "newsletters", "also", "after"]
        );

        // An ignoring rule that does not match changes nothing.
        let other = Rule {
            from: Some(Matcher::contains("@elsewhere.example")),
            ..newsletters
        };
        let routing = route(&mail, "helpdesk", &all(vec![other, rule("after")]));
        assert_eq!(routing.ignored_by, None);
        assert_eq!(routing.queue.as_deref(), Some("after"));
    }
}
