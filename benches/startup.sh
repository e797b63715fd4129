#!/usr/bin/env bash
# Start-up bench (issue 15): store size on disk, start-up time (spawn -> first /readyz 200,
# median of RUNS starts) and RSS once ready, for
#
#   1. churn, before and after purging: CHURN_USERS users with one live session each and
#      DEAD revoked refresh families of ROTATIONS rotated tokens each (what logins, refreshes
#      and logouts leave behind: 700 x 10 x 13 = 91,000 dead refresh records by default, the
#      issue's torture run), measured as filled, after `Store::purge_expired`, and (sled)
#      after `gatehouse store copy` into a fresh directory, which is how a sled store gives
#      freed space back to the file system;
#   2. USERS users (default 1,000,000) with one live session each (a current and a rotated
#      refresh token), on sled and, unless PG_USERS=0, PG_USERS users on PostgreSQL.
#
# Records are written through the store's import path by benches/store_fill.rs (no HTTP,
# cheap argon2id parameters), so filling a million users takes minutes, not days.
# PostgreSQL at $PG (trust auth); each run makes its own schemas and drops them.
#
# Usage: benches/startup.sh   (USERS=1000000 PG_USERS=$USERS CHURN_USERS=700 DEAD=10
#                              ROTATIONS=12 RUNS=5 PG=postgres://postgres@127.0.0.1:5432/test)
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-1000000}
PG_USERS=${PG_USERS:-$USERS}
CHURN_USERS=${CHURN_USERS:-700}
DEAD=${DEAD:-10}
ROTATIONS=${ROTATIONS:-12}
RUNS=${RUNS:-5}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
PORT=${PORT:-18310}
# Purge as the server would: access_ttl 15m + leeway 5s + 1 + the 2 s margin.
GRACE=908

cargo build --release --quiet --bin gatehouse --bench store_fill
BIN=target/release/gatehouse
FILL=$(ls -t target/release/deps/store_fill-* | grep -v '\.d$' | head -1)
tmp=$(mktemp -d /tmp/gatehouse-startup.XXXXXX)
schemas=()
psql_() { psql "$PG" -v ON_ERROR_STOP=1 -qAtc "$1"; }
cleanup() {
  for s in "${schemas[@]}"; do psql_ "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
# config NAME STORE-SECTION: writes $tmp/NAME.toml
config() {
  cat > "$tmp/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
[upstream]
url = "http://127.0.0.1:9"
[store]
$2
[tokens]
secret = "$secret"
[log]
level = "error"
EOF
}
sled_config() { config "$1" "path = \"$tmp/$1\""; }
pg_config() {
  local schema="gh_startup_$1_$$"
  schemas+=("$schema")
  psql_ "CREATE SCHEMA $schema"
  config "$1" "$(printf 'backend = "postgres"\nurl = "%s?sslmode=disable&options=-csearch_path%%3D%s"\npool_size = 4' "$PG" "$schema")"
  echo "$schema" > "$tmp/$1.schema"
}
size() {
  if [ -f "$tmp/$1.schema" ]; then
    local schema; schema=$(cat "$tmp/$1.schema")
    psql_ "SELECT coalesce(sum(pg_total_relation_size(c.oid)),0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '$schema' AND c.relkind = 'r'"
  else
    du -sb "$tmp/$1" | cut -f1
  fi
}
mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
# row NAME LABEL: one line of the table
row() {
  local probe
  probe=$(python3 benches/startup_probe.py "$BIN" "$tmp/$1.toml" "$PORT" "$RUNS")
  printf '%-44s %10s MiB   %s\n' "$2" "$(mib "$(size "$1")")" "$probe"
}

now=$(date +%s)
echo "== 1. churn: $CHURN_USERS users, $DEAD dead families x $((ROTATIONS + 1)) refresh records each"
for backend in sled pg; do
  [ "$backend" = pg ] && [ "$PG_USERS" = 0 ] && continue
  name=churn_$backend
  "${backend}_config" "$name"
  "$FILL" fill "$tmp/$name.toml" "$CHURN_USERS" 1 "$DEAD" "$ROTATIONS" "$now"
  row "$name" "$backend churn, as filled"
  "$FILL" purge "$tmp/$name.toml" "$now" "$GRACE"
  row "$name" "$backend churn, after purge"
  if [ "$backend" = pg ]; then
    # Deleted rows leave space PostgreSQL reuses but keeps; VACUUM FULL gives it back.
    schema=$(cat "$tmp/$name.schema")
    psql_ "VACUUM FULL $schema.sessions, $schema.refresh_tokens"
    row "$name" "pg churn, after purge + VACUUM FULL"
  fi
  if [ "$backend" = sled ]; then
    sled_config churn_copy
    "$BIN" store copy --from "$tmp/$name.toml" --to "$tmp/churn_copy.toml" >/dev/null
    row churn_copy "sled churn, after purge + store copy"
  fi
done

echo "== 2. $USERS users, one live session each"
sled_config big_sled
"$FILL" fill "$tmp/big_sled.toml" "$USERS" 1 0 0 "$now"
row big_sled "sled, $USERS users"
rm -rf "$tmp/big_sled" "$tmp/churn_sled" "$tmp/churn_copy"
if [ "$PG_USERS" != 0 ]; then
  pg_config big_pg
  "$FILL" fill "$tmp/big_pg.toml" "$PG_USERS" 1 0 0 "$now"
  row big_pg "postgres, $PG_USERS users"
fi
