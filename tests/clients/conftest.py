"""Fixtures for the real-client tests of delegate's MCP surface: the built binaries, the scripted fake
Anthropic upstream, `delegate serve` on 127.0.0.1:0 with a fresh data dir, API tokens, and an
environment for `delegate mcp` (stdio). Every fixture ends what it started, by PID, and then checks
that nothing of its data dir is still running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import (
    DELEGATE,
    FAKE_ANTHROPIC,
    OPENCODE,
    Proc,
    assert_nothing_running,
    descendants,
    need,
    remove_tree,
)


@pytest.fixture(scope="session", autouse=True)
def built() -> None:
    """The binaries under test: built by `cargo build --bins`, never by the tests."""
    missing = [str(p) for p in (DELEGATE, FAKE_ANTHROPIC) if not p.exists()]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run `cargo build --bins` first (scripts/test does)", pytrace=False
        )
    need(OPENCODE, "opencode", "run scripts/setup, or set DELEGATE_OPENCODE_BIN")
    bwrap = shutil.which("bwrap")
    need(Path(bwrap or "/usr/bin/bwrap"), "bubblewrap (bwrap)", "run scripts/setup")


def base_env() -> dict[str, str]:
    """This process's environment without anything delegate or Anthropic would read."""
    drop = ("DELEGATE_", "ANTHROPIC_", "DATABASE_URL", "RUST_LOG")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def delegate_env(data_dir: Path, upstream: str, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update(
        DELEGATE_DATA_DIR=str(data_dir),
        ANTHROPIC_API_KEY="sk-ant-test-fake-key-0000",
        ANTHROPIC_BASE_URL=upstream,
        DELEGATE_OPENCODE_BIN=str(OPENCODE),
        DELEGATE_BACKEND="process",
    )
    env.update(extra)
    return env


def fresh_data_dir() -> Path:
    # short: sandbox unix sockets live below it (sun_path holds 108 bytes)
    return Path(tempfile.mkdtemp(prefix="dlg-", dir="/tmp"))


class Fake:
    """`fake-anthropic --port 0 --script SCRIPT`: the only stand-in; it logs one line per request."""

    def __init__(self, script: str, log: Path):
        self.script = script
        self.proc = Proc([str(FAKE_ANTHROPIC), "--port", "0", "--script", script], env=base_env(), log=log)
        m = self.proc.wait_line(r"listening on (http://127\.0\.0\.1:\d+)", stream="stdout", timeout=20)
        self.url = m.group(1)

    def requests(self) -> list[str]:
        return [line for line in self.proc.lines("stderr") if line.startswith("#")]

    def stop(self) -> None:
        self.proc.stop(5)


class Serve:
    """`delegate serve` on 127.0.0.1:0 with a fresh data dir."""

    def __init__(self, upstream: str, logdir: Path, **extra_env: str):
        self.data_dir = fresh_data_dir()
        self.env = delegate_env(self.data_dir, upstream, **extra_env)
        self.log = logdir / f"serve-{self.data_dir.name}.log"
        self.proc = Proc(
            [str(DELEGATE), "serve"],
            env={**self.env, "DELEGATE_LISTEN": "127.0.0.1:0", "DELEGATE_LOG": "info"},
            log=self.log,
        )
        m = self.proc.wait_line(r"delegate serve listening on http://127\.0\.0\.1:(\d+)", timeout=60)
        self.port = int(m.group(1))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.mcp_url = f"{self.base_url}/mcp"

    def admin(self, *args: str) -> str:
        """A `delegate` admin command against the same database (stdout, stripped)."""
        p = subprocess.run(
            [str(DELEGATE), *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert p.returncode == 0, f"delegate {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}"
        return p.stdout.strip()

    def token(self, user: str | None = None) -> str:
        out = self.admin("token", "create", *(["--user", user] if user else []), "--name", "client-tests")
        assert re.fullmatch(r"dlg_[A-Za-z0-9_\-]+", out), f"token create printed {out!r}, not one dlg_ token"
        return out

    def create_user(self, email: str) -> str:
        return self.admin("user", "create", "--email", email)

    def sandbox_processes(self) -> list[int]:
        """Everything running below the server: the sandboxes' bwrap, relay and opencode processes."""
        return descendants(self.proc.pid)


@pytest.fixture(scope="module")
def fake_write(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    """One fake upstream per module whose every run writes hello.txt ("hi") and answers "done"."""
    fake = Fake("write:hello.txt:hi", tmp_path_factory.mktemp("fake") / "fake-write.log")
    yield fake
    fake.stop()


@pytest.fixture
def fake_factory(tmp_path: Path) -> Iterator[Callable[[str], Fake]]:
    started: list[Fake] = []

    def start(script: str) -> Fake:
        fake = Fake(script, tmp_path / f"fake-{len(started)}.log")
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Start `delegate serve` processes; at the end each gets SIGTERM, must exit 0, and must leave
    nothing of its data dir running."""
    started: list[Serve] = []

    def start(upstream: str, **extra_env: str) -> Serve:
        s = Serve(upstream, tmp_path, **extra_env)
        started.append(s)
        return s

    yield start
    problems = []
    for s in started:
        code = s.proc.stop(30)
        if code != 0:
            problems.append(f"delegate serve exited with {code} on SIGTERM (log {s.log}):\n{s.proc.tail(15)}")
        try:
            assert_nothing_running(s.data_dir)
        except AssertionError as e:
            problems.append(str(e))
        remove_tree(s.data_dir)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class StdioEnv:
    """The environment for a `delegate mcp` process (started by the client under test)."""

    def __init__(self, upstream: str, logdir: Path, **extra_env: str):
        self.data_dir = fresh_data_dir()
        self.env = delegate_env(self.data_dir, upstream, DELEGATE_LOG="info", **extra_env)
        self.errlog = logdir / f"mcp-stdio-{self.data_dir.name}.log"


@pytest.fixture
def stdio_factory(tmp_path: Path) -> Iterator[Callable[..., StdioEnv]]:
    """Fresh data dirs for `delegate mcp`; at the end nothing of them may still run (the client under
    test ended the server by closing its stdin)."""
    made: list[StdioEnv] = []

    def make(upstream: str, **extra_env: str) -> StdioEnv:
        e = StdioEnv(upstream, tmp_path, **extra_env)
        made.append(e)
        return e

    yield make
    problems = []
    for e in made:
        try:
            assert_nothing_running(e.data_dir)
        except AssertionError as err:
            problems.append(f"{err}\n(stderr of delegate mcp: {e.errlog})")
        remove_tree(e.data_dir)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
