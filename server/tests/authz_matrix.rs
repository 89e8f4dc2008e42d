//! The authorization matrix: every row of `api::table()` × {anonymous, guest, developer,
//! maintainer, owner, member of another workspace} -> the expected status, generated from one
//! table ([`expected`]) and asserted for 100% of the cells. Each cell gets a fresh world (users,
//! workspace, sandbox and run rows, tokens, a session), so a cell that deletes something does not
//! change the next one. No opencode runs: creating a run or a sandbox is sent with an invalid file
//! path, so an allowed caller gets 400 from validation (after authorization) and nothing starts.

mod common;
#[path = "support/accounts.rs"]
mod support;

use common::Harness;
use delegate_mcp::types::{RunStatus, SandboxStatus};
use delegate_server::api::{Access, table};
use delegate_server::ids::new_id;
use delegate_server::settings::Registration;
use delegate_server::store::{Role, Workspace};
use delegate_testkit::anthropic::Script;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Account, Server};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    Guest,
    Developer,
    Maintainer,
    Owner,
    /// A member (owner) of another workspace only.
    Outsider,
}

const WHO: [Who; 6] = [
    Who::Anonymous,
    Who::Guest,
    Who::Developer,
    Who::Maintainer,
    Who::Owner,
    Who::Outsider,
];

/// The password of every world's owner (for `POST /api/auth/login`).
const PASSWORD: &str = "matrix password 1234";

/// The expected status of `operation_id` for `who`; panics for a route nobody filled in, so a
/// new route can not go untested.
fn expected(operation_id: &str, access: Access, who: Who) -> u16 {
    use Who::*;
    if access == Access::Public {
        // The same answer for everyone: no token is looked at.
        return match operation_id {
            "openapi" | "healthz" | "readyz" => 200,
            // Public to the router, but the handler wants any API token (DELEGATE_METRICS_PUBLIC
            // is off).
            "metrics" if who == Anonymous => 401,
            "metrics" => 200,
            "signup" => 201,
            "login" => 200,
            "authProviders" => 200,
            // A made-up registration code: refused whoever sends it.
            "registerAgent" => 401,
            // No provider configured here.
            "oidcStart" | "oidcCallback" | "githubStart" | "githubCallback" => 404,
            other => panic!("public route {other} has no row in the matrix; add one"),
        };
    }
    if who == Anonymous {
        return 401;
    }
    // Routes about the caller themselves: every signed-in caller.
    let own = |ok: u16| ok;
    // Routes in the workspace: `ok` from `least` up, 403 below, 404 for outsiders.
    let ws = |least: Role, ok: u16| -> u16 {
        let role = match who {
            Guest => Role::Guest,
            Developer => Role::Developer,
            Maintainer => Role::Maintainer,
            Owner => Role::Owner,
            Outsider | Anonymous => return 404,
        };
        if role >= least { ok } else { 403 }
    };
    match operation_id {
        "logout" => own(204),
        "me" | "listSessions" | "listWorkspaces" | "listTokens" => own(200),
        "createToken" | "createWorkspace" => own(201),
        // The owner's own session and token: everyone else finds nothing.
        "revokeSession" | "revokeToken" => {
            if who == Owner {
                204
            } else {
                404
            }
        }
        "getWorkspace" | "listMembers" | "listRuns" | "getRun" | "runEvents" | "listSandboxes"
        | "getSandbox" | "getUsage" | "listRunSummaries" | "getRunDetail" => ws(Role::Guest, 200),
        // Opening opencode can change files: developers up. The row-only sandbox has no opencode
        // running (and this server no BASE_DOMAIN), so an allowed caller gets 409.
        "openSandbox" => ws(Role::Developer, 409),
        // Invalid files after authorization (no run or sandbox starts).
        "createRun" | "createSandbox" => ws(Role::Developer, 400),
        // An empty body is not a git bundle, refused after authorization.
        "uploadSnapshot" => ws(Role::Developer, 400),
        // The row-only run has no change to serve.
        "getRunPatch" | "getRunBundle" => ws(Role::Guest, 404),
        "cancelRun" | "deleteSandbox" | "pauseSandbox" | "resumeSandbox" => {
            ws(Role::Developer, 200)
        }
        "addMember" => ws(Role::Maintainer, 202),
        "createInvite" => ws(Role::Maintainer, 201),
        "listInvites" => ws(Role::Maintainer, 200),
        "revokeInvite" => ws(Role::Maintainer, 204),
        "getWorkspaceEgress" => ws(Role::Guest, 200),
        "setWorkspaceEgress" => ws(Role::Maintainer, 200),
        // Budgets and quotas: members read them (the web UI shows spend), maintainers set them.
        "getWorkspaceLimits" => ws(Role::Guest, 200),
        "setWorkspaceLimits" => ws(Role::Maintainer, 200),
        // Secrets: maintainers and owners. This server has no DELEGATE_SECRET_KEY, so setting one
        // is refused after authorization (409); deleting an unknown one is not found.
        "listSecrets" => ws(Role::Maintainer, 200),
        "setSecret" => ws(Role::Maintainer, 409),
        "deleteSecret" => ws(Role::Maintainer, 404),
        // Git credentials alike: no key to seal with (409); an unknown host is not found.
        "listGitCredentials" => ws(Role::Maintainer, 200),
        "setGitCredential" => ws(Role::Maintainer, 409),
        "deleteGitCredential" => ws(Role::Maintainer, 404),
        "createAgentCode" => ws(Role::Developer, 201),
        "changeMember" => ws(Role::Maintainer, 200),
        "removeMember" => ws(Role::Maintainer, 204),
        other => panic!("route {other} has no row in the matrix; add one"),
    }
}

/// One cell's fresh fixtures: the owner's workspace with a member of each role, rows to act on.
struct World {
    ws: Workspace,
    owner: Account,
    guest: Account,
    developer: Account,
    maintainer: Account,
    outsider: Account,
    /// A developer the member routes change or remove.
    target: Account,
    /// An account that is nobody's member yet (for `addMember`).
    newcomer: Account,
    /// A paused sandbox (pause is a no-op, delete needs no process) and a running one (resume is a
    /// no-op), both rows only.
    paused: String,
    running: String,
    run: String,
    /// An unused invite of the owner's, to revoke.
    invite: String,
    /// Another token and a session of the owner's.
    owner_token: String,
    owner_session: String,
}

impl World {
    async fn new(s: &Server, with_password: bool) -> World {
        let owner = s.account("owner").await;
        let ws = owner.personal.clone();
        let store = s.orch.store();
        if with_password {
            let hash = delegate_server::auth::passwords::hash(PASSWORD)
                .await
                .unwrap();
            store
                .set_password_hash(&owner.user.id, &hash)
                .await
                .unwrap();
        }
        let paused = common::sandbox_row(&ws.id, SandboxStatus::Paused);
        let running = common::sandbox_row(&ws.id, SandboxStatus::Running);
        store.insert_sandbox(&paused).await.unwrap();
        store.insert_sandbox(&running).await.unwrap();
        let run = common::run_row(&paused, RunStatus::Succeeded);
        store.insert_run(&run).await.unwrap();
        let (_, token) =
            delegate_server::auth::create_api_token(store.as_ref(), &owner.user.id, None, None)
                .await
                .unwrap();
        let (_, session) =
            delegate_server::auth::sessions::start_session(store.as_ref(), &owner.user.id)
                .await
                .unwrap();
        let (_, invite) = delegate_server::credentials::issue_invite(
            &ws.id,
            Role::Developer,
            &owner.user.id,
            60_000,
        );
        store.insert_invite(&invite).await.unwrap();
        World {
            invite: invite.id,
            guest: s.member(&ws, "guest", Role::Guest).await,
            developer: s.member(&ws, "developer", Role::Developer).await,
            maintainer: s.member(&ws, "maintainer", Role::Maintainer).await,
            target: s.member(&ws, "target", Role::Developer).await,
            outsider: s.account("outsider").await,
            newcomer: s.account("newcomer").await,
            ws,
            owner,
            paused: paused.id,
            running: running.id,
            run: run.id,
            owner_token: token.id,
            owner_session: session.id,
        }
    }

    fn token(&self, who: Who) -> Option<&str> {
        Some(match who {
            Who::Anonymous => return None,
            Who::Guest => &self.guest.token,
            Who::Developer => &self.developer.token,
            Who::Maintainer => &self.maintainer.token,
            Who::Owner => &self.owner.token,
            Who::Outsider => &self.outsider.token,
        })
    }

    /// The route's path with real ids, plus the query it needs.
    fn path(&self, template: &str, operation_id: &str) -> String {
        let id = match operation_id {
            "getRun" | "cancelRun" | "runEvents" | "getRunDetail" | "getRunPatch"
            | "getRunBundle" => self.run.as_str(),
            "resumeSandbox" | "openSandbox" => self.running.as_str(),
            "getSandbox" | "deleteSandbox" | "pauseSandbox" => self.paused.as_str(),
            "revokeToken" => self.owner_token.as_str(),
            "revokeSession" => self.owner_session.as_str(),
            "revokeInvite" => self.invite.as_str(),
            _ => "",
        };
        let path = template
            .replace("{id}", id)
            .replace("{ws}", &self.ws.slug)
            .replace("{user_id}", &self.target.user.id)
            .replace("{name}", "MATRIX_SECRET")
            .replace("{host}", "git.example.com");
        assert!(!path.contains('{'), "unfilled parameter in {path}");
        match operation_id {
            "listRuns" | "listSandboxes" | "getUsage" | "listRunSummaries" => {
                format!("{path}?workspace={}", self.ws.slug)
            }
            "uploadSnapshot" => format!("{path}?workspace={}&repo=/src/project", self.ws.slug),
            _ => path,
        }
    }

    /// A body valid for the route (or, for runs and sandboxes, valid up to the file paths).
    fn body(&self, operation_id: &str) -> Option<Value> {
        let bad_files = json!({ "../outside": "x" });
        Some(match operation_id {
            "createRun" => {
                json!({ "task": "t", "workspace": self.ws.slug, "files": bad_files })
            }
            "createSandbox" => json!({ "workspace": self.ws.slug, "files": bad_files }),
            "createToken" => json!({ "name": "matrix" }),
            "createWorkspace" => json!({ "slug": new_id("m").replace('_', "-"), "name": "M" }),
            "addMember" => json!({ "email": self.newcomer.user.email, "role": "developer" }),
            "changeMember" => json!({ "role": "guest" }),
            "createInvite" => json!({ "role": "developer" }),
            "setWorkspaceEgress" => json!({ "allowed": ["none"], "default": "none" }),
            "setWorkspaceLimits" => json!({ "daily_budget_usd": 5.0, "max_concurrent_runs": 2 }),
            "createAgentCode" => json!({}),
            "setSecret" => json!({ "value": "matrix value" }),
            "setGitCredential" => json!({ "username": "matrix", "token": "matrix token" }),
            "registerAgent" => json!({ "code": "dac_made_up", "name": "laptop" }),
            "signup" => json!({
                "email": format!("{}@example.com", new_id("new")),
                "password": "a long enough password",
            }),
            "login" => json!({ "email": self.owner.user.email, "password": PASSWORD }),
            _ => return None,
        })
    }
}

#[tokio::test]
async fn every_route_for_every_role_has_the_expected_status() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Open)
        .start()
        .await;
    let routes = table();
    let mut cells = 0;
    let mut failures = Vec::new();
    for route in &routes {
        // The operations endpoints and the SSO starts are answered the same to everyone.
        for who in WHO {
            let world = World::new(&s, route.operation_id == "login").await;
            let path = world.path(route.path, route.operation_id);
            let mut r = s.req(route.method.clone(), &path);
            if let Some(t) = world.token(who) {
                r = r.bearer_auth(t);
            }
            if let Some(body) = world.body(route.operation_id) {
                r = r.json(&body);
            }
            let reply = s.send(r).await;
            let want = expected(route.operation_id, route.access, who);
            cells += 1;
            if reply.status.as_u16() != want {
                failures.push(format!(
                    "{} {path} as {who:?}: got {}, want {want}: {}",
                    route.method, reply.status, reply.body
                ));
            } else if reply.status.as_u16() >= 400 {
                // Every refusal is in the one error envelope.
                reply.error_code();
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cells, routes.len() * WHO.len(), "100% of the cells");
    assert!(
        routes.len() >= 38,
        "the table has every route ({})",
        routes.len()
    );
}

/// A token scoped to one workspace acts there and nowhere else (the user's other workspaces look
/// unknown), and can not mint an unscoped token or a workspace.
#[tokio::test]
async fn a_workspace_scoped_token_acts_only_in_its_workspace() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Invite)
        .start()
        .await;
    let world = World::new(&s, false).await;
    let other = &world.outsider.personal;
    // The owner also belongs to the outsider's workspace.
    s.orch
        .store()
        .set_member(&other.id, &world.owner.user.id, Role::Owner)
        .await
        .unwrap();
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &world.owner.token)
                .json(&json!({ "name": "scoped", "workspace": world.ws.slug })),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["workspace_id"], world.ws.id.as_str());
    let scoped = reply.body["token"].as_str().unwrap().to_string();

    let ok = [
        format!("/api/workspaces/{}", world.ws.slug),
        format!("/api/sandboxes?workspace={}", world.ws.slug),
        "/api/sandboxes".to_string(),
        format!("/api/runs/{}", world.run),
    ];
    for p in &ok {
        let reply = s.send(s.bearer(Method::GET, p, &scoped)).await;
        assert_eq!(reply.status, 200, "{p}: {}", reply.body);
    }
    for p in [
        format!("/api/workspaces/{}", other.slug),
        format!("/api/workspaces/{}/members", other.slug),
        format!("/api/sandboxes?workspace={}", other.slug),
        format!("/api/usage?workspace={}", other.id),
    ] {
        let reply = s.send(s.bearer(Method::GET, &p, &scoped)).await;
        assert_eq!(reply.status, 404, "{p}: {}", reply.body);
        assert_eq!(reply.error_code(), "not_found");
    }
    let me = s.send(s.bearer(Method::GET, "/api/auth/me", &scoped)).await;
    assert_eq!(
        me.body["workspaces"].as_array().unwrap().len(),
        1,
        "{}",
        me.body
    );
    let list = s
        .send(s.bearer(Method::GET, "/api/workspaces", &scoped))
        .await;
    assert_eq!(list.body["workspaces"][0]["id"], world.ws.id.as_str());
    assert_eq!(list.body["workspaces"].as_array().unwrap().len(), 1);

    // No widening: a token made with it is scoped too; another workspace is unknown to it.
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &scoped)
                .json(&json!({ "name": "child" })),
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body["workspace_id"], world.ws.id.as_str());
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &scoped)
                .json(&json!({ "name": "wider", "workspace": other.slug })),
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/workspaces", &scoped)
                .json(&json!({ "slug": "escape", "name": "E" })),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    // It sees and revokes only tokens of its workspace, and no browser sessions.
    let tokens = s.send(s.bearer(Method::GET, "/api/tokens", &scoped)).await;
    let tokens = tokens.body["tokens"].as_array().unwrap().clone();
    assert!(!tokens.is_empty());
    assert!(
        tokens
            .iter()
            .all(|t| t["workspace_id"] == world.ws.id.as_str())
    );
    let r = s
        .send(s.bearer(
            Method::DELETE,
            &format!("/api/tokens/{}", world.owner_token),
            &scoped,
        ))
        .await;
    assert_eq!(r.status, 404, "an unscoped token is out of its reach");
    let r = s
        .send(s.bearer(Method::GET, "/api/auth/sessions", &scoped))
        .await;
    assert_eq!(r.body["sessions"], json!([]));
    let r = s
        .send(s.bearer(
            Method::DELETE,
            &format!("/api/auth/sessions/{}", world.owner_session),
            &scoped,
        ))
        .await;
    assert_eq!(r.status, 404);
    // Scoping to a workspace one is not a member of is refused.
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &world.guest.token)
                .json(&json!({ "name": "x", "workspace": other.slug })),
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
}
