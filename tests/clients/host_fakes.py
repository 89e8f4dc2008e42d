"""Scripted model upstreams for host agents under test: the host (Claude Code, Codex CLI) is real,
only its model is scripted.

- `ClaudeHostFake` speaks the Anthropic Messages API (SSE) to Claude Code: it answers the first
  request that offers delegate's `run_in_sandbox` with a `tool_use` of it, records the request that
  carries the tool's result, and answers that with a short text (with `read_patch`, first a call
  of Claude Code's `ReadMcpResourceTool` for the run's `delegate://runs/<id>/patch`, whose result
  it records too). Requests that are not Claude
  Code's (delegate's proxy, on behalf of the sandbox's opencode, behind the same
  ANTHROPIC_BASE_URL) are forwarded to the scripted `fake-anthropic`, so one base URL serves both.
- `ResponsesFake` speaks the OpenAI Responses API (SSE) to Codex CLI: the first turn is a
  `function_call` of delegate's tool, the next turn (which carries the tool's output) is recorded
  and answered with a message.

Both run in a thread on 127.0.0.1:0 and record every request body."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

TASK = "Write the files the task script describes."


def _sse(handler: BaseHTTPRequestHandler, events: list[tuple[str | None, dict[str, Any]]]) -> None:
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.send_header("cache-control", "no-cache")
    handler.send_header("connection", "close")
    handler.end_headers()
    for name, data in events:
        chunk = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
        handler.wfile.write(chunk.encode())
        handler.wfile.flush()
    handler.close_connection = True


def _json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Server:
    """A threaded HTTP server on 127.0.0.1:0 whose handler calls `self.handle`."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                owner.handle(self, "GET", b"")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                owner.handle(self, "POST", self.rfile.read(length))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------------
# Anthropic Messages API, for Claude Code


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [t.get("name", "") for t in body.get("tools") or []]


def _tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the conversation (Claude Code may put system messages after them)."""
    blocks: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            blocks += [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return blocks


PATCH_URI = re.compile(r"delegate://runs/[A-Za-z0-9_-]+/patch")
RESOURCE_TOOL = "ReadMcpResourceTool"
SAVED_AT = re.compile(r"Full output saved to: (\S+)")


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if isinstance(b, dict)]


def _prompt_text(body: dict[str, Any]) -> str:
    """The request's system prompt and its messages' text (Claude Code puts parts of what it tells
    the model, such as MCP servers' instructions, in messages of role `system`)."""
    texts = _texts(body.get("system"))
    for message in body.get("messages") or []:
        texts += _texts(message.get("content"))
    return "\n".join(texts)


def _server_name(body: dict[str, Any], tool: str) -> str | None:
    """The MCP server name behind `tool` (`mcp__<server>__<tool>`), as Claude Code knows it.

    Tool names carry it normalized (`plugin:delegate:delegate` becomes `plugin_delegate_delegate`);
    the prompt's "MCP Server Instructions" heads each server's instructions with its own name, so
    that is the name whose normalized form matches."""
    normalized = tool.removeprefix("mcp__").rsplit("__", 1)[0]
    headings = re.findall(r"^## (\S+)$", _prompt_text(body), flags=re.MULTILINE)
    return next((h for h in headings if re.sub(r"[^A-Za-z0-9_-]", "_", h) == normalized), None)


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(c.get("text", "") for c in content or [] if isinstance(c, dict))


def _message_events(model: str, blocks: list[dict[str, Any]], stop: str) -> list[tuple[str | None, dict[str, Any]]]:
    msg_id = f"msg_{uuid.uuid4().hex[:24]}"
    events: list[tuple[str | None, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 100, "output_tokens": 1},
                },
            },
        ),
    ]  # fmt: skip
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": block["text"]}}))
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}))
            partial = json.dumps(block["input"])
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": partial}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 20}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


class ClaudeHostFake(_Server):
    """Claude Code's scripted model; everything else goes on to `forward_to` (fake-anthropic).

    `arguments` are the `run_in_sandbox` arguments the scripted model sends. With `via_agent`, the
    main agent first hands the task to the plugin's sub-agent (`Task`/`Agent` tool with
    `subagent_type` = `via_agent`), and the sub-agent calls `run_in_sandbox`. With `read_patch`,
    the model that got the `run_in_sandbox` result then calls `ReadMcpResourceTool` with the patch
    URI the result names; its result is `tool_results["read_patch"]`, and `resource_call` the
    input it sent (`server`, `uri`), or a reason it could not. With `read_saved` too (extra `Read`
    arguments), when Claude Code saved that result to a file, the model then reads the file with
    Claude Code's `Read` tool: `tool_results["read_saved"]`."""

    def __init__(
        self,
        forward_to: str,
        arguments: dict[str, Any],
        via_agent: str | None = None,
        sandbox_silence: float = 0.0,
        read_patch: bool = False,
        read_saved: dict[str, Any] | None = None,
    ):
        self.forward_to = urlsplit(forward_to)
        self.arguments = arguments
        self.via_agent = via_agent
        self.read_patch = read_patch
        self.read_saved = read_saved
        self.resource_call: dict[str, Any] | None = None
        # With `sandbox_silence`, the sandbox's first agent turn (a forwarded request offering tools)
        # starts its answer, then says nothing but Anthropic's `ping` events for that many seconds:
        # a model thinking for long, silent to opencode and so to delegate. `silence` holds its
        # (start, end) in time.monotonic() once over.
        self.sandbox_silence = sandbox_silence
        self.silence: tuple[float, float] | None = None
        # What Claude Code sent: every request of its own, and the ones carrying tool results.
        self.host_requests: list[dict[str, Any]] = []
        self.tool_results: dict[str, dict[str, Any]] = {}
        self.tool_uses: dict[str, str] = {}  # tool_use id -> tool name
        super().__init__()

    @staticmethod
    def is_claude_code(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> bool:
        return "claude-cli" in (h.headers.get("user-agent") or "") or any(
            n.startswith("mcp__") for n in _tool_names(body)
        )

    def handle(self, h: BaseHTTPRequestHandler, method: str, raw: bytes) -> None:
        path = h.path.split("?")[0]
        if method == "POST" and path.endswith("/count_tokens"):
            return _json(h, 200, {"input_tokens": 100})
        if method != "POST" or not path.endswith("/v1/messages"):
            return _json(h, 404, {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if not self.is_claude_code(h, body):
            return self.forward(h, raw)
        with self.lock:
            self.host_requests.append(body)
        blocks, stop = self.answer(body)
        model = body.get("model", "claude-sonnet-4-5")
        if body.get("stream"):
            return _sse(h, _message_events(model, blocks, stop))
        msg = {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }  # fmt: skip
        return _json(h, 200, msg)

    def answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        names = _tool_names(body)
        results = _tool_results(body)
        with self.lock:
            for r in results:
                tool = self.tool_uses.get(r.get("tool_use_id", ""))
                if tool is not None:
                    self.tool_results[tool] = {"text": _result_text(r), "is_error": bool(r.get("is_error")), "request": body}
            if self.read_patch and "read_patch" not in self.tool_uses.values() and "run_in_sandbox" in self.tool_results:
                read = self._read_patch(body, names)
                if read is not None:
                    return read
            saved = SAVED_AT.search(self.tool_results.get("read_patch", {}).get("text", ""))
            if self.read_saved is not None and saved and "read_saved" not in self.tool_uses.values() and "Read" in names:
                use_id = f"toolu_{uuid.uuid4().hex[:20]}"
                self.tool_uses[use_id] = "read_saved"
                read = {"file_path": saved.group(1), **self.read_saved}
                return [{"type": "tool_use", "id": use_id, "name": "Read", "input": read}], "tool_use"
            if results:
                return [{"type": "text", "text": "The delegated run is finished."}], "end_turn"
            run_tool = next((n for n in names if n.endswith("__run_in_sandbox")), None)
            agent_tool = next((n for n in names if n in ("Task", "Agent")), None)
            if self.via_agent and agent_tool and "agent" not in self.tool_uses.values():
                use_id = f"toolu_{uuid.uuid4().hex[:20]}"
                self.tool_uses[use_id] = "agent"
                return [
                    {"type": "tool_use", "id": use_id, "name": agent_tool, "input": {
                        "subagent_type": self.via_agent, "description": "Delegate the task",
                        "prompt": TASK,
                    }},
                ], "tool_use"  # fmt: skip
            if run_tool and "run_in_sandbox" not in self.tool_uses.values() and (
                not self.via_agent or agent_tool is None
            ):
                use_id = f"toolu_{uuid.uuid4().hex[:20]}"
                self.tool_uses[use_id] = "run_in_sandbox"
                return [{"type": "tool_use", "id": use_id, "name": run_tool, "input": self.arguments}], "tool_use"
        return [{"type": "text", "text": "OK."}], "end_turn"

    def _read_patch(self, body: dict[str, Any], names: list[str]) -> tuple[list[dict[str, Any]], str] | None:
        """The `ReadMcpResourceTool` call for the patch the run's result names (lock held)."""
        run_tool = next((n for n in names if n.endswith("__run_in_sandbox")), None)
        uri = PATCH_URI.search(self.tool_results["run_in_sandbox"]["text"])
        server = _server_name(body, run_tool) if run_tool else None
        if RESOURCE_TOOL not in names or uri is None or server is None:
            self.resource_call = {
                "unable": f"{RESOURCE_TOOL} offered: {RESOURCE_TOOL in names}; patch URI: "
                f"{uri and uri.group(0)}; server of {run_tool}: {server}"
            }
            return None
        self.resource_call = {"server": server, "uri": uri.group(0)}
        use_id = f"toolu_{uuid.uuid4().hex[:20]}"
        self.tool_uses[use_id] = "read_patch"
        return [{"type": "tool_use", "id": use_id, "name": RESOURCE_TOOL, "input": self.resource_call}], "tool_use"

    def forward(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        """Passes a request through to the sandbox's fake upstream, streaming its answer back."""
        conn = http.client.HTTPConnection(self.forward_to.hostname, self.forward_to.port, timeout=300)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        conn.request("POST", h.path, body=raw, headers=headers)
        resp = conn.getresponse()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                h.send_header(k, v)
        h.send_header("connection", "close")
        h.end_headers()
        silence = self._take_silence(raw)
        held = b""
        while chunk := resp.read1(65536):
            if silence:
                # Up to the end of the first event (`message_start`), then the silence.
                held += chunk
                end = held.find(b"\n\n")
                if end < 0:
                    continue
                h.wfile.write(held[: end + 2])
                h.wfile.flush()
                self._stay_silent(h, silence)
                chunk, held, silence = held[end + 2 :], b"", 0.0
            h.wfile.write(chunk)
            h.wfile.flush()
        h.wfile.write(held)
        h.close_connection = True
        conn.close()

    def _take_silence(self, raw: bytes) -> float:
        try:
            agent_turn = bool(json.loads(raw or b"{}").get("tools"))
        except ValueError:
            agent_turn = False
        with self.lock:
            if not agent_turn or not self.sandbox_silence or self.silence is not None:
                return 0.0
            self.silence = (time.monotonic(), 0.0)
            return self.sandbox_silence

    def _stay_silent(self, h: BaseHTTPRequestHandler, seconds: float) -> None:
        """The scripted model's silence: only `ping` events (as the real API sends), every 15 s, so
        opencode's 5-minute chunk timeout is not what ends it."""
        start = time.monotonic()
        while (left := start + seconds - time.monotonic()) > 0:
            time.sleep(min(15.0, left))
            h.wfile.write(b'event: ping\ndata: {"type": "ping"}\n\n')
            h.wfile.flush()
        with self.lock:
            self.silence = (start, time.monotonic())


# ---------------------------------------------------------------------------------------------------
# OpenAI Responses API, for Codex CLI


class ResponsesFake(_Server):
    """Codex CLI's scripted model: a function call of the tool whose name ends with `tool_suffix`,
    then, once its output comes back, a message. Records every request."""

    def __init__(self, tool_suffix: str, arguments: dict[str, Any]):
        self.tool_suffix = tool_suffix
        self.arguments = arguments
        self.call_id: str | None = None
        self.tool_output: dict[str, Any] | None = None
        self.offered: list[list[str]] = []
        super().__init__()

    def handle(self, h: BaseHTTPRequestHandler, method: str, raw: bytes) -> None:
        path = h.path.split("?")[0]
        if method == "GET" and path.endswith("/models"):
            return _json(h, 200, {"object": "list", "data": [], "models": []})
        if method != "POST" or not path.endswith("/responses"):
            return _json(h, 404, {"error": {"message": f"no {method} {path} here", "type": "not_found"}})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with self.lock:
            self.requests.append(body)
            # Codex groups an MCP server's tools in a `namespace` tool (`mcp__delegate`); a call
            # names the namespace and the tool.
            names: list[str] = []
            where: dict[str, tuple[str | None, str]] = {}
            for t in body.get("tools") or []:
                if t.get("type") == "namespace":
                    for sub in t.get("tools") or []:
                        full = f"{t.get('name')}__{sub.get('name')}"
                        names.append(full)
                        where[full] = (t.get("name"), sub.get("name", ""))
                else:
                    name = t.get("name") or (t.get("function") or {}).get("name") or ""
                    names.append(name)
                    where[name] = (None, name)
            self.offered.append(names)
            outputs = [
                i for i in body.get("input") or []
                if isinstance(i, dict) and i.get("type") == "function_call_output" and i.get("call_id") == self.call_id
            ]  # fmt: skip
            tool = next((n for n in names if n.endswith(self.tool_suffix)), None)
            if outputs:
                self.tool_output = outputs[-1]
                item = self._message("The delegated run is finished.")
            elif tool and self.call_id is None:
                self.call_id = f"call_{uuid.uuid4().hex[:20]}"
                namespace, name = where[tool]
                item = {
                    "type": "function_call", "id": f"fc_{uuid.uuid4().hex[:20]}", "call_id": self.call_id,
                    "name": name, "arguments": json.dumps(self.arguments), "status": "completed",
                }  # fmt: skip
                if namespace:
                    item["namespace"] = namespace
            else:
                item = self._message("OK.")
        resp_id = f"resp_{uuid.uuid4().hex[:20]}"
        base = {"id": resp_id, "object": "response", "model": body.get("model", "gpt-test"), "output": []}
        events: list[tuple[str | None, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "response": {**base, "status": "in_progress"}}),
            ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}),
            ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
            (
                "response.completed",
                {
                    "type": "response.completed",
                    "response": {
                        **base, "status": "completed", "output": [item],
                        "usage": {
                            "input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": 120,
                        },
                    },
                },
            ),
        ]  # fmt: skip
        return _sse(h, events)

    @staticmethod
    def _message(text: str) -> dict[str, Any]:
        return {
            "type": "message", "id": f"msg_{uuid.uuid4().hex[:20]}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }  # fmt: skip
