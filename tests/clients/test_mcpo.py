"""mcpo (PyPI, pinned in scripts/setup), the MCP-to-OpenAPI proxy Open WebUI's OpenAPI tool servers
use, in front of `delegate serve`'s `/mcp` (streamable HTTP, bearer token): its OpenAPI document
lists delegate's tools, an OpenAPI call of `run_in_sandbox` runs the task (the model scripted by
fake-anthropic) and answers with the run's result, and bad input gets a 4xx that says what is
wrong, never a 500. The token is in mcpo's config file (mode 0600), not on its command line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Fake, Serve, base_env
from host_fakes import TASK
from support import TOOL_NAMES, TOOLS, Proc, need

MCPO = Path(os.environ.get("DELEGATE_MCPO_BIN") or TOOLS / "mcpo" / "bin" / "mcpo")
# mcpo serves each server of its config under /NAME.
SERVER = "delegate"
MCPO_KEY = "mcpo-test-key-0000"


class Mcpo:
    """`mcpo --config FILE` on 127.0.0.1:0 in front of one streamable HTTP server."""

    def __init__(self, mcp_url: str, token: str, workdir: Path):
        need(MCPO, "mcpo", "run scripts/setup --test, or set DELEGATE_MCPO_BIN")
        config = workdir / "mcpo.json"
        config.touch(mode=0o600)
        config.write_text(
            json.dumps(
                {
                    "mcpServers": {
                        SERVER: {
                            "type": "streamable-http",
                            "url": mcp_url,
                            "headers": {"Authorization": f"Bearer {token}"},
                        }
                    }
                }
            )
        )
        self.proc = Proc(
            [str(MCPO), "--host", "127.0.0.1", "--port", "0", "--api-key", MCPO_KEY, "--config", str(config)],
            env=base_env(),
            log=workdir / "mcpo.log",
            cwd=workdir,
        )
        # uvicorn names the port it bound; the lifespan (connecting to delegate and mounting its
        # tools) is over when it says the application started
        port = self.proc.wait_line(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", timeout=60).group(1)
        self.proc.wait_line(r"Application startup complete", timeout=60)
        self.base_url = f"http://127.0.0.1:{port}/{SERVER}"
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {MCPO_KEY}"},
            timeout=httpx.Timeout(30, read=300),
        )

    def stop(self) -> None:
        self.http.close()
        self.proc.stop(10)


@pytest.fixture
def through_mcpo(
    tmp_path: Path, fake_write: Fake, serve_factory: Callable[..., Serve]
) -> Iterator[tuple[Serve, Mcpo]]:
    serve = serve_factory(fake_write.url)
    mcpo = Mcpo(serve.mcp_url, serve.token(), tmp_path)
    yield serve, mcpo
    mcpo.stop()


def _detail(response: httpx.Response) -> str:
    try:
        return json.dumps(response.json())
    except ValueError:
        return response.text


def test_openapi_lists_delegate_tools(through_mcpo: tuple[Serve, Mcpo]) -> None:
    _, mcpo = through_mcpo
    r = mcpo.http.get("/openapi.json")
    assert r.status_code == 200, f"GET /openapi.json: {r.status_code} {_detail(r)[:500]}"
    doc = r.json()
    paths = {p.strip("/") for p in doc.get("paths", {})}
    assert TOOL_NAMES <= paths, f"mcpo's OpenAPI document lacks {TOOL_NAMES - paths}: {sorted(paths)}"
    ref = doc["paths"]["/run_in_sandbox"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    form = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "task" in form.get("required", []), f"task is not required in {json.dumps(form)[:1000]}"
    # mcpo's own key guards the tools (Open WebUI sends it as a bearer)
    anonymous = httpx.post(f"{mcpo.base_url}/list_sandboxes", json={}, timeout=30)
    assert anonymous.status_code in (401, 403), f"no key: {anonymous.status_code} {_detail(anonymous)[:300]}"


def test_openapi_call_runs_the_task(through_mcpo: tuple[Serve, Mcpo]) -> None:
    _, mcpo = through_mcpo
    r = mcpo.http.post("/run_in_sandbox", json={"task": TASK, "repo": "none"})
    assert r.status_code == 200, f"POST /run_in_sandbox: {r.status_code} {_detail(r)[:1500]}"
    body: Any = r.json()
    # mcpo answers with the tool's text content (parsed when it is JSON): the essentials a client
    # that ignores structured content reads
    text = body if isinstance(body, str) else json.dumps(body)
    print(f"mcpo answered {len(r.content)} bytes: {text[:300]!r}")
    assert "succeeded" in text, text[:2000]
    assert "hello.txt" in text, text[:2000]


def test_bad_input_is_a_clear_4xx(through_mcpo: tuple[Serve, Mcpo]) -> None:
    serve, mcpo = through_mcpo
    # no task: mcpo's request model (from delegate's input schema) refuses it
    r = mcpo.http.post("/run_in_sandbox", json={"repo": "none"})
    print(f"missing task: {r.status_code} {_detail(r)[:300]}")
    assert r.status_code == 422, f"missing task: {r.status_code} {_detail(r)[:800]}"
    assert "task" in _detail(r), _detail(r)[:800]
    # well-formed for the schema, refused by delegate itself: an invalid-params error that mcpo
    # passes on as 422 with delegate's message
    r = mcpo.http.post("/stream_session", json={"run_id": "run_does_not_exist", "after": -5})
    print(f"negative cursor: {r.status_code} {_detail(r)[:300]}")
    assert 400 <= r.status_code < 500, f"negative cursor: {r.status_code} {_detail(r)[:800]}"
    assert "after" in _detail(r), _detail(r)[:800]
    # delegate kept serving: nothing half-done
    r = mcpo.http.post("/list_sandboxes", json={})
    assert r.status_code == 200, f"list_sandboxes after bad input: {r.status_code} {_detail(r)[:800]}"
    assert serve.proc.popen.poll() is None
