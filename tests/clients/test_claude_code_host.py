"""Claude Code as the host agent, with the plugin in examples/claude-code loaded (`--plugin-dir`):
`claude -p` runs with its model scripted by `ClaudeHostFake` (the same base URL forwards the
sandbox's opencode to the scripted `fake-anthropic`), and the tests read, from the requests Claude
Code sent its model, what it handed the model:

- the plugin loaded: its MCP server's tools, its `delegator` sub-agent and `delegating` skill are
  offered to the model;
- a run with a 2.7 MB change: the tool result holds status, changed files and the diff preview and
  stays under the budget;
- the sub-agent: the main agent hands the task to `delegate:delegator`, whose model is offered only
  delegate's tools, and its `run_in_sandbox` result reaches it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Fake, StdioEnv, base_env
from host_fakes import TASK, ClaudeHostFake
from support import CLAUDE, DELEGATE, NODE22_BIN, ROOT, assert_nothing_running, need

PLUGIN = ROOT / "examples" / "claude-code"
LARGE_CHANGE = "bash:seq 1 400000 > aa_big.txt && for i in $(seq 1 300); do echo line $i > small_$i.txt; done"
# What Claude Code may hand its model for one tool result: delegate's budget (20,000 characters
# of JSON) plus Claude Code's own wrapping.
BUDGET = 22_000
PLUGIN_SERVER = "mcp__plugin_delegate_delegate"


def run_claude(tmp_path: Path, host: ClaudeHostFake, stdio: StdioEnv, *extra: str) -> str:
    home = tmp_path / "claude-home"
    project = tmp_path / "project"
    home.mkdir(exist_ok=True)
    project.mkdir(exist_ok=True)
    env = base_env()
    env.update(
        {k: v for k, v in stdio.env.items() if k.startswith("DELEGATE_")},
        HOME=str(home),
        # the plugin starts `delegate mcp` from PATH: the build under test
        PATH=f"{DELEGATE.parent}:{NODE22_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANTHROPIC_API_KEY="sk-ant-test-fake-key-0000",
        ANTHROPIC_BASE_URL=host.url,
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        # MCP tools offered up front rather than behind ToolSearch, so the scripted model sees them
        ENABLE_TOOL_SEARCH="false",
    )
    env.pop("XDG_CONFIG_HOME", None)
    args = [
        str(CLAUDE), "-p", "Delegate the task in the brief.", "--plugin-dir", str(PLUGIN),
        "--allowedTools", PLUGIN_SERVER, "Task", "Agent", "--output-format", "text", *extra,
    ]  # fmt: skip
    p = subprocess.run(args, env=env, cwd=project, capture_output=True, text=True, timeout=600, check=False)
    (tmp_path / "claude.log").write_text(f"$ {' '.join(args)}\n[rc] {p.returncode}\n{p.stdout}\n{p.stderr}\n")
    assert p.returncode == 0, f"claude -p exited {p.returncode}: {p.stdout[-1500:]}\n{p.stderr[-1500:]}"
    return p.stdout


def offered(request: dict[str, Any]) -> dict[str, str]:
    return {t.get("name", ""): json.dumps(t) for t in request.get("tools") or []}


def test_plugin_loads_and_a_large_result_stays_under_budget(
    tmp_path: Path, fake_factory: Callable[[str], Fake], stdio_factory: Callable[..., StdioEnv]
) -> None:
    need(CLAUDE, "Claude Code")
    sandbox_model = fake_factory(LARGE_CHANGE)
    stdio = stdio_factory(sandbox_model.url)
    host = ClaudeHostFake(sandbox_model.url, {"task": TASK, "repo": "none"})
    try:
        out = run_claude(tmp_path, host, stdio)
    finally:
        host.stop()
        (tmp_path / "host-requests.json").write_text(json.dumps(host.host_requests, indent=1))

    # The plugin loaded: its server's tools, its sub-agent and its skill reach the model.
    main = next((r for r in host.host_requests if any(n.endswith("__run_in_sandbox") for n in offered(r))), None)
    assert main is not None, f"delegate's tools were never offered: {[sorted(offered(r)) for r in host.host_requests]}"
    tools = offered(main)
    assert f"{PLUGIN_SERVER}__run_in_sandbox" in tools, sorted(tools)
    assert f"{PLUGIN_SERVER}__apply_changes" in tools, sorted(tools)
    everything = json.dumps(main)
    assert "- delegate:delegator: Delegates one self-contained coding task" in everything, "no sub-agent"
    assert "- delegate:delegating: When and how to hand a coding task" in everything, "no skill"

    result = host.tool_results.get("run_in_sandbox")
    assert result is not None, f"Claude Code never handed its model the tool result; it printed {out[-1000:]}"
    text = result["text"]
    print(f"Claude Code handed its model {len(text)} characters for a 2.7 MB change")
    assert not result["is_error"], text[:2000]
    assert len(text) <= BUDGET, f"{len(text)} characters: {text[:500]}"
    assert "exceeds maximum allowed tokens" not in text, text[:500]
    assert "succeeded" in text, text[:1000]
    assert "small_1.txt" in text and "aa_big.txt" in text, text[:3000]
    assert "diff --git" in text, "no diff preview"
    assert "delegate://runs/" in text, "no way to the whole patch"
    assert_nothing_running(stdio.data_dir)


def test_sub_agent_delegates_with_delegate_tools_only(
    tmp_path: Path, fake_write: Fake, stdio_factory: Callable[..., StdioEnv]
) -> None:
    need(CLAUDE, "Claude Code")
    stdio = stdio_factory(fake_write.url)
    host = ClaudeHostFake(fake_write.url, {"task": TASK, "repo": "none"}, via_agent="delegate:delegator")
    try:
        run_claude(tmp_path, host, stdio)
    finally:
        host.stop()
        (tmp_path / "host-requests.json").write_text(json.dumps(host.host_requests, indent=1))

    assert "agent" in host.tool_uses.values(), "the main agent was never offered the sub-agent"
    sub = [r for r in host.host_requests if any(n.endswith("__run_in_sandbox") for n in offered(r))]
    sub = [r for r in sub if not ({"Task", "Agent"} & set(offered(r)))]
    assert sub, "no request of the sub-agent offered run_in_sandbox"
    names = set(offered(sub[0]))
    others = {n for n in names if not n.startswith(f"{PLUGIN_SERVER}__")} - {"ReadMcpResourceTool"}
    assert not others, f"the sub-agent is offered more than delegate's tools: {sorted(others)}"
    assert f"{PLUGIN_SERVER}__apply_changes" in names, sorted(names)
    result = host.tool_results.get("run_in_sandbox")
    assert result is not None and not result["is_error"], result
    assert "succeeded" in result["text"] and "hello.txt" in result["text"], result["text"][:2000]
    # Claude Code runs the sub-agent in the background; the main agent gets its handle at once.
    assert host.tool_results.get("agent") is not None, "the main agent never got the sub-agent's answer"
    assert_nothing_running(stdio.data_dir)
