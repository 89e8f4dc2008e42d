//! The model proxy's usage scanner on arbitrary response bodies, cut into arbitrary chunks: it
//! never panics, and the tokens and cost it settles on are never negative or NaN.
#![no_main]

use delegate_server::proxy::usage::UsageScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let content_type = if mode & 1 == 0 {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut scanner = UsageScanner::new(content_type);
    // The low bits of each chunk's first byte choose where the next chunk ends.
    let mut rest = body;
    while !rest.is_empty() {
        let cut = (usize::from(rest[0] % 64) + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(cut);
        scanner.feed(chunk);
        rest = tail;
    }
    scanner.finish();
    let cost = scanner.usage.cost_usd;
    assert!(cost.is_finite() && cost >= 0.0, "cost {cost}");
});
