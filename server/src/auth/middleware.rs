//! The gate in front of `/api` and `/mcp`: a bearer API token or a session cookie becomes a
//! [`delegate_mcp::delegator::Caller`] in the request's extensions.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{AuthError, caller_from_bearer, sessions};
use crate::credentials;
use crate::envelope::json_error;
use crate::orchestrator::Orchestrator;

/// Resolves `Authorization: Bearer dlg_...`, or else the session cookie, to a
/// [`delegate_mcp::delegator::Caller`] in the request's extensions; without a valid one: 401 with
/// `WWW-Authenticate`. A cookie-authenticated change must pass the CSRF origin check
/// ([`crate::auth::csrf`]) or gets 403 before any handler runs.
pub async fn require_token(
    State(orch): State<Orchestrator>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    // An `Authorization` header wins over the cookie, whatever its scheme.
    let cookie = if headers.contains_key(header::AUTHORIZATION) {
        None
    } else {
        sessions::cookie_value(headers)
    };
    let resolved = match cookie {
        Some(secret) => {
            if !crate::auth::csrf::allowed(
                request.method(),
                headers,
                orch.settings().public_url.as_deref(),
            ) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a change with a session cookie must come from this server's own origin \
                     (Origin or Referer header)",
                );
            }
            sessions::caller_from_session(orch.store().as_ref(), secret).await
        }
        None => caller_from_bearer(orch.store().as_ref(), credentials::bearer(headers)).await,
    };
    match resolved {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "token check failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            )
        }
        Err(e) => {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!(
                    "{e}: send `Authorization: Bearer dlg_...` (create one with `delegate token create`)"
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"delegate\""),
            );
            response
        }
    }
}
