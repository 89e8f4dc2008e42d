//! Reads token usage out of an Anthropic Messages response while it streams through, without
//! buffering it: a line scanner over SSE `data:` lines (or, for a plain JSON reply, the body's
//! `usage` object), plus list prices to turn tokens into dollars.

use delegate_mcp::types::Usage;
use serde_json::Value;

/// The longest SSE line the scanner keeps; longer lines (huge text deltas) are skipped, not stored.
const MAX_LINE: usize = 1 << 20;
/// The largest non-streaming JSON body the scanner keeps to read `usage` from.
const MAX_JSON_BODY: usize = 4 << 20;

/// Scans one response as it streams; [`UsageScanner::finish`] settles what it found.
#[derive(Debug, Default)]
pub struct UsageScanner {
    json_body: bool,
    line: Vec<u8>,
    skipping_line: bool,
    body: Vec<u8>,
    /// The model the response named (`message_start` or the JSON body), if seen.
    pub model: Option<String>,
    /// Tokens so far (and their cost, after [`UsageScanner::finish`]).
    pub usage: Usage,
    /// Set when the first content delta went by: the moment of the first token.
    pub saw_first_token: bool,
}

impl UsageScanner {
    /// A scanner for a response of `content_type`: SSE unless it is `application/json`.
    pub fn new(content_type: &str) -> Self {
        UsageScanner {
            json_body: content_type.starts_with("application/json"),
            ..Default::default()
        }
    }

    /// Feeds a chunk; returns true when this chunk carried the first token.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.json_body {
            if self.body.len() + chunk.len() <= MAX_JSON_BODY {
                self.body.extend_from_slice(chunk);
            }
            return false;
        }
        let before = self.saw_first_token;
        for &b in chunk {
            if b == b'\n' {
                if !self.skipping_line {
                    let line = std::mem::take(&mut self.line);
                    self.scan_line(&line);
                }
                self.line.clear();
                self.skipping_line = false;
            } else if !self.skipping_line {
                if self.line.len() >= MAX_LINE {
                    self.skipping_line = true;
                    self.line.clear();
                } else {
                    self.line.push(b);
                }
            }
        }
        !before && self.saw_first_token
    }

    /// Call at the end of the body.
    pub fn finish(&mut self) {
        if self.json_body {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.body) {
                self.apply_message(&v);
            }
            self.body = Vec::new();
        }
        self.usage.cost_usd = cost_usd(self.model.as_deref().unwrap_or(""), &self.usage);
    }

    fn scan_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(m) = v.get("message") {
                    self.apply_message(m);
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    // message_delta carries cumulative counts: take them, never add.
                    apply_counts(&mut self.usage, u);
                }
            }
            Some("content_block_delta") => self.saw_first_token = true,
            _ => {}
        }
    }

    fn apply_message(&mut self, m: &Value) {
        if let Some(model) = m.get("model").and_then(Value::as_str) {
            self.model = Some(model.to_string());
        }
        if let Some(u) = m.get("usage") {
            apply_counts(&mut self.usage, u);
        }
    }
}

fn apply_counts(usage: &mut Usage, u: &Value) {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        usage.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        usage.output_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        usage.cache_read_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        usage.cache_write_tokens = n;
    }
}

/// List price in dollars of `usage` on `model` (per million tokens: input, output; cache reads
/// cost 0.1x input, cache writes 1.25x). Unknown models cost nothing rather than a guess.
pub fn cost_usd(model: &str, usage: &Usage) -> f64 {
    let (input, output) = if model.contains("opus-4-5") || model.contains("opus-4-6") {
        (5.0, 25.0)
    } else if model.contains("opus") {
        (15.0, 75.0)
    } else if model.contains("sonnet") {
        (3.0, 15.0)
    } else if model.contains("haiku-4") {
        (1.0, 5.0)
    } else if model.contains("haiku") {
        (0.8, 4.0)
    } else {
        (0.0, 0.0)
    };
    let m = 1_000_000.0;
    usage.input_tokens as f64 * input / m
        + usage.output_tokens as f64 * output / m
        + usage.cache_read_tokens as f64 * input * 0.1 / m
        + usage.cache_write_tokens as f64 * input * 1.25 / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_sse_split_anywhere() {
        let sse = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_read_input_tokens\":7}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n\n",
        );
        for split in [1, 3, 17, 200] {
            let mut s = UsageScanner::new("text/event-stream");
            let mut first = 0;
            for chunk in sse.as_bytes().chunks(split) {
                if s.feed(chunk) {
                    first += 1;
                }
            }
            s.finish();
            assert_eq!(first, 1);
            assert_eq!(s.usage.input_tokens, 100);
            assert_eq!(s.usage.output_tokens, 20);
            assert_eq!(s.usage.cache_read_tokens, 7);
            assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5"));
            assert!(s.usage.cost_usd > 0.0);
        }
    }

    #[test]
    fn reads_usage_from_json_and_survives_garbage() {
        let mut s = UsageScanner::new("application/json");
        s.feed(br#"{"model":"claude-haiku-4-5","usage":{"input_tokens":3,"output_tokens":4}}"#);
        s.finish();
        assert_eq!((s.usage.input_tokens, s.usage.output_tokens), (3, 4));
        let mut s = UsageScanner::new("text/event-stream");
        s.feed(&vec![b'x'; MAX_LINE + 10]);
        s.feed(b"\ndata: {not json\n\n");
        s.finish();
        assert_eq!(s.usage, Usage::default());
    }
}
