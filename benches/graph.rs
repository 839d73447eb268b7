//! Graph ingest throughput against the Microsoft Graph stand-in.
//!
//! Delivers N generated mails (default 3,000 of about 5 KB; override with
//! `M2T_BENCH_GRAPH_MAILS`) into the stand-in's Inbox, then measures in one
//! run:
//! - the first sync: `daemon::run_once` on a delegated Graph reader with
//!   default settings (token request, delta pages, one `$value` per mail,
//!   parse, one transaction per batch, `isRead` PATCHes): mails/s, MB/s,
//!   the stand-in's request count and requests per mail;
//! - the next poll, whose delta round lists the mail again (marking it
//!   read is a change), and a steady-state poll with nothing new: their
//!   request counts.
//!
//! Run with `cargo bench --bench graph` (as root: the environment also
//! starts Dovecot, unused here).

use mail2ticket_testkit as common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::setup::GraphEnv;

fn mails() -> usize {
    std::env::var("M2T_BENCH_GRAPH_MAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// Requests the stand-in saw, by route, as `Route: count` pairs.
fn by_route(g: &GraphEnv) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in g.graph.requests() {
        *counts
            .entry(format!("{:?} {}", r.route, r.status))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        mail2ticket::ops::logging::init(mail2ticket::config::LogFormat::Text);
    }
    let n = mails();
    let g = GraphEnv::start();

    let load = Instant::now();
    let mut bytes = 0usize;
    for i in 0..n {
        let raw = common::mail_of_size(i, 5 * 1024);
        bytes += raw.len();
        g.deliver(&raw);
    }
    eprintln!(
        "delivered {n} mails ({bytes} bytes) in {:.1?}",
        load.elapsed()
    );

    let config = g.env.config(&[g.reader("graph")]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        g.graph.reset_requests();
        let start = Instant::now();
        let report = g.env.poll_ok(&config, "graph").await;
        let elapsed = start.elapsed();
        assert_eq!(report.created, n, "every mail became a ticket");
        let first = g.graph.total_requests();
        let routes = by_route(&g);
        let secs = elapsed.as_secs_f64();
        println!(
            "graph first sync: {n} mails, {:.1} MB in {secs:.2} s: {:.0} mails/s, {:.2} MB/s",
            bytes as f64 / 1e6,
            n as f64 / secs,
            bytes as f64 / 1e6 / secs,
        );
        println!(
            "graph first sync: {first} requests, {:.2} per mail ({routes})",
            first as f64 / n as f64
        );
        println!(
            "graph first sync: at most {} requests in flight",
            g.graph.max_in_flight(common::setup::USER)
        );

        // The next round lists the mail again: the after-step (isRead) is
        // a change to Graph. Then a poll with nothing new at all.
        for what in ["second poll (our own isRead changes)", "steady state"] {
            g.graph.reset_requests();
            let start = Instant::now();
            let report = g.env.poll_ok(&config, "graph").await;
            assert_eq!(report.created, 0, "nothing new");
            println!(
                "graph {what}: {} requests in {:.1?} ({})",
                g.graph.total_requests(),
                start.elapsed(),
                by_route(&g)
            );
        }
    });
}
