//! The monitoring files in dist/ against the daemon they watch: the alert
//! rules pass `promtool check rules`, each alert fires in `promtool test
//! rules` (tests/promtool/), and every metric the rules and the Grafana
//! dashboard query is one the daemon exports at `/metrics`.
//!
//! promtool comes from Debian's `prometheus` package, which `scripts/test`
//! installs; without it these tests fail, they do not skip.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use std::time::Duration;

use mail2ticket::ops::metrics::{AckResult, Metrics};
use mail2ticket::outcome::{BatchOutcome, FailureClass, ReaderState, Reason};
use regex::Regex;

const RULES: &str = "dist/prometheus/mail2ticket-alerts.yml";
/// promtool evaluates each file at one interval: minutes for most alerts,
/// days for the refresh token's 80.
const RULE_TESTS: [&str; 2] = [
    "tests/promtool/alerts_test.yml",
    "tests/promtool/token_expiry_test.yml",
];
const DASHBOARD: &str = "dist/grafana/mail2ticket-dashboard.json";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Runs promtool in the repository; its output when it fails.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}); install Debian's prometheus package \
                 (scripts/test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn alert_rules_pass_promtool_check() {
    let said = promtool(&["check", "rules", RULES]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn every_alert_fires_in_a_promtool_rule_test() {
    let mut args = vec!["test", "rules"];
    args.extend(RULE_TESTS);
    promtool(&args);
    let alerts = names(&read(RULES), r"(?m)^\s*-\s*alert:\s*(\S+)");
    let tested: BTreeSet<String> = RULE_TESTS
        .iter()
        .flat_map(|file| names(&read(file), r"(?m)^\s*alertname:\s*(\S+)"))
        .collect();
    assert!(alerts.len() >= 8, "alerts: {alerts:?}");
    let untested: Vec<_> = alerts.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts without a promtool test: {untested:?}"
    );
}

fn names(text: &str, pattern: &str) -> BTreeSet<String> {
    Regex::new(pattern)
        .expect("pattern")
        .captures_iter(text)
        .map(|c| c[1].to_string())
        .collect()
}

/// The daemon's registry with a series in every family (an empty family
/// is not rendered): each recording call the daemon makes, once.
fn every_family() -> Metrics {
    let metrics = Metrics::new();
    let reader = metrics.reader("helpdesk");
    reader.poll_started();
    reader.failed(FailureClass::Connection);
    reader.succeeded();
    reader.state(ReaderState::Ok);
    reader.token_obtained();
    reader.fetched(Duration::from_millis(30));
    reader.backlog(2);
    reader.committed(
        &BatchOutcome {
            created: 1,
            joined: 1,
            ignored: [1; Reason::ALL.len()],
            duplicates: 1,
            already_recorded: 0,
            quarantined: 1,
        },
        Duration::from_millis(20),
    );
    reader.taken(2);
    metrics.ack("helpdesk", AckResult::Sent);
    metrics.reload(true);
    metrics.reader_health("helpdesk", 0, false);
    metrics.refresh_token_used("helpdesk", Some(1.0));
    metrics.heartbeat();
    metrics
}

/// The sample names the daemon's registry exposes: each family from its
/// `# TYPE` line, with the suffixes its type adds.
fn exported() -> BTreeSet<String> {
    let (_, text) = every_family().render(false);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            panic!("odd TYPE line: {line}");
        };
        let base = name.strip_suffix("_total").unwrap_or(name);
        match kind {
            "counter" => {
                names.insert(format!("{base}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The `mail2ticket_*` names `text` uses that `exported` lacks.
fn unknown(text: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    names(text, r"\b(mail2ticket_[a-z0-9_]+)")
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

#[test]
fn rules_and_dashboard_query_only_metrics_the_daemon_exports() {
    let exported = exported();
    for name in [
        "mail2ticket_polls_total",
        "mail2ticket_fetch_duration_seconds_bucket",
        "mail2ticket_reader_state",
        "mail2ticket_consecutive_failures",
        "mail2ticket_refresh_token_last_used_timestamp_seconds",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    // The check itself: a name the daemon does not export is caught.
    assert_eq!(
        unknown("rate(mail2ticket_polls_totl[5m])", &exported),
        BTreeSet::from(["mail2ticket_polls_totl".to_string()])
    );

    for file in [RULES, DASHBOARD] {
        let text = read(file);
        let used = names(&text, r"\b(mail2ticket_[a-z0-9_]+)");
        assert!(used.len() >= 5, "{file} uses hardly any metric: {used:?}");
        let unknown = unknown(&text, &exported);
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the daemon does not export: {unknown:?}"
        );
    }
}

#[test]
fn dashboard_is_importable_json_with_a_datasource_input() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["title"], "mail2ticket");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Mail in per hour",
        "Tickets opened per hour",
        "Ignored by reason per hour",
        "Poll latency (fetch of one batch)",
        "Commit latency (one batch to the database)",
        "Token refreshes per hour",
    ] {
        assert!(
            titles.contains(&wanted),
            "no panel {wanted:?} in {titles:?}"
        );
    }
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "panel {} has a target without a query",
                panel["title"]
            );
        }
    }
}
