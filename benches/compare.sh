#!/usr/bin/env bash
# gatehouse beside its peers, in one run on this machine: the upstream directly, nginx as a
# plain proxy, HAProxy with jwt_verify, gatehouse public, gatehouse verifying an HS256 token,
# gatehouse verifying an EdDSA token (key from `gatehouse keys generate`), and the same
# EdDSA set-up also sending the upstream a signed identity (headers.assertion).
# Prints req/s, p50/p99, CPU µs/request and RSS per system, and the ratios. See
# benches/compare.py for what each system does and how each figure is taken.
#
# Usage: benches/compare.sh [--duration S] [--conns N] [--rounds R] [--json FILE]
#        (defaults: 10 s, 50 connections, 3 rounds, median reported)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in wrk nginx haproxy taskset python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx haproxy util-linux >/dev/null
  else
    echo "need: ${missing[*]} (apt-get install wrk nginx haproxy)" >&2
    exit 1
  fi
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "needs 2 cores: the system under test on core 0, wrk and the upstream on core 1" >&2
  exit 1
fi

cargo build --release --quiet
echo "haproxy: $(haproxy -v | head -1)" >&2
echo "nginx: $(nginx -v 2>&1)" >&2
echo "gatehouse: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')" >&2
exec python3 benches/compare.py --bin target/release/gatehouse "$@"
