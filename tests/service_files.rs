//! The files that run mail2ticket as a service: `dist/mail2ticket.service`
//! and the `Dockerfile` with its `.dockerignore`.
//!
//! Nothing here starts systemd or Docker. The unit is read by systemd's own
//! `systemd-analyze` (which `scripts/test` installs): `verify` for syntax,
//! `security --offline` for hardening, `timespan` for durations; a few
//! settings whose literal value matters are looked up by key. The
//! Dockerfile is parsed and checked against the repository:
//! pinned base images, a locked build, sources that exist and reach the
//! build context, and a runtime stage that runs the daemon unprivileged.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const UNIT: &str = "dist/mail2ticket.service";
const BINARY: &str = "mail2ticket";
const CONFIG_PATH: &str = "/etc/mail2ticket/config.toml";
const STATE_DIR: &str = "/var/lib/mail2ticket";
/// `[daemon] shutdown_timeout`'s default; systemd and Docker must wait longer.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// systemd unit file
//
// systemd itself reads the unit: `systemd-analyze verify` for its syntax,
// `systemd-analyze security --offline` for what the hardening amounts to
// (options systemd implies count, e.g. DynamicUser's), and
// `systemd-analyze timespan` for durations. Only the settings whose literal
// value matters are looked up here, by key.

/// Runs `systemd-analyze` with `args`, whatever it answers; a panic only
/// if it cannot run at all.
fn run_systemd_analyze(args: &[&std::ffi::OsStr]) -> std::process::Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed; scripts/test installs it \
             (Debian package `systemd`), or run: apt-get install systemd"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

/// Runs `systemd-analyze` with `args`; its stdout, or a panic naming what
/// it said.
fn systemd_analyze(args: &[&std::ffi::OsStr]) -> String {
    let output = run_systemd_analyze(args);
    assert!(
        output.status.success(),
        "systemd-analyze {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `Key=value` settings of a unit, in file order, with their section.
/// Continuation lines are refused rather than half-read: the unit does not
/// use them, and `verify` below checks the syntax as systemd reads it.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{UNIT}:{}: continuation lines are not read by this test",
            index + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((section.clone(), key.trim().into(), value.trim().into()));
        }
    }
    out
}

/// Every assignment of `[section] key=`, in file order.
fn all_settings<'a>(
    settings: &'a [(String, String, String)],
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The value in force of `[section] key=`: the last assignment.
fn setting<'a>(settings: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    all_settings(settings, section, key)
        .last()
        .copied()
        .unwrap_or_else(|| panic!("{UNIT}: [{section}] {key}= is not set"))
}

/// `text` saved as mail2ticket.service in a directory of its own (systemd
/// reads the unit's name from the file name), kept while the guard lives.
fn unit_copy(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mail2ticket.service");
    std::fs::write(&path, text).expect("write the unit copy");
    (dir, path)
}

/// A time span as systemd reads it ("45s", "1min 30s", "90"); `None` for
/// "infinity".
fn systemd_timespan(value: &str) -> Option<Duration> {
    let said = systemd_analyze(&["timespan".as_ref(), value.as_ref()]);
    let micros = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("μs:"))
        .unwrap_or_else(|| panic!("systemd-analyze timespan {value} said: {said}"))
        .trim();
    match micros {
        "infinity" => None,
        n => Some(Duration::from_micros(n.parse().unwrap_or_else(|_| {
            panic!("systemd-analyze timespan {value}: not a number: {n}")
        }))),
    }
}

/// The words of an `Exec*=` line, without systemd's prefixes (`-`, `@`, ...).
fn exec_words(value: &str) -> Vec<&str> {
    let value = value.trim_start_matches(['-', '@', ':', '+', '!']);
    value.split_whitespace().collect()
}

#[test]
fn unit_file_runs_a_notify_service_with_watchdog_and_reload() {
    let unit = settings(&read(UNIT));
    let service = "Service";

    assert_eq!(setting(&unit, service, "Type"), "notify");
    assert_eq!(setting(&unit, service, "NotifyAccess"), "main");

    let starts = all_settings(&unit, service, "ExecStart");
    assert_eq!(starts.len(), 1, "{UNIT}: expected exactly one ExecStart=");
    let start = exec_words(starts[0]);
    assert_eq!(
        start.first().copied(),
        Some("/usr/local/bin/mail2ticket"),
        "{UNIT}: ExecStart= must run the installed binary"
    );
    assert!(
        start.windows(2).any(|w| w == ["--config", CONFIG_PATH]),
        "{UNIT}: ExecStart= must pass --config {CONFIG_PATH}: {start:?}"
    );
    assert_eq!(
        start.last().copied(),
        Some("run"),
        "{UNIT}: ExecStart= must end in `run`"
    );

    let reload = exec_words(setting(&unit, service, "ExecReload"));
    let kill = reload.first().copied().unwrap_or_default();
    assert!(
        kill.starts_with('/') && kill.ends_with("/kill"),
        "{UNIT}: ExecReload= must run kill by its absolute path: {reload:?}"
    );
    let sends_hup = reload.contains(&"-HUP")
        || reload.contains(&"-SIGHUP")
        || reload
            .windows(2)
            .any(|w| w == ["-s", "HUP"] || w == ["-s", "SIGHUP"]);
    assert!(
        sends_hup,
        "{UNIT}: ExecReload= must send SIGHUP: {reload:?}"
    );
    assert!(
        reload.contains(&"$MAINPID"),
        "{UNIT}: ExecReload= must signal $MAINPID: {reload:?}"
    );

    let watchdog = setting(&unit, service, "WatchdogSec");
    match systemd_timespan(watchdog) {
        Some(d) if d >= Duration::from_secs(10) => {}
        _ => panic!("{UNIT}: WatchdogSec={watchdog} must be a finite span of at least 10 s"),
    }

    assert_eq!(setting(&unit, service, "Restart"), "on-failure");

    // systemd's default is 90 s, but say it.
    let stop = setting(&unit, service, "TimeoutStopSec");
    match systemd_timespan(stop) {
        Some(d) if d > SHUTDOWN_TIMEOUT => {}
        _ => panic!(
            "{UNIT}: TimeoutStopSec={stop} must be longer than the daemon's shutdown timeout ({SHUTDOWN_TIMEOUT:?})"
        ),
    }

    assert_eq!(
        all_settings(&unit, "Install", "WantedBy"),
        ["multi-user.target"],
        "{UNIT}: [Install] WantedBy=multi-user.target"
    );
}

#[test]
fn unit_file_keeps_state_config_and_credentials_in_their_places() {
    let unit = settings(&read(UNIT));
    let service = "Service";

    assert_eq!(setting(&unit, service, "DynamicUser"), "yes");
    assert_eq!(setting(&unit, service, "StateDirectory"), "mail2ticket");
    assert_eq!(
        setting(&unit, service, "ConfigurationDirectory"),
        "mail2ticket"
    );
    // The database is named by an absolute path in the state directory
    // (docs/operations.md); the working directory is that directory too, so that
    // nothing else the daemon writes lands elsewhere.
    let workdir = setting(&unit, service, "WorkingDirectory");
    assert!(
        workdir == "%S/mail2ticket" || workdir == STATE_DIR,
        "{UNIT}: WorkingDirectory={workdir} is not the state directory"
    );

    let credentials = all_settings(&unit, service, "LoadCredential");
    let key = credentials
        .iter()
        .find_map(|c| c.strip_prefix("mail2ticket.key:"))
        .unwrap_or_else(|| {
            panic!(
                "{UNIT}: no LoadCredential=mail2ticket.key:PATH for the store key: {credentials:?}"
            )
        });
    assert!(
        key.starts_with("/etc/mail2ticket/"),
        "{UNIT}: the store key credential should come from /etc/mail2ticket/, not {key}"
    );
}

/// What `systemd-analyze security --offline` makes of `text` saved as
/// mail2ticket.service: each check's JSON field and whether it holds.
fn hardening(text: &str) -> HashMap<String, bool> {
    let (_dir, path) = unit_copy(text);
    let said = systemd_analyze(&[
        "security".as_ref(),
        "--offline=yes".as_ref(),
        "--json=short".as_ref(),
        "--man=no".as_ref(),
        path.as_os_str(),
    ]);
    let checks: Vec<serde_json::Value> = serde_json::from_str(&said)
        .unwrap_or_else(|e| panic!("systemd-analyze security: not JSON ({e}): {said}"));
    checks
        .iter()
        .map(|c| {
            let field = c["json_field"].as_str().expect("json_field").to_string();
            (field, c["set"].as_bool().expect("set"))
        })
        .collect()
}

/// The hardening checks of `text` that do not hold as this unit wants:
/// every one held except the address families the daemon needs (its
/// sockets and the notify socket) and the options it cannot take.
fn hardening_gaps(text: &str) -> Vec<String> {
    // Not wanted: the daemon needs the network, its own files, and the
    // @privileged / @resources calls of @system-service.
    const LEFT_OPEN: &[&str] = &[
        "RestrictAddressFamilies_AF_UNIX",
        "RestrictAddressFamilies_AF_INET_INET6",
        "PrivateNetwork",
        "IPAddressDeny",
        "PrivateUsers",
        "PrivateMounts",
        "ProcSubset",
        "DeviceAllow",
        "RootDirectoryOrRootImage",
        "SystemCallFilter_privileged",
        "SystemCallFilter_resources",
    ];
    let checks = hardening(text);
    let mut gaps: Vec<String> = checks
        .iter()
        .filter(|(field, set)| !**set && !LEFT_OPEN.contains(&field.as_str()))
        .map(|(field, _)| format!("{field} does not hold"))
        .collect();
    // The families it needs must stay allowed, or it cannot run.
    for needed in [
        "RestrictAddressFamilies_AF_UNIX",
        "RestrictAddressFamilies_AF_INET_INET6",
    ] {
        if checks.get(needed) != Some(&false) {
            gaps.push(format!("{needed}: the daemon needs this family allowed"));
        }
    }
    gaps.sort();
    gaps
}

#[test]
fn unit_file_is_hardened() {
    let text = read(UNIT);
    let gaps = hardening_gaps(&text);
    assert!(
        gaps.is_empty(),
        "{UNIT}: hardening:\n  {}",
        gaps.join("\n  ")
    );

    // Literal values the security analysis reads through DynamicUser= (which
    // implies a strict read-only system) or does not score.
    let unit = settings(&text);
    assert_eq!(setting(&unit, "Service", "ProtectSystem"), "strict");
    assert_eq!(
        setting(&unit, "Service", "SystemCallFilter"),
        "@system-service"
    );

    // The analysis must see a weakened unit, or it proves nothing.
    for (good, bad, gap) in [
        ("ProtectHome=yes", "ProtectHome=read-only", "ProtectHome"),
        ("UMask=0077", "UMask=0022", "UMask"),
        (
            "CapabilityBoundingSet=\n",
            "CapabilityBoundingSet=CAP_NET_ADMIN\n",
            "CAP_NET_ADMIN",
        ),
        ("AF_INET6", "AF_INET6 AF_NETLINK", "AF_NETLINK"),
        (
            "SystemCallArchitectures=native",
            "#",
            "SystemCallArchitectures",
        ),
        ("AF_UNIX AF_INET AF_INET6", "AF_INET AF_INET6", "AF_UNIX"),
    ] {
        assert!(text.contains(good), "{UNIT} has no `{good}` to weaken");
        let gaps = hardening_gaps(&text.replacen(good, bad, 1));
        assert!(
            gaps.iter().any(|g| g.contains(gap)),
            "`{bad}` went unnoticed: {gaps:?}"
        );
    }
}

/// Whether this systemd-analyze knows `--recursive-errors=` (systemd 250+).
fn knows_recursive_errors() -> bool {
    Command::new("systemd-analyze")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--recursive-errors"))
        .unwrap_or(false)
}

/// Runs `systemd-analyze verify` on `text` saved as mail2ticket.service and
/// returns what it says about that unit: the lines naming it, and the exit
/// status if it failed. Lines about other units (the host's) are noise.
fn systemd_verify(text: &str) -> Vec<String> {
    let (_dir, path) = unit_copy(text);
    let mut args: Vec<&std::ffi::OsStr> = vec!["verify".as_ref(), "--man=no".as_ref()];
    if knows_recursive_errors() {
        args.push("--recursive-errors=no".as_ref());
    }
    args.push(path.as_os_str());
    let output = run_systemd_analyze(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems: Vec<String> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|line| line.contains("mail2ticket.service"))
        .map(String::from)
        .collect();
    if !output.status.success() {
        problems.push(format!(
            "systemd-analyze verify failed ({}); it said:\n{stderr}{stdout}",
            output.status
        ));
    }
    problems
}

/// The unit with its ExecStart= binary replaced by `binary`, which must
/// exist for `systemd-analyze verify` to pass.
fn with_exec_start(unit: &str, binary: &Path) -> String {
    let binary = binary.to_str().expect("binary path is not UTF-8");
    assert!(
        !binary.contains(char::is_whitespace),
        "the test binary's path has whitespace: {binary}"
    );
    let binary = binary.replace('%', "%%");
    let mut replaced = 0;
    let lines: Vec<String> = unit
        .lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(command) => {
                replaced += 1;
                let arguments = command
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, a)| a);
                format!("ExecStart={binary} {arguments}")
            }
            None => line.to_string(),
        })
        .collect();
    assert_eq!(replaced, 1, "{UNIT}: expected one ExecStart= line");
    lines.join("\n") + "\n"
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = with_exec_start(&read(UNIT), Path::new(env!("CARGO_BIN_EXE_mail2ticket")));
    let problems = systemd_verify(&unit);
    assert!(
        problems.is_empty(),
        "systemd-analyze verify {UNIT}:\n{}",
        problems.join("\n")
    );

    // The same check must catch a broken unit, or it proves nothing (a
    // systemd-analyze that ignores the file would pass anything).
    let broken = [
        ("Type=notify", "Type=notifie"),
        ("WatchdogSec=", "WatchdogSecs="),
        ("ProtectSystem=strict", "ProtectSystem=strictly"),
    ];
    for (good, bad) in broken {
        assert!(unit.contains(good), "{UNIT} has no `{good}` to break");
        let problems = systemd_verify(&unit.replacen(good, bad, 1));
        assert!(
            !problems.is_empty(),
            "systemd-analyze verify said nothing about `{bad}`; the check above cannot be trusted"
        );
    }
}

// ---------------------------------------------------------------------------
// Dockerfile

/// One instruction, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

impl Instruction {
    /// Leading `--flag` or `--flag=value` options, and the rest.
    fn flags(&self) -> (HashMap<String, String>, &str) {
        let mut flags = HashMap::new();
        let mut rest = self.args.trim_start();
        while let Some(after) = rest.strip_prefix("--") {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            let (name, value) = after[..end].split_once('=').unwrap_or((&after[..end], ""));
            flags.insert(name.to_ascii_lowercase(), value.to_string());
            rest = after[end..].trim_start();
        }
        (flags, rest)
    }

    /// The arguments after the flags: a JSON array (exec form) or words
    /// (shell form).
    fn words(&self) -> Vec<String> {
        split_words(self.flags().1)
            .unwrap_or_else(|e| panic!("Dockerfile:{}: {}: {e}", self.line, self.keyword))
    }
}

fn split_words(text: &str) -> Result<Vec<String>, String> {
    let text = text.trim();
    if text.starts_with('[') {
        serde_json::from_str(text).map_err(|e| format!("malformed JSON array: {e}"))
    } else {
        Ok(text.split_whitespace().map(String::from).collect())
    }
}

struct Stage {
    /// Lower-cased, as Docker compares stage names.
    name: Option<String>,
    image: String,
    line: usize,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }

    fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.all(keyword).pop()
    }

    /// `ENV` settings of this stage, in order (both `K=V ...` and `K V`).
    fn env(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        for instruction in self.all("ENV") {
            let args = instruction.args.trim();
            let first = args.split_whitespace().next().unwrap_or_default();
            if first.contains('=') {
                for pair in args.split_whitespace() {
                    if let Some((k, v)) = pair.split_once('=') {
                        env.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            } else if let Some((k, v)) = args.split_once(char::is_whitespace) {
                env.insert(k.to_string(), v.trim().to_string());
            }
        }
        env
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("stage {name} (Dockerfile:{})", self.line),
            None => format!("stage {} (Dockerfile:{})", self.image, self.line),
        }
    }
}

/// Splits a Dockerfile into instructions: comment lines (also inside a
/// continued instruction) and blank lines are skipped, a trailing backslash
/// continues the instruction on the next line.
fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body);
        if continued {
            pending = Some((start, joined));
            continue;
        }
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((joined.as_str(), ""));
        instructions.push(Instruction {
            line: start,
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
    }
    assert!(pending.is_none(), "Dockerfile ends inside a continued line");
    instructions
}

fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in dockerfile_instructions(text) {
        if instruction.keyword == "FROM" {
            let words = instruction.words();
            let (image, name) = match words.as_slice() {
                [image] => (image.clone(), None),
                [image, r#as, name] if r#as.eq_ignore_ascii_case("as") => {
                    (image.clone(), Some(name.to_ascii_lowercase()))
                }
                _ => panic!(
                    "Dockerfile:{}: cannot read FROM {}",
                    instruction.line, instruction.args
                ),
            };
            stages.push(Stage {
                name,
                image,
                line: instruction.line,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
        } else {
            assert_eq!(
                instruction.keyword, "ARG",
                "Dockerfile:{}: only ARG may come before the first FROM",
                instruction.line
            );
        }
    }
    stages
}

/// Whether an image reference is pinned: an `@sha256:` digest, or a tag
/// that is an exact version (at least major.minor, e.g. `13.3-slim` or
/// `1.95.0-slim-trixie`). `latest`, a bare major, a codename or no tag at
/// all can change under the same name.
fn pinned(image: &str) -> Result<(), String> {
    if image.contains('$') {
        return Err("uses a build argument; the test cannot see what it pins".into());
    }
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        return if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!("malformed digest {digest}"))
        };
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    let Some((_, tag)) = last.split_once(':') else {
        return Err("has no tag (Docker takes `latest`)".into());
    };
    if tag == "latest" {
        return Err("is tagged `latest`".into());
    }
    let mut parts = tag.splitn(3, |c: char| !c.is_ascii_digit());
    let major = parts.next().unwrap_or_default();
    let separator_is_dot = tag[major.len()..].starts_with('.');
    let minor = parts.next().unwrap_or_default();
    if major.is_empty() || !separator_is_dot || minor.is_empty() {
        return Err(format!(
            "tag `{tag}` is not an exact version (want at least MAJOR.MINOR, or an @sha256 digest)"
        ));
    }
    Ok(())
}

/// Patterns of a .dockerignore file, as Docker applies them: in order, the
/// last one matching a path (or a directory above it) decides; `!` re-includes.
struct DockerIgnore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let segments: Vec<String> = pattern
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(String::from)
                .collect();
            if !segments.is_empty() {
                patterns.push((include, segments));
            }
        }
        DockerIgnore { patterns }
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    fn excludes(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for (include, pattern) in &self.patterns {
            let hit = (1..=segments.len()).any(|n| segments_match(pattern, &segments[..n]));
            if hit {
                excluded = !include;
            }
        }
        excluded
    }
}

/// Matches path segments against pattern segments; `**` spans any number
/// of segments (also none), `*` and `?` work within one segment.
fn segments_match(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| segments_match(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                wildcard_match(first.as_bytes(), segment.as_bytes())
                    && segments_match(rest, path_rest)
            }
            None => false,
        },
    }
}

fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard_match(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && wildcard_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && wildcard_match(rest, &text[1..]),
    }
}

/// Every file below `dir`, relative to the repository, `/`-separated.
fn files_below(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(current) = todo.pop() {
        for entry in std::fs::read_dir(&current).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let relative = path.strip_prefix(repo()).expect("below the repository");
                files.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files
}

fn stages() -> Vec<Stage> {
    dockerfile_stages(&read("Dockerfile"))
}

/// `COPY`/`ADD` sources and destination, for instructions without `--from`.
fn context_copies(stage: &Stage) -> Vec<(&Instruction, Vec<String>, String)> {
    let mut copies = Vec::new();
    for instruction in &stage.instructions {
        if instruction.keyword != "COPY" && instruction.keyword != "ADD" {
            continue;
        }
        if instruction.flags().0.contains_key("from") {
            continue;
        }
        let mut words = instruction.words();
        let destination = words.pop().unwrap_or_default();
        assert!(
            !words.is_empty(),
            "Dockerfile:{}: {} needs a source and a destination",
            instruction.line,
            instruction.keyword
        );
        copies.push((instruction, words, destination));
    }
    copies
}

#[test]
fn dockerfile_base_images_are_pinned() {
    let stages = stages();
    assert!(
        stages.len() >= 2,
        "the Dockerfile should build in one stage and run in another; it has {} stage(s)",
        stages.len()
    );
    let mut earlier: Vec<String> = Vec::new();
    let mut unpinned = Vec::new();
    for stage in &stages {
        let from_stage = earlier.contains(&stage.image.to_ascii_lowercase());
        let checked = !from_stage && stage.image != "scratch";
        if let (true, Err(why)) = (checked, pinned(&stage.image)) {
            unpinned.push(format!(
                "Dockerfile:{}: FROM {} {why}",
                stage.line, stage.image
            ));
        }
        if let Some(name) = &stage.name {
            earlier.push(name.clone());
        }
    }
    assert!(unpinned.is_empty(), "{}", unpinned.join("\n"));
}

#[test]
fn pin_rule_accepts_versions_and_digests_only() {
    for good in [
        "rust:1.95.0-slim-trixie",
        "debian:13.3-slim",
        "registry.example:5000/team/debian:13.3",
        &format!("debian:13-slim@sha256:{}", "ab".repeat(32)),
        &format!("debian@sha256:{}", "0".repeat(64)),
    ] {
        assert_eq!(pinned(good), Ok(()), "{good} should count as pinned");
    }
    for bad in [
        "debian",
        "debian:latest",
        "debian:13-slim",
        "debian:trixie-slim",
        "rust:slim",
        "registry.example:5000/debian",
        "debian@sha256:abc",
        "rust:${RUST_VERSION}",
    ] {
        assert!(pinned(bad).is_err(), "{bad} should not count as pinned");
    }
}

#[test]
fn dockerfile_builds_with_the_lock_file() {
    let stages = stages();
    let (_, builders) = stages.split_last().expect("no stage");
    let mut builds = 0;
    for stage in &stages {
        for run in stage.all("RUN") {
            let words: Vec<&str> = run.flags().1.split_whitespace().collect();
            for (i, pair) in words.windows(2).enumerate() {
                if pair != ["cargo", "build"] {
                    continue;
                }
                let command: Vec<&str> = words[i + 2..]
                    .iter()
                    .copied()
                    .take_while(|w| !["&&", "||", ";", "|"].contains(w) && !w.ends_with(';'))
                    .collect();
                assert!(
                    command.contains(&"--locked"),
                    "Dockerfile:{}: cargo build without --locked: {}",
                    run.line,
                    run.args
                );
                assert!(
                    command.contains(&"--release"),
                    "Dockerfile:{}: cargo build without --release: {}",
                    run.line,
                    run.args
                );
                assert!(
                    builders.iter().any(|b| std::ptr::eq(b, stage)),
                    "Dockerfile:{}: the runtime stage builds; build in an earlier stage",
                    run.line
                );
                builds += 1;
            }
        }
    }
    assert!(builds > 0, "no stage runs `cargo build --release --locked`");
}

#[test]
fn dockerfile_copies_what_the_build_needs_from_the_context() {
    let ignore = DockerIgnore::parse(&read(".dockerignore"));
    let stages = stages();
    let mut problems = Vec::new();
    let mut copied: Vec<String> = Vec::new();
    for stage in &stages {
        for (instruction, sources, _) in context_copies(stage) {
            for source in sources {
                let relative = source.trim_start_matches("./").trim_end_matches('/');
                let at = format!(
                    "Dockerfile:{}: {} {source}",
                    instruction.line, instruction.keyword
                );
                if source.contains("://") {
                    problems.push(format!("{at}: fetches from the network"));
                    continue;
                }
                if relative.contains(['*', '?', '[']) {
                    problems.push(format!("{at}: wildcards are not checked; name the paths"));
                    continue;
                }
                let path = repo().join(relative);
                if !path.exists() {
                    problems.push(format!("{at}: no such file in the repository"));
                    continue;
                }
                if ignore.excludes(relative) {
                    problems.push(format!("{at}: excluded by .dockerignore"));
                    continue;
                }
                if path.is_dir() {
                    for file in files_below(&path) {
                        if ignore.excludes(&file) {
                            problems.push(format!("{at}: {file} is excluded by .dockerignore"));
                        }
                    }
                }
                copied.push(relative.to_string());
            }
        }
    }

    // What `cargo build` needs to read the manifest and compile the binary.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src/main.rs".to_string(),
        "src/lib.rs".to_string(),
        // sqlx::migrate! compiles these into the binary.
        "migrations".to_string(),
    ];
    if repo().join("build.rs").exists() {
        needed.push("build.rs".into());
    }
    // Cargo refuses a manifest whose declared targets are missing, even
    // ones it is not asked to build.
    for kind in ["bench", "test", "example", "bin"] {
        for target in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let path = match (target.get("path"), target.get("name")) {
                (Some(path), _) => path.as_str().expect("target path").to_string(),
                (None, Some(name)) => {
                    let dir = match kind {
                        "bench" => "benches",
                        "test" => "tests",
                        "example" => "examples",
                        _ => "src/bin",
                    };
                    format!("{dir}/{}.rs", name.as_str().expect("target name"))
                }
                (None, None) => continue,
            };
            needed.push(path);
        }
    }
    // Every workspace member and path dependency: cargo reads their
    // manifests to resolve the workspace, even to build one package, and
    // wants each one's library there (copied, or an empty stand-in).
    let mut members: Vec<String> = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let deps = manifest.get(table).and_then(|t| t.as_table());
        for dep in deps.into_iter().flat_map(|d| d.values()) {
            if let Some(path) = dep.get("path").and_then(|p| p.as_str()) {
                members.push(path.trim_start_matches("./").to_string());
            }
        }
    }
    members.sort();
    members.dedup();
    assert!(
        members.contains(&"testkit".to_string()),
        "Cargo.toml: no workspace member testkit; this check reads the manifest wrongly"
    );
    let runs: Vec<&str> = stages
        .iter()
        .flat_map(|s| &s.instructions)
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect();
    for member in members {
        needed.push(format!("{member}/Cargo.toml"));
        let lib = format!("{member}/src/lib.rs");
        let copied_lib = copied
            .iter()
            .any(|c| lib == *c || lib.starts_with(&format!("{c}/")) || c == ".");
        if !copied_lib && !runs.iter().any(|r| r.contains(&lib)) {
            problems.push(format!(
                "the build needs {lib} (or an empty stand-in), but no COPY or RUN makes it"
            ));
        }
    }
    for need in needed {
        let covered = copied
            .iter()
            .any(|c| need == *c || need.starts_with(&format!("{c}/")) || c == ".");
        if !covered {
            problems.push(format!("the build needs {need}, but no COPY brings it in"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dockerignore_rules_match_as_docker_applies_them() {
    let ignore = DockerIgnore::parse(
        "# comment\n\
         target\n\
         /.git\n\
         **/*.key\n\
         docs/*.md\n\
         !docs/keep.md\n\
         dist/\n",
    );
    for excluded in [
        "target",
        "target/release/mail2ticket",
        ".git",
        "store.key",
        "src/deep/er/x.key",
        "docs/a.md",
        "dist/mail2ticket.service",
    ] {
        assert!(ignore.excludes(excluded), "{excluded} should be excluded");
    }
    for kept in [
        "src/main.rs",
        "docs/keep.md",
        "docs/sub/a.md",
        "targets",
        "key",
    ] {
        assert!(!ignore.excludes(kept), "{kept} should be kept");
    }
}

#[test]
fn dockerfile_stages_copy_only_from_earlier_stages() {
    let stages = stages();
    let mut names: Vec<String> = Vec::new();
    for (index, stage) in stages.iter().enumerate() {
        for instruction in stage.all("COPY") {
            let (flags, _) = instruction.flags();
            let Some(from) = flags.get("from") else {
                continue;
            };
            let from = from.to_ascii_lowercase();
            let earlier_index = from.parse::<usize>().is_ok_and(|i| i < index);
            assert!(
                names.contains(&from) || earlier_index,
                "Dockerfile:{}: COPY --from={from} names no earlier stage (have {names:?})",
                instruction.line
            );
        }
        if let Some(name) = &stage.name {
            names.push(name.clone());
        }
    }
}

#[test]
fn dockerfile_runtime_stage_runs_the_daemon_unprivileged() {
    let stages = stages();
    let runtime = stages.last().expect("no stage");
    let at = runtime.label();

    let user = runtime
        .last("USER")
        .unwrap_or_else(|| panic!("{at}: no USER; the daemon would run as root"));
    let name = user.args.split(':').next().unwrap_or_default().trim();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "Dockerfile:{}: USER {} is root",
        user.line,
        user.args
    );

    // The binary the builder produced is the one that runs.
    let binary = format!("/usr/local/bin/{BINARY}");
    let builder_copy = runtime
        .all("COPY")
        .into_iter()
        .find(|c| c.flags().0.contains_key("from") && c.words().last() == Some(&binary))
        .unwrap_or_else(|| panic!("{at}: no COPY --from=<builder> ... {binary}"));
    let from = builder_copy.flags().0["from"].to_ascii_lowercase();
    let builder = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(from.as_str()))
        .unwrap_or_else(|| panic!("no stage named {from}"));
    let workdir = builder
        .last("WORKDIR")
        .map(|w| w.args.trim_end_matches('/').to_string())
        .unwrap_or_default();
    let target_dir = builder
        .env()
        .get("CARGO_TARGET_DIR")
        .cloned()
        .unwrap_or_else(|| format!("{workdir}/target"));
    let built = format!("{target_dir}/release/{BINARY}");
    let sources = builder_copy.words();
    assert_eq!(
        sources.first(),
        Some(&built),
        "Dockerfile:{}: the builder leaves the binary at {built}",
        builder_copy.line
    );

    let entrypoint = runtime
        .last("ENTRYPOINT")
        .unwrap_or_else(|| panic!("{at}: no ENTRYPOINT"));
    assert!(
        entrypoint.args.trim_start().starts_with('['),
        "Dockerfile:{}: ENTRYPOINT in exec form, so that SIGTERM reaches the daemon",
        entrypoint.line
    );
    assert_eq!(entrypoint.words(), std::slice::from_ref(&binary));
    let cmd = runtime
        .last("CMD")
        .unwrap_or_else(|| panic!("{at}: no CMD"));
    assert_eq!(
        cmd.words(),
        ["run"],
        "Dockerfile:{}: CMD [\"run\"]",
        cmd.line
    );

    let stop = runtime
        .last("STOPSIGNAL")
        .unwrap_or_else(|| panic!("{at}: no STOPSIGNAL"));
    assert!(
        ["SIGTERM", "TERM", "15"].contains(&stop.args.as_str()),
        "Dockerfile:{}: STOPSIGNAL {} (want SIGTERM)",
        stop.line,
        stop.args
    );

    let health = runtime
        .last("HEALTHCHECK")
        .unwrap_or_else(|| panic!("{at}: no HEALTHCHECK"));
    let (_, rest) = health.flags();
    let command = rest
        .strip_prefix("CMD")
        .unwrap_or_else(|| panic!("Dockerfile:{}: HEALTHCHECK without CMD", health.line));
    let argv = split_words(command).expect("HEALTHCHECK CMD");
    assert_eq!(
        argv,
        [binary.clone(), "health".to_string()],
        "Dockerfile:{}: HEALTHCHECK must run `{binary} health`",
        health.line
    );

    // The database is named by an absolute path in the volume (docs/operations.md);
    // the working directory is the volume too, or anything else written
    // there is lost with the container.
    let volumes: Vec<String> = runtime
        .all("VOLUME")
        .into_iter()
        .flat_map(|v| v.words())
        .collect();
    assert!(
        volumes.iter().any(|v| v == STATE_DIR),
        "{at}: no VOLUME {STATE_DIR} (have {volumes:?})"
    );
    let workdir = runtime
        .last("WORKDIR")
        .map(|w| w.args.trim_end_matches('/'));
    assert_eq!(workdir, Some(STATE_DIR), "{at}: WORKDIR must be the volume");

    let config = runtime.env().get("MAIL2TICKET_CONFIG").cloned();
    let in_command = entrypoint.args.contains(CONFIG_PATH) || cmd.args.contains(CONFIG_PATH);
    assert!(
        config.as_deref() == Some(CONFIG_PATH) || in_command,
        "{at}: the configuration should be {CONFIG_PATH} (ENV MAIL2TICKET_CONFIG={config:?})"
    );
}

#[test]
fn dockerfile_parser_joins_continuations_and_skips_comments() {
    let stages = dockerfile_stages(
        "# syntax comment\n\
         ARG X=1\n\
         FROM rust:1.95.0 AS Build\n\
         RUN a \\\n\
         # a comment inside\n\
         \x20   && b\n\
         \n\
         FROM debian:13.3-slim\n\
         COPY --from=build --chmod=0755 /x /y\n\
         HEALTHCHECK --interval=30s CMD [\"/y\", \"health\"]\n",
    );
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].name.as_deref(), Some("build"));
    assert_eq!(stages[0].instructions[0].args, "a && b");
    assert_eq!(stages[0].instructions[0].line, 4);
    let copy = &stages[1].instructions[0];
    assert_eq!(
        copy.flags().0.get("from").map(String::as_str),
        Some("build")
    );
    assert_eq!(copy.words(), ["/x", "/y"]);
    let health = &stages[1].instructions[1];
    assert_eq!(health.flags().1, "CMD [\"/y\", \"health\"]");
}
