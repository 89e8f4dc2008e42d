"""The Python MCP SDK drives `delegate mcp` (stdio) on the docker backend: a real Docker Engine
(`scripts/dockerd`, DELEGATE_TEST_DOCKER_HOST) running delegate's sandbox image with the real
opencode inside. The structured result comes back, and afterwards no container or volume with
the run's sandbox label remains."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from conftest import Fake, StdioEnv
from support import HELLO_ADDED, REQUIRE_ALL, stdio_client

pytestmark = pytest.mark.anyio

IMAGE = os.environ.get("DELEGATE_SANDBOX_IMAGE", "delegate-sandbox:1.18.33")


def engine() -> str:
    host = os.environ.get("DELEGATE_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    ok = host and docker(host, "image", "inspect", IMAGE).returncode == 0
    if not ok:
        msg = f"no Docker Engine with {IMAGE} (scripts/dockerd start; sandbox-image/build --offline --lean)"
        if REQUIRE_ALL:
            pytest.fail(msg + " [DELEGATE_REQUIRE_ALL=1: nothing is skipped]", pytrace=False)
        pytest.skip(msg)
    assert host
    return host


def docker(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], env={**os.environ, "DOCKER_HOST": host}, capture_output=True, text=True, timeout=60
    )


def labelled(host: str, sandbox_id: str) -> list[str]:
    label = f"label=delegate.sandbox={sandbox_id}"
    containers = docker(host, "ps", "-a", "-q", "--filter", label).stdout.split()
    volumes = docker(host, "volume", "ls", "-q", "--filter", label).stdout.split()
    return containers + volumes


async def test_run_in_sandbox_on_docker(
    stdio_factory: Callable[..., StdioEnv], fake_write: Fake
) -> None:
    host = engine()
    stdio = stdio_factory(
        fake_write.url,
        DELEGATE_BACKEND="docker",
        DOCKER_HOST=host,
        DELEGATE_SANDBOX_IMAGE=IMAGE,
        DELEGATE_SANDBOX_MEMORY_MB="1024",
    )
    seen: set[str] = set()

    async def watch_engine() -> None:
        # While the run goes, its container is there, labelled with its sandbox.
        while True:
            ps = docker(host, "ps", "--filter", "label=delegate.kind=ephemeral", "--format", '{{.Label "delegate.sandbox"}}')
            seen.update(ps.stdout.split())
            await anyio.sleep(0.1)

    with anyio.fail_after(180):
        async with stdio_client(stdio.env, "auto", stdio.errlog) as c:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_engine)
                r: Any = await c.call_tool(
                    "run_in_sandbox",
                    {"task": "create hello.txt saying hi", "files": {"notes/seed.md": "# seed\n"}},
                )
                tg.cancel_scope.cancel()
            out = r.structured_content
            assert not r.is_error and isinstance(out, dict), json.dumps(out, default=str)[:2000]
            assert out["status"] == "succeeded", out
            assert HELLO_ADDED in out["changed_files"], out["changed_files"]
            assert "+hi" in out["diff"], out["diff"]
            assert out["final_message"].strip() == "done", out
            assert out["usage"]["input_tokens"] > 0, out["usage"]
    assert out["sandbox_id"] in seen, f"the run's container was never seen: {seen}"
    assert labelled(host, out["sandbox_id"]) == []
