//! The remote client's repository routes against a tiny in-test server: a snapshot streamed up
//! with its query, a change bundle streamed down with its commit header, patches under a cap,
//! repository error kinds from the envelope, and `patch_url` filled in.

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use delegate_mcp::{
    Caller, DelegateError, Delegator, RemoteDelegator,
    tools::{RunInSandboxInput, StreamSessionInput},
    types::RepoBase,
};
use serde_json::json;

const TOKEN: &str = "dlg_repo_routes_token";
const PATCH: &[u8] = b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn caller() -> Caller {
    Caller {
        user_id: "u".into(),
        token_id: None,
        client: None,
        workspace_id: None,
    }
}

fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn upload(RawQuery(query): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    let query = query.unwrap_or_default();
    if query.contains("repo=%2Fbig") {
        return envelope(
            StatusCode::PAYLOAD_TOO_LARGE,
            "repo_too_large",
            "the snapshot is over 1.0 GiB",
        );
    }
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/x-git-bundle",
        "content type"
    );
    assert_eq!(
        query,
        "workspace=ws&repo=%2Fhome%2Fu%2Fp&commit=abc&branch=main&dirty=true"
    );
    (
        StatusCode::CREATED,
        Json(json!({"snapshot_id": format!("snp_{}", body.len()), "bytes": body.len()})),
    )
        .into_response()
}

async fn bundle(Path(id): Path<String>) -> Response {
    match id.as_str() {
        "run_1" => (
            [("x-delegate-commit", COMMIT)],
            Body::from(&b"bundle bytes"[..]),
        )
            .into_response(),
        "run_nohdr" => Body::from(&b"bundle bytes"[..]).into_response(),
        _ => envelope(StatusCode::NOT_FOUND, "not_found", "run has no change"),
    }
}

async fn patch(Path(id): Path<String>) -> Response {
    match id.as_str() {
        "run_1" => ([(header::CONTENT_TYPE, "text/x-diff")], PATCH).into_response(),
        _ => envelope(StatusCode::NOT_FOUND, "not_found", "run has no change"),
    }
}

async fn events(Path(id): Path<String>) -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        "bad_change",
        &format!("run {id}'s change is not a git bundle"),
    )
}

async fn create_run() -> Response {
    let result = json!({
        "run_id": "run_1", "sandbox_id": "sbx_1", "status": "succeeded", "final_message": "",
        "changed_files": [], "diff": "", "diff_truncated": false,
        "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
                  "cache_write_tokens": 0, "cost_usd": 0.0},
        "duration_ms": 1, "event_count": 1, "commit": COMMIT,
    });
    (StatusCode::CREATED, Json(result)).into_response()
}

async fn start() -> RemoteDelegator {
    let app = Router::new()
        .route("/api/runs", post(create_run))
        .route("/api/snapshots", post(upload))
        .route("/api/runs/{id}/bundle", get(bundle))
        .route("/api/runs/{id}/patch", get(patch))
        .route("/api/runs/{id}/events", get(events));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    RemoteDelegator::new(&format!("http://{address}"), TOKEN).unwrap()
}

#[tokio::test]
async fn snapshots_go_up_and_changes_come_down() {
    let remote = start().await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("snapshot.bundle");
    tokio::fs::write(&file, vec![7u8; 300_000]).await.unwrap();
    let base = RepoBase {
        repo: "/home/u/p".into(),
        commit: Some("abc".into()),
        branch: Some("main".into()),
        dirty: true,
    };
    let id = remote
        .upload_snapshot(&caller(), Some("ws"), &base, &file)
        .await
        .unwrap();
    assert_eq!(id, "snp_300000", "every byte arrived");
    let big = RepoBase {
        repo: "/big".into(),
        ..base.clone()
    };
    let err = remote
        .upload_snapshot(&caller(), Some("ws"), &big, &file)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DelegateError::Repo { kind, message } if kind == "repo_too_large" && message.contains("1.0 GiB")),
        "{err:?}"
    );

    let out = tmp.path().join("change.bundle");
    let commit = remote
        .download_change(&caller(), "run_1", &out)
        .await
        .unwrap();
    assert_eq!(commit, COMMIT);
    assert_eq!(tokio::fs::read(&out).await.unwrap(), b"bundle bytes");
    let out2 = tmp.path().join("nohdr.bundle");
    let err = remote
        .download_change(&caller(), "run_nohdr", &out2)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DelegateError::Repo { kind, .. } if kind == "bad_change"),
        "{err:?}"
    );
    let err = remote
        .download_change(&caller(), "run_none", &out2)
        .await
        .unwrap_err();
    assert!(matches!(err, DelegateError::NotFound(_)), "{err:?}");

    assert_eq!(
        remote
            .read_patch(&caller(), "run_1", 1 << 20)
            .await
            .unwrap(),
        PATCH
    );
    let err = remote.read_patch(&caller(), "run_1", 10).await.unwrap_err();
    assert!(matches!(err, DelegateError::Limit(_)), "{err:?}");

    // Repository kinds in the envelope become repository errors.
    let err = remote
        .stream_session(
            &caller(),
            StreamSessionInput {
                run_id: Some("run_1".into()),
                ..StreamSessionInput::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DelegateError::Repo { kind, .. } if kind == "bad_change"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_run_with_a_change_names_its_patch_url() {
    let remote = start().await;
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let result = remote
        .run_in_sandbox(
            &caller(),
            RunInSandboxInput {
                task: "t".into(),
                snapshot: Some("snp_1".into()),
                ..RunInSandboxInput::default()
            },
            tx,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        result.patch_url,
        Some(format!("{}/api/runs/run_1/patch", remote.server()))
    );
}
