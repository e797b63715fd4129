#!/usr/bin/env bash
# Forward-auth under load: nginx `auth_request` asking gatehouse (deploy/forward-auth/nginx.conf
# as shipped, addresses replaced) beside nginx as a plain proxy and gatehouse as the proxy,
# in one run on this machine. Prints req/s, p50/p99 and CPU µs/request per system, and the
# ratios. See benches/forward_auth.py for what each system does.
#
# Usage: benches/forward_auth.sh [--duration S] [--conns N] [--rounds R] [--json FILE]
#        (defaults: 10 s, 50 connections, 3 rounds, median reported)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in wrk nginx taskset python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx util-linux >/dev/null
  else
    echo "need: ${missing[*]} (apt-get install wrk nginx)" >&2
    exit 1
  fi
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "needs 2 cores: the systems under test on core 0, wrk and the upstream on core 1" >&2
  exit 1
fi

cargo build --release --quiet
echo "nginx: $(nginx -v 2>&1)" >&2
echo "gatehouse: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')" >&2
exec python3 benches/forward_auth.py --bin target/release/gatehouse "$@"
