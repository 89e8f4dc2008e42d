//! Read-only views the web UI needs beyond the MCP-shaped results: runs with their task, who
//! delegated them (a person, an API token, an MCP client) and when.

use std::collections::HashMap;

use axum::extract::State;
use delegate_mcp::delegator::Caller;
use delegate_mcp::types::{RunResult, RunStatus, Usage, parent_status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiResult, ApiState, Authed, IdPath, Query};
use crate::delegation::{Action, internal};
use crate::ids::{Origin, RunId};
use crate::store::Run;

/// One run in a list: what was asked, by whom, how it went.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    /// The run's id.
    pub run_id: String,
    /// The sandbox the run ran in; empty for a parent of attempts.
    pub sandbox_id: String,
    /// `running` or how the run ended.
    pub status: RunStatus,
    /// The task text as it was delegated.
    pub task: String,
    /// Who delegated it, for people: an email, `API token NAME`, `MCP client NAME`, `CLI`.
    pub delegated_by: String,
    /// The raw origin: `user:<id>`, `token:<id>`, `mcp:<client>`, `cli`.
    pub created_by: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Wall time of the run so far, in milliseconds.
    pub duration_ms: u64,
    /// Tokens and cost of the run's model calls.
    pub usage: Usage,
    /// On a parent of attempts (`run_id` is the parent's): how many of its attempts the list
    /// holds; its status and usage are theirs together. 0 for a single run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /api/runs/summaries`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunSummaryList {
    /// Newest first.
    pub runs: Vec<RunSummary>,
}

/// `GET /api/runs/{id}/summary`: the run's result plus its task and origin.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunDetail {
    /// The run's result, as `GET /api/runs/{id}` gives it (its fields appear inline).
    #[serde(flatten)]
    pub result: RunResult,
    /// The task text as it was delegated.
    pub task: String,
    /// Who delegated it, for people: an email, `API token NAME`, `MCP client NAME`, `CLI`.
    pub delegated_by: String,
    /// The raw origin: `user:<id>`, `token:<id>`, `mcp:<client>`, `cli`.
    pub created_by: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The workspace's slug.
    pub workspace: String,
    /// The run's budget in dollars (`max_cost_usd` or the default it got); `null`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

/// `GET /api/runs/summaries` query: `workspace`, `sandbox_id` and `limit`, as for `GET /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    workspace: Option<String>,
    sandbox_id: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/runs/summaries`: runs with their task and a readable origin, for the web UI's lists.
pub async fn summaries(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Query(q): Query<SummaryQuery>,
) -> ApiResult<axum::Json<RunSummaryList>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let sandbox_id = super::runs::parse_sandbox(q.sandbox_id.as_deref())?;
    let listed = state
        .service
        .runs(&caller, q.workspace.as_deref(), sandbox_id.as_ref(), limit)
        .await?;
    let mut names = Names::new(&state, &caller).await;
    let mut runs: Vec<RunSummary> = Vec::with_capacity(listed.len());
    // A workspace's list shows a parent once, where its newest attempt would be, summed over
    // all its attempts (read below: the page may hold only some of them); one sandbox's list
    // shows the attempt that ran there.
    let group = sandbox_id.is_none();
    let mut parents: HashMap<String, (usize, Vec<RunStatus>)> = HashMap::new();
    for (run, r) in listed {
        let parent = r.parent_run_id.clone().filter(|_| group);
        if let Some(parent) = &parent {
            if parents.contains_key(parent) {
                continue;
            }
            parents.insert(parent.clone(), (runs.len(), Vec::new()));
        }
        let grouped = parent.is_some();
        runs.push(RunSummary {
            delegated_by: names.of(&state, run.created_by.as_deref()).await,
            sandbox_id: if grouped { String::new() } else { r.sandbox_id },
            run_id: parent.unwrap_or(r.run_id),
            status: r.status,
            task: run.task,
            created_by: run.created_by,
            created_at: run.created_at,
            // A parent's are its attempts' together, summed below.
            duration_ms: if grouped { 0 } else { r.duration_ms },
            usage: if grouped { Usage::default() } else { r.usage },
            attempts: 0,
        });
    }
    let ids: Vec<String> = parents.keys().cloned().collect();
    let public = state.orch().settings().public_url.as_deref();
    for attempt in state
        .orch()
        .store()
        .runs_of_parents(&ids)
        .await
        .map_err(internal)?
    {
        let Some((at, statuses)) = attempt
            .parent_run_id
            .as_ref()
            .and_then(|p| parents.get_mut(p))
        else {
            continue;
        };
        let r = crate::orchestrator::result_of(&attempt, 0, public);
        let row = &mut runs[*at];
        row.attempts += 1;
        row.usage.add(&r.usage);
        row.created_at = row.created_at.min(attempt.created_at);
        row.duration_ms = row.duration_ms.max(r.duration_ms);
        statuses.push(r.status);
        row.status = parent_status(statuses);
    }
    Ok(axum::Json(RunSummaryList { runs }))
}

/// `GET /api/runs/{id}/summary`: one run's result with its task, origin and workspace.
pub async fn detail(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<RunId>,
) -> ApiResult<axum::Json<RunDetail>> {
    let run: Run = state.service.run(&caller, &id, Action::Read).await?;
    let result = state.service.get_run(&caller, &id).await?;
    let workspace = state
        .orch()
        .store()
        .workspace_by_id(&run.workspace_id)
        .await
        .map_err(internal)?
        .slug;
    let mut names = Names::new(&state, &caller).await;
    Ok(axum::Json(RunDetail {
        result,
        delegated_by: names.of(&state, run.created_by.as_deref()).await,
        task: run.task,
        created_by: run.created_by,
        created_at: run.created_at,
        workspace,
        max_cost_usd: run.outcome.max_cost_usd,
    }))
}

/// Turns `created_by` into words, looking each user up once.
struct Names {
    users: HashMap<String, String>,
    /// The caller's own token names (other people's token names are theirs).
    tokens: HashMap<String, String>,
}

impl Names {
    async fn new(state: &ApiState, caller: &Caller) -> Names {
        let tokens = state
            .orch()
            .store()
            .tokens_of_user(&caller.user_id)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| t.name.map(|n| (t.id, n)))
            .collect();
        Names {
            users: HashMap::new(),
            tokens,
        }
    }

    async fn of(&mut self, state: &ApiState, created_by: Option<&str>) -> String {
        let Some(by) = created_by else {
            return "unknown".into();
        };
        match Origin::from(by) {
            Origin::User(id) => {
                if let Some(n) = self.users.get(&id) {
                    return n.clone();
                }
                let name = match state.orch().store().user_by_id(&id).await {
                    Ok(u) => u.email,
                    Err(_) => "a former user".into(),
                };
                self.users.insert(id, name.clone());
                name
            }
            Origin::Token(id) => match self.tokens.get(&id) {
                Some(name) => format!("API token {name}"),
                None => "API token".into(),
            },
            Origin::Mcp(client) => format!("MCP client {client}"),
            Origin::McpAs {
                client,
                user,
                token,
            } => {
                let who = Box::pin(self.of(state, Some(&Origin::User(user).to_string()))).await;
                match token {
                    Some(t) => {
                        let token =
                            Box::pin(self.of(state, Some(&Origin::Token(t).to_string()))).await;
                        format!("MCP client {client} ({who}, {token})")
                    }
                    None => format!("MCP client {client} ({who})"),
                }
            }
            Origin::Cli => "CLI".into(),
            Origin::Other(text) => text,
        }
    }
}
