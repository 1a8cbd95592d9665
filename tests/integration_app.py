"""A small web app, rate limited by distlb, served by real servers in the tests:
``asgi_app`` (Starlette) under ``uvicorn --workers 4`` and ``wsgi_app`` (plain WSGI)
under ``gunicorn -w 4``. Configured from the environment the test sets; every
answer's body is the worker's PID."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import distlb.aio as aio
from distlb import Limit, TrafficShaper
from distlb.integrations import asgi, wsgi

URL = os.environ["DISTLB_TEST_REDIS_URL"]
PREFIX = os.environ["DISTLB_TEST_PREFIX"]
LIMIT = Limit(float(os.environ["DISTLB_TEST_RATE"]), float(os.environ["DISTLB_TEST_BURST"]))


def is_health(request: asgi.RequestInfo) -> bool:
    return request.path == "/health"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


asgi_app = asgi.RateLimitMiddleware(
    Starlette(routes=[Route("/", hello), Route("/health", hello)]),
    aio.TrafficShaper(redis.asyncio.Redis.from_url(URL), "web", global_limit=LIMIT,
                      prefix=PREFIX),
    key=None, skip=is_health)


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


wsgi_app = wsgi.RateLimitMiddleware(
    _hello, TrafficShaper(redis.Redis.from_url(URL), "web", global_limit=LIMIT, prefix=PREFIX),
    key=None, skip=is_health)
