"""The real Open WebUI (PyPI `open-webui`, several GB, so outside scripts/test: run by check.sh beside
this file) against `delegate serve`'s `/mcp`, with Open WebUI's model scripted by
`ChatCompletionsFake` (an OpenAI-compatible server) and the sandbox's opencode by fake-anthropic:

- an admin configures delegate as an MCP (streamable HTTP) tool server through Open WebUI's admin
  API, with a bearer token, and Open WebUI's verification lists delegate's tools;
- a chat with that tool server turned on: the model calls `run_in_sandbox`, Open WebUI calls
  delegate, and the tool's result (status succeeded, hello.txt) reaches the model.

Runs with tests/clients' fixtures (`-p conftest`, see check.sh). OPEN_WEBUI_BIN names the
`open-webui` executable."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from chat_fake import FINAL_TEXT, MODEL_ID, ChatCompletionsFake
from conftest import Fake, Serve, base_env
from host_fakes import TASK
from support import TOOL_NAMES, TOOLS, Proc, need, wait_until

OPEN_WEBUI = Path(os.environ.get("OPEN_WEBUI_BIN") or TOOLS / "open-webui" / "bin" / "open-webui")
SERVER_ID = "delegate"
TOOL_ID = f"server:mcp:{SERVER_ID}"


def listening_port(pid: int) -> int | None:
    """The TCP port process `pid` listens on (IPv4), if any: its socket inodes matched in /proc/net/tcp."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if m := re.fullmatch(r"socket:\[(\d+)\]", target):
                    inodes.add(m.group(1))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


class OpenWebUI:
    """`open-webui serve` on loopback with a fresh data dir, its OpenAI connection the scripted model."""

    def __init__(self, model_url: str, workdir: Path):
        need(OPEN_WEBUI, "Open WebUI", "see examples/open-webui/check.sh")
        data = workdir / "open-webui-data"
        data.mkdir()
        env = base_env()
        env.update(
            DATA_DIR=str(data),
            WEBUI_SECRET_KEY=uuid.uuid4().hex,
            OPENAI_API_BASE_URL=f"{model_url}/v1",
            OPENAI_API_KEY="sk-test-scripted",
            ENABLE_OLLAMA_API="false",
            # nothing from outside: no embedding model download, no telemetry, no version check
            OFFLINE_MODE="true",
            HF_HUB_OFFLINE="1",
            RAG_EMBEDDING_MODEL_AUTO_UPDATE="false",
            BYPASS_EMBEDDING_AND_RETRIEVAL="true",
            SCARF_NO_ANALYTICS="true",
            DO_NOT_TRACK="true",
            ANONYMIZED_TELEMETRY="false",
            ENABLE_VERSION_UPDATE_CHECK="false",
            # no title, tag or follow-up side requests to the scripted model
            ENABLE_TITLE_GENERATION="false",
            ENABLE_TAGS_GENERATION="false",
            ENABLE_FOLLOW_UP_GENERATION="false",
            ENABLE_AUTOCOMPLETE_GENERATION="false",
        )
        self.proc = Proc(
            [str(OPEN_WEBUI), "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            log=workdir / "open-webui.log",
            cwd=workdir,
        )
        # Open WebUI's logging swallows uvicorn's "running on" line: the port is read from /proc once
        # the lifespan is over and it listens
        self.port = wait_until(self._bound_port, 600, f"Open WebUI to listen (log {workdir / 'open-webui.log'})")
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, read=1800))
        wait_until(self._healthy, 120, "Open WebUI's /health")

    def _bound_port(self) -> int | None:
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"open-webui exited with {self.proc.popen.returncode}:\n{self.proc.tail(40)}")
        return listening_port(self.proc.pid)

    def _healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def sign_up_admin(self) -> None:
        """The first account is the admin; its JWT authenticates the rest."""
        r = self.http.post(
            "/api/v1/auths/signup",
            json={"name": "Admin", "email": "admin@example.com", "password": "test-password-0"},
        )
        assert r.status_code == 200, f"signup: {r.status_code} {r.text[:500]}"
        self.http.headers["Authorization"] = f"Bearer {r.json()['token']}"

    def version(self) -> str:
        return self.http.get("/api/version").json().get("version", "?")

    def stop(self) -> None:
        self.http.close()
        self.proc.stop(20)


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[tuple[OpenWebUI, ChatCompletionsFake]]:
    # OPEN_WEBUI_CHECK_FOLLOW=1: the model starts the run with `wait: false` and follows it with
    # stream_session, the way to run past Open WebUI's 300 s read timeout
    if os.environ.get("OPEN_WEBUI_CHECK_FOLLOW") == "1":
        model = ChatCompletionsFake("run_in_sandbox", {"task": TASK, "repo": "none", "wait": False}, follow=True)
    else:
        model = ChatCompletionsFake("run_in_sandbox", {"task": TASK, "repo": "none"})
    ui = OpenWebUI(model.url, tmp_path)
    try:
        ui.sign_up_admin()
        yield ui, model
    finally:
        ui.stop()
        model.stop()
        (tmp_path / "model-requests.json").write_text(json.dumps(model.requests, indent=1))


def connection(serve: Serve, token: str) -> dict:
    """Open WebUI's tool server connection for delegate's /mcp, offered to every user."""
    return {
        "type": "mcp",
        "url": serve.mcp_url,
        "path": "",
        "auth_type": "bearer",
        "key": token,
        "config": {
            "enable": True,
            "access_grants": [{"principal_type": "user", "principal_id": "*", "permission": "read"}],
        },
        "info": {"id": SERVER_ID, "name": "delegate", "description": "Delegate coding tasks to sandboxed agents"},
    }


def test_open_webui_delegates_through_mcp(
    tmp_path: Path,
    fake_factory: Callable[[str], Fake],
    serve_factory: Callable[..., Serve],
    webui: tuple[OpenWebUI, ChatCompletionsFake],
) -> None:
    ui, model = webui
    # the sandbox's scripted model; OPEN_WEBUI_CHECK_SCRIPT=slow:MS:write:hello.txt:hi makes a long run
    upstream = fake_factory(os.environ.get("OPEN_WEBUI_CHECK_SCRIPT") or "write:hello.txt:hi")
    serve = serve_factory(upstream.url)
    token = serve.token()
    print(f"Open WebUI {ui.version()}")

    # the admin API: verify (Open WebUI connects and lists the tools), then save
    conn = connection(serve, token)
    r = ui.http.post("/api/v1/configs/tool_servers/verify", json=conn)
    assert r.status_code == 200, f"verify: {r.status_code} {r.text[:1000]}\n{serve.proc.tail(10)}"
    names = {spec.get("name") for spec in r.json().get("specs") or []}
    assert TOOL_NAMES <= names, f"Open WebUI lists {sorted(names)}, not all of {sorted(TOOL_NAMES)}"
    r = ui.http.post("/api/v1/configs/tool_servers", json={"TOOL_SERVER_CONNECTIONS": [conn]})
    assert r.status_code == 200, f"save tool servers: {r.status_code} {r.text[:1000]}"
    tools = ui.http.get("/api/v1/tools/").json()
    assert any(t.get("id") == TOOL_ID for t in tools), f"{TOOL_ID} not among Open WebUI's tools: {tools}"
    models = ui.http.get("/api/models").json().get("data") or []
    assert any(m.get("id") == MODEL_ID for m in models), f"the scripted model is not offered: {models}"

    # a new chat with the tool server on; Open WebUI runs it in the background and saves the answer
    user_id, assistant_id = str(uuid.uuid4()), str(uuid.uuid4())
    prompt = "Delegate the task in the brief."
    started = time.monotonic()
    r = ui.http.post(
        "/api/chat/completions",
        json={
            "model": MODEL_ID,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
            "parent_id": None,
            "id": assistant_id,
            "user_message": {"id": user_id, "role": "user", "content": prompt, "parentId": None, "childrenIds": []},
            "tool_ids": [TOOL_ID],
        },
    )
    # without a browser session the chat runs within this request (the answer is null)
    assert r.status_code == 200, f"chat: {r.status_code} {r.text[:1000]}"

    def tool_result_reached_model() -> bool:
        return model.tool_message is not None

    wait_until(tool_result_reached_model, 60, "the tool's result in a request to the model", interval=0.5)
    print(f"the chat took {time.monotonic() - started:.0f}s")
    assert model.tool_name and model.tool_name.endswith("run_in_sandbox"), model.offered
    result = json.dumps(model.tool_message)
    print(f"Open WebUI handed its model {len(model.tool_messages)} tool result(s), the last {len(result)} characters: {result[:300]}")
    assert "succeeded" in result, result[:2000]
    assert "hello.txt" in json.dumps(model.tool_messages), json.dumps(model.tool_messages)[:2000]
    if model.follow:
        assert re.search(r'"done\\?": true', result), f"the last stream_session result is not done: {result[:2000]}"

    # and the model's final answer is saved in the new chat, after the tool call
    chats = ui.http.get("/api/v1/chats/").json()
    assert len(chats) == 1, f"expected the one new chat: {chats}"

    def saved_answer() -> dict:
        chat = ui.http.get(f"/api/v1/chats/{chats[0]['id']}").json()
        message = ((chat.get("chat") or {}).get("history") or {}).get("messages", {}).get(assistant_id) or {}
        return message if message.get("done") and FINAL_TEXT in json.dumps(message) else {}

    message = wait_until(saved_answer, 60, "the model's final answer in the saved chat", interval=0.5)
    assert "run_in_sandbox" in json.dumps(message), f"the saved answer does not show the tool call: {message}"
