#!/bin/sh
# delegate's sandbox entrypoint. Two modes:
#
#   headless  TASK set: `opencode run --format json --auto [ARGS]` with the prompt on stdin: the
#             TASK text itself, or the container's stdin when TASK is "-" (how delegate sends
#             tasks up to 1 MiB, past the kernel's limit for one environment variable).
#   serve     TASK unset: `opencode serve` on ${OPENCODE_PORT:-4096} for a warm sandbox; set
#             OPENCODE_SERVER_PASSWORD (delegate always does).
#
# How opencode reaches the model: only through delegate's Anthropic proxy, with a sandbox token.
#   OPENCODE_CONFIG_CONTENT      a whole opencode config (delegate's backend passes this), or
#   DELEGATE_PROXY_URL           the proxy's base URL ending in /v1 (e.g. http://127.0.0.1:8080/v1)
#   DELEGATE_PROXY_TOKEN         the sandbox's proxy token (never a real API key)
#   DELEGATE_MODEL               provider/model [anthropic/claude-sonnet-4-5]
# With no network at all (--network none):
#   DELEGATE_PROXY_SOCKET        the proxy as a unix socket bound in; relayed to 127.0.0.1:4000
#   DELEGATE_SERVE_SOCKET        serve mode: opencode serve is also offered on this unix socket
#   DELEGATE_EGRESS_SOCKET       delegate's egress proxy as a unix socket bound in; relayed to
#                                127.0.0.1:4001, where HTTP_PROXY/HTTPS_PROXY/ALL_PROXY point
#                                (delegate sets them when the sandbox's policy allows anything)
# Started as root (plain `docker run` without --user), it gives /workspace and $HOME to
# PUID:PGID [1000:1000] and drops to them; delegate and compose.headless.yml start it non-root.
set -eu

if [ "$(id -u)" = 0 ]; then
    PUID=${PUID:-1000}
    PGID=${PGID:-1000}
    if [ "$PUID" = 0 ]; then
        echo "delegate-sandbox: refusing to run opencode as root (PUID=0)" >&2
        exit 64
    fi
    chown "$PUID:$PGID" /workspace "${HOME:-/home/sandbox}" /run/delegate 2>/dev/null || true
    exec setpriv --reuid="$PUID" --regid="$PGID" --clear-groups --no-new-privs \
        --inh-caps=-all --bounding-set=-all -- "$0" "$@"
fi

export HOME="${HOME:-/home/sandbox}"
export XDG_DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
export XDG_CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}"
export XDG_STATE_HOME="${XDG_STATE_HOME:-$HOME/.local/state}"
export TMPDIR="${TMPDIR:-/tmp}"
for flag in AUTOUPDATE MODELS_FETCH SHARE LSP_DOWNLOAD DEFAULT_PLUGINS CLAUDE_CODE EXTERNAL_SKILLS; do
    export "OPENCODE_DISABLE_$flag=1"
done
if ! mkdir -p "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME" "$XDG_STATE_HOME" 2>/dev/null; then
    echo "delegate-sandbox: HOME ($HOME) is not writable by uid $(id -u); mount a tmpfs or volume there" >&2
    exit 65
fi

if [ -n "${DELEGATE_PROXY_SOCKET:-}" ]; then
    socat TCP-LISTEN:4000,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:$DELEGATE_PROXY_SOCKET" &
    DELEGATE_PROXY_URL="${DELEGATE_PROXY_URL:-http://127.0.0.1:4000/v1}"
fi
if [ -n "${DELEGATE_EGRESS_SOCKET:-}" ]; then
    socat TCP-LISTEN:4001,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:$DELEGATE_EGRESS_SOCKET" &
fi

# Only characters that need no JSON escaping go into the config.
safe() {
    case "$2" in
        *[!A-Za-z0-9._:/@+=-]*|"") echo "delegate-sandbox: $1 is empty or has characters it may not have" >&2; exit 64 ;;
    esac
}
if [ -z "${OPENCODE_CONFIG_CONTENT:-}" ]; then
    if [ -z "${DELEGATE_PROXY_URL:-}" ] || [ -z "${DELEGATE_PROXY_TOKEN:-}" ]; then
        echo "delegate-sandbox: set DELEGATE_PROXY_URL and DELEGATE_PROXY_TOKEN (delegate's proxy and a sandbox token), or OPENCODE_CONFIG_CONTENT" >&2
        exit 64
    fi
    model="${DELEGATE_MODEL:-anthropic/claude-sonnet-4-5}"
    safe DELEGATE_PROXY_URL "$DELEGATE_PROXY_URL"
    safe DELEGATE_PROXY_TOKEN "$DELEGATE_PROXY_TOKEN"
    safe DELEGATE_MODEL "$model"
    export OPENCODE_CONFIG_CONTENT="{\"autoupdate\":false,\"share\":\"disabled\",\"model\":\"$model\",\"enabled_providers\":[\"anthropic\"],\"provider\":{\"anthropic\":{\"options\":{\"baseURL\":\"$DELEGATE_PROXY_URL\",\"apiKey\":\"$DELEGATE_PROXY_TOKEN\"}}},\"permission\":{\"edit\":\"allow\",\"bash\":\"allow\",\"webfetch\":\"allow\",\"external_directory\":\"allow\",\"question\":\"deny\"}}"
fi
unset DELEGATE_PROXY_TOKEN

cd /workspace
if [ -n "${TASK:-}" ]; then
    if [ "$TASK" = "-" ]; then
        unset TASK
        exec opencode run --format json --auto "$@"
    fi
    printf '%s' "$TASK" > "$TMPDIR/task"
    unset TASK
    exec opencode run --format json --auto "$@" < "$TMPDIR/task"
fi

if [ -z "${OPENCODE_SERVER_PASSWORD:-}" ]; then
    echo "delegate-sandbox: warning: OPENCODE_SERVER_PASSWORD is not set; opencode serve is open to anyone who reaches it" >&2
fi
port="${OPENCODE_PORT:-4096}"
if [ -n "${DELEGATE_SERVE_SOCKET:-}" ]; then
    rm -f "$DELEGATE_SERVE_SOCKET"
    socat "UNIX-LISTEN:$DELEGATE_SERVE_SOCKET,fork,mode=600" "TCP:127.0.0.1:$port" &
fi
exec opencode serve --hostname "${OPENCODE_HOSTNAME:-127.0.0.1}" --port "$port" "$@"
