//! What the accounts and authorization tests share on top of [`crate::common::serve`]: the check
//! that no secret ever shows up in a response body or in the log.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub use crate::common::serve::{Account, Reply, Server, logs};

/// Asserts that none of `hidden` occurs in any response body or in the log, and that each of
/// `shown_once` (a token or invite code, returned at its creation) occurs in exactly one body and
/// never in the log.
pub fn assert_never_shown(server: &Server, hidden: &[String], shown_once: &[String]) {
    let bodies = server.bodies.lock().unwrap().clone();
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "the log capture works");
    for s in hidden.iter().chain(shown_once) {
        assert!(s.len() >= 16, "a real secret: {s:?}");
        assert!(!logs.contains(s.as_str()), "the log carried {s:?}");
    }
    for s in hidden {
        assert!(
            !bodies.iter().any(|b| b.contains(s.as_str())),
            "a response body carried {s:?}"
        );
    }
    for s in shown_once {
        let n = bodies.iter().filter(|b| b.contains(s.as_str())).count();
        assert_eq!(n, 1, "{s:?} shown in {n} bodies, not once");
    }
}
