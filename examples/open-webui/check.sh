#!/usr/bin/env bash
# Checks the real Open WebUI against delegate (examples/open-webui/test_open_webui.py): an admin adds
# delegate's /mcp as an MCP tool server, Open WebUI lists its tools, and a chat whose model (scripted)
# calls run_in_sandbox gets the run's result back to the model. Everything on loopback.
#
# Outside scripts/test: Open WebUI is a large install (about 2 GB here) and slow to start. Run
#   scripts/setup --test && cargo build --bins && examples/open-webui/check.sh
# It installs open-webui (pinned below) into OPEN_WEBUI_VENV (default .tools/open-webui) once.
# OPEN_WEBUI_CHECK_SCRIPT=slow:30000:write:hello.txt:hi makes the sandbox's run last minutes, and
# OPEN_WEBUI_CHECK_FOLLOW=1 has the model start it with `wait: false` and follow it with stream_session.
# PyTorch and its CUDA libraries (several GB more) are left out: they serve Open WebUI's local
# embedding and speech models, which this check turns off (BYPASS_EMBEDDING_AND_RETRIEVAL).
set -euo pipefail

OPEN_WEBUI_VERSION=0.12.4
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${OPEN_WEBUI_VENV:-$root/.tools/open-webui}
py=${DELEGATE_TEST_PYTHON:-$root/.tools/venv/bin/python}
say() { printf 'open-webui check: %s\n' "$*" >&2; }

[ -x "$py" ] || { say "no test venv at $py: run scripts/setup --test"; exit 1; }

if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('open-webui') != '$OPEN_WEBUI_VERSION')" >/dev/null 2>&1; then
  say "installing open-webui==$OPEN_WEBUI_VERSION into $venv (without torch)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir -U pip >&2
  report=$(mktemp)
  reqs=$(mktemp)
  trap 'rm -f "$report" "$reqs"' EXIT
  # Resolve the whole tree, then install it without torch, triton and the nvidia-* wheels.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir --dry-run --ignore-installed \
    --report "$report" "open-webui==$OPEN_WEBUI_VERSION" >&2
  "$venv/bin/python" - "$report" "$reqs" <<'PY'
import json, sys
skip = {"torch", "triton"}
report = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower() in skip or name.lower().startswith("nvidia-"):
            continue
        out.write(f"{name}=={version}\n")
PY
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps -r "$reqs" >&2
fi
[ -x "$venv/bin/open-webui" ] || { say "open-webui missing under $venv"; exit 1; }

target=${CARGO_TARGET_DIR:-$root/target}
for bin in delegate fake-anthropic; do
  [ -x "$target/debug/$bin" ] || { say "missing $target/debug/$bin: run cargo build --bins"; exit 1; }
done

say "open-webui $("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('open-webui'))"), $("$target/debug/delegate" --version)"
cd "$root/tests/clients"
# tests/clients' fixtures (delegate serve, fake-anthropic) come in as the `conftest` plugin
OPEN_WEBUI_BIN="$venv/bin/open-webui" PYTHONPATH="$root/tests/clients" \
  exec "$py" -m pytest -p conftest -q -s -ra "$@" "$root/examples/open-webui/test_open_webui.py"
