"""Bad input over stdio and over HTTP: missing or ill-typed arguments are JSON-RPC invalid-params errors
naming the field; domain failures (unknown ids, oversized task, escaping paths) are tool errors a
model can read; nothing panics and the server keeps working."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from conftest import Fake, Serve, StdioEnv
from support import call_invalid_params, call_ok, call_tool_error, http_client, show, stdio_client

pytestmark = pytest.mark.anyio

# (tool, arguments, the field the error must name)
MISSING = [
    ("run_in_sandbox", {}, "task"),
    ("run_in_sandbox", {"wait": False}, "task"),
    ("delete_sandbox", {}, "sandbox_id"),
    ("cancel_run", {}, "run_id"),
]
ILL_TYPED = [
    ("run_in_sandbox", {"task": 5}, "task"),
    ("run_in_sandbox", {"task": "x", "wait": "no"}, "wait"),
    ("run_in_sandbox", {"task": "x", "files": ["a.txt"]}, "files"),
    ("run_in_sandbox", {"task": "x", "files": {"a.txt": 1}}, "files"),
    ("run_in_sandbox", {"task": "x", "timeout_seconds": "soon"}, "timeout_seconds"),
    ("run_in_sandbox", {"task": "x", "sandbox_id": 7}, "sandbox_id"),
    ("create_sandbox", {"name": 5}, "name"),
    ("create_sandbox", {"idle_timeout_seconds": "x"}, "idle_timeout_seconds"),
    ("stream_session", {"run_id": 5}, "run_id"),
    ("stream_session", {"run_id": "run_x", "after": -1}, "after"),
    ("stream_session", {"run_id": "run_x", "wait_seconds": "long"}, "wait_seconds"),
    ("list_sandboxes", {"workspace": 5}, "workspace"),
    ("delete_sandbox", {"sandbox_id": 5}, "sandbox_id"),
    ("cancel_run", {"run_id": ["run_x"]}, "run_id"),
]
GHOST_SANDBOX = "sbx_" + "f" * 32
GHOST_RUN = "run_" + "f" * 32
# (tool, arguments, words the tool error's text must contain)
TOOL_ERRORS = [
    ("run_in_sandbox", {"task": "x", "sandbox_id": GHOST_SANDBOX}, ["not found", GHOST_SANDBOX]),
    ("stream_session", {"sandbox_id": GHOST_SANDBOX}, ["not found", GHOST_SANDBOX]),
    ("stream_session", {"run_id": GHOST_RUN}, ["not found", GHOST_RUN]),
    ("delete_sandbox", {"sandbox_id": GHOST_SANDBOX}, ["not found", GHOST_SANDBOX]),
    ("cancel_run", {"run_id": GHOST_RUN}, ["not found", GHOST_RUN]),
    ("list_sandboxes", {"workspace": "no-such-workspace"}, ["not found", "no-such-workspace"]),
    ("run_in_sandbox", {"task": "x" * (1024 * 1024 + 1)}, ["task", "1 MiB"]),
    ("run_in_sandbox", {"task": "x", "files": {"../x": "escape"}}, ["../x"]),
    ("run_in_sandbox", {"task": "x", "files": {"a/../../x": "escape"}}, ["a/../../x"]),
    ("run_in_sandbox", {"task": "x", "files": {"/etc/x": "absolute"}}, ["/etc/x"]),
    ("create_sandbox", {"files": {"../x": "escape"}}, ["../x"]),
]


async def exercise(client: AbstractAsyncContextManager[Any]) -> list[str]:
    """Every bad call; returns what went wrong (empty when all is well)."""
    problems: list[str] = []
    async with client as c:
        for tool, args, field in MISSING + ILL_TYPED:
            try:
                message = await call_invalid_params(c, tool, args)
            except AssertionError as e:
                problems.append(str(e))
                continue
            # the field, quoted, or the path into it (`files.a.txt` for a bad entry of `files`)
            named = re.search(rf"[`'\"]{re.escape(field)}([.\[][^`'\"]*)?[`'\"]", message)
            if not named and field not in message.split():
                problems.append(f"{tool}({json.dumps(args)}): invalid-params message does not name `{field}`: {message!r}")

        for tool, args, words in TOOL_ERRORS:
            try:
                text = await call_tool_error(c, tool, args)
            except AssertionError as e:
                problems.append(str(e)[:500])
                continue
            missing = [w for w in words if w.lower() not in text.lower()]
            if missing:
                problems.append(f"{tool}({json.dumps(args)[:120]}): tool error {text[:300]!r} does not say {missing}")

        # neither id given: a clear refusal that names the fields (either error kind is fine)
        try:
            r = await c.call_tool("stream_session", {})
            msg = r.content[0].text if r.content else ""
            if not r.is_error:
                problems.append(f"stream_session({{}}) succeeded: {show(r)}")
        except MCPError as e:
            msg = e.error.message
        if "run_id" not in msg:
            problems.append(f"stream_session({{}}): message does not name run_id: {msg!r}")

        # an unknown tool is a protocol error
        try:
            r = await c.call_tool("no_such_tool", {})
            problems.append(f"no_such_tool: expected a JSON-RPC error, got {show(r)}")
        except MCPError as e:
            if "no_such_tool" not in e.error.message:
                problems.append(f"no_such_tool: error does not name the tool: {e.error.message!r}")

        # still serving, and nothing was created by the refused calls
        listed = await call_ok(c, "list_sandboxes", {})
        if listed["sandboxes"]:
            problems.append(f"refused calls left sandboxes behind: {listed}")
        tools = (await c.list_tools()).tools
        if len(tools) != 7:
            problems.append(f"tools/list after the bad calls: {[t.name for t in tools]}")
    return problems


def no_panic(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [f"the server panicked (log {log}): {line}" for line in text.splitlines() if "panicked" in line]


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_bad_input(
    transport: str,
    fake_write: Fake,
    serve_factory: Callable[..., Serve],
    stdio_factory: Callable[..., StdioEnv],
) -> None:
    if transport == "http":
        serve = serve_factory(fake_write.url)
        client = http_client(serve.mcp_url, serve.token(), "auto")
        log = serve.log
    else:
        env = stdio_factory(fake_write.url)
        client = stdio_client(env.env, "auto", env.errlog)
        log = env.errlog
    with anyio.fail_after(120):
        problems = await exercise(client)
    if transport == "http":
        assert serve.proc.popen.poll() is None, "delegate serve died"
        problems += no_panic(log)
    else:
        problems += no_panic(log)
    assert not problems, f"{len(problems)} problem(s) over {transport}:\n" + "\n".join(f"- {p}" for p in problems)
