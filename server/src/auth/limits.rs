//! Login rate limiting: at most [`MAX_FAILURES`] failed sign-ins per email and per client IP within
//! [`WINDOW`]. In memory (per server process) and bounded: past [`MAX_KEYS`] tracked keys, the
//! stalest are dropped first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts allowed per key within the window.
pub const MAX_FAILURES: usize = 10;
/// The sliding window.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Keys tracked at most (emails plus IPs), so a flood of made-up emails cannot grow memory.
pub const MAX_KEYS: usize = 100_000;

/// Failed logins per key (`email:...`, `ip:...`).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    /// Whether any of `keys` is over the limit now.
    pub fn blocked(&self, keys: &[String]) -> bool {
        let now = Instant::now();
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter().any(|k| {
            map.get_mut(k).is_some_and(|times| {
                times.retain(|t| now.duration_since(*t) < WINDOW);
                times.len() >= MAX_FAILURES
            })
        })
    }

    /// Records a failed attempt under each key.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() + keys.len() > MAX_KEYS {
            map.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < WINDOW);
                !times.is_empty()
            });
            while map.len() + keys.len() > MAX_KEYS {
                let Some(stalest) = map
                    .iter()
                    .min_by_key(|(_, times)| times.last().copied())
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&stalest);
            }
        }
        for k in keys {
            let times = map.entry(k.clone()).or_default();
            times.retain(|t| now.duration_since(*t) < WINDOW);
            // Never more entries per key than the limit needs.
            if times.len() >= MAX_FAILURES {
                times.remove(0);
            }
            times.push(now);
        }
    }

    /// A successful login forgets the email's failures (not the IP's).
    pub fn succeeded(&self, email_key: &str) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(email_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_per_key() {
        let l = LoginLimiter::default();
        let keys = ["email:a".to_string(), "ip:1".to_string()];
        for _ in 0..MAX_FAILURES {
            assert!(!l.blocked(&keys));
            l.failed(&keys);
        }
        assert!(l.blocked(&keys));
        assert!(l.blocked(&["ip:1".to_string()]), "the IP alone is blocked");
        assert!(!l.blocked(&["email:b".to_string(), "ip:2".to_string()]));
        l.succeeded("email:a");
        assert!(!l.blocked(&["email:a".to_string()]));
    }
}
