#!/usr/bin/env bash
# Parser-differential test: gatehouse in front of real upstream frameworks (README.md here).
#
#   bash tests/differential/run.sh [differential.py options]     # from the repository root
#
# Installs what it needs (nginx, Go and PHP from Debian if missing, a pinned Python venv under
# target/differential/venv, the Express modules with `npm ci`), builds gatehouse and the Go
# upstream, then runs differential.py. Anything that cannot be had stops the run with a
# non-zero exit and a message; nothing is skipped silently.
#
# GATEHOUSE_BIN=path runs against that binary instead of building target/debug/gatehouse.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
DIFF="$ROOT/tests/differential"
OUT="$ROOT/target/differential"
mkdir -p "$OUT"

die() {
    echo "differential: ERROR: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}
step() { echo "== differential: $*"; }

# --- system packages: only what is missing --------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]} with apt-get"
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || die "nginx is not installed"
for tool in go php python3 node npm cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH"
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 >= 3.9 is needed"

# --- Python venv with the pinned frameworks ----------------------------------------------------
VENV="$OUT/venv"
want="$(sha256sum <"$DIFF/requirements.txt" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.differential-stamp" 2>/dev/null)" != "$want" ]; then
    step "python venv at target/differential/venv"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        --only-binary=:all: -r "$DIFF/requirements.txt" </dev/null \
        || die "pip install -r tests/differential/requirements.txt failed"
    echo "$want" >"$VENV/.differential-stamp"
fi

# --- Express 4 and 5 with method-override -----------------------------------------------------
lock="$(sha256sum "$DIFF/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$DIFF/node_modules/.differential-stamp" 2>/dev/null)" != "$lock" ]; then
    step "npm ci in tests/differential"
    (cd "$DIFF" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error </dev/null) \
        || die "npm ci in tests/differential failed"
    echo "$lock" >"$DIFF/node_modules/.differential-stamp"
fi

# --- the Go upstream (standard library only; no module proxy) ---------------------------------
step "go build the ServeMux upstream"
(
    export GOPROXY=off GOFLAGS= GOCACHE="$OUT/go-cache" GOPATH="$OUT/go-path" GO111MODULE=on
    go build -o "$OUT/goapp" "$DIFF/apps/go/main.go" </dev/null
) || die "go build tests/differential/apps/go/main.go failed"

# --- gatehouse -------------------------------------------------------------------------------
if [ -n "${GATEHOUSE_BIN:-}" ]; then
    [ -x "$GATEHOUSE_BIN" ] || die "GATEHOUSE_BIN=$GATEHOUSE_BIN is not an executable"
    GATEHOUSE="$GATEHOUSE_BIN"
else
    step "cargo build --locked --bin gatehouse"
    cargo build --locked --bin gatehouse </dev/null || die "cargo build --locked --bin gatehouse failed"
    GATEHOUSE="$ROOT/target/debug/gatehouse"
fi

step "running differential.py"
exec "$VENV/bin/python" "$DIFF/differential.py" --gatehouse "$GATEHOUSE" --nginx "$NGINX" \
    --node "$(command -v node)" --php "$(command -v php)" --goapp "$OUT/goapp" --report "$OUT/report.json" "$@" </dev/null
