//! A sandbox's `setup` script: run before the task (a warm sandbox: once, at creation), its
//! output lines become bounded `setup` events, and a failure keeps the output's tail for the
//! error message.

use std::collections::VecDeque;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::log::RunLog;
use super::{Orchestrator, Result};
use crate::ids::now_ms;
use crate::sandbox::AgentOutput;

/// At most this many output lines become events; the rest are counted.
const MAX_SETUP_EVENTS: usize = 2_000;
/// A longer line is cut to this many bytes in its event.
const MAX_LINE_BYTES: usize = 4 << 10;
/// How much of the output's end a failure message carries.
pub(super) const TAIL_BYTES: usize = 2 << 10;

/// How a setup script ended.
#[derive(Debug)]
pub(super) enum SetupEnd {
    /// It exited 0.
    Done,
    /// It exited non-zero or was killed by the kernel; the message says how, with the tail.
    Failed(String),
    /// The run's time ran out.
    TimedOut,
    /// Somebody cancelled.
    Cancelled,
}

/// The last [`TAIL_BYTES`] of output, whole lines where possible.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.bytes > TAIL_BYTES && self.lines.len() > 1 {
            if let Some(gone) = self.lines.pop_front() {
                self.bytes -= gone.len() + 1;
            }
        }
    }

    fn text(&self) -> String {
        let text = self.lines.iter().cloned().collect::<Vec<_>>().join("\n");
        if text.len() <= TAIL_BYTES {
            return text;
        }
        // One line longer than the tail: keep its end, on a character boundary.
        let mut start = text.len() - TAIL_BYTES;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }
}

fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_string();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

impl Orchestrator {
    /// Runs `script` in the sandbox until it ends, `deadline` passes or `cancel` fires. Each
    /// output line goes to `log` as a `setup` event when there is one (a run's setup).
    pub(super) async fn run_setup(
        &self,
        sandbox_id: &str,
        script: &str,
        deadline: Instant,
        cancel: &CancellationToken,
        mut log: Option<&mut RunLog>,
    ) -> Result<SetupEnd> {
        let stop = cancel.child_token();
        // One stream, so the tail is in the order the script wrote it (two pipes read apart
        // would let an error on stderr overtake the stdout lines before it). On the first
        // line, so the script's line numbers stay as written.
        let merged = format!("exec 2>&1; {script}");
        let mut output = self
            .inner
            .backend
            .run_setup(sandbox_id, &merged, stop.clone())
            .await?;
        let mut tail = Tail::default();
        let mut shown = 0usize;
        let mut hidden = 0usize;
        let mut ended_by = None;
        let exit = loop {
            let item = tokio::select! {
                item = output.recv() => item,
                _ = tokio::time::sleep_until(deadline), if ended_by.is_none() => {
                    ended_by = Some(SetupEnd::TimedOut);
                    stop.cancel();
                    continue;
                }
                _ = cancel.cancelled(), if ended_by.is_none() => {
                    ended_by = Some(SetupEnd::Cancelled);
                    stop.cancel();
                    continue;
                }
            };
            let (stream, line) = match item {
                Some(AgentOutput::Stdout(l)) => ("stdout", l),
                Some(AgentOutput::Stderr(l)) => ("stderr", l),
                Some(AgentOutput::Exited(info)) => break Some(info),
                None => break None,
            };
            tail.push(&line);
            let Some(log) = log.as_deref_mut() else {
                continue;
            };
            if shown < MAX_SETUP_EVENTS {
                shown += 1;
                log.append(
                    now_ms(),
                    "setup",
                    json!({ "stream": stream, "line": cut(&line) }),
                    None,
                )
                .await?;
            } else {
                hidden += 1;
            }
        };
        if hidden > 0
            && let Some(log) = log
        {
            log.append(
                now_ms(),
                "setup",
                json!({ "stream": "delegate", "line": format!("{hidden} more lines not shown"), "omitted": hidden }),
                None,
            )
            .await?;
        }
        if let Some(end) = ended_by {
            return Ok(end);
        }
        let tail = tail.text();
        let how = match exit {
            Some(info) if info.code == Some(0) => return Ok(SetupEnd::Done),
            Some(info) if info.oom => "was killed for running out of memory".to_string(),
            Some(info) => match info.code {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            },
            None => "ended without an exit status".to_string(),
        };
        Ok(SetupEnd::Failed(if tail.is_empty() {
            format!("setup: the script {how} and printed nothing")
        } else {
            format!("setup: the script {how}; its output ended with:\n{tail}")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_two_kib() {
        let mut tail = Tail::default();
        for i in 0..1000 {
            tail.push(&format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.len() <= TAIL_BYTES);
        assert!(text.ends_with("line 999"));
        assert!(!text.contains("line 1\n"));
        let mut one = Tail::default();
        one.push(&"é".repeat(3000));
        assert!(one.text().len() <= TAIL_BYTES);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let line = "é".repeat(5000);
        let cut = cut(&line);
        assert!(cut.len() <= MAX_LINE_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
