"""`run_in_sandbox` as an MCP task over streamable HTTP against `delegate serve`.

rmcp 3.11 (delegate's MCP library) implements tasks as the Tasks extension (SEP-2663,
`io.modelcontextprotocol/tasks`), which replaced the 2025-11-25 protocol's task-augmented
requests: a client declares the extension in its capabilities, `tools/call` then answers
`resultType: "task"` with a task id, `tasks/get` reports it (the result inlined once completed) and
`tasks/cancel` asks it to stop. delegate adds the 2025-11-25 `tasks/result`, which blocks until the
task ended and returns the tool's result.

The pinned Python MCP SDK (2.3.0) carries the task types but no client for them, so this test
speaks raw JSON-RPC over the streamable HTTP transport (initialize, session id, JSON or SSE
replies), as a client implementing tasks would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from conftest import Fake, Serve
from support import wait_until

TASKS = "io.modelcontextprotocol/tasks"
INVALID_PARAMS = -32602
MISSING_CAPABILITY = -32021
BUDGET_CHARS = 20_000


class RawMcp:
    """One MCP session over streamable HTTP, by hand."""

    def __init__(self, url: str, token: str, *, tasks: bool):
        self.url = url
        self.token = token
        self.session: str | None = None
        self.next_id = 1
        capabilities: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
        init = self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {"name": "raw-tasks", "version": "1"}},
        )
        self.server_capabilities = init["result"]["capabilities"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, message: dict[str, Any], timeout: float = 60) -> tuple[dict[str, str], str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {self.token}",
        }
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        req = urllib.request.Request(self.url, data=json.dumps(message).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            got = {k.lower(): v for k, v in resp.headers.items()}
            body = resp.read().decode()
        if "mcp-session-id" in got:
            self.session = got["mcp-session-id"]
        return got, body

    def request(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """The JSON-RPC response (result or error) to one request; SSE replies are read to the end."""
        rid = self.next_id
        self.next_id += 1
        headers, body = self.post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, timeout)
        if headers.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]
        else:
            messages = [json.loads(body)]
        answers = [m for m in messages if m.get("id") == rid]
        assert len(answers) == 1, f"{method}: no single answer in {body[:2000]}"
        return answers[0]

    def result(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        answer = self.request(method, params, timeout)
        assert "result" in answer, f"{method}: {json.dumps(answer)[:2000]}"
        return answer["result"]

    def error(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = self.request(method, params)
        assert "error" in answer, f"{method}({params}): expected an error, got {json.dumps(answer)[:2000]}"
        return answer["error"]


def get_json(url: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_run_in_sandbox_as_a_task(serve_factory: Callable[..., Serve], fake_factory: Callable[[str], Fake]) -> None:
    # Each event of a model reply comes 1.5 s late: long enough to see a task working, and to cancel a run
    # while its model call is in flight.
    fake = fake_factory("slow:1500:write:hello.txt:hi")
    serve = serve_factory(fake.url)
    token = serve.token()
    client = RawMcp(serve.mcp_url, token, tasks=True)
    assert TASKS in client.server_capabilities.get("extensions", {}), client.server_capabilities

    # create -> working
    created = client.result("tools/call", {"name": "run_in_sandbox", "arguments": {"task": "write hello.txt", "repo": "none"}})
    assert created.get("resultType") == "task", created
    task_id = created["taskId"]
    assert created["status"] == "working", created
    assert created["pollIntervalMs"] > 0 and created["ttlMs"] > 0, created
    got = client.result("tasks/get", {"taskId": task_id})
    assert got["taskId"] == task_id and got["status"] == "working", got
    assert "result" not in got, got

    # result: blocks until the run ended, and is the tool's budgeted result
    result = client.result("tasks/result", {"taskId": task_id}, timeout=180)
    assert result.get("isError") is not True, json.dumps(result)[:2000]
    run = result["structuredContent"]
    assert run["status"] == "succeeded", run
    assert [f["path"] for f in run["changed_files"]] == ["hello.txt"], run
    assert "+hi" in run["diff"], run["diff"]
    assert len(json.dumps(run)) <= BUDGET_CHARS
    assert any(c.get("type") == "text" and run["run_id"] in c.get("text", "") for c in result["content"]), result["content"]
    done = client.result("tasks/get", {"taskId": task_id})
    assert done["status"] == "completed", done
    assert done["result"]["structuredContent"] == run, "tasks/get inlines the same result"

    # the same call without tasks answers the same way, in place
    plain_client = RawMcp(serve.mcp_url, token, tasks=False)
    assert "tasks" not in plain_client.server_capabilities  # 2025-11-25's core field is not used
    plain = plain_client.result(
        "tools/call", {"name": "run_in_sandbox", "arguments": {"task": "write hello.txt", "repo": "none"}}, timeout=180
    )
    assert "taskId" not in plain and plain.get("resultType", "complete") == "complete", plain
    plain_run = plain["structuredContent"]
    assert set(plain_run) == set(run), (sorted(plain_run), sorted(run))
    assert plain_run["changed_files"] == run["changed_files"] and plain_run["diff"] == run["diff"]
    # and a client that did not declare the extension cannot use the task methods
    assert plain_client.error("tasks/get", {"taskId": task_id})["code"] == MISSING_CAPABILITY

    # cancel a second one: the run ends `cancelled`
    requests_before = len(fake.requests())
    second = client.result("tools/call", {"name": "run_in_sandbox", "arguments": {"task": "write hello.txt", "repo": "none"}})
    second_id = second["taskId"]
    # its model call is in flight at the fake (whose events come 1.5 s apart)
    wait_until(lambda: len(fake.requests()) > requests_before, 60, "the second run's model call")
    assert client.result("tasks/get", {"taskId": second_id})["status"] == "working"
    ack = client.result("tasks/cancel", {"taskId": second_id})
    assert "taskId" not in ack or ack["taskId"] == second_id, ack
    ended = client.error("tasks/result", {"taskId": second_id})
    assert "cancelled" in ended["message"], ended
    cancelled = client.result("tasks/get", {"taskId": second_id})
    assert cancelled["status"] == "cancelled", cancelled
    run_id = cancelled["statusMessage"].split()[1]
    assert run_id.startswith("run_"), cancelled
    assert get_json(f"{serve.base_url}/api/runs/{run_id}", token)["status"] == "cancelled"
    # cancelling what has ended changes nothing
    client.result("tasks/cancel", {"taskId": task_id})
    assert client.result("tasks/get", {"taskId": task_id})["status"] == "completed"

    # bad task ids: JSON-RPC invalid params naming the id, for every method
    for method in ("tasks/get", "tasks/cancel", "tasks/result"):
        err = client.error(method, {"taskId": "task_does_not_exist"})
        assert err["code"] == INVALID_PARAMS and "unknown task" in err["message"], (method, err)
        assert "task_does_not_exist" in err["message"], err
    assert client.error("tasks/result", {})["code"] == INVALID_PARAMS
    # another user's token sees no task of this user's
    serve.create_user("bob@example.com")
    bob = RawMcp(serve.mcp_url, serve.token(user="bob@example.com"), tasks=True)
    err = bob.error("tasks/get", {"taskId": task_id})
    assert err["code"] == INVALID_PARAMS and "unknown task" in err["message"], err
    bob.error("tasks/cancel", {"taskId": task_id})
