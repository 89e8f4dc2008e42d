"""Remote mode: `delegate mcp --server URL --token T` (MCP over stdio, forwarding every tool call to a
running `delegate serve` over its REST API) driven by the official Python MCP SDK, and
`delegate run --server URL --token T --json`, against a real `delegate serve` running the real
opencode under bubblewrap behind the scripted fake upstream. The remote client embeds nothing: it
needs no API key, no opencode and no data dir of its own."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import Fake, Serve, base_env, fresh_data_dir
from support import DELEGATE, HELLO_ADDED, await_cond, call_ok, call_tool_error, follow, remove_tree, show

pytestmark = pytest.mark.anyio


def remote_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """No Anthropic key, no opencode: the server does the work. DELEGATE_DATA_DIR points at an empty
    dir that must stay empty (remote mode opens no local store)."""
    env = base_env()
    env.update(DELEGATE_DATA_DIR=str(data_dir), DELEGATE_LOG="info", DELEGATE_OPENCODE_BIN="/nonexistent")
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def remote_client(args: list[str], env: dict[str, str], errlog: Path, mode: str = "auto") -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client as sdk_stdio_client

    # not in delegate's checkout (the project root would be it: snapshotted, branches written)
    params = StdioServerParameters(command=str(DELEGATE), args=["mcp", *args], env=env, cwd=errlog.parent)
    with open(errlog, "a") as err:
        async with Client(sdk_stdio_client(params, errlog=err), mode=mode) as client:
            yield client


@pytest.fixture
def local_dir() -> Any:
    d = fresh_data_dir()
    yield d
    remove_tree(d)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_remote_mcp_runs_on_the_server(
    mode: str, serve_factory: Callable[..., Serve], fake_write: Fake, local_dir: Path, tmp_path: Path
) -> None:
    serve = serve_factory(fake_write.url)
    token = serve.token()
    errlog = tmp_path / "remote-mcp.log"
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    with anyio.fail_after(180):
        async with remote_client(["--server", serve.base_url, "--token", token], remote_env(local_dir), errlog, mode) as c:
            tools = sorted(t.name for t in (await c.list_tools()).tools)
            assert "run_in_sandbox" in tools and "stream_session" in tools, tools

            r = await c.call_tool("run_in_sandbox", {"task": "create hello.txt saying hi"}, progress_callback=on_progress)
            assert not r.is_error, show(r)
            out = r.structured_content
            assert isinstance(out, dict), show(r)
            # the same structured result as the embedded mode (test_python_sdk.py)
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

            assert len(progress) >= 3, f"only {len(progress)} progress notifications: {progress}"
            values = [p for p, _, _ in progress]
            assert values == sorted(values) and len(set(values)) == len(values), f"progress not increasing: {values}"
            assert all(m for _, _, m in progress), f"progress without messages: {progress}"

            # the run is the server's: its event log is there, replayable through the remote client
            events, last = await follow(c, out["run_id"], timeout=60)
            assert last["status"] == "succeeded" and last["done"], last
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), [e["seq"] for e in events]

            # the ephemeral sandbox goes away on the server, with its processes
            await await_cond(lambda: not serve.sandbox_processes(), 30, "the run's sandbox processes to exit")
            listed = await call_ok(c, "list_sandboxes", {})
            assert out["sandbox_id"] not in [s["sandbox_id"] for s in listed["sandboxes"]], listed

    assert not any(local_dir.iterdir()), f"remote mode wrote to the local data dir: {list(local_dir.iterdir())}"
    assert token not in errlog.read_text(), "the token appeared in delegate mcp's stderr"
    assert token not in serve.log.read_text(), "the token appeared in the server log"


async def test_remote_mcp_wrong_token_is_a_readable_tool_error(
    serve_factory: Callable[..., Serve], fake_write: Fake, local_dir: Path, tmp_path: Path
) -> None:
    serve = serve_factory(fake_write.url)
    serve.token()
    wrong = "dlg_" + "x" * 40
    errlog = tmp_path / "remote-mcp-wrong.log"
    # flags from the environment this time
    env = remote_env(local_dir, DELEGATE_SERVER=serve.base_url, DELEGATE_TOKEN=wrong)
    with anyio.fail_after(60):
        async with remote_client([], env, errlog) as c:
            for tool, args in (("list_sandboxes", {}), ("run_in_sandbox", {"task": "create hello.txt"})):
                text = await call_tool_error(c, tool, args)
                assert "refused the token" in text, f"{tool}: {text}"
                assert wrong not in text, f"{tool}: the token is in the error: {text}"
    assert not serve.sandbox_processes(), "a refused token started something"
    assert wrong not in errlog.read_text()


async def test_remote_mcp_unreachable_server_is_a_readable_tool_error(local_dir: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "dlg_" + "y" * 40
    errlog = tmp_path / "remote-mcp-unreachable.log"
    with anyio.fail_after(60):
        async with remote_client(["--server", f"http://127.0.0.1:{port}", "--token", token], remote_env(local_dir), errlog) as c:
            text = await call_tool_error(c, "list_sandboxes", {})
            assert f"cannot reach delegate server at http://127.0.0.1:{port}" in text, text
            assert token not in text


def test_remote_run_cli_json(
    serve_factory: Callable[..., Serve], fake_write: Fake, local_dir: Path, tmp_path: Path
) -> None:
    """`delegate run --server --token --json`: progress on stderr, the result JSON on stdout, exit 0."""
    serve = serve_factory(fake_write.url)
    token = serve.token()
    p = subprocess.run(
        [str(DELEGATE), "run", "--json", "--server", serve.base_url, "--token", token, "create hello.txt saying hi"],
        env=remote_env(local_dir),
        cwd=tmp_path,  # not in delegate's checkout, which `delegate run` would take as the repository
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, f"exit {p.returncode}\nstderr:\n{p.stderr[-3000:]}"
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded", out
    assert HELLO_ADDED in out["changed_files"], out
    assert "tool write" in p.stderr or "text:" in p.stderr, f"no progress lines on stderr:\n{p.stderr}"
    assert token not in p.stderr and token not in p.stdout

    # a warm sandbox on the server, used through --sandbox
    # (created over the REST API; the CLI has no create command)
    import urllib.request

    req = urllib.request.Request(
        f"{serve.base_url}/api/sandboxes",
        data=json.dumps({"name": "cli-remote"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 201
        sandbox_id = json.loads(resp.read())["sandbox_id"]
    p = subprocess.run(
        [str(DELEGATE), "run", "--json", "--sandbox", sandbox_id, "create hello.txt saying hi"],
        env=remote_env(local_dir, DELEGATE_SERVER=serve.base_url, DELEGATE_TOKEN=token),
        cwd=tmp_path,  # not in delegate's checkout, which `delegate run` would take as the repository
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, f"exit {p.returncode}\nstderr:\n{p.stderr[-3000:]}"
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded" and out["sandbox_id"] == sandbox_id, out
    req = urllib.request.Request(
        f"{serve.base_url}/api/sandboxes/{sandbox_id}", headers={"Authorization": f"Bearer {token}"}, method="DELETE"
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200

    # usage errors: exit 2 with a clear message
    p = subprocess.run(
        [str(DELEGATE), "run", "--sandbox", "sbx_x", "task"], env=remote_env(local_dir), capture_output=True,
        text=True, timeout=30, check=False,
    )
    assert p.returncode == 2 and "--sandbox" in p.stderr and "--server" in p.stderr, p.stderr
    p = subprocess.run(
        [str(DELEGATE), "mcp", "--token", token], env=remote_env(local_dir), capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert p.returncode == 2 and "--server" in p.stderr and token not in p.stderr, p.stderr
    assert not any(local_dir.iterdir()), f"remote mode wrote to the local data dir: {list(local_dir.iterdir())}"
