//! The status page: `/` on `[daemon] listen`, one server-rendered HTML page
//! for an admin's glance, from a desk or a phone.
//!
//! Owns the page's content and markup: the daemon's heartbeat, each
//! reader's state, last error, last success and next poll, the quarantine
//! and outbox counts, and mails and tickets per hour of the last day as an
//! inline SVG chart. It shows what `mail2ticket status` shows (the report
//! is [`crate::ops::status`]'s) and less: no mail content, subjects,
//! addresses, outbox errors or configuration values; `last_error` is the
//! scrubbed text `status` prints, which may name the mailbox account. No
//! script, no external asset: the response forbids both (CSP), and the
//! page reloads itself with a meta refresh.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::config::Config;
use crate::ops::status::{self, ReaderView, Report, StatusError};
use crate::outcome::ReaderState;
use crate::store::{HourCount, StatusView};

/// The chart's window, in hours.
pub const CHART_HOURS: u32 = 24;
/// Seconds between the page's own reloads.
const REFRESH_SECONDS: u32 = 30;

/// The headers the page is served with: no script, style only from the
/// page itself, images only inline; never cached, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page is rendered from: the daemon's database and the
/// configuration running now (replaced on reload).
#[derive(Clone)]
pub struct StatusPage {
    view: StatusView,
    config: watch::Receiver<Config>,
}

impl StatusPage {
    pub fn new(view: StatusView, config: watch::Receiver<Config>) -> StatusPage {
        StatusPage { view, config }
    }

    /// The page as it is now.
    pub async fn render(&self) -> Result<String, StatusError> {
        let config = self.config.borrow().clone();
        let report = status::report_from(&self.view, &config, None, 0).await?;
        let hours = self.view.mail_per_hour(CHART_HOURS).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(render(&report, &hours, i64::try_from(now).unwrap_or(0)))
    }
}

/// The whole page for `report` and the hourly counts, at `now` (Unix
/// seconds).
pub fn render(report: &Report, hours: &[HourCount], now: i64) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>mail2ticket status</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>mail2ticket</h1>\n"
    );
    daemon_section(&mut out, report);
    counts_section(&mut out, report);
    readers_section(&mut out, report, now);
    chart_section(&mut out, hours, now);
    let _ = write!(
        out,
        "<footer>Read-only; reloads every {REFRESH_SECONDS} s. Shows what \
         <code>mail2ticket status</code> shows, without mail content or addresses. \
         Generated {}.</footer>\n</body>\n</html>\n",
        escape(&timestamp(now))
    );
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem;color:#1b1b1b;\
background:#fafafa;line-height:1.4}h1{font-size:1.4rem;margin:0 0 .5rem}\
h2{font-size:1.1rem;margin:1.2rem 0 .4rem}.scroll{overflow-x:auto}\
table{border-collapse:collapse;min-width:100%;font-size:.9rem}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}\
td.error{max-width:28rem;word-break:break-word;color:#8a1c1c}\
.state{font-weight:600;padding:.05rem .4rem;border-radius:.3rem}\
.ok{background:#d8f0d8}.retrying{background:#fdf0c8}\
.needs_authorization,.misconfigured,.down{background:#f6d0d0}\
.counts{display:flex;flex-wrap:wrap;gap:.5rem}\
.counts div{background:#fff;border:1px solid #ddd;border-radius:.4rem;padding:.4rem .7rem}\
.counts b{display:block;font-size:1.3rem}svg{max-width:40rem;width:100%;height:auto}\
.mails{fill:#9ec5e8}.tickets{fill:#1f5f99}.axis{font-size:10px;fill:#555}\
footer{margin-top:1.5rem;font-size:.8rem;color:#555}";

fn daemon_section(out: &mut String, report: &Report) {
    out.push_str("<section id=\"daemon\">\n");
    match &report.daemon.row {
        None => out.push_str(
            "<p><span class=\"state down\">not running</span> the daemon never ran on this \
             database</p>\n",
        ),
        Some(row) => {
            match status::daemon_alive(row) {
                Ok(()) => {
                    let _ = writeln!(
                        out,
                        "<p><span class=\"state ok\">running</span> pid {}, since {}</p>",
                        row.pid,
                        escape(&row.started_at)
                    );
                }
                Err(why) => {
                    let _ = writeln!(
                        out,
                        "<p><span class=\"state down\">not running</span> {}</p>",
                        escape(&why)
                    );
                }
            }
            let _ = writeln!(
                out,
                "<p>Heartbeat: {} (expected every {:.0} s)</p>",
                escape(row.heartbeat_at.as_deref().unwrap_or("never")),
                row.heartbeat_seconds
            );
            // The reload error itself may quote the file; `status` has it.
            if let Some(at) = &row.reload_error_at {
                let _ = writeln!(
                    out,
                    "<p class=\"state retrying\">The configuration reload at {} failed; the \
                     previous configuration still runs (see <code>mail2ticket status</code>).</p>",
                    escape(at)
                );
            }
        }
    }
    out.push_str("</section>\n");
}

fn counts_section(out: &mut String, report: &Report) {
    let configured = report.readers.iter().filter(|r| r.configured);
    let (mut readers, mut ok, mut quarantined, mut pending, mut failed) = (0, 0, 0, 0, 0);
    for r in configured {
        readers += 1;
        ok += i64::from(r.row.state == ReaderState::Ok.as_str());
        quarantined += r.quarantined;
        if let Some(o) = &r.outbox {
            pending += o.pending;
            failed += o.failed;
        }
    }
    let _ = write!(
        out,
        "<section class=\"counts\" id=\"counts\">\n\
         <div><b>{ok}/{readers}</b>readers ok</div>\n\
         <div><b id=\"quarantine-count\">{quarantined}</b>in quarantine</div>\n\
         <div><b id=\"outbox-pending\">{pending}</b>acknowledgements pending</div>\n\
         <div><b id=\"outbox-failed\">{failed}</b>acknowledgements failed</div>\n\
         </section>\n"
    );
}

fn readers_section(out: &mut String, report: &Report, now: i64) {
    out.push_str(
        "<h2>Readers</h2>\n<div class=\"scroll\"><table id=\"readers\">\n<thead><tr>\
         <th>Reader</th><th>State</th><th>Last success</th><th>Next poll</th>\
         <th>Failures</th><th>Last error</th></tr></thead>\n<tbody>\n",
    );
    if report.readers.is_empty() {
        out.push_str("<tr><td colspan=\"6\">No reader has run yet.</td></tr>\n");
    }
    for r in &report.readers {
        let state = &r.row.state;
        let mut state_cell = format!(
            "<span class=\"state {}\">{}</span>",
            escape(state),
            escape(state)
        );
        if r.stale {
            state_cell.push_str(" stale");
        }
        if !r.configured {
            state_cell.push_str(" (no longer configured)");
        }
        let error = match (&r.row.last_error, &r.row.last_error_at) {
            (Some(e), Some(at)) => format!("{} <small>({})</small>", escape(e), escape(at)),
            (Some(e), None) => escape(e),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "<tr data-reader=\"{name}\"><td>{name} <small>{protocol}</small></td><td>{state_cell}\
             </td><td>{success}</td><td>{next}</td><td>{failures}</td><td class=\"error\">{error}\
             </td></tr>",
            name = escape(&r.row.name),
            protocol = escape(&r.row.protocol),
            success = escape(r.row.last_success_at.as_deref().unwrap_or("never")),
            next = escape(&next_poll(r, now)),
            failures = r.row.consecutive_failures,
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

/// When the reader polls next, as far as the rows tell: its last poll
/// plus its interval (a retrying reader waits its backoff instead).
fn next_poll(r: &ReaderView, now: i64) -> String {
    let Some(interval) = r.poll_interval_seconds else {
        return "-".into();
    };
    if ReaderState::parse(&r.row.state).is_some_and(ReaderState::is_parked) {
        return "waits for an admin".into();
    }
    if r.row.state == ReaderState::Retrying.as_str() {
        return "after its backoff".into();
    }
    let Some(last) = r
        .row
        .last_poll_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return "soon".into();
    };
    let next = last.timestamp().saturating_add_unsigned(interval);
    if next <= now {
        "due now".into()
    } else {
        timestamp(next)
    }
}

/// Bars of mails (light) and tickets (dark) per hour, oldest on the left;
/// hours without mail are zero.
fn chart_section(out: &mut String, hours: &[HourCount], now: i64) {
    const WIDTH: u32 = 480;
    const HEIGHT: u32 = 120;
    const BASE: u32 = 100;
    let this_hour = now - now.rem_euclid(3600);
    let slots: Vec<(i64, i64, i64)> = (0..i64::from(CHART_HOURS))
        .rev()
        .map(|back| {
            let start = this_hour - back * 3600;
            let label = timestamp_hour(start);
            let (mails, tickets) = hours
                .iter()
                .find(|h| h.hour == label)
                .map_or((0, 0), |h| (h.mails, h.tickets));
            (start, mails, tickets)
        })
        .collect();
    let (total_mails, total_tickets) = slots.iter().fold((0, 0), |(m, t), &(_, mails, tickets)| {
        (m + mails, t + tickets)
    });
    let top = slots.iter().map(|s| s.1.max(s.2)).max().unwrap_or(0).max(1);
    let _ = write!(
        out,
        "<h2>Last {CHART_HOURS} hours</h2>\n<p id=\"mail-totals\">{total_mails} mails in, \
         {total_tickets} tickets opened (dark: tickets, light: all mail).</p>\n\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"mails and tickets \
         per hour\">\n"
    );
    let step = WIDTH / CHART_HOURS;
    for (i, &(start, mails, tickets)) in slots.iter().enumerate() {
        let x = u32::try_from(i).unwrap_or(0) * step;
        let bar = |n: i64| -> u32 {
            u32::try_from(n.saturating_mul(i64::from(BASE - 10)) / top).unwrap_or(0)
        };
        let (hm, ht) = (bar(mails), bar(tickets));
        let _ = writeln!(
            out,
            "<g><title>{}: {mails} mails, {tickets} tickets</title>\
             <rect class=\"mails\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{hm}\"/>\
             <rect class=\"tickets\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{ht}\"/></g>",
            escape(&timestamp_hour(start)),
            BASE - hm,
            step - 2,
            x + 3,
            BASE - ht,
            step.saturating_sub(8),
        );
        if i % 6 == 0 {
            let _ = writeln!(
                out,
                "<text class=\"axis\" x=\"{x}\" y=\"{}\">{}</text>",
                BASE + 14,
                escape(&hour_of_day(start))
            );
        }
    }
    let _ = write!(
        out,
        "<line x1=\"0\" y1=\"{BASE}\" x2=\"{WIDTH}\" y2=\"{BASE}\" stroke=\"#888\"/>\n</svg>\n"
    );
}

fn datetime(unix: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(unix, 0)
}

/// `2026-11-25T09:14:03Z`, as the database writes times.
fn timestamp(unix: i64) -> String {
    datetime(unix).map_or_else(
        || "?".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The hour as [`crate::store::StatusView::mail_per_hour`] names it.
fn timestamp_hour(unix: i64) -> String {
    datetime(unix).map_or_else(
        || "?".into(),
        |t| t.format("%Y-%m-%dT%H:00:00Z").to_string(),
    )
}

fn hour_of_day(unix: i64) -> String {
    datetime(unix).map_or_else(|| "?".into(), |t| t.format("%H:00").to_string())
}

/// Text safe in HTML content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How long the page may take to read the database before it answers 503.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests;
