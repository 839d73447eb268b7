//! `status`: reader health from the database, as a table for humans.

use crate::store::ReaderStatus;

/// Renders one line per reader with aligned columns.
pub fn render(rows: &[ReaderStatus]) -> String {
    let header = [
        "READER",
        "PROTOCOL",
        "LAST POLL",
        "LAST SUCCESS",
        "FAILURES",
        "LAST ERROR",
    ];
    let lines: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.protocol.clone(),
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_errors_and_never() {
        let rows = vec![ReaderStatus {
            name: "helpdesk".into(),
            protocol: "imap".into(),
            last_poll_at: Some("2026-11-25T10:00:00Z".into()),
            last_success_at: None,
            last_error: Some("connection refused: 127.0.0.1:1".into()),
            last_error_at: Some("2026-11-25T10:00:00Z".into()),
            consecutive_failures: 3,
        }];
        let text = render(&rows);
        let mut lines = text.lines();
        assert!(lines.next().expect("header").starts_with("READER"));
        let row = lines.next().expect("row");
        assert!(row.starts_with("helpdesk  imap"), "{row}");
        assert!(row.contains("never"));
        assert!(
            row.ends_with("3         connection refused: 127.0.0.1:1"),
            "{row}"
        );
    }
}
