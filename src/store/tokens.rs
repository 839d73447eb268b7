//! Sealed refresh tokens, and when each was last used.

use secrecy::{ExposeSecret, SecretString};

use super::{NOW, Store, StoreError};

/// Binds a sealed token to its row, so a ciphertext copied to another
/// account's row does not decrypt.
fn context(oauth: &str, account: &str) -> Vec<u8> {
    format!("oauth_tokens\0{oauth}\0{account}").into_bytes()
}

impl Store {
    pub async fn load_refresh_token(
        &self,
        oauth: &str,
        account: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT refresh_token FROM oauth_tokens WHERE oauth = ? AND account = ?",
        )
        .bind(oauth)
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        let Some((sealed,)) = row else {
            return Ok(None);
        };
        let plain = self.key.open(&context(oauth, account), &sealed)?;
        Ok(Some(SecretString::from(
            String::from_utf8_lossy(&plain).into_owned(),
        )))
    }

    /// Stores (replacing) the refresh token, which counts as a use; durable
    /// when this returns.
    pub async fn save_refresh_token(
        &self,
        oauth: &str,
        account: &str,
        token: &SecretString,
    ) -> Result<(), StoreError> {
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
        .execute(&self.pool)
        .await?;
        Ok(())
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

    pub async fn forget_refresh_token(&self, oauth: &str, account: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM oauth_tokens WHERE oauth = ? AND account = ?")
            .bind(oauth)
            .bind(account)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
