//! The store key: seals secrets (refresh tokens) before they reach the
//! database, so a copied database file reveals no token without the key.
//!
//! The key is 32 bytes, written as 64 hex digits. It comes from
//! `[store] key_file`, else `$CREDENTIALS_DIRECTORY/mail2ticket.key`
//! (systemd `LoadCredential=`), else a file beside the database that is
//! generated with mode 0600 on first start.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 24;

/// Why the key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("store key {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "no store key for this database: none configured ([store] key_file), none in \
         $CREDENTIALS_DIRECTORY/mail2ticket.key, none at {}. The database was sealed with \
         a key; run this as the daemon does (same user, same credentials), or point \
         key_file at the key", .beside.display()
    )]
    Missing { beside: PathBuf },
    #[error(
        "store key {path} does not match this database: stored tokens cannot be decrypted. \
         Restore the key file this database was created with, or delete the database's \
         oauth_tokens and store_key_check rows to start over (readers then sign in again)"
    )]
    Wrong { path: PathBuf },
}

/// A 32-byte AEAD key. Not printable, not comparable.
pub struct StoreKey {
    cipher: XChaCha20Poly1305,
    /// A second key derived from the first, for keyed digests, so that no
    /// digest ever uses the encryption key itself.
    digest_key: [u8; 32],
    path: PathBuf,
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.path.display())
    }
}

impl StoreKey {
    /// Finds the key as described in the module docs; generates one beside
    /// `database_file` only when no key was configured anywhere and the
    /// database has never been sealed with one (`new_database`): a key
    /// generated for a database sealed under another key could only fail
    /// the key check, and would leave a stray file behind.
    pub fn locate(
        configured: Option<&Path>,
        database_file: &Path,
        new_database: bool,
    ) -> Result<StoreKey, KeyError> {
        if let Some(path) = configured {
            return StoreKey::read(path);
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join("mail2ticket.key");
            if path.exists() {
                // systemd owns this directory and who may read it.
                return StoreKey::read_trusted(&path);
            }
        }
        let mut name = database_file.as_os_str().to_owned();
        name.push(".key");
        let path = PathBuf::from(name);
        if path.exists() {
            StoreKey::read(&path)
        } else if new_database {
            StoreKey::generate(&path)
        } else {
            Err(KeyError::Missing { beside: path })
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a key file that only its owner may read: a key others can
    /// read unseals every stored token, so it is refused, not warned about.
    fn read(path: &Path) -> Result<StoreKey, KeyError> {
        let meta = std::fs::metadata(path).map_err(|e| KeyError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::File {
                path: path.to_path_buf(),
                reason: format!(
                    "group or others may access it (mode {:03o}); run `chmod 600 {}` \
                     (as its owner, the daemon's user)",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
        StoreKey::read_trusted(path)
    }

    fn read_trusted(path: &Path) -> Result<StoreKey, KeyError> {
        let fail = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let bytes = decode_hex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                fail("expected 64 hex digits (e.g. from `openssl rand -hex 32`)".into())
            })?;
        Ok(StoreKey::from_bytes(&bytes, path))
    }

    fn generate(path: &Path) -> Result<StoreKey, KeyError> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| KeyError::File {
                path: path.to_path_buf(),
                reason: format!("cannot create: {e}"),
            })?;
        writeln!(file, "{}", encode_hex(&key))
            .and_then(|()| file.sync_all())
            .map_err(|e| KeyError::File {
                path: path.to_path_buf(),
                reason: format!("cannot write: {e}"),
            })?;
        tracing::info!(path = %path.display(), "generated a new store key; back it up with the database");
        Ok(StoreKey::from_bytes(&key, path))
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> StoreKey {
        let digest_key = Sha256::new()
            .chain_update(b"mail2ticket digest key\0")
            .chain_update(bytes)
            .finalize()
            .into();
        StoreKey {
            cipher: XChaCha20Poly1305::new(Key::from_slice(bytes)),
            digest_key,
            path: path.to_path_buf(),
        }
    }

    /// A keyed digest (hex): equal inputs give equal digests, but nobody
    /// without the key can test a guess against it. For noticing that a
    /// secret changed without storing anything derived from it in the clear.
    pub fn digest(&self, data: &[u8]) -> String {
        let hash = Sha256::new()
            .chain_update(self.digest_key)
            .chain_update(data)
            .finalize();
        encode_hex(&hash)
    }

    /// Encrypts `plain`, binding it to `context` (e.g. the row it belongs
    /// to) so a sealed value cannot be moved to another row.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plain,
            aad: context,
        };
        // Encryption only fails for messages beyond 256 GiB.
        let sealed = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`seal`](Self::seal) produced with the same context.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let wrong = || KeyError::Wrong {
            path: self.path.clone(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| wrong())
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_others_may_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.key");
        std::fs::write(&path, "ab".repeat(32)).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err =
            StoreKey::locate(Some(&path), &dir.path().join("m.db"), false).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("mode 640") && text.contains(&format!("chmod 600 {}", path.display())),
            "{text}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        StoreKey::locate(Some(&path), &dir.path().join("m.db"), false).expect("accepted");
    }

    #[test]
    fn generated_key_is_private_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("m.db");
        let key = StoreKey::locate(None, &db, true).expect("generate");
        let mode = std::fs::metadata(dir.path().join("m.db.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal(b"row", b"refresh-token-value");
        assert!(!sealed.windows(7).any(|w| w == b"refresh"));
        assert_eq!(
            key.open(b"row", &sealed).expect("open"),
            b"refresh-token-value"
        );
        assert!(key.open(b"other row", &sealed).is_err(), "context is bound");

        let again = StoreKey::locate(None, &db, true).expect("re-read");
        assert_eq!(
            again.open(b"row", &sealed).expect("same key"),
            b"refresh-token-value"
        );
        std::fs::remove_file(key.path()).expect("remove the key");
        let err = StoreKey::locate(None, &db, false).expect_err("a sealed database");
        assert!(matches!(err, KeyError::Missing { .. }), "{err}");
        assert!(
            !key.path().exists(),
            "no key generated for a sealed database"
        );
    }

    #[test]
    fn wrong_key_is_an_error_not_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = StoreKey::locate(None, &dir.path().join("a.db"), true).expect("a");
        let b = StoreKey::locate(None, &dir.path().join("b.db"), true).expect("b");
        let err = b.open(b"x", &a.seal(b"x", b"secret")).unwrap_err();
        assert!(
            err.to_string().contains("does not match this database"),
            "{err}"
        );
    }

    #[test]
    fn malformed_key_file_is_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        std::fs::write(&path, "not hex").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = StoreKey::locate(Some(&path), Path::new("unused"), true).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let missing =
            StoreKey::locate(Some(&dir.path().join("nope")), Path::new("x"), true).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
