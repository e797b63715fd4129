#!/usr/bin/env bash
# Replicas bench (issue 9): what a shared PostgreSQL store costs and what it buys, on loopback.
#
#   1. revocation propagation: three `gatehouse serve` replicas on one PostgreSQL schema;
#      ROUNDS times a user logs in on A and out again, and B's and C's proxy paths are polled
#      (keep-alive, back to back) until they answer 401 TOKEN_REVOKED. Delay = from the
#      logout's 200 on A to each probe's first 401; p50/p99/max over both probes.
#   2. login throughput: one gatehouse on sled, one on PostgreSQL, argon2id at the same
#      (production, OWASP default) parameters, each pinned to core 0 with one worker;
#      LOGIN_CLIENTS clients log in flat out for LOGIN_SECONDS, round-robin over LOGIN_USERS
#      accounts. Hashing is the bottleneck, so the two should match.
#   3. proxy path: wrk (core 1) against each of the two, a token-verified route, the same
#      nginx upstream (core 1). The proxy path never touches the store, so they should match.
#
# Starts and stops everything it uses (nginx, gatehouses, two PostgreSQL schemas in the
# `test` database, dropped on exit). Needs PostgreSQL at $PG (trust auth); installs wrk and
# nginx with apt-get when missing (see lib.sh). About 1.5 minutes after the release build.
#
# Usage: benches/replicas.sh   (ROUNDS=200 LOGIN_SECONDS=10 LOGIN_CLIENTS=4 LOGIN_USERS=32
#                               DURATION=10s CONNS=32 PG=postgres://postgres@127.0.0.1:5432/test)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-200}
LOGIN_SECONDS=${LOGIN_SECONDS:-10}
LOGIN_CLIENTS=${LOGIN_CLIENTS:-4}
LOGIN_USERS=${LOGIN_USERS:-32}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
UP_PORT=18100
A_PORT=18101
B_PORT=18102
C_PORT=18103
SLED_PORT=18104
PGG_PORT=18105

command -v psql >/dev/null || { echo "need psql" >&2; exit 1; }
# shellcheck source=benches/lib.sh
. benches/lib.sh
DRIVER="python3 benches/replicas_driver.py"

psql_() { psql "$PG" -v ON_ERROR_STOP=1 -qAtc "$1"; }
suffix="$$_$(date +%s)"
schemas=("gh_bench_replicas_$suffix" "gh_bench_login_$suffix")
bench_cleanup() {
  cleanup
  for s in "${schemas[@]}"; do psql_ "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done
}
trap bench_cleanup EXIT
for s in "${schemas[@]}"; do psql_ "CREATE SCHEMA $s"; done
store_pg() { printf 'backend = "postgres"\nurl = "%s?sslmode=disable&application_name=gh_bench&options=-csearch_path%%3D%s"\npool_size = 8\n' "$PG" "$1"; }

# config PORT STORE-SECTION PASSWORD-SECTION
config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
workers = 1
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[store]
$2
[tokens]
secret = "$secret"
[auth.password]
$3
[auth.lockout]
max_failures = 0
[rate_limits]
login = "0"
register = "0"
refresh = "0"
[[routes]]
path = "/api/**"
roles = ["reader"]
[log]
level = "error"
EOF
}
CHEAP=$'memory_kib = 1024\niterations = 1\nparallelism = 1'
OWASP='# argon2id at the crate'"'"'s OWASP defaults (19 MiB, 2 passes, 1 lane)'

start_upstream $UP_PORT 1
wait_up $UP_PORT /

# ---- 1. revocation propagation across three replicas
replica_pids=()
for port in $A_PORT $B_PORT $C_PORT; do
  config $port "$(store_pg "${schemas[0]}")" "$CHEAP" > "$tmp/replica-$port.toml"
  "$BIN" serve --config "$tmp/replica-$port.toml" > "$tmp/replica-$port.log" 2>&1 &
  pids+=($!); replica_pids+=($!)
done
for port in $A_PORT $B_PORT $C_PORT; do wait_up $port /readyz; done
echo "1/3 revocation propagation: $ROUNDS logouts on A, B and C polled..." >&2
prop=$($DRIVER propagation $A_PORT "$B_PORT,$C_PORT" "$ROUNDS")
for p in "${replica_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done

# ---- 2. login throughput, sled vs PostgreSQL, same argon2 parameters
config $SLED_PORT "path = \"$tmp/sled-store\"" "$OWASP" > "$tmp/sled.toml"
config $PGG_PORT "$(store_pg "${schemas[1]}")" "$OWASP" > "$tmp/pg.toml"
taskset -c 0 "$BIN" serve --config "$tmp/sled.toml" > "$tmp/sled.log" 2>&1 &
pids+=($!)
taskset -c 0 "$BIN" serve --config "$tmp/pg.toml" > "$tmp/pg.log" 2>&1 &
pids+=($!)
wait_up $SLED_PORT /readyz
wait_up $PGG_PORT /readyz
declare -A logins
for backend in sled pg; do
  port=$SLED_PORT; [ $backend = pg ] && port=$PGG_PORT
  echo "2/3 login throughput on $backend: $LOGIN_CLIENTS clients for ${LOGIN_SECONDS}s..." >&2
  taskset -c 1 $DRIVER register $port "$LOGIN_USERS"
  logins[$backend]=$(taskset -c 1 $DRIVER logins $port "$LOGIN_USERS" "$LOGIN_CLIENTS" "$LOGIN_SECONDS")
done

# ---- 3. proxy path through each, wrk on core 1
declare -A rps p99 non2xx
for backend in sled pg; do
  port=$SLED_PORT; [ $backend = pg ] && port=$PGG_PORT
  echo "3/3 proxy path on $backend: wrk -c$CONNS for $DURATION..." >&2
  token=$(bench_token $port)
  url="http://127.0.0.1:$port/api/items"
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H "Authorization: Bearer $token" "$url" >/dev/null
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $token" "$url")
  rps[$backend]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99[$backend]=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx[$backend]=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
done

# ---- the table
field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(f"{v:.1f}" if isinstance(v,float) else v)' "$1" "$2"; }
pgver=$(psql_ "SHOW server_version" | cut -d' ' -f1)
echo
echo "gatehouse replicas bench — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, release build, PostgreSQL $pgver on 127.0.0.1, loopback only"
echo
printf '%-52s %16s %16s\n' "" "sled" "postgres"
printf '%-52s %16s %16s\n' "revocation propagation, A → B,C (ms) p50" "—" "$(field "$prop" p50_ms)"
printf '%-52s %16s %16s\n' "                                     p99" "—" "$(field "$prop" p99_ms)"
printf '%-52s %16s %16s\n' "                                     max" "—" "$(field "$prop" max_ms)"
printf '%-52s %16s %16s\n' "login throughput (logins/s)" "$(field "${logins[sled]}" per_sec)" "$(field "${logins[pg]}" per_sec)"
printf '%-52s %16s %16s\n' "login latency p50 / p99 (ms)" \
  "$(field "${logins[sled]}" p50_ms) / $(field "${logins[sled]}" p99_ms)" \
  "$(field "${logins[pg]}" p50_ms) / $(field "${logins[pg]}" p99_ms)"
printf '%-52s %16s %16s\n' "proxy path, token verified (req/s)" "${rps[sled]}" "${rps[pg]}"
printf '%-52s %16s %16s\n' "proxy path p99" "${p99[sled]}" "${p99[pg]}"
echo
echo "propagation: $(field "$prop" samples) samples = $ROUNDS logouts on replica A x 2 probed replicas (B, C), 3 replicas"
echo "  of \`gatehouse serve\` on one PostgreSQL schema; delay = logout's 200 on A → first 401 TOKEN_REVOKED"
echo "  on the probe's proxy path, probes back to back on keep-alive connections (resolution ≈ 0.5 ms)."
echo "  The contract: under 1 s (LISTEN/NOTIFY; a 250 ms poll is the floor should a notification be lost)."
echo "logins: argon2id OWASP defaults for both, gatehouse pinned to core 0 (1 worker), $LOGIN_CLIENTS clients on core 1,"
echo "  ${LOGIN_SECONDS}s each, round-robin over $LOGIN_USERS accounts; successes $(field "${logins[sled]}" logins) (sled) /"
echo "  $(field "${logins[pg]}" logins) (postgres), errors $(field "${logins[sled]}" errors) / $(field "${logins[pg]}" errors)."
echo "proxy: wrk -t1 -c$CONNS -d$DURATION on core 1, GET /api/items with a bearer token (verify + revocation check +"
echo "  role rule), nginx upstream on core 1; non-2xx: ${non2xx[sled]:-0} (sled) / ${non2xx[pg]:-0} (postgres)."
