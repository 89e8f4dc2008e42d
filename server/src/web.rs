//! The browser UI: the files of `web/` (plain HTML, CSS and JavaScript modules), embedded at build
//! time by `build.rs`, served under `/ui/`; every other GET that is no API path gets `index.html`,
//! whose module router draws the page (so `/runs/{id}`, the runs' `watch_url`, is a real link).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

mod files {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// The page's Content-Security-Policy: only this origin's own scripts and styles, no inline code,
/// so injected markup could not run even if some text slipped through unescaped.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The embedded file at `path` (relative to `web/`).
pub fn file(path: &str) -> Option<&'static [u8]> {
    files::FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

/// Every embedded file's path.
pub fn paths() -> impl Iterator<Item = &'static str> {
    files::FILES.iter().map(|(p, _)| *p)
}

/// `/ui/{*path}`: the static files.
pub fn routes() -> Router {
    Router::new().route("/ui/{*path}", get(asset))
}

async fn asset(Path(path): Path<String>) -> Response {
    match file(&path) {
        Some(bytes) => respond(&path, bytes),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

/// The router's fallback: `index.html` for page navigations, 404 for anything else.
pub async fn fallback(method: Method, uri: http::Uri) -> Response {
    let path = uri.path();
    let reserved = ["/api/", "/mcp", "/v1/", "/ui/"]
        .iter()
        .any(|p| path.starts_with(p));
    if (method == Method::GET || method == Method::HEAD)
        && !reserved
        && let Some(index) = file("index.html")
    {
        return respond("index.html", index);
    }
    crate::envelope::json_error(StatusCode::NOT_FOUND, "not_found", "no such path")
}

fn respond(path: &str, bytes: &'static [u8]) -> Response {
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Small files, embedded in the binary: revalidating each time keeps upgrades visible at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ui_is_embedded() {
        assert!(file("index.html").is_some());
        assert!(paths().any(|p| p.ends_with(".js")));
        assert!(paths().all(|p| !p.starts_with('.') && !p.contains("..")));
        assert_eq!(content_type("app/x.js"), "text/javascript; charset=utf-8");
    }
}
