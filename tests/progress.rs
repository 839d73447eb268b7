//! Progress of a first sync of a large folder: `run --once` shows bars
//! (mails fetched of the total, rate, ETA) and `check` a spinner when
//! stderr is a terminal, and `run --once` plain log lines without escape
//! codes otherwise; `status --json` and
//! `quarantine list --json` stay one JSON document each for scripts.
//! Against a real Dovecot; the terminal is a pseudo-terminal from
//! util-linux's `script` (Debian's bsdutils, always installed).

use mail2ticket_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::mail::mail;
use common::setup::{Env, USER, binary, run_binary, status_json};
use mail2ticket::ops::progress::LARGE;

const MAILS: usize = LARGE as usize + 10;
const LIMIT: Duration = Duration::from_secs(120);

/// A mailbox of [`MAILS`] unread mails and a config whose one reader,
/// `helpdesk`, has never polled it.
async fn large_first_sync() -> (Env, std::path::PathBuf) {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let config = env.config(&[env.reader("helpdesk")]);
    env.init_db(&config).await;
    (env, config.path)
}

/// Runs `mail2ticket -c CONFIG ARGS` on a pseudo-terminal: `script` copies
/// what it wrote there (stdout and stderr together) to its own stdout.
fn on_a_terminal(config: &std::path::Path, args: &str) -> (bool, String) {
    let command = format!("{} -c {} {args}", binary().display(), config.display());
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("RUST_LOG", "warn")
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn run_once_and_check_on_a_terminal_show_progress() {
    let (env, config) = large_first_sync().await;
    let (ok, screen) = on_a_terminal(&config, "check");
    assert!(ok, "check failed: {screen}");
    assert!(
        screen.contains("checking 1 reader"),
        "no spinner while check works:\n{screen}"
    );
    assert!(
        screen.contains(&format!("helpdesk: ok, {MAILS} messages")),
        "{screen}"
    );

    let (ok, screen) = on_a_terminal(&config, "run --once");
    assert!(ok, "run --once failed: {screen}");
    assert!(
        screen.contains(&format!("{MAILS}/{MAILS} mails")),
        "no finished progress bar on the terminal:\n{screen}"
    );
    assert!(
        screen.contains("helpdesk") && screen.contains("ETA"),
        "the bar names no reader or ETA:\n{screen}"
    );
    // The bars end their line: the results start on one of their own.
    assert!(
        screen.contains(&format!("\nhelpdesk: ok, {MAILS} fetched")),
        "{screen}"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM tickets").await,
        MAILS as i64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_once_without_a_terminal_logs_plain_lines_and_scripts_get_json() {
    let (_env, config) = large_first_sync().await;
    let path = config.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run_binary(&["-c", path, "run", "--once"], LIMIT);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("first sync: mails to fetch") && stderr.contains(&format!("mails={MAILS}")),
        "no log line announcing the first sync:\n{stderr}"
    );
    assert!(
        stderr.contains("first sync: done") && stderr.contains(&format!("fetched={MAILS}")),
        "no log line closing the first sync:\n{stderr}"
    );
    for bar in ["\u{1b}[", &format!("{MAILS}/{MAILS} mails")] {
        assert!(
            !stderr.contains(bar),
            "terminal output ({bar:?}) on a pipe:\n{stderr}"
        );
    }
    assert_eq!(
        stdout.trim(),
        format!(
            "helpdesk: ok, {MAILS} fetched, {MAILS} new tickets, 0 duplicates, 0 replies, 0 ignored"
        )
    );

    // Scripts read one JSON document each, on a pipe as on a terminal.
    let status = status_json(&config, None);
    assert_eq!(status["readers"][0]["name"], "helpdesk");
    assert_eq!(status["readers"][0]["state"], "ok");
    assert!(status["daemon"].is_object(), "{status}");
    let (code, stdout, stderr) = run_binary(&["-c", path, "quarantine", "list", "--json"], LIMIT);
    assert_eq!(code, Some(0), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("quarantine list --json is no JSON ({e}): {stdout}"));
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graph_first_sync_announces_its_total_and_shows_progress() {
    let g = common::setup::GraphEnv::start();
    for i in 0..MAILS {
        g.deliver(&mail(i));
    }
    // Small batches: a total known only from the mails taken so far would
    // first show as the 50 of five batches, not the whole folder.
    let reader = common::setup::ReaderSpec {
        batch_size: Some(10),
        ..g.reader("g")
    };
    // Slow fetches, so that the progress ticks see the batches go by.
    g.graph.inject(
        common::Fault::delay(Duration::from_millis(100))
            .on_route(common::GraphRoute::MessageValue)
            .always(),
    );
    let config = g.env.config(&[reader]);
    g.env.init_db(&config).await;
    let path = config.path.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run_binary(&["-c", path, "run", "--once"], LIMIT);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let announced = stderr
        .lines()
        .find(|l| l.contains("first sync: mails to fetch"))
        .unwrap_or_else(|| panic!("no first-sync line:\n{stderr}"));
    assert!(
        announced.contains(&format!("mails={MAILS}")),
        "the first contact's total was not announced up front: {announced}"
    );
    assert_eq!(
        g.env.count("SELECT COUNT(*) FROM tickets").await,
        MAILS as i64
    );

    // On a terminal: the bar.
    let fresh = common::setup::GraphEnv::start();
    for i in 0..MAILS {
        fresh.deliver(&mail(i));
    }
    let config = fresh.env.config(&[fresh.reader("g")]);
    fresh.env.init_db(&config).await;
    let (ok, screen) = on_a_terminal(&config.path, "run --once");
    assert!(ok, "run --once failed: {screen}");
    assert!(
        screen.contains(&format!("{MAILS}/{MAILS} mails")),
        "no finished progress bar for the Graph reader:\n{screen}"
    );
}
