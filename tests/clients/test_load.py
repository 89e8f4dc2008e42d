"""50 concurrent `run_in_sandbox` calls over HTTP against a server allowing 4 concurrent runs: every
call ends, succeeded or refused with a clear limit error; none hangs; nothing is left behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from mcp import MCPError

from conftest import Fake, Serve
from support import HELLO_ADDED, await_cond, call_ok, http_client, show, text_of

pytestmark = pytest.mark.anyio

CALLS = 50
MAX_RUNS = 4


async def test_fifty_concurrent_runs(serve_factory: Callable[..., Serve], fake_write: Fake) -> None:
    serve = serve_factory(fake_write.url, DELEGATE_MAX_CONCURRENT_RUNS=str(MAX_RUNS))
    token = serve.token()
    outcomes: list[dict[str, Any]] = []
    connected = anyio.Event()
    ready = 0

    async def one(i: int) -> None:
        nonlocal ready
        async with http_client(serve.mcp_url, token, "auto") as c:
            ready += 1
            if ready == CALLS:
                connected.set()
            await connected.wait()  # all 50 sessions are up: the calls go out together
            t0 = time.monotonic()
            try:
                r = await c.call_tool("run_in_sandbox", {"task": f"create hello.txt saying hi ({i})"})
                outcomes.append({"i": i, "secs": time.monotonic() - t0, "result": r})
            except MCPError as e:
                outcomes.append({"i": i, "secs": time.monotonic() - t0, "rpc_error": e.error})

    started = time.monotonic()
    with anyio.fail_after(300):  # none hangs
        async with anyio.create_task_group() as tg:
            for i in range(CALLS):
                tg.start_soon(one, i)
    total = time.monotonic() - started
    assert len(outcomes) == CALLS

    succeeded, refused, other = [], [], []
    for o in outcomes:
        r = o.get("result")
        if r is None:
            other.append(f"#{o['i']}: JSON-RPC error {o['rpc_error']}")
        elif not r.is_error and (r.structured_content or {}).get("status") == "succeeded":
            out = r.structured_content
            if HELLO_ADDED not in out["changed_files"]:
                other.append(f"#{o['i']}: succeeded without hello.txt: {show(r)}")
            succeeded.append(o)
        elif r.is_error and ("limit" in text_of(r).lower() or "concurrent" in text_of(r).lower()):
            refused.append(o)
        else:
            other.append(f"#{o['i']} after {o['secs']:.1f}s: {show(r)}")
    assert not other, f"{len(other)} call(s) neither succeeded nor hit the limit:\n" + "\n".join(other[:10])
    assert succeeded, "no run succeeded"
    assert len(succeeded) + len(refused) == CALLS
    slow_refusals = [o for o in refused if o["secs"] > 20]
    assert not slow_refusals, f"refusals were not quick: {[round(o['secs'], 1) for o in slow_refusals]}"
    print(
        f"\n{CALLS} calls in {total:.1f}s: {len(succeeded)} succeeded, {len(refused)} refused "
        f"(e.g. {text_of(refused[0]['result'])!r})" if refused else f"\n{CALLS} calls in {total:.1f}s, all succeeded"
    )

    # nothing left: no sandbox process below the server, no sandbox listed
    await await_cond(lambda: not serve.sandbox_processes(), 30, "every sandbox process to exit")
    async with http_client(serve.mcp_url, token, "auto") as c:
        deadline = time.monotonic() + 15
        while True:
            listed = await call_ok(c, "list_sandboxes", {})
            if not listed["sandboxes"] or time.monotonic() > deadline:
                break
            await anyio.sleep(0.2)
        assert listed["sandboxes"] == [], f"sandboxes left after the runs: {listed}"
