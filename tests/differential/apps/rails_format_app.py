"""An ASGI app that routes the way Rails does: every route takes an optional format suffix
(`resources`/`get ... (.:format)`), so `/api/admin.json` and `/api/admin.xml/` reach the
admin handler and `DELETE /api/items/1.json` the delete handler.

As Rails' Journey router does, the path is matched as sent (escapes kept, none decoded),
after `Journey::Router::Utils.normalize_path`: runs of `/` squeezed, a trailing `/`
dropped, escapes' hex upper-cased. Case-sensitive, like Rails. The method override is
Rack::MethodOverride's: a POST's `X-HTTP-Method-Override` header as Rack reads it from the
CGI environment, where `-` and `_` in a name are the same (`X_HTTP_Method_Override` too). A
`_method` in the form body is Rack's other source; no app here honours a body override
(README.md).
"""

import os
import re

from common import asgi_describe, dumps

NAME = os.environ.get("DIFF_FRAMEWORK", "rails-format")

FORMAT = r"(\.[^/]+)?"
ROUTES = [
    (re.compile(r"^/api/public" + FORMAT + r"$"), None, "public"),
    (re.compile(r"^/api/admin" + FORMAT + r"$"), None, "admin"),
    (re.compile(r"^/api/admin/.+$"), None, "admin"),  # get "api/admin/*rest"
    (re.compile(r"^/api/items/([^/.]+)" + FORMAT + r"$"), "DELETE", "item-delete"),
    (re.compile(r"^/api/items/([^/.]+)" + FORMAT + r"$"), None, "item"),
]
OVERRIDABLE = {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "LINK", "UNLINK"}


def normalize_path(path):
    """Journey::Router::Utils.normalize_path."""
    path = re.sub(r"/+", "/", "/" + path)
    if path != "/":
        path = path.removesuffix("/")
        path = re.sub(r"%[a-f0-9]{2}", lambda m: m.group(0).upper(), path)
    return path


def cgi_name(name):
    return "HTTP_" + name.decode("latin-1").upper().replace("-", "_")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body first, as a handler that parses it would
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    method = scope["method"]
    if method == "POST":  # Rack::MethodOverride
        env = {}
        for k, v in scope["headers"]:
            env[cgi_name(k)] = v.decode("latin-1")  # the last one wins, as in a CGI env
        override = env.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if override in OVERRIDABLE:
            method = override
    raw_path = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1")
    path = normalize_path(raw_path)
    handler, status = "not-found", 404
    for pattern, only, name in ROUTES:
        if pattern.match(path) and (only is None or method == only):
            handler, status = name, 200
            break
    body = asgi_describe(NAME, handler, dict(scope, method=method))
    body["routed_path"] = path
    body = dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
