"""`/mcp` on `delegate serve` requires a Bearer API token, and one user's token never sees another
user's sandboxes or runs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import anyio
import pytest

from conftest import Fake, Serve
from support import await_cond, call_ok, call_tool_error, http_client

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def post_mcp(url: str, authorization: str | None) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if authorization is not None:
        headers["Authorization"] = authorization
    req = urllib.request.Request(url, data=json.dumps(INIT).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read(65536).decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode(errors="replace")


def test_http_requires_bearer_token(serve_factory: Callable[..., Serve], fake_write: Fake) -> None:
    serve = serve_factory(fake_write.url)
    with urllib.request.urlopen(f"{serve.base_url}/healthz", timeout=10) as resp:
        assert resp.status == 200 and resp.read().decode().strip() == "ok"

    for auth in (None, "Bearer dlg_" + "0" * 64, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer "):
        status, headers, body = post_mcp(serve.mcp_url, auth)
        assert status == 401, f"Authorization {auth!r}: expected 401, got {status}: {body[:300]}"
        challenge = headers.get("www-authenticate", "")
        assert challenge.lower().startswith("bearer"), f"Authorization {auth!r}: WWW-Authenticate {challenge!r}"
        if auth and len(auth) > 12:
            assert auth.split(" ", 1)[1] not in body, f"the credential was echoed back: {body[:300]}"

    # the same request with a real token is served
    status, _, body = post_mcp(serve.mcp_url, f"Bearer {serve.token()}")
    assert status == 200, f"with a valid token: {status} {body[:300]}"
    assert '"serverInfo"' in body or '"result"' in body, body[:300]


@pytest.mark.anyio
async def test_users_are_isolated(serve_factory: Callable[..., Serve], fake_factory: Callable[[str], Fake]) -> None:
    """User A's token: B's sandbox is not listed and every tool on B's sandbox or run answers exactly
    as for an id that does not exist; B's run is untouched by A's attempts."""
    hang = fake_factory("hang")
    serve = serve_factory(hang.url)
    token_a = serve.token()
    serve.create_user("bob@example.com")
    token_b = serve.token(user="bob@example.com")
    assert token_a != token_b

    with anyio.fail_after(120):
        async with http_client(serve.mcp_url, token_b, "auto") as b, http_client(serve.mcp_url, token_a, "auto") as a:
            sb = await call_ok(b, "create_sandbox", {"name": "bob-private"})
            sandbox_b = sb["sandbox_id"]
            assert sb["status"] == "running", sb
            run = await call_ok(b, "run_in_sandbox", {"task": "hang on", "sandbox_id": sandbox_b, "wait": False})
            run_b = run["run_id"]
            assert run["status"] in ("queued", "starting", "running"), run
            await await_cond(hang.requests, 60, "B's run to reach the fake upstream")

            listed_a = await call_ok(a, "list_sandboxes", {})
            assert sandbox_b not in json.dumps(listed_a), f"A sees B's sandbox: {listed_a}"
            own = await call_ok(a, "create_sandbox", {"name": "alice-own"})
            listed_a = await call_ok(a, "list_sandboxes", {})
            assert [s["sandbox_id"] for s in listed_a["sandboxes"]] == [own["sandbox_id"]], listed_a
            listed_b = await call_ok(b, "list_sandboxes", {})
            assert own["sandbox_id"] not in json.dumps(listed_b), f"B sees A's sandbox: {listed_b}"

            ghost_sandbox = "sbx_" + "0" * 32
            ghost_run = "run_" + "0" * 32
            probes = [
                ("stream_session", {"run_id": run_b}, {"run_id": ghost_run}, run_b, ghost_run),
                ("stream_session", {"sandbox_id": sandbox_b}, {"sandbox_id": ghost_sandbox}, sandbox_b, ghost_sandbox),
                ("cancel_run", {"run_id": run_b}, {"run_id": ghost_run}, run_b, ghost_run),
                ("delete_sandbox", {"sandbox_id": sandbox_b}, {"sandbox_id": ghost_sandbox}, sandbox_b, ghost_sandbox),
                (
                    "run_in_sandbox",
                    {"task": "x", "sandbox_id": sandbox_b},
                    {"task": "x", "sandbox_id": ghost_sandbox},
                    sandbox_b,
                    ghost_sandbox,
                ),
            ]
            for tool, args, ghost_args, real_id, ghost_id in probes:
                text = await call_tool_error(a, tool, args)
                ghost = await call_tool_error(a, tool, ghost_args)
                assert "not found" in text.lower(), f"A's {tool} on B's {real_id}: {text!r}"
                assert text.replace(real_id, "ID") == ghost.replace(ghost_id, "ID"), (
                    f"A's {tool} on B's id answers differently than on an unknown id: {text!r} vs {ghost!r}"
                )
            text = await call_tool_error(a, "list_sandboxes", {"workspace": "bob"})
            assert "sandbox" not in text.lower() or sandbox_b not in text, text

            # B's run and sandbox are untouched
            state = await call_ok(b, "stream_session", {"run_id": run_b, "wait_seconds": 0})
            assert state["status"] == "running", f"B's run after A's attempts: {state['status']}"
            listed_b = await call_ok(b, "list_sandboxes", {})
            assert [(s["sandbox_id"], s["status"]) for s in listed_b["sandboxes"]] == [(sandbox_b, "running")]

            cancelled = await call_ok(b, "cancel_run", {"run_id": run_b})
            assert cancelled["run_id"] == run_b and cancelled["status"] == "cancelled", cancelled
            for client, sandbox_id in ((b, sandbox_b), (a, own["sandbox_id"])):
                deleted = await call_ok(client, "delete_sandbox", {"sandbox_id": sandbox_id})
                assert deleted["sandbox_id"] == sandbox_id and deleted["status"] in ("deleting", "deleted"), deleted
            await await_cond(lambda: not serve.sandbox_processes(), 20, "the deleted sandboxes' processes to exit")
            assert (await call_ok(b, "list_sandboxes", {}))["sandboxes"] == []
