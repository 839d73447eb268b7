//! A real headless browser for page tests: Debian's chromium driven by its
//! chromedriver over WebDriver (plain HTTP and JSON, with the reqwest the
//! kit already has), just the few commands the tests need: open a page,
//! read elements, run a script, read the console, take a screenshot.
//!
//! `scripts/test` installs the chromium and chromium-driver packages; a
//! test that needs the browser fails naming them when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// The element reference key of the WebDriver protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// One chromedriver with one headless chromium session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    /// The browser's profile, fresh for each test.
    _profile: tempfile::TempDir,
}

/// One console message the page caused.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    pub level: String,
    pub message: String,
}

impl Browser {
    /// Starts chromedriver and a headless chromium of `width` x `height`
    /// CSS pixels; nothing of it reaches beyond loopback.
    pub async fn start(width: u32, height: u32) -> Browser {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's {package} package (scripts/test does)"
            );
        }
        let port = crate::setup::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let ready = crate::setup::wait_until(Duration::from_secs(20), || async {
            http.get(format!("{base}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        assert!(ready, "chromedriver did not answer on port {port}");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                    "goog:loggingPrefs": {"browser": "ALL"},
                }}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_string();
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path} answered {status}: {answer}"
        );
        answer["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn open(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.session_path("/url"),
            json!({"url": url}),
        )
        .await;
    }

    pub async fn title(&self) -> String {
        let v = self
            .call(
                reqwest::Method::GET,
                &self.session_path("/title"),
                json!({}),
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> String {
        let v = self
            .call(
                reqwest::Method::GET,
                &self.session_path("/source"),
                json!({}),
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The rendered text of the first element `css` selects.
    pub async fn text_of(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                &self.session_path("/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css:?}: {found}"))
            .to_string();
        let text = self
            .call(
                reqwest::Method::GET,
                &self.session_path(&format!("/element/{id}/text")),
                json!({}),
            )
            .await;
        text.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` (a function body) through the driver, which the
    /// page's own script policy does not govern; its return value.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &self.session_path("/execute/sync"),
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Resizes the window to `width` x `height` CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            &self.session_path("/window/rect"),
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// The console messages since the last call (errors, CSP violations
    /// and failed loads among them).
    pub async fn console(&self) -> Vec<ConsoleEntry> {
        let v = self
            .call(
                reqwest::Method::POST,
                &self.session_path("/se/log"),
                json!({"type": "browser"}),
            )
            .await;
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| ConsoleEntry {
                        level: e["level"].as_str().unwrap_or_default().to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self
            .call(
                reqwest::Method::GET,
                &self.session_path("/screenshot"),
                json!({}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is no PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot's directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing the driver would leave its chromium running: end the
        // session first (a bare blocking request; drop cannot await).
        if !self.session.is_empty() {
            let _ = end_session(&self.base, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn end_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(())
}

/// Where CI keeps artefacts of a test run: `target/test-artefacts/`
/// (CARGO_TARGET_DIR when set).
pub fn artefact_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artefacts").join(name)
}
