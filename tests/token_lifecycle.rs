//! The token lifecycle end to end: every grant, `authorize` (browser and
//! device code), failure states without request storms, the store key, and
//! a secret scan over all of it. A real Dovecot over TLS with XOAUTH2, the
//! IdP stand-in, a real SQLite file, the real binary where it matters.

use mail2ticket_testkit as common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::setup::{ChildGuard, Env, PASSWORD, USER, assert_no_secret_in, binary, wait_until};
use common::{ClientCert, DEVICE_CODE_GRANT, browser_sign_in, mail};

/// The binary run as `authorize`, its stdout read line by line on a thread
/// so the test can wait for a line with a bound.
struct Authorize {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Authorize {
    fn start(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Authorize {
        // As an admin does: the daemon ran (and created the database) first.
        common::setup::ensure_database_with(config, envs);
        let mut child = Command::new(binary())
            .args(["-c", config.to_str().expect("utf-8"), "authorize"])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start authorize");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Authorize {
            child: ChildGuard(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line satisfying `pred`, within a generous bound.
    fn line_where(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("expected line never came; got:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The sign-in address `authorize` printed.
    fn sign_in_url(&mut self) -> String {
        self.line_where(|l| l.contains("/oauth2/v2.0/authorize?"))
    }

    fn paste(&mut self, text: &str) {
        let stdin = self.child.0.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{text}").expect("write to authorize");
    }

    /// Waits for exit; returns the code and everything printed.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.0.wait().expect("wait for authorize");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.child.0.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr).expect("stderr");
        }
        (status.code(), format!("{}\n{stderr}", self.seen.join("\n")))
    }
}

/// Plays the browser: signs in at the printed address and follows the
/// redirect to the loopback listener, which must answer.
async fn sign_in_with_browser(url: &str) {
    let location = browser_sign_in(url).await.expect("IdP redirects back");
    assert!(
        location.starts_with("http://localhost:"),
        "redirected to the loopback listener: {location}"
    );
    let page = reqwest::get(&location).await.expect("listener answers");
    assert!(page.status().is_success(), "{}", page.status());
    let text = page.text().await.expect("page");
    assert!(text.contains("Signed in"), "{text}");
}

fn run_once(config: &Path, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8"), "run", "--once"])
        .envs(envs.iter().copied())
        .output()
        .expect("run --once")
}

fn write_secret(env: &Env, name: &str, value: &str) -> String {
    let path = env.path(name);
    std::fs::write(&path, value).expect("write secret");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_a_secret_opens_the_mailbox_as_the_app() {
    let env = Env::start();
    env.idp.set_client_secret("app-secret-value-1");
    env.idp.grant_app_access(USER);
    let secret = write_secret(&env, "client-secret", "app-secret-value-1\n");
    env.set_oauth_extra(&format!("client_secret = {{ file = \"{secret}\" }}"));
    env.dovecot.deliver_many(USER, (0..3).map(mail));
    let mut reader = env.reader("shared");
    reader.grant = "client_credentials";
    let config = env.config(&[reader]);

    let results = env.poll_once(&config).await;
    let report = results[0].1.as_ref().expect("app-only poll works");
    assert_eq!(report.created, 3);
    assert_eq!(env.idp.count("client_credentials"), 1);
    assert_eq!(env.idp.total_requests(), 1, "no other grant was tried");
    let form = env.idp.last_form("client_credentials").expect("request");
    assert_eq!(
        form.get("scope").map(String::as_str),
        Some("https://outlook.office365.com/.default")
    );
    assert_eq!(
        form.get("client_secret").map(String::as_str),
        Some("app-secret-value-1")
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM oauth_tokens").await,
        0,
        "no refresh token exists for app-only access"
    );
    assert_eq!(env.state("shared").await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_a_certificate_signs_a_fresh_assertion() {
    let env = Env::start();
    let cert = ClientCert::shared();
    env.idp.register_certificate(cert);
    env.idp.grant_app_access(USER);
    let (cert_path, key_path) = cert.write_to(env.dir.path());
    env.set_oauth_extra(&format!(
        "client_certificate = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}",
        cert_path.display(),
        key_path.display()
    ));
    env.dovecot.deliver(USER, &mail(1));
    let mut reader = env.reader("shared");
    reader.grant = "client_credentials";
    let config = env.config(&[reader]);

    let results = env.poll_once(&config).await;
    results[0].1.as_ref().expect("certificate poll works");
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);

    let form = env.idp.last_form("client_credentials").expect("request");
    assert!(!form.contains_key("client_secret"), "{form:?}");
    let (header, claims) = env.idp.last_assertion().expect("an assertion was sent");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t#S256"], cert.thumbprint_s256().as_str());
    assert_eq!(claims["aud"], env.idp.token_url().as_str());
    assert_eq!(claims["iss"], env.idp.client_id());
    assert_eq!(claims["sub"], env.idp.client_id());
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    let (nbf, exp) = (
        claims["nbf"].as_u64().expect("nbf"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert!(exp > nbf && exp - nbf <= 600, "short-lived: {nbf}..{exp}");

    // A certificate the app does not know is refused, and the reader is
    // parked as misconfigured rather than retried.
    let other = ClientCert::generate("not registered");
    let (other_cert, other_key) = other.write_to(&env.path("other"));
    env.set_oauth_extra(&format!(
        "client_certificate = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}",
        other_cert.display(),
        other_key.display()
    ));
    let mut reader = env.reader("shared");
    reader.grant = "client_credentials";
    let config = env.config(&[reader]);
    let last_error = env.failing_poll(&config, "shared").await;
    assert!(last_error.contains("AADSTS700027"), "{last_error}");
    assert_eq!(env.state("shared").await, "misconfigured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_in_a_browser_then_the_reader_lives_on_refreshes() {
    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    env.idp.set_strict_rotation(true);
    env.dovecot.deliver_many(USER, (0..2).map(mail));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config = env.write_config(&[reader]);

    // Before anyone signed in: parked, with the command that fixes it, and
    // not a single request to the identity platform.
    let out = run_once(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let last_error = env.last_error("helpdesk").await.expect("recorded");
    assert!(
        last_error.contains("run `mail2ticket authorize helpdesk`"),
        "{last_error}"
    );
    assert_eq!(env.state("helpdesk").await, "needs_authorization");
    assert_eq!(env.idp.total_requests(), 0);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--port", "0"], &[]);
    let url = authorize.sign_in_url();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("offline_access"), "{url}");
    sign_in_with_browser(&url).await;
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("helpdesk: authorized; signed in as {USER}")),
        "{output}"
    );
    let form = env.idp.last_form("authorization_code").expect("exchange");
    assert!(form.contains_key("code_verifier"), "PKCE verifier sent");
    assert!(
        !form.contains_key("client_secret"),
        "a public client sends no secret"
    );
    assert_eq!(env.state("helpdesk").await, "ok", "authorize released it");

    // From here on: refreshes only, each rotated token persisted, across
    // processes (strict rotation would reject a stale one).
    env.idp.set_token_lifetime(Duration::from_secs(1));
    for round in 0..3 {
        env.dovecot.deliver(USER, &mail(10 + round));
        let out = run_once(&config, &[]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 5);
    assert_eq!(env.idp.count("authorization_code"), 1);
    assert_eq!(env.idp.count("refresh_token"), 3);
    assert_eq!(env.idp.count("password"), 0);

    // A scope without consent (as SMTP.Send is until an admin grants it)
    // refuses that request only: the sign-in survives for when it is given.
    env.idp.inject_aad(
        400,
        "invalid_grant",
        65001,
        "The user or administrator has not consented to use the application.",
        1,
    );
    let out = run_once(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env.state("helpdesk").await, "needs_authorization");
    let (code, stdout, stderr) = common::setup::check_binary(&config, Some("helpdesk"));
    assert_eq!(
        code,
        Some(0),
        "the refresh token was kept\n{stdout}\n{stderr}"
    );
    assert_eq!(env.idp.count("refresh_token"), 5);
    assert_eq!(env.idp.count("authorization_code"), 1, "no new sign-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_without_listening_takes_the_pasted_address_and_a_confidential_secret() {
    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    env.idp.set_confidential(true);
    env.idp.set_client_secret("confidential-secret-2");
    let secret = write_secret(&env, "client-secret", "confidential-secret-2");
    env.set_oauth_extra(&format!("client_secret = {{ file = \"{secret}\" }}"));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config = env.write_config(&[reader]);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--no-listen"], &[]);
    let url = authorize.sign_in_url();
    authorize.line_where(|l| l.contains("paste it here"));
    let location = browser_sign_in(&url).await.expect("IdP redirects");
    // Nothing listens there; the admin copies the address instead.
    authorize.paste(&location);
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    let form = env.idp.last_form("authorization_code").expect("exchange");
    assert_eq!(
        form.get("client_secret").map(String::as_str),
        Some("confidential-secret-2"),
        "a confidential client sends its secret"
    );

    env.dovecot.deliver(USER, &mail(1));
    let out = run_once(&config, &[]);
    assert!(out.status.success());
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_redirect_from_another_sign_in_is_refused() {
    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config = env.write_config(&[reader]);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--no-listen"], &[]);
    authorize.sign_in_url();
    authorize.paste("http://localhost:8400/?code=stolen&state=not-ours");
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("state mismatch"), "{output}");
    assert_eq!(
        env.idp.count("authorization_code"),
        0,
        "a foreign code is never redeemed"
    );
}

/// The `redirect_uri` and `state` of the sign-in address `authorize`
/// printed.
fn redirect_and_state(sign_in_url: &str) -> (url::Url, String) {
    let url = url::Url::parse(sign_in_url).expect("a URL");
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {sign_in_url}"))
    };
    let redirect = url::Url::parse(&param("redirect_uri")).expect("redirect_uri is a URL");
    (redirect, param("state"))
}

/// Answers to `query` on the listener at `addr`: status and page.
async fn ask_listener(addr: std::net::SocketAddr, query: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}/?{query}"))
        .await
        .unwrap_or_else(|e| panic!("{addr} does not answer: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("page"))
}

/// Any web page can make the browser request the loopback listener: a
/// request without this sign-in's state, with a wrong one, or an error
/// without one is answered and ignored, on every address `localhost`
/// names; the real redirect then completes the sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_to_the_redirect_listener_are_ignored() {
    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config = env.write_config(&[reader]);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--port", "0"], &[]);
    let url = authorize.sign_in_url();
    let (redirect, state) = redirect_and_state(&url);
    assert_eq!(redirect.host_str(), Some("localhost"), "{redirect}");
    let port = redirect.port().expect("a port");

    // The host of the redirect is what the listener holds: every address
    // `localhost` resolves to here answers, and none is left for another
    // process to bind.
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .expect("localhost resolves")
        .collect();
    assert!(!addrs.is_empty());
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let mut every = addrs.clone();
    every.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    if std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok() {
        every.push(v6);
    }
    for addr in &every {
        let taken = std::net::TcpListener::bind(addr);
        assert!(taken.is_err(), "{addr} was left for anyone to bind");
        for forged in [
            "error=access_denied&error_description=go+away".to_string(),
            "code=stolen".to_string(),
            "code=stolen&state=not-ours".to_string(),
            format!("error=access_denied&state={state}x"),
        ] {
            let (status, page) = ask_listener(*addr, &forged).await;
            assert_eq!(status, 400, "{addr} ?{forged}: {page}");
            assert!(page.contains("ignored"), "{addr} ?{forged}: {page}");
        }
    }

    sign_in_with_browser(&url).await;
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("helpdesk: authorized; signed in as {USER}")),
        "{output}"
    );
    assert_eq!(env.idp.count("authorization_code"), 1, "{output}");
}

/// Another process on [::1] at the redirect port would receive the code
/// of a browser that resolves `localhost` to it: `authorize` refuses to
/// start rather than listen beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_refuses_a_port_taken_on_the_other_loopback_address() {
    let Ok(squatter) = std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)) else {
        panic!("this test needs an IPv6 loopback ([::1]) on the machine");
    };
    let port = squatter.local_addr().expect("addr").port();
    let env = Env::start();
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config = env.write_config(&[reader]);
    let authorize = Authorize::start(&config, &["helpdesk", "--port", &port.to_string()], &[]);
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&format!("cannot listen on [::1]:{port}")),
        "{output}"
    );
    assert!(
        !output.contains("/oauth2/v2.0/authorize?"),
        "no sign-in address is handed out: {output}"
    );
}

/// An error that carries this sign-in's state ends `authorize` with the
/// identity platform's words, control characters replaced before they
/// reach the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_redirect_ends_authorize_with_its_words_cleaned() {
    let env = Env::start();
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config = env.write_config(&[reader]);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--port", "0"], &[]);
    let url = authorize.sign_in_url();
    let (redirect, state) = redirect_and_state(&url);
    let port = redirect.port().expect("a port");
    let (status, page) = ask_listener(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &format!(
            "error=access_denied&error_description=AADSTS65004%3A+User+declined%1b%5d0%3Bowned%07%1b%5b2J+to+consent.&state={state}"
        ),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Sign-in failed"), "{page}");
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(1), "{output}");
    // (The log lines on stderr carry the logger's own colours.)
    let line = output
        .lines()
        .find(|l| l.contains("helpdesk: error:"))
        .unwrap_or_else(|| panic!("no error line: {output}"));
    assert!(line.contains("AADSTS65004"), "{line}");
    assert!(line.contains("User declined"), "{line}");
    assert!(
        !line.contains(char::is_control),
        "control characters reached the terminal: {line:?}"
    );
    assert_eq!(env.idp.count("authorization_code"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_waits_through_pending_and_slow_down() {
    let env = Env::start();
    env.idp.set_device_code_timing(Duration::from_secs(120), 1);
    env.idp.slow_down_device_polls(1);
    let mut reader = env.reader("helpdesk");
    reader.grant = "device_code";
    let config = env.write_config(&[reader]);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--device"], &[]);
    let line = authorize.line_where(|l| l.contains("enter the code"));
    let codes = env.idp.pending_user_codes();
    assert_eq!(codes.len(), 1);
    assert!(line.contains(&codes[0]), "{line}");
    assert!(line.contains("/devicelogin"), "{line}");

    // Let it meet slow_down and then pending at the slower pace.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            env.idp.device_poll_times().len() >= 3
        })
        .await,
        "the client keeps polling"
    );
    env.idp.approve_device_code(&codes[0], USER);
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains(&format!("signed in as {USER}")), "{output}");

    let polls = env.idp.device_poll_times();
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_secs(6),
        "after slow_down the interval grows by 5 s: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(950)),
        "never faster than the interval: {gaps:?}"
    );

    env.dovecot.deliver(USER, &mail(1));
    let out = run_once(&config, &[]);
    assert!(out.status.success());
    assert_eq!(env.idp.count("refresh_token"), 1);
    assert!(env.idp.count(DEVICE_CODE_GRANT) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_declined_or_expired_says_so() {
    let env = Env::start();
    env.idp.set_device_code_timing(Duration::from_secs(60), 1);
    let mut reader = env.reader("helpdesk");
    reader.grant = "device_code";
    let config = env.write_config(&[reader]);

    let mut authorize = Authorize::start(&config, &["helpdesk", "--device"], &[]);
    authorize.line_where(|l| l.contains("enter the code"));
    let code = env.idp.pending_user_codes().pop().expect("a pending code");
    env.idp.decline_device_code(&code);
    let (status, output) = authorize.finish();
    assert_eq!(status, Some(1), "{output}");
    assert!(output.contains("declined"), "{output}");

    env.idp.set_device_code_timing(Duration::from_secs(3), 1);
    let authorize = Authorize::start(&config, &["helpdesk", "--device"], &[]);
    let (status, output) = authorize.finish();
    assert_eq!(status, Some(1), "{output}");
    assert!(output.contains("expired"), "{output}");
    assert!(output.contains("run the command again"), "{output}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM oauth_tokens").await,
        0,
        "nothing stored"
    );
}

/// Runs the daemon in-process until the reader reaches `want`, then a
/// little longer, and returns the identity platform's request count: a
/// parked reader must not add to it.
async fn daemon_until_state(env: &Env, config: &mail2ticket::config::Config, want: &str) -> usize {
    let (cancel, daemon) = env.spawn_daemon(config).await;
    let reached = wait_until(Duration::from_secs(20), || async {
        env.state("helpdesk").await == want
    })
    .await;
    let at_park = env.idp.total_requests();
    // Several poll intervals (1 s) and parked rechecks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cancel.cancel();
    daemon.await.expect("daemon task").expect("daemon ran");
    let last_error = env.last_error("helpdesk").await.unwrap_or_default();
    assert!(
        reached,
        "state {want} not reached; state {}, last_error {last_error}",
        env.state("helpdesk").await
    );
    assert_eq!(
        env.idp.total_requests(),
        at_park,
        "no request once parked ({want}): {last_error}"
    );
    at_park
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_grants_park_the_reader_as_needs_authorization() {
    let cases = [
        (
            "invalid_grant",
            700082,
            "refresh token expired (inactivity)",
        ),
        (
            "invalid_grant",
            70043,
            "refresh token expired (sign-in frequency)",
        ),
        ("invalid_grant", 50173, "grant revoked by a password change"),
        ("invalid_grant", 70008, "refresh token expired or revoked"),
        (
            "invalid_grant",
            70000,
            "provided grant is invalid or malformed",
        ),
        ("invalid_grant", 50079, "MFA registration required"),
        ("invalid_grant", 50076, "MFA required"),
        // 65001 (consent missing) is not here: it concerns one scope, and
        // the refresh token is kept (see the browser test above).
        ("invalid_grant", 53003, "blocked by conditional access"),
    ];
    for (error, code, what) in cases {
        let env = Env::start();
        let mut reader = env.reader("helpdesk");
        reader.grant = "authorization_code";
        // Two readers on one account: one request between them.
        let mut second = env.reader("second");
        second.grant = "authorization_code";
        let config = env.config(&[reader, second]);
        env.init_db(&config).await;
        let seeded = seed_refresh_token(&env, &config).await;
        env.idp.inject_aad(400, error, code, what, 100);

        let requests = daemon_until_state(&env, &config, "needs_authorization").await;
        assert_eq!(requests, seeded + 1, "{code}: one request for both readers");
        assert_eq!(
            env.count("SELECT COUNT(*) FROM oauth_tokens").await,
            0,
            "the dead refresh token is dropped"
        );
        assert_eq!(env.state("second").await, "needs_authorization");
        let last_error = env.last_error("helpdesk").await.expect("recorded");
        assert!(
            last_error.contains(&format!("AADSTS{code}")),
            "{last_error}"
        );
        assert!(
            last_error.contains("mail2ticket authorize helpdesk"),
            "{last_error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_and_config_errors_park_the_reader_as_misconfigured() {
    let cases = [
        (
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        ),
        (
            401,
            "invalid_client",
            7000222,
            "The provided client secret keys are expired.",
        ),
        (
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        ),
        (
            401,
            "invalid_client",
            7000218,
            "The request body must contain 'client_secret'.",
        ),
        (
            400,
            "invalid_client",
            700025,
            "Client is public so no secret should be presented.",
        ),
        (400, "invalid_request", 90002, "Tenant not found."),
        (
            400,
            "invalid_request",
            50194,
            "Application is not configured as a multi-tenant application.",
        ),
    ];
    for (status, error, code, what) in cases {
        let env = Env::start();
        let config = env.config(&[env.reader("helpdesk")]);
        env.idp.inject_aad(status, error, code, what, 100);
        let requests = daemon_until_state(&env, &config, "misconfigured").await;
        assert_eq!(requests, 1, "{code}");
        let last_error = env.last_error("helpdesk").await.expect("recorded");
        assert!(
            last_error.contains(&format!("AADSTS{code}")),
            "{last_error}"
        );
        assert!(last_error.contains("fix the configuration"), "{last_error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_no_sooner_than_retry_after() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(1));
    // Two readers on one account share the wait the server asked for.
    let config = env.config(&[env.reader("helpdesk"), env.reader("second")]);
    env.idp.inject(
        429,
        serde_json::json!({"error": "temporarily_unavailable"}),
        Some(4),
        1,
    );
    let (cancel, daemon) = env.spawn_daemon(&config).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            env.state("helpdesk").await == "retrying"
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.idp.total_requests(),
        1,
        "nobody asks again inside Retry-After"
    );
    let last_error = env.last_error("helpdesk").await.expect("recorded");
    assert!(last_error.contains("retry after"), "{last_error}");
    assert!(env.wait_for_tickets(1, Duration::from_secs(30)).await);
    cancel.cancel();
    daemon.await.expect("daemon task").expect("daemon ran");
    assert_eq!(env.state("helpdesk").await, "ok");
    assert_eq!(
        env.idp.count("password"),
        2,
        "throttled once, then one grant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_reader_resumes_when_authorize_succeeds() {
    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    env.dovecot.deliver_many(USER, (0..3).map(mail));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config_path = env.write_config(&[reader]);
    let config = mail2ticket::config::Config::load(&config_path).expect("config");
    let (cancel, daemon) = env.spawn_daemon(&config).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            env.state("helpdesk").await == "needs_authorization"
        })
        .await
    );

    let mut authorize = Authorize::start(&config_path, &["helpdesk", "--port", "0"], &[]);
    let url = authorize.sign_in_url();
    sign_in_with_browser(&url).await;
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("released: helpdesk"), "{output}");

    assert!(
        env.wait_for_tickets(3, Duration::from_secs(30)).await,
        "the running daemon picked up the new sign-in"
    );
    cancel.cancel();
    daemon.await.expect("daemon task").expect("daemon ran");
    assert_eq!(env.state("helpdesk").await, "ok");
}

/// Stores a refresh token for the test user as `authorize` would, through
/// a password sign-in the IdP accepts (the grant under test never uses it).
/// Returns the identity platform's request count afterwards.
async fn seed_refresh_token(env: &Env, config: &mail2ticket::config::Config) -> usize {
    let store = mail2ticket::store::Store::open(&config.store)
        .await
        .expect("store");
    let tokens = mail2ticket::auth::TokenStore::new(store, &config.oauth).expect("tokens");
    let seed = mail2ticket::config::Config::parse(
        &env.path("seed.toml"),
        &env.config_toml(&[env.reader("helpdesk")]),
    )
    .expect("seed config");
    tokens
        .access_token(&mail2ticket::reader::token_request(&seed.readers[0]).expect("oauth reader"))
        .await
        .expect("seed sign-in");
    assert_eq!(env.count("SELECT COUNT(*) FROM oauth_tokens").await, 1);
    env.idp.total_requests()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_token_gives_separate_access_tokens_per_use() {
    use mail2ticket::auth::{TokenRequest, TokenStore};
    use mail2ticket::config::Service;
    let env = Env::start();
    let config = env.config(&[env.reader("helpdesk")]);
    let store = mail2ticket::store::Store::open(&config.store)
        .await
        .expect("store");
    let tokens = TokenStore::new(store, &config.oauth).expect("tokens");
    let reader = &config.readers[0];
    let request = |service| TokenRequest {
        service,
        ..mail2ticket::reader::token_request(reader).expect("oauth reader")
    };
    let imap = tokens
        .access_token(&request(Service::Imap))
        .await
        .expect("imap");
    let smtp = tokens
        .access_token(&request(Service::Smtp))
        .await
        .expect("smtp");
    let pop = tokens
        .access_token(&request(Service::Pop))
        .await
        .expect("pop");
    use secrecy::ExposeSecret;
    assert_ne!(imap.expose_secret(), smtp.expose_secret());
    assert_ne!(imap.expose_secret(), pop.expose_secret());
    // Cached per use: asking again makes no request.
    tokens
        .access_token(&request(Service::Imap))
        .await
        .expect("cached");
    assert_eq!(env.idp.count("password"), 1, "one sign-in");
    assert_eq!(env.idp.count("refresh_token"), 2, "then refreshes per use");
    assert_eq!(
        env.idp.issued_access_token_scopes(),
        [
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
            "https://outlook.office.com/POP.AccessAsUser.All",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_a_refresh_token_idle_for_eighty_days() {
    let env = Env::start();
    let config = env.write_config(&[env.reader("helpdesk")]);
    let out = run_once(&config, &[]);
    assert!(out.status.success());
    let pool = env.db().await;
    sqlx::query(
        "UPDATE oauth_tokens SET last_used_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-84 days')",
    )
    .execute(&pool)
    .await
    .expect("age the token");
    pool.close().await;
    let out = Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8"), "status"])
        .output()
        .expect("status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("STATE"), "{stdout}");
    assert!(
        stdout.contains("warning: helpdesk: refresh token unused for 84 days"),
        "{stdout}"
    );
    assert!(stdout.contains("in 6 days"), "{stdout}");

    // Using it clears the warning.
    let out = run_once(&config, &[]);
    assert!(out.status.success());
    let out = Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8"), "status"])
        .output()
        .expect("status");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_key_from_credentials_directory_and_wrong_key_is_refused() {
    let env = Env::start();
    let config = env.write_config(&[env.reader("helpdesk")]);
    let creds = env.path("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("mail2ticket.key"), "ab".repeat(32)).expect("key");
    let creds_str = creds.to_str().expect("utf-8");

    let out = run_once(&config, &[("CREDENTIALS_DIRECTORY", creds_str)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut beside = env.db_file().into_os_string();
    beside.push(".key");
    assert!(
        !Path::new(&beside).exists(),
        "no key generated beside the database when systemd passes one"
    );

    // The same database with another key: a clear refusal, not garbage.
    std::fs::write(creds.join("mail2ticket.key"), "cd".repeat(32)).expect("key");
    let out = run_once(&config, &[("CREDENTIALS_DIRECTORY", creds_str)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key"), "{stderr}");

    // The database alone (copied without its key) reveals no token.
    let mut tokens = env.idp.issued_refresh_tokens();
    assert!(!tokens.is_empty());
    tokens.extend(env.idp.issued_access_tokens());
    assert_no_secret_in("", &env.database_bytes(), &tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_any_grant_reaches_logs_or_database() {
    use base64::Engine as _;

    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    env.idp.set_client_secret("scan-client-secret-3");
    env.idp.register_certificate(ClientCert::shared());
    env.idp.grant_app_access(USER);
    env.idp.set_device_code_timing(Duration::from_secs(60), 1);
    let secret = write_secret(&env, "client-secret", "scan-client-secret-3");
    let (cert_path, key_path) = ClientCert::shared().write_to(env.dir.path());
    env.add_app(
        "secret-app",
        &format!("client_secret = {{ file = \"{secret}\" }}"),
    );
    env.add_app(
        "cert-app",
        &format!(
            "client_certificate = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}",
            cert_path.display(),
            key_path.display()
        ),
    );
    let mut code_reader = env.reader("code");
    code_reader.grant = "authorization_code";
    let mut device_reader = env.reader("device");
    device_reader.grant = "device_code";
    device_reader.username = "second@test.example".into();
    env.idp.add_user("second@test.example", "unused-password-4");
    let mut secret_reader = env.reader("apponly");
    secret_reader.grant = "client_credentials";
    secret_reader.oauth = "secret-app".into();
    let mut cert_reader = env.reader("certonly");
    cert_reader.grant = "client_credentials";
    cert_reader.oauth = "cert-app".into();
    let config = env.write_config(&[
        env.reader("password"),
        code_reader,
        device_reader,
        secret_reader,
        cert_reader,
    ]);
    env.dovecot.deliver_many(USER, (0..2).map(mail));
    let trace = [("RUST_LOG", "trace")];
    let mut output = String::new();

    let mut authorize = Authorize::start(&config, &["code", "--port", "0"], &trace);
    let url = authorize.sign_in_url();
    sign_in_with_browser(&url).await;
    let (code, text) = authorize.finish();
    assert_eq!(code, Some(0), "{text}");
    output.push_str(&text);

    let mut authorize = Authorize::start(&config, &["device", "--device"], &trace);
    authorize.line_where(|l| l.contains("enter the code"));
    let user_code = env.idp.pending_user_codes().pop().expect("code");
    env.idp
        .approve_device_code(&user_code, "second@test.example");
    let (code, text) = authorize.finish();
    assert_eq!(code, Some(0), "{text}");
    output.push_str(&text);

    env.idp.set_token_lifetime(Duration::from_secs(1));
    for round in 0..2 {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1200));
        }
        let out = run_once(&config, &trace);
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        // The device-code account has no mailbox at Dovecot; the others must work.
        let stdout = String::from_utf8_lossy(&out.stdout);
        for name in ["password", "code", "apponly", "certonly"] {
            assert!(
                stdout.contains(&format!("{name}: ok")),
                "{name} failed:\n{stdout}"
            );
        }
    }
    assert!(output.contains("TRACE"), "trace logging was on");
    assert!(env.idp.count("refresh_token") >= 2, "refreshes happened");
    assert!(env.idp.count("client_credentials") >= 2);

    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        "scan-client-secret-3".into(),
        "unused-password-4".into(),
    ];
    secrets.extend(env.idp.issued_secrets());
    let key_pem = ClientCert::shared().key_pem();
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_string),
    );
    if let Some((_, claims)) = env.idp.last_assertion() {
        secrets.push(claims["jti"].as_str().unwrap_or_default().to_string());
    }
    let forms = ["authorization_code", "client_credentials"]
        .iter()
        .filter_map(|g| env.idp.last_form(g))
        .collect::<Vec<_>>();
    for form in &forms {
        for key in ["code", "code_verifier", "client_assertion"] {
            if let Some(v) = form.get(key) {
                secrets.push(v.clone());
            }
        }
    }
    for token in env.idp.issued_access_tokens() {
        for user in [USER, "second@test.example"] {
            let sasl = format!("user={user}\x01auth=Bearer {token}\x01\x01");
            secrets.push(base64::engine::general_purpose::STANDARD.encode(sasl));
        }
    }
    secrets.retain(|s| s.len() >= 8);
    assert!(secrets.len() >= 20, "{} secrets", secrets.len());

    assert_no_secret_in(&output, &env.database_bytes(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reader_stays_stopped_until_check_or_a_config_change() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(1));
    let config = env.write_config(&[env.reader("helpdesk")]);
    env.idp.inject_aad(
        401,
        "invalid_client",
        7000222,
        "The provided client secret keys for app are expired.",
        2,
    );

    let out = run_once(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env.state("helpdesk").await, "misconfigured");
    assert_eq!(env.idp.total_requests(), 1);

    // Restarting with nothing changed makes no request that is known to fail.
    for _ in 0..2 {
        let out = run_once(&config, &[]);
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(
                "helpdesk: error: not polled: misconfigured: authentication failed: AADSTS7000222"
            ),
            "{stdout}"
        );
    }
    assert_eq!(env.idp.total_requests(), 1);

    // `check` is the admin's explicit retry (the injected error is still there).
    let out = Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8"), "check", "helpdesk"])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env.idp.total_requests(), 2);
    assert_eq!(env.state("helpdesk").await, "misconfigured");

    // A changed configuration is retried at the next start, and succeeds.
    let mut reader = env.reader("helpdesk");
    reader.timeout = "11s";
    let config = env.write_config(&[reader]);
    let out = run_once(&config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(env.state("helpdesk").await, "ok");
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);
}

/// The refresh token stored for the test user, decrypted with the store
/// key (the test reads the database as a second process would).
async fn stored_refresh_token(config: &mail2ticket::config::Config) -> Option<String> {
    use secrecy::ExposeSecret;
    let store = mail2ticket::store::Store::open_existing(&config.store)
        .await
        .expect("store");
    store
        .load_refresh_token("test", USER)
        .await
        .expect("read the token row")
        .map(|stored| stored.token.expose_secret().to_string())
}

/// Issue 14, item 4: the daemon holds an old refresh token in memory when
/// `authorize` (another process) stores a new one. Neither the old token's
/// rotated successor nor its rejection may touch the new sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_process_neither_overwrites_nor_deletes_a_newer_sign_in() {
    let env = Env::start();
    env.idp.set_browser_user(Some(USER));
    // Access tokens outlive the test: the daemon refreshes only when the
    // test makes Exchange (Dovecot) refuse its access token.
    env.idp.set_token_lifetime(Duration::from_secs(3600));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config_path = env.write_config(&[reader]);
    let config = mail2ticket::config::Config::load(&config_path).expect("config");
    env.init_db(&config).await;
    seed_refresh_token(&env, &config).await;

    let _daemon = env.spawn_daemon_binary(&config_path);
    env.dovecot.deliver(USER, &mail(1));
    assert!(env.wait_for_tickets(1, Duration::from_secs(30)).await);
    let daemons_token = stored_refresh_token(&config).await.expect("A, rotated");

    // The password is reset: every token dies, and `authorize` (another
    // process) stores B. The daemon still holds its old token: its refusal
    // must not delete B, and the daemon goes on with B by itself.
    env.idp.revoke_refresh_tokens(USER);
    let mut authorize = Authorize::start(&config_path, &["helpdesk", "--port", "0"], &[]);
    let url = authorize.sign_in_url();
    sign_in_with_browser(&url).await;
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    let b = stored_refresh_token(&config).await.expect("B");
    assert_ne!(b, daemons_token);
    let refreshes = env.idp.count("refresh_token");
    env.idp.revoke_access_tokens();
    env.dovecot.deliver(USER, &mail(2));
    assert!(
        env.wait_for_tickets(2, Duration::from_secs(30)).await,
        "the daemon went on with the new sign-in; state {}, last_error {:?}",
        env.state("helpdesk").await,
        env.last_error("helpdesk").await
    );
    assert_eq!(env.state("helpdesk").await, "ok");
    assert_eq!(
        env.idp.count("refresh_token"),
        refreshes + 2,
        "the old token refused, then B"
    );
    let rotated_b = stored_refresh_token(&config).await.expect("B's successor");
    assert!(
        env.idp.issued_refresh_tokens().last() == Some(&rotated_b),
        "B's rotated successor replaced B"
    );

    // Another sign-in stores C while the daemon holds B's successor, which
    // still works: the daemon refreshes with it and gets a rotated token
    // back, which must not replace C.
    let mut authorize = Authorize::start(&config_path, &["helpdesk", "--port", "0"], &[]);
    let url = authorize.sign_in_url();
    sign_in_with_browser(&url).await;
    let (code, output) = authorize.finish();
    assert_eq!(code, Some(0), "{output}");
    let c = stored_refresh_token(&config).await.expect("C");
    let refreshes = env.idp.count("refresh_token");
    env.idp.revoke_access_tokens();
    env.dovecot.deliver(USER, &mail(3));
    assert!(env.wait_for_tickets(3, Duration::from_secs(30)).await);
    assert_eq!(env.idp.count("refresh_token"), refreshes + 1);
    // Compared without printing: the tokens are not for test output.
    assert!(
        stored_refresh_token(&config).await == Some(c),
        "the rotated successor of the daemon's older token replaced C"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM oauth_tokens").await, 1);
    assert_eq!(env.state("helpdesk").await, "ok");
}

/// Issue 14, item 4: a sign-in stored while the reader was on its way to
/// being parked (its release came first, and found nothing to release) is
/// noticed by the parked reader itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_reader_resumes_when_another_process_stores_a_sign_in() {
    let env = Env::start();
    env.idp.set_token_lifetime(Duration::from_secs(3600));
    let mut reader = env.reader("helpdesk");
    reader.grant = "authorization_code";
    let config_path = env.write_config(&[reader]);
    let config = mail2ticket::config::Config::load(&config_path).expect("config");
    env.init_db(&config).await;
    seed_refresh_token(&env, &config).await;

    let _daemon = env.spawn_daemon_binary(&config_path);
    env.dovecot.deliver(USER, &mail(1));
    assert!(env.wait_for_tickets(1, Duration::from_secs(30)).await);
    env.idp.inject_aad(
        400,
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked.",
        1,
    );
    env.idp.revoke_access_tokens();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            env.state("helpdesk").await == "needs_authorization"
        })
        .await
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM oauth_tokens").await, 0);

    // A token stored without releasing the reader: the release of a
    // sign-in that raced the parking.
    env.dovecot.deliver(USER, &mail(2));
    seed_refresh_token(&env, &config).await;
    assert_eq!(env.state("helpdesk").await, "needs_authorization");
    assert!(
        env.wait_for_tickets(2, Duration::from_secs(30)).await,
        "the parked reader saw the new sign-in; state {}",
        env.state("helpdesk").await
    );
    assert_eq!(env.state("helpdesk").await, "ok");
}

/// Issue 14, item 10: the token request is bounded by the reader's
/// `timeout`, and a slow identity endpoint is called slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_identity_endpoint_is_bounded_by_the_readers_timeout() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(1));
    let mut reader = env.reader("helpdesk");
    reader.timeout = "2s";
    let config = env.config(&[reader]);
    env.idp.set_token_delay(Duration::from_secs(6));
    let last_error = env.failing_poll(&config, "helpdesk").await;
    assert_eq!(
        last_error,
        format!(
            "identity endpoint {} did not answer within 2s",
            env.idp.token_url()
        )
    );
    assert_eq!(env.state("helpdesk").await, "retrying");
    env.idp.set_token_delay(Duration::ZERO);
    let results = env.poll_once(&config).await;
    results[0].1.as_ref().expect("recovers once it answers");
}

/// Issue 14, item 10: during an outage of the identity platform a reader
/// with a valid access token makes no token request at all, and one that
/// needs a token asks no more often than its backoff allows: with a 1 s
/// poll interval, the delays after 1, 2, 3, 4 failures are at least 0.5,
/// 1, 2 and 4 s, so 10 s of 503s see at most 5 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_platform_outage_is_met_with_backoff_not_a_storm() {
    let env = Env::start();
    env.idp.set_token_lifetime(Duration::from_secs(3600));
    let config = env.config(&[env.reader("helpdesk")]);
    let (cancel, daemon) = env.spawn_daemon(&config).await;
    env.dovecot.deliver(USER, &mail(1));
    assert!(env.wait_for_tickets(1, Duration::from_secs(30)).await);

    env.idp.set_down(true);
    let before = env.idp.total_requests();
    env.dovecot.deliver(USER, &mail(2));
    assert!(env.wait_for_tickets(2, Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.idp.total_requests(),
        before,
        "the cached access token is used while it is valid"
    );

    // Exchange now refuses the cached token: a new one is needed, and the
    // identity platform keeps answering 503.
    env.idp.revoke_access_tokens();
    let start = env.idp.total_requests();
    let outage = tokio::time::Instant::now();
    env.dovecot.deliver(USER, &mail(3));
    assert!(
        wait_until(Duration::from_secs(9), || async {
            env.last_error("helpdesk")
                .await
                .is_some_and(|e| e.contains("answered HTTP 503"))
        })
        .await,
        "last_error names the outage: {:?}",
        env.last_error("helpdesk").await
    );
    tokio::time::sleep_until(outage + Duration::from_secs(10)).await;
    let during = env.idp.total_requests() - start;
    assert!(
        (1..=5).contains(&during),
        "{during} token requests in 10 s of 503s"
    );
    assert_eq!(env.state("helpdesk").await, "retrying");

    env.idp.set_down(false);
    assert!(
        env.wait_for_tickets(3, Duration::from_secs(40)).await,
        "recovers by itself"
    );
    env.stop_daemon(cancel, daemon).await;
    assert_eq!(env.state("helpdesk").await, "ok");
}
