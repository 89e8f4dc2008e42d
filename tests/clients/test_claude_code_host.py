"""Claude Code as the host agent, with the plugin in examples/claude-code loaded (`--plugin-dir`):
`claude -p` runs with its model scripted by `ClaudeHostFake` (the same base URL forwards the
sandbox's opencode to the scripted `fake-anthropic`), and the tests read, from the requests Claude
Code sent its model, what it handed the model:

- the plugin loaded: its MCP server's tools, its `delegator` sub-agent and `delegating` skill are
  offered to the model;
- a run with a 2.7 MB change: the tool result holds status, changed files and the diff preview and
  stays under the budget; the model then reads the whole patch with Claude Code's
  `ReadMcpResourceTool`. Claude Code does not hand a resource that large to its model: it saves
  the result to a file and hands over a 2 KB preview with the file's path, as with large tool
  results (measured: 3.4 MB of JSON for this patch; even a 104 KB patch is saved so). The file is
  the resource's JSON on one line, so `Read` refuses it whole (over 256 KB) and by lines (one 3.1
  MB line); the model reads it with `allow_large: true`;
- the sub-agent: the main agent hands the task to `delegate:delegator`, whose model is offered only
  delegate's tools, and its `run_in_sandbox` result reaches it."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Fake, StdioEnv, base_env
from host_fakes import PATCH_URI, RESOURCE_TOOL, TASK, ClaudeHostFake
from support import CLAUDE, DELEGATE, NODE22_BIN, ROOT, assert_nothing_running, need

PLUGIN = ROOT / "examples" / "claude-code"
LARGE_CHANGE = "bash:seq 1 400000 > aa_big.txt && for i in $(seq 1 300); do echo line $i > small_$i.txt; done"
# What Claude Code may hand its model for one tool result: delegate's budget (20,000 characters
# of JSON) plus Claude Code's own wrapping.
BUDGET = 22_000
PLUGIN_SERVER = "mcp__plugin_delegate_delegate"
# The plugin's server as Claude Code names it to its model (MCP Server Instructions) and takes it in
# ReadMcpResourceTool's `server`; tool names carry it normalized, as PLUGIN_SERVER.
PLUGIN_SERVER_NAME = "plugin:delegate:delegate"
# How much of a saved tool result Claude Code hands its model, around its "<persisted-output>" note.
PERSISTED_PREVIEW = 3_000


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
    arguments = {"task": TASK, "repo": "none"}
    host = ClaudeHostFake(sandbox_model.url, arguments, read_patch=True, read_saved={"allow_large": True})
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
    uri = PATCH_URI.search(text)
    assert uri is not None, "no way to the whole patch"
    assert "+400000" not in text, "the preview was to leave the big file's end out"

    # The model fetches the whole patch as a resource, naming the server as Claude Code does.
    assert RESOURCE_TOOL in tools, f"Claude Code offered no {RESOURCE_TOOL}: {sorted(tools)}"
    assert host.resource_call == {"server": PLUGIN_SERVER_NAME, "uri": uri.group(0)}, host.resource_call
    read = host.tool_results.get("read_patch")
    assert read is not None, f"the next model request carried no {RESOURCE_TOOL} result"
    handed = read["text"]
    print(f"for the whole patch, Claude Code handed its model {len(handed)} characters: {handed[:160]!r}")
    assert not read["is_error"], handed[:2000]
    # Too large to hand over whole: Claude Code saved it and handed a preview and the file's path.
    assert handed.startswith("<persisted-output>") and "Output too large (" in handed, handed[:500]
    assert len(handed) <= PERSISTED_PREVIEW, f"{len(handed)} characters: {handed[:500]}"
    saved = re.search(r"Full output saved to: (\S+)", handed)
    assert saved is not None, handed[:500]
    saved_path = Path(saved.group(1))
    assert saved_path.is_relative_to(tmp_path / "claude-home"), saved_path
    assert "diff --git a/aa_big.txt" in handed, "the preview is not the patch's beginning"

    # The saved file is the resources/read result whole: every file's diff, the big one to its end.
    print(f"Claude Code saved {saved_path.stat().st_size} bytes for the model to read")
    contents = json.loads(saved_path.read_text())["contents"]
    assert [(c["uri"], c["mimeType"]) for c in contents] == [(uri.group(0), "text/x-diff")], contents[:1]
    patch = contents[0]["text"]
    assert patch.count("diff --git ") == 301, patch.count("diff --git ")
    assert "@@ -0,0 +1,400000 @@\n" in patch and "\n+400000\n" in patch, "the big file's diff is cut"
    assert "diff --git a/small_300.txt b/small_300.txt" in patch and "\n+line 300\n" in patch

    # And the model gets it: Claude Code's Read of that file hands over all of it. (The scripted
    # model reports 100 input tokens a turn, so Claude Code sees room for it; a real model's
    # context would take only part of a patch this large.)
    whole = host.tool_results.get("read_saved")
    assert whole is not None, "the model's Read of the saved result never came back"
    assert not whole["is_error"], whole["text"][:1000]
    print(f"Read handed the model {len(whole['text'])} characters of the saved patch")
    assert json.dumps(patch)[1:-1] in whole["text"], "Read did not hand over the whole patch"
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
