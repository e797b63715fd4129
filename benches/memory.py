#!/usr/bin/env python3
"""Where gatehouse's resident memory is, after the load of benches/compare.sh's verified run.

One gatehouse (one worker, pinned to core 0, the verified-token config of compare.py) in
front of an nginx upstream (core 1): LOGINS logins with the default (OWASP) argon2id
parameters, then SECONDS of `wrk -t1 -c50` on the role-protected route. Then it prints:

  * VmRSS and VmHWM, threads, and glibc's arenas (malloc_stats(3), called in the process
    with gdb when gdb is installed and --no-gdb is not given: it stops the process for a
    moment, after the load);
  * the resident memory by kind of mapping, from /proc/PID/smaps: the binary's code and
    data, the main heap, glibc's thread-arena heaps (64 MiB reservations), thread stacks,
    other anonymous memory (mmap'd blocks, sled's and the allocator's own), shared libraries.

ENV (--env NAME=VALUE, repeatable) goes to gatehouse only, e.g. LD_PRELOAD of another
allocator or GATEHOUSE_SERVER__... overrides, so variants are compared under the same load.

Usage: python3 benches/memory.py --bin target/release/gatehouse [--logins 100] [--seconds 60]
       [--env NAME=VALUE ...] [--after S] [--no-gdb]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import VERIFIED_POLICY, free_port, gatehouse_config, login, status_kib, wait_up, wrk  # noqa: E402

MIB = 1024 * 1024
ARENA_HEAP = 64 * MIB  # glibc's HEAP_MAX_SIZE on 64-bit: each thread arena reserves this


def mappings(pid):
    """(start, end, perms, name, rss_kib) per mapping of /proc/PID/smaps."""
    out = []
    head = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
    with open(f"/proc/{pid}/smaps") as f:
        cur = None
        for line in f:
            m = head.match(line)
            if m:
                cur = [int(m[1], 16), int(m[2], 16), m[3], m[4].strip(), 0]
                out.append(cur)
            elif line.startswith("Rss:") and cur is not None:
                cur[4] = int(line.split()[1])
    return out


def classify(maps, binary):
    """Resident KiB per kind of mapping; see the module docs for the kinds."""
    kinds = {}
    for i, (start, end, perms, name, rss) in enumerate(maps):
        prev = maps[i - 1] if i else None
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if name and os.path.realpath(name) == binary:
            kind = "binary (code, data)"
        elif name == "[heap]":
            kind = "main heap (brk)"
        elif name == "[stack]":
            kind = "main thread stack"
        elif name.startswith("/"):
            kind = "shared libraries"
        elif name:
            kind = name
        elif start % ARENA_HEAP == 0 and "rw" in perms and (
            nxt is not None and nxt[0] == end and nxt[2].startswith("---") and not nxt[3]
        ):
            kind = "thread arenas (glibc heaps)"
        elif start % ARENA_HEAP == 0 and "rw" in perms and end - start <= ARENA_HEAP:
            kind = "thread arenas (glibc heaps)"
        elif "rw" in perms and prev is not None and prev[1] == start and prev[2].startswith("---") and (
            prev[1] - prev[0] <= 64 * 1024
        ):
            kind = "thread stacks"
        else:
            kind = "other anonymous (mmap'd blocks, allocator)"
        kinds[kind] = kinds.get(kind, 0) + rss
    return kinds


def malloc_stats(pid, log):
    """glibc's per-arena figures, printed by malloc_stats(3) in the process (to its stderr)."""
    if not shutil.which("gdb"):
        return None
    before = os.path.getsize(log)
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "call (void) malloc_stats()"],
        capture_output=True,
        timeout=120,
    )
    time.sleep(0.2)  # the process's stderr is a file: written by the time gdb detached
    with open(log) as f:
        f.seek(before)
        return f.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/gatehouse")
    ap.add_argument("--logins", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--after", type=float, default=0, help="wait this long after the load")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for gatehouse")
    ap.add_argument("--no-gdb", action="store_true")
    args = ap.parse_args()
    binary = os.path.realpath(args.bin)
    tmp = tempfile.mkdtemp(prefix="gatehouse-memory-")
    procs = []
    try:
        up, port = free_port(), free_port()
        upstream_conf = os.path.join(tmp, "upstream.conf")
        with open(upstream_conf, "w") as f:
            f.write(
                f"""worker_processes 1;
daemon off;
master_process off;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{up} reuseport;
    keepalive_requests 10000000;
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
  }}
}}
"""
            )
        procs.append(subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", upstream_conf]))
        config = gatehouse_config(tmp, "verified", port, up, os.urandom(36).hex(), VERIFIED_POLICY)
        env = dict(os.environ)
        env.pop("GATEHOUSE_CONFIG", None)
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        log = os.path.join(tmp, "gatehouse.log")
        gh = subprocess.Popen(
            ["taskset", "-c", "0", binary, "serve", "--config", config],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        procs.append(gh)
        wait_up(up, "/")
        wait_up(port, "/readyz")
        start_kib = status_kib([gh.pid], "VmRSS")
        token = login(port, args.logins)
        after_logins = status_kib([gh.pid], "VmRSS")
        res = wrk(f"http://127.0.0.1:{port}/api/items", args.seconds, args.conns, f"Authorization: Bearer {token}")
        if args.after:
            time.sleep(args.after)
        rss, hwm = status_kib([gh.pid], "VmRSS"), status_kib([gh.pid], "VmHWM")
        threads = len(os.listdir(f"/proc/{gh.pid}/task"))
        kinds = classify(mappings(gh.pid), binary)
        print(f"# env: {' '.join(args.env) or '(none)'}; {args.logins} logins, {args.seconds} s of wrk "
              f"-c{args.conns} ({res.get('rps', 0):.0f} req/s, non-2xx {res['non2xx']})"
              + (f", then {args.after:.0f} s idle" if args.after else ""))
        print(f"RSS at start {start_kib / 1024:.1f} MiB, after logins {after_logins / 1024:.1f} MiB, "
              f"after load {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB); threads {threads}")
        for kind, kib in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {kib / 1024:7.2f} MiB  {kind}")
        if not args.no_gdb:
            stats = malloc_stats(gh.pid, log)
            if stats:
                arenas = stats.count("Arena ")
                print(f"glibc malloc_stats ({arenas} arenas):")
                for line in stats.strip().splitlines():
                    print("   ", line)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
