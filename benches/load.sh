#!/usr/bin/env bash
# Load bench: in one run, wrk drives
#   1. the upstream directly (nginx returning a small 200),
#   2. gatehouse in front of it with every route public (a bare proxy),
#   3. gatehouse verifying a bearer token on a role-protected route,
# and prints requests/s, p99 latency, gatehouse CPU per request, and the ratios.
#
# gatehouse runs with one worker pinned to core 0; nginx and wrk share core 1. CPU per
# request is gatehouse's own user+system time (from /proc) divided by the requests served.
# Peers (nginx, HAProxy) are only comparable when measured in the same run on the same
# machine; this script measures gatehouse and the bare upstream, nothing else.
#
# Usage: benches/load.sh            (DURATION=10s CONNS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
UP_PORT=18081
PUB_PORT=18082
PROT_PORT=18083

# shellcheck source=benches/lib.sh
. benches/lib.sh
start_upstream $UP_PORT 1

common() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
workers = 1
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[store]
path = "$tmp/store-$1"
[tokens]
secret = "$secret"
[auth.password]
memory_kib = 1024
iterations = 1
[rate_limits]
login = "0"
register = "0"
[log]
level = "warn"
EOF
}
{ common $PUB_PORT; printf '[policy]\ndefault = "public"\n'; } > "$tmp/public.toml"
{ common $PROT_PORT; cat <<'EOF'
[roles]
admin = { inherits = ["creator"] }
creator = { inherits = ["reader"] }
[[routes]]
path = "/public/**"
access = "public"
[[routes]]
path = "/api/admin/**"
roles = ["admin"]
[[routes]]
path = "/api/**"
methods = ["POST", "PUT", "PATCH", "DELETE"]
roles = ["creator"]
[[routes]]
path = "/api/**"
roles = ["reader"]
EOF
} > "$tmp/protected.toml"

taskset -c 0 "$BIN" serve --config "$tmp/public.toml" > "$tmp/public.log" 2>&1 &
pub_pid=$!; pids+=($pub_pid)
taskset -c 0 "$BIN" serve --config "$tmp/protected.toml" > "$tmp/protected.log" 2>&1 &
prot_pid=$!; pids+=($prot_pid)

wait_up $UP_PORT /
wait_up $PUB_PORT /readyz
wait_up $PROT_PORT /readyz

token=$(bench_token $PROT_PORT)
curl -fs "http://127.0.0.1:$PROT_PORT/api/items" -H "authorization: Bearer $token" >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

# run NAME URL PID [HEADER] -> prints a line and sets RPS, P99 (ms), CPU (µs/request)
run() {
  local name=$1 url=$2 pid=$3 header=${4:-}
  local args=(-t1 -c"$CONNS" -d"$DURATION" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  # Warm up pools and caches.
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s ${header:+-H "$header"} "$url" >/dev/null
  local before=0 after=0
  [ "$pid" != 0 ] && before=$(cpu_ticks "$pid")
  local out; out=$(taskset -c 1 wrk "${args[@]}" "$url")
  [ "$pid" != 0 ] && after=$(cpu_ticks "$pid")
  RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  P99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  CPU="-"
  if [ "$pid" != 0 ]; then
    CPU=$(python3 -c "print(f'{($after-$before)/$tck*1e6/$reqs:.1f}')")
  fi
  printf '%-34s %10s req/s   p99 %7s ms   gatehouse CPU %6s us/req%s\n' \
    "$name" "$RPS" "$P99" "$CPU" "${non2xx:+   NON-2xx: $non2xx}"
}

echo "wrk -t1 -c$CONNS -d$DURATION; gatehouse: 1 worker on core 0; nginx + wrk on core 1"
run "upstream direct (nginx)" "http://127.0.0.1:$UP_PORT/api/items" 0
up_rps=$RPS; up_p99=$P99
run "gatehouse, public route" "http://127.0.0.1:$PUB_PORT/api/items" $pub_pid
pub_rps=$RPS; pub_p99=$P99; pub_cpu=$CPU
run "gatehouse, token on role route" "http://127.0.0.1:$PROT_PORT/api/items" $prot_pid "Authorization: Bearer $token"
prot_rps=$RPS; prot_p99=$P99; prot_cpu=$CPU

python3 - <<EOF
up, pub, prot = $up_rps, $pub_rps, $prot_rps
print(f"throughput: public/direct {pub/up:.2f}, verified/public {prot/pub:.2f} (verification costs {100*(1-prot/pub):.1f}% of throughput)")
print(f"p99: verified - public = {($prot_p99 - $pub_p99)*1000:.0f} us")
print(f"CPU per request: public {float('$pub_cpu'):.1f} us, verified {float('$prot_cpu'):.1f} us")
EOF
