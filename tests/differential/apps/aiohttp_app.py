"""aiohttp.web with its ordinary router. Usage: aiohttp_app.py PORT [NAME]"""

import sys

from aiohttp import web

from common import describe, dumps

NAME = sys.argv[2] if len(sys.argv) > 2 else "aiohttp"


def reply(handler, request, status=200):
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    body = describe(NAME, handler, request.method, request.path, request.raw_path,
                    request.query_string, headers)
    return web.Response(body=dumps(body), status=status, content_type="application/json")


async def public(request):
    return reply("public", request)


async def admin(request):
    return reply("admin", request)


async def item(request):
    await request.read()  # a handler that parses the body: malformed framing surfaces here
    return reply("item-delete" if request.method == "DELETE" else "item", request)


@web.middleware
async def not_found(request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return reply("not-found", request, exc.status)
        raise


def main():
    app = web.Application(middlewares=[not_found])
    app.router.add_get("/api/public", public)
    app.router.add_route("*", "/api/admin", admin)
    app.router.add_route("*", "/api/admin/{rest:.*}", admin)
    app.router.add_route("GET", "/api/items/{item_id}", item)
    app.router.add_route("POST", "/api/items/{item_id}", item)
    app.router.add_route("DELETE", "/api/items/{item_id}", item)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None,
                access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
