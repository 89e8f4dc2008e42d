//! A run's append-only event log, live: each event is written to the store first, then broadcast.
//! A subscriber replays from any cursor out of the store, then follows the broadcast; when it falls
//! behind (the broadcast is bounded) it re-reads the gap from the store instead of losing events.

use std::sync::Arc;

use delegate_mcp::types::Event;
use futures::Stream;
use tokio::sync::{broadcast, watch};

use crate::ids::RunId;
use crate::store::{NewEvent, Store, StoreError};

/// How many live events a slow subscriber may lag before it re-reads from the store.
const BROADCAST_CAPACITY: usize = 1024;
/// Rows per store page while replaying.
const PAGE: i64 = 500;
/// The most events a run keeps. Past it, one `truncated` event says so and the agent's further
/// output is dropped; `status` events (the run's own progress and its end) are always kept.
pub const MAX_RUN_EVENTS: u64 = 50_000;
/// The kind of the one event that says a run's log was cut at [`MAX_RUN_EVENTS`].
pub const TRUNCATED_EVENT: &str = "truncated";

/// The writer side of one active run's log; closing it (or dropping it) completes the log.
pub struct RunLog {
    shared: Arc<Shared>,
}

/// A second writer of an active run's log, for events that arrive beside the agent's output (the
/// egress proxy's connections). It appends only while the log is open and never closes it.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    run_id: String,
    store: Arc<dyn Store>,
    /// Held across the store write, so sequence numbers stay gapless with two writers.
    next_seq: tokio::sync::Mutex<Seq>,
    /// [`MAX_RUN_EVENTS`], smaller in tests.
    max_events: u64,
    tx: broadcast::Sender<Event>,
    done: watch::Sender<bool>,
    /// Secret values replaced by `[secret NAME]` in every event before it is stored.
    redactor: Redactor,
}

/// Replaces the values of a sandbox's secrets with `[secret NAME]`.
#[derive(Clone, Default)]
pub struct Redactor {
    /// (value, replacement), longest value first so a secret containing another is replaced
    /// whole.
    pairs: Arc<[(String, String)]>,
}

impl Redactor {
    /// A redactor for these (name, value) secrets; empty values are skipped (they would match
    /// everywhere).
    pub fn new(secrets: &[(String, crate::settings::Secret)]) -> Redactor {
        let mut pairs: Vec<(String, String)> = secrets
            .iter()
            .filter(|(_, v)| !v.expose().is_empty())
            .map(|(name, v)| (v.expose().to_string(), format!("[secret {name}]")))
            .collect();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Redactor {
            pairs: pairs.into(),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `text` with every secret value replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (value, replacement) in self.pairs.iter() {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), replacement);
            }
        }
        out
    }

    /// Redacts every string (keys included) of a JSON value in place.
    pub fn json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => {
                let redacted = self.text(s);
                if redacted != *s {
                    *s = redacted;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            serde_json::Value::Object(map) => {
                let needs_key = map.keys().any(|k| self.text(k) != *k);
                if needs_key {
                    let old = std::mem::take(map);
                    for (k, mut v) in old {
                        self.json(&mut v);
                        map.insert(self.text(&k), v);
                    }
                } else {
                    map.values_mut().for_each(|v| self.json(v));
                }
            }
            _ => {}
        }
    }
}

/// What a subscriber needs of an active run.
#[derive(Clone)]
pub struct LiveLog {
    tx: broadcast::Sender<Event>,
    done: watch::Receiver<bool>,
}

impl RunLog {
    /// The log of `run_id`; `redactor` scrubs every event before it is stored.
    pub fn new(run_id: &RunId, store: Arc<dyn Store>, redactor: Redactor) -> (RunLog, LiveLog) {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (done, done_rx) = watch::channel(false);
        (
            RunLog {
                shared: Arc::new(Shared {
                    run_id: run_id.to_string(),
                    store,
                    next_seq: tokio::sync::Mutex::new(Seq {
                        next: 1,
                        truncated: None,
                    }),
                    max_events: MAX_RUN_EVENTS,
                    tx: tx.clone(),
                    done,
                    redactor,
                }),
            },
            LiveLog { tx, done: done_rx },
        )
    }

    /// Appends one event (sequence numbers from 1, no gaps) and tells subscribers.
    // `&mut`: the run's driver is the log's one owner; other writers go through `writer()`.
    #[allow(clippy::needless_pass_by_ref_mut)]
    pub async fn append(
        &mut self,
        ts: i64,
        kind: &str,
        data: serde_json::Value,
        raw: Option<serde_json::Value>,
    ) -> Result<Event, StoreError> {
        self.shared.append(ts, kind, data, raw).await
    }

    /// Another writer of this log, which appends only while it is open.
    pub fn writer(&self) -> LogWriter {
        LogWriter {
            shared: self.shared.clone(),
        }
    }

    /// What this log scrubs, for the run's result.
    pub fn redactor(&self) -> &Redactor {
        &self.shared.redactor
    }

    /// Marks the log complete: followers drain and stop.
    pub fn close(&self) {
        let _ = self.shared.done.send(true);
    }
}

impl LogWriter {
    /// Appends one event unless the log is already complete (`Ok(None)` then).
    pub async fn append(
        &self,
        ts: i64,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Option<Event>, StoreError> {
        if *self.shared.done.borrow() {
            return Ok(None);
        }
        self.shared.append(ts, kind, data, None).await.map(Some)
    }
}

/// Where a log is: the next sequence number, and the `truncated` event once it was cut.
struct Seq {
    next: u64,
    truncated: Option<Event>,
}

impl Shared {
    async fn append(
        &self,
        ts: i64,
        kind: &str,
        mut data: serde_json::Value,
        mut raw: Option<serde_json::Value>,
    ) -> Result<Event, StoreError> {
        self.redactor.json(&mut data);
        if let Some(raw) = raw.as_mut() {
            self.redactor.json(raw);
        }
        let mut next_seq = self.next_seq.lock().await;
        if next_seq.next > self.max_events && kind != "status" {
            if let Some(marker) = &next_seq.truncated {
                return Ok(marker.clone());
            }
            let marker = self
                .write(
                    &mut next_seq,
                    ts,
                    TRUNCATED_EVENT,
                    serde_json::json!({
                        "message": format!(
                            "this run logged {} events; the agent's further output is not \
                             kept (its status and result still are)",
                            self.max_events
                        ),
                        "max_events": self.max_events,
                    }),
                    None,
                )
                .await?;
            next_seq.truncated = Some(marker.clone());
            return Ok(marker);
        }
        self.write(&mut next_seq, ts, kind, data, raw).await
    }

    /// Stores and broadcasts one event as the next in sequence.
    async fn write(
        &self,
        next_seq: &mut Seq,
        ts: i64,
        kind: &str,
        data: serde_json::Value,
        raw: Option<serde_json::Value>,
    ) -> Result<Event, StoreError> {
        let event = NewEvent {
            run_id: self.run_id.clone(),
            seq: next_seq.next,
            ts,
            kind: kind.to_string(),
            data,
            raw,
        };
        self.store
            .append_events(std::slice::from_ref(&event))
            .await?;
        next_seq.next += 1;
        let event = Event {
            seq: event.seq,
            ts: event.ts,
            kind: event.kind,
            data: event.data,
            raw: event.raw,
        };
        // No receivers is fine: nobody is watching live.
        let _ = self.tx.send(event.clone());
        Ok(event)
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Events of `run_id` after `after`: the stored ones, then live ones while the run is active.
/// The stream ends when the run's log is complete and every event has been yielded.
pub fn follow(
    store: Arc<dyn Store>,
    run_id: RunId,
    after: u64,
    live: Option<LiveLog>,
) -> impl Stream<Item = Result<Event, StoreError>> + Send {
    async_stream::try_stream! {
        let mut cursor = after;
        // Subscribe before replaying, so nothing written in between is missed.
        let mut sub = live.as_ref().map(|l| (l.tx.subscribe(), l.done.clone()));
        loop {
            let page = store.events_after(run_id.as_str(), cursor, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for e in page {
                cursor = e.seq;
                yield e;
            }
            if !full {
                break;
            }
        }
        let Some((rx, done)) = sub.as_mut() else {
            return;
        };
        loop {
            if *done.borrow() {
                // Complete: whatever is left is in the store.
                loop {
                    let page = store.events_after(run_id.as_str(), cursor, PAGE).await?;
                    if page.is_empty() {
                        return;
                    }
                    for e in page {
                        cursor = e.seq;
                        yield e;
                    }
                }
            }
            enum Next {
                Event(Event),
                Gap,
                Wait,
            }
            let next = tokio::select! {
                received = rx.recv() => match received {
                    Ok(e) if e.seq <= cursor => Next::Wait,
                    Ok(e) if e.seq == cursor + 1 => Next::Event(e),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Next::Gap,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = done.changed().await;
                        Next::Wait
                    }
                },
                _ = done.changed() => Next::Wait,
            };
            match next {
                Next::Event(e) => {
                    cursor = e.seq;
                    yield e;
                }
                Next::Gap => {
                    // Fell behind the broadcast: read the gap from the store.
                    for e in store.events_after(run_id.as_str(), cursor, PAGE).await? {
                        cursor = e.seq;
                        yield e;
                    }
                }
                Next::Wait => {}
            }
        }
    }
}

impl LiveLog {
    pub(super) fn done_rx(&mut self) -> &mut watch::Receiver<bool> {
        &mut self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Run, Sandbox, SandboxKind, User, Workspace};
    use delegate_mcp::types::{RunStatus, SandboxStatus};

    #[tokio::test]
    async fn a_log_past_its_cap_says_so_once_and_keeps_status_events() {
        let store = crate::store::connect("sqlite::memory:").await.unwrap();
        let user = User {
            id: "u".into(),
            email: "u@example.com".into(),
            name: "U".into(),
            created_at: 1,
        };
        store.create_user(&user).await.unwrap();
        let ws = Workspace {
            id: "w".into(),
            slug: "w".into(),
            name: "W".into(),
            created_at: 1,
        };
        store.create_workspace(&ws, "u").await.unwrap();
        store
            .insert_sandbox(&Sandbox {
                id: "s".into(),
                workspace_id: "w".into(),
                name: "s".into(),
                kind: SandboxKind::Ephemeral,
                backend: "process".into(),
                status: SandboxStatus::Running,
                status_reason: None,
                idle_timeout_s: None,
                meta: serde_json::json!({}),
                created_by: None,
                created_at: 1,
                updated_at: 1,
                base: None,
            })
            .await
            .unwrap();
        let run_id = RunId::new();
        store
            .insert_run(&Run {
                id: run_id.to_string(),
                sandbox_id: "s".into(),
                workspace_id: "w".into(),
                task: "t".into(),
                model: None,
                agent: None,
                status: RunStatus::Running,
                timeout_s: 60,
                created_by: None,
                created_at: 1,
                started_at: Some(1),
                finished_at: None,
                parent_run_id: None,
                outcome: Default::default(),
            })
            .await
            .unwrap();
        let (mut log, _) = RunLog::new(&run_id, store.clone(), Redactor::default());
        Arc::get_mut(&mut log.shared).unwrap().max_events = 3;
        for i in 0..10 {
            log.append(i, "text", serde_json::json!({ "i": i }), None)
                .await
                .unwrap();
        }
        log.append(
            20,
            "status",
            serde_json::json!({ "status": "succeeded" }),
            None,
        )
        .await
        .unwrap();
        let kept = store.events_after(run_id.as_str(), 0, 100).await.unwrap();
        let kinds: Vec<&str> = kept.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["text", "text", "text", TRUNCATED_EVENT, "status"]);
        assert_eq!(kept.last().unwrap().seq, 5, "no gaps");
    }
}
