//! Identifiers and secrets: prefixed, time-ordered ids for rows, and random tokens whose SHA-256 is
//! all the database ever sees.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new id like `run_0192f3...`: a prefix saying what it names, then a UUIDv7 (time-ordered, so
/// ids sort by creation).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A new random secret with a prefix (`dlg_` API tokens, `dsb_` sandbox proxy tokens).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The hex SHA-256 of a secret: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Whether `s` looks like an id with `prefix` (cheap validation of ids from the outside).
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_have_their_shape() {
        let id = new_id("run");
        assert!(is_id("run", &id), "{id}");
        assert!(!is_id("sbx", &id));
        assert!(!is_id("run", "run_../../etc"));
        let s = new_secret("dsb_");
        assert_eq!(s.len(), 4 + 64);
        assert_ne!(hash_secret(&s), s);
        assert_eq!(hash_secret(&s).len(), 64);
    }
}
