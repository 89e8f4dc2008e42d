//! The loopback endpoint of a link is reachable by any process on the server's host, and behind
//! it is a developer's opencode (a shell on their machine). So every connection must prove, in
//! its first request, that it knows the endpoint's password — the same Basic credentials that
//! delegate's opencode clients send to every sandbox — before a single byte crosses the tunnel.
//! Later requests on the same connection come from the same client.

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest request head read before the check.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its first request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the first request head and checks its `Authorization`; returns the bytes read (to be
/// forwarded unchanged) or answers 401 and returns `None`.
pub async fn admit(tcp: &mut TcpStream, password: &str) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return false;
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if complete && authorized(&head, password) {
        return Some(head);
    }
    let _ = tcp
        .write_all(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\n\
              www-authenticate: Basic realm=\"opencode\"\r\ncontent-length: 13\r\n\
              connection: close\r\n\r\nunauthorized\n",
        )
        .await;
    None
}

/// Whether the head carries `Authorization: Basic base64("opencode:" + password)`.
fn authorized(head: &[u8], password: &str) -> bool {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("opencode:{password}"))
    );
    // Compared as digests: the time taken says nothing about the password.
    let want = Sha256::digest(want.as_bytes());
    String::from_utf8_lossy(&head[..end])
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .any(|(_, value)| Sha256::digest(value.trim().as_bytes()) == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_endpoint_password_gets_in() {
        let basic =
            |p: &str| base64::engine::general_purpose::STANDARD.encode(format!("opencode:{p}"));
        let head = |auth: &str| format!("GET /event HTTP/1.1\r\nhost: x\r\n{auth}\r\n\r\n");
        let good = head(&format!("Authorization: Basic {}", basic("pw")));
        assert!(authorized(good.as_bytes(), "pw"));
        assert!(authorized(
            head(&format!("authorization:Basic {}", basic("pw"))).as_bytes(),
            "pw"
        ));
        assert!(!authorized(good.as_bytes(), "other"));
        assert!(!authorized(head("x-other: 1").as_bytes(), "pw"));
        assert!(!authorized(
            head(&format!("Authorization: Bearer {}", basic("pw"))).as_bytes(),
            "pw"
        ));
        // A header in the body does not count.
        let smuggled = format!(
            "POST / HTTP/1.1\r\n\r\nAuthorization: Basic {}\r\n\r\n",
            basic("pw")
        );
        assert!(!authorized(smuggled.as_bytes(), "pw"));
    }
}
