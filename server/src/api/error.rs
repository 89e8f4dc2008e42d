//! The REST API's one error type and its JSON envelope `{"error": {"code", "message"}}`, and the
//! extractors that turn axum's rejections (malformed JSON, wrong content type, unknown fields,
//! oversized bodies, bad query strings) into that same envelope.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// A failed API call. Internal causes are logged where they happen; the client gets a generic text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status of the response.
    pub status: StatusCode,
    /// A stable machine-readable code (`invalid_input`, `not_found`, ...) clients can match on.
    pub code: &'static str,
    /// Human-readable detail, safe to show the client.
    pub message: String,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 for a request the client must fix before retrying.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// A 404; also used where revealing that something exists would leak it.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Logs `cause` once; the client learns only that something went wrong.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error in an API call");
        Self::generic_internal()
    }

    fn generic_internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            crate::error::INTERNAL_MESSAGE,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::envelope::json_error(self.status, self.code, &self.message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => Self::invalid(m),
            Error::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", m),
            e @ Error::NotFound(_) => Self::not_found(e.to_string()),
            e @ (Error::Busy(_) | Error::NotRunning { .. }) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            Error::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            Error::Sandbox(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the sandbox failed: {e}"),
            ),
            Error::Limit(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "limit", m),
            Error::BudgetExceeded(m) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", m)
            }
            // The code is the kind, so REST and MCP clients branch on the same words.
            Error::Repo { kind, message } => {
                let status = match kind {
                    "repo_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                    "conflict" => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_REQUEST,
                };
                Self::new(status, kind, message)
            }
            // Already logged where it happened.
            Error::Internal(_) => Self::generic_internal(),
            e @ (Error::Store(_) | Error::Transition(_)) => Self::internal(e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over {} bytes", super::MAX_BODY_BYTES),
            );
        }
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "send the body as JSON with `Content-Type: application/json`".to_string()
            }
            other => other.body_text(),
        };
        Self::invalid(message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::invalid(r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over {} bytes", super::MAX_BODY_BYTES),
            );
        }
        Self::invalid(r.body_text())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s, and whose body must be a JSON object: every
/// body the API takes is one, and serde would otherwise fill a struct from an array (`[]` would
/// create a sandbox with every default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(JsonRejection::from(
                axum::extract::rejection::MissingJsonContentType::default(),
            )
            .into());
        }
        let bytes = axum::body::Bytes::from_request(req, state).await?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid("the request body must be a JSON object"));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

/// `Content-Type: application/json` or `application/<anything>+json`, as axum's `Json` takes.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// A path's `{id}` parsed once into its typed id ([`RunId`](crate::ids::RunId),
/// [`SandboxId`](crate::ids::SandboxId)): a malformed one is 404, exactly as an unknown one.
/// Where another check must answer first, take `Result<IdPath<_>, ApiError>` and `?` it there.
#[derive(Debug, Clone)]
pub struct IdPath<T>(pub T);

impl<T, S> FromRequestParts<S> for IdPath<T>
where
    T: std::str::FromStr<Err = crate::ids::MalformedId> + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(IdPath(raw.parse().map_err(Error::from)?))
    }
}

/// What handlers return: the error side renders as the JSON error envelope.
pub type ApiResult<T> = Result<T, ApiError>;
