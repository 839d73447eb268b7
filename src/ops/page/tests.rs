use super::*;
use crate::ops::status::{DaemonView, ReaderView};
use crate::store::{DaemonStatus, ReaderStatus};

fn reader(name: &str, state: &str, last_error: Option<&str>) -> ReaderView {
    ReaderView {
        row: ReaderStatus {
            name: name.into(),
            protocol: "imap".into(),
            state: state.into(),
            grant_type: Some("password".into()),
            added_at: Some("2026-11-25T08:00:00Z".into()),
            last_poll_at: Some("2026-11-25T09:00:00Z".into()),
            last_success_at: None,
            last_error: last_error.map(str::to_string),
            last_error_at: last_error.map(|_| "2026-11-25T09:00:00Z".to_string()),
            consecutive_failures: 2,
            refresh_idle_days: None,
            seconds_without_success: Some(10.0),
        },
        configured: true,
        stale: false,
        poll_interval_seconds: Some(60),
        events: None,
        outbox: None,
        mail_24h: None,
        quarantined: 3,
        first_contacts: None,
    }
}

/// 2026-11-25T09:00:30Z.
const NOW: i64 = 1_795_597_230;

fn report(readers: Vec<ReaderView>) -> Report {
    Report {
        daemon: DaemonView {
            running: true,
            row: Some(DaemonStatus {
                pid: 812,
                started_at: "2026-11-25T08:00:00Z".into(),
                heartbeat_at: Some("2026-11-25T09:00:29Z".into()),
                heartbeat_seconds: 5.0,
                stopped_at: None,
                config_path: "/etc/mail2ticket/secret-looking-path.toml".into(),
                reloaded_at: None,
                reload_error: Some("password = \"hunter2\" is not a table".into()),
                reload_error_at: Some("2026-11-25T08:30:00Z".into()),
                heartbeat_age: Some(1.0),
            }),
        },
        readers,
    }
}

#[test]
fn page_escapes_what_it_shows_and_leaves_out_what_status_keeps_to_itself() {
    let page = render(
        &report(vec![reader(
            "helpdesk",
            "retrying",
            Some("connection refused: <script>alert(1)</script>"),
        )]),
        &[],
        NOW,
    );
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("connection refused: &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script"), "{page}");
    // The reload error may quote the file; only that it failed is shown.
    assert!(!page.contains("hunter2"), "{page}");
    assert!(!page.contains("secret-looking-path"), "{page}");
    assert!(page.contains("reload at 2026-11-25T08:30:00Z failed"));
    assert!(page.contains("<b id=\"quarantine-count\">3</b>"));
    assert!(page.contains("after its backoff"));
    // Nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "url(", "@import"] {
        assert!(!page.contains(external), "{external} in {page}");
    }
}

#[test]
fn next_poll_is_the_last_poll_plus_the_interval() {
    let ok = reader("a", "ok", None);
    assert_eq!(next_poll(&ok, NOW), "2026-11-25T09:01:00Z");
    assert_eq!(next_poll(&ok, NOW + 60), "due now");
    let parked = reader("b", "needs_authorization", Some("sign in again"));
    assert_eq!(next_poll(&parked, NOW), "waits for an admin");
}

#[test]
fn chart_has_a_bar_per_hour_with_the_counts_of_that_hour() {
    let hours = [
        HourCount {
            hour: "2026-11-25T09:00:00Z".into(),
            mails: 7,
            tickets: 4,
        },
        HourCount {
            hour: "2026-11-24T10:00:00Z".into(),
            mails: 1,
            tickets: 1,
        },
        // Outside the window: not counted.
        HourCount {
            hour: "2026-11-24T09:00:00Z".into(),
            mails: 100,
            tickets: 100,
        },
    ];
    let page = render(&report(Vec::new()), &hours, NOW);
    assert_eq!(page.matches("<rect class=\"mails\"").count(), 24);
    assert!(page.contains("2026-11-25T09:00:00Z: 7 mails, 4 tickets"));
    assert!(page.contains("2026-11-24T10:00:00Z: 1 mails, 1 tickets"));
    assert!(page.contains("8 mails in, 5 tickets opened"), "{page}");
}
