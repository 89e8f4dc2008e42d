"""Best-of-N through the official Python MCP SDK: `run_in_sandbox` with `attempts: 2` over stdio
(`delegate mcp`) and streamable HTTP (`delegate serve`), with the real opencode under bubblewrap
behind the scripted fake upstream. The host reads the compact comparison, then applies one attempt
with `apply_changes` and that attempt's run id."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import Fake, Serve, StdioEnv
from support import (
    DELEGATE,
    HELLO_ADDED,
    call_invalid_params,
    call_ok,
    call_tool_error,
    http_client,
    stdio_client,
    text_of,
)

pytestmark = pytest.mark.anyio

# What the host compares attempts on: every attempt carries these.
COMPARED = ("run_id", "sandbox_id", "status", "files_changed", "additions", "deletions", "cost_usd", "duration_ms")


def check_parent(out: dict[str, Any], n: int) -> None:
    assert out["status"] == "succeeded", out
    assert out["sandbox_id"] == "", "a parent has no sandbox of its own"
    attempts = out["attempts"]
    assert len(attempts) == n, attempts
    for a in attempts:
        for field in COMPARED:
            assert field in a, (field, a)
        assert a["status"] == "succeeded", a
        assert (a["files_changed"], a["additions"], a["deletions"]) == (1, 1, 0), a
        assert a["run_id"] != out["run_id"]
    assert len({a["run_id"] for a in attempts}) == n
    assert len({a["sandbox_id"] for a in attempts}) == n
    # The compact comparison is small: a host reads it whole.
    assert len(str(out)) < 6000, len(str(out))


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_two_attempts_come_back_as_a_compact_comparison(
    transport: str,
    fake_write: Fake,
    serve_factory: Callable[..., Serve],
    stdio_factory: Callable[..., StdioEnv],
) -> None:
    if transport == "http":
        serve = serve_factory(fake_write.url)
        client = http_client(serve.mcp_url, serve.token(), "auto")
    else:
        stdio = stdio_factory(fake_write.url)
        client = stdio_client(stdio.env, "auto", stdio.errlog)
    with anyio.fail_after(240):
        async with client as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            prop = tools["run_in_sandbox"].input_schema["properties"]["attempts"]
            assert prop.get("maximum") == 8 and prop.get("minimum") == 1, prop
            assert "attempts" in tools["run_in_sandbox"].output_schema["properties"]

            r = await c.call_tool("run_in_sandbox", {"task": "create hello.txt saying hi", "attempts": 2})
            assert not r.is_error, text_of(r)
            out = r.structured_content
            check_parent(out, 2)
            text = text_of(r)
            for a in out["attempts"]:
                assert a["run_id"] in text, text
            # The parent reads back through stream_session: one `attempt` event per attempt.
            page = await call_ok(c, "stream_session", {"run_id": out["run_id"]})
            assert [e["type"] for e in page["events"]] == ["attempt", "attempt"], page
            assert page["done"] is True, page
            # An attempt is an ordinary run: its own events are there.
            one = await call_ok(c, "stream_session", {"run_id": out["attempts"][0]["run_id"]})
            assert one["status"] == "succeeded" and one["events"], one

            # Bad values start nothing: out of range is a tool error, a fraction bad params.
            for bad in (0, 9):
                message = await call_tool_error(c, "run_in_sandbox", {"task": "x", "attempts": bad})
                assert "attempts" in message, message
            message = await call_invalid_params(c, "run_in_sandbox", {"task": "x", "attempts": 2.5})
            assert "attempts" in message, message
            listed = await call_ok(c, "list_sandboxes", {})
            assert listed["sandboxes"] == [], listed


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.asynccontextmanager
async def mcp_in(repo: Path, stdio: StdioEnv) -> AsyncIterator[Any]:
    """`delegate mcp` started in `repo`, which it takes as the project."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client as sdk_stdio_client

    params = StdioServerParameters(command=str(DELEGATE), args=["mcp"], env=stdio.env, cwd=repo)
    with open(stdio.errlog, "a") as err:
        async with Client(sdk_stdio_client(params, errlog=err), mode="auto") as client:
            yield client


async def test_attempts_in_a_repository_get_a_branch_each_and_apply_changes_takes_one(
    fake_write: Fake, stdio_factory: Callable[..., StdioEnv], tmp_path: Path
) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("# project\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    stdio = stdio_factory(fake_write.url)
    with anyio.fail_after(240):
        async with mcp_in(repo, stdio) as c:
            out = await call_ok(c, "run_in_sandbox", {"task": "create hello.txt saying hi", "attempts": 2})
            check_parent(out, 2)
            branches = [a["branch"] for a in out["attempts"]]
            assert all(b and b.startswith("delegate/") for b in branches), out["attempts"]
            assert len(set(branches)) == 2
            for b in branches:
                assert git(repo, "rev-parse", f"{b}^") == head, b
                assert git(repo, "show", f"{b}:hello.txt") == "hi"
            # Nothing touched the working tree until the host chose.
            assert not (repo / "hello.txt").exists()
            chosen = out["attempts"][1]["run_id"]
            applied = await call_ok(c, "apply_changes", {"run_id": chosen, "to": "worktree"})
            assert applied["applied"] is True, applied
            assert (repo / "hello.txt").read_text().strip() == "hi"
            assert git(repo, "rev-parse", "HEAD") == head, "HEAD moved"
            assert HELLO_ADDED["path"] in git(repo, "status", "--porcelain")
