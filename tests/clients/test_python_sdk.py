"""The official Python MCP SDK (PyPI `mcp`, 2.3) drives delegate over stdio (`delegate mcp`) and over
streamable HTTP (`delegate serve`, Bearer token), in `auto` mode (server/discover, protocol
2026-07-28) and in `legacy` mode (initialize, 2025-11-25), with the real opencode under bubblewrap
behind the scripted fake upstream."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from conftest import Fake, Serve, StdioEnv
from support import (
    HELLO_ADDED,
    TERMINAL,
    TOOL_NAMES,
    await_cond,
    call_ok,
    delegate_pids,
    descendants,
    follow,
    http_client,
    show,
    stdio_client,
)

pytestmark = pytest.mark.anyio

VARIANTS = [("stdio", "auto"), ("stdio", "legacy"), ("http", "auto"), ("http", "legacy")]
EXPECTED_VERSION = {"auto": "2026-07-28", "legacy": "2025-11-25"}


@dataclass
class Target:
    transport: str
    mode: str
    serve: Serve | None = None
    token: str | None = None
    stdio: StdioEnv | None = None

    def client(self) -> AbstractAsyncContextManager[Any]:
        if self.serve is not None:
            return http_client(self.serve.mcp_url, self.token, self.mode)
        assert self.stdio is not None
        return stdio_client(self.stdio.env, self.mode, self.stdio.errlog)

    def sandbox_processes(self) -> list[int]:
        """The processes of sandboxes: everything below the delegate process."""
        if self.serve is not None:
            return self.serve.sandbox_processes()
        assert self.stdio is not None
        pids = delegate_pids(self.stdio.data_dir)
        assert pids, f"no `delegate mcp` process runs on {self.stdio.data_dir}"
        return [p for pid in pids for p in descendants(pid)]


async def wait_unlisted(c: Any, sandbox_id: str, timeout: float = 15) -> None:
    """The ephemeral sandbox of a finished run disappears from list_sandboxes."""
    listed: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = await call_ok(c, "list_sandboxes", {})
        if sandbox_id not in [s["sandbox_id"] for s in listed["sandboxes"]]:
            return
        await anyio.sleep(0.2)
    raise AssertionError(f"ephemeral sandbox {sandbox_id} still listed {timeout}s after its run ended: {listed}")


@pytest.fixture(params=VARIANTS, ids=[f"{t}-{m}" for t, m in VARIANTS])
def make_target(
    request: pytest.FixtureRequest, serve_factory: Callable[..., Serve], stdio_factory: Callable[..., StdioEnv]
) -> Callable[[Fake], Target]:
    transport, mode = request.param

    def make(upstream: Fake) -> Target:
        if transport == "http":
            serve = serve_factory(upstream.url)
            return Target(transport, mode, serve=serve, token=serve.token())
        return Target(transport, mode, stdio=stdio_factory(upstream.url))

    return make


async def test_tools_list(make_target: Callable[[Fake], Target], fake_write: Fake) -> None:
    t = make_target(fake_write)
    with anyio.fail_after(60):
        async with t.client() as c:
            assert c.protocol_version == EXPECTED_VERSION[t.mode], c.protocol_version
            assert c.server_info is not None and c.server_info.name == "delegate", c.server_info
            instructions = c.instructions or ""
            for word in ("run_in_sandbox", "stream_session"):
                assert word in instructions, f"the server instructions do not mention {word}: {instructions[:300]!r}"
            tools = (await c.list_tools()).tools
            names = [tool.name for tool in tools]
            assert sorted(names) == sorted(TOOL_NAMES), names
            for tool in tools:
                assert tool.description and len(tool.description) > 40, f"{tool.name}: no real description"
                assert tool.input_schema.get("type") == "object", f"{tool.name} inputSchema: {tool.input_schema}"
                assert tool.output_schema and tool.output_schema.get("type") == "object", (
                    f"{tool.name} has no object outputSchema: {tool.output_schema}"
                )
            by_name = {tool.name: tool for tool in tools}
            run = by_name["run_in_sandbox"]
            assert run.input_schema.get("required") == ["task"], run.input_schema.get("required")
            for field in ("task", "sandbox_id", "files", "wait", "timeout_seconds", "continue_session"):
                prop = run.input_schema["properties"].get(field)
                assert prop and prop.get("description"), f"run_in_sandbox.{field} undocumented: {prop}"
            for field in ("run_id", "sandbox_id", "status", "changed_files", "diff", "usage", "final_message"):
                assert field in run.output_schema.get("properties", {}), f"run_in_sandbox output lacks {field}"
            assert by_name["delete_sandbox"].input_schema.get("required") == ["sandbox_id"]
            assert by_name["cancel_run"].input_schema.get("required") == ["run_id"]


async def test_run_in_sandbox_writes_file_with_progress(make_target: Callable[[Fake], Target], fake_write: Fake) -> None:
    t = make_target(fake_write)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    with anyio.fail_after(120):
        async with t.client() as c:
            r = await c.call_tool(
                "run_in_sandbox", {"task": "create hello.txt saying hi"}, progress_callback=on_progress
            )
            assert not r.is_error, show(r)
            out = r.structured_content
            assert isinstance(out, dict), show(r)
            assert out["status"] == "succeeded", show(r)
            assert out["run_id"].startswith("run_") and out["sandbox_id"].startswith("sbx_"), out
            assert HELLO_ADDED in out["changed_files"], out["changed_files"]
            assert "hello.txt" in out["diff"] and "+hi" in out["diff"], out["diff"]
            assert out["diff_truncated"] is False
            assert out["final_message"].strip() == "done", out["final_message"]
            usage = out["usage"]
            assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, usage
            assert out["event_count"] >= 3 and out["duration_ms"] > 0, out
            assert "error" not in out or out["error"] is None, out
            # one notification per meaningful event, increasing
            assert len(progress) >= 3, f"only {len(progress)} progress notifications: {progress}"
            values = [p for p, _, _ in progress]
            assert values == sorted(values) and len(set(values)) == len(values), f"progress not increasing: {values}"
            assert all(m for _, _, m in progress), f"progress without messages: {progress}"

            # the ephemeral sandbox is gone, with its processes
            await wait_unlisted(c, out["sandbox_id"])
            await await_cond(lambda: not t.sandbox_processes(), 15, "the run's sandbox processes to exit")


async def test_cancel_mid_run(make_target: Callable[[Fake], Target], fake_factory: Callable[[str], Fake]) -> None:
    """Cancelling the client's call (the SDK sends notifications/cancelled) ends the run `cancelled`
    and leaves no process of its sandbox."""
    hang = fake_factory("hang")
    t = make_target(hang)
    with anyio.fail_after(120):
        async with t.client() as c:
            call_result: list[Any] = []
            call_error: list[BaseException] = []
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def call() -> None:
                    with scope:
                        try:
                            call_result.append(await c.call_tool("run_in_sandbox", {"task": "create hello.txt"}))
                        except Exception as e:  # noqa: BLE001 - reported below
                            call_error.append(e)

                tg.start_soon(call)
                # opencode is running and its model call is hanging in the fake upstream
                await await_cond(hang.requests, 60, "opencode's first request to the fake upstream")
                listed = await call_ok(c, "list_sandboxes", {})
                running = [s for s in listed["sandboxes"] if s["status"] == "running"]
                assert len(running) == 1, listed
                sandbox_id = running[0]["sandbox_id"]
                assert running[0]["kind"] == "ephemeral", running
                first = await call_ok(c, "stream_session", {"sandbox_id": sandbox_id, "wait_seconds": 0})
                run_id = first["run_id"]
                assert first["status"] in ("starting", "running"), first
                assert t.sandbox_processes(), "no sandbox process while the run hangs"
                scope.cancel()
            assert not call_result and not call_error, (
                f"the cancelled call still produced {call_result or call_error}"
            )

            events, last = await follow(c, run_id, timeout=60)
            assert last["status"] == "cancelled", f"run ended {last['status']} after the call was cancelled"
            statuses = [e["data"].get("status") for e in events if e["type"] == "status"]
            assert statuses[-1] == "cancelled", statuses
            await await_cond(lambda: not t.sandbox_processes(), 15, "the cancelled run's processes to exit")
            await wait_unlisted(c, sandbox_id)


async def test_wait_false_then_stream_session(make_target: Callable[[Fake], Target], fake_write: Fake) -> None:
    """`wait: false` returns at once; long-polling `stream_session` with `next_cursor` returns every
    event exactly once, in order, ending with the run's final status."""
    t = make_target(fake_write)
    with anyio.fail_after(120):
        async with t.client() as c:
            started = time.monotonic()
            out = await call_ok(c, "run_in_sandbox", {"task": "create hello.txt saying hi", "wait": False})
            assert time.monotonic() - started < 10, "wait: false did not return at once"
            assert out["status"] in ("queued", "starting", "running"), out
            run_id = out["run_id"]

            events, last = await follow(c, run_id, wait_seconds=20, timeout=90)
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(1, len(seqs) + 1)), f"not every event exactly once in order: {seqs}"
            assert last["next_cursor"] == seqs[-1], last
            assert last["status"] == "succeeded", last
            assert events[-1]["type"] == "status" and events[-1]["data"].get("status") == "succeeded", events[-1]
            types = {e["type"] for e in events}
            assert {"status", "tool", "text"} <= types, types
            tool = [e for e in events if e["type"] == "tool"]
            assert any("hello.txt" in str(e["data"]) for e in tool), tool

            # a replay from 0 returns the same log; after the end nothing more, at once
            replay = await call_ok(c, "stream_session", {"run_id": run_id, "after": 0, "wait_seconds": 0})
            assert [(e["seq"], e["type"]) for e in replay["events"]] == [(e["seq"], e["type"]) for e in events]
            assert replay["done"] is True
            t0 = time.monotonic()
            tail = await call_ok(c, "stream_session", {"run_id": run_id, "after": seqs[-1], "wait_seconds": 10})
            assert tail["events"] == [] and tail["done"] is True, tail
            assert time.monotonic() - t0 < 5, "stream_session waited on a finished run"
            assert tail["status"] in TERMINAL
            await await_cond(lambda: not t.sandbox_processes(), 15, "the run's sandbox processes to exit")
