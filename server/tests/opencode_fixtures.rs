//! The opencode normalizer (`delegate_server::opencode::events`) against real opencode 1.18.33 output captured
//! in `shared/fixtures/opencode` (see its README), plus malformed input.
//!
//! The fixtures live outside the repository: set `DELEGATE_FIXTURES` to their directory, or keep the
//! default layout (`../shared/fixtures/opencode` next to the repository root). Without the variable
//! and without the directory the fixture tests print "skipped" and pass, so a bare checkout still
//! builds; with the variable set, or under `DELEGATE_REQUIRE_ALL`, a missing directory is a failure.

use std::path::PathBuf;

use delegate_mcp::types::{ErrorKind, Usage};
use delegate_server::opencode::events::{
    AgentEvent, ParseError, ParsedEvent, ServeEvent, ServeTracker, classify_error, parse_run_line,
};
use serde_json::{Value, json};

/// The fixture directory, or `None` (after saying so) when it is absent and nobody asked for it.
fn fixtures() -> Option<PathBuf> {
    let (dir, explicit) = match std::env::var_os("DELEGATE_FIXTURES") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures/opencode"
            )),
            false,
        ),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        !explicit,
        "DELEGATE_FIXTURES={} is not a directory of opencode fixtures",
        dir.display()
    );
    delegate_testkit::real::unavailable(
        "opencode fixtures",
        &format!("not found at {}", dir.display()),
    )
}

fn read(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every non-blank line of a `run --format json` fixture, parsed.
fn run_events(dir: &std::path::Path, name: &str) -> Vec<ParsedEvent> {
    read(dir, name)
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse_run_line(line).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1)))
        .collect()
}

fn the_error(events: &[ParsedEvent]) -> (&AgentEvent, ErrorKind) {
    let errors: Vec<&AgentEvent> = events
        .iter()
        .map(|e| &e.event)
        .filter(|e| matches!(e, AgentEvent::Error { .. }))
        .collect();
    assert_eq!(errors.len(), 1, "expected exactly one error: {events:#?}");
    let kind = errors[0].error_kind().expect("errors have a kind");
    (errors[0], kind)
}

#[test]
fn every_run_fixture_line_parses() {
    let Some(dir) = fixtures() else { return };
    let mut files = 0;
    let mut lines = 0;
    for entry in std::fs::read_dir(&dir).expect("listing fixtures") {
        let path = entry.expect("fixture entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.ends_with(".stdout.jsonl") {
            continue;
        }
        files += 1;
        for event in run_events(&dir, &name) {
            lines += 1;
            assert!(
                event
                    .session_id
                    .as_deref()
                    .is_some_and(|s| s.starts_with("ses_")),
                "{name}: {event:?}"
            );
            assert!(
                event.ts.is_some_and(|t| t > 1_700_000_000_000),
                "{name}: {event:?}"
            );
            // The fixtures contain only types delegate interprets.
            assert!(
                !matches!(event.event, AgentEvent::Other { .. }),
                "{name}: {event:?}"
            );
            assert!(!event.event.summary().is_empty());
            assert!(event.event.data().is_object());
        }
    }
    assert!(
        files >= 10,
        "only {files} *.stdout.jsonl files in {}",
        dir.display()
    );
    assert!(lines > 0);
}

#[test]
fn ok_cold_normalizes_to_six_events() {
    let Some(dir) = fixtures() else { return };
    let events = run_events(&dir, "ok_cold.stdout.jsonl");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            "step_start",
            "tool",
            "step_finish",
            "step_start",
            "text",
            "step_finish"
        ]
    );

    match &events[1].event {
        AgentEvent::Tool {
            tool,
            call_id,
            status,
            title,
            input,
            output,
            error,
        } => {
            assert_eq!(tool, "write");
            assert!(call_id.starts_with("toolu_"));
            assert_eq!(status, "completed");
            assert_eq!(title.as_deref(), Some("hello.txt"));
            assert_eq!(input["filePath"], "hello.txt");
            assert_eq!(input["content"], "hi\n");
            assert_eq!(output.as_deref(), Some("Wrote file successfully."));
            assert_eq!(*error, None);
        }
        other => panic!("expected a tool event, got {other:?}"),
    }
    assert_eq!(
        events[1].event.summary(),
        "tool write hello.txt (completed)"
    );

    let first_step = AgentEvent::StepFinish {
        reason: Some("tool-calls".to_owned()),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: 0.0006,
        },
    };
    assert_eq!(events[2].event, first_step);
    assert_eq!(
        events[2].event.summary(),
        "step finished (tool-calls, 120 tokens)"
    );
    assert_eq!(
        events[2].event.data(),
        json!({"reason": "tool-calls", "usage": {"input_tokens": 100, "output_tokens": 20,
            "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": 0.0006}})
    );
    assert_eq!(
        events[4].event,
        AgentEvent::Text {
            text: "done".to_owned()
        }
    );
    assert_eq!(events[4].event.summary(), "text: done");
    assert!(
        matches!(&events[5].event, AgentEvent::StepFinish { reason: Some(r), .. } if r == "stop")
    );

    let final_message = events.iter().rev().find_map(|e| match &e.event {
        AgentEvent::Text { text } => Some(text.as_str()),
        _ => None,
    });
    assert_eq!(final_message, Some("done"));

    let mut total = Usage::default();
    for e in &events {
        if let AgentEvent::StepFinish { usage, .. } = &e.event {
            total.add(usage);
        }
    }
    assert_eq!((total.input_tokens, total.output_tokens), (200, 40));
    assert!((total.cost_usd - 0.0012).abs() < 1e-12);

    // The raw line and its timestamp survive, and the wire event is built from them.
    assert_eq!(events[0].raw["type"], "step_start");
    let wire = events[1].to_event(7, 0);
    assert_eq!(wire.seq, 7);
    assert_eq!(wire.kind, "tool");
    assert_eq!(wire.ts, events[1].ts.unwrap_or_default());
    assert_eq!(wire.data["call_id"], events[1].event.data()["call_id"]);
    assert_eq!(wire.raw.as_ref(), Some(&events[1].raw));
}

#[test]
fn upstream_errors_are_classified() {
    let Some(dir) = fixtures() else { return };

    for name in ["err401.stdout.jsonl", "attach_err401.stdout.jsonl"] {
        let events = run_events(&dir, name);
        assert_eq!(events.len(), 1);
        let (error, kind) = the_error(&events);
        assert_eq!(
            *error,
            AgentEvent::Error {
                name: "APIError".to_owned(),
                message: "invalid x-api-key".to_owned(),
                status_code: Some(401),
                retryable: Some(false),
            }
        );
        assert_eq!(kind, ErrorKind::UpstreamAuth, "{name}");
        assert_eq!(error.summary(), "error APIError: invalid x-api-key");
        assert_eq!(error.data()["error_kind"], "upstream_auth");
        assert_eq!(error.data()["status_code"], 401);
    }

    for name in [
        "err529_fastretry.stdout.jsonl",
        "err529_defaultbackoff.stdout.jsonl",
        "err500_fastretry.stdout.jsonl",
    ] {
        let events = run_events(&dir, name);
        let (error, kind) = the_error(&events);
        assert_eq!(kind, ErrorKind::UpstreamUnavailable, "{name}: {error:?}");
        assert!(matches!(
            error,
            AgentEvent::Error {
                retryable: Some(true),
                ..
            }
        ));
    }

    // An SSE `event: error` mid-stream: one step_start per attempt, then an UnknownError carrying
    // Anthropic's overloaded_error JSON as its message — the upstream stayed overloaded.
    let events = run_events(&dir, "err_midstream.stdout.jsonl");
    assert_eq!(events.len(), 7);
    assert!(events[..6].iter().all(|e| e.event == AgentEvent::StepStart));
    let (error, kind) = the_error(&events);
    assert!(
        matches!(error, AgentEvent::Error { name, status_code: None, .. } if name == "UnknownError")
    );
    assert_eq!(kind, ErrorKind::UpstreamUnavailable);
}

#[test]
fn classify_error_rules() {
    use ErrorKind::*;
    let cases: &[(&str, Option<u16>, &str, ErrorKind)] = &[
        ("APIError", Some(401), "invalid x-api-key", UpstreamAuth),
        ("APIError", Some(403), "forbidden", UpstreamAuth),
        ("APIError", Some(429), "rate limited", UpstreamUnavailable),
        (
            "APIError",
            Some(500),
            "Internal server error",
            UpstreamUnavailable,
        ),
        ("APIError", Some(503), "unavailable", UpstreamUnavailable),
        ("APIError", Some(529), "Overloaded", UpstreamUnavailable),
        ("APIError", None, "Overloaded", UpstreamUnavailable),
        ("APIError", Some(400), "prompt is too long", UpstreamError),
        ("APIError", None, "something", UpstreamError),
        ("ProviderAuthError", None, "no key", UpstreamAuth),
        (
            "UnknownError",
            None,
            r#"{"type":"overloaded_error","message":"Overloaded"}"#,
            UpstreamUnavailable,
        ),
        (
            "UnknownError",
            None,
            r#"{"type":"error","error":{"type":"authentication_error","message":"x"}}"#,
            UpstreamAuth,
        ),
        (
            "UnknownError",
            None,
            r#"{"type":"invalid_request_error","message":"x"}"#,
            UpstreamError,
        ),
        ("UnknownError", None, r#"{"type":"thing"}"#, AgentFailed),
        ("UnknownError", None, "Overloaded", AgentFailed),
        ("UnknownError", Some(500), "boom", AgentFailed),
        ("MessageAbortedError", None, "aborted", AgentFailed),
        ("", None, "", AgentFailed),
    ];
    for (name, status, message, want) in cases {
        assert_eq!(
            classify_error(name, *status, message),
            *want,
            "{name} {status:?} {message}"
        );
    }
}

#[test]
fn serve_event_stream_folds_to_the_run_events() {
    let Some(dir) = fixtures() else { return };
    let text = read(&dir, "http_api.events.jsonl");
    let mut tracker = ServeTracker::new("ses_de2b6deebffeM0Xq4JJFPieq6H");
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let event = tracker
            .push(line)
            .unwrap_or_else(|e| panic!("http_api.events.jsonl:{}: {e}", i + 1));
        out.push(event);
    }

    let stored: Vec<&ParsedEvent> = out
        .iter()
        .filter_map(|e| match e {
            ServeEvent::Event(p) => Some(p),
            _ => None,
        })
        .collect();
    let kinds: Vec<&str> = stored.iter().map(|p| p.event.kind()).collect();
    // `message.part.updated` here is the `patch` part; `file.edited` names no session and is kept.
    assert_eq!(
        kinds,
        [
            "step_start",
            "file.edited",
            "tool",
            "step_finish",
            "message.part.updated",
            "step_start",
            "text",
            "step_finish"
        ]
    );
    let normalized: Vec<&AgentEvent> = stored
        .iter()
        .map(|p| &p.event)
        .filter(|e| !matches!(e, AgentEvent::Other { .. }))
        .collect();
    assert!(
        matches!(normalized[1], AgentEvent::Tool { tool, status, input, .. }
        if tool == "write" && status == "completed" && input["filePath"] == "hello.txt")
    );
    assert_eq!(
        *normalized[4],
        AgentEvent::Text {
            text: "done".to_owned()
        }
    );
    // The user's prompt never shows up as text.
    assert!(
        !stored
            .iter()
            .any(|p| p.event.summary().contains("create hello.txt"))
    );
    assert_eq!(stored[4].raw["properties"]["part"]["type"], "patch");
    // Every part update carries the server's `properties.time` and its session.
    for p in stored.iter().filter(|p| p.event.kind() != "file.edited") {
        assert!(p.ts.is_some_and(|t| t > 1_700_000_000_000), "{p:?}");
        assert_eq!(
            p.session_id.as_deref(),
            Some("ses_de2b6deebffeM0Xq4JJFPieq6H")
        );
    }

    assert_eq!(out.last(), Some(&ServeEvent::Idle));
    assert_eq!(out.iter().filter(|e| **e == ServeEvent::Idle).count(), 1);
    assert!(out.contains(&ServeEvent::Status("busy".to_owned())));
    assert_eq!(out.first(), Some(&ServeEvent::Ignore)); // server.connected
    assert!(!out.contains(&ServeEvent::OtherSession));

    // The same stream watched for another session yields nothing of this one.
    let mut other = ServeTracker::new("ses_someone_else");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match other.push(line).expect("parses") {
            ServeEvent::Event(p) => assert!(p.session_id.is_none(), "{p:?}"),
            ServeEvent::Idle | ServeEvent::Status(_) => panic!("status of a foreign session"),
            ServeEvent::Ignore | ServeEvent::OtherSession => {}
        }
    }
}

#[test]
fn serve_events_by_hand() {
    let mut t = ServeTracker::new("ses_a");
    let push = |t: &mut ServeTracker, v: Value| t.push(&v.to_string()).expect("parses");

    // A user message's parts are dropped even when finished.
    push(
        &mut t,
        json!({"type": "message.updated", "properties": {"sessionID": "ses_a",
        "info": {"id": "msg_u", "role": "user", "sessionID": "ses_a"}}}),
    );
    let user_text = json!({"type": "message.part.updated", "properties": {"sessionID": "ses_a",
        "part": {"type": "text", "text": "hi", "messageID": "msg_u", "sessionID": "ses_a",
        "time": {"start": 1, "end": 2}}, "time": 3}});
    assert_eq!(push(&mut t, user_text), ServeEvent::Ignore);

    // A tool that failed is kept with its error; a running one is not.
    let tool = |status: &str| {
        json!({"type": "message.part.updated", "properties": {"sessionID": "ses_a",
        "part": {"type": "tool", "tool": "bash", "callID": "c1", "messageID": "msg_b", "sessionID": "ses_a",
        "state": {"status": status, "input": {"command": "false"}, "error": "exit 1"}}, "time": 5}})
    };
    assert_eq!(push(&mut t, tool("running")), ServeEvent::Ignore);
    match push(&mut t, tool("error")) {
        ServeEvent::Event(p) => {
            assert_eq!(p.ts, Some(5));
            assert_eq!(p.event.summary(), "tool bash (error): exit 1");
            assert_eq!(p.event.data()["error"], "exit 1");
        }
        other => panic!("{other:?}"),
    }

    // Finished reasoning is kept, unfinished is not.
    let reasoning = |end: Value| {
        json!({"type": "message.part.updated", "properties": {"sessionID": "ses_a",
        "part": {"type": "reasoning", "text": "hmm", "messageID": "msg_b", "sessionID": "ses_a",
        "time": {"start": 1, "end": end}}, "time": 5}})
    };
    assert_eq!(push(&mut t, reasoning(Value::Null)), ServeEvent::Ignore);
    assert!(matches!(
        push(&mut t, reasoning(json!(9))),
        ServeEvent::Event(ParsedEvent {
            event: AgentEvent::Reasoning { .. },
            ..
        })
    ));

    // session.error, with the APIError shape from the OpenAPI document.
    let err = json!({"type": "session.error", "properties": {"sessionID": "ses_a", "error": {"name": "APIError",
        "data": {"message": "Overloaded", "statusCode": 529, "isRetryable": true}}}});
    match push(&mut t, err) {
        ServeEvent::Event(p) => {
            assert_eq!(p.event.error_kind(), Some(ErrorKind::UpstreamUnavailable));
            assert_eq!(p.event.summary(), "error APIError: Overloaded");
        }
        other => panic!("{other:?}"),
    }
    // ... also when it names no session, and without details.
    assert!(matches!(
        push(&mut t, json!({"type": "session.error", "properties": {}})),
        ServeEvent::Event(ParsedEvent {
            event: AgentEvent::Error { .. },
            ..
        })
    ));

    // Status: retry text, the deprecated session.idle, other sessions.
    let retry = json!({"type": "session.status", "properties": {"sessionID": "ses_a",
        "status": {"type": "retry", "attempt": 2, "message": "Overloaded", "next": 99}}});
    assert_eq!(
        push(&mut t, retry),
        ServeEvent::Status("retrying (attempt 2): Overloaded".to_owned())
    );
    assert_eq!(
        push(
            &mut t,
            json!({"type": "session.idle", "properties": {"sessionID": "ses_a"}})
        ),
        ServeEvent::Idle
    );
    assert_eq!(
        push(
            &mut t,
            json!({"type": "session.idle", "properties": {"sessionID": "ses_b"}})
        ),
        ServeEvent::OtherSession
    );
    assert_eq!(
        push(
            &mut t,
            json!({"type": "message.part.delta", "properties": {"sessionID": "ses_a", "delta": "x"}})
        ),
        ServeEvent::Ignore
    );
    assert_eq!(
        push(
            &mut t,
            json!({"type": "server.heartbeat", "properties": {}})
        ),
        ServeEvent::Ignore
    );

    // Unknown events of this session are kept whole.
    let asked = json!({"type": "permission.asked", "properties": {"id": "per_1", "sessionID": "ses_a",
        "permission": "bash", "patterns": ["rm *"], "metadata": {}, "always": []}});
    match push(&mut t, asked.clone()) {
        ServeEvent::Event(p) => {
            assert_eq!(
                p.event,
                AgentEvent::Other {
                    kind: "permission.asked".to_owned()
                }
            );
            assert_eq!(p.raw, asked);
        }
        other => panic!("{other:?}"),
    }

    // Malformed payloads are errors, not panics.
    assert!(matches!(
        t.push("not json"),
        Err(ParseError::NotJson { .. })
    ));
    assert!(matches!(
        t.push("[1]"),
        Err(ParseError::NotObject { found: "array" })
    ));
    assert!(matches!(
        t.push(r#"{"properties":{}}"#),
        Err(ParseError::MissingType)
    ));
    assert!(matches!(t.push(""), Err(ParseError::Empty)));
    // A payload with a non-object `properties` still parses.
    assert!(matches!(
        t.push(r#"{"type":"x.y","properties":7}"#),
        Ok(ServeEvent::Event(_))
    ));
}

#[test]
fn malformed_run_lines_give_clear_errors() {
    let err = parse_run_line("opencode: warning, something happened").unwrap_err();
    assert!(matches!(err, ParseError::NotJson { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("not JSON") && msg.contains("something happened"),
        "{msg}"
    );

    let err = parse_run_line(r#"[{"type":"text"}]"#).unwrap_err();
    assert!(matches!(err, ParseError::NotObject { found: "array" }));
    assert_eq!(
        err.to_string(),
        "opencode event is JSON array, not an object"
    );

    assert!(matches!(
        parse_run_line("42"),
        Err(ParseError::NotObject { found: "number" })
    ));
    assert!(matches!(
        parse_run_line(r#"{"part":{}}"#),
        Err(ParseError::MissingType)
    ));
    assert!(matches!(
        parse_run_line(r#"{"type":7}"#),
        Err(ParseError::MissingType)
    ));
    assert!(
        parse_run_line(r#"{"type":7}"#)
            .unwrap_err()
            .to_string()
            .contains("\"type\"")
    );
    assert!(matches!(parse_run_line(""), Err(ParseError::Empty)));
    assert!(matches!(parse_run_line("  \t "), Err(ParseError::Empty)));

    // 1 MiB of garbage made of multi-byte characters: the excerpt stays short and whole.
    let garbage = "é€🦀x".repeat(1024 * 1024 / 10);
    assert!(garbage.len() >= 1024 * 1024 - 16);
    match parse_run_line(&garbage) {
        Err(ParseError::NotJson { excerpt, .. }) => {
            assert!(
                excerpt.chars().count() <= 200,
                "{}",
                excerpt.chars().count()
            );
            assert!(excerpt.starts_with("é€🦀x"));
        }
        other => panic!("{other:?}"),
    }
    assert!(parse_run_line(&garbage).unwrap_err().to_string().len() < 1200);

    // A 1 MiB JSON line that stops mid-string.
    let truncated = format!(
        r#"{{"type":"text","part":{{"text":"{}"#,
        "a".repeat(1024 * 1024)
    );
    assert!(matches!(
        parse_run_line(&truncated),
        Err(ParseError::NotJson { .. })
    ));

    // Invalid UTF-8, replaced as a lossy reader would: garbage stays an error, and inside a JSON
    // string it is just text.
    let lossy = String::from_utf8_lossy(b"\xff\xfe{\"type\":\"text\"}").into_owned();
    assert!(matches!(
        parse_run_line(&lossy),
        Err(ParseError::NotJson { .. })
    ));
    let lossy =
        String::from_utf8_lossy(b"{\"type\":\"text\",\"part\":{\"text\":\"a\xffb\"}}").into_owned();
    let parsed = parse_run_line(&lossy).expect("replacement characters are valid text");
    assert_eq!(
        parsed.event,
        AgentEvent::Text {
            text: "a\u{fffd}b".to_owned()
        }
    );
}

#[test]
fn unknown_and_partial_run_lines_are_kept() {
    let parsed = parse_run_line(r#"{"type":"brand_new","x":1}"#).expect("parses");
    assert_eq!(
        parsed.event,
        AgentEvent::Other {
            kind: "brand_new".to_owned()
        }
    );
    assert_eq!(parsed.event.kind(), "brand_new");
    assert_eq!(parsed.raw, json!({"type": "brand_new", "x": 1}));
    assert_eq!(parsed.session_id, None);
    assert_eq!(parsed.ts, None);
    assert_eq!(parsed.event.data(), json!({}));
    assert_eq!(parsed.to_event(1, 1234).ts, 1234);

    // A known type without its part is not invented into an empty event.
    let parsed = parse_run_line(r#"{"type":"text","timestamp":5}"#).expect("parses");
    assert_eq!(
        parsed.event,
        AgentEvent::Other {
            kind: "text".to_owned()
        }
    );
    assert_eq!(parsed.ts, Some(5));

    // An error line is an error even without details.
    let parsed = parse_run_line(r#"{"type":"error"}"#).expect("parses");
    assert!(matches!(&parsed.event, AgentEvent::Error { name, .. } if name == "UnknownError"));
    assert_eq!(parsed.event.error_kind(), Some(ErrorKind::AgentFailed));

    // Float token counts and timestamps (the schema says "number").
    let parsed = parse_run_line(
        r#"{"type":"step_finish","timestamp":1.5e12,"part":{"tokens":{"input":10.0,"output":-1,"cache":{"read":3,"write":4}},"cost":0.5}}"#,
    )
    .expect("parses");
    assert_eq!(parsed.ts, Some(1_500_000_000_000));
    assert_eq!(
        parsed.event,
        AgentEvent::StepFinish {
            reason: None,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 0,
                cache_read_tokens: 3,
                cache_write_tokens: 4,
                cost_usd: 0.5
            }
        }
    );
    assert_eq!(parsed.event.summary(), "step finished (17 tokens)");
}

#[test]
fn summaries_are_short_single_lines() {
    let long = AgentEvent::Text {
        text: format!("line one\nline two {}", "🦀".repeat(500)),
    };
    let summary = long.summary();
    assert!(
        summary.chars().count() <= 100,
        "{}",
        summary.chars().count()
    );
    assert!(!summary.contains('\n'));
    assert!(summary.starts_with("text: line one line two"));
    assert!(summary.ends_with('…'));

    assert_eq!(AgentEvent::StepStart.summary(), "step started");
    assert_eq!(
        AgentEvent::Other {
            kind: "file.edited".to_owned()
        }
        .summary(),
        "event file.edited"
    );
}
