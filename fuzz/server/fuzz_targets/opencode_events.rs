//! opencode's event lines (`opencode run --format json` stdout and `opencode serve`'s SSE data) on
//! arbitrary text: parsing never panics, and what a person reads of an event stays short.
#![no_main]

use delegate_server::opencode::events::{ServeTracker, parse_run_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    if let Ok(parsed) = parse_run_line(&line) {
        assert!(parsed.event.summary().chars().count() <= 200);
        let _ = parsed.to_event(1, 0);
    }
    let mut tracker = ServeTracker::new("ses_fuzz");
    for part in line.split('\n') {
        let _ = tracker.push(part);
    }
});
