//! The Debian package (`cargo deb`, metadata in Cargo.toml): its man pages
//! and shell completions are the ones the command line makes now, and the
//! package builds, installs with dpkg on this machine, runs, passes
//! `systemd-analyze verify` as installed, and purges without a trace.
//!
//! The install test needs root, cargo-deb, dpkg and systemd-analyze;
//! `scripts/test` provides them (as root), and the test fails, not skips,
//! without them. It installs into the real system: run it on a test
//! machine, not a workstation you care about.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mail2ticket_testkit::setup::binary;

const PACKAGE: &str = "mail2ticket";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file below `dir`, relative to it, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path.strip_prefix(dir).expect("below").to_path_buf());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn man_pages_and_completions_in_dist_are_generated_from_the_current_cli() {
    let fresh = tempfile::tempdir().expect("temp dir");
    let out = Command::new(binary())
        .arg("dist-files")
        .arg(fresh.path())
        .output()
        .expect("run mail2ticket dist-files");
    assert!(out.status.success(), "dist-files failed: {out:?}");
    for part in ["man", "completions"] {
        let made = fresh.path().join(part);
        let kept = repo().join("dist").join(part);
        let made_files = files_below(&made);
        assert!(
            !made_files.is_empty(),
            "dist-files wrote nothing to {part}/"
        );
        assert_eq!(
            made_files,
            files_below(&kept),
            "dist/{part}/ has other files than the command line makes; \
             run `cargo run -- dist-files dist`"
        );
        for file in made_files {
            assert!(
                std::fs::read(made.join(&file)).ok() == std::fs::read(kept.join(&file)).ok(),
                "dist/{part}/{} is stale; run `cargo run -- dist-files dist`",
                file.display()
            );
        }
    }
    let page = std::fs::read_to_string(repo().join("dist/man/mail2ticket-status.1"))
        .expect("status man page");
    assert!(page.contains("\\-\\-json"), "{page}");
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn must(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        said(&out)
    );
    said(&out)
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", PACKAGE])
        .stdout
        .starts_with(b"install ok installed")
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

/// What `systemd-analyze verify` says about the installed unit (with its
/// packaged drop-in): the lines naming it, and the failure if any.
fn verify_installed_unit() -> Vec<String> {
    let unit = "/usr/lib/systemd/system/mail2ticket.service";
    let out = run("systemd-analyze", &["verify", "--man=no", unit]);
    let text = said(&out);
    let mut problems: Vec<String> = text
        .lines()
        .filter(|l| l.contains("mail2ticket.service"))
        .map(String::from)
        .collect();
    if !out.status.success() {
        problems.push(format!("systemd-analyze verify failed: {text}"));
    }
    problems
}

#[test]
fn debian_package_builds_installs_runs_and_purges_cleanly() {
    let uid = must("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "installing the package needs root (scripts/test runs as root)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let version = run(&cargo, &["deb", "--version"]);
    assert!(
        version.status.success(),
        "cargo-deb is missing: cargo install --locked cargo-deb (scripts/test does)\n{}",
        said(&version)
    );
    assert!(
        !installed(),
        "{PACKAGE} is already installed on this machine; this test would replace it"
    );

    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(&cargo)
        .args([
            "deb",
            "--locked",
            "--fast",
            "--profile",
            "package-test",
            "--output",
        ])
        .arg(out_dir.path())
        .current_dir(repo())
        .output()
        .expect("run cargo deb");
    assert!(out.status.success(), "cargo deb failed:\n{}", said(&out));
    let debs: Vec<PathBuf> = files_below(out_dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .map(|p| out_dir.path().join(p))
        .collect();
    assert_eq!(debs.len(), 1, "cargo deb made {debs:?}");
    let deb = debs[0].to_str().expect("utf-8 path").to_string();

    let contents = must("dpkg-deb", &["--contents", &deb]);
    for path in [
        "./usr/bin/mail2ticket",
        "./usr/lib/systemd/system/mail2ticket.service",
        "./usr/lib/systemd/system/mail2ticket.service.d/package.conf",
        "./etc/mail2ticket/config.toml",
        "./usr/share/man/man1/mail2ticket.1.gz",
        "./usr/share/man/man1/mail2ticket-run.1.gz",
        "./usr/share/bash-completion/completions/mail2ticket",
        "./usr/share/zsh/vendor-completions/_mail2ticket",
        "./usr/share/fish/vendor_completions.d/mail2ticket.fish",
        "./usr/share/doc/mail2ticket/examples/mail2ticket-alerts.yml",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{contents}"
        );
    }
    let conffiles = must("dpkg-deb", &["--info", &deb, "conffiles"]);
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/mail2ticket/config.toml"),
        "config.toml is no conffile: {conffiles:?}"
    );

    let _purge = Purge;
    must("dpkg", &["--install", &deb]);
    assert!(installed(), "dpkg says the package is not installed");

    let version = must("/usr/bin/mail2ticket", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("mail2ticket {}", env!("CARGO_PKG_VERSION"))
    );
    let man = must("zcat", &["/usr/share/man/man1/mail2ticket.1.gz"]);
    assert!(man.contains(".TH mail2ticket 1"), "{man}");
    assert!(man.contains("quarantine"), "the man page lists no commands");
    assert_eq!(
        std::fs::read("/etc/mail2ticket/config.toml").expect("installed config"),
        std::fs::read(repo().join("config.example.toml")).expect("example config"),
    );
    // Without the drop-in, verify would find no binary at /usr/local/bin.
    let problems = verify_installed_unit();
    assert!(
        problems.is_empty(),
        "systemd-analyze verify on the installed unit:\n{}",
        problems.join("\n")
    );

    must("dpkg", &["--purge", PACKAGE]);
    assert!(!installed(), "still installed after purge");
    for gone in [
        "/usr/bin/mail2ticket",
        "/usr/lib/systemd/system/mail2ticket.service",
        "/usr/lib/systemd/system/mail2ticket.service.d",
        "/etc/mail2ticket/config.toml",
        "/usr/share/man/man1/mail2ticket.1.gz",
        "/usr/share/doc/mail2ticket",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
}
