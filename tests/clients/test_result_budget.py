"""What a calling model is handed stays within a host's limit, and long silent runs still send
progress. The official Python MCP SDK drives `delegate mcp` (stdio) with the real opencode behind
the scripted fake upstream:

- a run whose agent writes a 2.7 MB file and 300 small ones returns at most 20,000 characters of
  structured JSON (`detail` normal), 4,000 with `detail: "summary"`; the `content` text carries the
  status, the changed files and a diff preview too; `stream_session` pages stay within budget;
- a run whose model stays silent for longer than `DELEGATE_HEARTBEAT_SECS` (1 s here) still gets
  regular progress notifications ("still working ... elapsed")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Fake, StdioEnv
from support import call_ok, stdio_client, text_of

pytestmark = pytest.mark.anyio

# One 2.7 MB file (400,000 lines) and 300 one-line files; no `:` (the fake's script separator).
# The big one sorts first: the server's preview (DELEGATE_DIFF_MAX_BYTES) takes whole files smallest
# first, so the small ones still reach the budget, and its note names the big one left out.
LARGE_CHANGE = "bash:seq 1 400000 > aa_big.txt && for i in $(seq 1 300); do echo line $i > small_$i.txt; done"
NORMAL_CHARS = 20_000
SUMMARY_CHARS = 4_000


def size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


async def test_large_change_stays_within_budget(
    tmp_path: Path, fake_factory: Callable[[str], Fake], stdio_factory: Callable[..., StdioEnv]
) -> None:
    fake = fake_factory(LARGE_CHANGE)
    stdio = stdio_factory(fake.url)
    async with stdio_client(stdio.env, "legacy", stdio.errlog) as c:
        r = await c.call_tool("run_in_sandbox", {"task": "generate the files", "repo": "none"})
        assert not r.is_error, text_of(r)[:2000]
        out = r.structured_content
        assert isinstance(out, dict)
        measured = size(out)
        print(f"normal: structuredContent {measured} characters, text {len(text_of(r))}")
        assert out["status"] == "succeeded", json.dumps(out)[:2000]
        assert measured <= NORMAL_CHARS, f"structuredContent is {measured} characters"
        omitted = out.get("omitted")
        assert omitted, f"a 2.7 MB change must be cut: {json.dumps(out)[:1000]}"
        listed = {f["path"] for f in out["changed_files"]}
        assert len(listed) + omitted["changed_files"] == 301, (len(listed), omitted["changed_files"])
        assert out["diff"].count("diff --git") >= 10, "whole small files first"
        assert "+line 1\n" in out["diff"]
        left = {d["path"]: d for d in omitted["diff_files"]}
        assert "diff --git a/aa_big.txt" not in out["diff"], "the big file's diff took the room"
        assert "aa_big.txt" in left or "#   aa_big.txt (" in out["diff"], (omitted, out["diff"][:500])
        assert "stream_session" in omitted["rest"], omitted["rest"]

        # Clients that read only `content` get the essentials too.
        text = text_of(r)
        assert text.startswith(f"run {out['run_id']} succeeded"), text[:300]
        assert "changed: " in text and "small_" in text, text[:2000]
        assert "```diff" in text and "+line 1" in text, text[:3000]
        assert len(text) <= NORMAL_CHARS + 2_000, len(text)

        # Every event, page by page, within budget.
        cursor, pages, events = 0, 0, 0
        while True:
            page = await call_ok(c, "stream_session", {"run_id": out["run_id"], "after": cursor, "wait_seconds": 1})
            assert size(page) <= NORMAL_CHARS, size(page)
            assert all("raw" not in e for e in page["events"])
            pages += 1
            events += len(page["events"])
            cursor = page["next_cursor"]
            if page["done"]:
                break
            assert pages < 200, "stream_session never got done"
        assert events == out["event_count"], (events, out["event_count"])

    # `summary` on the same kind of run.
    stdio2 = stdio_factory(fake.url)
    async with stdio_client(stdio2.env, "legacy", stdio2.errlog) as c:
        summary = await call_ok(c, "run_in_sandbox", {"task": "generate the files", "repo": "none", "detail": "summary"})
        print(f"summary: structuredContent {size(summary)} characters")
        assert summary["status"] == "succeeded"
        assert size(summary) <= SUMMARY_CHARS, size(summary)
        assert summary["changed_files"], "the first changed files are listed"


async def test_silent_model_still_gets_heartbeats(
    fake_factory: Callable[[str], Fake], stdio_factory: Callable[..., StdioEnv]
) -> None:
    # Every SSE event of the model comes 2.5 s after the previous one: opencode says nothing
    # meanwhile, for longer than the 1 s heartbeat.
    fake = fake_factory("slow:2500:text:done")
    stdio = stdio_factory(fake.url, DELEGATE_HEARTBEAT_SECS="1")
    progress: list[tuple[float, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, message))

    async with stdio_client(stdio.env, "legacy", stdio.errlog) as c:
        r = await c.call_tool("run_in_sandbox", {"task": "say done", "repo": "none"}, progress_callback=on_progress)
        assert not r.is_error, text_of(r)[:2000]
        assert r.structured_content["status"] == "succeeded", r.structured_content
    beats = [m for _, m in progress if m and m.startswith("still working")]
    assert len(beats) >= 2, f"{len(beats)} heartbeats in {progress}"
    assert all("elapsed" in m and "last activity" in m for m in beats), beats
    values = [p for p, _ in progress]
    assert values == sorted(values) and len(set(values)) == len(values), f"progress not increasing: {values}"
