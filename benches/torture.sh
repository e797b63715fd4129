#!/usr/bin/env bash
# Crash torture (issue 15): CYCLES cycles of SIGKILL at a random moment while a driver
# registers, logs in, refreshes, changes and resets passwords and logs out, on sled and on
# PostgreSQL; after each restart the invariants are checked against a ledger of acknowledged
# operations (benches/torture.py says which). Prints, per backend, cycles, operations and
# violations; exits non-zero on any violation.
#
# PostgreSQL at $PG (trust auth): a schema of its own, dropped on exit. BACKENDS="sled" skips
# PostgreSQL. The release binary is built unless TORTURE_BIN names one. SEED fixes the
# random choices (kill moments, operations) for a replay.
#
# Usage: benches/torture.sh   (CYCLES=1000 WORKERS=3 BACKENDS="sled postgres" SEED=
#                              PG=postgres://postgres@127.0.0.1:5432/test TORTURE_BIN=)
# .ci/run runs CYCLES=25 on the debug build (about a minute per backend).
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${CYCLES:-1000}
WORKERS=${WORKERS:-3}
BACKENDS=${BACKENDS:-sled postgres}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
if [ -z "${TORTURE_BIN:-}" ]; then
  cargo build --release --quiet --bin gatehouse
  TORTURE_BIN=target/release/gatehouse
fi
seed=()
[ -n "${SEED:-}" ] && seed=(--seed "$SEED")

tmp=$(mktemp -d /tmp/gatehouse-torture.XXXXXX)
schema="gh_torture_$$_$(date +%s)"
psql_() { psql "$PG" -v ON_ERROR_STOP=1 -qAtc "$1"; }
cleanup() {
  if [[ " $BACKENDS " == *" postgres "* ]]; then
    psql_ "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

status=0
for backend in $BACKENDS; do
  case "$backend" in
    sled) section="path = \"$tmp/store\"" ;;
    postgres)
      psql_ "CREATE SCHEMA $schema"
      section=$(printf 'backend = "postgres"\nurl = "%s?sslmode=disable&options=-csearch_path%%3D%s"\npool_size = 8' "$PG" "$schema")
      ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
  esac
  echo "== torture: $backend, $CYCLES cycles"
  python3 benches/torture.py --bin "$TORTURE_BIN" --store-section "$section" \
    --cycles "$CYCLES" --workers "$WORKERS" --label "$backend" "${seed[@]}" || status=1
done
exit $status
