//! SMTP for the acknowledgement tests: [`CaptureSink`], the server Dovecot's
//! submission service relays to, which keeps every mail it is handed; and
//! [`raw_session`], a bare SMTP client for checking what Dovecot itself
//! accepts on the wire (e.g. that a one-line `AUTH XOAUTH2` with a long
//! token is refused, so the two-step form mail2ticket uses is needed).
//!
//! The sink speaks just enough SMTP for Dovecot's relay client: EHLO/HELO,
//! MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT, no extensions, so
//! nothing is pipelined. It runs on its own thread and stops on Drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One mail as relayed to the sink.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The MAIL FROM path, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The RCPT TO paths, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as sent after DATA (CRLF line ends, dots unstuffed).
    pub data: Vec<u8>,
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Header fields (unfolded) in order, before the blank line.
    pub fn headers(&self) -> Vec<(String, String)> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut out: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                out.push((name.to_string(), value.trim().to_string()));
            }
        }
        out
    }

    /// The first header field of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body after the blank line (still transfer-encoded).
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct SinkState {
    mails: Vec<Captured>,
    /// A reply given to every RCPT instead of `250`, e.g. a 550.
    refuse_rcpt: Option<String>,
    connections: usize,
}

/// An SMTP server on loopback that keeps every mail; stops on Drop.
pub struct CaptureSink {
    port: u16,
    state: Arc<Mutex<SinkState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CaptureSink {
    pub fn start() -> CaptureSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the capture sink");
        let port = listener.local_addr().expect("sink address").port();
        let state = Arc::new(Mutex::new(SinkState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    // One thread per connection: Dovecot may hold one open
                    // while opening another.
                    std::thread::spawn(move || {
                        let _ = serve(conn, &state);
                    });
                }
            }
        });
        CaptureSink {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn st(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every mail received so far, in order.
    pub fn mails(&self) -> Vec<Captured> {
        self.st().mails.clone()
    }

    /// Connections accepted so far (one per relayed session).
    pub fn connections(&self) -> usize {
        self.st().connections
    }

    /// Answers every RCPT with `reply` (e.g. `550 5.1.1 <x>: user unknown`)
    /// instead of accepting it; `None` accepts again.
    pub fn refuse_rcpt(&self, reply: Option<&str>) {
        self.st().refuse_rcpt = reply.map(str::to_string);
    }

    /// Waits (up to `limit`) until at least `n` mails arrived; returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Captured> {
        let deadline = Instant::now() + limit;
        loop {
            let mails = self.mails();
            if mails.len() >= n || Instant::now() >= deadline {
                return mails;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CaptureSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn path_of(argument: &str) -> String {
    let start = argument.find('<').map_or(0, |i| i + 1);
    let end = argument[start..]
        .find('>')
        .map_or(argument.len(), |i| start + i);
    argument[start..end].to_string()
}

fn serve(conn: TcpStream, state: &Mutex<SinkState>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = conn.try_clone()?;
    let mut input = BufReader::new(conn);
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    lock().connections += 1;
    out.write_all(b"220 sink.test.example ESMTP capture sink\r\n")?;
    let mut mail_from = String::new();
    let mut rcpt_to: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => "250 sink.test.example\r\n".into(),
            "HELO" => "250 sink.test.example\r\n".into(),
            "MAIL" => {
                mail_from = path_of(line);
                rcpt_to.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => match lock().refuse_rcpt.clone() {
                Some(refusal) => format!("{refusal}\r\n"),
                None => {
                    rcpt_to.push(path_of(line));
                    "250 2.1.5 Ok\r\n".into()
                }
            },
            "DATA" => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    if input.read_until(b'\n', &mut raw)? == 0 {
                        return Ok(());
                    }
                    if raw == b".\r\n" || raw == b".\n" {
                        break;
                    }
                    let unstuffed = if raw.starts_with(b"..") {
                        &raw[1..]
                    } else {
                        &raw[..]
                    };
                    data.extend_from_slice(unstuffed);
                }
                lock().mails.push(Captured {
                    mail_from: mail_from.clone(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                });
                "250 2.0.0 Ok: queued\r\n".into()
            }
            "QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
            "RSET" => {
                rcpt_to.clear();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            _ => "502 5.5.2 Command not implemented\r\n".into(),
        };
        out.write_all(reply.as_bytes())?;
    }
}

/// A bare SMTP client on plain TCP for wire-level checks: each line of
/// `script` is sent after the previous reply, and every reply (all its
/// lines joined by `\n`) is returned, the greeting first. Stops early when
/// the server closes the connection.
pub fn raw_session(port: u16, script: &[String]) -> Vec<String> {
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to submission");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut out = conn.try_clone().expect("clone the stream");
    let mut input = BufReader::new(conn);
    let mut replies = Vec::new();
    let read_reply = |input: &mut BufReader<TcpStream>| -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => return (!lines.is_empty()).then(|| lines.join("\n")),
                Ok(_) => {}
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    };
    match read_reply(&mut input) {
        Some(greeting) => replies.push(greeting),
        None => return replies,
    }
    for command in script {
        if out.write_all(format!("{command}\r\n").as_bytes()).is_err() {
            break;
        }
        match read_reply(&mut input) {
            Some(reply) => replies.push(reply),
            None => break,
        }
    }
    replies
}
