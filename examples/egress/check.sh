#!/usr/bin/env bash
# Checks that each toolchain in a sandbox image fetches through delegate's egress proxy: a real
# `delegate run` on the docker backend, whose (scripted) model has opencode's bash tool run
# inside.sh in the sandbox. The sandbox has no network; curl, pip, npm, git, and cargo and go
# when the image has them (the rust and go variants), reach loopback stand-ins (standins.py: a
# simple index, an npm registry, git smart HTTP, a GOPROXY) only through the proxy, under a
# policy allowing the stand-ins' host and, as an admin exception, 127.0.0.1. A host outside the
# policy must get the proxy's 403.
#
# Outside scripts/test: it wants a Docker Engine, the image and a built workspace. Run
#   cargo build --bins && DOCKER_HOST=unix:///run/delegate-dockerd/docker.sock \
#     examples/egress/check.sh [IMAGE]           # IMAGE: default delegate-sandbox:1.18.33
# EGRESS_CHECK_HOST names the stand-ins in the sandbox's URLs (default: this machine's host
# name); it must resolve to 127.0.0.1 here, as the proxy resolves it, and must not be
# `localhost` (NO_PROXY, and Go never proxies loopback names).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/examples/egress"
image=${1:-delegate-sandbox:1.18.33}
target=${CARGO_TARGET_DIR:-$root/target}/debug
host=${EGRESS_CHECK_HOST:-$(hostname)}
say() { printf 'egress check: %s\n' "$*" >&2; }

for bin in delegate fake-anthropic; do
  [ -x "$target/$bin" ] || { say "no $target/$bin: run cargo build --bins"; exit 1; }
done
docker image inspect "$image" >/dev/null 2>&1 || { say "no image $image at ${DOCKER_HOST:-the default socket} (sandbox-image/build)"; exit 1; }
case "$host" in localhost|127.*|"") say "EGRESS_CHECK_HOST must be a name, not $host"; exit 1 ;; esac
getent hosts "$host" | grep -q '^127\.0\.0\.1 ' || { say "$host does not resolve to 127.0.0.1 here; set EGRESS_CHECK_HOST"; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

python3 "$here/standins.py" "$host" "$work" >"$work/standins.out" 2>"$work/standins.log" &
pids+=($!)
fake_out="$work/fake.out"
# The model runs inside.sh with opencode's bash tool, then ends the turn.
"$target/fake-anthropic" --script 'bash:sh inside.sh 2>&1 | tee egress-check.out' >"$fake_out" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q 'listening on' "$work/standins.out" "$fake_out" 2>/dev/null && [ "$(grep -l 'listening on' "$work/standins.out" "$fake_out" | wc -l)" = 2 ] && break
  sleep 0.1
done
port=$(sed -n 's/^listening on //p' "$work/standins.out")
fake=$(sed -n 's/^listening on //p' "$fake_out")
[ -n "$port" ] && [ -n "$fake" ] || { say "the stand-ins or the fake model did not start"; cat "$work"/*.log >&2; exit 1; }
base="http://$host:$port"
say "stand-ins at $base, image $image"

mkdir "$work/run"
cat >"$work/run/inside.sh" <<EOF
#!/bin/sh
# Runs in the sandbox: one line "ok TOOL: ..." or "FAIL TOOL: ..." per toolchain.
base=$base
host=$host
EOF
cat >>"$work/run/inside.sh" <<'EOF'
scratch=$(mktemp -d)
check() { name=$1; shift; if out=$("$@" 2>&1); then echo "ok $name: $(echo "$out" | tail -1)"; else echo "FAIL $name: $(echo "$out" | tail -3 | tr '\n' ' ')"; fi; }
echo "proxy variables: HTTP_PROXY=$HTTP_PROXY HTTPS_PROXY=$HTTPS_PROXY NO_PROXY=$NO_PROXY"
check curl curl -fsS "$base/hello"
check curl-connect curl -fsS --proxytunnel "$base/hello"
check refused sh -c 'curl -sS http://example.invalid/ | grep "delegate egress: policy"'
check pip-download sh -c "pip download -q --no-deps -d '$scratch/pip' --index-url '$base/simple' --trusted-host '$host' egbpkg && ls '$scratch/pip'"
check pip-venv sh -c "python3 -m venv '$scratch/venv' && '$scratch/venv/bin/pip' install -q --index-url '$base/simple' --trusted-host '$host' egbpkg && '$scratch/venv/bin/python' -c 'import egbpkg; print(egbpkg.GREETING)'"
check pip-user sh -c "pip install -q --user --index-url '$base/simple' --trusted-host '$host' egbpkg && python3 -c 'import egbpkg; print(egbpkg.GREETING)'"
check npm sh -c "mkdir '$scratch/npm' && cd '$scratch/npm' && npm init -y >/dev/null && npm install --no-audit --registry '$base/npm/' egb-pkg >/dev/null && node -e \"console.log(require('egb-pkg'))\""
check git sh -c "git clone -q '$base/git/egbdep.git' '$scratch/egbdep' && head -2 '$scratch/egbdep/src/lib.rs' | tail -1"
if command -v cargo >/dev/null; then
  mkdir -p "$scratch/cargo/src"
  printf '[package]\nname = "check"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\negbdep = { git = "%s/git/egbdep.git" }\n' "$base" > "$scratch/cargo/Cargo.toml"
  printf 'fn main() {\n    println!("{}", egbdep::greeting());\n}\n' > "$scratch/cargo/src/main.rs"
  check cargo sh -c "cd '$scratch/cargo' && cargo run -q"
else
  echo "skip cargo: not in this image"
fi
if command -v go >/dev/null; then
  mkdir -p "$scratch/go"
  printf 'module check\n\ngo 1.19\n' > "$scratch/go/go.mod"
  printf 'package main\n\nimport (\n\t"fmt"\n\n\t"egb.example/hello"\n)\n\nfunc main() { fmt.Println(hello.Greeting()) }\n' > "$scratch/go/main.go"
  check go sh -c "cd '$scratch/go' && GOPROXY='$base/goproxy' GOSUMDB=off GOFLAGS=-mod=mod go get egb.example/hello@v1.0.0 && GOPROXY='$base/goproxy' GOSUMDB=off go run ."
else
  echo "skip go: not in this image"
fi
rm -rf "$scratch"
EOF

policies=$(printf '{"standins": {"hosts": ["%s:%s"], "allow_addresses": ["127.0.0.1"]}}' "$host" "$port")
say "delegate run on the docker backend (a minute or two)"
set +e
(cd "$work/run" && env DELEGATE_BACKEND=docker DELEGATE_SANDBOX_IMAGE="$image" \
  DELEGATE_DATA_DIR="$work/data" DELEGATE_EGRESS_POLICIES="$policies" DELEGATE_EGRESS_DEFAULT=standins \
  ANTHROPIC_BASE_URL="$fake" ANTHROPIC_API_KEY=sk-ant-fake-egress-check DELEGATE_LOG=warn \
  "$target/delegate" run --no-repo --timeout 10m --json --full -f inside.sh "run the egress check" >"$work/result.json")
rc=$?
# What the sandbox printed (the file it wrote comes back in the run's diff), and every
# connection the proxy saw (the run's `egress` events, from the run's database).
python3 - "$work/result.json" "$work/data" <<'PY'
import glob, json, sqlite3, sys
result = json.load(open(sys.argv[1]))
diff = result.get("diff") or ""
lines = [l[1:] for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
print("\n".join(lines) or json.dumps(result, indent=1)[:4000])
print(f"status: {result.get('status')}, egress totals: {json.dumps(result.get('egress'))}")
for db in glob.glob(sys.argv[2] + "/*.db") + glob.glob(sys.argv[2] + "/*.sqlite*"):
    try:
        rows = sqlite3.connect(db).execute("SELECT data FROM run_events WHERE type = 'egress' ORDER BY seq").fetchall()
    except sqlite3.Error:
        continue
    for (data,) in rows:
        e = json.loads(data)
        reason = f" ({e['reason']})" if e.get("reason") else ""
        print(f"egress event: {e['decision']} {e['host']}:{e['port']} up {e['bytes_up']} B, down {e['bytes_down']} B, {e['duration_ms']} ms{reason}")
failing = sum(1 for l in lines if l.startswith("FAIL")) + (0 if any(l.startswith("ok curl:") for l in lines) else 1)
sys.exit(1 if failing or result.get("status") != "succeeded" else 0)
PY
ok=$?
set -e
[ "$rc" = 0 ] && [ "$ok" = 0 ] || { say "failed (delegate run exit $rc)"; exit 1; }
say "every toolchain fetched through the egress proxy"
