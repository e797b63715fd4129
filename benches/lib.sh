# Shared set-up for the load benches, sourced by load.sh and login_storm.sh: tools, a
# release build, a temp dir cleaned up on exit, an nginx upstream that answers a small 200,
# a fresh token secret, and readiness polling.

for tool in wrk nginx curl python3; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx curl >/dev/null
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

# start_upstream PORT [taskset-cpu-list]: nginx answering {"ok":true} on 127.0.0.1:PORT.
start_upstream() {
  cat > "$tmp/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$1;
    keepalive_requests 10000000;
    location / { default_type application/json; return 200 '{"ok":true}'; }
  }
}
NGINX
  if [ -n "${2:-}" ]; then taskset -c "$2" nginx -c "$tmp/nginx.conf" & else nginx -c "$tmp/nginx.conf" & fi
  pids+=($!)
}

# wait_up PORT PATH: poll until it answers 2xx.
wait_up() {
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "port $1 never came up" >&2; exit 1
}

# bench_token PORT: registers a user and prints its access token.
bench_token() {
  curl -fs -XPOST "http://127.0.0.1:$1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"correct horse battery"}' >/dev/null
  curl -fs -XPOST "http://127.0.0.1:$1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"correct horse battery"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
