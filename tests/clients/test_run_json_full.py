"""`delegate run --json` prints the result within the hosts' budget and says what it left out;
`--json --full` prints all of it. The real `delegate run` (embedded) and opencode, with the
scripted fake upstream making a change larger than the budget."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import Fake, StdioEnv
from support import DELEGATE

# 40 files of 600 lines each (~100 KB of diff): over the 20,000-character budget, under the
# server's DELEGATE_DIFF_MAX_BYTES, so the full result has every file whole. No `:` (the fake's
# script separator).
FILES = 40
CHANGE = f"bash:for i in $(seq 1 {FILES}); do seq 1 600 > f_$i.txt; done"
BUDGET_CHARS = 20_000


def run_json(stdio: StdioEnv, cwd: Path, *extra: str) -> tuple[dict, str]:
    p = subprocess.run(
        [str(DELEGATE), "run", "--json", *extra, "--no-repo", "-q", "write the files"],
        env=stdio.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, f"delegate run {' '.join(extra)} exited {p.returncode}: {p.stderr[-3000:]}"
    return json.loads(p.stdout), p.stdout


def test_json_is_budgeted_and_full_has_everything(
    tmp_path: Path, fake_factory: Callable[[str], Fake], stdio_factory: Callable[..., StdioEnv]
) -> None:
    fake = fake_factory(CHANGE)
    stdio = stdio_factory(fake.url)

    cut, cut_text = run_json(stdio, tmp_path)
    print(f"--json: {len(cut_text)} characters")
    assert cut["status"] == "succeeded", cut_text[:2000]
    assert len(json.dumps(cut, ensure_ascii=False, separators=(",", ":"))) <= BUDGET_CHARS
    omitted = cut.get("omitted")
    assert omitted, f"a {FILES}-file change over the budget must say what it left out: {cut_text[:2000]}"
    left_out = {d["path"] for d in omitted["diff_files"]}
    assert len(left_out) + omitted["more_diff_files"] > 0, omitted
    assert all(d["diff_chars"] > 0 and d["additions"] == 600 for d in omitted["diff_files"]), omitted
    assert "stream_session" in omitted["rest"], omitted["rest"]
    assert cut["diff"].count("diff --git") < FILES, "the cut diff cannot hold every file"

    full, full_text = run_json(stdio, tmp_path, "--full")
    print(f"--json --full: {len(full_text)} characters")
    assert full["status"] == "succeeded", full_text[:2000]
    assert "omitted" not in full or not full["omitted"], full.get("omitted")
    assert len(full_text) > BUDGET_CHARS
    assert sorted(f["path"] for f in full["changed_files"]) == sorted(f"f_{i}.txt" for i in range(1, FILES + 1))
    # the whole diff: every file, every line
    assert full["diff"].count("diff --git") == FILES
    for i in (1, FILES):
        hunk = full["diff"].split(f"b/f_{i}.txt\n", 1)[1]
        assert "+1\n" in hunk and "+600\n" in hunk, f"f_{i}.txt is not whole"
    assert len(re.findall(r"^\+600$", full["diff"], re.M)) == FILES
