#!/usr/bin/env bash
# Interoperability tests: the official MCP Python and TypeScript SDKs, as clients over
# Streamable HTTP with JWT bearer tokens, against the query_database example server.
#
#   bash tests/interop/run.sh        (from any directory)
#
# Needs python3 (3.10+, with venv), node 20+ and npm, and cargo; reaches PyPI and npm only
# to install the pinned clients (tests/interop/python/requirements.txt,
# tests/interop/ts/package-lock.json), and only when those files change.
# Exits non-zero if anything fails; the server's log is printed then.
set -euo pipefail

START_S=$SECONDS
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# Cargo reads a relative CARGO_TARGET_DIR against the directory it runs in: resolve it here.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$PWD/$TARGET_DIR" ;; esac
cd "$ROOT"

INTEROP_DIR="$TARGET_DIR/interop"
VENV="$INTEROP_DIR/venv"
TS_DIR="$HERE/ts"
PY_DIR="$HERE/python"

log() { printf '== interop: %s\n' "$*"; }
die() { printf 'FAIL interop: %s\n' "$*" >&2; exit 1; }

for tool in python3 node npm cargo; do
    command -v "$tool" >/dev/null || die "\`$tool\` is not on PATH"
done

hash_of() { python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

# --- 1. Clients, pinned; reinstalled only when their pins change ------------------------
mkdir -p "$INTEROP_DIR"
py_stamp="$VENV/.interop-requirements.sha256"
py_want="$(hash_of "$PY_DIR/requirements.txt")"
if [[ ! -x "$VENV/bin/python" || "$(cat "$py_stamp" 2>/dev/null || true)" != "$py_want" ]]; then
    log "installing the Python SDK into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_DIR/requirements.txt"
    echo "$py_want" >"$py_stamp"
fi
"$VENV/bin/python" -c 'import importlib.metadata as m; print("== interop: python", m.version("mcp"), "(mcp)")'

ts_stamp="$TS_DIR/node_modules/.interop-package-lock.sha256"
ts_want="$(hash_of "$TS_DIR/package-lock.json")"
if [[ "$(cat "$ts_stamp" 2>/dev/null || true)" != "$ts_want" ]]; then
    log "installing the TypeScript SDK into $TS_DIR/node_modules (npm ci)"
    (cd "$TS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$ts_want" >"$ts_stamp"
fi
node -e 'console.log("== interop: node", process.version, "@modelcontextprotocol/sdk", require(process.argv[1]).version)' \
    "$TS_DIR/node_modules/@modelcontextprotocol/sdk/package.json"

# --- 2. The server and the token tool ---------------------------------------------------
log "building the example server and the mcp-harden CLI"
cargo build --locked --example query_database
cargo build --locked -p mcp-harden --features cli --bin mcp-harden
SERVER_BIN="$TARGET_DIR/debug/examples/query_database"
CLI_BIN="$TARGET_DIR/debug/mcp-harden"
[[ -x "$SERVER_BIN" ]] || die "no server binary at $SERVER_BIN"
[[ -x "$CLI_BIN" ]] || die "no CLI binary at $CLI_BIN"

# --- 3. Start the server ----------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcp-harden-interop.XXXXXX")"
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
SECRET="$(python3 -c 'import secrets, string; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(48)))')"

on_exit() {
    local rc=$?
    set +e
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [[ $rc -ne 0 && -s "$SERVER_LOG" ]]; then
        echo "---- server log ($SERVER_LOG, last 300 lines) ----"
        tail -n 300 "$SERVER_LOG"
        echo "---- end of server log ----"
    fi
    rm -rf "$WORK"
    printf '== interop: finished in %ss with exit code %s\n' "$((SECONDS - START_S))" "$rc"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
ORIGIN="http://127.0.0.1:$PORT"
URL="$ORIGIN/mcp"

log "starting the server on 127.0.0.1:$PORT (log: $SERVER_LOG)"
MCP_HARDEN_JWT_SECRET="$SECRET" "$SERVER_BIN" --listen "127.0.0.1:$PORT" --db "$WORK/interop.sqlite3" \
    </dev/null >>"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

python3 - "$ORIGIN/.well-known/oauth-protected-resource" "$SERVER_PID" <<'PY' || die "the server did not answer within 60 s"
import os, sys, time, urllib.error, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        print(f"the server (pid {pid}) exited before answering", file=sys.stderr)
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            print(f"== interop: {url} answered {r.status}")
            sys.exit(0)
    except urllib.error.HTTPError as e:  # it answered, if not with 200: the clients will judge
        print(f"== interop: {url} answered {e.code}")
        sys.exit(0)
    except (urllib.error.URLError, OSError):
        time.sleep(0.2)
sys.exit(1)
PY

# --- 4. Tokens --------------------------------------------------------------------------
mint() { # SUBJECT SCOPES
    local out lines
    out="$(MCP_HARDEN_JWT_SECRET="$SECRET" "$CLI_BIN" token --sub "$1" --scopes "$2" --ttl 10m --aud "$URL")" \
        || die "\`mcp-harden token --sub $1\` failed"
    lines="$(printf '%s\n' "$out" | wc -l)"
    [[ "$lines" -eq 1 ]] || die "\`mcp-harden token --sub $1\` printed $lines lines, not one"
    [[ "$out" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] \
        || die "\`mcp-harden token --sub $1\` did not print a JWT: $out"
    printf '%s' "$out"
}
PY_READER="$(mint py-reader "db:read")"
PY_WRITER="$(mint py-writer "db:read db:write")"
TS_READER="$(mint ts-reader "db:read")"
TS_WRITER="$(mint ts-writer "db:read db:write")"
log "minted 4 tokens (py-reader, py-writer, ts-reader, ts-writer) for audience $URL"

# --- 5. The clients ---------------------------------------------------------------------
passed=0
failed=0
failures=()
run_client() { # NAME COMMAND...
    local name="$1"
    shift
    log "$name client"
    if "$@"; then
        echo "PASS interop: $name client"
        passed=$((passed + 1))
    else
        echo "FAIL interop: $name client (exit code $?)"
        failed=$((failed + 1))
        failures+=("$name")
    fi
}
run_client python "$VENV/bin/python" "$PY_DIR/interop_client.py" "$URL" "$PY_READER" "$PY_WRITER"
run_client typescript node "$TS_DIR/interop_client.mjs" "$URL" "$TS_READER" "$TS_WRITER"

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "FAIL interop: the server exited during the tests"
    failed=$((failed + 1))
    failures+=("server")
fi

echo "interop: $passed passed, $failed failed"
if ((failed > 0)); then
    die "failed: ${failures[*]}"
fi
