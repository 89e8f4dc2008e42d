//! Passwords: argon2id hashes (PHC strings with their own salt and parameters), computed on the
//! blocking pool because one hash takes tens of milliseconds of CPU. Plain passwords are never
//! logged or stored.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Accepted password lengths, in characters: long enough to matter, short enough that hashing an
/// attacker's input stays cheap.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// See [`MIN_PASSWORD_CHARS`].
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// Why a password could not be accepted or hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The password is shorter than [`MIN_PASSWORD_CHARS`] or longer than [`MAX_PASSWORD_CHARS`].
    #[error("the password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long")]
    Policy,
    /// argon2 failed; the message is for the log.
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Checks the password policy.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    let n = password.chars().count();
    if (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        Ok(())
    } else {
        Err(PasswordError::Policy)
    }
}

/// The argon2id hash of `password` (after the policy check), off the async runtime.
pub async fn hash(password: &str) -> Result<String, PasswordError> {
    check_policy(password)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| PasswordError::Hashing(e.to_string()))?
}

/// Whether `password` matches `phc` (an argon2 PHC string), off the async runtime. A malformed
/// stored hash never matches.
pub async fn verify(password: &str, phc: Option<String>) -> bool {
    // Without a stored hash, verify against a fixed one anyway, so an unknown account costs the
    // same time as a wrong password (no probing for accounts by timing).
    let phc = phc.unwrap_or_else(|| DUMMY_HASH.to_string());
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// argon2id of a random string nobody knows, with the default parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$eBqV5zRkV8kb0Q0nJ8ZVdE7b6xV3P5kqEPqLqg0uHZQ";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_the_policy_holds() {
        let h = hash("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify("correct horse battery", Some(h.clone())).await);
        assert!(!verify("wrong horse battery", Some(h)).await);
        assert!(!verify("anything at all", None).await);
        assert!(!verify("anything at all", Some("not a hash".into())).await);
        assert!(matches!(hash("short").await, Err(PasswordError::Policy)));
        assert!(matches!(
            hash(&"x".repeat(MAX_PASSWORD_CHARS + 1)).await,
            Err(PasswordError::Policy)
        ));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
