#!/usr/bin/env bash
# Instructions per proxied request, under valgrind --tool=callgrind: a figure that does not
# depend on the machine's noise (the same binary and inputs give the same count, whatever
# else the machine is doing), for comparing gatehouse before and after a change.
#
# gatehouse (release build, one worker) runs under callgrind in front of an nginx upstream
# twice: once serving N1 requests, once N2, each on one keep-alive connection. The
# difference of the two totals over N2 - N1 is the cost of one request with start-up,
# shutdown and the first connection's set-up cancelled out. Two scenarios: a public route
# (no token) and a verified token on a role route (HS256, revocation, policy, identity
# headers, the per-IP proxy rate limit).
#
# The same is measured for nginx as a plain proxy and for HAProxy with jwt_verify (the
# claim checks of benches/compare.sh), so the figures compare across systems too; valgrind
# counts every instruction the process runs in user space, libraries included.
#
# Usage: benches/callgrind.sh [N1 N2]    (defaults 200 1200)
#        KEEP=dir benches/callgrind.sh   keeps the callgrind.out files for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${1:-200}
N2=${2:-1200}

for tool in valgrind nginx haproxy curl python3; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nginx haproxy curl >/dev/null
    else
      echo "need $tool" >&2; exit 1
    fi
  fi
done

cargo build --release --quiet
BIN=target/release/gatehouse
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

UP=$(free_port)
cat > "$tmp/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
master_process off;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$UP;
    keepalive_requests 10000000;
    location / { default_type application/json; return 200 '{"ok":true}'; }
  }
}
NGINX
nginx -c "$tmp/nginx.conf" & pids+=($!)

wait_up() {
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "port $1 never came up" >&2; exit 1
}

config() { # NAME PORT POLICY
  cat <<TOML
[server]
listen = "127.0.0.1:$2"
workers = 1
[upstream]
url = "http://127.0.0.1:$UP"
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
proxy = "1000000/1s"
[log]
level = "warn"
access = false
$3
TOML
}
PROTECTED='[roles]
admin = { inherits = ["creator"] }
creator = { inherits = ["reader"] }
[[routes]]
path = "/api/admin/**"
roles = ["admin"]
[[routes]]
path = "/api/**"
roles = ["reader"]'
config public 0 '[policy]
default = "public"' > "$tmp/public.toml"
config verified 0 "$PROTECTED" > "$tmp/verified.toml"

wait_up "$UP" /

# A token minted by a plain (not valgrind) run on the same store and secret.
PORT=$(free_port)
config verified "$PORT" "$PROTECTED" > "$tmp/mint.toml"
"$BIN" serve --config "$tmp/mint.toml" > "$tmp/mint.log" 2>&1 & mint=$!
wait_up "$PORT" /readyz
curl -fs -XPOST "http://127.0.0.1:$PORT/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"correct horse battery"}' >/dev/null
TOKEN=$(curl -fs -XPOST "http://127.0.0.1:$PORT/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"correct horse battery"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
kill "$mint"; wait "$mint" 2>/dev/null || true

# drive PORT N NAME: N sequential requests on one keep-alive connection, all must be 200.
drive() {
  python3 - "$1" "$2" "$TOKEN" "$3" <<'PY'
import http.client, sys
port, n, token, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
headers = {} if name in ("public", "nginx") else {"Authorization": f"Bearer {token}"}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    c.request("GET", "/api/items", headers=headers)
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{name}: status {r.status}: {body[:300]!r}")
PY
}

# A peer's config for PORT: nginx proxying to the upstream, or HAProxy checking the token.
peer_config() { # NAME PORT
  case $1 in
    nginx) cat <<NGINX
worker_processes 1;
daemon off;
master_process off;
pid $tmp/peer-$2.pid;
error_log $tmp/peer-$2.err;
events { worker_connections 1024; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 16; }
  server {
    listen 127.0.0.1:$2;
    keepalive_requests 10000000;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
    ;;
    haproxy) cat <<HAP
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  http-request deny status 401 unless { req.hdr(authorization) -m beg "Bearer " }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny status 401 unless { var(txn.alg) -m str HS256 }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str gatehouse }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str api }
  http-request set-var(txn.now) date()
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.exp','int'),sub(txn.now) -m int gt 0 }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.nbf','int'),sub(txn.now) -m int le 0 }
  http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$secret") -m int 1 }
  http-request set-header X-Auth-User-Id %[var(txn.bearer),jwt_payload_query('\$.sub')]
  http-request set-header X-Auth-Email %[var(txn.bearer),jwt_payload_query('\$.email')]
  http-request del-header Authorization
  default_backend be
backend be
  server up 127.0.0.1:$UP
HAP
    ;;
  esac
}

# measure NAME N -> total instructions (Ir) of a run serving N requests
measure() {
  local name=$1 n=$2 port; port=$(free_port)
  local cmd ready
  case $name in
    public|verified)
      sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$tmp/$name.toml" > "$tmp/$name-$n.toml"
      cmd=("$BIN" serve --config "$tmp/$name-$n.toml"); ready=/healthz ;;
    nginx)
      peer_config nginx "$port" > "$tmp/nginx-$n.conf"
      cmd=(nginx -c "$tmp/nginx-$n.conf"); ready=/ ;;
    haproxy)
      peer_config haproxy "$port" > "$tmp/haproxy-$n.cfg"
      cmd=(haproxy -db -f "$tmp/haproxy-$n.cfg"); ready= ;;
  esac
  # Instrumentation starts once the server answers: start-up work is not the figure, and
  # a thread spinning on another's first use of a global (sled's Lazy) burns a random
  # number of instructions under valgrind, which serialises threads.
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/callgrind.$name.$n" \
    "${cmd[@]}" > "$tmp/$name-$n.log" 2>&1 &
  local vg=$!
  if [ -n "$ready" ]; then
    wait_up "$port" "$ready"
  else
    for _ in $(seq 1 600); do
      python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
      sleep 0.1
    done
  fi
  callgrind_control --instr=on "$vg" >/dev/null
  drive "$port" "$n" "$name" >&2
  kill -TERM "$vg"; wait "$vg" || true
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$tmp/callgrind.$name.$n" "$KEEP/"
  awk '/^summary:|^totals:/ {print $2; exit}' "$tmp/callgrind.$name.$n"
}

echo "user-space instructions per request (callgrind, ($N2 - $N1) requests on one keep-alive connection)"
for name in ${SYSTEMS:-public verified nginx haproxy}; do
  a=$(measure "$name" "$N1")
  b=$(measure "$name" "$N2")
  label=$(case $name in
    public) echo "gatehouse, public route" ;;
    verified) echo "gatehouse, verified token" ;;
    nginx) echo "nginx, plain proxy" ;;
    haproxy) echo "HAProxy jwt_verify" ;;
  esac)
  python3 -c "print(f'  {\"$label\":<28} {($b - $a) / ($N2 - $N1):>10,.0f}')"
done
