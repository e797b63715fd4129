#!/usr/bin/env bash
# Login storm: does argon2 starve the proxy path? gatehouse (2 workers, argon2 at the OWASP
# defaults, auth.password.max_concurrent = 1) in front of nginx. wrk measures a token-verified
# proxied route alone, then again while a second wrk sends wrong-password logins flat out.
# Prints proxy requests/s and p99 for both runs and the login rate.
#
# Usage: benches/login_storm.sh     (DURATION=10s CONNS=16 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
UP_PORT=18091
GH_PORT=18092

# shellcheck source=benches/lib.sh
. benches/lib.sh
start_upstream $UP_PORT

cat > "$tmp/gatehouse.toml" <<EOF
[server]
listen = "127.0.0.1:$GH_PORT"
workers = 2
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[store]
path = "$tmp/store"
[tokens]
secret = "$secret"
[auth.password]
# argon2id at the crate's OWASP defaults; one hash at a time on the blocking pool.
max_concurrent = 1
[auth.lockout]
max_failures = 0
[rate_limits]
login = "0"
register = "0"
[[routes]]
path = "/api/**"
roles = ["reader"]
[log]
level = "error"
EOF
"$BIN" serve --config "$tmp/gatehouse.toml" > "$tmp/gatehouse.log" 2>&1 &
pids+=($!)
wait_up $GH_PORT /readyz

token=$(bench_token $GH_PORT)

cat > "$tmp/login.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"email":"bench@example.com","password":"not the password"}'
wrk.headers["Content-Type"] = "application/json"
EOF

proxy_run() {
  local out; out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$GH_PORT/api/items")
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%-28s %10s req/s   p99 %s\n' "$1" "$rps" "$p99"
}

wrk -t1 -c"$CONNS" -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$GH_PORT/api/items" >/dev/null
proxy_run "proxy alone"
wrk -t1 -c32 -d"$DURATION" -s "$tmp/login.lua" "http://127.0.0.1:$GH_PORT/auth/login" > "$tmp/logins.txt" &
login_pid=$!
proxy_run "proxy during login storm"
wait $login_pid
printf '%-28s %10s logins/s (all wrong passwords, argon2id OWASP defaults)\n' "login storm" \
  "$(awk '/Requests\/sec/ {print $2}' "$tmp/logins.txt")"
