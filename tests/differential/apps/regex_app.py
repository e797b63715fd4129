"""A bare ASGI app with a hand-written regex route table, as many small services have.

The admin route is case-insensitive (re.IGNORECASE) and `$`-anchored, so it is reached by
`/api/ADMIN` and, because Python's `$` matches before a final newline, by `/api/admin%0A`
once the server has decoded the path. Two more admin routes, `/api/σettings` and
`/api/μsvc`, are reached by `ς`/`Σ` and `µ`/`Μ` (the Unicode case pairs).
"""

import os
import re

from common import asgi_describe, dumps

NAME = os.environ.get("DIFF_FRAMEWORK", "asgi-regex")

ROUTES = [
    (re.compile(r"^/api/public$"), None, "public"),
    (re.compile(r"^/api/admin(/.*)?$", re.IGNORECASE), None, "admin"),
    # Admin routes spelled with letters that have more than one case partner: re.IGNORECASE
    # matches σ with ς and Σ, μ with µ (MICRO SIGN) and Μ.
    (re.compile("^/api/\u03c3ettings(/.*)?$", re.IGNORECASE), None, "admin"),
    (re.compile("^/api/\u03bcsvc(/.*)?$", re.IGNORECASE), None, "admin"),
    (re.compile(r"^/api/items/([^/]+)$"), "DELETE", "item-delete"),
    (re.compile(r"^/api/items/([^/]+)$"), None, "item"),
]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = scope["type"] == "http"
    while more:  # read the whole body first, as a handler that parses it would
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    handler, status = "not-found", 404
    for pattern, method, name in ROUTES:
        if pattern.match(scope["path"]) and (method is None or scope["method"] == method):
            handler, status = name, 200
            break
    body = dumps(asgi_describe(NAME, handler, scope))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
