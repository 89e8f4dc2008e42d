"""A scripted OpenAI-compatible model for Open WebUI (`/v1/models`, `/v1/chat/completions`, plain JSON
or SSE): the first request that offers a tool whose name ends with `tool_suffix` is answered with a
call of it; the request that carries that call's result (a `tool` message) is recorded and answered
with a short text; anything else Open WebUI asks on the side (titles, tags, follow-ups) gets "OK".
Runs in a thread on 127.0.0.1:0 and records every request body."""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from host_fakes import _json, _Server, _sse

MODEL_ID = "scripted-model"
FINAL_TEXT = "The delegated run is finished."


class ChatCompletionsFake(_Server):
    def __init__(self, tool_suffix: str, arguments: dict[str, Any]):
        self.tool_suffix = tool_suffix
        self.arguments = arguments
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
            if results:
                self.tool_message = results[-1]
                message: dict[str, Any] = {"role": "assistant", "content": FINAL_TEXT}
                finish = "stop"
            elif tool and self.call_id is None:
                self.call_id = f"call_{uuid.uuid4().hex[:20]}"
                self.tool_name = tool
                message = {
                    "role": "assistant", "content": None,
                    "tool_calls": [{
                        "id": self.call_id, "type": "function",
                        "function": {"name": tool, "arguments": json.dumps(self.arguments)},
                    }],
                }  # fmt: skip
                finish = "tool_calls"
            else:
                message = {"role": "assistant", "content": "OK."}
                finish = "stop"
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
