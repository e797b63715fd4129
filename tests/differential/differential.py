#!/usr/bin/env python3
"""Parser-differential test: real upstream frameworks behind gatehouse.

Starts every upstream (Flask, Starlette, FastAPI, a regex ASGI app, a Rails-style format-suffix
router, aiohttp, Express 4 and 5, PHP's built-in server with a Laravel/Symfony-style router,
nginx with regex locations, nginx proxying to Starlette, Go's ServeMux), one gatehouse per
upstream and policy variant, gets a plain user's and an admin's token from each, checks the
positive controls, then sends the corpus (corpus.py) as exact bytes over HTTP/1.1 and a subset
over HTTP/2 (prior knowledge, cleartext), as an anonymous caller and as the plain user.

A request is a VIOLATION when a caller without the admin role gets a 2xx carrying
ADMIN-HANDLER-REACHED, when a header gatehouse must strip shows up in the upstream's echo, or
(class "chunked") when a malformed chunked body is not answered 4xx by gatehouse.

Run through run.sh, which installs everything; see README.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import ctypes
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
APPS = os.path.join(HERE, "apps")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import corpus  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402

MARKER = b"ADMIN-HANDLER-REACHED"
PROBE_HEADER = "X-Differential-Probe"
CONNECT_TIMEOUT = 3.0
REQUEST_DEADLINE = 8.0
START_DEADLINE = 60.0


class HarnessError(Exception):
    """The harness itself is broken: the run cannot say anything about gatehouse."""


def log(msg):
    print(f"[differential {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- child processes ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup():
    # Own process group (so its children go with it) and SIGTERM when we die.
    os.setsid()
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Every process we start; stop_all() ends them (and their process groups)."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.lock = threading.Lock()

    def start(self, name, argv, env=None, cwd=None):
        path = os.path.join(self.logdir, f"{name}.log")
        with open(path, "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd, preexec_fn=_child_setup)
        with self.lock:
            self.procs.append((name, p))
        return p

    def log_tail(self, name, n=25):
        try:
            with open(os.path.join(self.logdir, f"{name}.log"), "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join("    " + line for line in lines[-n:])
        except OSError:
            return "    (no log)"

    def dead(self):
        return [(n, p.returncode) for n, p in self.procs if p.poll() is not None]

    def stop_all(self):
        with self.lock:
            procs, self.procs = self.procs, []
        for _, p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5
        for _, p in procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


_ports_given: set[int] = set()
_port_rng = random.Random()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A port free on 127.0.0.1 now, never handed out before in this run, and outside the
    kernel's ephemeral range, so that none of the many client connections of the run can be
    given it as their local port between this check and the server's bind."""
    lo, hi = _ephemeral_range()
    candidates = (20000, lo) if lo - 20000 >= 2000 else (hi + 1, 65535)
    for _ in range(500):
        port = _port_rng.randrange(*candidates)
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise HarnessError(f"no free port found in {candidates}")


# --- HTTP/1.1 over a raw socket ---------------------------------------------------------------


@dataclass
class Resp:
    status: int | None = None
    headers: list = field(default_factory=list)
    body: bytes = b""
    error: str | None = None  # no (complete) response: why


def _parse_response(buf):
    """(Resp, complete) from the bytes read so far; interim 1xx responses are skipped."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None, False
        head, rest = buf[:end], buf[end + 4:]
        lines = head.split(b"\r\n")
        m = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", lines[0])
        if not m:
            return Resp(error=f"garbled status line {lines[0][:80]!r}"), True
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.strip().lower(), v.strip()))
        if 100 <= status < 200:
            buf = rest
            continue
        hd = dict(headers)
        if b"chunked" in hd.get(b"transfer-encoding", b"").lower():
            body, pos = b"", 0
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    return Resp(status, headers, body), False
                try:
                    size = int(rest[pos:eol].split(b";")[0], 16)
                except ValueError:
                    return Resp(status, headers, body, "bad chunked response"), True
                if size == 0:
                    return Resp(status, headers, body), True
                if len(rest) < eol + 2 + size + 2:
                    return Resp(status, headers, body), False
                body += rest[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
        if b"content-length" in hd:
            n = int(hd[b"content-length"])
            return Resp(status, headers, rest[:n]), len(rest) >= n
        return Resp(status, headers, rest), False  # until EOF


def send_h1(port, data, half_close=False, deadline=REQUEST_DEADLINE):
    end = time.monotonic() + deadline
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        return Resp(error=f"connect: {e}")
    buf = b""
    try:
        s.settimeout(deadline)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may have answered and closed early: read what it said
        while True:
            left = end - time.monotonic()
            if left <= 0:
                resp, _ = _parse_response(buf)
                r = resp or Resp()
                r.error = "timeout"
                return r
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                resp, _ = _parse_response(buf)
                r = resp or Resp()
                r.error = r.error or f"recv: {e}"
                return r
            if not chunk:
                resp, _ = _parse_response(buf)
                if resp is None:
                    return Resp(error="closed without a response" if not buf else f"closed mid-response {buf[:60]!r}")
                return resp
            buf += chunk
            resp, complete = _parse_response(buf)
            if complete:
                return resp
    finally:
        s.close()


def build_h1(req: corpus.Req, hostport: bytes, token: str | None):
    target = req.target.replace(b"{HOSTPORT}", hostport)
    lines = [req.method + b" " + target + b" HTTP/1.1"]
    lines.append(b"Host: " + (req.host if req.host is not None else hostport))
    if token:
        lines.append(b"Authorization: Bearer " + token.encode())
    for name, value in req.headers:
        lines.append(name if value is None else name + b": " + value)
    if req.chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif req.body:
        lines.append(b"Content-Length: " + str(len(req.body)).encode())
        if not any(n.lower() == b"content-type" for n, _ in req.headers):
            lines.append(b"Content-Type: application/json")
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + req.body


# --- HTTP/2 prior knowledge with the h2 package ---------------------------------------------


def send_h2(port, req: corpus.Req, hostport: bytes, token: str | None, deadline=REQUEST_DEADLINE):
    end = time.monotonic() + deadline
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        return Resp(error=f"connect: {e}")
    cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                    validate_outbound_headers=False, normalize_outbound_headers=False,
                                    validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    resp = Resp()
    try:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        headers = [(b":method", req.method), (b":scheme", b"http"),
                   (b":authority", req.h2_authority or hostport),
                   (b":path", req.target.replace(b"{HOSTPORT}", hostport))]
        headers += list(req.h2_pseudo)
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        headers += [(n, v) for n, v in req.headers if v is not None]
        if req.body:
            headers.append((b"content-length", str(len(req.body)).encode()))
        conn.send_headers(sid, headers, end_stream=not req.body)
        if req.body:
            conn.send_data(sid, req.body, end_stream=True)
        s.sendall(conn.data_to_send())
        while True:
            left = end - time.monotonic()
            if left <= 0:
                resp.error = "timeout"
                return resp
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                resp.error = resp.error or "closed"
                return resp
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                resp.error = f"h2 protocol error: {e}"
                return resp
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        if k == b":status":
                            resp.status = int(v)
                        else:
                            resp.headers.append((k, v))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    resp.body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    return resp
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    resp.error = f"stream reset ({ev.error_code!r})"
                    return resp
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    resp.error = f"GOAWAY ({ev.error_code!r})"
                    return resp
            out = conn.data_to_send()
            if out:
                s.sendall(out)
    except OSError as e:
        resp.error = resp.error or f"socket: {e}"
        return resp
    finally:
        s.close()


# --- upstreams -------------------------------------------------------------------------------


@dataclass
class Upstream:
    name: str
    port: int = 0
    kind: str = ""  # describes the stack, for the report
    proc_name: str = ""
    framework: str = ""  # the name its handlers put in their bodies
    proc: object = None
    # Whether its POST handler reads a chunked body before answering. One that answers first
    # (nginx `return`, HTTP/1.0 wsgiref) races gatehouse's check of the body, so the
    # "chunked" class is not sent to it.
    reads_bodies: bool = True
    # What it has beyond the common handlers; a corpus request with `needs` goes only to the
    # upstreams that have it. "unicode-routes": admin handlers at /api/σettings and /api/μsvc.
    features: frozenset = frozenset()
    # The parsing quirks the run relies on, checked directly against the upstream (without
    # gatehouse) before the corpus: (method, target, extra header lines, bytes the answer
    # must contain). If the upstream lacks one, a clean run would prove nothing about it.
    quirks: tuple = ()


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
        return (out.stdout + out.stderr).decode("utf-8", "replace").strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return f"unknown ({e})"


def py_versions():
    from importlib.metadata import version

    return {p: version(p) for p in ["flask", "werkzeug", "starlette", "fastapi", "uvicorn", "httptools",
                                     "h11", "aiohttp", "h2"]}


def php_version(php):
    return tool_version([php, "-n", "-r", "echo 'php ', PHP_VERSION, ' (', PHP_SAPI, ')', PHP_EOL;"])


def node_versions(node):
    script = ("for (const p of ['express4','express5','method-override'])"
              " console.log(p, require(p + '/package.json').version)")
    out = subprocess.run([node, "-e", script], cwd=HERE, capture_output=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise HarnessError(f"node modules missing (npm ci in tests/differential): {out.stderr.decode()[-400:]}")
    return dict(line.split(" ", 1) for line in out.stdout.decode().splitlines())


def wait_ready(children, name, proc, port, path=b"/", deadline=START_DEADLINE, want=None):
    """Polls GET path on port until it answers (with status `want`, when given)."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise HarnessError(f"{name} exited with {proc.returncode} while starting:\n{children.log_tail(name)}")
        r = send_h1(port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    deadline=2)
        if r.status is not None and (want is None or r.status == want):
            if proc.poll() is not None:  # something else answered on its port
                raise HarnessError(f"{name} exited with {proc.returncode}; another process answers on "
                                   f"{port}:\n{children.log_tail(name)}")
            return
        last = r.status or r.error
        time.sleep(0.05)  # poll interval, not synchronisation
    raise HarnessError(f"{name} not ready on 127.0.0.1:{port} after {deadline}s (last: {last}):\n"
                       f"{children.log_tail(name)}")


def nginx_conf(prefix, regex_port, proxy_port, backend_port):
    echo = ",".join(f'["{n}","$http_{n.replace("-", "_")}"]'
                    for n in corpus.SPOOF_NAMES + ["x-auth-user-id", PROBE_HEADER.lower(), "host"])

    def body(handler, extra=""):
        marker = f',"marker":"{MARKER.decode()}"' if handler in ("admin", "item-delete") else ""
        return (f"'{{\"framework\":\"nginx-regex\",\"handler\":\"{handler}\",\"location\":\"{extra}\","
                f"\"method\":\"$request_method\",\"path\":\"$uri\",\"raw_target\":\"$request_uri\","
                f"\"headers\":[{echo}]{marker}}}'")

    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/json;

    # nginx as the upstream: regex locations answered by nginx itself.
    server {{
        listen 127.0.0.1:{regex_port};
        location = /api/public {{ return 200 {body("public")}; }}
        location ~ ^/api/admin$ {{ return 200 {body("admin", "exact-regex")}; }}
        location ~* ^/api/admin(/.*)?$ {{ return 200 {body("admin", "case-insensitive-regex")}; }}
        location ~ ^/api/items/[^/]+$ {{
            if ($request_method = DELETE) {{ return 200 {body("item-delete", "items-regex")}; }}
            return 200 {body("item", "items-regex")};
        }}
        location / {{ return 404 {body("not-found")}; }}
    }}

    # nginx in a proxy_pass chain in front of a Python app; the request URI goes on unchanged.
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_upstreams(args, children, tmp):
    """Starts every upstream; returns [Upstream] in a fixed order, all answering."""
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env["PYTHONPATH"] = APPS
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    ups: list[Upstream] = []
    specs = []  # (Upstream, argv, env, readiness path)

    def add(name, kind, argv_of_port, extra_env=None):
        u = Upstream(name, free_port(), kind, name, name)
        e = dict(env, DIFF_FRAMEWORK=name, **(extra_env or {}))
        specs.append((u, argv_of_port(u.port), e))
        ups.append(u)
        return u

    uvicorn = [py, "-m", "uvicorn", "--host", "127.0.0.1", "--app-dir", APPS, "--loop", "asyncio",
               "--no-access-log", "--log-level", "warning", "--lifespan", "off", "--timeout-graceful-shutdown", "1"]
    add("flask-werkzeug", "Flask on werkzeug's threaded server",
        lambda p: [py, os.path.join(APPS, "flask_app.py"), str(p), "flask-werkzeug", "werkzeug"])
    add("flask-wsgiref", "Flask on the stdlib wsgiref server",
        lambda p: [py, os.path.join(APPS, "flask_app.py"), str(p), "flask-wsgiref", "wsgiref"]).reads_bodies = False
    backend = None
    for app_mod, fw in [("starlette_app:app", "starlette"), ("fastapi_app:app", "fastapi")]:
        for http in ("httptools", "h11"):
            u = add(f"{fw}-{http}", f"{fw} on uvicorn --http {http}",
                    lambda p, m=app_mod, h=http: uvicorn + ["--http", h, "--port", str(p), m])
            if fw == "starlette" and http == "httptools":
                backend = u
    add("asgi-regex", "regex-routed ASGI app on uvicorn --http h11",
        lambda p: uvicorn + ["--http", "h11", "--port", str(p), "regex_app:app"]
        ).features = frozenset({"unicode-routes"})
    ups[-1].quirks = ((b"GET", b"/api/%C2%B5svc", b"", MARKER), (b"GET", b"/api/%CF%82ettings/x", b"", MARKER),
                      (b"GET", b"/api/ADMIN", b"", MARKER))
    add("rails-format", "Rails-style (.:format) router, ASGI on uvicorn --http httptools",
        lambda p: uvicorn + ["--http", "httptools", "--port", str(p), "rails_format_app:app"]).quirks = (
        (b"GET", b"/api/admin.json", b"", MARKER), (b"GET", b"/api/admin.xml/", b"", MARKER),
        (b"DELETE", b"/api/items/1.json", b"", MARKER),
        (b"POST", b"/api/items/1", b"X_HTTP_Method_Override: DELETE\r\n", MARKER))
    # PHP's built-in server, no php.ini (-n) so that a distribution's settings change nothing.
    docroot = os.path.join(tmp, "php-docroot")
    os.makedirs(docroot, exist_ok=True)
    for mode, kind in [("laravel", "case-sensitive Laravel/Symfony-style routes"),
                       ("ci", "case-insensitive routes, ASP.NET-style query override")]:
        add(f"php-{mode}", f"PHP built-in server (php -S), {kind}",
            lambda p: [args.php, "-n", "-d", "display_errors=stderr", "-d", "log_errors=0",
                       "-S", f"127.0.0.1:{p}", "-t", docroot, os.path.join(APPS, "php_router.php")],
            extra_env={"DIFF_PHP_MODE": mode, "PHP_CLI_SERVER_WORKERS": "2"}
            ).features = frozenset({"unicode-routes"})
        ups[-1].quirks = (
            (b"POST", b"/api/items/1?_method%00x=DELETE", b"", MARKER),
            (b"POST", b"/api/items/1?%20_method=DELETE", b"", MARKER),
            (b"POST", b"/api/items/1", b"X.HTTP.Method.Override: DELETE\r\n", MARKER),
            (b"GET", b"/api/public", b"X-Auth-Roles: reader\r\nX.Auth.Roles: quirk-roles\r\n",
             b'["HTTP_X_AUTH_ROLES","quirk-roles"]'),
        ) + ((
            (b"POST", b"/api/items/1?X%u002DHTTP-Method-Override=DELETE", b"", MARKER),
            (b"POST", b"/api/items/1?x-http-method-overr%C4%B1de=DELETE", b"", MARKER),
            (b"GET", b"/api/%CF%82ettings", b"", MARKER), (b"GET", b"/api/%C2%B5svc", b"", MARKER),
            (b"GET", b"/api/ADMIN", b"", MARKER),
        ) if mode == "ci" else ((b"GET", b"/api/%CF%83ettings", b"", MARKER),))
    add("aiohttp", "aiohttp.web", lambda p: [py, os.path.join(APPS, "aiohttp_app.py"), str(p), "aiohttp"])
    for ex in ("express4", "express5"):
        add(ex, f"{ex} + method-override",
            lambda p, ex=ex: [args.node, os.path.join(APPS, "express_app.js"), ex, str(p), ex])
    add("go-servemux", "Go net/http ServeMux", lambda p: [args.goapp, str(p), "go-servemux"])

    wanted = set(args.only.split(",")) if args.only else None
    if wanted and "nginx-proxy" in wanted:
        wanted.add(backend.name)
    for u, argv, e in specs:
        if wanted is None or u.name in wanted:
            u.proc = children.start(u.name, argv, env=e, cwd=HERE)
    ups = [u for u in ups if u.proc is not None]

    # nginx: one master, two servers (regex upstream, and proxy_pass to Starlette/httptools).
    nginx_regex = Upstream("nginx-regex", free_port(), "nginx regex locations", "nginx", "nginx-regex",
                           reads_bodies=False)
    nginx_proxy = Upstream("nginx-proxy", free_port(), f"nginx proxy_pass -> {backend.name}", "nginx",
                           backend.name)
    prefix = os.path.join(tmp, "nginx")
    for d in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]:
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(prefix, nginx_regex.port, nginx_proxy.port, backend.port))
    if wanted and not wanted & {"nginx-regex", "nginx-proxy"}:
        for u in ups:
            wait_ready(children, u.proc_name, u.proc, u.port, b"/api/public", want=200)
        check_quirks(ups)
        return ups
    test = subprocess.run([args.nginx, "-t", "-p", prefix, "-c", conf, "-g", "daemon off;"],
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    if test.returncode != 0:
        raise HarnessError(f"nginx -t failed:\n{test.stderr.decode()}")
    nproc = children.start("nginx", [args.nginx, "-p", prefix, "-c", conf, "-g", "daemon off;"], env=env)
    nginx_regex.proc = nginx_proxy.proc = nproc
    ups += [nginx_regex, nginx_proxy]

    for u in ups:
        wait_ready(children, u.proc_name, u.proc, u.port, b"/api/public", want=200)
    check_quirks(ups)
    return ups


def check_quirks(ups):
    """Each upstream's quirks, sent to it directly: the harness's check that the upstream
    still parses the way the corpus assumes."""
    missing = []
    for u in ups:
        for method, target, extra, want in u.quirks:
            body = b"{}" if method == b"POST" else b""
            data = (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra +
                    (b"Content-Length: 2\r\nContent-Type: application/json\r\n" if body else b"") +
                    b"Connection: close\r\n\r\n" + body)
            r = send_h1(u.port, data)
            if r.status != 200 or want not in r.body:
                missing.append(f"{u.name}: {method.decode()} {target.decode()} {extra!r} answered "
                               f"{r.status or r.error} without {want!r}: {r.body[:200]!r}")
    if missing:
        raise HarnessError("upstreams lack the quirks the corpus relies on:\n  " + "\n  ".join(missing))


# --- gatehouse -------------------------------------------------------------------------------

VARIANTS = {
    # The broader /api/** rule is "authenticated": a bypass is a plain user reaching admin.
    "auth": "authenticated",
    # The broader rule is "public": a bypass is anyone reaching admin.
    "public": "public",
}


def gatehouse_toml(port, upstream_port, store, secret, broader):
    return f"""# generated by tests/differential/differential.py
[server]
listen = "127.0.0.1:{port}"
workers = 1
header_read_timeout = "5s"

[upstream]
url = "http://127.0.0.1:{upstream_port}"
timeout = "5s"
connect_timeout = "2s"

[store]
path = "{store}"

[tokens]
secret = "{secret}"
access_ttl = "1h"

[auth]
registration = "open"
default_roles = ["reader"]

[auth.password]
# Cheaper still than src/demo.toml: the debug build's argon2 is slow, and 26 instances each
# hash four times before the corpus starts.
memory_kib = 64
iterations = 1

[auth.lockout]
max_failures = 0

[roles]
admin = {{ inherits = ["reader"] }}

[rate_limits]
login = "1000000/1m"
register = "1000000/1m"
refresh = "1000000/1m"
forgot_password = "1000000/1m"
proxy = "0"

[policy]
default = "deny"

[[routes]]
path = "/api/admin/**"
roles = ["admin"]

[[routes]]
path = "/api/items/**"
methods = ["DELETE"]
roles = ["admin"]

# Admin paths with letters that have several case partners (σ: ς, Σ; μ: µ, Μ); only some
# upstreams have handlers there (Upstream.features "unicode-routes").
[[routes]]
path = "/api/%CF%83ettings/**"
roles = ["admin"]

[[routes]]
path = "/api/%CE%BCsvc/**"
roles = ["admin"]

[[routes]]
path = "/api/**"
access = "{broader}"

[log]
format = "pretty"
level = "warn"
"""


@dataclass
class Gate:
    upstream: Upstream
    variant: str
    port: int
    config: str
    name: str
    user_token: str = ""
    admin_token: str = ""
    user_id: str = ""
    proc: object = None


def run_cmd(argv, env, stdin=b"", timeout=60):
    r = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def post_json(port, path, payload, token=None):
    body = json.dumps(payload).encode()
    head = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1:%d" % port,
            b"Content-Type: application/json", b"Content-Length: %d" % len(body), b"Connection: close"]
    if token:
        head.append(b"Authorization: Bearer " + token.encode())
    r = send_h1(port, b"\r\n".join(head) + b"\r\n\r\n" + body, deadline=30)
    try:
        return r.status, json.loads(r.body or b"null")
    except ValueError:
        return r.status, {"raw": r.body[:300].decode("latin-1"), "error": r.error}


def jwt_claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def start_gatehouses(args, children, tmp, upstreams):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env["NO_COLOR"] = "1"
    gates = []
    admin_password = secrets.token_urlsafe(18)
    for u in upstreams:
        for variant, broader in VARIANTS.items():
            name = f"gatehouse-{u.name}-{variant}"
            d = os.path.join(tmp, name)
            os.makedirs(d)
            port = free_port()
            cfg = os.path.join(d, "config.toml")
            with open(cfg, "w") as f:
                f.write(gatehouse_toml(port, u.port, os.path.join(d, "store"), secrets.token_urlsafe(64), broader))
            gates.append(Gate(u, variant, port, cfg, name))

    def prepare(g):
        rc, out = run_cmd([args.gatehouse, "check-config", "--config", g.config], env)
        if rc != 0:
            raise HarnessError(f"gatehouse check-config failed for {g.name}:\n{out}")
        rc, out = run_cmd([args.gatehouse, "user", "add", "--config", g.config, "--email",
                           "admin@differential.test", "--roles", "admin", "--password-stdin"],
                          env, stdin=admin_password.encode() + b"\n")
        if rc != 0:
            raise HarnessError(f"gatehouse user add failed for {g.name}:\n{out}")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(prepare, g) for g in gates]:
            f.result()
    for g in gates:  # from the main thread: PR_SET_PDEATHSIG follows the spawning thread
        g.proc = children.start(g.name, [args.gatehouse, "serve", "--config", g.config], env=env)
    for g in gates:
        wait_ready(children, g.name, g.proc, g.port, b"/readyz", want=200)

    def tokens(g):
        user_password = secrets.token_urlsafe(18)
        email = f"user-{secrets.token_hex(4)}@differential.test"
        st, body = post_json(g.port, b"/auth/register", {"email": email, "password": user_password})
        if st != 201:
            raise HarnessError(f"{g.name}: register answered {st}: {body}")
        st, body = post_json(g.port, b"/auth/login", {"email": email, "password": user_password})
        if st != 200 or "access_token" not in body:
            raise HarnessError(f"{g.name}: user login answered {st}: {body}")
        g.user_token = body["access_token"]
        g.user_id = jwt_claims(g.user_token)["sub"]
        st, body = post_json(g.port, b"/auth/login", {"email": "admin@differential.test", "password": admin_password})
        if st != 200 or "access_token" not in body:
            raise HarnessError(f"{g.name}: admin login answered {st}: {body}")
        g.admin_token = body["access_token"]
        if "admin" not in jwt_claims(g.admin_token).get("roles", []):
            raise HarnessError(f"{g.name}: the admin token has no admin role")
        if "admin" in jwt_claims(g.user_token).get("roles", []):
            raise HarnessError(f"{g.name}: the plain user's token has the admin role")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(tokens, g) for g in gates]:
            f.result()
    dead = children.dead()
    if dead:
        raise HarnessError("processes died while starting: " + ", ".join(
            f"{n} (exit {c}):\n{children.log_tail(n)}" for n, c in dead))
    return gates


# --- positive controls -----------------------------------------------------------------------


def controls(gates):
    """The harness's own checks: if one fails, a clean corpus run would prove nothing."""
    results, failures = [], []
    probe = "probe-" + secrets.token_hex(6)
    for g in gates:
        hp = b"127.0.0.1:%d" % g.port
        checks = [
            ("admin GET /api/admin reaches the admin handler", corpus.Req("control", "", b"GET", b"/api/admin"),
             g.admin_token, lambda r: r.status == 200 and MARKER in r.body
             and b'"framework":"%s"' % g.upstream.framework.encode() in r.body.replace(b'": "', b'":"')),
            ("admin DELETE /api/items/1 reaches the delete handler", corpus.Req("control", "", b"DELETE", b"/api/items/1"),
             g.admin_token, lambda r: r.status == 200 and MARKER in r.body),
            ("admin GET /api/admin/users reaches the admin handler",
             corpus.Req("control", "", b"GET", b"/api/admin/users"), g.admin_token,
             lambda r: r.status == 200 and MARKER in r.body),
            ("user GET /api/admin is 403", corpus.Req("control", "", b"GET", b"/api/admin"),
             g.user_token, lambda r: r.status == 403),
            ("user DELETE /api/items/1 is 403", corpus.Req("control", "", b"DELETE", b"/api/items/1"),
             g.user_token, lambda r: r.status == 403),
            ("anonymous GET /api/admin is 401", corpus.Req("control", "", b"GET", b"/api/admin"),
             None, lambda r: r.status == 401),
            ("user GET /api/public is echoed with gatehouse's identity headers and a probe header",
             corpus.Req("control", "", b"GET", b"/api/public", headers=((PROBE_HEADER.encode(), probe.encode()),)),
             g.user_token,
             lambda r: r.status == 200 and b'"public"' in r.body and g.user_id.encode() in r.body
             and probe.encode() in r.body),
            ("user POST /api/items/1 reaches the item handler, not the delete one",
             corpus.Req("control", "", b"POST", b"/api/items/1", body=b"{}"), g.user_token,
             lambda r: r.status == 200 and b'"item"' in r.body and MARKER not in r.body),
            ("user POST /api/items/1 with a well-formed chunked body reaches the item handler",
             corpus.Req("control", "", b"POST", b"/api/items/1", body=b"5\r\nhello\r\n0\r\n\r\n", chunked=True),
             g.user_token, lambda r: r.status == 200 and b'"item"' in r.body),
            ("anonymous GET /api/public is " + ("200" if g.variant == "public" else "401"),
             corpus.Req("control", "", b"GET", b"/api/public"), None,
             lambda r: r.status == (200 if g.variant == "public" else 401)),
        ]
        if "unicode-routes" in g.upstream.features:
            for path in (b"/api/%CF%83ettings", b"/api/%CE%BCsvc/x"):
                checks += [
                    (f"admin GET {path.decode()} reaches the admin handler",
                     corpus.Req("control", "", b"GET", path), g.admin_token,
                     lambda r: r.status == 200 and MARKER in r.body),
                    (f"user GET {path.decode()} is 403", corpus.Req("control", "", b"GET", path),
                     g.user_token, lambda r: r.status == 403),
                ]
        for label, req, token, ok in checks:
            for proto in ("h1", "h2"):
                if proto == "h2" and (req.headers or req.chunked):
                    continue
                data = build_h1(req, hp, token)
                r = send_h1(g.port, data) if proto == "h1" else send_h2(g.port, req, hp, token)
                passed = bool(ok(r))
                entry = {"gatehouse": g.name, "check": label, "proto": proto, "status": r.status,
                         "error": r.error, "passed": passed}
                results.append(entry)
                if not passed:
                    failures.append(f"{g.name} [{proto}]: {label}: got {r.status} {r.error or ''} "
                                    f"{r.body[:200]!r}")
    return results, failures


# --- the corpus run --------------------------------------------------------------------------


def judge(req, caller, r: Resp):
    """A list of reasons this response is a violation (empty = pass)."""
    reasons = []
    if caller != "admin" and r.status is not None and 200 <= r.status < 300 and MARKER in r.body:
        reasons.append("admin handler reached")
    for f in req.forbid:
        if f in r.body:
            reasons.append(f"spoofed header reached the upstream ({f.decode('latin-1')})")
    if req.check == "chunked" and not (r.status is not None and 400 <= r.status < 500):
        reasons.append(f"malformed chunked body answered {r.status if r.status is not None else r.error!r}, not 4xx")
    return reasons


def shown_request(data, g):
    """The exact bytes sent, with the (long) token shown as a placeholder."""
    return repr(data.replace(g.user_token.encode(), b"<user-token>").replace(b"127.0.0.1:%d" % g.port, b"{HOSTPORT}"))


def run_corpus(gates, reqs, workers, seed):
    tasks = []
    for g in gates:
        for req in reqs:
            if req.check == "chunked" and not g.upstream.reads_bodies:
                continue
            if req.needs and req.needs not in g.upstream.features:
                continue
            for caller in ("anonymous", "user"):
                for proto in req.protos:
                    tasks.append((g, req, caller, proto))
    random.Random(seed).shuffle(tasks)  # interleave upstreams so no one is flooded at once

    def one(task):
        g, req, caller, proto = task
        token = g.user_token if caller == "user" else None
        hp = b"127.0.0.1:%d" % g.port
        if proto == "h1":
            data = build_h1(req, hp, token)
            r = send_h1(g.port, data, req.half_close)
        else:
            r = send_h2(g.port, req, hp, token)
            data = None
        return task, data, r, judge(req, caller, r)

    results = []
    done = 0
    t0 = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        for res in pool.map(one, tasks):
            results.append(res)
            done += 1
            if done % 10000 == 0:
                log(f"  {done}/{len(tasks)} requests ({done / (time.monotonic() - t0):.0f}/s)")
    finally:
        # On Ctrl-C or an error: drop what has not started; what runs ends within its deadline.
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def h2_repr(req, g, caller):
    pseudo = [(b":method", req.method), (b":authority", req.h2_authority or b"{HOSTPORT}"),
              (b":path", req.target)] + list(req.h2_pseudo)
    hdrs = ([(b"authorization", b"Bearer <user-token>")] if caller == "user" else []) + \
        [(n, v) for n, v in req.headers if v is not None]
    return "h2 " + repr(pseudo + hdrs) + (f" body={req.body!r}" if req.body else "")


def report(args, gates, reqs, results, control_results, control_failures, versions, started, errors):
    rows = defaultdict(lambda: Counter())
    violations = []
    statuses = defaultdict(Counter)
    no_response = defaultdict(Counter)
    for (g, req, caller, proto), data, r, reasons in results:
        key = (g.upstream.name, g.variant, req.cls)
        rows[key]["sent"] += 1
        rows[key]["violations"] += bool(reasons)
        rows[key]["no_response"] += r.status is None
        statuses[req.cls][r.status if r.status is not None else "none"] += 1
        if r.status is None:
            no_response[f"{req.cls} | {proto} | {req.label} | {r.error}"][g.upstream.name] += 1
        if reasons:
            violations.append({
                "upstream": g.upstream.name, "variant": g.variant, "caller": caller, "proto": proto,
                "class": req.cls, "label": req.label, "status": r.status, "error": r.error,
                "reasons": reasons,
                "request": shown_request(data, g) if data is not None else h2_repr(req, g, caller),
                "response_body": r.body[:400].decode("latin-1"),
            })

    upstream_names = list(dict.fromkeys(g.upstream.name for g in gates))
    classes = list(dict.fromkeys(r.cls for r in reqs))
    print()
    print("=" * 100)
    print("SUMMARY per upstream x variant x class (variant auth: /api/** authenticated; "
          "public: /api/** public)")
    print(f"{'upstream':22} {'variant':7} {'class':16} {'sent':>6} {'violations':>10} {'no-response':>11}")
    for u in upstream_names:
        for v in VARIANTS:
            for c in classes:
                row = rows.get((u, v, c))
                if row:
                    flag = "  <-- FAIL" if row["violations"] else ""
                    print(f"{u:22} {v:7} {c:16} {row['sent']:6} {row['violations']:10} {row['no_response']:11}{flag}")

    # Violations, grouped by the request sent (one entry per request, with where it hit).
    grouped = defaultdict(list)
    for v in violations:
        grouped[(v["class"], v["proto"], v["request"], tuple(v["reasons"]))].append(v)
    print()
    print("=" * 100)
    print(f"VIOLATIONS: {len(violations)} ({len(grouped)} distinct requests; in the request bytes the "
          f"plain user's token is shown as <user-token> and the gatehouse address as {{HOSTPORT}})")
    for (cls, proto, request, reasons), hits in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        where = ", ".join(sorted(f"{h['upstream']}/{h['variant']}/{h['caller']}={h['status'] or h['error']}"
                                 for h in hits))
        print(f"[{cls}] {'; '.join(reasons)}")
        print(f"    request: {request}")
        print(f"    hit: {where}")

    by_class_fw = defaultdict(Counter)
    for v in violations:
        by_class_fw[v["class"]][v["upstream"]] += 1
    if by_class_fw:
        print()
        print("VIOLATIONS by class and upstream:")
        for c in classes:
            if by_class_fw.get(c):
                print(f"  {c:16} " + ", ".join(f"{u}={n}" for u, n in sorted(by_class_fw[c].items())))

    if control_failures:
        print()
        print(f"POSITIVE CONTROL FAILURES ({len(control_failures)}): the harness is broken")
        for f in control_failures:
            print("  " + f)
    for e in errors:
        print(f"HARNESS ERROR: {e}")

    failed = len(violations)
    passed = len(results) - failed
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        json.dump({
            "gatehouse": args.gatehouse,
            "started": started,
            "duration_seconds": round(time.time() - started, 1),
            "versions": versions,
            "upstreams": {g.upstream.name: g.upstream.kind for g in gates},
            "variants": VARIANTS,
            "corpus": {"distinct_requests": len(reqs), "by_class": Counter(r.cls for r in reqs),
                       "h2_requests": sum("h2" in r.protos for r in reqs), "sent": len(results)},
            "status_by_class": {c: {str(k): n for k, n in s.items()} for c, s in statuses.items()},
            "no_response": {k: dict(v) for k, v in sorted(no_response.items())},
            "summary": [{"upstream": u, "variant": v, "class": c, **rows[(u, v, c)]}
                        for u in upstream_names for v in VARIANTS for c in classes if (u, v, c) in rows],
            "controls": control_results,
            "control_failures": control_failures,
            "errors": errors,
            "violations": violations,
            "passed": passed,
            "failed": failed,
        }, f, indent=1, default=str)
    print()
    print(f"report: {os.path.relpath(args.report, REPO)}; corpus: {len(reqs)} distinct requests, "
          f"{len(results)} sent; {time.time() - started:.0f}s")
    return passed, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gatehouse", required=True, help="the gatehouse binary")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "nginx")
    ap.add_argument("--node", default=shutil.which("node") or "node")
    ap.add_argument("--php", default=shutil.which("php") or "php")
    ap.add_argument("--goapp", required=True, help="the built Go upstream")
    ap.add_argument("--report", default=os.path.join(REPO, "target", "differential", "report.json"))
    ap.add_argument("--workers", type=int, default=24, help="concurrent client requests")
    ap.add_argument("--h2-per-class", type=int, default=12)
    ap.add_argument("--only", default="", help="comma-separated upstream names (default: all)")
    ap.add_argument("--classes", default="", help="comma-separated corpus classes (default: all)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs and logs (printed path)")
    args = ap.parse_args()
    for a in ("gatehouse", "goapp", "nginx", "node", "php"):
        setattr(args, a, os.path.abspath(getattr(args, a)) if os.sep in getattr(args, a) else getattr(args, a))

    started = time.time()
    closing = "0 passed, 1 failed"  # until a run says otherwise
    tmp = tempfile.mkdtemp(prefix="gatehouse-differential-")
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    children = Children(logdir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Also SIGINT: a shell without job control starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 2
    try:
        reqs = corpus.build(args.h2_per_class, args.seed)
        if args.classes:
            wanted = set(args.classes.split(","))
            unknown = wanted - set(corpus.CLASSES)
            if unknown:
                raise HarnessError(f"unknown corpus classes: {sorted(unknown)}")
            reqs = [r for r in reqs if r.cls in wanted]
        versions = {"gatehouse": tool_version([args.gatehouse, "--version"]),
                    "nginx": tool_version([args.nginx, "-v"]),
                    "go": tool_version(["go", "version"]) if shutil.which("go") else "?",
                    "node": tool_version([args.node, "--version"]), "php": php_version(args.php),
                    "python": sys.version.split()[0]}
        versions.update(py_versions())
        versions.update(node_versions(args.node))
        log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        log(f"corpus: {len(reqs)} distinct requests ({sum('h2' in r.protos for r in reqs)} also or only over HTTP/2)")

        ups = start_upstreams(args, children, tmp)
        if args.only:
            wanted = set(args.only.split(","))
            ups = [u for u in ups if u.name in wanted]
            if not ups:
                raise HarnessError(f"--only matched no upstream: {args.only}")
        log(f"{len(ups)} upstreams ready: " + ", ".join(f"{u.name}:{u.port}" for u in ups))
        gates = start_gatehouses(args, children, tmp, ups)
        log(f"{len(gates)} gatehouse instances ready, tokens issued")

        control_results, control_failures = controls(gates)
        log(f"positive controls: {sum(c['passed'] for c in control_results)}/{len(control_results)} passed")
        errors = []
        if control_failures:
            errors.append(f"{len(control_failures)} positive controls failed")
            results = []
        else:
            t = time.monotonic()
            results = run_corpus(gates, reqs, args.workers, args.seed)
            log(f"corpus sent: {len(results)} requests in {time.monotonic() - t:.1f}s")
            c2 = controls(gates)  # nothing the corpus did may have broken the harness
            if c2[1]:
                control_failures += ["after the corpus: " + f for f in c2[1]]
                errors.append("positive controls failed after the corpus")
            control_results += c2[0]
        dead = children.dead()
        if dead:
            errors.append("processes died during the run: " + ", ".join(f"{n} (exit {c})" for n, c in dead))
            for n, _ in dead:
                print(f"--- log of {n}:\n{children.log_tail(n)}")
        unanswered = Counter(g.name for (g, req, caller, proto), _, r, _ in results
                             if r.error and r.error.startswith("connect"))
        if unanswered:
            errors.append(f"connections refused: {dict(unanswered)}")
        timeouts = Counter(g.name for (g, req, caller, proto), _, r, _ in results if r.error == "timeout")
        if timeouts:  # the run is incomplete: these requests have no verdict
            errors.append(f"requests got no answer within {REQUEST_DEADLINE}s: {dict(timeouts)}")
        passed, failed = report(args, gates, reqs, results, control_results, control_failures, versions,
                                started, errors)
        code = 1 if (failed or control_failures or errors) else 0
        if code:
            log("FAILED: " + "; ".join(filter(None, [f"{failed} violations" if failed else "",
                                                      "positive controls failed" if control_failures else "",
                                                      *errors])))
        else:
            log("OK: no violations, positive controls passed")
        # A broken harness counts as a failure even when no corpus request failed.
        closing = f"{passed} passed, {failed if not code or failed else 1} failed"
    except HarnessError as e:
        print(f"HARNESS ERROR: {e}", flush=True)
        code = 2
    except KeyboardInterrupt as e:
        print(f"interrupted ({e})", flush=True)
        code = 130
    except Exception:  # a bug in the harness is a failure too, never a silent pass
        import traceback

        traceback.print_exc()
        print("HARNESS ERROR: unexpected exception (above)")
        code = 2
    finally:
        children.stop_all()
        if args.keep_tmp or code == 2:
            log(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(closing, flush=True)  # the last line: CI reads it
    sys.exit(code)


if __name__ == "__main__":
    main()
