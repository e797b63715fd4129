#!/usr/bin/env bash
# Soak (issue 15): SOAK_SECONDS (default 1800) of mixed load on one gatehouse (sled store,
# production argon2id parameters): proxy traffic to an upstream that injects 500s (~2%,
# marked) and answers some requests slowly, logins keeping the argon2 permits busy,
# refreshes and logouts, forgot-password mail through an SMTP sink that refuses half of the
# mails, WebSocket connections opened and closed through the proxy, and slow clients.
# Every 10 s: RSS, open fds, threads, open connections and proxy p99, printed as a table.
# Access tokens live 2 minutes and the store is purged every minute, so the state that is
# legitimately kept for a while is at its steady size well within the warm-up.
# Judged by benches/soak.py (flat after warm-up, no 5xx but the injected ones); exit 1
# otherwise. Writes OUT/soak.json, OUT/soak.txt and OUT/soak.png (matplotlib, installed in a
# venv under target/soak-venv).
#
# Usage: benches/soak.sh   (SOAK_SECONDS=1800 OUT=target/soak)
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-1800}
OUT=${OUT:-target/soak}
mkdir -p "$OUT"

cargo build --release --quiet --bin gatehouse
BIN=target/release/gatehouse
VENV=target/soak-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'matplotlib==3.9.*'
fi

tmp=$(mktemp -d /tmp/gatehouse-soak.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); SMTP=$(port); GH=$(port)

python3 benches/soak.py upstream "$UP" & pids+=($!)
python3 benches/soak.py smtp "$SMTP" & pids+=($!)
cat > "$tmp/gatehouse.toml" <<EOF
[server]
listen = "127.0.0.1:$GH"
public_url = "http://127.0.0.1:$GH"
[upstream]
url = "http://127.0.0.1:$UP"
[store]
path = "$tmp/store"
# Short lifetimes, so that everything that is kept for a while (revocations in the cache,
# revoked sessions in the store until purged) reaches its steady state within the warm-up
# and the rest of the run judges a plateau, not a horizon still filling up.
purge_interval = "1m"
[tokens]
secret = "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
access_ttl = "2m"
[auth]
forgot_cooldown = "5s"
[auth.lockout]
max_failures = 0
[email]
mode = "smtp"
smtp_url = "smtp://127.0.0.1:$SMTP"
[rate_limits]
login = "0"
register = "0"
refresh = "0"
forgot_password = "0"
proxy = "0"
[[routes]]
path = "/api/**"
access = "authenticated"
[log]
level = "error"
EOF
env -u GATEHOUSE_CONFIG ${SOAK_SERVER_ENV:-} "$BIN" serve --config "$tmp/gatehouse.toml" > "$tmp/gatehouse.log" 2>&1 &
gh_pid=$!; pids+=($gh_pid)
for _ in $(seq 1 200); do
  curl -fs "http://127.0.0.1:$GH/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done

status=0
python3 benches/soak.py load "$GH" "$gh_pid" "$SOAK_SECONDS" "$OUT/soak.json" | tee "$OUT/soak.txt" || status=1
"$VENV/bin/python" benches/soak_plot.py "$OUT/soak.json" "$OUT/soak.png"
echo "plot: $OUT/soak.png"
if ! kill -0 "$gh_pid" 2>/dev/null; then
  echo "gatehouse died during the soak:"; tail -20 "$tmp/gatehouse.log"; status=1
fi
exit $status
