//! `repo` URLs cloned by the server, against a real git server on loopback: `git http-backend`
//! (the smart protocol, so shallow and by-commit fetches are real) as CGI behind a small axum
//! handler, or the same repository served as static files (the dumb protocol). Loopback is
//! reachable only because each test lists the server in the clone policy, as an admin would
//! with `DELEGATE_GIT_ALLOWED_HOSTS`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use delegate_repo::Limits;
use delegate_server::delegation::clone::{CLONE_TIMEOUT, ClonePolicy, clone_url};
use delegate_server::settings::parse_git_host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A git server on `127.0.0.1:port` serving the bare repositories under `root`.
struct GitServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    _root: tempfile::TempDir,
}

#[derive(Clone)]
struct Served {
    root: PathBuf,
    dumb: bool,
    hits: Arc<AtomicUsize>,
    /// The `Authorization` header every request must carry (a private repository).
    auth: Option<String>,
}

impl GitServer {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn policy(&self) -> ClonePolicy {
        ClonePolicy {
            allowed_hosts: vec![parse_git_host(&format!("127.0.0.1:{}", self.port)).unwrap()],
            timeout: CLONE_TIMEOUT,
            credential: None,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The repository every test clones, as `project.git`: `main` with two commits (the first is
/// tagged `v1`), and `feature` with one more. Returns the commit ids: first, main, feature.
async fn serve(dumb: bool) -> (GitServer, [String; 3]) {
    serve_as(dumb, None).await
}

/// [`serve`], answering only requests that carry the `Authorization` header `auth`.
async fn serve_as(dumb: bool, auth: Option<String>) -> (GitServer, [String; 3]) {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    tokio::fs::create_dir_all(&src).await.unwrap();
    git(&src, &["init", "-q", "-b", "main"]).await;
    tokio::fs::write(src.join("README.md"), "first\n")
        .await
        .unwrap();
    git(&src, &["add", "-A"]).await;
    git(&src, &["commit", "-q", "-m", "first"]).await;
    git(&src, &["tag", "v1"]).await;
    let first = git(&src, &["rev-parse", "HEAD"]).await;
    tokio::fs::write(src.join("README.md"), "second\n")
        .await
        .unwrap();
    git(&src, &["commit", "-q", "-am", "second"]).await;
    let main = git(&src, &["rev-parse", "HEAD"]).await;
    git(&src, &["checkout", "-q", "-b", "feature"]).await;
    tokio::fs::write(src.join("feature.txt"), "on the feature branch\n")
        .await
        .unwrap();
    git(&src, &["add", "-A"]).await;
    git(&src, &["commit", "-q", "-m", "feature"]).await;
    let feature = git(&src, &["rev-parse", "HEAD"]).await;
    git(&src, &["checkout", "-q", "main"]).await;
    let bare = root.path().join("project.git");
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            "project.git",
        ],
    )
    .await;
    git(&bare, &["update-server-info"]).await;

    let hits = Arc::new(AtomicUsize::new(0));
    let served = Served {
        root: root.path().to_path_buf(),
        dumb,
        hits: hits.clone(),
        auth,
    };
    let app = axum::Router::new().fallback(handle).with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        GitServer {
            port,
            hits,
            _root: root,
        },
        [first, main, feature],
    )
}

async fn handle(State(s): State<Served>, req: Request) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path.contains("..") {
        return status(StatusCode::BAD_REQUEST);
    }
    if let Some(want) = &s.auth {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(want.as_str()) {
            let mut r = status(StatusCode::UNAUTHORIZED);
            r.headers_mut()
                .insert("www-authenticate", "Basic realm=\"git\"".parse().unwrap());
            return r;
        }
    }
    if s.dumb {
        return match tokio::fs::read(s.root.join(path.trim_start_matches('/'))).await {
            Ok(bytes) => Response::new(Body::from(bytes)),
            Err(_) => status(StatusCode::NOT_FOUND),
        };
    }
    cgi(&s.root, req).await
}

fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

/// `git http-backend` as CGI: the request in its environment and on its stdin, its stdout a
/// CGI reply (headers, a blank line, the body).
async fn cgi(root: &Path, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let header = |h: &HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header(&parts.headers, "content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header(&parts.headers, "content-encoding"),
        )
        .env("GIT_PROTOCOL", header(&parts.headers, "git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    let _ = writer.await;
    let _ = child.wait().await;

    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, gap)) = split else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let mut reply = Response::new(Body::from(out[end + gap..].to_vec()));
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap().parse().unwrap();
            *reply.status_mut() = StatusCode::from_u16(code).unwrap();
        } else {
            let name: HeaderName = name.parse().unwrap();
            reply.headers_mut().insert(name, value.parse().unwrap());
        }
    }
    reply
}

async fn git(cwd: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("git")
        .current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a sandbox would see: the bundle cloned, and one file of it.
async fn seeded(bundle: &Path, file: &str) -> Option<String> {
    let out = tempfile::tempdir().unwrap();
    git(
        out.path(),
        &["clone", "-q", bundle.to_str().unwrap(), "seed"],
    )
    .await;
    tokio::fs::read_to_string(out.path().join("seed").join(file))
        .await
        .ok()
}

#[tokio::test]
async fn clones_a_branch_a_tag_a_commit_and_the_default_branch() {
    let (server, [first, main, feature]) = serve(false).await;
    let url = server.url("project.git");
    let scratch = tempfile::tempdir().unwrap();
    let cases = [
        (None, &main, "README.md", "second\n"),
        (
            Some("feature"),
            &feature,
            "feature.txt",
            "on the feature branch\n",
        ),
        (Some("v1"), &first, "README.md", "first\n"),
        (Some(first.as_str()), &first, "README.md", "first\n"),
    ];
    for (git_ref, commit, file, content) in cases {
        let snap = clone_url(
            &url,
            git_ref,
            Limits::default(),
            scratch.path(),
            &server.policy(),
        )
        .await
        .unwrap_or_else(|e| panic!("{git_ref:?}: {e}"));
        assert_eq!(snap.base.repo, url);
        assert_eq!(snap.base.commit.as_deref(), Some(commit.as_str()));
        assert_eq!(snap.base.branch.as_deref(), git_ref);
        assert!(!snap.base.dirty);
        assert_eq!(
            seeded(&snap.bundle(), file).await.as_deref(),
            Some(content),
            "{git_ref:?}"
        );
        // The snapshot stands alone: the clone is gone, and its scratch repository still
        // holds every object of the tip.
        let scratch_git = snap.scratch();
        git(
            scratch.path(),
            &[
                "--git-dir",
                scratch_git.to_str().unwrap(),
                "fsck",
                "--no-dangling",
                &snap.tip,
            ],
        )
        .await;
        assert!(
            !tokio::fs::try_exists(scratch_git.join("objects/info/alternates"))
                .await
                .unwrap()
        );
    }
    // Only the snapshots' own directories are left in scratch.
    let mut left = tokio::fs::read_dir(scratch.path()).await.unwrap();
    while let Some(e) = left.next_entry().await.unwrap() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with("clone-"), "{name} left behind");
    }
}

#[tokio::test]
async fn a_dumb_http_server_gets_a_full_clone() {
    let (server, [first, main, feature]) = serve(true).await;
    let url = server.url("project.git");
    let scratch = tempfile::tempdir().unwrap();
    for (git_ref, commit) in [
        (None, &main),
        (Some("feature"), &feature),
        (Some(first.as_str()), &first),
    ] {
        let snap = clone_url(
            &url,
            git_ref,
            Limits::default(),
            scratch.path(),
            &server.policy(),
        )
        .await
        .unwrap_or_else(|e| panic!("{git_ref:?}: {e}"));
        assert_eq!(snap.base.commit.as_deref(), Some(commit.as_str()));
    }
}

#[tokio::test]
async fn loopback_not_listed_is_refused_before_any_request() {
    let (server, _) = serve(false).await;
    let scratch = tempfile::tempdir().unwrap();
    let none = ClonePolicy::default();
    let urls = [
        format!("https://127.0.0.1:{}/project.git", server.port),
        format!("https://localhost:{}/project.git", server.port),
        format!("https://[::1]:{}/project.git", server.port),
        format!("https://0x7f.1:{}/project.git", server.port),
        // plain http to a host nobody listed
        server.url("project.git"),
    ];
    for url in urls {
        let e = clone_url(&url, None, Limits::default(), scratch.path(), &none)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "invalid_input", "{url}: {e}");
    }
    assert_eq!(server.hits(), 0, "the server saw a request");
}

#[tokio::test]
async fn credentials_in_the_url_are_refused_and_never_repeated() {
    let (server, _) = serve(false).await;
    let scratch = tempfile::tempdir().unwrap();
    let url = format!(
        "http://alice:s3cret-token@127.0.0.1:{}/project.git",
        server.port
    );
    let e = clone_url(
        &url,
        None,
        Limits::default(),
        scratch.path(),
        &server.policy(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "invalid_input");
    assert!(!e.to_string().contains("s3cret-token"), "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn failures_name_what_was_unreachable() {
    let (server, _) = serve(false).await;
    let scratch = tempfile::tempdir().unwrap();
    // A port nobody listens on: bound, then closed.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let closed_policy = ClonePolicy {
        allowed_hosts: vec![parse_git_host(&format!("127.0.0.1:{closed}")).unwrap()],
        timeout: CLONE_TIMEOUT,
        credential: None,
    };
    let e = clone_url(
        &format!("http://127.0.0.1:{closed}/project.git"),
        None,
        Limits::default(),
        scratch.path(),
        &closed_policy,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "repo_unreachable", "{e}");
    assert!(e.to_string().contains("cannot connect"), "{e}");

    let e = clone_url(
        &server.url("project.git"),
        Some("no-such-branch"),
        Limits::default(),
        scratch.path(),
        &server.policy(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "repo_unreachable", "{e}");
    assert!(e.to_string().contains("no-such-branch"), "{e}");

    let missing = "0".repeat(40);
    let e = clone_url(
        &server.url("project.git"),
        Some(&missing),
        Limits::default(),
        scratch.path(),
        &server.policy(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "repo_unreachable", "{e}");
    assert!(e.to_string().contains(&missing), "{e}");

    let e = clone_url(
        &server.url("nothing-here.git"),
        None,
        Limits::default(),
        scratch.path(),
        &server.policy(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "repo_unreachable", "{e}");
}

#[tokio::test]
async fn a_repository_over_the_limit_is_refused() {
    let (server, _) = serve(false).await;
    let scratch = tempfile::tempdir().unwrap();
    let e = clone_url(
        &server.url("project.git"),
        None,
        Limits {
            max_bytes: 3,
            max_files: 100,
        },
        scratch.path(),
        &server.policy(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "repo_too_large", "{e}");
    assert!(e.to_string().contains("README.md"), "{e}");
    assert!(e.to_string().contains(&server.url("project.git")), "{e}");
    assert!(e.to_string().contains("DELEGATE_MAX_REPO_BYTES"), "{e}");

    // The file count too, with its own setting named.
    let e = clone_url(
        &server.url("project.git"),
        None,
        Limits {
            max_bytes: 1 << 30,
            max_files: 0,
        },
        scratch.path(),
        &server.policy(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "repo_too_large", "{e}");
    assert!(
        e.to_string().contains("DELEGATE_MAX_REPO_FILES (0 files)"),
        "{e}"
    );
    assert!(e.to_string().contains("README.md"), "{e}");
}

/// A run whose `repo` is a URL: the server clones it outside the sandbox and the agent reads the
/// asked-for branch; the result names the URL and the commit as its base.
#[tokio::test]
async fn a_run_from_a_url_starts_from_the_clone() {
    use delegate_mcp::delegator::{Caller, Delegator};
    use delegate_mcp::tools::RunInSandboxInput;
    use delegate_mcp::types::RunStatus;
    use delegate_testkit::anthropic::Script;

    let (server, [_, _, feature]) = serve(false).await;
    let Some(h) = common::Harness::new(Script::read_file("feature.txt")).await else {
        return;
    };
    let mut settings = h.settings();
    settings.git_allowed_hosts = server.policy().allowed_hosts;
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let delegator = delegate_server::delegation::EmbeddedDelegator::new(orch.clone());
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        token_id: None,
        client: None,
        workspace_id: None,
    };
    let run = |repo: String| {
        let (progress, _) = tokio::sync::mpsc::channel(64);
        let input = RunInSandboxInput {
            task: "read feature.txt".into(),
            repo: Some(repo),
            git_ref: Some("feature".into()),
            ..Default::default()
        };
        delegator.run_in_sandbox(
            &caller,
            input,
            progress,
            tokio_util::sync::CancellationToken::new(),
        )
    };
    let url = server.url("project.git");
    let r = run(url.clone()).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(
        r.final_message.contains("on the feature branch"),
        "{}",
        r.final_message
    );
    let base = r.base.expect("the run names its base");
    assert_eq!(base.repo, url);
    assert_eq!(base.commit.as_deref(), Some(feature.as_str()));
    assert_eq!(base.branch.as_deref(), Some("feature"));

    // Loopback that no admin listed is refused before any request and before any sandbox.
    let (other, _) = serve(false).await;
    let err = run(other.url("project.git").replace("http://", "https://"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    assert_eq!(other.hits(), 0);
    orch.shutdown().await;
}

/// Every file under `dir` (not following links), for leak checks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// A private repository (basic auth): without the workspace's git credential the run fails
/// `repo_unreachable` saying how to add one; with it the sandbox reads the files, and the token
/// shows up in no result, event, run row or file under the data dir (the sandbox's work dir, the
/// database and the run's artifacts among them).
#[tokio::test]
#[allow(clippy::disallowed_methods)] // the leak scan reads files synchronously, after the run
async fn a_private_repository_clones_with_the_workspace_credential_and_leaks_it_nowhere() {
    use base64::Engine;
    use delegate_mcp::delegator::{Caller, Delegator};
    use delegate_mcp::tools::RunInSandboxInput;
    use delegate_mcp::types::RunStatus;
    use delegate_server::settings::SecretKey;
    use delegate_testkit::anthropic::Script;

    const TOKEN: &str = "ghp_private-token-must-never-leak-5e1d";
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("bot:{TOKEN}"));
    let (server, [_, _, _]) = serve_as(false, Some(format!("Basic {basic}"))).await;
    let Some(h) = common::Harness::new(Script::read_file("feature.txt")).await else {
        return;
    };
    let mut settings = h.settings();
    settings.git_allowed_hosts = server.policy().allowed_hosts;
    settings.secret_key = Some(SecretKey([5; 32]));
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let delegator = delegate_server::delegation::EmbeddedDelegator::new(orch.clone());
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        token_id: None,
        client: None,
        workspace_id: None,
    };
    let run = |repo: String| {
        let (progress, _) = tokio::sync::mpsc::channel(64);
        let input = RunInSandboxInput {
            task: "read feature.txt".into(),
            repo: Some(repo),
            git_ref: Some("feature".into()),
            ..Default::default()
        };
        delegator.run_in_sandbox(
            &caller,
            input,
            progress,
            tokio_util::sync::CancellationToken::new(),
        )
    };
    let url = server.url("project.git");
    let host = format!("127.0.0.1:{}", server.port);

    let err = run(url.clone()).await.unwrap_err();
    let said = err.to_string();
    assert!(
        said.contains("needs authentication") && said.contains(&host),
        "{said}"
    );
    assert!(
        matches!(&err, delegate_mcp::DelegateError::Repo { kind, .. } if kind == "repo_unreachable"),
        "{said}"
    );

    let (ws, _) = orch
        .store()
        .workspaces_of_user(&orch.local_user().id)
        .await
        .unwrap()
        .remove(0);
    // A wrong token is refused by the server, and said so.
    orch.set_git_credential(&ws, &format!("http://{host}"), "bot", "wrong", None)
        .await
        .unwrap();
    let said = run(url.clone()).await.unwrap_err().to_string();
    assert!(
        said.contains("refused the workspace's git credential"),
        "{said}"
    );
    assert!(!said.contains("wrong"), "{said}");

    let info = orch
        .set_git_credential(&ws, &host, "bot", TOKEN, None)
        .await
        .unwrap();
    assert_eq!(
        (info.host.as_str(), info.username.as_str()),
        (host.as_str(), "bot")
    );
    let listed = orch.list_git_credentials(&ws).await.unwrap();
    assert_eq!(listed, vec![info]);

    let r = run(url.clone()).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(
        r.final_message.contains("on the feature branch"),
        "{}",
        r.final_message
    );

    let leaks = |text: &[u8]| common::contains(text, TOKEN) || common::contains(text, &basic);
    assert!(
        !leaks(serde_json::to_string(&r).unwrap().as_bytes()),
        "the result"
    );
    let row = orch.store().run(&r.run_id).await.unwrap();
    assert!(!leaks(format!("{row:?}").as_bytes()), "the run row");
    let events = orch
        .store()
        .events_after(&r.run_id, 0, 100_000)
        .await
        .unwrap();
    assert!(!events.is_empty());
    assert!(
        !leaks(serde_json::to_string(&events).unwrap().as_bytes()),
        "an event"
    );
    let files = files_under(&h.data_dir());
    assert!(files.len() > 3, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!leaks(&bytes), "{} holds the token", f.display());
    }

    orch.delete_git_credential(&ws, &host).await.unwrap();
    assert!(orch.list_git_credentials(&ws).await.unwrap().is_empty());
    orch.shutdown().await;
}
