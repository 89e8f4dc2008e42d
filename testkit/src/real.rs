//! Finding the real components tests need (opencode, bubblewrap). Under the README's test command
//! `DELEGATE_REQUIRE_ALL=1` is set and a missing component fails the test; a plain `cargo test`
//! skips such a test, saying why on stderr.

use std::path::{Path, PathBuf};

/// Whether missing prerequisites must fail instead of skipping.
pub fn require_all() -> bool {
    std::env::var("DELEGATE_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Skips (prints why, returns `None`) or, under `DELEGATE_REQUIRE_ALL`, panics.
pub fn unavailable<T>(what: &str, why: &str) -> Option<T> {
    if require_all() {
        panic!("{what} is required (DELEGATE_REQUIRE_ALL is set) but {why}");
    }
    eprintln!("skipped: {what}: {why}");
    None
}

/// The repository root (this crate lives in `testkit/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The real opencode binary: `DELEGATE_OPENCODE_BIN`, else the copy `scripts/setup` installs under
/// `.tools/`, else `opencode` on PATH.
pub fn opencode() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DELEGATE_OPENCODE_BIN").map(PathBuf::from),
        Some(repo_root().join(".tools/node_modules/opencode-linux-x64/bin/opencode")),
        on_path("opencode"),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(p) => Some(p),
        None => unavailable(
            "opencode",
            "no binary found (set DELEGATE_OPENCODE_BIN or run scripts/setup)",
        ),
    }
}

/// Whether bubblewrap is installed.
pub fn bwrap() -> Option<PathBuf> {
    match on_path("bwrap") {
        Some(p) => Some(p),
        None => unavailable(
            "bubblewrap",
            "bwrap is not on PATH (apt-get install bubblewrap)",
        ),
    }
}

/// The first file called `name` on `PATH`. Unlike the lookups above it neither prints a skip
/// message nor panics under `DELEGATE_REQUIRE_ALL`: callers decide whether a missing program
/// matters.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A Docker Engine for the container tests: `DELEGATE_TEST_DOCKER_HOST` (what `scripts/test`
/// starts), else `DOCKER_HOST`, as `unix:///path`; it must answer `/_ping`.
pub fn docker_host() -> Option<String> {
    let host = std::env::var("DELEGATE_TEST_DOCKER_HOST")
        .or_else(|_| std::env::var("DOCKER_HOST"))
        .unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let Some(path) = host.strip_prefix("unix://") else {
        return unavailable("Docker Engine", &format!("{host} is not a unix:// socket"));
    };
    let answers = (|| -> std::io::Result<bool> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"))
    })();
    match answers {
        Ok(true) => Some(host),
        Ok(false) => unavailable("Docker Engine", &format!("{host} does not answer /_ping")),
        Err(e) => unavailable(
            "Docker Engine",
            &format!("cannot reach {host} ({e}); scripts/dockerd start runs one"),
        ),
    }
}

/// The sandbox image the container tests use (`sandbox-image/build` makes it).
pub fn sandbox_image() -> String {
    std::env::var("DELEGATE_SANDBOX_IMAGE").unwrap_or_else(|_| "delegate-sandbox:1.18.33".into())
}
