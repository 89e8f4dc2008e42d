//! The result budget: what a calling model is handed must fit its host's limit.
//!
//! Hosts cap a tool result (Claude Code refuses one over about 25,000 tokens and hands its model a
//! file name instead, so the model does not even learn the status). A result at
//! [`Detail::Normal`] therefore stays under [`NORMAL_CHARS`] characters of JSON, keeping what a
//! model acts on first: the status, the start and end of the final message, the changed files with
//! their counts, and a diff preview of whole files (smallest first) with per-file summaries of the
//! rest. [`Omitted`] says what was left out and where the rest is (the patch resource,
//! `stream_session`). The same budget serves `delegate run --json`.
//!
//! Sizes are measured as serialized JSON (escapes included), since that is what a host counts.

use serde::Serialize;
use serde_json::Value;

use crate::tools::StreamSessionOutput;
use crate::types::{ChangedFile, Detail, Event, Omitted, OmittedDiff, RunResult};

/// The most characters of JSON a result at [`Detail::Normal`] takes.
pub const NORMAL_CHARS: usize = 20_000;
/// The most characters of JSON a result at [`Detail::Summary`] takes.
pub const SUMMARY_CHARS: usize = 4_000;

/// The shares of one detail level's budget.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The whole result, as JSON.
    total: usize,
    /// The final message: this many characters from its start and as many from its end.
    message_half: usize,
    /// `error.message` and `apply_message`.
    note: usize,
    /// The entries of `changed_files`, as JSON.
    files: usize,
    /// `omitted.diff_files`, as JSON.
    diff_summaries: usize,
    /// Conflicting paths listed.
    conflicts: usize,
    /// Events a `stream_session` reply carries.
    events: usize,
    /// Any string inside an event's `data`.
    event_string: usize,
    /// Each attempt's `summary` and `error.message` (a parent of attempts).
    attempt_note: usize,
}

impl Limits {
    fn of(detail: Detail) -> Option<Limits> {
        match detail {
            Detail::Full => None,
            Detail::Normal => Some(Limits {
                total: NORMAL_CHARS,
                message_half: 2_000,
                note: 2_000,
                files: 5_000,
                diff_summaries: 2_500,
                conflicts: 50,
                events: 200,
                event_string: 1_000,
                attempt_note: 200,
            }),
            Detail::Summary => Some(Limits {
                total: SUMMARY_CHARS,
                message_half: 500,
                note: 400,
                files: 1_000,
                diff_summaries: 500,
                conflicts: 10,
                events: 50,
                event_string: 200,
                attempt_note: 60,
            }),
        }
    }
}

/// Characters `value` takes as JSON.
pub fn json_chars<T: Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_string(value).map_or(0, |json| json.len())
}

/// Characters `text` takes inside a JSON string (its escapes, without the quotes).
fn escaped_chars(text: &str) -> usize {
    json_chars(text).saturating_sub(2)
}

/// `run` cut to `detail`'s budget; unchanged (and without `omitted`) when it already fits or
/// `detail` is `full`.
pub fn run_result(run: &RunResult, detail: Detail) -> RunResult {
    let Some(limits) = Limits::of(detail) else {
        return run.clone();
    };
    if json_chars(run) <= limits.total {
        return run.clone();
    }
    let mut out = run.clone();
    let mut omitted = Omitted {
        detail,
        final_message_chars: 0,
        changed_files: 0,
        diff_files: Vec::new(),
        more_diff_files: 0,
        conflicts: 0,
        rest: rest_of(run),
    };

    let (message, cut) = cut_middle(&run.final_message, limits.message_half);
    out.final_message = message;
    omitted.final_message_chars = cut;
    if let Some(error) = &mut out.error {
        error.message = cut_end(&error.message, limits.note);
    }
    if let Some(message) = &mut out.apply_message {
        *message = cut_end(message, limits.note);
    }
    for attempt in &mut out.attempts {
        attempt.summary = cut_end(&attempt.summary, limits.attempt_note);
        if let Some(error) = &mut attempt.error {
            error.message = cut_end(&error.message, limits.attempt_note);
        }
    }
    if out.conflicts.len() > limits.conflicts {
        omitted.conflicts = (out.conflicts.len() - limits.conflicts) as u64;
        out.conflicts.truncate(limits.conflicts);
    }
    let listed = fit_count(&run.changed_files, limits.files);
    omitted.changed_files = (run.changed_files.len() - listed) as u64;
    out.changed_files.truncate(listed);

    // The diff gets what the rest leaves, with room for the per-file summaries.
    out.diff = String::new();
    out.omitted = Some(omitted.clone());
    let fixed = json_chars(&out) + limits.diff_summaries;
    let mut preview = Preview::build(
        &run.diff,
        &run.changed_files,
        limits.total.saturating_sub(fixed),
    );
    out.diff = preview.diff;
    out.diff_truncated = run.diff_truncated || !preview.left_out.is_empty();
    // The files a model most needs named are the partly shown one and the largest left out.
    preview
        .left_out
        .sort_by_key(|d| (!d.partial, std::cmp::Reverse(d.diff_chars)));
    let summaries = fit_count(&preview.left_out, limits.diff_summaries);
    omitted.more_diff_files = (preview.left_out.len() - summaries) as u64;
    omitted.diff_files = preview.left_out[..summaries].to_vec();
    out.omitted = Some(omitted);

    // Long paths or notes can still leave it over: give up the diff, then halve the lists.
    while json_chars(&out) > limits.total {
        let Some(omitted) = out.omitted.as_mut() else {
            break;
        };
        if !out.diff.is_empty() {
            out.diff.clear();
            out.diff_truncated = true;
            omitted.more_diff_files += preview.whole as u64;
            if let Some(partial) = omitted.diff_files.iter_mut().find(|d| d.partial) {
                partial.partial = false;
            }
        } else if !omitted.diff_files.is_empty() {
            let keep = omitted.diff_files.len() / 2;
            omitted.more_diff_files += (omitted.diff_files.len() - keep) as u64;
            omitted.diff_files.truncate(keep);
        } else if !out.changed_files.is_empty() {
            let keep = out.changed_files.len() / 2;
            omitted.changed_files += (out.changed_files.len() - keep) as u64;
            out.changed_files.truncate(keep);
        } else if !out.conflicts.is_empty() {
            omitted.conflicts += out.conflicts.len() as u64;
            out.conflicts.clear();
        } else if out.attempts.iter().any(|a| !a.summary.is_empty()) {
            // Each attempt's own result has its message; the comparison keeps its numbers.
            for attempt in &mut out.attempts {
                attempt.summary.clear();
            }
        } else if out.attempts.iter().any(|a| a.watch_url.is_some()) {
            for attempt in &mut out.attempts {
                attempt.watch_url = None;
            }
        } else if let Some(attempt) = out
            .attempts
            .iter_mut()
            .find(|a| a.commit.is_some() && (a.branch.is_some() || a.patch_url.is_some()))
        {
            // Its branch or patch names the change; the commit is in the attempt's own result.
            attempt.commit = None;
        } else if let Some(error) = out
            .attempts
            .iter_mut()
            .filter_map(|a| a.error.as_mut())
            .find(|e| !e.message.is_empty())
        {
            // The kind stays; the words are in the attempt's own result.
            error.message.clear();
        } else {
            break;
        }
    }
    out
}

/// `page` cut to `detail`'s budget: events compacted (no `raw`, long strings cut) and fewer of
/// them when over; a page cut short is not `done` and its cursor is the last event kept, so the
/// next call continues where this one stopped.
pub fn stream_page(mut page: StreamSessionOutput, detail: Detail) -> StreamSessionOutput {
    let Some(limits) = Limits::of(detail) else {
        return page;
    };
    let all = page.events.len();
    page.events.truncate(limits.events);
    for event in &mut page.events {
        compact_event(event, limits.event_string);
    }
    let mut used = json_chars(&StreamSessionOutput {
        events: Vec::new(),
        ..page.clone()
    });
    let mut kept = 0;
    for event in &mut page.events {
        let mut size = json_chars(event) + 1;
        if used + size > limits.total && kept == 0 {
            // The first event always goes, cut down to its one-line description if need be.
            event.data = serde_json::json!({ "summary": event.describe() });
            size = json_chars(event) + 1;
        }
        if used + size > limits.total && kept > 0 {
            break;
        }
        used += size;
        kept += 1;
    }
    if kept < all {
        page.events.truncate(kept);
        if let Some(last) = page.events.last() {
            page.next_cursor = last.seq;
        }
        page.done = false;
    }
    page
}

/// `raw` dropped and every string of `data` cut to `max_chars`; arrays and objects bounded too.
fn compact_event(event: &mut Event, max_chars: usize) {
    event.raw = None;
    compact_value(&mut event.data, max_chars, 0);
}

/// Items kept of an array (or keys of an object) inside an event's `data`.
const EVENT_ITEMS: usize = 20;
/// How deep an event's `data` is kept; deeper values become a placeholder.
const EVENT_DEPTH: usize = 4;

fn compact_value(value: &mut Value, max_chars: usize, depth: usize) {
    match value {
        Value::String(text) if text.chars().count() > max_chars => {
            *text = cut_end(text, max_chars);
        }
        Value::Array(items) => {
            if depth >= EVENT_DEPTH {
                *value = Value::String(format!("[{} items left out]", items.len()));
                return;
            }
            if items.len() > EVENT_ITEMS {
                let more = items.len() - EVENT_ITEMS;
                items.truncate(EVENT_ITEMS);
                items.push(Value::String(format!("[{more} more items left out]")));
            }
            for item in items {
                compact_value(item, max_chars, depth + 1);
            }
        }
        Value::Object(map) => {
            if depth >= EVENT_DEPTH {
                *value = Value::String(format!("[object of {} keys left out]", map.len()));
                return;
            }
            if map.len() > EVENT_ITEMS {
                let drop: Vec<String> = map.keys().skip(EVENT_ITEMS).cloned().collect();
                for key in &drop {
                    map.remove(key);
                }
                map.insert(
                    "_left_out".into(),
                    Value::String(format!("{} more keys", drop.len())),
                );
            }
            for item in map.values_mut() {
                compact_value(item, max_chars, depth + 1);
            }
        }
        _ => {}
    }
}

/// How many of `items`, from the first, fit in `budget` characters of JSON.
fn fit_count<T: Serialize>(items: &[T], budget: usize) -> usize {
    let mut used = 2;
    for (n, item) in items.iter().enumerate() {
        used += json_chars(item) + 1;
        if used > budget {
            return n;
        }
    }
    items.len()
}

/// Where the rest of a run's result is.
fn rest_of(run: &RunResult) -> String {
    let events = format!(
        "every step and message of the agent: stream_session {{run_id: \"{}\"}} (detail: \
         \"full\" for opencode's own JSON)",
        run.run_id
    );
    if run.commit.is_none() {
        return events;
    }
    let mut patch = format!(
        "the whole patch: resources/read delegate://runs/{}/patch",
        run.run_id
    );
    if let Some(url) = &run.patch_url {
        patch.push_str(&format!(" or GET {url}"));
    }
    format!("{patch}; {events}")
}

/// `text` with its middle cut out when longer than twice `half` characters: its first and last
/// `half` characters around a marker. Returns the text and the characters cut.
fn cut_middle(text: &str, half: usize) -> (String, u64) {
    let total = text.chars().count();
    if total <= 2 * half {
        return (text.to_owned(), 0);
    }
    let cut = total - 2 * half;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(total - half).collect();
    (
        format!("{head}\n[… {cut} characters left out …]\n{tail}"),
        cut as u64,
    )
}

/// `text` cut to `max` characters, with a marker when cut.
pub fn cut_end(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// One file's part of a unified diff.
struct Section<'a> {
    path: String,
    text: &'a str,
    cost: usize,
}

/// A diff preview: whole files' diffs (in their order) within a budget, then the start of the
/// next smallest one if room is left; the others summarized.
struct Preview {
    diff: String,
    /// Files whose whole diff is in `diff`.
    whole: usize,
    left_out: Vec<OmittedDiff>,
}

/// A partial file's diff is worth showing only with this much room left.
const MIN_PARTIAL_CHARS: usize = 400;

impl Preview {
    fn build(diff: &str, files: &[ChangedFile], budget: usize) -> Preview {
        let sections = split_diff(diff);
        let mut by_size: Vec<usize> = (0..sections.len()).collect();
        by_size.sort_by_key(|&i| sections[i].cost);
        let mut whole = vec![false; sections.len()];
        let mut used = 0;
        for &i in &by_size {
            if used + sections[i].cost > budget {
                break;
            }
            used += sections[i].cost;
            whole[i] = true;
        }
        let mut out = String::new();
        for (section, &whole) in sections.iter().zip(&whole) {
            if whole {
                out.push_str(section.text);
            }
        }
        let partial = by_size
            .iter()
            .copied()
            .find(|&i| !whole[i])
            .filter(|_| budget.saturating_sub(used) >= MIN_PARTIAL_CHARS);
        if let Some(i) = partial {
            out.push_str(&head_lines(sections[i].text, budget - used));
        }
        let left_out = sections
            .iter()
            .enumerate()
            .filter(|(i, _)| !whole[*i])
            .map(|(i, section)| {
                let counts = files.iter().find(|f| f.path == section.path);
                let shown = match partial == Some(i) {
                    true => escaped_chars(&head_lines(section.text, budget - used)),
                    false => 0,
                };
                OmittedDiff {
                    path: cut_end(&section.path, 300),
                    diff_chars: section.text.chars().count().saturating_sub(shown) as u64,
                    additions: counts.map_or(0, |f| f.additions),
                    deletions: counts.map_or(0, |f| f.deletions),
                    partial: partial == Some(i),
                }
            })
            .collect();
        Preview {
            diff: out,
            whole: whole.iter().filter(|w| **w).count(),
            left_out,
        }
    }
}

/// The whole lines from the start of `text` that take at most `budget` characters as JSON.
fn head_lines(text: &str, budget: usize) -> String {
    let mut used = 0;
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        let cost = escaped_chars(line);
        if used + cost > budget {
            break;
        }
        used += cost;
        end += line.len();
    }
    text[..end].to_owned()
}

/// A unified diff split at each `diff --git` header; text before the first header is a section
/// of its own with no path.
fn split_diff(diff: &str) -> Vec<Section<'_>> {
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    for line in diff.split_inclusive('\n') {
        if line.starts_with("diff --git ") || at == 0 {
            starts.push(at);
        }
        at += line.len();
    }
    starts.push(diff.len());
    starts
        .windows(2)
        .map(|w| {
            let text = &diff[w[0]..w[1]];
            Section {
                path: header_path(text),
                text,
                cost: escaped_chars(text),
            }
        })
        .filter(|s| !s.text.is_empty())
        .collect()
}

/// The path a `diff --git a/X b/X` header names (the new path of a rename); empty without one.
fn header_path(section: &str) -> String {
    let Some(header) = section
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("diff --git "))
    else {
        return String::new();
    };
    let unquote = |s: &str| s.trim_matches('"').to_owned();
    // `a/X b/X`: both halves are the same path, which may itself contain " b/".
    if let Some(rest) = header.strip_prefix("a/")
        && rest.len() >= 3
        && (rest.len() - 3) % 2 == 0
    {
        let half = (rest.len() - 3) / 2;
        if rest.is_char_boundary(half)
            && rest[half..].starts_with(" b/")
            && rest[..half] == rest[half + 3..]
        {
            return rest[..half].to_owned();
        }
    }
    match header.rfind(" b/").or_else(|| header.rfind(" \"b/")) {
        Some(at) => unquote(&header[at + 1..])
            .trim_start_matches("b/")
            .to_owned(),
        None => unquote(header),
    }
}

/// The text a client that reads only `content` gets for a (budgeted) run: the same essentials as
/// the structured result, as prose and a fenced diff.
pub fn run_text(run: &RunResult) -> String {
    if !run.attempts.is_empty() {
        return attempts_text(run);
    }
    if !run.status.is_terminal() {
        return format!(
            "run {} is {} in sandbox {}; follow it with stream_session(run_id: \"{}\")",
            run.run_id, run.status, run.sandbox_id, run.run_id
        );
    }
    let mut text = format!("run {} {}", run.run_id, run.status);
    if let Some(error) = &run.error {
        text.push_str(&format!(" ({}: {})", error.kind.as_str(), error.message));
    }
    let message = run.final_message.trim();
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(message);
    }
    text.push_str(&format!(
        "\n\nduration {:.1}s; {} tokens, ${:.4}; sandbox {}",
        run.duration_ms as f64 / 1000.0,
        run.usage.total_tokens(),
        run.usage.cost_usd,
        run.sandbox_id
    ));
    let omitted = run.omitted.as_ref();
    if run.changed_files.is_empty() && omitted.is_none_or(|o| o.changed_files == 0) {
        text.push_str("\nno files changed");
    } else {
        let files: Vec<String> = run
            .changed_files
            .iter()
            .map(|f| {
                let counts = match f.binary {
                    true => "binary".to_owned(),
                    false => format!("+{} -{}", f.additions, f.deletions),
                };
                let kind = serde_json::to_value(f.change)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("{} ({kind}, {counts})", f.path)
            })
            .collect();
        text.push_str("\nchanged: ");
        text.push_str(&files.join(", "));
        if let Some(more) = omitted.map(|o| o.changed_files).filter(|n| *n > 0) {
            text.push_str(&format!(" and {more} more files"));
        }
    }
    if let Some(branch) = &run.branch {
        text.push_str(&format!("\nbranch {branch}"));
        if run.applied == Some(true) {
            text.push_str(" (applied to the working tree)");
        }
    }
    if !run.conflicts.is_empty() {
        text.push_str(&format!(
            "\nnot applied, conflicts: {}",
            run.conflicts.join(", ")
        ));
    } else if let Some(message) = &run.apply_message {
        text.push_str(&format!("\n{message}"));
    }
    if let Some(url) = &run.watch_url {
        text.push_str(&format!("\nwatch: {url}"));
    }
    if !run.diff.is_empty() {
        text.push_str("\n\ndiff");
        if run.diff_truncated {
            text.push_str(" (preview)");
        }
        text.push_str(":\n```diff\n");
        text.push_str(&run.diff);
        if !run.diff.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("```");
    }
    if let Some(omitted) = omitted {
        let mut left: Vec<String> = omitted
            .diff_files
            .iter()
            .map(|d| {
                let shown = if d.partial { ", its start shown" } else { "" };
                format!(
                    "{} (+{} -{}, {} characters of diff{shown})",
                    d.path, d.additions, d.deletions, d.diff_chars
                )
            })
            .collect();
        if omitted.more_diff_files > 0 {
            left.push(format!("{} more files", omitted.more_diff_files));
        }
        if !left.is_empty() {
            text.push_str("\ndiff left out: ");
            text.push_str(&left.join(", "));
        }
        text.push_str(&format!(
            "\n\nThis result is cut to detail \"{}\". The rest: {}.",
            omitted.detail.as_str(),
            omitted.rest
        ));
    } else if run.diff_truncated {
        text.push_str(&format!(
            "\n\nThe diff is cut short. The rest: {}.",
            rest_of(run)
        ));
    }
    text
}

/// A parent of attempts for people: its status, then one line per attempt to compare.
fn attempts_text(run: &RunResult) -> String {
    let mut text = format!(
        "run {} {} ({} attempts, ${:.4} in all)",
        run.run_id,
        run.status,
        run.attempts.len(),
        run.usage.cost_usd
    );
    if !run.status.is_terminal() {
        text.push_str(&format!(
            "; follow it with stream_session(run_id: \"{}\")",
            run.run_id
        ));
    }
    for (i, attempt) in run.attempts.iter().enumerate() {
        text.push_str(&format!("\n{}. {}", i + 1, attempt.describe()));
    }
    if run.status.is_terminal() {
        text.push_str("\n\nApply the attempt you choose with apply_changes and its run_id.");
    }
    if let Some(message) = &run.apply_message {
        text.push_str(&format!("\n{message}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChangeKind, RunStatus, Usage};

    fn run(final_message: &str, files: Vec<ChangedFile>, diff: String) -> RunResult {
        RunResult {
            run_id: "run_1".into(),
            sandbox_id: "sbx_1".into(),
            status: RunStatus::Succeeded,
            final_message: final_message.into(),
            changed_files: files,
            diff,
            diff_truncated: false,
            usage: Usage::default(),
            duration_ms: 1000,
            event_count: 9,
            error: None,
            watch_url: None,
            queue_position: None,
            base: None,
            commit: Some("c0ffee".into()),
            branch: Some("delegate/run_1".into()),
            applied: None,
            conflicts: Vec::new(),
            apply_message: None,
            patch_url: None,
            egress: None,
            parent_run_id: None,
            attempts: Vec::new(),
            omitted: None,
        }
    }

    #[test]
    fn eight_attempts_fit_every_budget() {
        let attempt = |i: usize| crate::types::Attempt {
            run_id: format!("run_{i:032}"),
            sandbox_id: format!("sbx_{i:032}"),
            status: RunStatus::Failed,
            files_changed: 40,
            additions: 1200,
            deletions: 300,
            cost_usd: 0.1234,
            duration_ms: 61_000,
            summary: "s".repeat(crate::types::ATTEMPT_SUMMARY_CHARS),
            commit: Some("c".repeat(40)),
            branch: Some(format!("delegate/{i:08}")),
            patch_url: Some(format!(
                "https://delegate.example/api/runs/run_{i:032}/patch"
            )),
            watch_url: Some(format!("https://delegate.example/runs/run_{i:032}")),
            error: Some(crate::types::RunError {
                kind: crate::types::ErrorKind::AgentFailed,
                message: "e".repeat(5_000),
            }),
        };
        let mut parent = run("8 attempts", Vec::new(), String::new());
        parent.attempts = (0..8).map(attempt).collect();
        for (detail, max) in [
            (Detail::Summary, SUMMARY_CHARS),
            (Detail::Normal, NORMAL_CHARS),
        ] {
            let cut = run_result(&parent, detail);
            assert!(json_chars(&cut) <= max, "{detail:?}: {}", json_chars(&cut));
            assert_eq!(cut.attempts.len(), 8, "every attempt stays listed");
            for a in &cut.attempts {
                // What a host compares on is never cut.
                assert_eq!((a.files_changed, a.additions, a.deletions), (40, 1200, 300));
                assert!(a.branch.is_some() && a.patch_url.is_some());
            }
        }
        let text = run_text(&parent);
        assert_eq!(
            text.lines().filter(|l| l.contains("+1200 -300")).count(),
            8,
            "{text}"
        );
    }

    fn added(path: &str, lines: usize, line: &str) -> (ChangedFile, String) {
        let mut diff = format!(
            "diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{lines} @@\n"
        );
        for _ in 0..lines {
            diff.push('+');
            diff.push_str(line);
            diff.push('\n');
        }
        let file = ChangedFile {
            additions: lines as u64,
            ..ChangedFile::new(path, ChangeKind::Added)
        };
        (file, diff)
    }

    fn assert_fits(result: &RunResult, detail: Detail) {
        let limit = Limits::of(detail).unwrap().total;
        let size = json_chars(result);
        assert!(size <= limit, "{size} characters over {limit}");
    }

    #[test]
    fn a_small_result_is_unchanged() {
        let (file, diff) = added("hello.txt", 1, "hello");
        let small = run("done", vec![file], diff);
        for detail in [Detail::Summary, Detail::Normal, Detail::Full] {
            assert_eq!(run_result(&small, detail), small);
        }
    }

    #[test]
    fn one_huge_file_keeps_a_partial_preview_and_a_summary() {
        // 2.5 MB in one file, with quotes and tabs that JSON escapes.
        let (big, big_diff) = added(
            "big.txt",
            30_000,
            "\"quoted\"\tline of about a hundred characters ..........................................",
        );
        assert!(big_diff.len() > 2_500_000);
        let (small, small_diff) = added("small.txt", 3, "three lines");
        let whole = run(
            "wrote them",
            vec![big, small],
            format!("{big_diff}{small_diff}"),
        );
        assert!(json_chars(&whole) > 2_500_000);
        let cut = run_result(&whole, Detail::Normal);
        assert_fits(&cut, Detail::Normal);
        assert_eq!(cut.status, RunStatus::Succeeded);
        assert_eq!(cut.changed_files.len(), 2);
        assert!(cut.diff_truncated);
        // The small file whole, first; then the start of the big one.
        assert!(cut.diff.starts_with(&small_diff), "{}", &cut.diff[..200]);
        assert!(cut.diff.contains("+++ b/big.txt"));
        assert!(
            cut.diff.len() > 10_000,
            "a useful preview: {}",
            cut.diff.len()
        );
        let omitted = cut.omitted.as_ref().unwrap();
        assert_eq!(omitted.diff_files.len(), 1);
        let left = &omitted.diff_files[0];
        assert_eq!(
            (left.path.as_str(), left.additions, left.partial),
            ("big.txt", 30_000, true)
        );
        assert!(left.diff_chars > 2_400_000, "{}", left.diff_chars);
        assert!(omitted.rest.contains("delegate://runs/run_1/patch"));
        let text = run_text(&cut);
        assert!(
            text.starts_with("run run_1 succeeded: wrote them"),
            "{text}"
        );
        assert!(
            text.contains("changed: big.txt (added, +30000 -0)"),
            "{text}"
        );
        assert!(text.contains("+three lines"), "{text}");
        assert!(text.len() < NORMAL_CHARS + 2_000, "{}", text.len());

        let summary = run_result(&whole, Detail::Summary);
        assert_fits(&summary, Detail::Summary);
        assert_eq!(summary.changed_files.len(), 2);
        assert_eq!(run_result(&whole, Detail::Full), whole);
    }

    #[test]
    fn five_thousand_files_are_listed_first_and_counted() {
        let mut files = Vec::new();
        let mut diff = String::new();
        for n in 0..5_000 {
            let (file, part) = added(&format!("src/module_{n:04}.rs"), 2, "fn f() {}");
            files.push(file);
            diff.push_str(&part);
        }
        let whole = run("generated", files, diff);
        for detail in [Detail::Normal, Detail::Summary] {
            let cut = run_result(&whole, detail);
            assert_fits(&cut, detail);
            let omitted = cut.omitted.as_ref().unwrap();
            let listed = cut.changed_files.len();
            assert!(listed > 5, "{detail:?}: {listed} listed");
            assert_eq!(listed as u64 + omitted.changed_files, 5_000);
            assert_eq!(cut.changed_files[0].path, "src/module_0000.rs");
            // Whole files in the preview, the others summarized or counted.
            let shown = cut.diff.matches("diff --git").count();
            assert!(shown > 0, "{detail:?}");
            let partial = usize::from(omitted.diff_files.iter().any(|d| d.partial));
            assert_eq!(
                shown - partial + omitted.diff_files.len() + omitted.more_diff_files as usize,
                5_000,
                "{detail:?}"
            );
            assert!(run_text(&cut).contains("more files"));
        }
    }

    #[test]
    fn a_long_final_message_keeps_its_start_and_end() {
        let message = format!("START {} END", "x".repeat(100_000));
        let whole = run(&message, Vec::new(), String::new());
        let cut = run_result(&whole, Detail::Normal);
        assert_fits(&cut, Detail::Normal);
        assert!(cut.final_message.starts_with("START "));
        assert!(cut.final_message.ends_with(" END"));
        let omitted = cut.omitted.unwrap();
        assert_eq!(omitted.final_message_chars, 100_010 - 4_000);
        assert!(cut.final_message.contains("96010 characters left out"));
    }

    #[test]
    fn five_hundred_events_page_by_size() {
        let events: Vec<Event> = (1..=500)
            .map(|seq| Event {
                seq,
                ts: 1_700_000_000_000,
                kind: "tool".into(),
                data: serde_json::json!({
                    "tool": "write",
                    "status": "completed",
                    "input": {"content": "y".repeat(5_000)},
                }),
                raw: Some(serde_json::json!({"part": {"state": {"output": "z".repeat(5_000)}}})),
            })
            .collect();
        let page = StreamSessionOutput {
            run_id: "run_1".into(),
            status: RunStatus::Succeeded,
            events,
            next_cursor: 500,
            done: true,
        };
        assert!(json_chars(&page) > 5_000_000);
        for detail in [Detail::Normal, Detail::Summary] {
            let cut = stream_page(page.clone(), detail);
            let limit = Limits::of(detail).unwrap().total;
            assert!(
                json_chars(&cut) <= limit,
                "{detail:?}: {}",
                json_chars(&cut)
            );
            assert!(!cut.events.is_empty());
            assert!(cut.events.len() < 500);
            assert!(cut.events.iter().all(|e| e.raw.is_none()));
            assert!(!cut.done, "a page cut short is not done");
            assert_eq!(cut.next_cursor, cut.events.last().unwrap().seq);
            assert_eq!(cut.events[0].seq, 1);
        }
        let full = stream_page(page.clone(), Detail::Full);
        assert_eq!(full, page);
    }

    #[test]
    fn a_huge_single_event_still_goes() {
        let mut data = serde_json::Map::new();
        for n in 0..100 {
            data.insert(format!("k{n:03}"), Value::String("v".repeat(10_000)));
        }
        let page = StreamSessionOutput {
            run_id: "run_1".into(),
            status: RunStatus::Running,
            events: vec![Event {
                seq: 7,
                ts: 0,
                kind: "odd".into(),
                data: Value::Object(data),
                raw: None,
            }],
            next_cursor: 7,
            done: false,
        };
        let cut = stream_page(page, Detail::Summary);
        assert_eq!(cut.events.len(), 1);
        assert!(json_chars(&cut) <= SUMMARY_CHARS, "{}", json_chars(&cut));
        assert_eq!(cut.next_cursor, 7);
    }

    #[test]
    fn header_paths() {
        assert_eq!(header_path("diff --git a/x b/x\n"), "x");
        assert_eq!(header_path("diff --git a/a b/c b/a b/c\n"), "a b/c");
        assert_eq!(header_path("diff --git a/old b/new\n"), "new");
        assert_eq!(header_path("+hello\n"), "");
    }
}
