//! CSRF protection for cookie-authenticated requests: a state-changing method (anything but GET,
//! HEAD, OPTIONS) must come with an `Origin` (or, without one, a `Referer`) naming one of this
//! server's own origins. Browsers always send `Origin` on cross-site POSTs and cannot forge it;
//! bearer-token requests need no check because a foreign page can not attach the header.

use axum::http::{HeaderMap, Method, header};

/// Whether `method` changes state (and so needs the origin check under a cookie).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `scheme://host[:port]` of a URL, lower case, without a default port; `None` if it has none.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials in a URL are no part of its origin and never legitimate here.
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
        ("http", Some((host, "80"))) | ("https", Some((host, "443"))) => host.to_string(),
        _ => authority,
    };
    Some(format!("{scheme}://{authority}"))
}

/// The origins a cookie-authenticated change may come from: the public URL's, and the one the
/// request's `Host` names on the server's own scheme (plain http; TLS ends in front of it).
pub fn allowed_origins(public_url: Option<&str>, headers: &HeaderMap) -> Vec<String> {
    let mut allowed = Vec::new();
    if let Some(o) = public_url.and_then(origin_of) {
        allowed.push(o);
    }
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && let Some(o) = origin_of(&format!("http://{host}"))
    {
        allowed.push(o);
    }
    allowed
}

/// Whether a cookie-authenticated request with this `method` and `headers` may go through.
pub fn allowed(method: &Method, headers: &HeaderMap, public_url: Option<&str>) -> bool {
    if !is_unsafe(method) {
        return true;
    }
    let claimed = match headers.get(header::ORIGIN) {
        Some(origin) => origin.to_str().ok().and_then(origin_of),
        None => headers
            .get(header::REFERER)
            .and_then(|r| r.to_str().ok())
            .and_then(origin_of),
    };
    claimed.is_some_and(|c| allowed_origins(public_url, headers).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_own_origins_change_state() {
        let public = Some("https://delegate.example.com/base");
        let post = Method::POST;
        let host = ("host", "127.0.0.1:8080");
        let cases = [
            (vec![host, ("origin", "https://delegate.example.com")], true),
            (
                vec![host, ("origin", "https://delegate.example.com:443")],
                true,
            ),
            (vec![host, ("origin", "http://127.0.0.1:8080")], true),
            (
                vec![host, ("referer", "http://127.0.0.1:8080/app/page")],
                true,
            ),
            (vec![host, ("origin", "https://evil.example")], false),
            (vec![host, ("origin", "null")], false),
            (vec![host, ("origin", "https://127.0.0.1:8080")], false),
            (vec![host, ("referer", "https://evil.example/x")], false),
            (
                vec![
                    host,
                    ("origin", "https://evil.example"),
                    ("referer", "http://127.0.0.1:8080/"),
                ],
                false,
            ),
            (vec![host], false),
            (vec![("origin", "http://127.0.0.1:8080")], false),
        ];
        for (pairs, want) in cases {
            assert_eq!(allowed(&post, &headers(&pairs), public), want, "{pairs:?}");
        }
        assert!(allowed(&Method::GET, &headers(&[]), public));
        assert_eq!(origin_of("HTTP://Host:80/x"), Some("http://host".into()));
        assert_eq!(origin_of("http://u:p@host/"), None);
        assert_eq!(origin_of("javascript:alert(1)"), None);
    }
}
