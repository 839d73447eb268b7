//! `Proxy`: a loopback TCP proxy for the plaintext protocols (a reader with
//! `tls = "none"`), on its own threads, so it works the same from `#[test]`
//! and `#[tokio::test]` functions.
//!
//! It forwards bytes both ways (TLS after STARTTLS too), records every
//! line the client sends, and can act on a client line *before* the line
//! is complete at the server: typically SIGKILL the daemon and drop both
//! connections, so that the server never executes the command. mail2ticket sends its after-step (`UID STORE`, `UID MOVE`,
//! `UID COPY`, `UID EXPUNGE`, POP3 `DELE`) only after the ticket's commit,
//! so killing on that line lands exactly between the commit and the
//! after-step.
//!
//! It can also slow down what the server sends ([`Proxy::throttle`]), or
//! let it trickle and then stop, to tell a slow transfer from a stalled one,
//! and cut connections after a given number of the server's bytes
//! ([`Proxy::cut_after`]), like a flaky link.
//!
//! The recorded lines include SASL responses, i.e. tokens: never print
//! them in an assertion message.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a trigger does with the client line that matched it. With `Kill`
/// and `Drop` the line's end is never forwarded (the server never executes
/// it) and both connections are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL this process (and wait until it is dead), then drop.
    Kill(u32),
    /// Only drop the connections, like a network failure.
    Drop,
    /// Hold the command this long, then pass it on: a window in which the
    /// test can change the mailbox between two of the client's commands.
    Hold(Duration),
}

/// How the server's bytes reach the client once [`Proxy::throttle`] is set:
/// `chunk` bytes at a time with `pause` after each, and, with `stall_after`,
/// nothing at all once that many bytes went through (counted from the
/// moment the throttle was set), while the connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub chunk: usize,
    pub pause: Duration,
    pub stall_after: Option<usize>,
}

struct Trigger {
    pattern: String,
    action: Action,
}

struct Shared {
    target: u16,
    lines: Mutex<Vec<String>>,
    triggers: Mutex<Vec<Trigger>>,
    fired: Mutex<Vec<String>>,
    /// Clones of every live socket, to cut them all on Drop.
    sockets: Mutex<Vec<TcpStream>>,
    accepted: AtomicUsize,
    stop: AtomicBool,
    /// The throttle, and the bytes sent under it so far.
    throttle: Mutex<Option<(Throttle, usize)>>,
    /// Byte budgets for the next connections, one each, in order: a
    /// connection is cut once the server sent it that many bytes.
    cuts: Mutex<std::collections::VecDeque<usize>>,
    /// Connections cut by a budget so far.
    cut: AtomicUsize,
}

/// A running proxy from `127.0.0.1:port()` to `127.0.0.1:target_port`;
/// stops (and cuts every connection) on Drop.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind a loopback port");
        let port = listener.local_addr().expect("proxy: local addr").port();
        let shared = Arc::new(Shared {
            target: target_port,
            lines: Mutex::new(Vec::new()),
            triggers: Mutex::new(Vec::new()),
            fired: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            throttle: Mutex::new(None),
            cuts: Mutex::new(std::collections::VecDeque::new()),
            cut: AtomicUsize::new(0),
        });
        let acceptor = std::thread::spawn({
            let shared = shared.clone();
            move || accept_loop(&listener, &shared)
        });
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port a reader should use (`host = "127.0.0.1"`, `tls = "none"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every line clients sent so far, over all connections, in order,
    /// without the line ending.
    pub fn client_lines(&self) -> Vec<String> {
        self.shared.lines.lock().expect("lock").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Arms a one-shot trigger: the first client line that *is* the command
    /// `pattern` fires `action` instead of being completed at the server. A line matches
    /// when it, or the line without its first word (an IMAP tag), starts
    /// with `pattern` (ASCII case-insensitive) followed by a space or the
    /// end of the line: "DELE" matches `DELE 3`, "UID MOVE" matches
    /// `A7 UID MOVE 1:5 Done`; neither matches inside a base64 line.
    ///
    /// When a [`Action::Kill`] fires, every other trigger for the same
    /// process is disarmed too (its pid may be reused once reaped).
    pub fn on_client_line(&self, pattern: &str, action: Action) {
        self.shared.triggers.lock().expect("lock").push(Trigger {
            pattern: pattern.to_owned(),
            action,
        });
    }

    /// Removes every armed trigger; the proxy just forwards from now on.
    pub fn disarm(&self) {
        self.shared.triggers.lock().expect("lock").clear();
    }

    /// Slows down (or, with `None`, stops slowing down) everything the
    /// server sends from now on, on every connection.
    pub fn throttle(&self, throttle: Option<Throttle>) {
        *self.shared.throttle.lock().expect("lock") = throttle.map(|t| (t, 0));
    }

    /// Cuts the next `budgets.len()` connections (accepted from now on),
    /// the k-th once the server sent it `budgets[k]` bytes: both sides are
    /// closed mid-stream, whatever was in flight. Later connections are
    /// forwarded whole.
    pub fn cut_after(&self, budgets: &[usize]) {
        self.shared
            .cuts
            .lock()
            .expect("lock")
            .extend(budgets.iter().copied());
    }

    /// Connections cut by [`Proxy::cut_after`] so far.
    pub fn cuts_done(&self) -> usize {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// The client lines that fired a trigger (the commands that never
    /// reached the server), in order.
    pub fn fired(&self) -> Vec<String> {
        self.shared.fired.lock().expect("lock").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for s in self.shared.sockets.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // A server that is down (e.g. restarting) looks like one that
        // refuses: the client sees its connection closed at once.
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target)) else {
            continue;
        };
        let clones = (client.try_clone(), server.try_clone());
        let (Ok(client_out), Ok(server_in)) = clones else {
            continue;
        };
        {
            let mut sockets = shared.sockets.lock().expect("lock");
            for s in [&client, &server] {
                if let Ok(s) = s.try_clone() {
                    sockets.push(s);
                }
            }
        }
        let budget = shared.cuts.lock().expect("lock").pop_front();
        // Server to client: raw bytes, throttled if asked, cut if budgeted.
        std::thread::spawn({
            let shared = shared.clone();
            move || {
                let (mut from, mut to) = (server_in, client_out);
                match budget {
                    Some(budget) => forward_until(&mut from, &mut to, budget, &shared),
                    None => forward_throttled(&mut from, &mut to, &shared),
                }
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
            }
        });
        // Client to server: line by line, through the triggers.
        let shared = shared.clone();
        std::thread::spawn(move || forward_lines(client, server, &shared));
    }
}

/// Server to client until `budget` bytes went through; then the
/// connection is cut (the caller shuts both sockets down).
fn forward_until(from: &mut TcpStream, to: &mut TcpStream, budget: usize, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    let mut left = budget;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let take = n.min(left);
        if to.write_all(&buf[..take]).is_err() {
            return;
        }
        left -= take;
        if left == 0 {
            shared.cut.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

/// Server to client, through the throttle when one is set.
fn forward_throttled(from: &mut TcpStream, to: &mut TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let throttle = shared.throttle.lock().expect("lock").map(|(t, _)| t);
            let Some(t) = throttle else {
                if to.write_all(rest).is_err() {
                    return;
                }
                break;
            };
            let mut sent = 0;
            if let Some((_, so_far)) = shared.throttle.lock().expect("lock").as_mut() {
                sent = *so_far;
            }
            let mut take = t.chunk.max(1).min(rest.len());
            if let Some(limit) = t.stall_after {
                if sent >= limit {
                    // Stalled: hold the connection open, send nothing, until
                    // the throttle changes or the proxy stops.
                    while !shared.stop.load(Ordering::SeqCst)
                        && *shared.throttle.lock().expect("lock") == Some((t, sent))
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                take = take.min(limit - sent);
            }
            let (piece, tail) = rest.split_at(take);
            if to.write_all(piece).is_err() {
                return;
            }
            if let Some((_, so_far)) = shared.throttle.lock().expect("lock").as_mut() {
                *so_far += take;
            }
            rest = tail;
            std::thread::sleep(t.pause);
        }
    }
}

/// Client to server. Bytes are forwarded as they come (after STARTTLS the
/// stream is binary and has no lines), except that the end of a line is
/// held until the whole line has been recorded and checked against the
/// triggers: a server acts on a command only at its line end, so a fired
/// trigger drops the connection before the command is complete.
fn forward_lines(client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    // The current line so far (already forwarded).
    let mut line = Vec::new();
    loop {
        let n = match (&client).read(&mut buf) {
            Ok(0) | Err(_) => {
                // Client done: let the server finish its answer and close.
                let _ = server.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while let Some(at) = chunk.iter().position(|&b| b == b'\n') {
            let (end, rest) = chunk.split_at(at + 1);
            line.extend_from_slice(end);
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            line.clear();
            shared.lines.lock().expect("lock").push(text.clone());
            if let Some(action) = take_trigger(shared, &text) {
                shared.fired.lock().expect("lock").push(text);
                match action {
                    Action::Hold(time) => std::thread::sleep(time),
                    Action::Kill(pid) => kill_and_wait(pid),
                    Action::Drop => {}
                }
                if !matches!(action, Action::Hold(_)) {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
            }
            if server.write_all(end).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            chunk = rest;
        }
        if !chunk.is_empty() {
            if server.write_all(chunk).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            line.extend_from_slice(chunk);
        }
    }
}

/// Removes and returns the action of the first trigger `line` matches.
fn take_trigger(shared: &Shared, line: &str) -> Option<Action> {
    let mut triggers = shared.triggers.lock().expect("lock");
    let at = triggers.iter().position(|t| is_command(line, &t.pattern))?;
    let action = triggers.remove(at).action;
    if let Action::Kill(pid) = action {
        triggers.retain(|t| t.action != Action::Kill(pid));
    }
    Some(action)
}

/// Whether `line` (or `line` after an IMAP tag) is the command `pattern`.
pub fn is_command(line: &str, pattern: &str) -> bool {
    let starts = |text: &str| {
        let (t, p) = (text.as_bytes(), pattern.as_bytes());
        t.len() >= p.len()
            && t[..p.len()].eq_ignore_ascii_case(p)
            && (t.len() == p.len() || t[p.len()] == b' ')
    };
    starts(line) || line.split_once(' ').is_some_and(|(_, rest)| starts(rest))
}

/// SIGKILLs `pid` and waits (up to 10 s) until it is dead: gone, or a
/// zombie waiting for its parent (the test) to reap it.
fn kill_and_wait(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("proxy: run kill");
    assert!(status.success(), "proxy: kill -KILL {pid} failed");
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&stat) {
            // The state follows the parenthesised command name.
            Ok(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    panic!("proxy: process {pid} did not die within 10 s of SIGKILL");
}
