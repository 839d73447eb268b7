//! Peak memory of `run --once` on a mailbox of large mails.
//!
//! Loads N mails of M MiB each (default 100 × 25 MiB; override with
//! `M2T_BENCH_MAILS` and `M2T_BENCH_MAIL_MIB`) into a real Dovecot, then
//! runs the mail2ticket binary's `run --once` on it as a child process and
//! reports its peak RSS beside the bound docs/configuration.md documents
//! for the reader's `batch_bytes` and `max_email_size`: memory is bounded
//! by the configuration, not by the mailbox.
//!
//! Run with `cargo bench --bench memory` (as root: it starts Dovecot).

use mail2ticket_testkit as common;

use std::time::Instant;

use common::setup::{Env, USER, run_measured};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mails = env_or("M2T_BENCH_MAILS", 100);
    let mib = env_or("M2T_BENCH_MAIL_MIB", 25);
    let env = Env::start();
    let loading = Instant::now();
    // One mail in memory at a time: the bench must not be what is measured.
    for i in 0..mails {
        env.dovecot
            .deliver(USER, &common::mail_of_size(i, mib << 20));
    }
    eprintln!(
        "loaded {mails} mails of {mib} MiB in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let path = env.write_config(&[env.reader("desk")]);
    let config = path.to_str().expect("utf-8 path");
    let started = Instant::now();
    let (status, stdout, stderr, peak) = run_measured(&["-c", config, "run", "--once"]);
    let took = started.elapsed();
    assert!(status.success(), "run --once: {status}\n{stdout}\n{stderr}");
    // The defaults: batch_bytes 32 MiB, max_email_size 50 MiB.
    let bound: u64 = 8 * (50 << 20) + (64 << 20);
    println!(
        "{mails} mails x {mib} MiB: run --once {:.1} s, peak RSS {} MiB (documented bound {} MiB)",
        took.as_secs_f64(),
        peak >> 20,
        bound >> 20
    );
    print!("{stdout}");
}
