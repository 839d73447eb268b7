//! `status`: reader health from the database, as a table for humans, with
//! warnings for what will break if nobody acts.

use crate::store::ReaderStatus;

/// Entra ends a refresh token after 90 days without use; warn ten days
/// ahead, while a restart or a `check` still saves it.
pub const REFRESH_IDLE_WARNING_DAYS: i64 = 80;
const REFRESH_IDLE_LIMIT_DAYS: i64 = 90;

/// Renders one line per reader with aligned columns, then the warnings.
pub fn render(rows: &[ReaderStatus]) -> String {
    let header = [
        "READER",
        "PROTOCOL",
        "STATE",
        "LAST POLL",
        "LAST SUCCESS",
        "FAILURES",
        "LAST ERROR",
    ];
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.protocol.clone(),
                r.state.clone(),
                r.last_poll_at.clone().unwrap_or_else(|| "never".into()),
                r.last_success_at.clone().unwrap_or_else(|| "never".into()),
                r.consecutive_failures.to_string(),
                r.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: &[&str]| {
        let mut row = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                row.push_str(cell);
            } else {
                row.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(row.trim_end());
        out.push('\n');
    };
    push(&header);
    for line in &lines {
        push(&line.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for warning in rows.iter().filter_map(warning) {
        out.push_str(&warning);
        out.push('\n');
    }
    out
}

fn warning(r: &ReaderStatus) -> Option<String> {
    let days = r.refresh_idle_days?;
    if days < REFRESH_IDLE_WARNING_DAYS {
        return None;
    }
    let left = REFRESH_IDLE_LIMIT_DAYS - days;
    let when = if left > 0 {
        format!("in {left} days")
    } else {
        "now".into()
    };
    Some(format!(
        "warning: {}: refresh token unused for {days} days; Entra ID ends it after \
         {REFRESH_IDLE_LIMIT_DAYS} days without use ({when}). Start the daemon or run \
         `mail2ticket check {}` to keep it alive.",
        r.name, r.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ReaderStatus {
        ReaderStatus {
            name: "helpdesk".into(),
            protocol: "imap".into(),
            state: "retrying".into(),
            grant_type: Some("password".into()),
            last_poll_at: Some("2026-11-25T10:00:00Z".into()),
            last_success_at: None,
            last_error: Some("connection refused: 127.0.0.1:1".into()),
            last_error_at: Some("2026-11-25T10:00:00Z".into()),
            consecutive_failures: 3,
            refresh_idle_days: Some(2),
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
}
