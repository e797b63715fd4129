"""FastAPI with its ordinary decorators (run by uvicorn with --http httptools and --http h11)."""

import os

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from common import ALL_METHODS, asgi_describe, dumps

NAME = os.environ.get("DIFF_FRAMEWORK", "fastapi")

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def reply(handler, request, status=200):
    return Response(dumps(asgi_describe(NAME, handler, request.scope)), status,
                    media_type="application/json")


@app.get("/api/public")
async def public(request: Request):
    return reply("public", request)


@app.api_route("/api/admin", methods=ALL_METHODS)
async def admin(request: Request):
    return reply("admin", request)


@app.api_route("/api/admin/{rest:path}", methods=ALL_METHODS)
async def admin_below(request: Request, rest: str):
    return reply("admin", request)


@app.get("/api/items/{item_id}")
async def get_item(request: Request, item_id: str):
    return reply("item", request)


@app.post("/api/items/{item_id}")
async def post_item(request: Request, item_id: str):
    await request.body()  # a handler that parses the body: malformed framing surfaces here
    return reply("item", request)


@app.delete("/api/items/{item_id}")
async def delete_item(request: Request, item_id: str):
    return reply("item-delete", request)


@app.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException):
    return reply("not-found", request, exc.status_code)
