"""Flask with its ordinary router, behind the method-override WSGI middleware that Flask's
documentation describes, served by werkzeug's threaded server or by the standard library's
wsgiref (which, like CGI, folds `_` in header names into the same WSGI key as `-`).

Usage: flask_app.py PORT NAME werkzeug|wsgiref
"""

import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, Response, request

from common import ALL_METHODS, describe, dumps

PORT = int(sys.argv[1])
NAME = sys.argv[2]
SERVER = sys.argv[3]


class HTTPMethodOverrideMiddleware:
    """The X-HTTP-Method-Override pattern from Flask's documentation: a POST may name the
    method the application runs."""

    allowed_methods = frozenset(ALL_METHODS)
    bodyless_methods = frozenset(["GET", "HEAD", "OPTIONS", "DELETE"])

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in self.allowed_methods:
            environ["REQUEST_METHOD"] = method
        if method in self.bodyless_methods:
            environ["CONTENT_LENGTH"] = "0"
        return self.app(environ, start_response)


app = Flask(__name__)


def reply(handler, status=200):
    env = request.environ
    headers = [(k, v) for k, v in env.items()
               if isinstance(v, str) and (k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH"))]
    raw = env.get("REQUEST_URI") or env.get("RAW_URI") or ""
    body = describe(NAME, handler, request.method, env.get("PATH_INFO", ""), raw,
                    env.get("QUERY_STRING", ""), headers)
    return Response(dumps(body), status, mimetype="application/json")


@app.route("/api/public")
def public():
    return reply("public")


@app.route("/api/admin", methods=ALL_METHODS)
@app.route("/api/admin/<path:rest>", methods=ALL_METHODS)
def admin(rest=None):
    return reply("admin")


@app.route("/api/items/<item_id>", methods=["GET", "POST", "DELETE"])
def item(item_id):
    request.get_data()  # a handler that parses the body: malformed framing surfaces here
    return reply("item-delete" if request.method == "DELETE" else "item")


@app.errorhandler(404)
@app.errorhandler(405)
def not_found(exc):
    return reply("not-found", exc.code)


wsgi = HTTPMethodOverrideMiddleware(app.wsgi_app)
app.wsgi_app = wsgi


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


if __name__ == "__main__":
    if SERVER == "werkzeug":
        import logging

        from werkzeug.serving import run_simple

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        run_simple("127.0.0.1", PORT, app, threaded=True, use_reloader=False)
    elif SERVER == "wsgiref":
        make_server("127.0.0.1", PORT, app, server_class=ThreadingWSGIServer,
                    handler_class=QuietHandler).serve_forever()
    else:
        sys.exit(f"unknown server {SERVER!r}")
