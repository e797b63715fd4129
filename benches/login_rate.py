#!/usr/bin/env python3
"""Logins per second of one gatehouse binary, with the default (OWASP) argon2id parameters.

gatehouse runs with one worker pinned to core 0 (hashing runs on its blocking threads,
`auth.password.max_concurrent` at a time, default one per core); CLIENTS threads log in as
fast as they are answered for SECONDS, pinned to core 1 with the rest of this script.
Prints logins/s and the RSS of gatehouse after the storm and again 15 s later.

Usage: python3 benches/login_rate.py --bin target/release/gatehouse [--clients 4] [--seconds 20]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    tmp = tempfile.mkdtemp(prefix="gatehouse-logins-")
    port = free_port()
    config = os.path.join(tmp, "gatehouse.toml")
    with open(config, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{port}"
workers = 1
[upstream]
url = "http://127.0.0.1:9"
[store]
path = "{tmp}/store"
[tokens]
secret = "{os.urandom(24).hex()}"
[rate_limits]
login = "0"
register = "0"
[auth.lockout]
max_failures = 1000000
[log]
level = "warn"
"""
        )
    server = subprocess.Popen(
        ["taskset", "-c", "0", args.bin, "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        creds = {"email": "bench@example.com", "password": "correct horse battery staple"}
        post(port, "/auth/register", creds)
        post(port, "/auth/login", creds)  # warm
        done = [0] * args.clients
        deadline = time.monotonic() + args.seconds

        def client(i):
            while time.monotonic() < deadline:
                if post(port, "/auth/login", creds) == 200:
                    done[i] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        after = rss_mib(server.pid)
        time.sleep(15)
        later = rss_mib(server.pid)
        print(
            f"{sum(done) / elapsed:.1f} logins/s ({sum(done)} in {elapsed:.1f} s, {args.clients} clients); "
            f"RSS {after:.1f} MiB right after, {later:.1f} MiB 15 s later"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
