#!/usr/bin/env python3
"""Crash torture driver for benches/torture.sh (standard library only).

    torture.py --bin GATEHOUSE --store-section TOML --cycles N [--seed S] [--workers W]

Each cycle starts `gatehouse serve` on the given store, checks the invariants below against
the ledger of acknowledged operations, then lets WORKERS threads register, log in, refresh,
change passwords, reset passwords (forgot-password with `auth.expose_debug_tokens`, which
answers with the token) and log out, each on accounts of its own, and SIGKILLs the server
at a random moment (uniform over RUN_MIN..RUN_MAX seconds). An operation counts as
acknowledged only when its 2xx answer was read; one cut off by the kill is uncertain, and
the ledger keeps both possible outcomes until a later check tells which one happened.

Invariants checked after every restart (a failure is a violation):
  * the store opens: /readyz answers 200 within 60 s;
  * every acknowledged registration logs in with its latest acknowledged password (or with
    the password of a later change that was cut off: then that one is adopted);
  * a refresh token whose rotation was acknowledged is never accepted again (no refresh
    token is redeemed twice), and neither is one of a session acknowledged as revoked
    (logout, password change, reset);
  * an access token of a revoked session is refused by /auth/verify while unexpired;
  * a reset token whose reset was acknowledged never works again;
  * an acknowledged live session still refreshes (its rotation was durable).
The server purges every second with short access tokens, so revoked families are purged
while the torture runs: purging is checked by the same invariants.

Prints `cycles=… operations=… violations=…` (and each violation); exits 1 on any.
`--sabotage STORE_DIR` (sled) deletes the store after every kill: a self-test that the
checks do report lost writes (a 3-cycle self-test run reported 100 violations).
"""

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

RUN_MIN, RUN_MAX = 0.05, 1.5
ACCESS_TTL = 60  # seconds; tokens.access_ttl below
MAX_KNOWN_SESSIONS = 4
CHECK_SAMPLE = 12


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Uncertain(Exception):
    """The request was cut off: it may or may not have been carried out."""


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, method, path, body=None, token=None):
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = "Bearer " + token
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise Uncertain(str(e)) from e
        if r.getheader("connection", "").lower() == "close":
            self.close()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        return r.status, payload

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Ledger:
    """What the driver knows for sure, plus the outcomes it cannot yet tell apart."""

    def __init__(self):
        self.lock = threading.Lock()
        self.users = []           # every user record (dict), by index
        self.spent = []           # refresh tokens whose rotation was acknowledged: (token, user)
        self.revoked = []         # refresh tokens of sessions acknowledged revoked
        self.revoked_access = []  # (access token, expires at) of sessions acknowledged revoked
        self.used_resets = []     # reset tokens whose reset was acknowledged
        self.operations = 0
        self.violations = []

    def ack(self):
        with self.lock:
            self.operations += 1

    def violation(self, what):
        with self.lock:
            self.violations.append(what)
        print("VIOLATION:", what, flush=True)


def new_user(run, n):
    return {
        "email": f"t{run}-{n}@torture.example",
        "password": "pw-" + secrets.token_hex(10),
        "pending": [],        # passwords of changes/resets cut off, newest last
        "registered": None,   # True, or "maybe" when the registration was cut off
        "sessions": [],       # [{refresh, access, access_at}] acknowledged live
        "unknown": 0,         # logins cut off since the last revoke-all (the session cap)
        "touched": True,
    }


def revoke_all(ledger, user, keep=None):
    """Marks every known session but `keep` revoked (acknowledged), for the checks."""
    with ledger.lock:
        for s in user["sessions"]:
            if s is keep:
                continue
            ledger.revoked.append(s["refresh"])
            ledger.revoked_access.append((s["access"], s["access_at"] + ACCESS_TTL))
        user["sessions"] = [keep] if keep else []
        user["unknown"] = 0


def drop_session(user, session):
    """Forgets a session whose state is unknown; it may still be live in the store, where it
    counts towards the per-user session cap (which revokes the oldest past 64)."""
    if session in user["sessions"]:
        user["sessions"].remove(session)
    user["unknown"] += 1


def session_from(payload):
    return {"refresh": payload["refresh_token"], "access": payload["access_token"],
            "access_at": time.time()}


class Worker(threading.Thread):
    def __init__(self, index, port, ledger, users, rng, stop, run):
        super().__init__(daemon=True)
        self.index, self.ledger, self.users, self.rng, self.stop, self.run_id = (
            index, ledger, users, rng, stop, run)
        self.client = Client(port)

    def run(self):
        while not self.stop.is_set():
            try:
                self.step()
            except Uncertain:
                # The server is gone (or going): stop; the kill is what cut us off.
                if self.stop.wait(0.01):
                    break

    def ready_users(self):
        return [u for u in self.users if u["registered"] is True and not u["pending"]]

    def step(self):
        rng = self.rng
        ready = self.ready_users()
        roll = rng.random()
        if roll < 0.08 or not ready:
            return self.register()
        user = rng.choice(ready)
        with_session = [s for s in user["sessions"]]
        if roll < 0.30 or not with_session:
            if len(user["sessions"]) < MAX_KNOWN_SESSIONS:
                return self.login(user)
            roll = 0.5
        session = rng.choice(user["sessions"])
        if roll < 0.65:
            return self.refresh(user, session)
        if roll < 0.77:
            return self.change_password(user, session)
        if roll < 0.88:
            return self.reset_password(user)
        return self.logout(user, session)

    def register(self):
        with self.ledger.lock:
            n = len(self.ledger.users)
            user = new_user(self.run_id, n)
            self.ledger.users.append(user)
        self.users.append(user)
        user["registered"] = "maybe"
        status, _ = self.client.call("POST", "/auth/register",
                                     {"email": user["email"], "password": user["password"]})
        if status == 201:
            user["registered"] = True
            self.ledger.ack()
        else:
            self.ledger.violation(f"register {user['email']}: {status}")

    def login(self, user):
        try:
            status, payload = self.client.call(
                "POST", "/auth/login", {"email": user["email"], "password": user["password"]})
        except Uncertain:
            user["unknown"] += 1
            raise
        if status == 200:
            user["sessions"].append(session_from(payload))
            self.ledger.ack()
        else:
            self.ledger.violation(f"login {user['email']} with its acknowledged password: {status} {payload}")

    def refresh(self, user, session):
        user["touched"] = True
        try:
            status, payload = self.client.call("POST", "/auth/refresh",
                                               {"refresh_token": session["refresh"]})
        except Uncertain:
            # The old token may or may not be spent: the session leaves the ledger.
            drop_session(user, session)
            raise
        if status == 200:
            with self.ledger.lock:
                self.ledger.spent.append((session["refresh"], user, session))
            session.update(session_from(payload))
            self.ledger.ack()
        elif user["unknown"] < 40:
            user["sessions"].remove(session)
            self.ledger.violation(f"refresh of an acknowledged live session of {user['email']}: {status} {payload}")
        else:
            user["sessions"].remove(session)

    def fresh_access(self, user, session):
        if time.time() - session["access_at"] > ACCESS_TTL - 15:
            self.refresh(user, session)
        return session in user["sessions"]

    def change_password(self, user, session):
        if not self.fresh_access(user, session):
            return
        new = "pw-" + secrets.token_hex(10)
        user["touched"] = True
        try:
            status, payload = self.client.call(
                "PUT", "/auth/change-password",
                {"current_password": user["password"], "new_password": new},
                token=session["access"])
        except Uncertain:
            user["pending"].append(new)
            # Other sessions may or may not have been revoked: they leave the ledger.
            for other in [s for s in user["sessions"] if s is not session]:
                drop_session(user, other)
            raise
        if status == 200:
            user["password"] = new
            revoke_all(self.ledger, user, keep=session)
            self.ledger.ack()
        else:
            self.ledger.violation(f"change-password of {user['email']}: {status} {payload}")

    def reset_password(self, user):
        user["touched"] = True
        status, payload = self.client.call("POST", "/auth/forgot-password",
                                           {"email": user["email"]})
        token = payload.get("debug_token") if status == 202 else None
        if status != 202:
            self.ledger.violation(f"forgot-password of {user['email']}: {status} {payload}")
            return
        self.ledger.ack()
        if not token:
            return
        new = "pw-" + secrets.token_hex(10)
        try:
            status, payload = self.client.call("POST", "/auth/reset-password",
                                               {"token": token, "new_password": new})
        except Uncertain:
            user["pending"].append(new)
            for other in list(user["sessions"]):
                drop_session(user, other)
            raise
        if status == 200:
            user["password"] = new
            revoke_all(self.ledger, user)
            with self.ledger.lock:
                self.ledger.used_resets.append(token)
            self.ledger.ack()
        else:
            self.ledger.violation(f"reset-password of {user['email']} with a fresh token: {status} {payload}")

    def logout(self, user, session):
        if not self.fresh_access(user, session):
            return
        user["touched"] = True
        try:
            status, payload = self.client.call("POST", "/auth/logout",
                                               {"refresh_token": session["refresh"]},
                                               token=session["access"])
        except Uncertain:
            drop_session(user, session)
            raise
        if status == 200:
            user["sessions"].remove(session)
            with self.ledger.lock:
                self.ledger.revoked.append(session["refresh"])
                self.ledger.revoked_access.append((session["access"], session["access_at"] + ACCESS_TTL))
            self.ledger.ack()
        else:
            self.ledger.violation(f"logout of {user['email']}: {status} {payload}")


def check(ledger, port, rng):
    """The invariants, on what the last cycle touched and a random sample of the rest."""
    c = Client(port)
    users = ledger.users
    touched = [u for u in users if u["touched"] or u["pending"] or u["registered"] == "maybe"]
    others = [u for u in users if u not in touched]
    for user in touched + rng.sample(others, min(CHECK_SAMPLE, len(others))):
        user["touched"] = False
        if user["registered"] is False:
            continue
        candidates = [user["password"]] + list(reversed(user["pending"]))
        ok = None
        for pw in candidates:
            status, payload = c.call("POST", "/auth/login", {"email": user["email"], "password": pw})
            if status == 200:
                ok = pw
                user["sessions"].append(session_from(payload))
                break
        if ok is None:
            if user["registered"] == "maybe":
                user["registered"] = False  # the registration never happened
                continue
            ledger.violation(f"acknowledged user {user['email']} does not log in with its latest acknowledged password")
            user["registered"] = False
            continue
        user["registered"] = True
        user["password"] = ok
        user["pending"] = []
        # Acknowledged live sessions still refresh (durable rotations).
        for s in list(user["sessions"]):
            status, payload = c.call("POST", "/auth/refresh", {"refresh_token": s["refresh"]})
            if status == 200:
                ledger.spent.append((s["refresh"], user, s))
                s.update(session_from(payload))
            else:
                user["sessions"].remove(s)
                if user["unknown"] < 40:
                    ledger.violation(f"acknowledged live session of {user['email']} lost after restart: {status} {payload}")
        for s in user["sessions"][MAX_KNOWN_SESSIONS:]:
            drop_session(user, s)
    # Nothing spent or revoked comes back: the newest and a random sample of the rest.
    def sample(tokens):
        return tokens[-20:] + rng.sample(tokens[:-20], min(20, max(0, len(tokens) - 20)))

    for token, user, session in sample(ledger.spent):
        status, payload = c.call("POST", "/auth/refresh", {"refresh_token": token})
        if status == 200:
            ledger.violation(f"a spent refresh token of {user['email']} was accepted again")
        elif session in user["sessions"]:
            # Reuse detection revoked the family the replayed token belongs to.
            user["sessions"].remove(session)
            ledger.revoked.append(session["refresh"])
            ledger.revoked_access.append((session["access"], session["access_at"] + ACCESS_TTL))
    for token in sample(ledger.revoked):
        status, payload = c.call("POST", "/auth/refresh", {"refresh_token": token})
        if status == 200:
            ledger.violation("a refresh token of a revoked session was accepted again")
    now = time.time()
    live_access = [(t, exp) for t, exp in ledger.revoked_access if exp > now + 2]
    ledger.revoked_access = live_access
    for token, _ in live_access[-20:]:
        status, payload = c.call("GET", "/auth/verify", token=token)
        if status == 200:
            ledger.violation("an access token of a revoked session verifies again")
    for token in ledger.used_resets[-20:]:
        status, payload = c.call("POST", "/auth/reset-password",
                                 {"token": token, "new_password": "pw-" + secrets.token_hex(10)})
        if status == 200:
            ledger.violation("a used reset token worked again")
    c.close()


def write_config(path, port, store_section):
    with open(path, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
[upstream]
url = "http://127.0.0.1:9"
[store]
{store_section}
purge_interval = "1s"
[tokens]
secret = "{secrets.token_urlsafe(48)}"
access_ttl = "{ACCESS_TTL}s"
leeway = "1s"
[auth]
expose_debug_tokens = true
forgot_cooldown = "0s"
[auth.password]
memory_kib = 1024
iterations = 1
parallelism = 1
[auth.lockout]
max_failures = 0
[rate_limits]
register = "0"
login = "0"
refresh = "0"
forgot_password = "0"
[log]
level = "error"
""")


# GATEHOUSE_* variables are config overrides: none of the caller's reach the server.
SERVER_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}


def wait_ready(port, proc, within=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if proc.poll() is not None:
            return None
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                c.close()
                return time.monotonic() - t0
            c.close()
        except OSError:
            pass
        time.sleep(0.005)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--store-section", required=True)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--sabotage", metavar="STORE_DIR", default=None,
                    help="self-test: delete this sled directory after every kill")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    run = f"{seed:x}"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="gatehouse-torture-")
    config = os.path.join(workdir, "gatehouse.toml")
    write_config(config, port, args.store_section)
    log = open(os.path.join(workdir, "server.log"), "ab")
    ledger = Ledger()
    pools = [[] for _ in range(args.workers)]
    starts = []
    t_begin = time.monotonic()
    cycles = 0
    for cycle in range(args.cycles):
        proc = subprocess.Popen([args.bin, "serve", "--config", config], stdout=log, stderr=log,
                                env=SERVER_ENV)
        took = wait_ready(port, proc)
        if took is None:
            ledger.violation(f"cycle {cycle}: the store did not open (exit {proc.poll()}); see {workdir}/server.log")
            proc.kill()
            proc.wait()
            break
        starts.append(took)
        try:
            check(ledger, port, rng)
        except Uncertain as e:
            ledger.violation(f"cycle {cycle}: the server failed during the checks: {e}")
        stop = threading.Event()
        workers = [Worker(i, port, ledger, pools[i], random.Random(rng.random()), stop, run)
                   for i in range(args.workers)]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(RUN_MIN, RUN_MAX))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if args.sabotage:
            # Self-test: lose the store, as a broken durability promise would; the checks must
            # report violations.
            shutil.rmtree(args.sabotage, ignore_errors=True)
        stop.set()
        for w in workers:
            w.join()
            w.client.close()
        cycles += 1
        if cycle % 50 == 49:
            print(f"  {args.label} cycle {cycle + 1}: {ledger.operations} operations, "
                  f"{len(ledger.violations)} violations", flush=True)
    # A last start and check: what the final kill left must hold too.
    proc = subprocess.Popen([args.bin, "serve", "--config", config], stdout=log, stderr=log,
                                env=SERVER_ENV)
    if wait_ready(port, proc) is None:
        ledger.violation("the store did not open after the last kill")
    else:
        check(ledger, port, rng)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    elapsed = time.monotonic() - t_begin
    users = sum(1 for u in ledger.users if u["registered"] is True)
    print(f"{args.label} seed={seed} cycles={cycles} operations={ledger.operations} "
          f"users={users} spent_checked_pool={len(ledger.spent)} revoked_pool={len(ledger.revoked)} "
          f"resets_used={len(ledger.used_resets)} startup_median_s={statistics.median(starts) if starts else 0:.3f} "
          f"elapsed_s={elapsed:.0f} violations={len(ledger.violations)}", flush=True)
    log.close()
    if ledger.violations:
        print(f"server log kept in {workdir}", flush=True)
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
