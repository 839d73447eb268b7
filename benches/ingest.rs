//! End-to-end ingest throughput against the Dovecot harness.
//!
//! Loads N generated mails (default 10,000 of about 5 KB; override with
//! `M2T_BENCH_MAILS`) into a real Dovecot, then measures in one run:
//! - a raw `UID FETCH 1:* BODY.PEEK[]` of the mailbox (the floor: bytes off
//!   the wire, nothing parsed or stored);
//! - mail2ticket's `run --once` path (XOAUTH2 login, batched fetch, parse,
//!   one transaction per batch into SQLite, `\Seen` flags);
//! - peak RSS of that ingest for the full mailbox and for a tenth of it,
//!   to show memory does not grow with the mailbox size.
//!
//! Run with `cargo bench --bench ingest` (as root: it starts Dovecot).

use mail2ticket_testkit as common;

use std::time::{Duration, Instant};

use common::setup::Env;
use futures::StreamExt;

const SMALL_USER: &str = "small@test.example";

fn mails() -> usize {
    std::env::var("M2T_BENCH_MAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Peak resident set size of this process since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the kernel's peak-RSS mark to the current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn raw_fetch(env: &Env, user: &str) -> (Duration, usize, usize) {
    let token = env.idp.issue_access_token(user);
    let start = Instant::now();
    let mut session = common::imap::imaps_xoauth2(
        env.dovecot.imaps_port(),
        env.dovecot.ca_file(),
        user,
        &token,
    )
    .await
    .expect("raw login");
    session.select("INBOX").await.expect("select");
    let mut count = 0;
    let mut bytes = 0;
    {
        let mut stream = session
            .uid_fetch("1:*", "BODY.PEEK[]")
            .await
            .expect("fetch");
        while let Some(item) = stream.next().await {
            let fetch = item.expect("fetch item");
            if let Some(body) = fetch.body() {
                count += 1;
                bytes += body.len();
            }
        }
    }
    session.logout().await.expect("logout");
    (start.elapsed(), count, bytes)
}

async fn ingest(env: &Env, name: &str, user: &str) -> (Duration, usize) {
    let mut reader = env.reader(name);
    reader.username = user.to_string();
    reader.password_file = env.password_file(user);
    let config = env.config(&[reader]);
    let start = Instant::now();
    let results = env.poll_once(&config).await;
    let elapsed = start.elapsed();
    let report = results[0].1.as_ref().expect("ingest succeeds");
    (elapsed, report.created)
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        mail2ticket::ops::logging::init(mail2ticket::config::LogFormat::Text);
    }
    let n = mails();
    let small = (n / 10).max(1);
    let env = Env::start();
    env.idp.add_user(SMALL_USER, common::setup::PASSWORD);
    env.set_password(SMALL_USER, common::setup::PASSWORD);

    let load = Instant::now();
    env.dovecot.deliver_many(
        common::setup::USER,
        (0..n).map(|i| common::mail_of_size(i, 5 * 1024)),
    );
    env.dovecot.deliver_many(
        SMALL_USER,
        (n..n + small).map(|i| common::mail_of_size(i, 5 * 1024)),
    );
    eprintln!("loaded {n} + {small} mails in {:.1?}", load.elapsed());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Warm Dovecot's index and the page cache, so neither side of the
        // comparison pays for the first read of the maildir.
        let _ = raw_fetch(&env, common::setup::USER).await;
        let (raw_time, raw_count, raw_bytes) = raw_fetch(&env, common::setup::USER).await;
        assert_eq!(raw_count, n, "raw fetch saw every mail");

        reset_peak_rss();
        let base_small = peak_rss_kib();
        let (_, small_created) = ingest(&env, "small", SMALL_USER).await;
        let peak_small = peak_rss_kib();
        assert_eq!(small_created, small);

        reset_peak_rss();
        let base_big = peak_rss_kib();
        let (e2e_time, created) = ingest(&env, "big", common::setup::USER).await;
        let peak_big = peak_rss_kib();
        assert_eq!(created, n, "every mail became a ticket");

        // The CPU-side stages alone, on the same mails, for the breakdown
        // (after the ingest runs, so their memory does not count there).
        let raw_mails: Vec<Vec<u8>> = (0..n).map(|i| common::mail_of_size(i, 5 * 1024)).collect();
        let parse_start = Instant::now();
        let policy = std::sync::Arc::new(mail2ticket::config::MailPolicy::default());
        let parsed: Vec<(u32, mail2ticket::ingest::Incoming)> = raw_mails
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let incoming = mail2ticket::ingest::Incoming::new(raw, "store-only", &policy);
                (i as u32 + 1, incoming)
            })
            .collect();
        let parse_time = parse_start.elapsed();
        drop(raw_mails);
        let scratch = tempfile::tempdir().expect("scratch dir");
        let store = mail2ticket::store::Store::open(&mail2ticket::config::StoreConfig {
            database: format!(
                "sqlite://{}",
                scratch.path().join("store-only.db").display()
            ),
            key_file: None,
        })
        .await
        .expect("scratch store");
        let pos = mail2ticket::store::FolderPosition {
            reader: "store-only".into(),
            folder: "INBOX".into(),
            uidvalidity: 1,
        };
        let store_start = Instant::now();
        for batch in parsed.chunks(100) {
            store
                .commit_batch(mail2ticket::store::Batch::Imap {
                    position: &pos,
                    mails: batch,
                    after_done: &[],
                })
                .await
                .expect("commit");
        }
        let store_time = store_start.elapsed();
        drop(parsed);

        let raw_rate = raw_count as f64 / raw_time.as_secs_f64();
        let e2e_rate = created as f64 / e2e_time.as_secs_f64();
        println!(
            "mails:                {n} (about {} bytes each)",
            raw_bytes / raw_count.max(1)
        );
        println!(
            "raw UID FETCH 1:*:    {:.2} s, {raw_rate:.0} mails/s",
            raw_time.as_secs_f64()
        );
        println!(
            "mail2ticket ingest:   {:.2} s, {e2e_rate:.0} mails/s",
            e2e_time.as_secs_f64()
        );
        println!(
            "  parse alone:        {:.2} s, {:.0} mails/s",
            parse_time.as_secs_f64(),
            n as f64 / parse_time.as_secs_f64()
        );
        println!(
            "  commit alone:       {:.2} s, {:.0} mails/s (batches of 100)",
            store_time.as_secs_f64(),
            n as f64 / store_time.as_secs_f64()
        );
        println!(
            "ratio ingest/raw:     {:.2}x the raw fetch time",
            e2e_time.as_secs_f64() / raw_time.as_secs_f64()
        );
        println!(
            "peak RSS during ingest: {small} mails: {} KiB (+{} KiB), {n} mails: {} KiB (+{} KiB)",
            peak_small,
            peak_small.saturating_sub(base_small),
            peak_big,
            peak_big.saturating_sub(base_big)
        );
    });
}
