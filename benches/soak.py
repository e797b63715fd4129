#!/usr/bin/env python3
"""Soak driver for benches/soak.sh (standard library only; plot.py draws the PNG).

    soak.py upstream PORT              # the upstream: HTTP/1.1 keep-alive + WebSocket echo,
                                       # 2% injected 500s marked `x-injected-fault: 1`, 0.5% slow
    soak.py smtp PORT                  # an SMTP sink that refuses half of the mails (451)
    soak.py load GATEHOUSE_PORT PID SECONDS OUT.json
                                       # the mixed load, sampling PID every 10 s; judges at the end

The load: proxy traffic (keep-alive GETs on a token-protected route), logins keeping the
argon2 permits busy, refreshes, forgot-password (mail through the failing sink), WebSocket
connections opened, used and closed through the proxy, and slow clients (a request sent one
byte at a time, a response read slowly, a connection that sends nothing). Every 10 s it
samples the server's RSS, open fds, threads, open client connections (from /metrics) and
the p99 of the proxy requests of that window.

Judgement (exit 1 on failure), after a warm-up of a fifth of the run (at least 30 s):
  * no 5xx except the upstream's injected faults;
  * RSS flat: the median of the last third is within 10% + 8 MiB of the first post-warm-up
    third's median;
  * open fds and threads flat: the last third's maximum at most the first third's maximum
    + 16;
  * p99 flat: the last third's median p99 at most 3x the first third's median + 5 ms.
"""

import asyncio
import base64
import hashlib
import http.client
import json
import os
import random
import re
import socket
import statistics
import sys
import threading
import time

PASSWORD = "correct horse battery staple"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FAULT_RATE = 0.02


# ----------------------------------------------------------------------------- upstream

async def upstream_conn(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            if headers.get("upgrade", "").lower() == "websocket":
                key = headers.get("sec-websocket-key", "")
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
                await writer.drain()
                await ws_echo(reader, writer)
                return
            roll = random.random()
            if roll < FAULT_RATE:
                body = b'{"fault":"injected"}'
                status = "500 Internal Server Error"
                extra = "x-injected-fault: 1\r\n"
            else:
                if roll < FAULT_RATE + 0.005:
                    await asyncio.sleep(0.2)  # a slow upstream answer (0.5%)
                body = b'{"ok":true}'
                status = "200 OK"
                extra = ""
            writer.write((f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
                          f"content-length: {len(body)}\r\n\r\n").encode() + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def ws_echo(reader, writer):
    while True:
        b1, b2 = await reader.readexactly(2)
        opcode, masked, n = b1 & 0x0F, b2 & 0x80, b2 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
        if opcode == 8:
            writer.write(bytes([0x88, len(data)]) + data)
            await writer.drain()
            return
        writer.write(bytes([0x80 | opcode, len(data)]) + data)
        await writer.drain()


# ----------------------------------------------------------------------------- SMTP sink

async def smtp_conn(reader, writer):
    try:
        writer.write(b"220 soak-sink ESMTP\r\n")
        await writer.drain()
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                return
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                writer.write(b"250-soak-sink\r\n250 8BITMIME\r\n")
            elif verb == "DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b".\n", b""):
                    pass
                # Half the mails fail, temporarily: the mailer retries them.
                writer.write(b"451 try again later\r\n" if random.random() < 0.5
                             else b"250 queued\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def serve(handler, port):
    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


# ----------------------------------------------------------------------------- load

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.window = []         # proxy latencies (s) in the current window
        self.counts = {}         # what -> count
        self.bad = []            # unexpected answers (first 20 kept)

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def latency(self, seconds):
        with self.lock:
            self.window.append(seconds)

    def unexpected(self, what):
        with self.lock:
            self.counts["unexpected_5xx"] = self.counts.get("unexpected_5xx", 0) + 1
            if len(self.bad) < 20:
                self.bad.append(what)

    def take_window(self):
        with self.lock:
            w, self.window = self.window, []
        return w


class Http:
    def __init__(self, port):
        self.port, self.conn = port, None

    def call(self, method, path, body=None, token=None):
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = "Bearer " + token
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, r.getheader("x-injected-fault"), raw
            except (OSError, http.client.HTTPException):
                if self.conn:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise


def judge_status(stats, what, status, injected, raw):
    if status >= 500:
        if injected == "1":
            stats.count("injected_5xx")
        else:
            stats.unexpected(f"{what}: {status} {raw[:200]!r}")
    else:
        stats.count(f"{what}_{status // 100}xx")


def login(h, email):
    status, _, raw = h.call("POST", "/auth/login", {"email": email, "password": PASSWORD})
    return status, raw, (json.loads(raw) if status == 200 else None)


def proxy_loop(port, stats, stop, tokens):
    h = Http(port)
    while not stop.is_set():
        token = tokens[0]
        t0 = time.monotonic()
        try:
            status, injected, raw = h.call("GET", f"/api/items/{random.randrange(1000)}", token=token)
        except (OSError, http.client.HTTPException) as e:
            stats.unexpected(f"proxy: {e}")
            continue
        stats.latency(time.monotonic() - t0)
        judge_status(stats, "proxy", status, injected, raw)


def token_keeper(port, stats, stop, tokens, emails):
    """Keeps a fresh access token for the proxy loops, by refreshing; logs in again after a
    forgotten-password reset would not happen (resets are never completed here)."""
    h = Http(port)
    _, _, grant = login(h, emails[0])
    refresh = grant["refresh_token"]
    tokens[0] = grant["access_token"]
    while not stop.wait(2.0):
        status, injected, raw = h.call("POST", "/auth/refresh", {"refresh_token": refresh})
        judge_status(stats, "refresh", status, injected, raw)
        if status == 200:
            grant = json.loads(raw)
            refresh, tokens[0] = grant["refresh_token"], grant["access_token"]


def login_loop(port, stats, stop, emails):
    """Logs in back to back (keeping the argon2 permits busy), refreshes the new session once
    and logs it out, so sessions do not pile up past the per-user cap."""
    h = Http(port)
    while not stop.is_set():
        status, raw, grant = login(h, random.choice(emails))
        judge_status(stats, "login", status, None, raw)
        if grant is None:
            continue
        status, injected, raw = h.call("POST", "/auth/refresh", {"refresh_token": grant["refresh_token"]})
        judge_status(stats, "refresh", status, injected, raw)
        if status == 200:
            grant = json.loads(raw)
        status, injected, raw = h.call("POST", "/auth/logout", {}, token=grant["access_token"])
        judge_status(stats, "logout", status, injected, raw)


def forgot_loop(port, stats, stop, emails):
    h = Http(port)
    while not stop.wait(0.5):
        status, injected, raw = h.call("POST", "/auth/forgot-password", {"email": random.choice(emails)})
        judge_status(stats, "forgot", status, injected, raw)


def ws_once(port, token):
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall((f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Authorization: Bearer {token}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return 0
            head += chunk
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            return status
        for _ in range(3):
            payload = os.urandom(8).hex().encode()
            mask = os.urandom(4)
            s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                      bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
            echo = s.recv(2 + len(payload))
            while len(echo) < 2 + len(payload):
                more = s.recv(2 + len(payload) - len(echo))
                if not more:
                    return 599
                echo += more
            if echo[2:] != payload:
                return 598
        mask = os.urandom(4)
        s.sendall(bytes([0x88, 0x82]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"\x03\xe8")))
        s.recv(16)
        return 101
    finally:
        s.close()


def ws_loop(port, stats, stop, tokens):
    while not stop.wait(0.05):
        try:
            status = ws_once(port, tokens[0])
        except OSError as e:
            stats.unexpected(f"websocket: {e}")
            continue
        if status == 101:
            stats.count("websocket_ok")
        elif status >= 500 or status == 0:
            # 598/599: the echo was wrong or cut; the upstream never injects faults here.
            stats.unexpected(f"websocket: {status}")
        else:
            stats.count(f"websocket_{status}")


def slow_loop(port, stats, stop, tokens):
    """Slow clients: a request trickled one byte every 20 ms; a response read 64 bytes at a
    time with pauses; an idle connection that sends nothing and waits to be closed."""
    while not stop.is_set():
        kind = random.choice(("trickle", "slow_read", "idle"))
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            if kind == "trickle":
                req = (f"GET /api/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens[0]}\r\n"
                       "Connection: close\r\n\r\n").encode()
                for i in range(0, len(req), 8):
                    s.sendall(req[i:i + 8])
                    if stop.wait(0.02):
                        break
            elif kind == "slow_read":
                s.sendall((f"GET /api/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens[0]}\r\n"
                           "Connection: close\r\n\r\n").encode())
            else:
                stop.wait(3.0)
            data = b""
            while True:
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
                if kind == "slow_read":
                    time.sleep(0.05)
            s.close()
            m = re.match(rb"HTTP/1.1 (\d+)", data)
            status = int(m.group(1)) if m else 0
            if status >= 500 and b"x-injected-fault: 1" not in data.lower():
                stats.unexpected(f"slow client ({kind}): {data[:200]!r}")
            else:
                stats.count(f"slow_{kind}")
        except OSError as e:
            stats.count("slow_client_cut")  # timeouts on our side are not the server's 5xx


def proc_sample(pid):
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def metric(port, name):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return -1


def p99(values):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000


def load(port, pid, seconds, out):
    emails = [f"soak{i}@example.com" for i in range(16)]
    h = Http(port)
    for email in emails:
        status, _, raw = h.call("POST", "/auth/register", {"email": email, "password": PASSWORD})
        if status not in (201, 409):
            sys.exit(f"register {email}: {status} {raw!r}")
    stats, stop, tokens = Stats(), threading.Event(), [None]
    threading.Thread(target=token_keeper, args=(port, stats, stop, tokens, emails), daemon=True).start()
    while tokens[0] is None:
        time.sleep(0.05)
    loads = {
        "proxy": [(proxy_loop, (port, stats, stop, tokens))] * 4,
        "login": [(login_loop, (port, stats, stop, emails))] * 3,
        "forgot": [(forgot_loop, (port, stats, stop, emails))],
        "websocket": [(ws_loop, (port, stats, stop, tokens))],
        "slow": [(slow_loop, (port, stats, stop, tokens))] * 3,
    }
    # SOAK_ONLY=proxy,login,... runs some of the loads only (to find which one misbehaves).
    only = [k for k in os.environ.get("SOAK_ONLY", "").split(",") if k] or list(loads)
    threads = [threading.Thread(target=f, args=a) for k in only for f, a in loads[k]]
    for t in threads:
        t.daemon = True
        t.start()
    samples = []
    t0 = time.monotonic()
    print(f"{'t_s':>6} {'rss_mib':>8} {'fds':>5} {'threads':>7} {'conns':>5} {'p99_ms':>7} {'proxy_rps':>9} {'5xx_bad':>7}", flush=True)
    next_at = t0 + 10
    while time.monotonic() - t0 < seconds:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += 10
        window = stats.take_window()
        rss, fds, nthreads = proc_sample(pid)
        conns = metric(port, "gatehouse_connections_open")
        row = {"t": round(time.monotonic() - t0), "rss_mib": round(rss, 1), "fds": fds,
               "threads": nthreads, "connections": conns, "p99_ms": round(p99(window), 2),
               "proxy_rps": round(len(window) / 10, 1),
               "unexpected_5xx": stats.counts.get("unexpected_5xx", 0)}
        samples.append(row)
        print(f"{row['t']:>6} {row['rss_mib']:>8} {fds:>5} {nthreads:>7} {conns:>5.0f} "
              f"{row['p99_ms']:>7} {row['proxy_rps']:>9} {row['unexpected_5xx']:>7}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=40)

    failures = []
    warm = max(30, seconds // 5)
    post = [s for s in samples if s["t"] > warm]
    if len(post) < 3:
        failures.append("too few samples after the warm-up to judge (run longer)")
    else:
        third = max(1, len(post) // 3)
        first, last = post[:third], post[-third:]
        med = lambda rows, k: statistics.median(r[k] for r in rows)
        if med(last, "rss_mib") > med(first, "rss_mib") * 1.10 + 8:
            failures.append(f"RSS grew: {med(first, 'rss_mib')} -> {med(last, 'rss_mib')} MiB")
        for k in ("fds", "threads"):
            if max(r[k] for r in last) > max(r[k] for r in first) + 16:
                failures.append(f"{k} grew: max {max(r[k] for r in first)} -> {max(r[k] for r in last)}")
        if med(last, "p99_ms") > 3 * med(first, "p99_ms") + 5:
            failures.append(f"p99 grew: {med(first, 'p99_ms')} -> {med(last, 'p99_ms')} ms")
    if stats.counts.get("unexpected_5xx", 0):
        failures.append(f"{stats.counts['unexpected_5xx']} answers were 5xx (or failed) without an injected fault: {stats.bad[:5]}")
    result = {"seconds": seconds, "warm_up_s": warm, "samples": samples, "counts": stats.counts,
              "unexpected": stats.bad, "failures": failures}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("counts:", json.dumps(stats.counts, sort_keys=True), flush=True)
    if failures:
        print("SOAK FAILED:", *failures, sep="\n  ", flush=True)
        sys.exit(1)
    print(f"SOAK OK: flat after a {warm} s warm-up, no 5xx but the "
          f"{stats.counts.get('injected_5xx', 0)} injected faults", flush=True)


def main():
    cmd = sys.argv[1]
    if cmd == "upstream":
        serve(upstream_conn, int(sys.argv[2]))
    elif cmd == "smtp":
        serve(smtp_conn, int(sys.argv[2]))
    elif cmd == "load":
        load(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
