//! The judgements (stale, alive, an idle refresh token) and the table's
//! and summary's wording.

use super::*;

fn row() -> ReaderStatus {
    ReaderStatus {
        name: "helpdesk".into(),
        protocol: "imap".into(),
        state: "retrying".into(),
        grant_type: Some("password".into()),
        added_at: Some("2026-11-20T10:00:00Z".into()),
        last_poll_at: Some("2026-11-25T10:00:00Z".into()),
        last_success_at: None,
        last_error: Some("connection refused: 127.0.0.1:1".into()),
        last_error_at: Some("2026-11-25T10:00:00Z".into()),
        consecutive_failures: 3,
        refresh_idle_days: Some(2),
        seconds_without_success: Some(400.0),
    }
}

#[test]
fn table_shows_state_errors_and_never() {
    let text = render(&[row()]);
    let mut lines = text.lines();
    assert!(lines.next().expect("header").starts_with("READER"));
    let row = lines.next().expect("row");
    assert!(row.starts_with("helpdesk  imap      retrying"), "{row}");
    assert!(row.contains("never"));
    assert!(
        row.ends_with("3         connection refused: 127.0.0.1:1"),
        "{row}"
    );
    assert_eq!(lines.next(), None, "no warning for a fresh token");
}

#[test]
fn idle_refresh_token_is_flagged_before_it_dies() {
    let mut idle = row();
    idle.refresh_idle_days = Some(83);
    let text = render(&[idle]);
    let warning = text.lines().last().expect("warning");
    assert!(
        warning.starts_with("warning: helpdesk: refresh token unused for 83 days"),
        "{warning}"
    );
    assert!(warning.contains("(in 7 days)"), "{warning}");
}

fn config(readers: &[(&str, u64)]) -> Config {
    let mut text = String::from("[daemon]\npoll_interval = \"60s\"\n");
    for (name, secs) in readers {
        text.push_str(&format!(
            "[[reader]]\nname = \"{name}\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\n\
                 tls = \"none\"\nusername = \"u\"\nauth = \"plain\"\npassword = \"p\"\n\
                 poll_interval = \"{secs}s\"\n"
        ));
    }
    Config::parse(std::path::Path::new("/etc/m2t.toml"), &text).expect("config")
}

fn named(name: &str, state: &str, without_success: f64) -> ReaderStatus {
    ReaderStatus {
        name: name.into(),
        state: state.into(),
        seconds_without_success: Some(without_success),
        ..row()
    }
}

fn daemon(age: Option<f64>, stopped: bool) -> DaemonStatus {
    DaemonStatus {
        pid: 42,
        started_at: "2026-11-25T10:00:00Z".into(),
        heartbeat_at: age.map(|_| "2026-11-25T10:00:00.000Z".into()),
        heartbeat_seconds: 5.0,
        stopped_at: stopped.then(|| "2026-11-25T11:00:00Z".into()),
        config_path: "/etc/m2t.toml".into(),
        reloaded_at: None,
        reload_error: None,
        reload_error_at: None,
        heartbeat_age: age,
    }
}

#[test]
fn summary_counts_configured_readers_by_state() {
    let config = config(&[("a", 60), ("b", 60), ("c", 60)]);
    let rows = [
        named("a", "ok", 1.0),
        named("b", "needs_authorization", 1.0),
        named("c", "ok", 1.0),
        named("removed", "retrying", 1.0),
    ];
    assert_eq!(
        summary(&rows, &config),
        "3 readers: 2 ok, 1 needs_authorization"
    );
    assert_eq!(summary(&rows[..1], &config), "1 reader: 1 ok");
    assert_eq!(summary(&[], &config), "0 readers");
}

#[test]
fn stale_means_three_poll_intervals_without_success() {
    let config = config(&[("fast", 10), ("slow", 600)]);
    let report = Report::new(
        &config,
        Some(daemon(Some(1.0), false)),
        vec![
            named("fast", "ok", 31.0),
            named("slow", "ok", 31.0),
            named("gone", "ok", 99_999.0),
        ],
    );
    let stale: Vec<(&str, bool, bool)> = report
        .readers
        .iter()
        .map(|r| (r.row.name.as_str(), r.stale, r.configured))
        .collect();
    assert_eq!(
        stale,
        [
            ("fast", true, true),
            ("slow", false, true),
            ("gone", false, false)
        ]
    );
    assert!(report.daemon.running);
    let text = render_report(&report);
    assert!(text.starts_with("daemon: running (pid 42"), "{text}");
    assert!(
        text.contains("warning: fast: stale: no success for 31s"),
        "{text}"
    );
    assert!(!text.contains("warning: slow"), "{text}");
    assert!(
        text.contains("note: gone: no longer in the configuration"),
        "{text}"
    );
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["readers"][0]["stale"], true);
    assert_eq!(json["readers"][0]["poll_interval_seconds"], 10);
    assert_eq!(json["readers"][2]["configured"], false);
    assert_eq!(json["daemon"]["pid"], 42);
    assert!(json["readers"][0].get("events").is_none());
}

#[test]
fn outbox_counts_show_per_reader_with_the_last_error() {
    let config = config(&[("a", 60), ("b", 60)]);
    let mut report = Report::new(
        &config,
        Some(daemon(Some(1.0), false)),
        vec![named("a", "ok", 1.0), named("b", "ok", 1.0)],
    );
    report.set_outbox(vec![OutboxStatus {
        reader: "a".into(),
        pending: 1,
        failed: 1,
        sent: 3,
        oldest_pending_at: Some("2026-11-25T10:00:00Z".into()),
        last_error: Some("connection refused: 127.0.0.1:1".into()),
        last_error_at: Some("2026-11-25T10:01:00Z".into()),
    }]);
    let text = render_report(&report);
    assert!(
        text.contains(
            "acknowledgements of a: 3 sent, 1 pending (oldest queued at 2026-11-25T10:00:00Z), \
                 1 failed; last error (2026-11-25T10:01:00Z): connection refused: 127.0.0.1:1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: a: 1 acknowledgement(s) given up"),
        "{text}"
    );
    assert!(!text.contains("acknowledgements of b"), "{text}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["readers"][0]["outbox"]["pending"], 1);
    assert_eq!(
        json["readers"][0]["outbox"]["last_error"],
        "connection refused: 127.0.0.1:1"
    );
    assert!(json["readers"][0]["outbox"].get("reader").is_none());
    assert!(json["readers"][1].get("outbox").is_none());
}

#[test]
fn recent_mail_shows_what_opened_no_ticket() {
    let mut report = Report::new(
        &config(&[("a", 60), ("b", 60)]),
        None,
        vec![named("a", "ok", 1.0), named("b", "ok", 1.0)],
    );
    report.set_mail(vec![MailCounts {
        reader: "a".into(),
        tickets: 5,
        replies: 2,
        ignored: [("auto-reply".to_string(), 2), ("bulk".to_string(), 1)].into(),
        ..MailCounts::default()
    }]);
    let text = render_report(&report);
    assert!(
            text.contains(
                "mail of a, last 24 h: 5 tickets, 2 replies, 3 ignored (2 auto-reply, 1 bulk); see emails.disposition\n"
            ),
            "{text}"
        );
    assert!(!text.contains("mail of b"), "{text}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["readers"][0]["mail_24h"]["ignored"]["auto-reply"], 2);
    assert!(json["readers"][1].get("mail_24h").is_none());
}

#[test]
fn quarantined_mail_is_a_warning_and_a_count() {
    let mut report = Report::new(
        &config(&[("a", 60), ("b", 60)]),
        None,
        vec![named("a", "ok", 1.0), named("b", "ok", 1.0)],
    );
    report.set_quarantine(vec![("a".into(), 2)]);
    report.set_mail(vec![MailCounts {
        reader: "a".into(),
        tickets: 1,
        quarantined: 2,
        ..MailCounts::default()
    }]);
    let text = render_report(&report);
    assert!(
        text.contains(
            "warning: a: 2 mail(s) in quarantine (kept whole, no ticket yet); \
                 see `mail2ticket quarantine list`\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("mail of a, last 24 h: 1 tickets, 0 replies, 2 quarantined\n"),
        "{text}"
    );
    assert!(!text.contains("warning: b"), "{text}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["readers"][0]["quarantined"], 2);
    assert_eq!(json["readers"][1]["quarantined"], 0);
    assert_eq!(json["readers"][0]["mail_24h"]["quarantined"], 2);
}

#[test]
fn daemon_is_alive_only_with_a_recent_heartbeat() {
    assert!(daemon_alive(&daemon(Some(14.0), false)).is_ok());
    let old = daemon_alive(&daemon(Some(16.0), false)).expect_err("old heartbeat");
    assert!(
        old.contains("no heartbeat from the daemon (pid 42) for 16s"),
        "{old}"
    );
    let stopped = daemon_alive(&daemon(None, true)).expect_err("stopped");
    assert!(
        stopped.contains("stopped at 2026-11-25T11:00:00Z"),
        "{stopped}"
    );
}
