"""A `run_in_sandbox` call over HTTP outlives Claude Code's idle limit for MCP calls over HTTP
(nothing received for 5 minutes), because delegate's progress heartbeats keep it busy.

The real `claude -p` (its model scripted by `ClaudeHostFake`) calls `run_in_sandbox` on a
`delegate serve` over streamable HTTP; the sandbox's scripted model then says nothing to opencode
for 330 s (only Anthropic `ping` events, as the real API sends while a model thinks) before its
answer, so delegate has no activity to report and only its heartbeats (`DELEGATE_HEARTBEAT_SECS`,
15 s by default) reach Claude Code. The call must end with the result in Claude Code's model.

It takes about 6 minutes and is the suite's one such test; scripts/test runs it like every other."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Fake, Serve, base_env
from host_fakes import TASK, ClaudeHostFake
from support import CLAUDE, NODE22_BIN, need

# Past Claude Code's 5-minute HTTP idle limit, under opencode's own 5-minute wait for a first
# response (headers and `message_start` come at once here).
SILENCE_SECONDS = 330


def test_http_call_survives_a_model_silent_past_the_idle_limit(
    tmp_path: Path, fake_write: Fake, serve_factory: Callable[..., Serve]
) -> None:
    need(CLAUDE, "Claude Code")
    host = ClaudeHostFake(fake_write.url, {"task": TASK, "repo": "none"}, sandbox_silence=SILENCE_SECONDS)
    # The sandbox's model is reached through the host fake, which holds its first agent turn.
    serve = serve_factory(host.url)
    home = tmp_path / "claude-home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "delegate": {
                        "type": "http",
                        "url": serve.mcp_url,
                        "headers": {"Authorization": f"Bearer {serve.token()}"},
                    }
                }
            }
        )
    )
    env = base_env()
    env.update(
        HOME=str(home),
        PATH=f"{NODE22_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANTHROPIC_API_KEY="sk-ant-test-fake-key-0000",
        ANTHROPIC_BASE_URL=host.url,
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        ENABLE_TOOL_SEARCH="false",
    )
    env.pop("XDG_CONFIG_HOME", None)
    # Claude Code's own timeouts stay at their defaults: that is what is being tested.
    for name in ("MCP_TOOL_TIMEOUT", "MCP_TIMEOUT", "CLAUDE_CODE_MCP_TOOL_IDLE_TIMEOUT"):
        env.pop(name, None)
    args = [
        str(CLAUDE), "-p", "Delegate the task in the brief.", "--mcp-config", str(config), "--strict-mcp-config",
        "--allowedTools", "mcp__delegate", "--output-format", "text",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        p = subprocess.run(args, env=env, cwd=project, capture_output=True, text=True, timeout=900, check=False)
    finally:
        host.stop()
        (tmp_path / "host-requests.json").write_text(json.dumps(host.host_requests, indent=1))
    took = time.monotonic() - started
    (tmp_path / "claude.log").write_text(f"$ {' '.join(args)}\n[rc] {p.returncode}\n{p.stdout}\n{p.stderr}\n")
    assert p.returncode == 0, f"claude -p exited {p.returncode}: {p.stdout[-1500:]}\n{p.stderr[-1500:]}"

    assert host.silence is not None, "the sandbox's model was never reached"
    silent = host.silence[1] - host.silence[0]
    print(f"sandbox model silent {silent:.0f} s; claude -p took {took:.0f} s")
    assert silent >= SILENCE_SECONDS, silent
    result = host.tool_results.get("run_in_sandbox")
    assert result is not None, f"Claude Code never handed its model the tool result; it printed {p.stdout[-1000:]}"
    text = result["text"]
    assert not result["is_error"], text[:2000]
    assert "succeeded" in text and "hello.txt" in text, text[:2000]
