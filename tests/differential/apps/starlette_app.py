"""Starlette with its ordinary router (run by uvicorn with --http httptools and --http h11).

Starlette compiles `/api/admin` to the regex `^/api/admin$` and matches it with re.match on
the percent-decoded path, where Python's `$` also matches before a trailing newline.
"""

import os

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from common import ALL_METHODS, asgi_describe, dumps

NAME = os.environ.get("DIFF_FRAMEWORK", "starlette")


def reply(handler, request, status=200):
    return Response(dumps(asgi_describe(NAME, handler, request.scope)), status,
                    media_type="application/json")


async def public(request):
    return reply("public", request)


async def admin(request):
    return reply("admin", request)


async def item(request):
    await request.body()  # a handler that parses the body: malformed framing surfaces here
    return reply("item-delete" if request.method == "DELETE" else "item", request)


async def not_found(request, exc):
    return reply("not-found", request, getattr(exc, "status_code", 404))


app = Starlette(
    routes=[
        Route("/api/public", public, methods=["GET"]),
        Route("/api/admin", admin, methods=ALL_METHODS),
        Route("/api/admin/{rest:path}", admin, methods=ALL_METHODS),
        Route("/api/items/{item_id}", item, methods=["GET", "POST", "DELETE"]),
    ],
    exception_handlers={404: not_found, 405: not_found},
)
