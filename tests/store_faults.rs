//! Where the database is and what happens when it cannot be written: a
//! relative `[store] database` is found from any working directory, only
//! `run` creates one, and a database that stops taking writes fails health
//! while it lasts and is recovered from by itself.
//!
//! Every test drives the real binary against a real Dovecot and a real
//! SQLite file.

use mail2ticket_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mail;
use common::setup::{
    ChildGuard, DaemonProcess, Env, USER, binary, free_port, http_get, wait_for_http_status,
    wait_until,
};
use tokio::task::block_in_place;

/// Bound for anything that should happen within a poll or two.
const WAIT: Duration = Duration::from_secs(60);

/// `mail2ticket -c CONFIG ARGS...` run from `cwd`: (exit code, stdout, stderr).
fn run_in(cwd: &Path, config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .current_dir(cwd)
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mail2ticket");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The environment's config with `database = "sqlite://NAME"` (relative),
/// written to `conf/config.toml`; returns the config's path.
fn relative_config(env: &Env, name: &str) -> PathBuf {
    let dir = env.path("conf");
    std::fs::create_dir_all(&dir).expect("mkdir conf");
    let text = env.config_toml(&[env.reader("helpdesk")]).replace(
        &format!("sqlite://{}", env.db_file().display()),
        &format!("sqlite://{name}"),
    );
    assert!(text.contains(&format!("\"sqlite://{name}\"")), "{text}");
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Files in `dir` (names), to show that a command left nothing behind.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `sqlite://mail2ticket.db` used to be relative to the working directory:
/// `authorize` or `check` run from another directory worked on a new,
/// empty database. Now it is relative to the configuration file, and only
/// `run` creates it; the others name the file they looked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_database_is_beside_the_config_and_only_run_creates_it() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(0));
    let config = relative_config(&env, "m2t.db");
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let expected = env.path("conf").join("m2t.db");

    for args in [
        &["check"][..],
        &["authorize", "helpdesk", "--no-listen"],
        &["status"],
        &["health"],
        &["quarantine", "list"],
    ] {
        let (code, out, err) = block_in_place(|| run_in(&elsewhere, &config, args));
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(
            err.contains(&expected.display().to_string()) && err.contains("does not exist"),
            "{args:?} should name the missing database {}: {err}",
            expected.display()
        );
    }
    assert!(
        names_in(&elsewhere).is_empty(),
        "{:?}",
        names_in(&elsewhere)
    );
    assert_eq!(names_in(&env.path("conf")), ["config.toml"]);

    // `run` creates it beside the configuration, whatever the directory.
    let (code, out, err) = block_in_place(|| run_in(&elsewhere, &config, &["run", "--once"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 new tickets"), "{out}");
    assert!(expected.exists());
    assert!(
        names_in(&elsewhere).is_empty(),
        "{:?}",
        names_in(&elsewhere)
    );

    // From a third directory: the same database, nothing ingested twice.
    let (code, out, err) = block_in_place(|| run_in(&env.path("conf"), &config, &["check"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 not yet ingested"), "{out}");
    let (code, out, err) = block_in_place(|| run_in(Path::new("/"), &config, &["run", "--once"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 new tickets"), "{out}");
}

/// An upgrade must not start over with an empty database (and take the
/// whole mailbox again) because the relative database moved: while the
/// old one is in the working directory, `run` refuses, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_new_database_while_the_old_one_is_in_the_working_directory() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(0));
    let config = relative_config(&env, "m2t.db");
    let state = env.path("state");
    std::fs::create_dir(&state).expect("mkdir");
    // The database an older version made there, with its key.
    let old_config = state.join("old.toml");
    std::fs::write(
        &old_config,
        format!(
            "[store]\ndatabase = \"sqlite://{}\"\n",
            state.join("m2t.db").display()
        ),
    )
    .expect("write");
    let (code, out, err) = block_in_place(|| run_in(&state, &old_config, &["run", "--once"]));
    assert_eq!(code, Some(0), "{out}{err}");

    let (code, out, err) = block_in_place(|| run_in(&state, &config, &["run", "--once"]));
    assert_eq!(code, Some(2), "{out}{err}");
    let new = env.path("conf").join("m2t.db");
    assert!(
        err.contains(&new.display().to_string())
            && err.contains(&state.join("m2t.db").display().to_string()),
        "{err}"
    );
    assert!(!new.exists(), "no new database while the old one is there");

    // The daemon too, before it leaves anything (a lock file) beside it.
    let mut daemon = ChildGuard(
        Command::new(binary())
            .current_dir(&state)
            .arg("-c")
            .arg(&config)
            .arg("run")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start run"),
    );
    let exit = block_in_place(|| daemon.wait_for_exit(Duration::from_secs(30)));
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(2),
        "run must refuse to start"
    );
    assert_eq!(names_in(&env.path("conf")), ["config.toml"]);
}

/// Undoes `chattr +i` on drop, so the test directory can be removed
/// whatever happened.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: Vec<PathBuf>) -> Immutable {
        for f in &files {
            let status = Command::new("chattr")
                .arg("+i")
                .arg(f)
                .status()
                .expect("run chattr");
            assert!(
                status.success(),
                "chattr +i {} failed: this test needs root on a file system with attributes",
                f.display()
            );
        }
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(f).status();
        }
    }
}

/// A database whose files cannot be written (made immutable, as a full or
/// failing disk would refuse): `/healthz` fails naming it while it lasts,
/// and once the files take writes again the same daemon ingests what
/// arrived meanwhile, with no "non-zero transaction depth" left over from
/// the failed transactions, and `/healthz` is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_written_fails_health_and_is_recovered_from() {
    let env = Env::start();
    let port = free_port();
    env.set_daemon_extra(&format!("listen = \"127.0.0.1:{port}\"\n"));
    let config = env.write_config(&[env.reader("helpdesk")]);
    env.init_store().await;
    env.dovecot.deliver(USER, &mail(0));
    let mut daemon: DaemonProcess = env.spawn_service(&config, &[]);
    assert!(
        env.wait_for_tickets(1, WAIT).await,
        "{}",
        daemon.stderr_tail(30)
    );
    assert!(wait_for_http_status(port, "/healthz", 200, WAIT).await);

    let mut wal = env.db_file().into_os_string();
    wal.push("-wal");
    let guard = Immutable::set(vec![env.db_file(), PathBuf::from(wal)]);
    for i in 1..4 {
        env.dovecot.deliver(USER, &mail(i));
    }
    let body = std::sync::Mutex::new(String::new());
    let failing = wait_until(WAIT, || async {
        match http_get(port, "/healthz").await {
            Ok((503, text)) => {
                *body.lock().expect("lock") = text;
                true
            }
            _ => false,
        }
    })
    .await;
    assert!(
        failing,
        "/healthz not 503 while the database cannot be written\n{}",
        daemon.stderr_tail(30)
    );
    let body = body.into_inner().expect("lock");
    assert!(
        body.contains("cannot be written"),
        "/healthz should say why: {body}"
    );
    assert!(
        daemon.is_running(),
        "an unwritable database is no reason to exit"
    );

    drop(guard);
    assert!(
        env.wait_for_tickets(4, WAIT).await,
        "the mail that arrived meanwhile was not ingested after the database recovered\n{}",
        daemon.stderr_tail(40)
    );
    assert!(
        wait_for_http_status(port, "/healthz", 200, WAIT).await,
        "/healthz did not recover\n{}",
        daemon.stderr_tail(30)
    );
    assert!(
        wait_until(WAIT, || async { env.state("helpdesk").await == "ok" }).await,
        "{:?}",
        env.last_error("helpdesk").await
    );
    let events = env.reader_events("helpdesk").await;
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("the database could not be written")),
        "the history keeps what the reader could not record: {events:?}"
    );
    let log = daemon.stderr();
    assert!(
        !log.contains("non-zero transaction depth"),
        "a connection stayed inside a failed transaction\n{}",
        daemon.stderr_tail(40)
    );
    env.assert_exactly_once(4).await;
}
