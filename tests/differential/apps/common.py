"""What every Python upstream answers: one JSON shape, so the driver reads them all alike.

The public handler echoes the headers it received (so the driver can see that stripped
headers never arrive); the admin handlers say ADMIN-HANDLER-REACHED (so the driver can see
that a caller without the admin role never gets there).
"""

import json

MARKER = "ADMIN-HANDLER-REACHED"

# Every method a handler answers, so a method cannot miss a handler by being unusual.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def describe(framework, handler, method, path, raw_target, query, headers):
    """The body of every response: which handler ran, on what, with which headers."""
    body = {
        "framework": framework,
        "handler": handler,
        "method": method,
        "path": path,
        "raw_target": raw_target,
        "query": query,
        "headers": [[k, v] for k, v in headers],
    }
    if handler in ("admin", "item-delete"):
        body["marker"] = MARKER
    return body


def dumps(body):
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def asgi_describe(framework, handler, scope):
    """describe() for an ASGI scope (Starlette, FastAPI, the regex app)."""
    raw_path = scope.get("raw_path") or b""
    return describe(
        framework,
        handler,
        scope["method"],
        scope["path"],
        raw_path.decode("latin-1"),
        (scope.get("query_string") or b"").decode("latin-1"),
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
    )
