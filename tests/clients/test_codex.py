"""Codex CLI (`@openai/codex`, pinned in scripts/setup) as the host agent, configured with
examples/codex-config.toml as shipped: `codex exec` with its model scripted by `ResponsesFake` (the
OpenAI Responses API) calls delegate's `run_in_sandbox` over stdio, and the tool's output reaches
its model with the run's status and changed files. The environment reaches `delegate mcp` only
through the example's `env_vars`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import Fake, StdioEnv, base_env
from host_fakes import TASK, ResponsesFake
from support import DELEGATE, NODE22_BIN, ROOT, TOOLS, assert_nothing_running, need

CODEX = Path(os.environ.get("DELEGATE_CODEX_BIN") or TOOLS / "mcp-clients" / "node_modules" / ".bin" / "codex")
EXAMPLE = ROOT / "examples" / "codex-config.toml"


def test_codex_exec_delegates_over_stdio(
    tmp_path: Path, fake_write: Fake, stdio_factory: Callable[..., StdioEnv]
) -> None:
    need(CODEX, "Codex CLI")
    stdio = stdio_factory(fake_write.url)
    model = ResponsesFake("run_in_sandbox", {"task": TASK, "repo": "none"})
    home = tmp_path / "codex-home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    # The scripted model provider first (top-level keys precede tables), then the example as is.
    (home / "config.toml").write_text(
        'model = "gpt-test"\nmodel_provider = "scripted"\n\n'
        + EXAMPLE.read_text()
        + f'\n[model_providers.scripted]\nname = "scripted"\nbase_url = "{model.url}/v1"\n'
        'env_key = "SCRIPTED_OPENAI_KEY"\nwire_api = "responses"\n'
    )
    env = base_env()
    env.update(
        CODEX_HOME=str(home),
        HOME=str(tmp_path),
        SCRIPTED_OPENAI_KEY="sk-test-scripted",
        # `command = "delegate"`: the build under test
        PATH=f"{DELEGATE.parent}:{NODE22_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        # what the example's env_vars pass on to `delegate mcp`
        ANTHROPIC_API_KEY=stdio.env["ANTHROPIC_API_KEY"],
        ANTHROPIC_BASE_URL=stdio.env["ANTHROPIC_BASE_URL"],
        DELEGATE_OPENCODE_BIN=stdio.env["DELEGATE_OPENCODE_BIN"],
        DELEGATE_DATA_DIR=stdio.env["DELEGATE_DATA_DIR"],
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
        f"delegate's tools never reached Codex's model: {model.offered}\n{p.stderr[-2000:]}"
    )
    assert model.tool_output is not None, f"Codex never sent the tool's output back: {p.stderr[-2000:]}"
    output = json.dumps(model.tool_output)
    print(f"Codex handed its model {len(output)} characters")
    assert "requires approval" not in output, output[:500]
    assert "succeeded" in output and "hello.txt" in output, output[:2000]
    assert_nothing_running(stdio.data_dir)
