#!/usr/bin/env python3
"""Side-by-side proxy benchmark, driven by benches/compare.sh.

In one run, on one machine, against the same nginx upstream, wrk drives:

  upstream      the upstream directly (nginx answering a small JSON 200)
  nginx         nginx as a plain reverse proxy, no auth (keep-alive upstream pool)
  haproxy       HAProxy with `jwt_verify` (HS256) plus the claim checks gatehouse makes:
                alg, iss, aud, exp, nbf; identity headers from the payload
  gatehouse-public    gatehouse with every route public (no token)
  gatehouse-verified  gatehouse verifying the bearer token on a role-protected route
                      (signature, iss/aud/exp/nbf/typ, revocation, role policy, identity
                      headers, a per-IP rate limit that never trips)
  gatehouse-eddsa     the same, with tokens signed by an Ed25519 key made by
                      `gatehouse keys generate` (tokens.algorithm = "EdDSA")
  gatehouse-eddsa-assertion
                      the same EdDSA set-up also sending the upstream a signed identity
                      (headers.assertion = "X-Auth-Assertion", cached per identity)

Each system under test gets one worker on core 0; wrk and the upstream share core 1.
Every system is measured `--rounds` times, interleaved, and the median round is reported:
requests/s, p50 and p99 latency (wrk --latency), CPU per request (user + system ticks of
every process of the system, from /proc/PID/stat, over the requests wrk completed) and
RSS (VmRSS after the rounds, VmHWM for the peak, summed over the system's processes).

Before the rounds, gatehouse-verified serves 100 logins with the default (OWASP) argon2id
parameters, so its RSS figures include whatever hashing left behind.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port, path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status < 300:
                    return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"port {port} never answered {path}")


# The verified system's policy: roles and a role-protected route, as an API would have them.
VERIFIED_POLICY = """[roles]
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
"""


def gatehouse_config(tmp, name, port, upstream_port, secret, extra, tokens=None):
    """Writes TMP/NAME.toml: one worker, a sled store in TMP, rate limits that never trip.
    `tokens` replaces the [tokens] section's body (HS256 under `secret` by default)."""
    path = os.path.join(tmp, f"{name}.toml")
    tokens = tokens or f'secret = "{secret}"'
    with open(path, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{port}"
workers = 1
[upstream]
url = "http://127.0.0.1:{upstream_port}"
[store]
path = "{tmp}/store-{name}"
[tokens]
{tokens}
[rate_limits]
login = "0"
register = "0"
proxy = "1000000/1s"
[log]
level = "warn"
access = false
{extra}
"""
        )
    return path


def children(pid):
    """pid and all its descendants (nginx's master forks its worker)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    out += children(int(c))
    except FileNotFoundError:
        pass
    return out


def cpu_ticks(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def status_kib(pids, key):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def parse_ms(v):
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * factor
    return float(v)


def wrk(url, duration, conns, header=None):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    if header:
        cmd += ["-H", header]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    res = {"non2xx": 0, "errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("Requests/sec"):
            res["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            res["p50"] = parse_ms(parts[1])
        elif parts[:1] == ["99%"]:
            res["p99"] = parse_ms(parts[1])
        elif "requests in" in line:
            res["requests"] = int(parts[0])
        elif "Non-2xx" in line:
            res["non2xx"] = int(parts[-1])
        elif line.strip().startswith("Socket errors"):
            res["errors"] = sum(int(x.strip(",")) for x in parts[3::2])
    return res


class System:
    def __init__(self, name, url, pid=None, header=None):
        self.name, self.url, self.pid, self.header = name, url, pid, header
        self.rounds = []

    def pids(self):
        return children(self.pid) if self.pid else []


class Processes:
    """The processes a bench starts, each pinned to a core with its output in `tmp`; all
    stopped (SIGTERM, then SIGKILL after 10 s) and `tmp` removed on `stop`."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def spawn(self, cmd, cpu, log, env=None):
        p = subprocess.Popen(
            ["taskset", "-c", str(cpu)] + cmd,
            stdout=open(os.path.join(self.tmp, log), "w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def nginx_conf(tmp, name, body):
    """A one-worker, foreground nginx config around `body` (the inside of `http {}`)."""
    path = os.path.join(tmp, f"{name}.conf")
    with open(path, "w") as f:
        f.write(
            f"""worker_processes 1;
daemon off;
master_process off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  {body}
}}
"""
        )
    return path


def upstream_server(up):
    """The upstream every system forwards to: nginx answering a small JSON 200."""
    return f"""server {{
    listen 127.0.0.1:{up} reuseport;
    keepalive_requests 10000000;
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
  }}"""


def plain_proxy(port, up):
    """nginx as a plain reverse proxy to the upstream, no auth: the floor."""
    return f"""upstream up {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 10000000;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}"""


def check_token(port, token, what, refusals=(401,)):
    """`what` on `port` allows the token on the role route and refuses a forged one."""
    url = f"http://127.0.0.1:{port}/api/items"
    ok = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(ok, timeout=5) as r:
        if r.status != 200:
            sys.exit(f"{what} refused the bench token: {r.status}")
    forged = token[: token.rindex(".") + 1] + ("A" * 43)
    try:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {forged}"}), timeout=5)
        sys.exit(f"{what} accepted a forged token: its config is wrong")
    except urllib.error.HTTPError as e:
        if e.code not in refusals:
            sys.exit(f"{what} answered {e.code} to a forged token")


def bench_main(prefix, run, logins=False):
    """Parses the common options, runs `run(args, tmp, spawn)` and stops every process."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/gatehouse")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    if logins:
        ap.add_argument("--logins", type=int, default=100)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix=prefix)
    processes = Processes(tmp)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        run(args, tmp, processes.spawn)
    finally:
        processes.stop()


def main():
    bench_main("gatehouse-compare-", run, logins=True)


def eddsa_tokens(bin, tmp):
    """A [tokens] section body for EdDSA, its key written by `gatehouse keys generate` as an
    operator would make it."""
    key = os.path.join(tmp, "ed25519.pem")
    kid = subprocess.run(
        [bin, "keys", "generate", "--algorithm", "EdDSA", "--out", key],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f'algorithm = "EdDSA"\n[[tokens.keys]]\nkid = "{kid}"\nprivate_key = "{key}"'


def run(args, tmp, spawn):
    secret = os.urandom(36).hex()
    up, ngx, hap, pub, ver, ed, eda = (free_port() for _ in range(7))

    upstream_conf = nginx_conf(tmp, "upstream", upstream_server(up))
    spawn(["nginx", "-c", upstream_conf], 1, "upstream.log")

    proxy_conf = nginx_conf(tmp, "nginx", plain_proxy(ngx, up))
    nginx = spawn(["nginx", "-c", proxy_conf], 0, "nginx.log")

    # HAProxy: the same checks gatehouse makes on its own tokens, in the order a careful
    # operator writes them (cheap claim checks first, the signature last), and the identity
    # headers from the payload. `date()` is the current time for exp/nbf.
    hap_conf = os.path.join(tmp, "haproxy.cfg")
    with open(hap_conf, "w") as f:
        f.write(
            f"""global
  nbthread 1
  maxconn 4096
  tune.bufsize 16384
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{hap}
  http-request deny status 401 unless {{ req.hdr(authorization) -m beg "Bearer " }}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny status 401 unless {{ var(txn.alg) -m str HS256 }}
  http-request deny status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str gatehouse }}
  http-request deny status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str api }}
  http-request set-var(txn.now) date()
  http-request deny status 401 unless {{ var(txn.bearer),jwt_payload_query('$.exp','int'),sub(txn.now) -m int gt 0 }}
  http-request deny status 401 unless {{ var(txn.bearer),jwt_payload_query('$.nbf','int'),sub(txn.now) -m int le 0 }}
  http-request deny status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{secret}") -m int 1 }}
  http-request set-header X-Auth-User-Id %[var(txn.bearer),jwt_payload_query('$.sub')]
  http-request set-header X-Auth-Email %[var(txn.bearer),jwt_payload_query('$.email')]
  http-request del-header Authorization
  default_backend be
backend be
  server up 127.0.0.1:{up}
"""
        )
    haproxy = spawn(["haproxy", "-f", hap_conf, "-db"], 0, "haproxy.log")

    def gh_conf(name, port, extra):
        return gatehouse_config(tmp, name, port, up, secret, extra)

    public = spawn(
        [args.bin, "serve", "--config", gh_conf("public", pub, '[policy]\ndefault = "public"')],
        0,
        "public.log",
    )
    verified = spawn(
        [
            args.bin,
            "serve",
            "--config",
            gh_conf(
                "verified",
                ver,
                VERIFIED_POLICY,
            ),
        ],
        0,
        "verified.log",
    )
    # EdDSA: the same policy, tokens signed with an Ed25519 key; then the same again, also
    # sending the upstream the signed identity. Both share one key file, each its own store.
    eddsa = eddsa_tokens(args.bin, tmp)
    eddsa_verified = spawn(
        [args.bin, "serve", "--config", gatehouse_config(tmp, "eddsa", ed, up, secret, VERIFIED_POLICY, eddsa)],
        0,
        "eddsa.log",
    )
    assertion = '[headers]\nassertion = "X-Auth-Assertion"\n' + VERIFIED_POLICY
    eddsa_assertion = spawn(
        [args.bin, "serve", "--config", gatehouse_config(tmp, "eddsa-assertion", eda, up, secret, assertion, eddsa)],
        0,
        "eddsa-assertion.log",
    )
    for port, path in ((up, "/"), (ngx, "/"), (pub, "/readyz"), (ver, "/readyz"), (ed, "/readyz"), (eda, "/readyz")):
        wait_up(port, path)
    time.sleep(0.3)  # HAProxy has no readiness endpoint; its bind is synchronous at start

    token = login(ver, args.logins)
    # A reader role so the role route allows the token.
    assert_ok(ver, token)
    header = f"Authorization: Bearer {token}"
    # One login each: the EdDSA systems are measured for their verify path, not for what
    # argon2 leaves in memory.
    ed_token = login(ed, 1)
    assert_ok(ed, ed_token)
    eda_token = login(eda, 1)
    assert_ok(eda, eda_token)
    for port, t in ((ed, ed_token), (eda, eda_token)):
        if jwt_alg(t) != "EdDSA":
            sys.exit(f"port {port} signed its token with {jwt_alg(t)}, not EdDSA")
    # And refuses a forged one, so the comparison is with a real check.
    check_token(hap, token, "haproxy", refusals=(401, 403))

    systems = [
        System("upstream direct (nginx)", f"http://127.0.0.1:{up}/api/items"),
        System("nginx, plain proxy, no auth", f"http://127.0.0.1:{ngx}/api/items", nginx.pid),
        System("HAProxy jwt_verify", f"http://127.0.0.1:{hap}/api/items", haproxy.pid, header),
        System("gatehouse, public route", f"http://127.0.0.1:{pub}/api/items", public.pid),
        System("gatehouse, verified token", f"http://127.0.0.1:{ver}/api/items", verified.pid, header),
        System("gatehouse, verified EdDSA token", f"http://127.0.0.1:{ed}/api/items", eddsa_verified.pid, f"Authorization: Bearer {ed_token}"),
        System(
            "gatehouse, verified EdDSA token + assertion",
            f"http://127.0.0.1:{eda}/api/items",
            eddsa_assertion.pid,
            f"Authorization: Bearer {eda_token}",
        ),
    ]
    for s in systems:  # warm pools and caches
        wrk(s.url, 2, args.conns, s.header)
    for r in range(args.rounds):
        for s in systems:
            pids = s.pids()
            before = cpu_ticks(pids)
            res = wrk(s.url, args.duration, args.conns, s.header)
            after = cpu_ticks(pids)
            if pids and res["requests"]:
                res["cpu_us"] = (after - before) / CLK_TCK * 1e6 / res["requests"]
            s.rounds.append(res)
            print(f"  round {r + 1} {s.name}: {res['rps']:.0f} req/s, p99 {res['p99']:.2f} ms", file=sys.stderr)

    report(systems, args)


def jwt_alg(token):
    """The `alg` of a compact JWT's header."""
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["alg"]


def login(port, count):
    email, password = "bench@example.com", "correct horse battery staple"
    post(port, "/auth/register", {"email": email, "password": password})
    token = None
    for _ in range(count):
        token = post(port, "/auth/login", {"email": email, "password": password})["access_token"]
    return token


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def assert_ok(port, token):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/items", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status == 200:
                return
    except urllib.error.HTTPError as e:
        sys.exit(f"gatehouse refused the bench token: {e.code} {e.read()!r}")


def report(systems, args):
    rows = {}
    print(
        f"\nwrk -t1 -c{args.conns} -d{args.duration}s, median of {args.rounds} rounds; "
        "each system one worker on core 0, wrk and the upstream on core 1\n"
    )
    print("| system | req/s | CPU µs/request | p50 ms | p99 ms | RSS after | peak RSS | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in systems:
        med = sorted(s.rounds, key=lambda r: r["rps"])[len(s.rounds) // 2]
        pids = s.pids()
        rss = status_kib(pids, "VmRSS") / 1024 if pids else None
        hwm = status_kib(pids, "VmHWM") / 1024 if pids else None
        cpu = med.get("cpu_us")
        bad = sum(r["non2xx"] + r["errors"] for r in s.rounds)
        rows[s.name] = dict(med, rss_mib=rss, peak_rss_mib=hwm, bad=bad)
        print(
            f"| {s.name} | {med['rps']:,.0f} | {cpu:.1f} | {med['p50']:.2f} | {med['p99']:.2f} | "
            f"{rss:.1f} MiB | {hwm:.1f} MiB | {bad} |"
            if pids
            else f"| {s.name} | {med['rps']:,.0f} | — | {med['p50']:.2f} | {med['p99']:.2f} | — | — | {bad} |"
        )
    g, h, n, p = (
        rows["gatehouse, verified token"],
        rows["HAProxy jwt_verify"],
        rows["nginx, plain proxy, no auth"],
        rows["gatehouse, public route"],
    )
    print()
    print(f"gatehouse verified / HAProxy: req/s {g['rps'] / h['rps']:.2f}x, p99 {g['p99'] / h['p99']:.2f}x, CPU/request {g['cpu_us'] / h['cpu_us']:.2f}x")
    print(f"gatehouse verified / nginx plain proxy: req/s {g['rps'] / n['rps']:.2f}x, CPU/request {g['cpu_us'] / n['cpu_us']:.2f}x")
    print(f"gatehouse verified / public: req/s {g['rps'] / p['rps']:.2f}x, CPU/request {g['cpu_us'] / p['cpu_us']:.2f}x")
    e, a = rows["gatehouse, verified EdDSA token"], rows["gatehouse, verified EdDSA token + assertion"]
    print(f"gatehouse EdDSA / HS256 verified: req/s {e['rps'] / g['rps']:.2f}x, p99 {e['p99'] / g['p99']:.2f}x, CPU/request {e['cpu_us'] / g['cpu_us']:.2f}x")
    print(f"gatehouse EdDSA + assertion / EdDSA: req/s {a['rps'] / e['rps']:.2f}x, p99 {a['p99'] / e['p99']:.2f}x, CPU/request {a['cpu_us'] / e['cpu_us']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if any(r["bad"] for r in rows.values()):
        sys.exit("some requests failed or were refused: the figures above are not comparable")


if __name__ == "__main__":
    main()
