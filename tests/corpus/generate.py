#!/usr/bin/env python3
"""Writes the bad-input corpus (tests/corpus/*.jsonl): inputs delegate must answer with a clear
error, never a panic, a 5xx or lost state. server/tests/bad_input.rs replays every line.

The files are committed; rerun this (`python3 tests/corpus/generate.py`, needs git) after adding
cases, and commit both. Output is deterministic.

Placeholders the replaying test fills in: {ws} (a workspace slug), {sandbox} (a paused warm
sandbox), {run} (a finished run), {user} (the owner's user id), {session} (a session cookie).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def write(name: str, entries: list[dict[str, Any]]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{name}: {len(entries)}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# REST: bodies, ids in paths, query strings, headers and cookies.

# Bodies wrong for every JSON endpoint: not JSON, not an object, too deep, broken text.
SHAPELESS = [
    "",
    "{",
    "}",
    "null",
    "[]",
    "[{}]",
    '"a string"',
    "123",
    "-1",
    "true",
    "{\"a\":",
    "{'single': 'quotes'}",
    "{\"x\": NaN}",
    "{\"x\": Infinity}",
    "{\"x\": 1e999999}",
    "{\"\\ud800\": 1}",
    "{\"x\": \"\\ud800\"}",
    "[" * 300 + "]" * 300,
    "{\"a\":" * 300 + "1" + "}" * 300,
    "{\"a\":1,\"a\":2}",
    "{\"x\":1} trailing",
    "\u0000",
    "\ufeff{}",
]
INVALID_UTF8 = [b"\xff\xfe\xfd", b"{\"task\":\"\xc3\x28\"}", b"{\"name\":\"\xed\xa0\x80\"}"]

JSON_ENDPOINTS = [
    ("POST", "/api/runs?workspace={ws}"),
    ("POST", "/api/sandboxes?workspace={ws}"),
    ("POST", "/api/tokens"),
    ("POST", "/api/workspaces"),
    ("POST", "/api/workspaces/{ws}/members"),
    ("PATCH", "/api/workspaces/{ws}/members/{user}"),
    ("PUT", "/api/workspaces/{ws}/egress"),
    ("PUT", "/api/workspaces/{ws}/secrets/CORPUS_SECRET"),
    ("POST", "/api/workspaces/{ws}/invites"),
]
UNAUTHENTICATED_JSON = [
    ("POST", "/api/auth/signup"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/agents/register"),
]

# Well-formed JSON, wrong fields: per endpoint.
FIELDS: dict[tuple[str, str], list[Any]] = {
    ("POST", "/api/runs?workspace={ws}"): [
        {},
        {"task": None},
        {"task": 5},
        {"task": ["a"]},
        {"task": ""},
        {"task": "   "},
        {"task": "x", "unknown": 1},
        {"task": "x", "timeout_seconds": -1},
        {"task": "x", "timeout_seconds": "soon"},
        {"task": "x", "timeout_seconds": 1.5},
        {"task": "x", "timeout_seconds": 18446744073709551616},
        {"task": "x", "files": ["a.txt"]},
        {"task": "x", "files": {"a.txt": 1}},
        {"task": "x", "files": {"../escape": "a"}},
        {"task": "x", "files": {"/etc/passwd": "a"}},
        {"task": "x", "files": {"a/../../b": "a"}},
        {"task": "x", "files": {"": "a"}},
        {"task": "x", "files": {"a\u0000b": "a"}},
        {"task": "x", "files": {".git/hooks/pre-commit": "#!/bin/sh"}},
        {"task": "x", "sandbox_id": 7},
        {"task": "x", "sandbox_id": "sbx_doesnotexist"},
        {"task": "x", "sandbox_id": "../../etc"},
        {"task": "x", "sandbox_id": "{sandbox}", "files": {"a": "b"}},
        {"task": "x", "sandbox_id": "{sandbox}", "network": "open"},
        {"task": "x", "model": 5},
        {"task": "x", "model": ""},
        {"task": "x", "agent": {"a": 1}},
        {"task": "x", "wait": "no"},
        {"task": "x", "continue_session": "yes"},
        {"task": "x", "network": "no-such-policy"},
        {"task": "x", "network": 1},
        {"task": "x", "snapshot": "snp_doesnotexist"},
        {"task": "x", "snapshot": 5},
        {"task": "x", "repo": "file:///etc"},
        {"task": "x", "repo": "ftp://127.0.0.1/x.git"},
        {"task": "x", "repo": "https://user:hunter2@127.0.0.1/x.git"},
        {"task": "x", "repo": "https://127.0.0.1/x.git"},
        {"task": "x", "repo": "https://[::1]/x.git"},
        {"task": "x", "repo": "https://169.254.169.254/x.git"},
        {"task": "x", "repo": "https://"},
        {"task": "x", "repo": "not a url"},
        {"task": "x", "repo": "/tmp"},
        {"task": "x", "repo": 5},
        {"task": "x", "ref": 5},
        {"task": "x", "ref": "--upload-pack=touch /tmp/pwned", "repo": "https://127.0.0.1/x.git"},
        {"task": "x", "apply": "sideways"},
        {"task": "x", "apply": 1},
        {"task": "x", "env": ["A=1"]},
        {"task": "x", "env": {"A": 1}},
        {"task": "x", "env": {"": "x"}},
        {"task": "x", "env": {"A=B": "x"}},
        {"task": "x", "env": {"A\u0000": "x"}},
        {"task": "x", "env": {"A": "x\u0000y"}},
        {"task": "x", "secrets": "NAME"},
        {"task": "x", "secrets": [5]},
        {"task": "x", "secrets": ["NO_SUCH_SECRET"]},
        {"task": "x", "secrets": ["../x"]},
        {"task": "x", "setup": 5},
        {"task": "x", "setup": ["make"]},
        {"task": "x", "image": 5},
        {"task": "x", "image": "no-such-image:latest"},
        {"task": "x", "image": "--privileged"},
        {"task": "x", "workspace": "no-such-workspace"},
        {"task": "x", "workspace": 5},
        {"task": "\u0000"},
    ],
    ("POST", "/api/sandboxes?workspace={ws}"): [
        {"name": 5},
        {"name": ""},
        {"name": "\u0007bell"},
        {"name": "\n"},
        {"name": "x" * 300},
        {"name": "ok", "unknown": True},
        {"idle_timeout_seconds": "x"},
        {"idle_timeout_seconds": -5},
        {"files": {"../x": "a"}},
        {"files": {"/abs": "a"}},
        {"files": "a"},
        {"network": "no-such-policy"},
        {"snapshot": "snp_doesnotexist"},
        {"repo": "file:///etc"},
        {"repo": "https://user:pw@127.0.0.1/x.git"},
        {"repo": "https://10.0.0.1/x.git"},
        {"env": {"A": ["b"]}},
        {"secrets": ["NO_SUCH_SECRET"]},
        {"image": {"name": "x"}},
        {"workspace": "no-such-workspace"},
    ],
    ("POST", "/api/tokens"): [
        {"name": 5},
        {"name": "x" * 5000},
        {"expires_in_days": -1},
        {"expires_in_days": "soon"},
        {"unknown": 1},
    ],
    ("POST", "/api/workspaces"): [
        {},
        {"name": 5},
        {"name": ""},
        {"name": "x" * 5000},
        {"name": "ok", "slug": "../../x"},
        {"name": "ok", "unknown": 1},
    ],
    ("POST", "/api/workspaces/{ws}/members"): [
        {},
        {"email": 5},
        {"email": "not-an-email"},
        {"email": "a@b.c", "role": "emperor"},
        {"email": "a@b.c", "role": 1},
        {"email": "x" * 5000 + "@example.com", "role": "developer"},
        {"email": "a@b.c", "role": "developer", "unknown": 1},
    ],
    ("PATCH", "/api/workspaces/{ws}/members/{user}"): [
        {},
        {"role": "emperor"},
        {"role": 5},
        {"role": None},
        {"role": "developer", "unknown": 1},
    ],
    ("PUT", "/api/workspaces/{ws}/egress"): [
        {},
        {"allowed": "open"},
        {"allowed": [5]},
        {"allowed": ["no-such-policy"]},
        {"allowed": ["none"], "default": "no-such-policy"},
        {"allowed": ["none"], "default": "open"},
        {"allowed": ["none"], "default": 5},
        {"allowed": ["none"], "default": "none", "unknown": 1},
    ],
    ("PUT", "/api/workspaces/{ws}/secrets/CORPUS_SECRET"): [
        {},
        {"value": 5},
        {"value": None},
        {"value": ["a"]},
        {"value": "x" * 40000},
        {"value": "v", "unknown": 1},
    ],
    ("POST", "/api/workspaces/{ws}/invites"): [
        {"role": "owner"},
        {"role": "emperor"},
        {"role": 5},
        {"role": "developer", "expires_in_days": -1},
        {"role": "developer", "unknown": 1},
    ],
    ("POST", "/api/auth/signup"): [
        {},
        {"email": "a@b.c"},
        {"email": 5, "password": "correct horse battery"},
        {"email": "not-an-email", "password": "correct horse battery"},
        {"email": "a@b.c", "password": "short"},
        {"email": "a@b.c", "password": 5},
        {"email": "a@b.c", "password": "x" * 5000},
        {"email": "a@b.c", "password": "correct horse battery", "invite": "inv_doesnotexist"},
        {"email": "a@b.c", "password": "correct horse battery", "unknown": 1},
    ],
    ("POST", "/api/auth/login"): [
        {},
        {"email": "nobody@example.com"},
        {"email": "nobody@example.com", "password": "correct horse battery"},
        {"email": 5, "password": "x"},
        {"email": "nobody@example.com", "password": "x" * 5000},
        {"email": "nobody@example.com", "password": "pw", "unknown": 1},
    ],
    ("POST", "/api/agents/register"): [
        {},
        {"code": 5},
        {"code": "not-a-code"},
        {"code": "x" * 5000},
        {"code": "abc", "name": "../x"},
        {"code": "abc", "unknown": 1},
    ],
}

BAD_IDS = [
    "doesnotexist",
    "run_doesnotexist",
    "sbx_doesnotexist",
    "..",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "%FF%FE",
    "x" * 5000,
    "%E2%80%AE",
    "run_%0Aheader",
]
ID_ROUTES = [
    ("GET", "/api/runs/{id}"),
    ("GET", "/api/runs/{id}/summary"),
    ("POST", "/api/runs/{id}/cancel"),
    ("GET", "/api/runs/{id}/patch"),
    ("GET", "/api/runs/{id}/bundle"),
    ("GET", "/api/runs/{id}/events"),
    ("GET", "/api/sandboxes/{id}"),
    ("DELETE", "/api/sandboxes/{id}"),
    ("POST", "/api/sandboxes/{id}/pause"),
    ("POST", "/api/sandboxes/{id}/resume"),
    ("POST", "/api/sandboxes/{id}/open"),
    ("DELETE", "/api/tokens/{id}"),
    ("DELETE", "/api/auth/sessions/{id}"),
    ("GET", "/api/workspaces/{id}"),
    ("GET", "/api/workspaces/{id}/members"),
    ("DELETE", "/api/workspaces/{ws}/members/{id}"),
    ("DELETE", "/api/workspaces/{ws}/secrets/{id}"),
    ("DELETE", "/api/workspaces/{ws}/invites/{id}"),
]
QUERIES = [
    "/api/runs/{run}/events?after=-1",
    "/api/runs/{run}/events?after=abc",
    "/api/runs/{run}/events?after=18446744073709551616",
    "/api/runs/{run}/events?limit=-5",
    "/api/runs/{run}/events?limit=abc",
    "/api/runs/{run}/events?unknown=1",
    "/api/runs?workspace=no-such-workspace",
    "/api/runs?limit=x",
    "/api/runs?status=bogus",
    "/api/runs?cursor=garbage",
    "/api/runs?workspace=%00",
    "/api/runs/summaries?workspace=no-such-workspace",
    "/api/runs/summaries?ids=" + ",".join(["run_x"] * 1000),
    "/api/sandboxes?workspace=no-such-workspace",
    "/api/sandboxes?status=bogus",
    "/api/sandboxes?limit=abc",
    "/api/usage?workspace=no-such-workspace",
    "/api/usage?since=yesterday",
    "/api/usage?since=-99999999999999999999",
    "/api/auth/oidc/callback",
    "/api/auth/oidc/callback?code=x&state=forged",
    "/api/auth/oidc/callback?error=access_denied",
    "/api/auth/github/callback?code=x",
    "/api/auth/github/callback?code=x&state=" + "s" * 5000,
]

AUTH_HEADERS = [
    "",
    "Bearer",
    "Bearer ",
    "Bearer  dlg_x",
    "bearer dlg_doesnotexist",
    "Bearer dlg_" + "x" * 5000,
    "Bearer dsb_doesnotexist",
    "Basic Zm9vOmJhcg==",
    "Basic !!!",
    "Token dlg_x",
    "Bearer dlg_x, Bearer dlg_y",
    "Bearer \u00e9t\u00e9",
]
COOKIES = [
    "delegate_session=",
    "delegate_session=garbage",
    "delegate_session=" + "a" * 5000,
    "__Host-delegate_session=garbage",
    "__Host-delegate_session=; delegate_session=x",
    "delegate_session=a; delegate_session=b",
    "=;=;=",
    ";;;;",
    "delegate_sso=forged",
]
AUTHED_PATHS = [
    ("GET", "/api/auth/me"),
    ("GET", "/api/runs"),
    ("POST", "/api/runs?workspace={ws}"),
    ("GET", "/api/workspaces"),
]


def rest() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for method, path in JSON_ENDPOINTS + UNAUTHENTICATED_JSON:
        auth = "none" if (method, path) in UNAUTHENTICATED_JSON else "owner"
        for body in SHAPELESS:
            out.append({"method": method, "path": path, "auth": auth, "body": body})
        for raw in INVALID_UTF8:
            out.append({"method": method, "path": path, "auth": auth, "body_b64": b64(raw)})
        out.append(
            {
                "method": method,
                "path": path,
                "auth": auth,
                "body": "{}",
                "headers": {"content-type": "text/plain"},
            }
        )
        for fields in FIELDS.get((method, path), []):
            out.append({"method": method, "path": path, "auth": auth, "body": json.dumps(fields)})
    # A body over every limit, made by the test (kept out of the file).
    for method, path in JSON_ENDPOINTS:
        out.append({"method": method, "path": path, "auth": "owner", "body_repeat": ["a", 40 * 1024 * 1024]})
    for method, route in ID_ROUTES:
        for bad in BAD_IDS:
            out.append({"method": method, "path": route.replace("{id}", bad), "auth": "owner"})
    for path in QUERIES:
        out.append({"method": "GET", "path": path, "auth": "owner"})
    for method, path in AUTHED_PATHS:
        for value in AUTH_HEADERS:
            out.append({"method": method, "path": path, "auth": "none", "headers": {"authorization": value}, "body": "{}"})
        for value in COOKIES:
            out.append({"method": method, "path": path, "auth": "none", "headers": {"cookie": value}, "body": "{}"})
    # Cookie-authenticated mutations without this server's Origin (CSRF).
    for origin in [None, "http://evil.example", "null", "http://127.0.0.1:1"]:
        headers = {"cookie": "delegate_session={session}", "content-type": "application/json"}
        if origin:
            headers["origin"] = origin
        for method, path in [("POST", "/api/workspaces"), ("POST", "/api/tokens"), ("POST", "/api/auth/logout")]:
            out.append({"method": method, "path": path, "auth": "none", "headers": headers, "body": "{\"name\":\"csrf\"}"})
    # Bodies where none belongs, and methods no route has.
    for method, path in [("PUT", "/api/runs"), ("DELETE", "/api/workspaces"), ("PATCH", "/api/sandboxes"), ("POST", "/api/usage")]:
        out.append({"method": method, "path": path, "auth": "owner", "body": "{}"})
    # Snapshots: the query string.
    for q in [
        "",
        "?workspace={ws}",
        "?workspace={ws}&repo=r&dirty=maybe",
        "?workspace={ws}&repo=r&unknown=1",
        "?workspace=no-such-workspace&repo=r",
    ]:
        out.append({"method": "POST", "path": "/api/snapshots" + q, "auth": "owner", "body": "x", "headers": {"content-type": "application/x-git-bundle"}})
    return out


# ---------------------------------------------------------------------------------------------
# MCP: tool arguments, and JSON-RPC that is not.

TOOLS: dict[str, list[Any]] = {
    "run_in_sandbox": FIELDS[("POST", "/api/runs?workspace={ws}")] + [
        {"task": "x", "detail": 5},
        {"task": "x", "git_ref": "main"},
    ],
    "create_sandbox": FIELDS[("POST", "/api/sandboxes?workspace={ws}")],
    "stream_session": [
        {},
        {"run_id": 5},
        {"run_id": "run_doesnotexist"},
        {"run_id": "{run}", "after": -1},
        {"run_id": "{run}", "after": "x"},
        {"run_id": "{run}", "wait_seconds": -1},
        {"run_id": "{run}", "wait_seconds": "x"},
        {"sandbox_id": "sbx_doesnotexist"},
        {"run_id": "{run}", "sandbox_id": "sbx_doesnotexist"},
        {"run_id": "{run}", "unknown": 1},
    ],
    "list_sandboxes": [
        {"workspace": 5},
        {"workspace": "no-such-workspace"},
        {"unknown": 1},
    ],
    "delete_sandbox": [
        {},
        {"sandbox_id": 5},
        {"sandbox_id": "sbx_doesnotexist"},
        {"sandbox_id": "../x"},
        {"sandbox_id": "{sandbox}", "unknown": 1},
    ],
    "cancel_run": [
        {},
        {"run_id": None},
        {"run_id": "run_doesnotexist"},
        {"run_id": ["{run}"]},
        {"run_id": "{run}", "unknown": 1},
    ],
    "apply_changes": [
        {},
        {"run_id": 5},
        {"run_id": "run_doesnotexist"},
        {"run_id": "{run}", "to": "elsewhere"},
        {"run_id": "{run}", "to": 5},
        {"run_id": "{run}", "unknown": 1},
    ],
    "no_such_tool": [{}],
}

RPC = [
    "",
    "{",
    "[]",
    "null",
    "{\"jsonrpc\":\"2.0\"}",
    "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"tools/list\"}",
    "{\"jsonrpc\":\"2.0\",\"id\":{\"a\":1},\"method\":\"tools/list\"}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"no/such/method\"}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":[]}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":5}}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"run_in_sandbox\",\"arguments\":\"task\"}}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"resources/read\",\"params\":{\"uri\":\"delegate://runs/run_doesnotexist/patch\"}}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"resources/read\",\"params\":{\"uri\":\"file:///etc/passwd\"}}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"resources/read\",\"params\":{\"uri\":\"delegate://runs/../../x/patch\"}}",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"resources/read\",\"params\":{}}",
    "[" * 300 + "]" * 300,
]


def mcp() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool, cases in TOOLS.items():
        for args in cases:
            out.append({"tool": tool, "arguments": args})
    for body in RPC:
        out.append({"raw": body})
    return out


# ---------------------------------------------------------------------------------------------
# Tunnel frames: [u32 header length][JSON header][payload].


def frame(header: bytes, payload: bytes = b"", declared: int | None = None) -> bytes:
    n = len(header) if declared is None else declared
    return n.to_bytes(4, "big") + header + payload


def frames() -> list[dict[str, Any]]:
    raw: list[bytes] = [b"", b"\x00", b"\x00\x00", b"\x00\x00\x00"]
    raw += [frame(b"{}", declared=d) for d in (0, 3, 100, 8 * 1024 + 1, 0xFFFFFFFF)]
    headers = [
        b"",
        b"{",
        b"null",
        b"[]",
        b"{}",
        b"{\"type\":5}",
        b"{\"type\":\"nope\"}",
        b"{\"type\":\"data\"}",
        b"{\"type\":\"data\",\"stream\":-1}",
        b"{\"type\":\"data\",\"stream\":\"1\"}",
        b"{\"type\":\"data\",\"stream\":18446744073709551616}",
        b"{\"type\":\"open\",\"stream\":1,\"extra\":true}",
        b"{\"type\":\"hello\"}",
        b"{\"type\":\"hello\",\"version\":\"1\",\"agent\":\"a\"}",
        b"{\"type\":\"hello\",\"version\":-1,\"agent\":\"a\"}",
        b"{\"type\":\"credit\",\"stream\":1,\"bytes\":-1}",
        b"{\"type\":\"credit\",\"stream\":1,\"bytes\":4294967296}",
        b"{\"type\":\"reset\",\"stream\":1}",
        b"{\"type\":\"goodbye\",\"code\":5,\"reason\":\"x\"}",
        b"{\"type\":\"ping\",\"nonce\":1.5}",
        b"{\"type\":\"pong\"}",
        b"{\"type\":\"welcome\",\"sandbox_id\":null}",
        b"\xff\xfe{\"type\":\"ping\",\"nonce\":1}",
        b"{\"type\":\"ping\",\"nonce\":1,\"type\":\"pong\"}",
        b"[" * 300 + b"]" * 300,
    ]
    raw += [frame(h) for h in headers]
    # Payload rules: data needs 1..=256 KiB (version 2's chunk, the largest of any version; a
    # version 1 link refuses more than 16 KiB itself); nothing else carries one.
    raw.append(frame(b"{\"type\":\"data\",\"stream\":1}"))
    raw.append(frame(b"{\"type\":\"data\",\"stream\":1}", b"x" * (256 * 1024 + 1)))
    for kind in [b"{\"type\":\"open\",\"stream\":1}", b"{\"type\":\"ping\",\"nonce\":1}", b"{\"type\":\"end\",\"stream\":1}"]:
        raw.append(frame(kind, b"payload"))
    raw.append(frame(b"{\"type\":\"ping\",\"nonce\":1}", declared=len(b"{\"type\":\"ping\",\"nonce\":1}") + 1))
    raw.append(b"\xff" * 64)
    raw.append(frame(b" " * 9000))
    return [{"hex": r.hex()} for r in raw]


# ---------------------------------------------------------------------------------------------
# opencode event lines (`opencode run --format json` stdout).


def opencode() -> list[dict[str, Any]]:
    lines = [
        "",
        "   ",
        "not json",
        "INFO  2026-11-30 service=bus started",
        "{",
        "[]",
        "[{\"type\":\"text\"}]",
        "\"text\"",
        "42",
        "null",
        "true",
        "{}",
        "{\"type\":5}",
        "{\"type\":null}",
        "{\"type\":[\"text\"]}",
        "{\"part\":{}}",
        "{\"type\":\"text\"}",
        "{\"type\":\"text\",\"part\":5}",
        "{\"type\":\"text\",\"part\":[]}",
        "{\"type\":\"text\",\"part\":{\"text\":5}}",
        "{\"type\":\"text\",\"part\":{\"text\":null}}",
        "{\"type\":\"tool_use\",\"part\":{}}",
        "{\"type\":\"tool_use\",\"part\":{\"tool\":5,\"state\":\"x\"}}",
        "{\"type\":\"tool_use\",\"part\":{\"tool\":\"bash\",\"state\":{\"status\":5,\"input\":[]}}}",
        "{\"type\":\"step_finish\",\"part\":{\"tokens\":\"many\",\"cost\":\"free\"}}",
        "{\"type\":\"step_finish\",\"part\":{\"tokens\":{\"input\":-1,\"output\":1e400},\"cost\":-5}}",
        "{\"type\":\"step_finish\",\"part\":{\"tokens\":{\"input\":18446744073709551616},\"cost\":1e308}}",
        "{\"type\":\"step_finish\",\"part\":{\"tokens\":{\"cache\":{\"read\":\"x\"}}}}",
        "{\"type\":\"error\"}",
        "{\"type\":\"error\",\"error\":5}",
        "{\"type\":\"error\",\"error\":{\"name\":5,\"data\":\"x\"}}",
        "{\"type\":\"error\",\"error\":{\"name\":\"APIError\",\"data\":{\"statusCode\":\"500\",\"message\":[]}}}",
        "{\"type\":\"text\",\"timestamp\":\"yesterday\",\"part\":{\"text\":\"a\"}}",
        "{\"type\":\"text\",\"timestamp\":-1,\"part\":{\"text\":\"a\"}}",
        "{\"type\":\"text\",\"timestamp\":1e300,\"part\":{\"text\":\"a\"}}",
        "{\"type\":\"text\",\"sessionID\":5,\"part\":{\"text\":\"a\"}}",
        "{\"type\":\"text\",\"part\":{\"text\":\"\\ud800\"}}",
        "{\"type\":\"text\",\"part\":{\"text\":\"a\"}} trailing",
        "{\"type\":\"text\",\"part\":{\"text\":\"a\"}}{\"type\":\"text\"}",
        "{\"type\":\"" + "t" * 10000 + "\"}",
        "{\"type\":\"text\",\"part\":{\"text\":\"" + "a" * 20000 + "\"}}",
        "{\"a\":" * 300 + "1" + "}" * 300,
        "\ufeff{\"type\":\"text\"}",
        "{\"type\":\"text\",\"type\":\"error\"}",
        "{\"type\":\"reasoning\",\"part\":{\"text\":{\"nested\":true}}}",
        "{\"type\":\"step_start\",\"part\":null}",
        "{\"type\":\"\\u0000\"}",
        "\u0000\u0000\u0000",
        "{\"type\":\"text\",\"part\":{\"text\":\"a\"},\"sessionID\":\"" + "s" * 10000 + "\"}",
    ]
    return [{"line": line} for line in lines]


# ---------------------------------------------------------------------------------------------
# Tar archives, as Docker's archive API hands delegate a sandbox's change (one file:
# `change.bundle`).


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type = kind
    i.size = size
    i.linkname = link
    i.mtime = 0
    return i


def tars() -> list[dict[str, Any]]:
    good = tar_of([(info("change.bundle", size=5), b"hello")])
    cases: list[bytes] = [
        b"",
        b"not a tar",
        b"\x00" * 1024,
        good[:100],
        good[:512],
        good[:514],
        tar_of([(info("change.bundle", size=5), b"hello"), (info("extra", size=1), b"x")]),
        tar_of([(info("change.bundle", size=5), b"hello"), (info("change.bundle", size=5), b"again")]),
        tar_of([]),
        tar_of([(info("other", size=5), b"hello")]),
        tar_of([(info("./change.bundle", size=5), b"hello")]),
        tar_of([(info("../change.bundle", size=5), b"hello")]),
        tar_of([(info("/change.bundle", size=5), b"hello")]),
        tar_of([(info("change.bundle/x", size=5), b"hello")]),
        tar_of([(info("change.bundle", tarfile.DIRTYPE), None)]),
        tar_of([(info("change.bundle", tarfile.SYMTYPE, link="/etc/passwd"), None)]),
        tar_of([(info("change.bundle", tarfile.LNKTYPE, link="/etc/passwd"), None)]),
        tar_of([(info("change.bundle", tarfile.FIFOTYPE), None)]),
        tar_of([(info("change.bundle", tarfile.CHRTYPE), None)]),
        tar_of([(info("change.bundle", tarfile.BLKTYPE), None)]),
        tar_of([(info("x" * 300, size=5), b"hello")]),
        tar_of([(info("change.bundle", size=5), b"hello")], tarfile.PAX_FORMAT)[:700],
        tar_of([(info("change.bundle", tarfile.SYMTYPE, link="x" * 300), None)]),
    ]
    # A header whose checksum no longer matches.
    bad_sum = bytearray(good)
    bad_sum[0] ^= 0x20
    cases.append(bytes(bad_sum))
    # A size field that is not octal, and one far past the data.
    bad_size = bytearray(good)
    bad_size[124:136] = b"zzzzzzzzzzz\x00"
    cases.append(bytes(bad_size))
    big = bytearray(good)
    big[124:136] = b"77777777777\x00"
    cases.append(bytes(big))
    # The sandbox's change, over the cap the test sets (1 KiB).
    cases.append(tar_of([(info("change.bundle", size=2000), b"z" * 2000)]))
    return [{"b64": b64(c)} for c in cases]


# ---------------------------------------------------------------------------------------------
# Git bundles, as a caller's client uploads a snapshot (POST /api/snapshots).


def git(cwd: Path, *args: str) -> bytes:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "corpus",
        "GIT_AUTHOR_EMAIL": "corpus@example.com",
        "GIT_COMMITTER_NAME": "corpus",
        "GIT_COMMITTER_EMAIL": "corpus@example.com",
        "GIT_AUTHOR_DATE": "1700000000 +0000",
        "GIT_COMMITTER_DATE": "1700000000 +0000",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True).stdout


def bundles() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        repo = Path(d) / "r"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "a.txt").write_text("one\n")
        git(repo, "add", "a.txt")
        git(repo, "commit", "-q", "-m", "one")
        first = git(repo, "rev-parse", "HEAD").decode().strip()
        (repo / "a.txt").write_text("two\n")
        git(repo, "commit", "-q", "-am", "two")
        good = git(repo, "bundle", "create", "-", "main")
        # Needs the first commit, which the server does not have.
        thin = git(repo, "bundle", "create", "-", f"{first}..main")
        git(repo, "tag", "-a", "-m", "t", "v1")
        tag_only = git(repo, "bundle", "create", "-", "v1")
        header_end = good.index(b"\n\n") + 2
        header, pack = good[:header_end], good[header_end:]
        zero = "0" * 40
        cases = [
            b"",
            b"x",
            b"# v2 git bundle\n",
            b"# v2 git bundle\n\n",
            b"# v3 git bundle\n@object-format=sha1\n\n",
            b"# v3 git bundle\n@object-format=sha256\n" + header[16:],
            b"# v3 git bundle\n@filter=blob:none\n" + header[16:] + pack,
            b"# v9 git bundle\n" + header[16:] + pack,
            b"# v2 git bundle\nnot-a-sha refs/heads/main\n\n" + pack,
            f"# v2 git bundle\n{zero} refs/heads/main\n\n".encode() + pack,
            f"# v2 git bundle\n-{zero} missing prerequisite\n".encode() + header[16:] + pack,
            header,
            header + pack[:20],
            header + pack[:-20],
            header + pack[:-1] + bytes([pack[-1] ^ 0xFF]),
            header + b"PACK" + b"\x00" * 40,
            header + b"\x00" * 200,
            header.replace(b"refs/heads/main", b"refs/heads/../../etc") + pack,
            header.replace(b"refs/heads/main", b"HEAD\x00evil") + pack,
            b"# v2 git bundle\n" + b"a" * 10000 + "\n\n".encode() + pack,
            thin,
            tag_only,
            good[: len(good) // 2],
            b"\xff" * 4096,
            b"PACK\x00\x00\x00\x02\x00\x00\x00\x01",
        ]
    return [{"b64": b64(c)} for c in cases]


def main() -> None:
    write("rest.jsonl", rest())
    write("mcp.jsonl", mcp())
    write("frames.jsonl", frames())
    write("opencode.jsonl", opencode())
    write("tar.jsonl", tars())
    write("bundles.jsonl", bundles())


if __name__ == "__main__":
    main()
