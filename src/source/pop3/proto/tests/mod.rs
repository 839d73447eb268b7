//! Tests of the POP3 wire protocol against a scripted server on a duplex pipe.
use super::*;
use std::future::Future;
use tokio::io::{AsyncReadExt, DuplexStream, duplex};

const TIMEOUT: Duration = Duration::from_secs(5);
const TOKEN: &str = "ya29.TOP-SECRET-access-token";
const PASSWORD: &str = "correct horse battery staple";

/// The scripted server side of a duplex pipe.
struct Server {
    io: DuplexStream,
}

impl Server {
    /// Reads exactly `want.len()` bytes and asserts they are `want`.
    async fn expect(&mut self, want: impl AsRef<[u8]>) {
        let want = want.as_ref();
        let mut got = vec![0; want.len()];
        tokio::time::timeout(TIMEOUT, self.io.read_exact(&mut got))
            .await
            .expect("client did not send in time")
            .expect("read from client");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "client sent the wrong bytes"
        );
    }

    async fn send(&mut self, data: impl AsRef<[u8]>) {
        self.io
            .write_all(data.as_ref())
            .await
            .expect("write to client");
        self.io.flush().await.expect("flush to client");
    }

    /// Asserts that the client sends nothing for `wait`.
    async fn quiet(&mut self, wait: Duration) {
        let mut byte = [0u8; 1];
        if let Ok(read) = tokio::time::timeout(wait, self.io.read(&mut byte)).await {
            panic!("client sent {read:?} ({byte:?}) when it should have waited");
        }
    }

    /// Asserts that the client has closed its side without sending more.
    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(TIMEOUT, self.io.read_to_end(&mut rest))
            .await
            .expect("client did not close")
            .expect("read to end");
        assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    }
}

fn pair_with(buffer: usize, timeout: Duration) -> (Connection<DuplexStream>, Server) {
    let (client, server) = duplex(buffer);
    (Connection::new(client, timeout), Server { io: server })
}

fn pair() -> (Connection<DuplexStream>, Server) {
    pair_with(64 * 1024, TIMEOUT)
}

/// Runs client and server concurrently in one task, so a failed
/// assertion on the server side fails the test directly.
async fn run<C: Future, V: Future<Output = ()>>(client: C, server: V) -> C::Output {
    let (out, ()) = tokio::join!(client, server);
    out
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn xoauth2_line(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn assert_no_secrets(err: &Pop3Error, secrets: &[&str]) {
    let shown = format!("{err} / {err:?}");
    for s in secrets {
        assert!(!shown.contains(s), "error text leaks {s:?}: {shown}");
    }
}

/// What the server sends for `body` in a RETR answer.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = b"+OK message follows\r\n".to_vec();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

mod greeting;
mod listing;
mod login;
mod retr;
mod session;
