//! Sealed refresh tokens, and when each was last used.
//!
//! Several processes hold a copy of the same row's token (the daemon, a
//! `run --once`, `check`, `authorize`). Only a sign-in replaces the row
//! unconditionally; everything a process does because of the token it
//! holds (keep the rotated successor, forget a dead one) is a
//! compare-and-swap on that token, so an older copy can never delete or
//! overwrite a newer sign-in.

use secrecy::{ExposeSecret, SecretString};

use super::{BEGIN_WRITE, NOW, Store, StoreError};

/// Binds a sealed token to its row, so a ciphertext copied to another
/// account's row does not decrypt.
fn context(oauth: &str, account: &str) -> Vec<u8> {
    format!("oauth_tokens\0{oauth}\0{account}").into_bytes()
}

/// Which refresh token a row held: a keyed digest of the token itself, so
/// two versions compare without the token being kept twice or shown. A
/// digest rather than a counter: a row deleted and signed in again cannot
/// come back with a version an old copy still holds.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenVersion(String);

impl std::fmt::Debug for TokenVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix tells versions apart in a debugger; the rest is noise.
        write!(f, "TokenVersion({}..)", &self.0[..self.0.len().min(8)])
    }
}

/// A refresh token as read from the store, with its version.
pub struct StoredToken {
    pub token: SecretString,
    pub version: TokenVersion,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// What [`Store::replace_refresh_token`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Replaced {
    /// The row held the token used (or none): the new one is stored.
    Stored(TokenVersion),
    /// Another process stored a different token meanwhile; it was kept.
    Superseded,
}

impl Store {
    fn version_of(&self, token: &[u8]) -> TokenVersion {
        let mut data = b"oauth_tokens refresh_token\0".to_vec();
        data.extend_from_slice(token);
        TokenVersion(self.digest(&data))
    }

    /// Seals and stores `token` in the row of (oauth, account), a use of it.
    async fn write_token<'e, E>(
        &self,
        executor: E,
        oauth: &str,
        account: &str,
        token: &SecretString,
    ) -> Result<TokenVersion, StoreError>
    where
        E: sqlx::SqliteExecutor<'e>,
    {
        let sealed = self
            .key
            .seal(&context(oauth, account), token.expose_secret().as_bytes());
        sqlx::query(&format!(
            "INSERT INTO oauth_tokens (oauth, account, refresh_token, updated_at, last_used_at)
             VALUES (?, ?, ?, {NOW}, {NOW})
             ON CONFLICT (oauth, account) DO UPDATE
             SET refresh_token = excluded.refresh_token, updated_at = excluded.updated_at,
                 last_used_at = excluded.last_used_at"
        ))
        .bind(oauth)
        .bind(account)
        .bind(sealed)
        .execute(executor)
        .await?;
        Ok(self.version_of(token.expose_secret().as_bytes()))
    }

    async fn read_token<'e, E>(
        &self,
        executor: E,
        oauth: &str,
        account: &str,
    ) -> Result<Option<StoredToken>, StoreError>
    where
        E: sqlx::SqliteExecutor<'e>,
    {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT refresh_token FROM oauth_tokens WHERE oauth = ? AND account = ?",
        )
        .bind(oauth)
        .bind(account)
        .fetch_optional(executor)
        .await?;
        let Some((sealed,)) = row else {
            return Ok(None);
        };
        let plain = self.key.open(&context(oauth, account), &sealed)?;
        let version = self.version_of(&plain);
        Ok(Some(StoredToken {
            token: SecretString::from(String::from_utf8_lossy(&plain).into_owned()),
            version,
        }))
    }

    pub async fn load_refresh_token(
        &self,
        oauth: &str,
        account: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        self.read_token(&self.pool, oauth, account).await
    }

    /// The version of the stored token, if any: one local read, for a
    /// parked reader watching for a sign-in made elsewhere.
    pub async fn refresh_token_version(
        &self,
        oauth: &str,
        account: &str,
    ) -> Result<Option<TokenVersion>, StoreError> {
        Ok(self
            .load_refresh_token(oauth, account)
            .await?
            .map(|stored| stored.version))
    }

    /// Stores (replacing whatever was there) the token of a sign-in, which
    /// counts as a use; durable when this returns.
    pub async fn save_refresh_token(
        &self,
        oauth: &str,
        account: &str,
        token: &SecretString,
    ) -> Result<TokenVersion, StoreError> {
        self.write_token(&self.pool, oauth, account, token).await
    }

    /// Stores the successor of the token `used` (`None`: no refresh token
    /// was used, as with the password grant), only if the row still holds
    /// `used`, or nothing: a newer sign-in stored meanwhile is kept.
    pub async fn replace_refresh_token(
        &self,
        oauth: &str,
        account: &str,
        used: Option<&TokenVersion>,
        token: &SecretString,
    ) -> Result<Replaced, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let current = self.read_token(&mut *tx, oauth, account).await?;
        if let Some(current) = current
            && Some(&current.version) != used
        {
            return Ok(Replaced::Superseded);
        }
        let version = self.write_token(&mut *tx, oauth, account, token).await?;
        tx.commit().await?;
        Ok(Replaced::Stored(version))
    }

    /// Notes that the refresh token worked without being rotated.
    pub async fn touch_refresh_token(&self, oauth: &str, account: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE oauth_tokens SET last_used_at = {NOW} WHERE oauth = ? AND account = ?"
        ))
        .bind(oauth)
        .bind(account)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the token `used` after the identity platform refused it;
    /// a different token in the row (a sign-in since) stays. True if the
    /// row held `used`.
    pub async fn forget_refresh_token(
        &self,
        oauth: &str,
        account: &str,
        used: &TokenVersion,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let current = self.read_token(&mut *tx, oauth, account).await?;
        if current.is_none_or(|current| current.version != *used) {
            return Ok(false);
        }
        sqlx::query("DELETE FROM oauth_tokens WHERE oauth = ? AND account = ?")
            .bind(oauth)
            .bind(account)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "app";
    const WHO: &str = "a@example.com";

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[tokio::test]
    async fn a_dead_token_is_forgotten_only_while_it_is_the_stored_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::open_in(&dir).await;
        let old = store
            .save_refresh_token(APP, WHO, &secret("token-a"))
            .await
            .expect("save a");
        let new = store
            .save_refresh_token(APP, WHO, &secret("token-b"))
            .await
            .expect("save b");
        assert_ne!(old, new);
        assert!(
            !store
                .forget_refresh_token(APP, WHO, &old)
                .await
                .expect("forget")
        );
        let kept = store
            .load_refresh_token(APP, WHO)
            .await
            .expect("load")
            .expect("b kept");
        assert_eq!(kept.token.expose_secret(), "token-b");
        assert_eq!(kept.version, new);
        assert!(
            store
                .forget_refresh_token(APP, WHO, &new)
                .await
                .expect("forget")
        );
        assert!(
            store
                .refresh_token_version(APP, WHO)
                .await
                .expect("version")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_rotated_token_never_overwrites_a_newer_sign_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::open_in(&dir).await;
        let a = store
            .save_refresh_token(APP, WHO, &secret("token-a"))
            .await
            .expect("save a");
        // An older copy of A rotates it after a sign-in stored B.
        store
            .save_refresh_token(APP, WHO, &secret("token-b"))
            .await
            .expect("save b");
        let outcome = store
            .replace_refresh_token(APP, WHO, Some(&a), &secret("token-a2"))
            .await
            .expect("replace");
        assert_eq!(outcome, Replaced::Superseded);
        let outcome = store
            .replace_refresh_token(APP, WHO, None, &secret("token-p"))
            .await
            .expect("replace");
        assert_eq!(
            outcome,
            Replaced::Superseded,
            "nothing used, but B is there"
        );
        let stored = store.load_refresh_token(APP, WHO).await.expect("load");
        assert_eq!(
            stored.map(|s| s.token.expose_secret().to_string()),
            Some("token-b".to_string())
        );

        // The holder of the stored token may rotate it; an empty row may be
        // filled.
        let b = store
            .refresh_token_version(APP, WHO)
            .await
            .expect("version")
            .expect("b");
        let Replaced::Stored(b2) = store
            .replace_refresh_token(APP, WHO, Some(&b), &secret("token-b2"))
            .await
            .expect("replace")
        else {
            panic!("the holder of B rotates it");
        };
        assert!(
            store
                .forget_refresh_token(APP, WHO, &b2)
                .await
                .expect("forget")
        );
        let outcome = store
            .replace_refresh_token(APP, WHO, Some(&a), &secret("token-a3"))
            .await
            .expect("replace");
        assert!(matches!(outcome, Replaced::Stored(_)), "{outcome:?}");
    }
}
