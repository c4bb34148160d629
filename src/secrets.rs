//! Hook secrets at rest. They must be readable to sign, so they are sealed with an AEAD
//! (XChaCha20-Poly1305, RustCrypto) under a key kept in a file outside the database: a
//! copied database file alone reveals no secret. Each sealed value is bound to its hook
//! id (associated data), so sealed secrets cannot be swapped between rows.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Reads the key file, or creates it (mode 0600) when `may_create`: only a new
    /// database may get a new key; for an existing one a missing key is an error.
    pub fn load_or_create(path: &Path, may_create: bool) -> Result<SecretBox, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = STANDARD
                    .decode(text.trim())
                    .map_err(|_| format!("{} is not a hookd key file", path.display()))?;
                let key: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| format!("{} does not hold a 32-byte key", path.display()))?;
                Ok(SecretBox::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                let mut key = [0u8; 32];
                crate::ids::random_bytes(&mut key);
                write_new_key(path, &key)?;
                log::info!("created the secrets key file {}", path.display());
                Ok(SecretBox::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "the secrets key file {} is missing, and the database already holds hooks \
                 sealed with it; restore the key file (or point --secrets-key-file at it)",
                path.display()
            )),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Seals `plain` for the row `id`.
    pub fn seal(&self, plain: &str, id: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        crate::ids::random_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 sealing cannot fail for in-memory input");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed for the row `id`; fails on a wrong key or a tampered value.
    pub fn open(&self, sealed: &str, id: &str) -> Result<String, String> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or("not a sealed value")?;
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| "cannot open a sealed secret: wrong key file, or the value was altered")?;
        String::from_utf8(plain).map_err(|_| "a sealed secret is not text".to_string())
    }
}

#[cfg(unix)]
fn write_new_key(path: &Path, key: &[u8; 32]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create the key file {}: {e}", path.display()))?;
    writeln!(f, "{}", STANDARD.encode(key))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write the key file {}: {e}", path.display()))
}

#[cfg(not(unix))]
fn write_new_key(path: &Path, key: &[u8; 32]) -> Result<(), String> {
    std::fs::write(path, format!("{}\n", STANDARD.encode(key)))
        .map_err(|e| format!("cannot create the key file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_bound_to_the_row() {
        let b = SecretBox::from_key(&[7u8; 32]);
        let sealed = b.seal("whsec_abc", "hook_1");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(b.open(&sealed, "hook_1").unwrap(), "whsec_abc");
        assert!(b.open(&sealed, "hook_2").is_err(), "bound to its row");
        assert!(SecretBox::from_key(&[8u8; 32])
            .open(&sealed, "hook_1")
            .is_err());
        assert_ne!(
            sealed,
            b.seal("whsec_abc", "hook_1"),
            "fresh nonce each time"
        );
    }

    #[test]
    fn key_file_is_created_0600_once_and_required_after() {
        let dir = crate::store::test_dir("key");
        let path = dir.join("hookd.key");
        assert!(SecretBox::load_or_create(&path, false).is_err());
        let a = SecretBox::load_or_create(&path, true).unwrap();
        let sealed = a.seal("s", "h");
        let b = SecretBox::load_or_create(&path, false).unwrap();
        assert_eq!(b.open(&sealed, "h").unwrap(), "s");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
