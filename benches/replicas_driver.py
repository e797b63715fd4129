#!/usr/bin/env python3
"""Client side of benches/replicas.sh (standard library only; loopback HTTP/1.1 keep-alive).

  propagation ORIGIN PROBE[,PROBE...] ROUNDS
      ROUNDS times: log in on ORIGIN, check the token is accepted on every PROBE's proxy
      path, log out on ORIGIN, then poll every PROBE's proxy path until it answers
      401 TOKEN_REVOKED. Prints one JSON line: the delays in ms, from the logout's 200 to
      each probe's first 401, over all probes and rounds.

  register PORT USERS
      Registers USERS accounts (bench0@example.com ...) with 4 clients.

  logins PORT USERS CLIENTS SECONDS
      CLIENTS threads log in flat out for SECONDS, round-robin over the USERS accounts.
      Prints one JSON line: successful logins per second, latency p50/p99 in ms, errors.
"""

import http.client
import json
import sys
import threading
import time

PASSWORD = "correct horse battery"


class Conn:
    """One keep-alive connection to 127.0.0.1:port, reopened after an error."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, token=None):
        headers = {}
        if body is not None:
            body = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


def code_of(data):
    try:
        return json.loads(data)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def email(i):
    return f"bench{i}@example.com"


def login(conn, who):
    status, data = conn.request("POST", "/auth/login", {"email": who, "password": PASSWORD})
    if status != 200:
        raise SystemExit(f"login {who} on :{conn.port}: {status} {data[:200]!r}")
    return json.loads(data)["access_token"]


def propagation(origin, probes, rounds):
    here = Conn(origin)
    there = [Conn(p) for p in probes]
    who = "propagation@example.com"
    status, data = here.request("POST", "/auth/register", {"email": who, "password": PASSWORD})
    if status not in (201, 409):
        raise SystemExit(f"register on :{origin}: {status} {data[:200]!r}")
    delays = []
    for _ in range(rounds):
        token = login(here, who)
        for probe in there:
            status, data = probe.request("GET", "/api/items", token=token)
            if status != 200:
                raise SystemExit(f"fresh token refused on :{probe.port}: {status} {data[:200]!r}")
        status, data = here.request("POST", "/auth/logout", {}, token=token)
        if status != 200:
            raise SystemExit(f"logout on :{origin}: {status} {data[:200]!r}")
        start = time.perf_counter()
        pending = list(there)
        deadline = start + 10
        while pending:
            for probe in list(pending):
                status, data = probe.request("GET", "/api/items", token=token)
                if status == 401 and code_of(data) == "TOKEN_REVOKED":
                    delays.append((time.perf_counter() - start) * 1000)
                    pending.remove(probe)
                elif status != 200:
                    raise SystemExit(f"probe :{probe.port}: {status} {data[:200]!r}")
            if time.perf_counter() > deadline:
                raise SystemExit("a logout was not enforced within 10 s")
    print(json.dumps({
        "samples": len(delays),
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays),
    }))


def register(port, users):
    def work(indexes):
        conn = Conn(port)
        for i in indexes:
            status, data = conn.request("POST", "/auth/register",
                                        {"email": email(i), "password": PASSWORD})
            if status not in (201, 409):
                raise SystemExit(f"register on :{port}: {status} {data[:200]!r}")

    threads = [threading.Thread(target=work, args=(range(k, users, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def logins(port, users, clients, seconds):
    latencies = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + seconds

    def work(k):
        conn = Conn(port)
        i = k
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            status, _ = conn.request("POST", "/auth/login",
                                     {"email": email(i % users), "password": PASSWORD})
            if status == 200:
                latencies[k].append((time.perf_counter() - start) * 1000)
            else:
                errors[k] += 1
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    done = [x for per in latencies for x in per]
    print(json.dumps({
        "logins": len(done),
        "per_sec": len(done) / elapsed,
        "p50_ms": percentile(done, 50),
        "p99_ms": percentile(done, 99),
        "errors": sum(errors),
    }))


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "propagation":
        propagation(int(args[0]), [int(p) for p in args[1].split(",")], int(args[2]))
    elif command == "register":
        register(int(args[0]), int(args[1]))
    elif command == "logins":
        logins(int(args[0]), int(args[1]), int(args[2]), float(args[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
