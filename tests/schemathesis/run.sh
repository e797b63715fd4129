#!/usr/bin/env bash
# Checks the running server against its own OpenAPI document (docs/openapi.json, served at
# /auth/openapi.json) with schemathesis: property-based requests to every operation, and for
# every response: no 5xx (not_a_server_error), a documented status
# (status_code_conformance), the documented body shape (response_schema_conformance),
# content type (content_type_conformance) and headers (response_headers_conformance);
# requests that break the document refused (negative_data_rejection); undocumented methods
# answered 405 with an `Allow` that lists exactly the documented ones (unsupported_method,
# allow_header_conformance). SCHEMATHESIS_CHECKS, SCHEMATHESIS_EXAMPLES and
# SCHEMATHESIS_SEED override the defaults.
#
#   bash tests/schemathesis/run.sh            # from the repository root
#
# Starts target/debug/gatehouse (GATEHOUSE_BIN=path for another build; built here when
# missing) on a config in a temp dir: sled store, mail logged, cheap password hashing, rate
# limits off and a lockout threshold no run reaches, so fuzzing cannot make the run flaky by
# tripping them (the 429 and 423 answers are documented all the same). An admin account made
# with `gatehouse user add` gives the authenticated runs their token. Runs bounded by
# --max-examples and a fixed seed: without credentials over every operation; with the
# admin's Bearer token over every operation that cannot end the admin's own session (and a
# check that it did not); then with the token over those that can (logout, revoke-sessions,
# update and delete user), last.
#
# Installs schemathesis (pinned, requirements.txt) into target/schemathesis/venv; anything
# missing stops the run with a non-zero exit and a message.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
OUT="$ROOT/target/schemathesis"
mkdir -p "$OUT"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-60}"
SEED="${SCHEMATHESIS_SEED:-20261201}"

die() {
    echo "schemathesis: ERROR: $*" >&2
    exit 1
}
step() { echo "== schemathesis: $*"; }

command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH"
command -v curl >/dev/null 2>&1 || die "curl is not on PATH"

# --- venv ---------------------------------------------------------------------------------
VENV="$OUT/venv"
want="$(sha256sum <"$ROOT/tests/schemathesis/requirements.txt" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -1)"
if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
    step "python venv at target/schemathesis/venv"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$ROOT/tests/schemathesis/requirements.txt" </dev/null \
        || die "pip install -r tests/schemathesis/requirements.txt failed"
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
# Nothing listens there: no operation in the document is proxied.
UPSTREAM_PORT="$(free_port)"
SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
cat >"$tmp/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"

[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"

[store]
path = "$tmp/store"

[tokens]
secret = "$SECRET"

[auth]
registration = "open"
default_roles = ["reader"]
selectable_roles = ["reader", "creator"]

[auth.password]
memory_kib = 1024
iterations = 1
parallelism = 1

[auth.lockout]
max_failures = 1000000

# TOTP on, so setup answers its secret (confirm needs a code no generator can guess).
[auth.mfa]
encryption_key = "$(head -c 48 /dev/urandom | base64 | tr -d '\n')"

# The forward-auth endpoints are in the document; the run's requests come from loopback,
# which the default forward_auth.trusted_proxies lists.
[forward_auth]
enabled = true

[rate_limits]
login = "0"
register = "0"
refresh = "0"
forgot_password = "0"
proxy = "0"

[email]
mode = "log"

[roles]
admin = { inherits = ["creator"] }
creator = { inherits = ["reader"] }

[log]
level = "info"
format = "json"
TOML

ADMIN_PASSWORD="schemathesis admin $(head -c 12 /dev/urandom | base64 | tr -d '\n/+=')"
printf '%s\n' "$ADMIN_PASSWORD" | "$BIN" user add --config "$tmp/config.toml" \
    --email admin@example.com --roles admin --verified --password-stdin >/dev/null \
    || die "gatehouse user add failed"

step "starting $BIN on 127.0.0.1:$PORT"
"$BIN" serve --config "$tmp/config.toml" >"$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/server.log" >&2; die "gatehouse exited at start"; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || die "gatehouse did not answer /healthz"
curl -fsS "http://127.0.0.1:$PORT/auth/openapi.json" -o "$OUT/openapi.json" \
    || die "GET /auth/openapi.json failed"

TOKEN="$(curl -fsS -H 'content-type: application/json' \
    -d "$(python3 -c 'import json, sys; print(json.dumps({"email": "admin@example.com", "password": sys.argv[1]}))' "$ADMIN_PASSWORD")" \
    "http://127.0.0.1:$PORT/auth/login" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')" \
    || die "could not log the admin in"

# The four the document is about, and four that found real bugs: JSON arrays read as
# structs by position (negative_data_rejection), an Allow header missing POST and HEAD
# refused on the admin GETs (unsupported_method, allow_header_conformance).
CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,response_headers_conformance,negative_data_rejection,unsupported_method,allow_header_conformance}"
run() {
    local name="$1"
    shift
    step "$name"
    # From target/schemathesis, where its crash cache (.schemathesis/) lands.
    (cd "$OUT" && PYTHONPATH="$ROOT/tests/schemathesis" SCHEMATHESIS_HOOKS=hooks "$VENV/bin/schemathesis" --no-color --config-file "$ROOT/tests/schemathesis/schemathesis.toml" run "http://127.0.0.1:$PORT/auth/openapi.json" \
        --checks "$CHECKS" \
        --phases examples,coverage,fuzzing \
        --max-examples "$EXAMPLES" \
        --seed "$SEED" \
        --workers 1 \
        --request-timeout 10 \
        --suppress-health-check all \
        --report junit --report-dir "$OUT" --report-junit-path "$OUT/$name.xml" \
        "$@" </dev/null)
}
# Forward-auth serves every method, since the requests it decides may have any (Envoy
# sends the original's as its own): a method OpenAPI cannot list (QUERY) is served there,
# not 405. So its operations run on their own, without unsupported_method.
FORWARD_CHECKS="$(tr ',' '\n' <<<"$CHECKS" | grep -vx unsupported_method | paste -sd, -)"
status=0
run anonymous --exclude-tag forward-auth || status=1
CHECKS="$FORWARD_CHECKS" run forward-auth --include-tag forward-auth || status=1
CHECKS="$FORWARD_CHECKS" run forward-auth-bearer -H "Authorization: Bearer $TOKEN" --include-tag forward-auth || status=1
# Operations that can end the admin's own session: schemathesis reuses ids it saw in
# responses, so it finds the admin's. They run last, on their own.
SELF_HARM='^(logout|revokeSessions|updateUser|deleteUser)$'
LAST='^(revokeSessions|updateUser|deleteUser)$'
run admin -H "Authorization: Bearer $TOKEN" --exclude-operation-id-regex "$SELF_HARM" --exclude-tag forward-auth || status=1
# The admin run tested the operations behind a token only if the token lived through it.
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/auth/admin/users" \
    || { status=1; echo "schemathesis: the admin token stopped working during the admin run" >&2; }
run admin-last -H "Authorization: Bearer $TOKEN" --include-operation-id-regex "$LAST" || status=1
run admin-logout -H "Authorization: Bearer $TOKEN" --include-operation-id logout || status=1
kill -0 "$pid" 2>/dev/null || { status=1; echo "schemathesis: gatehouse died during the run" >&2; }
if [ "$status" -ne 0 ]; then
    echo "schemathesis: the server log is in target/schemathesis/server.log" >&2
    die "the server does not conform to docs/openapi.json (see above)"
fi
echo "schemathesis: ok"
