//! delegate's JSON error envelope, the one shape every HTTP error takes: `{"error": {"code",
//! "message"}}`. A leaf: the API, the tunnel endpoint and the web UI's fallback all answer with it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// delegate's JSON error envelope: `{"error": {"code", "message"}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}
