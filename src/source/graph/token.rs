//! Where the client's bearer token comes from: a [`GraphToken`] the caller
//! plugs in (the reader: the token store), and [`StaticToken`] for a token
//! in hand.

use futures::future::BoxFuture;
use secrecy::SecretString;

use super::errors::TokenUnavailable;

/// Where the bearer token comes from: the reader plugs the token store in.
pub trait GraphToken: Send + Sync {
    /// The access token to send now (cached, or obtained).
    fn current(&self) -> BoxFuture<'_, Result<SecretString, TokenUnavailable>>;
    /// Graph refused `token` (401): drop it from the cache, if it is still
    /// the cached one, so that [`GraphToken::current`] obtains a new one.
    /// Concurrent requests may report the same token more than once.
    fn refused<'a>(&'a self, token: &'a SecretString) -> BoxFuture<'a, ()>;
}

/// A token that never changes (for `check` with a token in hand, tools and
/// tests); `refused` only counts.
pub struct StaticToken {
    token: SecretString,
    refused: std::sync::atomic::AtomicUsize,
}

impl StaticToken {
    pub fn new(token: SecretString) -> StaticToken {
        StaticToken {
            token,
            refused: Default::default(),
        }
    }

    /// How often Graph refused it.
    pub fn refusals(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl GraphToken for StaticToken {
    fn current(&self) -> BoxFuture<'_, Result<SecretString, TokenUnavailable>> {
        let token = self.token.clone();
        Box::pin(async move { Ok(token) })
    }

    fn refused<'a>(&'a self, _token: &'a SecretString) -> BoxFuture<'a, ()> {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async {})
    }
}
