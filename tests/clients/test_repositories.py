"""Issue 11 through real MCP clients: the caller's repository goes in, the agent's change comes out.

The official Python MCP SDK drives `delegate mcp` (embedded, stdio), `delegate mcp --server URL
--token T` (bridged to a `delegate serve`) and the plain HTTP MCP of `delegate serve`, with real git,
the real opencode under bubblewrap and the scripted fake upstream, whose agent (a `bash` tool call)
records what it found, modifies a tracked file, rewrites a binary one and adds a file. The caller's
repository has history, a dirty tracked file, an untracked file, ignored files, a binary file, a
symlink and names with spaces and non-ASCII characters (its own path too, so the `file://` root
is percent-encoded)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import Fake, Serve, StdioEnv, base_env, fresh_data_dir
from support import (
    DELEGATE,
    assert_nothing_running,
    await_cond,
    call_ok,
    call_tool_error,
    http_client,
    remove_tree,
    show,
)

pytestmark = pytest.mark.anyio

# The ignored files' contents: they must never leave the caller's machine.
IGNORED_LOG = b"ignored-log-secret-5d1c0e7a\n"
IGNORED_OBJ = b"ignored-build-secret-93b2f4c8\n"
SECRETS = (IGNORED_LOG.strip(), IGNORED_OBJ.strip())

ADDED = "seen by agent ö.txt"
ODD_NAME = "name with spaces ü.txt"
BLOB = bytes([0, 159, 146, 150, 0, 1, 2, 3])
# What the agent writes, as the printf calls of AGENT do.
AGENT_MAIN = b'fn main() { println!("hi"); }\n'
AGENT_BLOB = bytes([1, 2, 3, 0, 255])

# Per SSE event of the fake's slow replies: long enough to read a live sandbox's files.
SLOW_EVENT_MS = 150

# The scripted agent: records what it can read (the ignored files must be missing, the untracked
# one there, the snapshot's commits named) in a new file, then changes a text file and a binary one.
AGENT = (
    "{ cat debug.log build/out.o; cat notes/untracked.txt; cat 'name with spaces ü.txt'; "
    f"git log --format=%s; }} > '{ADDED}' 2>&1; "
    "printf 'fn main() { println!(\"hi\"); }\\n' > src/main.rs; "
    "printf '\\001\\002\\003\\000\\377' > data/blob.bin"
)
# The agent's change, as `git diff --name-status` between the snapshot and the agent's commit.
AGENT_CHANGE = sorted([f"A\t{ADDED}", "M\tdata/blob.bin", "M\tsrc/main.rs"])


# ---------------------------------------------------------------------------------------------------
# The caller's repository (plain git, no user or system config)


def git_env() -> dict[str, str]:
    env = base_env()
    env.pop("CLAUDE_PROJECT_DIR", None)
    # no index refresh as a side effect: the tests compare the index file byte for byte
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_OPTIONAL_LOCKS="0")
    return env


def git_out(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    p = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
         "-c", "core.quotepath=false", *args],
        cwd=repo, env=git_env(), input=stdin, capture_output=True, timeout=60, check=False,
    )
    assert p.returncode == 0, f"git {' '.join(args)} in {repo}: {p.stderr.decode(errors='replace')}"
    return p.stdout


def git(repo: Path, *args: str) -> str:
    return git_out(repo, *args).decode().strip()


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def make_project(base: Path) -> Path:
    """Two commits, then a dirty README.md, an untracked notes/untracked.txt and the ignored
    debug.log and build/out.o. Returns the work tree's root."""
    root = base / "proj ü"
    root.mkdir(parents=True)
    git(root, "init", "-q")
    write(root / "README.md", "# project\n")
    write(root / ".gitignore", "build/\n*.log\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    write(root / "src/main.rs", "fn main() {}\n")
    write(root / "data/blob.bin", BLOB)
    write(root / ODD_NAME, "odd name\n")
    (root / "link-to-readme").symlink_to("README.md")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "second")
    write(root / "README.md", "# project\n\ndirty line\n")
    write(root / "notes/untracked.txt", "not yet added\n")
    write(root / "debug.log", IGNORED_LOG)
    write(root / "build/out.o", IGNORED_OBJ)
    return root


def fingerprint(root: Path) -> dict[str, str]:
    """What the caller would notice changing: HEAD, the current branch, the index file's bytes and
    every entry of the working tree (type, mode, content hash or link target)."""
    out = {
        "HEAD": git(root, "rev-parse", "HEAD"),
        "branch": git(root, "symbolic-ref", "HEAD"),
        "index": hashlib.sha256((root / ".git" / "index").read_bytes()).hexdigest(),
    }
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = f"{stat.S_IMODE(st.st_mode):o} {hashlib.sha256(p.read_bytes()).hexdigest()}"
    return out


def delegate_branches(root: Path) -> list[str]:
    return git(root, "for-each-ref", "--format=%(refname:short)", "refs/heads/delegate/").split()


def check_branch(root: Path, out: dict[str, Any], head: str) -> str:
    """The run's branch: HEAD, then the uncommitted changes, then exactly the agent's work."""
    branch = out.get("branch")
    assert branch and branch.startswith("delegate/"), f"no delegate/ branch in the result: {out}"
    tip = git(root, "rev-parse", f"refs/heads/{branch}")
    assert out["commit"] == tip, f"result commit {out['commit']} is not the branch's tip {tip}"
    chain = git(root, "rev-list", "--parents", tip, f"^{head}").splitlines()
    assert len(chain) == 2, f"{branch} should add two commits on HEAD, has: {chain}"
    mid_id = git(root, "rev-parse", f"{tip}~1")
    assert chain[0].split() == [tip, mid_id], chain
    assert chain[1].split() == [mid_id, head], chain
    # the uncommitted-changes commit: the dirty tracked file and the untracked one, not the ignored
    mid = f"{tip}~1"
    assert git_out(root, "show", f"{mid}:README.md") == b"# project\n\ndirty line\n"
    assert git_out(root, "show", f"{mid}:notes/untracked.txt") == b"not yet added\n"
    mid_files = git(root, "ls-tree", "-r", "--name-only", mid).splitlines()
    assert "debug.log" not in mid_files and "build/out.o" not in mid_files, mid_files
    # the agent's commit: its three changes, the binary byte for byte, the symlink still a symlink
    changed = sorted(git(root, "diff", "--name-status", "--no-renames", mid, tip).splitlines())
    assert changed == AGENT_CHANGE, changed
    assert git_out(root, "cat-file", "blob", f"{tip}:data/blob.bin") == AGENT_BLOB
    assert git_out(root, "cat-file", "blob", f"{tip}:src/main.rs") == AGENT_MAIN
    tree = git(root, "ls-tree", tip)
    assert any(line.startswith("120000 blob") and line.endswith("\tlink-to-readme") for line in tree.splitlines()), tree
    # what the agent could read in the sandbox
    seen = git_out(root, "cat-file", "blob", f"{tip}:{ADDED}").decode(errors="replace")
    assert "debug.log: No such file" in seen and "build/out.o: No such file" in seen, seen
    assert not any(s.decode() in seen for s in SECRETS), f"an ignored file reached the sandbox:\n{seen}"
    assert "not yet added" in seen and "odd name" in seen, seen
    assert head[:12] in seen, f"the snapshot's commit does not name the caller's HEAD {head}:\n{seen}"
    return branch


def check_result(out: dict[str, Any], root: Path, head: str) -> None:
    assert out["status"] == "succeeded", out
    base = out.get("base") or {}
    assert base.get("commit") == head and base.get("dirty") is True, base
    assert os.path.realpath(base.get("repo", "")) == os.path.realpath(root), base
    assert base.get("branch") == "main", base
    # embedded delegate has no public URL: its patch is the resource only
    if out.get("patch_url") is not None:
        assert out["patch_url"].endswith(f"/api/runs/{out['run_id']}/patch"), out["patch_url"]
    files = {f["path"]: f for f in out["changed_files"]}
    assert sorted(files) == sorted([ADDED, "data/blob.bin", "src/main.rs"]), out["changed_files"]
    assert files["data/blob.bin"]["binary"] is True and files["data/blob.bin"]["change"] == "modified", files
    assert (files["src/main.rs"]["additions"], files["src/main.rs"]["deletions"]) == (1, 1), files


# ---------------------------------------------------------------------------------------------------
# No copy of the ignored files' content: raw bytes, git packs (bundles, .pack) and loose objects


def pack_objects(data: bytes, start: int) -> Iterator[bytes]:
    """The inflated objects of the git pack at `data[start:]` (deltas as their delta data, which
    holds any inserted bytes literally)."""
    view = memoryview(data)
    count = int.from_bytes(data[start + 8 : start + 12], "big")
    pos = start + 12
    for _ in range(count):
        c = data[pos]
        pos += 1
        kind = (c >> 4) & 7
        while c & 0x80:
            c = data[pos]
            pos += 1
        if kind == 6:  # offset delta: a base offset varint
            c = data[pos]
            pos += 1
            while c & 0x80:
                c = data[pos]
                pos += 1
        elif kind == 7:  # reference delta: the base's id
            pos += 20
        d = zlib.decompressobj()
        inflated = d.decompress(view[pos:])
        yield inflated
        pos = len(data) - len(d.unused_data)


def contents_of(path: Path) -> Iterator[bytes]:
    """A file's bytes and, for git packs, bundles and loose objects, what they hold inflated."""
    data = path.read_bytes()
    yield data
    if data.startswith(b"PACK"):
        yield from pack_objects(data, 0)
    elif data.startswith((b"# v2 git bundle", b"# v3 git bundle")):
        end = data.find(b"\n\n")
        if end >= 0 and data[end + 2 : end + 6] == b"PACK":
            yield from pack_objects(data, end + 2)
    elif path.parent.parent.name == "objects" and len(path.parent.name) == 2:
        with contextlib.suppress(zlib.error):
            yield zlib.decompress(data)


def found_below(top: Path, name: str) -> bool:
    """Whether a file called `name` is below `top` (a tree that may change while it is walked)."""
    return any(name in filenames for _, _, filenames in os.walk(top))


def assert_no_secrets(*dirs: Path) -> int:
    """No file below `dirs` holds an ignored file's content; returns how many files were read."""
    read = 0
    for top in dirs:
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                p = Path(dirpath) / name
                try:
                    if not stat.S_ISREG(p.lstat().st_mode):
                        continue
                    contents = list(contents_of(p))
                except FileNotFoundError:
                    continue  # removed while we walked (a sandbox's files being cleaned up)
                read += 1
                for blob in contents:
                    for secret in SECRETS:
                        assert secret not in blob, f"{p} holds the content of an ignored file ({secret!r})"
    return read


# ---------------------------------------------------------------------------------------------------
# Clients


@contextlib.asynccontextmanager
async def mcp_stdio(
    args: list[str], env: dict[str, str], errlog: Path, *, cwd: Path, mode: str = "legacy",
    roots: list[Path] | None = None, asked: list[int] | None = None,
) -> AsyncIterator[Any]:
    """`delegate mcp ARGS` in `cwd`; with `roots`, a client that declares the roots capability and
    answers roots/list with them (counting the requests in `asked`)."""
    from mcp import Client, StdioServerParameters
    from mcp import types as t
    from mcp.client.stdio import stdio_client as sdk_stdio_client

    async def list_roots(_ctx: Any) -> Any:
        if asked is not None:
            asked.append(1)
        return t.ListRootsResult(roots=[t.Root(uri=r.as_uri(), name=r.name) for r in roots or []])

    params = StdioServerParameters(command=str(DELEGATE), args=args, env=env, cwd=cwd)
    kw = {"list_roots_callback": list_roots} if roots is not None else {}
    with open(errlog, "a") as err:
        async with Client(sdk_stdio_client(params, errlog=err), mode=mode, **kw) as client:
            yield client


def embedded_env(stdio: StdioEnv) -> dict[str, str]:
    env = dict(stdio.env)
    env.pop("CLAUDE_PROJECT_DIR", None)
    return env


def bridged_env(data_dir: Path) -> dict[str, str]:
    """No Anthropic key and no opencode: the server does the work; the snapshot is taken here."""
    env = base_env()
    env.pop("CLAUDE_PROJECT_DIR", None)
    env.update(DELEGATE_DATA_DIR=str(data_dir), DELEGATE_LOG="info", DELEGATE_OPENCODE_BIN="/nonexistent")
    return env


async def read_patch(client: Any, uri: str) -> bytes:
    res = await client.read_resource(uri)
    assert len(res.contents) == 1, res
    c = res.contents[0]
    assert c.mime_type == "text/x-diff", c
    text = getattr(c, "text", None)
    return text.encode() if text is not None else base64.b64decode(c.blob)


def check_patch_applies(root: Path, branch: str, patch: bytes, scratch: Path) -> None:
    """The patch applies to a checkout of the branch's parent and gives exactly the branch's tree."""
    copy = scratch / "patch-check"
    git(scratch, "clone", "-q", "--no-checkout", str(root), str(copy))
    parent = git(root, "rev-parse", f"refs/heads/{branch}~1")
    git(copy, "checkout", "-q", "--detach", parent)
    (scratch / "run.patch").write_bytes(patch)
    git(copy, "apply", "--check", str(scratch / "run.patch"))
    git(copy, "apply", str(scratch / "run.patch"))
    git(copy, "add", "-A")
    assert git(copy, "write-tree") == git(root, "rev-parse", f"refs/heads/{branch}^{{tree}}")


@pytest.fixture(scope="module")
def fake_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    fake = Fake(f"bash:{AGENT}", tmp_path_factory.mktemp("fake") / "fake-agent.log")
    yield fake
    fake.stop()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A current directory that is no git work tree."""
    d = tmp_path / "not a repo"
    d.mkdir()
    p = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=d, env=git_env(), capture_output=True, check=False)
    assert p.returncode != 0, f"{d} is inside a git work tree ({p.stdout!r}); the test needs one that is not"
    return d


# ---------------------------------------------------------------------------------------------------
# Tests


async def test_embedded_run_takes_the_repository_from_the_client_roots(
    stdio_factory: Callable[..., StdioEnv], fake_agent: Fake, tmp_path: Path, elsewhere: Path
) -> None:
    root = make_project(tmp_path / "caller")
    head = git(root, "rev-parse", "HEAD")
    before = fingerprint(root)
    stdio = stdio_factory(fake_agent.url)
    asked: list[int] = []
    with anyio.fail_after(180):
        async with mcp_stdio(
            ["mcp"], embedded_env(stdio), stdio.errlog, cwd=elsewhere, roots=[root], asked=asked
        ) as c:
            r = await c.call_tool("run_in_sandbox", {"task": "make the change"})
            assert not r.is_error, show(r)
            out = r.structured_content
            assert isinstance(out, dict), show(r)
            assert asked, "delegate never asked the client for its roots"
            check_result(out, root, head)
            assert out.get("applied") in (None, False) and not out.get("conflicts"), out

            links = [b for b in r.content or [] if getattr(b, "type", None) == "resource_link"]
            uri = f"delegate://runs/{out['run_id']}/patch"
            assert [str(b.uri) for b in links] == [uri], f"resource links: {links}"
            patch = await read_patch(c, uri)

    assert fingerprint(root) == before, "the caller's HEAD, index or working tree changed"
    branch = check_branch(root, out, head)
    assert delegate_branches(root) == [branch]
    assert b"GIT binary patch" in patch, patch[:2000]
    check_patch_applies(root, branch, patch, tmp_path)
    # the embedded server's own data dir (snapshots kept for apply_changes, the sandbox) neither,
    # read once delegate mcp and its sandbox are gone
    assert_nothing_running(stdio.data_dir)
    assert assert_no_secrets(stdio.data_dir) > 0


async def test_apply_none_then_apply_changes_to_the_worktree_and_a_conflict_changes_nothing(
    stdio_factory: Callable[..., StdioEnv], fake_agent: Fake, tmp_path: Path, elsewhere: Path
) -> None:
    root = make_project(tmp_path / "caller")
    head = git(root, "rev-parse", "HEAD")
    before = fingerprint(root)
    stdio = stdio_factory(fake_agent.url)
    with anyio.fail_after(180):
        async with mcp_stdio(["mcp"], embedded_env(stdio), stdio.errlog, cwd=elsewhere, roots=[root]) as c:
            out = await call_ok(c, "run_in_sandbox", {"task": "make the change", "apply": "none"})
            check_result(out, root, head)
            assert out.get("branch") is None and out.get("commit"), out
            assert fingerprint(root) == before and delegate_branches(root) == [], "apply: none changed the repository"

            applied = await call_ok(c, "apply_changes", {"run_id": out["run_id"], "to": "worktree"})
            assert applied["applied"] is True and not applied.get("conflicts"), applied
            branch = check_branch(root, applied, head)
            landed = fingerprint(root)
            assert (root / "src/main.rs").read_bytes() == AGENT_MAIN
            assert (root / "data/blob.bin").read_bytes() == AGENT_BLOB
            assert (root / ADDED).is_file()
            # only the agent's files changed: HEAD, index, the caller's own edits stay
            expected = dict(before)
            for path in ("src/main.rs", "data/blob.bin", ADDED):
                expected[path] = landed[path]
            assert landed == expected, "the worktree apply touched more than the agent's change"

            # undo it, then edit a file the agent changed: the next apply must refuse and change nothing
            (root / ADDED).unlink()
            write(root / "data/blob.bin", BLOB)
            write(root / "src/main.rs", "fn main() { todo!() }\n")
            edited = fingerprint(root)
            again = await call_ok(c, "apply_changes", {"run_id": out["run_id"], "to": "worktree"})
            assert again["applied"] is False, again
            assert again["conflicts"] == ["src/main.rs"], again
            assert "src/main.rs" in again["message"], again
            assert fingerprint(root) == edited, "a refused worktree apply changed the repository"
            # the branch it wrote names the same commit as the first apply's
            assert again.get("commit") == applied["commit"], (applied, again)
    assert branch in delegate_branches(root)


def short_id(run_id: str) -> str:
    """The branch name of a run: the last 8 characters of its id's random part."""
    tail = "".join(c for c in run_id.rsplit("_", 1)[-1] if c.isascii() and (c.isalnum() or c == "-"))
    return tail[-8:] or "run"


@pytest.mark.parametrize("project_from", ["cwd", "CLAUDE_PROJECT_DIR", "roots", "repo"])
async def test_bridged_mcp_snapshots_here_and_the_server_keeps_no_ignored_content(
    project_from: str,
    serve_factory: Callable[..., Serve],
    fake_factory: Callable[[str], Fake],
    tmp_path: Path,
    elsewhere: Path,
) -> None:
    root = make_project(tmp_path / "caller")
    head = git(root, "rev-parse", "HEAD")
    before = fingerprint(root)
    serve = serve_factory(fake_factory(f"slow:{SLOW_EVENT_MS}:bash:{AGENT}").url)
    token = serve.token()
    local = fresh_data_dir()
    # the project: the server process's cwd, CLAUDE_PROJECT_DIR (as Claude Code sets it), the
    # client's MCP roots, or `repo`, a path relative to the cwd above the work tree
    env = bridged_env(local)
    task: dict[str, Any] = {"task": "make the change"}
    roots: list[Path] | None = None
    mode = "auto"
    if project_from == "cwd":
        cwd = root
    elif project_from == "CLAUDE_PROJECT_DIR":
        cwd = elsewhere
        env["CLAUDE_PROJECT_DIR"] = str(root)
    elif project_from == "roots":
        # roots/list is a server-to-client request: the initialize era only (auto finds the newer)
        cwd, roots, mode = elsewhere, [root], "legacy"
    else:
        cwd = root.parent
        task["repo"] = root.name
    try:
        with anyio.fail_after(180):
            async with mcp_stdio(
                ["mcp", "--server", serve.base_url, "--token", token],
                env, tmp_path / "bridged-mcp.log", cwd=cwd, mode=mode, roots=roots,
            ) as c:
                done: dict[str, Any] = {}

                async def run() -> None:
                    done["r"] = await c.call_tool("run_in_sandbox", task)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    # while the agent works (the fake answers slowly), the server holds the
                    # repository at its fullest: the uploaded snapshot checked out in the sandbox
                    await await_cond(
                        lambda: found_below(serve.data_dir, "untracked.txt"), 60,
                        "the snapshot checked out in the server's sandbox",
                    )
                    assert "r" not in done, "the run ended before the sandbox could be read"
                    mid_run = assert_no_secrets(serve.data_dir)
                r = done["r"]
                assert not r.is_error, show(r)
                out = r.structured_content
                assert isinstance(out, dict), show(r)
                check_result(out, root, head)
                assert out["patch_url"].startswith(serve.base_url), out["patch_url"]
                patch = await read_patch(c, f"delegate://runs/{out['run_id']}/patch")
        assert fingerprint(root) == before, "the caller's HEAD, index or working tree changed"
        branch = check_branch(root, out, head)
        assert branch == f"delegate/{short_id(out['run_id'])}", (branch, out["run_id"])
        assert delegate_branches(root) == [branch]
        check_patch_applies(root, branch, patch, tmp_path)
        await await_cond(lambda: not serve.sandbox_processes(), 30, "the run's sandbox processes to exit")
        # the snapshot went to the server (and is kept here for apply_changes), without ignored files
        assert mid_run > 0 and assert_no_secrets(serve.data_dir) > 0
        assert assert_no_secrets(local) > 0
        assert token not in (tmp_path / "bridged-mcp.log").read_text(errors="replace")
    finally:
        remove_tree(local)


async def test_repo_that_is_not_a_work_tree_is_a_not_a_repo_tool_error(
    stdio_factory: Callable[..., StdioEnv], fake_agent: Fake, tmp_path: Path, elsewhere: Path
) -> None:
    plain = elsewhere / "plain dir"
    write(plain / "file.txt", "no git here\n")
    stdio = stdio_factory(fake_agent.url)
    with anyio.fail_after(60):
        async with mcp_stdio(["mcp"], embedded_env(stdio), stdio.errlog, cwd=elsewhere) as c:
            for repo in (str(plain), "plain dir", "."):
                text = await call_tool_error(c, "run_in_sandbox", {"task": "make the change", "repo": repo})
                assert "not_a_repo" in text, f"repo {repo!r}: {text}"
            listed = await call_ok(c, "list_sandboxes", {})
            assert listed["sandboxes"] == [], f"a refused repo still made a sandbox: {listed}"
    assert sorted(p.name for p in plain.iterdir()) == ["file.txt"], "delegate wrote into the refused directory"


async def test_plain_http_mcp_refuses_a_local_path_saying_where_delegate_must_run(
    serve_factory: Callable[..., Serve], fake_agent: Fake, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "caller")
    serve = serve_factory(fake_agent.url)
    token = serve.token()
    with anyio.fail_after(60):
        async with http_client(serve.mcp_url, token, "auto") as c:
            for repo in (str(root), "."):
                text = await call_tool_error(c, "run_in_sandbox", {"task": "make the change", "repo": repo})
                assert "not_a_repo" in text, f"repo {repo!r}: {text}"
                assert "delegate mcp" in text and "machine" in text, f"repo {repo!r}: no hint where to run delegate: {text}"
            text = await call_tool_error(c, "apply_changes", {"run_id": "run_x"})
            assert "on your machine" in text, text
            listed = await call_ok(c, "list_sandboxes", {})
            assert listed["sandboxes"] == [], listed
    assert not serve.sandbox_processes(), "a refused repo started a sandbox"
