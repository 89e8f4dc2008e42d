"""Claude Code (`@anthropic-ai/claude-code`) registers delegate over stdio and over HTTP with the bearer
header, and `claude mcp list` (which connects to each server) shows both `✔ Connected`. A third entry
with a bogus token must not connect, so the check can fail."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import Fake, Serve, StdioEnv, base_env
from support import CLAUDE, DELEGATE, NODE22_BIN, assert_nothing_running, need

STDIO_KEYS = ("DELEGATE_DATA_DIR", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "DELEGATE_OPENCODE_BIN", "DELEGATE_BACKEND")


def test_claude_code_mcp_list_connects(
    tmp_path: Path,
    fake_write: Fake,
    serve_factory: Callable[..., Serve],
    stdio_factory: Callable[..., StdioEnv],
) -> None:
    need(CLAUDE, "Claude Code")
    serve = serve_factory(fake_write.url)
    token = serve.token()
    stdio = stdio_factory(fake_write.url)

    home = tmp_path / "claude-home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = base_env()  # no Anthropic key: `mcp add` and `mcp list` need none
    env.update(
        HOME=str(home),
        PATH=f"{NODE22_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
    )
    env.pop("XDG_CONFIG_HOME", None)
    log = tmp_path / "claude.log"

    def claude(*args: str) -> str:
        p = subprocess.run(
            [str(CLAUDE), *args], env=env, cwd=project, capture_output=True, text=True, timeout=120, check=False
        )
        with open(log, "a") as f:
            f.write(f"$ claude {' '.join(args)}\n[rc] {p.returncode}\n{p.stdout}\n{p.stderr}\n")
        assert p.returncode == 0, f"claude {' '.join(args[:3])} exited {p.returncode}: {p.stderr[-2000:]}"
        return p.stdout + p.stderr

    env_flags = [x for key in STDIO_KEYS for x in ("-e", f"{key}={stdio.env[key]}")]
    claude("mcp", "add", "delegate-stdio", *env_flags, "--", str(DELEGATE), "mcp")
    claude("mcp", "add", "--transport", "http", "delegate-http", serve.mcp_url, "-H", f"Authorization: Bearer {token}")
    claude(
        "mcp", "add", "--transport", "http", "delegate-badtoken", serve.mcp_url,
        "-H", "Authorization: Bearer dlg_" + "0" * 64,
    )  # fmt: skip

    out = claude("mcp", "list")
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^(delegate-[\w-]+): (.*)$", out, re.M)}
    assert set(lines) == {"delegate-stdio", "delegate-http", "delegate-badtoken"}, out
    assert "✔ Connected" in lines["delegate-stdio"], f"stdio: {lines['delegate-stdio']}\n(log {stdio.errlog})"
    assert "✔ Connected" in lines["delegate-http"], f"http: {lines['delegate-http']}\n(server log {serve.log})"
    assert "✔ Connected" not in lines["delegate-badtoken"], f"a bogus token connected: {lines['delegate-badtoken']}"

    # the `delegate mcp` that claude started for its health check is gone with everything it ran
    assert_nothing_running(stdio.data_dir)
    assert not serve.sandbox_processes()
