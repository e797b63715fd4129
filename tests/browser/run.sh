#!/usr/bin/env bash
# The recovery pages (password reset, email confirmation) in a real browser: headless Debian
# Chromium driven by Selenium through chromedriver, at a phone's size, with and without
# JavaScript (tests/browser/pages.py says what is checked). Screenshots of every step land in
# target/browser/.
#
#   bash tests/browser/run.sh            # from the repository root
#
# Installs Debian's chromium and chromium-driver with apt-get when missing, and selenium
# (pinned, requirements.txt) into target/browser/venv; starts target/debug/gatehouse
# (GATEHOUSE_BIN=path for another build; built here when missing) on a config in a temp dir.
# The machine has no network, so the browser runs with every background download off and a
# fresh profile. Anything missing stops the run with a non-zero exit and a message.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
OUT="$ROOT/target/browser"
mkdir -p "$OUT"

die() {
    echo "browser: ERROR: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}
step() { echo "== browser: $*"; }

# --- Chromium and its driver from Debian --------------------------------------------------
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    [ "$(id -u)" = 0 ] || die "need root to install chromium and chromium-driver with apt-get"
    step "apt-get install chromium chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends chromium chromium-driver </dev/null >/dev/null \
        || die "apt-get install chromium chromium-driver failed"
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is missing"
[ -x /usr/bin/chromedriver ] || die "/usr/bin/chromedriver is missing"
command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH"
command -v curl >/dev/null 2>&1 || die "curl is not on PATH"

# --- venv ---------------------------------------------------------------------------------
VENV="$OUT/venv"
want="$(sha256sum <"$ROOT/tests/browser/requirements.txt" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
    step "python venv at target/browser/venv"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$ROOT/tests/browser/requirements.txt" </dev/null \
        || die "pip install -r tests/browser/requirements.txt failed"
    echo "$want" >"$VENV/.stamp"
fi

# --- gatehouse ----------------------------------------------------------------------------
BIN="${GATEHOUSE_BIN:-$ROOT/target/debug/gatehouse}"
if [ -z "${GATEHOUSE_BIN:-}" ] && [ ! -x "$BIN" ]; then
    step "cargo build --bin gatehouse"
    cargo build --locked --bin gatehouse || die "cargo build failed"
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

tmp="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
PORT="$(free_port)"
UPSTREAM_PORT="$(free_port)"
SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
cat >"$tmp/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
public_url = "http://127.0.0.1:$PORT"

[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"

[store]
path = "$tmp/store"

[tokens]
secret = "$SECRET"

[auth]
registration = "open"
# Reset links come from forgot-password's answer, confirmation links from the log.
expose_debug_tokens = true

[auth.password]
memory_kib = 1024
iterations = 1
parallelism = 1

[rate_limits]
login = "0"
register = "0"
refresh = "0"
forgot_password = "0"

[email]
mode = "log"

[log]
level = "warn"
format = "json"
TOML

step "starting $BIN on 127.0.0.1:$PORT"
"$BIN" serve --config "$tmp/config.toml" >"$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/server.log" >&2; die "gatehouse exited at start"; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || die "gatehouse did not answer /healthz"

rm -f "$OUT"/*.png
step "pages.py (screenshots in target/browser/)"
SE_OFFLINE=true "$VENV/bin/python" "$ROOT/tests/browser/pages.py" \
    "http://127.0.0.1:$PORT" "$OUT/server.log" "$OUT" </dev/null \
    || { echo "browser: the server log is in target/browser/server.log" >&2; exit 1; }
