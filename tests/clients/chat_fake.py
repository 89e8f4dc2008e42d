"""A scripted OpenAI-compatible model for Open WebUI (`/v1/models`, `/v1/chat/completions`, plain JSON
or SSE): the first request that offers a tool whose name ends with `tool_suffix` is answered with a
call of it; the request that carries that call's result (a `tool` message) is recorded and answered
with a short text; anything else Open WebUI asks on the side (titles, tags, follow-ups) gets "OK".
With `follow=True` the model instead starts the run (the arguments should say `wait: false`) and
calls `stream_session` with each reply's `next_cursor` until `done`, as delegate's instructions
tell a model to follow a long run. Runs in a thread on 127.0.0.1:0 and records every request body."""

from __future__ import annotations

import json
import re
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from host_fakes import _json, _Server, _sse

MODEL_ID = "scripted-model"
FINAL_TEXT = "The delegated run is finished."


class ChatCompletionsFake(_Server):
    def __init__(self, tool_suffix: str, arguments: dict[str, Any], *, follow: bool = False):
        self.tool_suffix = tool_suffix
        self.arguments = arguments
        self.follow = follow
        # every tool message the model was handed, in order
        self.tool_messages: list[dict[str, Any]] = []
        self.call_id: str | None = None
        self.tool_name: str | None = None
        self.tool_message: dict[str, Any] | None = None
        self.offered: list[list[str]] = []
        super().__init__()

    def handle(self, h: BaseHTTPRequestHandler, method: str, raw: bytes) -> None:
        path = h.path.split("?")[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            return _json(h, 200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "tests"}]})
        if method != "POST" or not path.endswith("/chat/completions"):
            return _json(h, 404, {"error": {"message": f"no {method} {path} here", "type": "not_found"}})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return _json(h, 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        with self.lock:
            self.requests.append(body)
            names = [(t.get("function") or {}).get("name", "") for t in body.get("tools") or []]
            self.offered.append(names)
            results = [
                m for m in body.get("messages") or []
                if m.get("role") == "tool" and self.call_id and m.get("tool_call_id") == self.call_id
            ]  # fmt: skip
            tool = next((n for n in names if n.endswith(self.tool_suffix)), None)
            stream = next((n for n in names if n.endswith("stream_session")), None)
            if results:
                self.tool_message = results[-1]
                self.tool_messages.append(results[-1])
                follow_up = self._follow_up(str(results[-1].get("content")), stream) if self.follow else None
                if follow_up:
                    message, finish = self._call(*follow_up), "tool_calls"
                else:
                    message, finish = {"role": "assistant", "content": FINAL_TEXT}, "stop"
            elif tool and self.call_id is None:
                self.tool_name = tool
                message, finish = self._call(tool, self.arguments), "tool_calls"
            else:
                message = {"role": "assistant", "content": "OK."}
                finish = "stop"
        self._send(h, body, message, finish)

    def _call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.call_id = f"call_{uuid.uuid4().hex[:20]}"
        return {
            "role": "assistant", "content": None,
            "tool_calls": [{
                "id": self.call_id, "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }],
        }  # fmt: skip

    @staticmethod
    def _follow_up(content: str, stream: str | None) -> tuple[str, dict[str, Any]] | None:
        """The next `stream_session` call after a tool result, or None once the run is done."""
        if stream is None or re.search(r'\\?"done\\?":\s*true', content):
            return None
        run = re.search(r"run_[0-9a-f]{32}", content)
        cursor = re.search(r'\\?"next_cursor\\?":\s*(\d+)', content)
        if run is None:
            return None
        return stream, {"run_id": run.group(0), "after": int(cursor.group(1)) if cursor else 0, "wait_seconds": 60}

    def _send(self, h: BaseHTTPRequestHandler, body: dict[str, Any], message: dict[str, Any], finish: str) -> None:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "created": int(time.time()), "model": body.get("model", MODEL_ID)}
        usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        if not body.get("stream"):
            return _json(
                h,
                200,
                {**base, "object": "chat.completion", "usage": usage,
                 "choices": [{"index": 0, "message": message, "finish_reason": finish}]},
            )  # fmt: skip
        delta = dict(message)
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": 0, **c} for c in delta["tool_calls"]]
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[tuple[str | None, Any]] = [
            (None, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
            (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}),
        ]
        _sse(h, events)
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
