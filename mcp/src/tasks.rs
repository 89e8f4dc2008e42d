//! `run_in_sandbox` as an MCP task (the Tasks extension, SEP-2663: `io.modelcontextprotocol/tasks`,
//! the successor of the 2025-11-25 protocol's task-augmented requests, as rmcp implements it).
//!
//! A client that declares the extension gets a task back from `run_in_sandbox` at once instead of
//! waiting for the run; it polls `tasks/get` (the run's last activity as `statusMessage`, the
//! tool's result inlined once it ended), may block on `tasks/result` (the 2025-11-25 method, kept
//! for clients that wait rather than poll) and stops the run with `tasks/cancel`.
//!
//! The registry lives as long as the server, not the connection, so a task outlives the HTTP
//! request and session that made it. A task is only visible to the user who started it: anyone
//! else is told it does not exist. Entries are bounded ([`MAX_TASKS`]) and swept on every access:
//! an ended task is kept for [`RETAIN_ENDED`] after its end and at least until its advertised TTL.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rmcp::{
    ErrorData,
    model::{CallToolResult, DetailedTask, JsonObject, Task, TaskPayload, TaskStatus},
    task_manager::current_timestamp,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tasks kept at most (working and ended); past it the oldest ended one makes room, and when all
/// are working a new one is refused.
pub const MAX_TASKS: usize = 1000;
/// How long an ended task stays readable after its end (and at least until its TTL).
pub const RETAIN_ENDED: Duration = Duration::from_secs(3600);
/// The polling interval suggested to clients.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The longest `statusMessage` (the run's last activity), in characters.
const MAX_STATUS_CHARS: usize = 300;

/// How a task's work ended.
#[derive(Debug)]
pub enum TaskEnd {
    /// The tool call finished: its result (a failed run or a refused request is still a result,
    /// `isError` or `status` says so).
    Completed(CallToolResult),
    /// The run ended `cancelled` after `tasks/cancel`; the message names the run.
    Cancelled(String),
    /// The call failed with a protocol error.
    Failed(ErrorData),
}

struct Entry {
    owner: String,
    task: Task,
    payload: TaskPayload,
    cancel: CancellationToken,
    /// Set once the work ended; the flag flips to true for [`RunTasks::wait`].
    ended: watch::Sender<bool>,
    /// Not swept before this instant (the TTL advertised at creation).
    keep_until: Instant,
    ended_at: Option<Instant>,
}

impl Entry {
    fn detailed(&self) -> DetailedTask {
        DetailedTask::new(self.task.clone(), self.payload.clone())
    }

    fn touch(&mut self) {
        self.task.last_updated_at = current_timestamp();
    }

    fn removable(&self, now: Instant) -> bool {
        self.ended_at
            .is_some_and(|ended| now >= self.keep_until.max(ended + RETAIN_ENDED))
    }
}

/// The tasks of one server: shared by every connection and session (cheap to clone).
#[derive(Clone, Default)]
pub struct RunTasks {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for RunTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTasks").finish_non_exhaustive()
    }
}

/// What the work of a task gets: its cancellation and a place to report its last activity.
#[derive(Clone)]
pub struct TaskHandle {
    id: String,
    cancel: CancellationToken,
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl TaskHandle {
    /// Cancelled by `tasks/cancel`.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether `tasks/cancel` was called.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Shows `activity` as the task's `statusMessage` while it works.
    pub fn set_activity(&self, activity: &str) {
        let mut tasks = lock(&self.inner);
        if let Some(entry) = tasks.get_mut(&self.id)
            && entry.ended_at.is_none()
        {
            entry.task.status_message = Some(truncate(activity, MAX_STATUS_CHARS));
            entry.touch();
        }
    }
}

fn lock(inner: &Mutex<HashMap<String, Entry>>) -> MutexGuard<'_, HashMap<String, Entry>> {
    // A panic while holding the lock leaves only plain data behind, still consistent enough to
    // read; poisoning must not take every later task call down with it.
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The error for a task id that does not exist, expired, or belongs to someone else: JSON-RPC
/// invalid params (-32602), as SEP-2663 asks.
fn unknown_task(task_id: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "unknown task `{}`: no such task for you (ended tasks are kept for {} minutes)",
            truncate(task_id, 100),
            RETAIN_ENDED.as_secs() / 60
        ),
        None,
    )
}

fn to_object<T: serde::Serialize>(value: &T) -> JsonObject {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => JsonObject::new(),
    }
}

impl RunTasks {
    /// Starts `work` as a task of `owner`, kept at least `ttl` from now; returns its seed state for
    /// the `CreateTaskResult`. The task is readable with [`RunTasks::get`] before this returns.
    pub fn start<W, F>(&self, owner: &str, ttl: Duration, work: W) -> Result<Task, ErrorData>
    where
        W: FnOnce(TaskHandle) -> F,
        F: Future<Output = TaskEnd> + Send + 'static,
    {
        let id = format!("task_{}", uuid::Uuid::new_v4().simple());
        let now = current_timestamp();
        let task = Task::new(id.clone(), TaskStatus::Working, now.clone(), now)
            .with_ttl_ms(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .with_poll_interval_ms(u64::try_from(POLL_INTERVAL.as_millis()).unwrap_or(2000))
            .with_status_message("queued");
        let cancel = CancellationToken::new();
        {
            let mut tasks = lock(&self.inner);
            let at = Instant::now();
            tasks.retain(|_, entry| !entry.removable(at));
            if tasks.len() >= MAX_TASKS {
                let oldest_ended = tasks
                    .iter()
                    .filter_map(|(id, entry)| entry.ended_at.map(|ended| (ended, id.clone())))
                    .min();
                match oldest_ended {
                    Some((_, id)) => {
                        tasks.remove(&id);
                    }
                    None => {
                        return Err(ErrorData::invalid_request(
                            format!(
                                "{MAX_TASKS} tasks are working on this server; wait for one to \
                                 end or call run_in_sandbox without tasks"
                            ),
                            None,
                        ));
                    }
                }
            }
            tasks.insert(
                id.clone(),
                Entry {
                    owner: owner.to_owned(),
                    task: task.clone(),
                    payload: TaskPayload::Working,
                    cancel: cancel.clone(),
                    ended: watch::channel(false).0,
                    keep_until: at + ttl,
                    ended_at: None,
                },
            );
        }
        let handle = TaskHandle {
            id: id.clone(),
            cancel,
            inner: self.inner.clone(),
        };
        let work = work(handle);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let end = work.await;
            let mut tasks = lock(&inner);
            if let Some(entry) = tasks.get_mut(&id) {
                let (payload, message) = match end {
                    TaskEnd::Completed(result) => (
                        TaskPayload::Completed {
                            result: to_object(&result),
                        },
                        None,
                    ),
                    TaskEnd::Cancelled(message) => (TaskPayload::Cancelled, Some(message)),
                    TaskEnd::Failed(error) => (
                        TaskPayload::Failed {
                            error: to_object(&error),
                        },
                        Some(error.message.to_string()),
                    ),
                };
                entry.task.status = payload.status();
                entry.task.status_message = message;
                entry.payload = payload;
                entry.ended_at = Some(Instant::now());
                entry.touch();
                entry.ended.send_replace(true);
            }
        });
        Ok(task)
    }

    /// `tasks/get`: the task as it stands.
    pub fn get(&self, owner: &str, task_id: &str) -> Result<DetailedTask, ErrorData> {
        let mut tasks = lock(&self.inner);
        let at = Instant::now();
        tasks.retain(|_, entry| !entry.removable(at));
        tasks
            .get(task_id)
            .filter(|entry| entry.owner == owner)
            .map(Entry::detailed)
            .ok_or_else(|| unknown_task(task_id))
    }

    /// `tasks/cancel`: asks the work to stop (the run is cancelled); the task turns `cancelled`
    /// once the run has ended. Cancelling an ended task changes nothing.
    pub fn cancel(&self, owner: &str, task_id: &str) -> Result<(), ErrorData> {
        let tasks = lock(&self.inner);
        let entry = tasks
            .get(task_id)
            .filter(|entry| entry.owner == owner)
            .ok_or_else(|| unknown_task(task_id))?;
        if entry.ended_at.is_none() {
            entry.cancel.cancel();
        }
        Ok(())
    }

    /// Cancels every working task and waits until each has ended: over stdio a task ends with
    /// the connection that started it, as the run of a plain call does.
    pub async fn cancel_all(&self) {
        let waits: Vec<_> = {
            let tasks = lock(&self.inner);
            tasks
                .values()
                .filter(|entry| entry.ended_at.is_none())
                .map(|entry| {
                    entry.cancel.cancel();
                    entry.ended.subscribe()
                })
                .collect()
        };
        for mut ended in waits {
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }

    /// `tasks/result`: waits until the task ended, then returns it.
    pub async fn wait(&self, owner: &str, task_id: &str) -> Result<DetailedTask, ErrorData> {
        let mut ended = {
            let tasks = lock(&self.inner);
            let entry = tasks
                .get(task_id)
                .filter(|entry| entry.owner == owner)
                .ok_or_else(|| unknown_task(task_id))?;
            entry.ended.subscribe()
        };
        // The sender lives in the entry: it only goes away when the entry is swept, after the end.
        let _ = ended.wait_for(|ended| *ended).await;
        self.get(owner, task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;

    #[tokio::test]
    async fn a_task_works_then_completes_and_only_its_owner_sees_it() {
        let tasks = RunTasks::default();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tasks
            .start("alice", Duration::from_secs(60), |handle| async move {
                handle.set_activity("tool write hello.txt");
                let _ = go_rx.await;
                TaskEnd::Completed(CallToolResult::success(vec![ContentBlock::text("done")]))
            })
            .unwrap();
        assert_eq!(task.status, TaskStatus::Working);
        assert!(tasks.get("alice", &task.task_id).is_ok());
        let error = tasks.get("bob", &task.task_id).unwrap_err();
        assert_eq!(error.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert!(tasks.cancel("bob", &task.task_id).is_err());
        go_tx.send(()).unwrap();
        let ended = tasks.wait("alice", &task.task_id).await.unwrap();
        assert_eq!(ended.status(), TaskStatus::Completed);
        match ended.payload {
            TaskPayload::Completed { result } => assert_eq!(result["content"][0]["text"], "done"),
            other => panic!("not completed: {other:?}"),
        }
    }

    #[tokio::test]
    async fn cancel_reaches_the_work_and_ends_the_task_cancelled() {
        let tasks = RunTasks::default();
        let task = tasks
            .start("alice", Duration::from_secs(60), |handle| async move {
                handle.cancel_token().cancelled().await;
                TaskEnd::Cancelled("run r_1 cancelled".into())
            })
            .unwrap();
        tasks.cancel("alice", &task.task_id).unwrap();
        let ended = tasks.wait("alice", &task.task_id).await.unwrap();
        assert_eq!(ended.status(), TaskStatus::Cancelled);
        assert_eq!(
            ended.task.status_message.as_deref(),
            Some("run r_1 cancelled")
        );
        assert!(tasks.get("alice", "task_nope").is_err());
    }

    #[tokio::test]
    async fn cancel_all_ends_every_working_task() {
        let tasks = RunTasks::default();
        let ids: Vec<String> = (0..3)
            .map(|_| {
                tasks
                    .start("alice", Duration::from_secs(60), |handle| async move {
                        handle.cancel_token().cancelled().await;
                        TaskEnd::Cancelled("run cancelled".into())
                    })
                    .unwrap()
                    .task_id
            })
            .collect();
        tasks.cancel_all().await;
        for id in ids {
            assert_eq!(
                tasks.get("alice", &id).unwrap().status(),
                TaskStatus::Cancelled
            );
        }
    }

    #[test]
    fn status_messages_are_cut_on_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
