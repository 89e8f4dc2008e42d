"""A policy that lists a host by name does not let that name lead to a private address: the egress
proxy resolves the name itself and refuses what it resolves to.

No name on a loopback-only machine resolves to a private address, so the test gives the real
`delegate run` one: it runs in a mount namespace of its own whose /etc/hosts maps
`mirror.internal.test` to 10.20.30.40. The resolver is the system's own (getaddrinfo, nsswitch
`files`); nothing in delegate is stubbed. Nothing is sent to 10.20.30.40: the refusal comes first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Fake, StdioEnv
from support import DELEGATE

PRIVATE = "10.20.30.40"
NAME = "mirror.internal.test"
# The agent's bash call: plain HTTP keeps the refusal's body in a file of the work dir (so it comes
# back in the diff); HTTPS goes through CONNECT, the other way into the proxy.
COMMAND = (
    f"bash:curl -sS -o refused.txt http://{NAME}/simple/ ; "
    f"curl -sS https://{NAME}/simple/ > /dev/null 2> connect.txt ; true"
)


def namespaced(hosts: Path, argv: list[str]) -> list[str]:
    """`argv` in a private mount namespace where `hosts` is /etc/hosts."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/hosts && exec "$@"',
        str(hosts),
        *argv,
    ]


def test_a_listed_name_that_resolves_to_a_private_address_is_refused(
    tmp_path: Path, fake_factory: Callable[[str], Fake], stdio_factory: Callable[..., StdioEnv]
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("DELEGATE_REQUIRE_ALL") == "1":
            pytest.fail("this test needs root and unshare(1) for a mount namespace of its own")
        pytest.skip("needs root and unshare(1) for a mount namespace of its own")
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"\n{PRIVATE} {NAME}\n")

    fake = fake_factory(COMMAND)
    policies = {"mirror": {"hosts": [NAME, f"{NAME}:443"], "allow_addresses": []}}
    stdio = stdio_factory(fake.url, DELEGATE_EGRESS_POLICIES=json.dumps(policies))
    workdir = tmp_path / "caller"
    workdir.mkdir()
    p = subprocess.run(
        namespaced(hosts, [str(DELEGATE), "run", "--json", "--full", "--no-repo", "--network", "mirror", "fetch the index"]),
        env=stdio.env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, f"delegate run exited {p.returncode}: {p.stderr[-3000:]}"
    result = json.loads(p.stdout)
    assert result["status"] == "succeeded", p.stdout[:3000]

    # Both of the agent's connections were refused (opencode's own start-up fetches, refused by
    # the same policy, count too), none allowed, nothing carried.
    egress = result["egress"]
    assert egress["allowed"] == 0 and egress["bytes"] == 0 and egress["denied"] >= 2, egress
    # Each refusal is an event; its progress line names the host and the reason.
    refused = [line for line in p.stderr.splitlines() if f"egress denied {NAME}:" in line]
    assert len(refused) == 2, p.stderr[-4000:]
    assert all(f"resolves to {PRIVATE}, a private address" in line for line in refused), refused
    # The agent read why: the 403 body names the name, the address it resolved to and its class.
    diff = result["diff"]
    assert "refused.txt" in diff, diff[:3000]
    assert f"delegate egress: {NAME} resolves to {PRIVATE}, a private address" in diff, diff[:3000]
    assert "allow_addresses of policy `mirror`" in diff, diff[:3000]
    # curl's CONNECT was answered 403 as well.
    assert "403" in diff.split("connect.txt", 1)[1], diff[:3000]
