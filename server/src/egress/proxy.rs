//! One connection through the egress proxy: read the request head (bounded, with a timeout),
//! decide, resolve, connect, then relay and meter. `CONNECT host:port` opens a tunnel after
//! `200 Connection established`; `GET http://host[:port]/path` (any method) is forwarded in
//! origin form without `Proxy-*` headers, with `Connection: close`, so a connection carries one
//! request: a redirect comes back to the client, whose next request is checked afresh.
//!
//! Refusals are small plain-text replies the agent can read ("delegate egress: ..."), and each
//! connection ends in one [`EgressRecord`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::address::classify;
use super::policy::{normalize_host, split_host_port};
use super::{Decision, Egress, EgressMetrics, EgressRecord, Totals, Window, report};

/// The largest request head read from a sandbox.
const MAX_HEAD: usize = 16 * 1024;
/// The most header lines in a request head.
const MAX_HEADERS: usize = 100;
/// Relay buffer per direction: 256 KiB moved a 200 MiB download 1.2 to 1.7 times as fast as
/// 64 KiB (fewer syscalls; BENCHMARKS.md), for 512 KiB per open connection.
const BUFFER: usize = 256 * 1024;
/// How long a refusal may take to write to a client that does not read.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request is not forwarded: the HTTP status and the text the client reads.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: &'static str,
    pub(super) message: String,
}

impl Refusal {
    fn new(status: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// What the sandbox asked for.
struct Request {
    host: String,
    port: u16,
    /// `None` for CONNECT; for plain HTTP, the head to send upstream.
    forward_head: Option<Vec<u8>>,
    /// Bytes the client sent after its head (a TLS hello, a request body).
    rest: Vec<u8>,
}

/// Serves one connection to its end and reports it; `head` when its request head was read
/// already (the TCP listener reads it for the token).
pub(super) async fn serve_connection<S>(
    egress: &Egress,
    window: &Window,
    mut client: S,
    head: Option<Vec<u8>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let mut record = EgressRecord {
        host: String::new(),
        port: 0,
        decision: Decision::Denied,
        reason: None,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
    };
    let outcome = handle(egress, window, &mut client, head, &mut record).await;
    if let Err(refusal) = outcome {
        record.decision = Decision::Denied;
        let text = format!("delegate egress: {}\n", refusal.message);
        record.reason = Some(refusal.message);
        reply(&mut client, refusal.status, "", &text).await;
    }
    record.duration_ms = started.elapsed().as_millis() as u64;
    report(&egress.metrics, window, record);
}

/// A 503 for a connection over the limit, without reading its request.
pub(super) async fn refuse_busy<S: AsyncWrite + Unpin>(mut client: S, reason: &str) {
    reply(
        &mut client,
        "503 Service Unavailable",
        "",
        &format!("delegate egress: {reason}; retry when a connection closes\n"),
    )
    .await;
}

/// A small plain-text reply that ends the connection; `extra` holds further header lines, each
/// ending in CRLF.
pub(super) async fn reply<S: AsyncWrite + Unpin>(
    client: &mut S,
    status: &str,
    extra: &str,
    text: &str,
) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n",
        text.len()
    );
    let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
        client.write_all(head.as_bytes()).await?;
        client.write_all(text.as_bytes()).await?;
        client.shutdown().await
    })
    .await;
}

async fn handle<S>(
    egress: &Egress,
    window: &Window,
    client: &mut S,
    head: Option<Vec<u8>>,
    record: &mut EgressRecord,
) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limits = &egress.limits;
    let head = match head {
        Some(head) => head,
        None => read_head_within(client, limits.head_timeout).await?,
    };
    let request = parse_request(&head)?;
    record.host.clone_from(&request.host);
    record.port = request.port;
    let policy = &egress.policy;
    let target = display_target(&request.host, request.port);
    if !policy.allows_host(&request.host, request.port) {
        return Err(Refusal::new(
            "403 Forbidden",
            format!("policy {policy} does not allow {target}"),
        ));
    }
    if window.totals.bytes.load(Ordering::Relaxed) >= limits.max_bytes {
        return Err(Refusal::new(
            "403 Forbidden",
            format!(
                "this run's egress byte cap ({} bytes) is used up",
                limits.max_bytes
            ),
        ));
    }
    let addresses = resolve(&request.host, request.port, limits.connect_timeout).await?;
    let (allowed, forbidden): (Vec<SocketAddr>, Vec<SocketAddr>) = addresses
        .into_iter()
        .partition(|a| classify(a.ip()).is_public() || policy.allows_address(a.ip()));
    if allowed.is_empty() {
        let Some(first) = forbidden.first() else {
            return Err(Refusal::new(
                "502 Bad Gateway",
                format!("{} has no address", request.host),
            ));
        };
        let ip = first.ip();
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let what = if request.host.parse::<IpAddr>().is_ok() {
            format!("{ip} is {}", classify(ip))
        } else {
            format!("{} resolves to {ip}, {}", request.host, classify(ip))
        };
        return Err(Refusal::new(
            "403 Forbidden",
            format!("{what}; an admin can allow it in the allow_addresses of policy {policy}"),
        ));
    }
    let upstream = connect(&allowed, limits.connect_timeout)
        .await
        .map_err(|e| {
            Refusal::new(
                "502 Bad Gateway",
                format!("cannot connect to {target}: {e}"),
            )
        })?;
    let mut upstream = Metered {
        inner: upstream,
        totals: window.totals.clone(),
        metrics: egress.metrics.clone(),
        cap: limits.max_bytes,
        up: 0,
        down: 0,
        capped: false,
    };
    record.decision = Decision::Allowed;
    let opened = async {
        match &request.forward_head {
            None => {
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await?;
            }
            Some(head) => upstream.write_all(head).await?,
        }
        upstream.write_all(&request.rest).await?;
        tokio::io::copy_bidirectional_with_sizes(client, &mut upstream, BUFFER, BUFFER).await
    }
    .await;
    record.bytes_up = upstream.up;
    record.bytes_down = upstream.down;
    if upstream.capped {
        record.reason = Some(format!(
            "cut at this run's egress byte cap ({} bytes)",
            limits.max_bytes
        ));
    } else if let Err(e) = opened {
        tracing::debug!(error = %e, target, "egress: relay ended with an error");
    }
    Ok(())
}

fn display_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// [`read_head`], given `timeout` for it.
pub(super) async fn read_head_within<S: AsyncRead + Unpin>(
    client: &mut S,
    timeout: Duration,
) -> Result<Vec<u8>, Refusal> {
    match tokio::time::timeout(timeout, read_head(client)).await {
        Ok(head) => head,
        Err(_) => Err(Refusal::new(
            "408 Request Timeout",
            format!("no complete request head within {}s", timeout.as_secs()),
        )),
    }
}

/// The password of the head's `Proxy-Authorization: Basic` (the user name is not checked:
/// clients send whatever the proxy URL names); `None` when there is none or it is malformed.
pub(super) fn proxy_password(head: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?;
    let value = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))?
        .value;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (_, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_string()).filter(|p| !p.is_empty())
}

/// Reads up to the end of the request head; whatever follows it stays in the returned buffer.
async fn read_head<S: AsyncRead + Unpin>(client: &mut S) -> Result<Vec<u8>, Refusal> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| Refusal::new("400 Bad Request", format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Refusal::new(
                "400 Bad Request",
                "the connection closed before a complete request head",
            ));
        }
        // Look for the end only where it can newly appear.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(Refusal::new(
                "431 Request Header Fields Too Large",
                format!("the request head is over {MAX_HEAD} bytes"),
            ));
        }
    }
}

fn parse_request(buf: &[u8]) -> Result<Request, Refusal> {
    let bad = |why: String| Refusal::new("400 Bad Request", why);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(bad("an incomplete request head".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                "431 Request Header Fields Too Large",
                format!("more than {MAX_HEADERS} header lines"),
            ));
        }
        Err(e) => return Err(bad(format!("not an HTTP request ({e})"))),
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let rest = buf[len..].to_vec();
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = authority(target, None).map_err(bad)?;
        return Ok(Request {
            host,
            port,
            forward_head: None,
            rest,
        });
    }
    let Some(after) = target
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])
    else {
        return Err(bad(
            if target.to_ascii_lowercase().starts_with("https://") {
                "https:// URLs go through CONNECT (set HTTPS_PROXY)".into()
            } else {
                format!(
                    "{method} {target}: this is a proxy; send CONNECT host:port or an absolute http:// URL"
                )
            },
        ));
    };
    let split = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (auth, path) = after.split_at(split);
    let (host, port) = authority(auth, Some(80)).map_err(bad)?;
    let path = match path.split('#').next().unwrap_or("") {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {auth}\r\n").into_bytes();
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        // Hop-by-hop and proxy headers stay here; Host is the URL's.
        if name.starts_with("proxy-")
            || matches!(
                name.as_str(),
                "host" | "connection" | "keep-alive" | "te" | "upgrade"
            )
        {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Request {
        host,
        port,
        forward_head: Some(head),
        rest,
    })
}

/// `host:port` (or `host` with `default_port`), checked and normalized.
fn authority(text: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    if text.contains('@') {
        return Err(format!(
            "{text:?}: credentials in the URL are not forwarded"
        ));
    }
    let (host, port) = split_host_port(text)?;
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("{text:?}: CONNECT needs host:port")),
    };
    let host = normalize_host(host).ok_or_else(|| format!("{host:?} is not a host name"))?;
    Ok((host, port))
}

/// The host's addresses as delegate resolves them (an IP literal is itself).
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, Refusal> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(Refusal::new(
            "502 Bad Gateway",
            format!("cannot resolve {host}: {e}"),
        )),
        Err(_) => Err(Refusal::new(
            "504 Gateway Timeout",
            format!("resolving {host} took over {}s", timeout.as_secs()),
        )),
    }
}

/// Connects to the first address that answers, within `timeout` overall.
async fn connect(addresses: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last = io::Error::other("no address");
        for addr in addresses {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
}

/// The destination side of a relay, counting bytes into the connection and the run window and
/// failing once the window's cap is reached (at most one buffer over it per connection).
struct Metered {
    inner: TcpStream,
    totals: Arc<Totals>,
    metrics: Arc<EgressMetrics>,
    cap: u64,
    up: u64,
    down: u64,
    capped: bool,
}

impl Metered {
    fn over_cap(&mut self) -> Option<io::Error> {
        if self.totals.bytes.load(Ordering::Relaxed) >= self.cap {
            self.capped = true;
            return Some(io::Error::other("egress byte cap reached"));
        }
        None
    }

    fn count(&self, n: usize) {
        self.totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.over_cap() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.down += n as u64;
        self.count(n);
        self.metrics
            .bytes_down
            .fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.over_cap() {
            return Poll::Ready(Err(e));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.up += n as u64;
            self.count(n);
            self.metrics.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(head: &str) -> Result<(String, u16, String), String> {
        let r = parse_request(head.as_bytes()).map_err(|r| r.message)?;
        Ok((
            r.host,
            r.port,
            String::from_utf8(r.forward_head.unwrap_or_default()).unwrap(),
        ))
    }

    #[test]
    fn plain_http_goes_out_in_origin_form_without_proxy_headers() {
        let (host, port, head) = forwarded(
            "GET http://Pkg.Example:8080/a/b?c=1 HTTP/1.1\r\nHost: other\r\n\
             Proxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n\
             Connection: keep-alive\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!((host.as_str(), port), ("pkg.example", 8080));
        assert_eq!(
            head,
            "GET /a/b?c=1 HTTP/1.1\r\nHost: Pkg.Example:8080\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        let (_, port, head) = forwarded("HEAD http://pkg.example?x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(port, 80);
        assert!(head.starts_with("HEAD /?x HTTP/1.1\r\n"), "{head}");
    }

    #[test]
    fn the_proxy_password_comes_from_basic_credentials() {
        use base64::Engine as _;
        let basic = |creds: &str| base64::engine::general_purpose::STANDARD.encode(creds);
        let head = |auth: &str| {
            format!("CONNECT pkg.example:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n")
        };
        let password = |auth: &str| proxy_password(head(auth).as_bytes());
        assert_eq!(
            password(&format!("Basic {}", basic("sandbox:tok:en"))).as_deref(),
            Some("tok:en")
        );
        assert_eq!(
            password(&format!("basic  {}", basic("any:tok"))).as_deref(),
            Some("tok")
        );
        for bad in [
            format!("Bearer {}", basic("sandbox:tok")),
            format!("Basic {}", basic("no-colon")),
            format!("Basic {}", basic("sandbox:")),
            "Basic !!!".to_string(),
            "Basic".to_string(),
        ] {
            assert_eq!(password(&bad), None, "{bad}");
        }
        assert_eq!(
            proxy_password(b"CONNECT pkg.example:443 HTTP/1.1\r\n\r\n"),
            None
        );
    }

    #[test]
    fn connect_needs_a_port_and_other_forms_are_refused() {
        let r = parse_request(b"CONNECT pkg.example:443 HTTP/1.1\r\n\r\nhello").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("pkg.example", 443));
        assert!(r.forward_head.is_none());
        assert_eq!(r.rest, b"hello");
        let r = parse_request(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 8443));
        for (head, why) in [
            ("CONNECT pkg.example HTTP/1.1\r\n\r\n", "needs host:port"),
            ("CONNECT pkg.example:0 HTTP/1.1\r\n\r\n", "1 to 65535"),
            ("GET /path HTTP/1.1\r\n\r\n", "this is a proxy"),
            ("GET https://pkg.example/ HTTP/1.1\r\n\r\n", "CONNECT"),
            (
                "GET http://u:p@pkg.example/ HTTP/1.1\r\n\r\n",
                "credentials",
            ),
            (
                "GET http://bad host/ HTTP/1.1\r\n\r\n",
                "not an HTTP request",
            ),
            ("\x16\x03\x01 binary\r\n\r\n", "not an HTTP request"),
        ] {
            let err = forwarded(head).unwrap_err();
            assert!(err.contains(why), "{head:?}: {err}");
        }
    }
}
