//! One operation per sandbox at a time. A run, a pause or a resume first reserves the sandbox;
//! the [`Reservation`] it gets releases the sandbox when it is dropped, so every way out (an
//! error, an early return, the end of a run, a panic unwinding) frees it, and nothing else can.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Error, Result, lock};
use crate::ids::RunId;

/// The sandboxes held right now, each with the run holding it (`None` until a run is recorded,
/// and for a pause or resume).
#[derive(Default)]
pub(super) struct Reservations {
    held: Arc<Mutex<HashMap<String, Option<RunId>>>>,
    /// Woken whenever a reservation is released.
    released: Arc<tokio::sync::Notify>,
}

impl Reservations {
    /// Reserves a sandbox for one operation; while the guard lives, a second reserve gets `Busy`.
    pub(super) fn reserve(&self, sandbox_id: &str) -> Result<Reservation> {
        let mut held = lock(&self.held);
        if held.contains_key(sandbox_id) {
            return Err(Error::Busy(sandbox_id.to_string()));
        }
        held.insert(sandbox_id.to_string(), None);
        Ok(Reservation {
            held: self.held.clone(),
            released: self.released.clone(),
            sandbox_id: sandbox_id.to_string(),
        })
    }

    /// Waits until nothing holds the sandbox, at most `limit`; whether it is free.
    pub(super) async fn free(&self, sandbox_id: &str, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a release between the two is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !lock(&self.held).contains_key(sandbox_id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return false;
            }
        }
    }

    /// Whether the sandbox is held, and by which run: `Some(None)` while an operation that is
    /// not a run (or a run not yet recorded) holds it.
    pub(super) fn holder(&self, sandbox_id: &str) -> Option<Option<RunId>> {
        lock(&self.held).get(sandbox_id).cloned()
    }
}

/// A sandbox held by one operation; dropping it releases the sandbox.
#[must_use = "the sandbox is released as soon as the reservation is dropped"]
pub(super) struct Reservation {
    held: Arc<Mutex<HashMap<String, Option<RunId>>>>,
    released: Arc<tokio::sync::Notify>,
    sandbox_id: String,
}

impl Reservation {
    pub(super) fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// Records the run that holds the sandbox, so deleting the sandbox can cancel it.
    pub(super) fn hold_for_run(&self, run_id: &RunId) {
        if let Some(holder) = lock(&self.held).get_mut(&self.sandbox_id) {
            *holder = Some(run_id.clone());
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // `lock` shrugs off poisoning, so this cannot panic while unwinding.
        lock(&self.held).remove(&self.sandbox_id);
        self.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_held_sandbox_is_busy_until_its_reservation_drops() {
        let reservations = Reservations::default();
        let first = reservations.reserve("sbx_a").unwrap();
        assert!(matches!(
            reservations.reserve("sbx_a"),
            Err(Error::Busy(id)) if id == "sbx_a"
        ));
        // Other sandboxes are not affected.
        let other = reservations.reserve("sbx_b").unwrap();
        assert_eq!(reservations.holder("sbx_a"), Some(None));
        let run = RunId::new();
        first.hold_for_run(&run);
        assert_eq!(reservations.holder("sbx_a"), Some(Some(run)));
        drop(first);
        assert_eq!(reservations.holder("sbx_a"), None);
        let again = reservations.reserve("sbx_a").unwrap();
        assert_eq!(again.sandbox_id(), "sbx_a");
        assert_eq!(reservations.holder("sbx_b"), Some(None));
        drop(other);
        assert_eq!(reservations.holder("sbx_b"), None);
    }

    #[tokio::test]
    async fn waiting_for_a_sandbox_ends_when_its_holder_lets_go() {
        let reservations = Arc::new(Reservations::default());
        assert!(reservations.free("sbx_a", Duration::ZERO).await);
        let held = reservations.reserve("sbx_a").unwrap();
        assert!(!reservations.free("sbx_a", Duration::from_millis(50)).await);
        let waiter = {
            let reservations = reservations.clone();
            tokio::spawn(async move { reservations.free("sbx_a", Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter saw the release");
    }

    #[test]
    fn a_panic_while_holding_releases_the_sandbox() {
        let reservations = Reservations::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = reservations.reserve("sbx_a").unwrap();
            panic!("the operation failed");
        }));
        assert!(panicked.is_err());
        assert_eq!(reservations.holder("sbx_a"), None);
        let _again = reservations.reserve("sbx_a").unwrap();
    }
}
