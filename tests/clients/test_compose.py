"""compose.yml end to end: the server image built offline (scripts/server-image --offline, with the
debug binary), composed on the private test engine on an internal user-defined network, runs a task
on the docker backend: real opencode in the sandbox image, the scripted fake Anthropic API (testkit)
as the model, in a container on the same network. Both ways sandboxes reach the proxy: `none` (a unix
socket in the data dir, bound in by the engine at the same path) and a named network
(DELEGATE_DOCKER_NETWORK=NAME: sandboxes join the compose network and reach the server by name).

The engine runs with --bridge=none --iptables=false (scripts/dockerd) and the host does not forward
IPv4, so a user-defined bridge network marked `internal` is one with no way out: containers reach
each other and nothing else. The network publishes no ports, so the test reaches the server at its
address on that bridge, which is local to this machine."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support import DELEGATE, HELLO_ADDED, FAKE_ANTHROPIC, REQUIRE_ALL, ROOT, remove_tree, wait_until

SANDBOX_IMAGE = os.environ.get("DELEGATE_SANDBOX_IMAGE", "delegate-sandbox:1.18.33")
SERVER_IMAGE = "delegate-server:helm-compose-test"
BASE_IMAGE = "delegate-sandbox-base:bookworm"
OVERRIDE = Path(__file__).with_name("compose.test.yml")


def skip_or_fail(msg: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(msg + " [DELEGATE_REQUIRE_ALL=1: nothing is skipped]", pytrace=False)
    pytest.skip(msg)


def docker(host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], env={**os.environ, "DOCKER_HOST": host}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def engine() -> str:
    host = os.environ.get("DELEGATE_TEST_DOCKER_HOST") or ""
    if not host or docker(host, "image", "inspect", SANDBOX_IMAGE).returncode != 0:
        skip_or_fail(f"no Docker Engine with {SANDBOX_IMAGE} at DELEGATE_TEST_DOCKER_HOST "
                     "(scripts/dockerd start; sandbox-image/build --offline --lean)")
    if docker(host, "image", "inspect", BASE_IMAGE).returncode != 0:
        skip_or_fail(f"no {BASE_IMAGE} on the engine (sandbox-image/build --offline makes it)")
    if subprocess.run(["docker-compose", "version"], capture_output=True).returncode != 0:
        skip_or_fail("docker-compose missing (scripts/setup --test)")
    return host


@pytest.fixture(scope="module")
def server_image(engine: str) -> str:
    """The server image, built offline from the debug binary (once per binary: its digest is a label)."""
    digest = subprocess.run(["sha256sum", str(DELEGATE)], capture_output=True, text=True, check=True).stdout.split()[0]
    have = docker(engine, "image", "inspect", "--format", '{{index .Config.Labels "delegate.binary.sha256"}}', SERVER_IMAGE)
    if have.returncode != 0 or have.stdout.strip() != digest:
        built = subprocess.run(
            [str(ROOT / "scripts" / "server-image"), "--offline", "--binary", str(DELEGATE), "--tag", SERVER_IMAGE],
            env={**os.environ, "DOCKER_HOST": engine}, capture_output=True, text=True, timeout=900,
        )
        assert built.returncode == 0, f"scripts/server-image --offline failed:\n{built.stderr[-3000:]}"
    return SERVER_IMAGE


class Composed:
    """compose.yml + compose.test.yml up under a fresh project, network and data dir; down at the end."""

    def __init__(self, engine: str, image: str, docker_network: str | None):
        self.engine = engine
        self.project = f"dlghelm{secrets.token_hex(4)}"
        self.network = f"{self.project}-net"
        # short: sandbox unix sockets live below it; the same path inside the server and on the host
        self.data = Path(tempfile.mkdtemp(prefix="dlg-", dir="/tmp"))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DELEGATE_", "ANTHROPIC_", "DOCKER_"))},
            "DOCKER_HOST": engine,
            "COMPOSE_PROJECT_NAME": self.project,
            "DELEGATE_IMAGE": image,
            "DELEGATE_SANDBOX_IMAGE": SANDBOX_IMAGE,
            "DELEGATE_SANDBOX_MEMORY_MB": "1024",
            "DELEGATE_DATA": str(self.data),
            "DELEGATE_NETWORK_NAME": self.network,
            "DELEGATE_PORT": "127.0.0.1:",  # "127.0.0.1::8080": any free port (unused: internal network)
            "DOCKER_SOCKET": engine.removeprefix("unix://"),
            "ANTHROPIC_API_KEY": "sk-ant-test-fake-key-0000",
            "ANTHROPIC_BASE_URL": "http://model:8000",
            "FAKE_ANTHROPIC_BIN": str(FAKE_ANTHROPIC),
        }
        if docker_network:
            self.env["DELEGATE_DOCKER_NETWORK"] = self.network if docker_network == "compose" else docker_network
        self.base_url = ""

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-f", str(ROOT / "compose.yml"), "-f", str(OVERRIDE), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )

    def up(self) -> None:
        up = self.compose("up", "-d", "--no-build")
        assert up.returncode == 0, f"docker-compose up failed:\n{up.stderr[-3000:]}"
        inspect = docker(self.engine, "network", "inspect", "--format", "{{.Internal}}", self.network)
        assert inspect.stdout.strip() == "true", f"network {self.network}: {inspect.stdout}{inspect.stderr}"
        cid = self.compose("ps", "-q", "delegate").stdout.strip()
        ip = docker(self.engine, "inspect", "--format",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid).stdout.strip()
        assert ip, f"the server container has no address on {self.network}"
        self.base_url = f"http://{ip}:8080"
        wait_until(lambda: self.status("/readyz") == 200, 60, f"the composed server's /readyz\n{self.logs()}")

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as r:
                return r.status
        except (urllib.error.URLError, OSError):
            return 0

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60").stdout

    def admin(self, *args: str) -> str:
        done = self.compose("exec", "-T", "delegate", "delegate", *args, timeout=60)
        assert done.returncode == 0, f"delegate {' '.join(args)} in the container failed: {done.stderr}"
        return done.stdout.strip()

    def api(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            self.base_url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def sandbox_leftovers(self, sandbox_id: str) -> list[str]:
        """The containers and volumes of one sandbox still on the engine."""
        label = f"label=delegate.sandbox={sandbox_id}"
        return (docker(self.engine, "ps", "-a", "-q", "--filter", label).stdout.split()
                + docker(self.engine, "volume", "ls", "-q", "--filter", label).stdout.split())

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=120)
        remove_tree(self.data)


def run_through_compose(engine: str, image: str, docker_network: str | None) -> None:
    composed = Composed(engine, image, docker_network)
    try:
        composed.up()
        token = composed.admin("token", "create", "--name", "compose-test")
        assert token.startswith("dlg_"), token
        networks: dict[str, set[str]] = {}
        stop = threading.Event()

        def watch_engine() -> None:
            # While the run goes, which networks its container is on (by sandbox: other tests may
            # run containers on the same engine).
            fmt = '{{index .Config.Labels "delegate.sandbox"}} {{range $n, $_ := .NetworkSettings.Networks}}{{$n}} {{end}}'
            while not stop.is_set():
                for cid in docker(engine, "ps", "-q", "--filter", "label=delegate.kind=ephemeral").stdout.split():
                    sandbox, *nets = docker(engine, "inspect", "--format", fmt, cid).stdout.split() or [""]
                    networks.setdefault(sandbox, set()).update(nets)
                stop.wait(0.1)

        watcher = threading.Thread(target=watch_engine, daemon=True)
        watcher.start()
        try:
            out = composed.api("POST", "/api/runs", token, {
                "task": "create hello.txt saying hi", "files": {"notes/seed.md": "# seed\n"}, "wait": True,
            })
        finally:
            stop.set()
            watcher.join(10)
        assert out["status"] == "succeeded", json.dumps(out)[:3000] + "\n" + composed.logs()
        want = composed.network if docker_network == "compose" else "none"
        seen = networks.get(out["sandbox_id"])
        assert seen == {want}, f"the run's container was on {seen or 'nothing seen'}, not {want}"
        assert HELLO_ADDED in out["changed_files"], out["changed_files"]
        assert "+hi" in out["diff"], out["diff"]
        assert out["final_message"].strip() == "done", out
        # The model's tokens were counted: the calls went through the server's proxy to the fake.
        assert out["usage"]["input_tokens"] > 0, out["usage"]
        # The sandbox's container and volumes are gone once the run ended.
        wait_until(lambda: not composed.sandbox_leftovers(out["sandbox_id"]), 60, "the run's sandbox to go")
    finally:
        composed.down()
    gone = docker(engine, "network", "inspect", composed.network)
    assert gone.returncode != 0, f"network {composed.network} left behind"


def test_compose_run_with_socket_proxy(engine: str, server_image: str) -> None:
    """DELEGATE_DOCKER_NETWORK=none (compose.yml's default): the proxy through a unix socket."""
    run_through_compose(engine, server_image, None)


def test_compose_run_on_named_network(engine: str, server_image: str) -> None:
    """DELEGATE_DOCKER_NETWORK=NAME: sandboxes join the compose network and reach http://delegate:8080/v1."""
    run_through_compose(engine, server_image, "compose")


def test_server_image_runs_as_the_chart_runs_it(engine: str, server_image: str) -> None:
    """helm/delegate runs the server image as uid 10001 on a read-only root with every capability
    dropped and only /tmp and the data dir writable: it starts so and answers both probes."""
    network = f"dlghelm{secrets.token_hex(4)}-probe"
    assert docker(engine, "network", "create", "--internal", network).returncode == 0
    name = f"{network}-server"
    try:
        started = docker(
            engine, "run", "-d", "--name", name, "--network", network, "--user", "10001:10001", "--read-only",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp",
            "--tmpfs", "/var/lib/delegate:uid=10001,gid=10001", "-e", "HOME=/tmp",
            # No engine and no cluster here: the process backend without isolation, never used.
            "-e", "DELEGATE_BACKEND=process", "-e", "DELEGATE_ISOLATION=none", "-e", "DELEGATE_OPENCODE_BIN=/bin/true",
            "-e", "ANTHROPIC_API_KEY=sk-ant-test-fake-key-0000", server_image, "serve",
        )
        assert started.returncode == 0, started.stderr
        ip = docker(engine, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).stdout.strip()

        def answers(path: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(lambda: answers("/healthz"), 60, "/healthz of the server image as uid 10001\n"
                   + docker(engine, "logs", "--tail", "20", name).stderr)
        assert answers("/readyz")
        user = docker(engine, "exec", name, "id", "-u").stdout.strip()
        assert user == "10001", user
    finally:
        docker(engine, "rm", "-f", name)
        docker(engine, "network", "rm", network)
