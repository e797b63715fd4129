#!/usr/bin/env python3
"""Forward-auth under load, driven by benches/forward_auth.sh.

In one run, on one machine, against the same nginx upstream (a small JSON 200), wrk drives:

  nginx         nginx as a plain reverse proxy, no auth: the floor
  nginx + gatehouse forward-auth
                deploy/forward-auth/nginx.conf as shipped (addresses replaced): nginx asks
                gatehouse's {prefix}/forward with `auth_request` for every request, gatehouse
                verifies the bearer token on a role route (signature, claims, revocation,
                role policy, a per-IP rate limit that never trips) and answers 200 with the
                identity headers, which nginx copies onto the request it forwards
  gatehouse     gatehouse as the proxy itself, the same token and route

nginx and gatehouse, the systems under test, run on core 0 (gatehouse with one worker);
wrk and the upstream on core 1. Each system is measured `--rounds` times, interleaved, and
the median round is reported: requests/s, p50 and p99 (wrk --latency), and CPU per request
(user + system time of every process of the system, nginx and gatehouse together for
forward-auth, over the requests wrk completed). The helpers are benches/compare.py's.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (  # noqa: E402
    CLK_TCK,
    VERIFIED_POLICY,
    System,
    bench_main,
    check_token,
    children,
    cpu_ticks,
    free_port,
    login,
    nginx_conf,
    plain_proxy,
    upstream_server,
    wait_up,
    wrk,
)


def main():
    bench_main("gatehouse-forward-", run)


def run(args, tmp, spawn):
    secret = os.urandom(36).hex()
    up, ngx, fwd, gh = (free_port() for _ in range(4))

    upstream = nginx_conf(tmp, "upstream", upstream_server(up))
    spawn(["nginx", "-c", upstream], 1, "upstream.log")
    plain = nginx_conf(tmp, "plain", plain_proxy(ngx, up))
    nginx = spawn(["nginx", "-c", plain], 0, "plain.log")

    # The shipped snippet, as an operator would drop it in; only addresses change.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "deploy/forward-auth/nginx.conf")) as f:
        snippet = f.read()
    snippet = (
        snippet.replace("127.0.0.1:8080", f"127.0.0.1:{gh}")
        .replace("127.0.0.1:3000", f"127.0.0.1:{up}")
        .replace("listen 8000;", f"listen 127.0.0.1:{fwd};\n    keepalive_requests 10000000;")
        .replace("keepalive 16;", "keepalive 64;\n    keepalive_requests 10000000;")
    )
    forward_conf = nginx_conf(tmp, "forward", snippet)

    config = os.path.join(tmp, "gatehouse.toml")
    with open(config, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{gh}"
workers = 1
[upstream]
url = "http://127.0.0.1:{up}"
[store]
path = "{tmp}/store"
[tokens]
secret = "{secret}"
[rate_limits]
login = "0"
register = "0"
proxy = "1000000/1s"
[forward_auth]
enabled = true
[log]
level = "warn"
access = false
{VERIFIED_POLICY}"""
        )
    gatehouse = spawn([args.bin, "serve", "--config", config], 0, "gatehouse.log")
    wait_up(gh, "/readyz")
    forward = spawn(["nginx", "-c", forward_conf], 0, "forward.log")
    for port in (up, ngx, fwd):
        wait_up(port, "/public/x")

    token = login(gh, 1)
    header = f"Authorization: Bearer {token}"
    for port, what in ((fwd, "nginx + forward-auth"), (gh, "gatehouse")):
        check_token(port, token, what)

    class Pair(System):
        """nginx and gatehouse together: forward-auth's cost is both processes'."""

        def pids(self):
            return children(forward.pid) + children(gatehouse.pid)

    systems = [
        System("nginx, plain proxy, no auth", f"http://127.0.0.1:{ngx}/api/items", nginx.pid),
        Pair("nginx auth_request + gatehouse forward-auth, verified token", f"http://127.0.0.1:{fwd}/api/items", None, header),
        System("gatehouse as the proxy, verified token", f"http://127.0.0.1:{gh}/api/items", gatehouse.pid, header),
    ]
    for s in systems:  # warm pools and caches
        wrk(s.url, 2, args.conns, s.header)
    for r in range(args.rounds):
        for s in systems:
            pids = s.pids()
            before = cpu_ticks(pids)
            res = wrk(s.url, args.duration, args.conns, s.header)
            after = cpu_ticks(pids)
            if res["requests"]:
                res["cpu_us"] = (after - before) / CLK_TCK * 1e6 / res["requests"]
            s.rounds.append(res)
            print(f"  round {r + 1} {s.name}: {res['rps']:.0f} req/s, p99 {res['p99']:.2f} ms", file=sys.stderr)

    print(
        f"\nwrk -t1 -c{args.conns} -d{args.duration}s, median of {args.rounds} rounds; "
        "nginx and gatehouse on core 0 (gatehouse one worker), wrk and the upstream on core 1\n"
    )
    print("| system | req/s | CPU µs/request | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {}
    for s in systems:
        med = sorted(s.rounds, key=lambda r: r["rps"])[len(s.rounds) // 2]
        bad = sum(r["non2xx"] + r["errors"] for r in s.rounds)
        rows[s.name] = dict(med, bad=bad)
        print(f"| {s.name} | {med['rps']:,.0f} | {med['cpu_us']:.1f} | {med['p50']:.2f} | {med['p99']:.2f} | {bad} |")
    n, fa, g = (rows[s.name] for s in systems)
    print()
    print(f"forward-auth / nginx plain proxy: req/s {fa['rps'] / n['rps']:.2f}x, p99 {fa['p99'] / n['p99']:.2f}x, CPU/request {fa['cpu_us'] / n['cpu_us']:.2f}x")
    print(f"forward-auth / gatehouse as the proxy: req/s {fa['rps'] / g['rps']:.2f}x, p99 {fa['p99'] / g['p99']:.2f}x, CPU/request {fa['cpu_us'] / g['cpu_us']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if any(r["bad"] for r in rows.values()):
        sys.exit("some requests failed or were refused: the figures above are not comparable")


if __name__ == "__main__":
    main()
