"""Codex CLI over streamable HTTP: `codex exec`, configured with the HTTP alternative of
examples/codex-config.toml (`url`, bearer token from `bearer_token_env_var`), calls `run_in_sandbox`
on a `delegate serve`, and the tool's output reaches its model (scripted by `ResponsesFake`) with
the run's status and changed files. The stdio variant is test_codex.py."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import Fake, Serve, base_env
from host_fakes import TASK, ResponsesFake
from support import NODE22_BIN, need
from test_codex import CODEX, EXAMPLE


def http_block() -> str:
    """The example's commented HTTP alternative, uncommented."""
    text = EXAMPLE.read_text()
    start = text.index("# [mcp_servers.delegate]", text.index("# Or HTTP"))
    block = [line[2:] for line in text[start:].splitlines() if line.startswith("# ")]
    return "\n".join(block) + "\n"


def test_codex_exec_delegates_over_http(
    tmp_path: Path, fake_write: Fake, serve_factory: Callable[..., Serve]
) -> None:
    need(CODEX, "Codex CLI")
    serve = serve_factory(fake_write.url)
    model = ResponsesFake("run_in_sandbox", {"task": TASK, "repo": "none"})
    home = tmp_path / "codex-home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    block = http_block()
    assert 'bearer_token_env_var = "DELEGATE_TOKEN"' in block, block
    block, n = re.subn(r'^url = ".*"$', f'url = "{serve.mcp_url}"', block, flags=re.M)
    assert n == 1, block
    (home / "config.toml").write_text(
        'model = "gpt-test"\nmodel_provider = "scripted"\n\n'
        + block
        + f'\n[model_providers.scripted]\nname = "scripted"\nbase_url = "{model.url}/v1"\n'
        'env_key = "SCRIPTED_OPENAI_KEY"\nwire_api = "responses"\n'
    )
    token = serve.token()
    env = base_env()
    env.update(
        CODEX_HOME=str(home),
        HOME=str(tmp_path),
        SCRIPTED_OPENAI_KEY="sk-test-scripted",
        PATH=f"{NODE22_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        # the only thing Codex needs of delegate: the token (opencode and the key stay with the server)
        DELEGATE_TOKEN=token,
    )
    args = [str(CODEX), "exec", "--skip-git-repo-check", "Delegate the task in the brief."]
    try:
        p = subprocess.run(args, env=env, cwd=project, capture_output=True, text=True, timeout=600, check=False)
    finally:
        model.stop()
        (tmp_path / "model-requests.json").write_text(json.dumps(model.requests, indent=1))
    (tmp_path / "codex.log").write_text(f"$ {' '.join(args)}\n[rc] {p.returncode}\n{p.stdout}\n{p.stderr}\n")
    assert p.returncode == 0, f"codex exec exited {p.returncode}: {p.stdout[-1500:]}\n{p.stderr[-1500:]}"
    assert any(any(n.endswith("run_in_sandbox") for n in names) for names in model.offered), (
        f"delegate's tools never reached Codex's model over HTTP: {model.offered}\n{p.stderr[-2000:]}"
    )
    assert model.tool_output is not None, f"Codex never sent the tool's output back: {p.stderr[-2000:]}"
    output = json.dumps(model.tool_output)
    print(f"Codex handed its model {len(output)} characters over HTTP")
    assert "requires approval" not in output, output[:500]
    assert "succeeded" in output and "hello.txt" in output, output[:2000]
    # the run the model read about is the server's, and the token's user sees it succeeded
    run_ids = set(re.findall(r"run_[0-9a-f]{32}", output))
    assert len(run_ids) == 1, output[:2000]
    req = urllib.request.Request(f"{serve.base_url}/api/runs/{run_ids.pop()}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["status"] == "succeeded"
