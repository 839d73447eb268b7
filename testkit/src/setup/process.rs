//! The mail2ticket binary as a child process: one-shot runs, `check`,
//! `status`, `health`, a daemon killed on drop, and HTTP probes of its listener.

use super::*;

/// The mail2ticket binary built for these tests.
///
/// `CARGO_BIN_EXE_mail2ticket` exists only while cargo compiles an
/// integration test of the main package, not this library; cargo builds the
/// binary next to the `deps/` directory the running test binary sits in.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_mail2ticket") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the running test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test binary lives in <target>/<profile>/deps/");
        let binary = profile_dir.join(format!("mail2ticket{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.is_file(),
            "no mail2ticket binary at {} (run the tests through cargo test)",
            binary.display()
        );
        binary
    })
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns
/// whether it held. A generous limit is a correctness bound, not a timing test.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that is killed when the test ends, pass or fail, so a
/// failed assertion never leaves a daemon running.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Waits up to `limit` for the process to exit; `None` if it still runs.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for a child") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, as systemd and Docker do to stop a service.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP, as `systemctl reload` does (`ExecReload=kill -HUP`).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends the signal `name` ("TERM", "HUP", ...) with `kill -s`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `mail2ticket -c CONFIG run --once`; panics with its output unless it
/// exits 0.
pub fn run_once_binary(config: &Path) -> std::process::Output {
    let out = std::process::Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8 path"), "run", "--once"])
        .output()
        .expect("run --once");
    assert!(
        out.status.success(),
        "run --once failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the binary with `args` to its end; its exit status, stdout and
/// stderr, and its peak resident set size in bytes.
///
/// The peak is the kernel's high-water mark of the child's own address
/// space (`VmHWM`), read until it exits: it only grows, and every run ends
/// with work after its peak (commit, after-step, logout). Not wait4's
/// `ru_maxrss`: that also counts the test process the child was forked
/// from, before its exec.
pub fn run_measured(args: &[&str]) -> (std::process::ExitStatus, String, String, u64) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    // Drained on threads so a full pipe never blocks the child.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        peak_kib = peak_kib.max(hwm);
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().expect("stdout thread");
    let err = err.join().expect("stderr thread");
    (status, out, err, peak_kib * 1024)
}

/// Creates the database of the configuration at `config` when it is
/// missing, as the first `run` does (only `run` creates one; `check`,
/// `authorize` and the rest refuse a missing one): `run --once` with the
/// file's `[store]` table and no readers, from a file beside it.
pub fn ensure_database(config: &Path) {
    ensure_database_with(config, &[]);
}

/// [`ensure_database`] with environment variables for `run`, e.g. the
/// `CREDENTIALS_DIRECTORY` the store key comes from.
pub fn ensure_database_with(config: &Path, envs: &[(&str, &str)]) {
    let loaded = Config::load(config).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let url = &loaded.store.database;
    let file = url.strip_prefix("sqlite://").unwrap_or(url);
    let file = file.split_once('?').map_or(file, |(f, _)| f);
    if Path::new(file).exists() {
        return;
    }
    let text = std::fs::read_to_string(config).expect("read the config");
    let mut store = String::new();
    let mut in_store = false;
    for line in text.lines() {
        let header = line.trim_start().starts_with('[');
        if header {
            in_store = line.trim() == "[store]";
        }
        if in_store {
            store.push_str(line);
            store.push('\n');
        }
    }
    let init = config.with_file_name(".init-store.toml");
    std::fs::write(&init, store).expect("write the store-only config");
    let out = std::process::Command::new(binary())
        .args(["-c", init.to_str().expect("utf-8 path"), "run", "--once"])
        .envs(envs.iter().copied())
        .output()
        .expect("run --once");
    assert!(
        out.status.success(),
        "creating the database failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&init);
}

/// `mail2ticket -c CONFIG check [READER]`: (exit code, stdout, stderr),
/// after creating the database if missing (see [`ensure_database`]).
pub fn check_binary(config: &Path, reader: Option<&str>) -> (Option<i32>, String, String) {
    ensure_database(config);
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["-c", config.to_str().expect("utf-8 path"), "check"]);
    cmd.args(reader);
    let out = cmd.output().expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `run --once` with a reader going through `proxy`, which SIGKILLs
/// it on the first client line that is one of `commands` (never
/// forwarded). Panics unless the daemon died of exactly that kill.
pub fn run_once_killed_at(config: &Path, proxy: &Proxy, commands: &[&str]) {
    let mut child = ChildGuard(
        std::process::Command::new(binary())
            .args(["-c", config.to_str().expect("utf-8 path"), "run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start run --once"),
    );
    for command in commands {
        proxy.on_client_line(command, Action::Kill(child.0.id()));
    }
    let status = child
        .wait_for_exit(Duration::from_secs(120))
        .unwrap_or_else(|| {
            panic!("run --once neither finished nor sent any of {commands:?} within 120 s")
        });
    proxy.disarm();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(9),
        "run --once should have been killed at one of {commands:?}, but exited with {status}"
    );
    assert_eq!(proxy.fired().len(), 1, "exactly one command was held back");
}

/// The capability words of a `check` line (`...; capabilities: IDLE MOVE`).
pub fn check_capabilities(line: &str) -> Vec<String> {
    line.split_once("capabilities:")
        .map(|(_, caps)| caps.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `mail2ticket run` started by [`Env::spawn_service`]; killed on Drop.
pub struct DaemonProcess {
    pub child: ChildGuard,
    pub stderr_file: PathBuf,
}

impl DaemonProcess {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends signal `name` (e.g. `"KILL"`).
    pub fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    pub fn hangup(&self) {
        self.child.hangup();
    }

    pub fn terminate(&self) {
        self.child.terminate();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_for_exit(limit)
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of stderr, for assertion messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- daemon stderr (last {n} lines) ---\n{}\n--- end ---",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }
}

/// Runs the binary with `args`, killing it after `limit`:
/// (exit code, stdout, stderr). Panics if it had to be killed.
pub fn run_binary(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = ChildGuard(
        std::process::Command::new(binary())
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mail2ticket"),
    );
    // Read both pipes while waiting, so a chatty child never blocks.
    fn drain<R: std::io::Read + Send + 'static>(
        pipe: Option<R>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    }
    let out = drain(child.0.stdout.take());
    let err = drain(child.0.stderr.take());
    let status = child
        .wait_for_exit(limit)
        .unwrap_or_else(|| panic!("mail2ticket {args:?} did not finish within {limit:?}"));
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    (status.code(), stdout, stderr)
}

/// `mail2ticket -c CONFIG status ARGS...`: (exit code, stdout, stderr).
pub fn status_binary(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["-c", config.to_str().expect("utf-8 path"), "status"];
    all.extend_from_slice(args);
    run_binary(&all, Duration::from_secs(60))
}

/// `mail2ticket -c CONFIG status --json [--reader NAME]`, parsed; panics
/// unless it exits 0 with one JSON object on stdout.
pub fn status_json(config: &Path, reader: Option<&str>) -> serde_json::Value {
    let mut args = vec!["--json"];
    if let Some(name) = reader {
        args.extend(["--reader", name]);
    }
    let (code, stdout, stderr) = status_binary(config, &args);
    assert_eq!(code, Some(0), "status {args:?} failed: {stdout}{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("status {args:?} printed no JSON ({e}): {stdout}"));
    assert!(
        value.is_object(),
        "status {args:?}: not an object: {stdout}"
    );
    value
}

/// The entry named `name` in the `readers` array of `status --json`.
pub fn status_reader<'v>(status: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    status["readers"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no readers array: {status}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("status --json lists no reader {name:?}: {status}"))
}

/// `mail2ticket -c CONFIG health`: (exit code, stdout and stderr together).
pub fn health_binary(config: &Path) -> (Option<i32>, String) {
    let (code, stdout, stderr) = run_binary(
        &["-c", config.to_str().expect("utf-8 path"), "health"],
        Duration::from_secs(60),
    );
    (code, format!("{stdout}{stderr}"))
}

/// `GET http://127.0.0.1:PORT/PATH`: (status code, body), or why no answer
/// came (e.g. nothing listening yet). Bounded by a 40 s timeout: longer
/// than the daemon's 30 s SQLite busy timeout, so a probe that waits on a
/// locked database still gets its answer.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    http_get_with(port, path, None).await
}

/// [`http_get`] with an `Accept` header.
pub async fn http_get_with(
    port: u16,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut request = client.get(&url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?;
    Ok((status, body))
}

/// Waits (up to `limit`) until `GET PATH` answers `status`.
pub async fn wait_for_http_status(port: u16, path: &str, status: u16, limit: Duration) -> bool {
    wait_until(limit, || async {
        http_get(port, path)
            .await
            .is_ok_and(|(code, _)| code == status)
    })
    .await
}
