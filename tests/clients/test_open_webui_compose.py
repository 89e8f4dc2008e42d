"""examples/open-webui/compose.yml: Docker Compose accepts it, and what it configures works with
delegate as built: Open WebUI's preconfigured tool server URL names a Host that delegate's `/mcp`
accepts through DELEGATE_ALLOWED_HOSTS (a `delegate serve` with the file's value answers an MCP
initialize sent with that Host header, and still refuses any other non-loopback Host)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import Fake, Serve, base_env
from support import REQUIRE_ALL, ROOT

COMPOSE = ROOT / "examples" / "open-webui" / "compose.yml"


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def env_value(text: str, name: str) -> str:
    m = re.search(rf"^\s+{name}: (\S+)\s*$", text, re.M)
    assert m, f"{name} is not set in {COMPOSE}"
    return m.group(1)


def test_compose_file_is_valid() -> None:
    cli = compose_cli()
    if cli is None:
        msg = "neither `docker compose` nor `docker-compose` is installed (scripts/setup --test installs docker-compose)"
        if REQUIRE_ALL:
            pytest.fail(msg + " [DELEGATE_REQUIRE_ALL=1: nothing is skipped]", pytrace=False)
        pytest.skip(msg)
    env = {**base_env(), "ANTHROPIC_API_KEY": "sk-ant-test-fake-key-0000"}
    p = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], cwd=COMPOSE.parent, env=env, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, f"{' '.join(cli)} config refused {COMPOSE}:\n{p.stderr[-2000:]}"
    assert "open-webui:" in p.stdout and "delegate:" in p.stdout, p.stdout[:2000]
    # the key is required, never defaulted
    env.pop("ANTHROPIC_API_KEY")
    p = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], cwd=COMPOSE.parent, env=env, capture_output=True, text=True, check=False
    )
    assert p.returncode != 0 and "ANTHROPIC_API_KEY" in p.stderr, p.stderr[-1000:]


def initialize(serve: Serve, token: str, host: str) -> httpx.Response:
    return httpx.post(
        serve.mcp_url,
        headers={
            "Host": host,
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        },
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "compose-host-check", "version": "0"},
            },
        },
        timeout=30,
    )


def test_open_webui_reaches_mcp_by_its_service_name(fake_write: Fake, serve_factory: Callable[..., Serve]) -> None:
    text = COMPOSE.read_text()
    allowed = env_value(text, "DELEGATE_ALLOWED_HOSTS")
    listen = env_value(text, "DELEGATE_LISTEN")
    m = re.search(r'"url": "(http://[^"]+/mcp)"', text)
    assert m, f"no MCP tool server URL in {COMPOSE}"
    url = urlsplit(m.group(1))
    assert url.port == int(listen.rsplit(":", 1)[1]), f"Open WebUI dials {url.netloc}, delegate listens on {listen}"
    assert url.hostname and re.search(rf"^  {re.escape(url.hostname)}:\s*$", text, re.M), (
        f"{url.hostname} is not a service of {COMPOSE}"
    )

    serve = serve_factory(fake_write.url, DELEGATE_ALLOWED_HOSTS=allowed)
    token = serve.token()
    r = initialize(serve, token, url.netloc)
    assert r.status_code == 200, f"Host {url.netloc}: {r.status_code} {r.text[:500]}"
    assert "serverInfo" in r.text, r.text[:500]
    r = initialize(serve, token, "attacker.example:8080")
    assert r.status_code == 403, f"a foreign Host got {r.status_code}: {r.text[:300]}"
    print(json.dumps({"allowed": allowed, "dialed": url.netloc}))


def test_a_bad_allowed_host_stops_start_up(tmp_path: Path) -> None:
    """`DELEGATE_ALLOWED_HOSTS` given a URL: delegate refuses to start, naming the setting."""
    from conftest import delegate_env, fresh_data_dir
    from support import DELEGATE, remove_tree

    data = fresh_data_dir()
    try:
        env = delegate_env(data, "http://127.0.0.1:9", DELEGATE_ALLOWED_HOSTS="http://delegate:8080")
        p = subprocess.run(
            [str(DELEGATE), "serve"],
            env={**env, "DELEGATE_LISTEN": "127.0.0.1:0"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        remove_tree(data)
    assert p.returncode != 0, f"delegate serve started with a URL as allowed host: {p.stderr[-500:]}"
    assert "DELEGATE_ALLOWED_HOSTS" in p.stderr, p.stderr[-1000:]
