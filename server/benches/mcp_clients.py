"""MCP benchmarks with a real client (the official Python SDK), each side by side in one process:

1. A delegated run through `delegate mcp` (stdio: spawn, initialize, run_in_sandbox, close) ÷ the
   same run through `delegate run` (spawn to exit), interleaved, same task and fake upstream.
2. `list_sandboxes` over HTTP: latency at 1 client ÷ under 50 concurrent clients (p50/p99).

    cargo build --release --bins
    DELEGATE_BIN=target/release/delegate .tools/venv/bin/python server/benches/mcp_clients.py --runs 7

Prints a Markdown report for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "clients"))
import support  # noqa: E402

TASK = "create hello.txt saying hi"


def start_fake(tmp: Path) -> tuple[support.Proc, str]:
    fake = support.Proc([support.FAKE_ANTHROPIC, "--port", "0", "--script", "write:hello.txt:hi"],
                        env=dict(os.environ), log=tmp / "fake.log")
    url = fake.wait_line(r"listening on (http://\S+)", stream="stdout").group(1)
    return fake, url


def env_for(data: Path, upstream: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "DELEGATE_DATA_DIR": str(data),
        "ANTHROPIC_API_KEY": "sk-ant-bench",
        "ANTHROPIC_BASE_URL": upstream,
        "DELEGATE_OPENCODE_BIN": str(support.OPENCODE),
        "DELEGATE_BACKEND": "process",
    }


async def mcp_stdio_vs_cli(tmp: Path, upstream: str, runs: int) -> str:
    cli, mcp = [], []
    for i in range(runs + 1):
        env = env_for(tmp / f"cli{i}", upstream)
        t = time.perf_counter()
        out = subprocess.run([support.DELEGATE, "run", "--json", "--quiet", TASK], env=env, capture_output=True)
        cli_s = time.perf_counter() - t
        assert out.returncode == 0, out.stderr.decode()[-2000:]

        env = env_for(tmp / f"mcp{i}", upstream)
        t = time.perf_counter()
        async with support.stdio_client(env, "legacy", tmp / "mcp.err") as client:
            r = await support.call_ok(client, "run_in_sandbox", {"task": TASK})
        mcp_s = time.perf_counter() - t
        assert r["status"] == "succeeded", r
        if i > 0:  # the first pair warms caches
            cli.append(cli_s)
            mcp.append(mcp_s)
    c, m = statistics.median(cli), statistics.median(mcp)
    return (
        "## A run through MCP stdio ÷ the same run through `delegate run`\n\n"
        "| | median wall time |\n|---|---|\n"
        f"| `delegate run --json` (spawn to exit) | {c:.2f} s |\n"
        f"| `delegate mcp` via the Python SDK (spawn, initialize, `run_in_sandbox`, close) | {m:.2f} s |\n"
        f"| **ratio** (target <= 1.02) | **{m / c:.3f}** |\n\n"
    )


def pct(v: list[float], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * q))]


async def list_latency(tmp: Path, upstream: str, clients: int, calls: int) -> str:
    data = tmp / "serve"
    env = env_for(data, upstream) | {"DELEGATE_LISTEN": "127.0.0.1:0", "DELEGATE_LOG": "info"}
    tok = subprocess.run([support.DELEGATE, "token", "create"], env=env, capture_output=True, text=True, check=True)
    token = tok.stdout.strip()
    serve = support.Proc([support.DELEGATE, "serve"], env=env, log=tmp / "serve.log")
    try:
        port = serve.wait_line(r"listening on http://127\.0\.0\.1:(\d+)").group(1)
        url = f"http://127.0.0.1:{port}/mcp"
        async with support.http_client(url, token, "legacy") as c:
            for _ in range(2):  # two warm sandboxes, so the list has rows
                await support.call_ok(c, "create_sandbox", {"name": "bench"})

        async def one_client(n: int) -> list[float]:
            out = []
            async with support.http_client(url, token, "legacy") as c:
                await c.call_tool("list_sandboxes", {})  # warm up the session
                for _ in range(n):
                    t = time.perf_counter()
                    r = await c.call_tool("list_sandboxes", {})
                    out.append((time.perf_counter() - t) * 1000)
                    assert not r.is_error and len(r.structured_content["sandboxes"]) == 2
            return out

        single = await one_client(calls)
        many = [x for xs in await asyncio.gather(*(one_client(calls) for _ in range(clients))) for x in xs]
        async with support.http_client(url, token, "legacy") as c:
            listed = await support.call_ok(c, "list_sandboxes", {})
            for s in listed["sandboxes"]:
                await support.call_ok(c, "delete_sandbox", {"sandbox_id": s["sandbox_id"]})
    finally:
        serve.stop()
    return (
        f"## `list_sandboxes` over HTTP (streamable HTTP, Python SDK clients, {calls} calls each)\n\n"
        "| clients | calls | p50 | p99 |\n|---|---|---|---|\n"
        f"| 1 | {len(single)} | {pct(single, .5):.2f} ms | {pct(single, .99):.2f} ms |\n"
        f"| {clients} concurrent | {len(many)} | {pct(many, .5):.2f} ms | {pct(many, .99):.2f} ms |\n"
        f"| **ratio** {clients} ÷ 1 | | **{pct(many, .5) / pct(single, .5):.2f}** | **{pct(many, .99) / pct(single, .99):.2f}** |\n\n"
        "Both sides run on the same 2 cores as the clients themselves (50 Python SDK sessions), so the "
        "concurrent figures include client-side queueing.\n"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlgbench") as d:
        tmp = Path(d)
        fake, upstream = start_fake(tmp)
        try:
            report = await mcp_stdio_vs_cli(tmp, upstream, args.runs)
            report += await list_latency(tmp, upstream, args.clients, args.calls)
        finally:
            fake.stop()
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
