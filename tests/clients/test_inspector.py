"""MCP Inspector's CLI (`@modelcontextprotocol/inspector --cli`, node 22): `tools/list --strict` (tool
schema portability) and a `tools/call` of `create_sandbox`, over stdio and over HTTP with the bearer
header; the sandbox is deleted afterwards so no opencode serve is left running."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Fake, Serve, StdioEnv, base_env
from support import DELEGATE, INSPECTOR, NODE22_BIN, TOOL_NAMES, assert_nothing_running, need, wait_until


class Inspector:
    def __init__(self, tmp: Path, target: Serve | StdioEnv, token: str | None = None):
        need(NODE22_BIN / "node", "node 22")
        need(INSPECTOR, "MCP Inspector")
        self.tmp = tmp
        self.target = target
        self.token = token
        home = tmp / "inspector-home"
        home.mkdir(exist_ok=True)
        self.env = base_env()
        self.env.update(HOME=str(home), PATH=f"{NODE22_BIN}:{self.env.get('PATH', '/usr/bin:/bin')}")
        self.env.pop("NODE_OPTIONS", None)

    def run(self, *method_args: str, strict: bool = False) -> tuple[int, str, str]:
        args = [str(INSPECTOR), "--cli"]
        if strict:
            args.append("--strict")
        if isinstance(self.target, Serve):
            args += [self.target.mcp_url, "--header", f"Authorization: Bearer {self.token}"]
            args += [*method_args, "--format", "json", "-q"]
        else:
            for key in ("DELEGATE_DATA_DIR", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "DELEGATE_OPENCODE_BIN",
                        "DELEGATE_BACKEND"):
                args += ["-e", f"{key}={self.target.env[key]}"]
            args += [*method_args, "--format", "json", "-q", "--", str(DELEGATE), "mcp"]
        p = subprocess.run(args, env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=120, check=False)
        with open(self.tmp / "inspector.log", "a") as log:
            log.write(f"$ {' '.join(args)}\n[rc] {p.returncode}\n[stdout]\n{p.stdout}\n[stderr]\n{p.stderr}\n")
        return p.returncode, p.stdout, p.stderr

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        rc, out, err = self.run("--method", "tools/call", "--tool-name", tool, "--tool-args-json", json.dumps(arguments))
        assert rc == 0, f"inspector tools/call {tool} exited {rc}: {err[-2000:]}\n{out[-1000:]}"
        result = json.loads(out)["result"]
        assert result.get("isError") is not True, f"{tool}: {result}"
        return result


def make_target(
    transport: str, fake: Fake, serve_factory: Callable[..., Serve], stdio_factory: Callable[..., StdioEnv]
) -> tuple[Serve | StdioEnv, str | None]:
    if transport == "http":
        serve = serve_factory(fake.url)
        return serve, serve.token()
    return stdio_factory(fake.url), None


def strict_errors(stderr: str) -> str:
    """Only the error-severity findings of --strict (warnings are advisory)."""
    blocks = [b for b in stderr.split("\n\n") if b.lstrip().startswith("Error")]
    return "\n\n".join(blocks) or stderr[-3000:]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_inspector_tools_list_strict(
    transport: str,
    tmp_path: Path,
    fake_write: Fake,
    serve_factory: Callable[..., Serve],
    stdio_factory: Callable[..., StdioEnv],
) -> None:
    target, token = make_target(transport, fake_write, serve_factory, stdio_factory)
    insp = Inspector(tmp_path, target, token)
    rc, out, err = insp.run("--method", "tools/list", strict=True)
    assert out.strip(), f"no output (rc {rc}): {err[-3000:]}"
    payload = json.loads(out)
    tools = payload.get("result", {}).get("tools", [])
    assert sorted(t["name"] for t in tools) == sorted(TOOL_NAMES), payload
    for t in tools:
        assert t.get("inputSchema", {}).get("type") == "object", t["name"]
        assert t.get("outputSchema", {}).get("type") == "object", f"{t['name']} has no outputSchema"
    assert rc == 0, f"inspector --strict tools/list exited {rc} (6 = schema portability errors):\n{strict_errors(err)}"


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_inspector_create_sandbox(
    transport: str,
    tmp_path: Path,
    fake_write: Fake,
    serve_factory: Callable[..., Serve],
    stdio_factory: Callable[..., StdioEnv],
) -> None:
    target, token = make_target(transport, fake_write, serve_factory, stdio_factory)
    insp = Inspector(tmp_path, target, token)
    result = insp.call("create_sandbox", {"name": "from-inspector", "files": {"README.md": "# hi\n"}})
    created = result["structuredContent"]
    assert created["sandbox_id"].startswith("sbx_") and created["status"] == "running", created
    assert created["backend"] == "process" and created["kind"] == "warm", created
    assert created["sandbox_id"] in json.dumps(result["content"]), "the text content does not name the sandbox"

    if isinstance(target, StdioEnv):
        # each inspector call is its own `delegate mcp`: when it ends, its warm sandboxes are deleted
        # with it (orchestrator shutdown) and nothing of it may keep running
        assert_nothing_running(target.data_dir)
        listed = insp.call("list_sandboxes", {})["structuredContent"]
        assert created["sandbox_id"] not in [s["sandbox_id"] for s in listed["sandboxes"]], listed
        return

    assert target.sandbox_processes(), "create_sandbox returned running but no sandbox process runs"
    listed = insp.call("list_sandboxes", {})["structuredContent"]
    assert [(s["sandbox_id"], s["status"]) for s in listed["sandboxes"]] == [(created["sandbox_id"], "running")]
    deleted = insp.call("delete_sandbox", {"sandbox_id": created["sandbox_id"]})["structuredContent"]
    assert deleted["sandbox_id"] == created["sandbox_id"] and deleted["status"] in ("deleting", "deleted"), deleted
    listed = insp.call("list_sandboxes", {})["structuredContent"]
    assert listed["sandboxes"] == [], listed
    wait_until(lambda: not target.sandbox_processes(), 20, "the deleted sandbox's processes to exit")
