"""Rate limiting for any ASGI app (Starlette, FastAPI, Django's ASGI handler, ...).

::

    shaper = distlb.aio.TrafficShaper(redis.asyncio.Redis.from_url(url), "api",
                                      global_limit=Limit(100, 20), client_limit=Limit(5, 5))
    app = RateLimitMiddleware(app, shaper)          # keyed by client IP by default

One ``TrafficShaper`` decision per request, in Redis, so the limits hold for every
worker process of every host together. Admitted requests get ``RateLimit`` and
``RateLimit-Policy`` headers; denied ones a ``429`` with ``Retry-After`` too, or a
``503`` when the store is unreachable and the shaper's ``on_store_error`` is
``"fail_closed"`` (``"fail_open"`` admits, ``"local"`` limits in-process at
rate / ``expected_processes``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from distlb import Decision
from distlb.integrations._ratelimit import (
    KeyFn,
    Limiter,
    RequestInfo,
    client_ip,
    header,
    no_key,
    route,
)

__all__ = ["RateLimitMiddleware", "RequestInfo", "client_ip", "header", "no_key", "route"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RateLimitMiddleware:
    """ASGI middleware: admit each HTTP request through a ``TrafficShaper`` or answer 429.

    * ``shaper``: a ``distlb.aio.TrafficShaper`` (awaited on the event loop) or a sync
      ``distlb.TrafficShaper`` (run in a worker thread). Its global limit is shared by
      every request; its client limit applies per key.
    * ``key(request)``: the client a request counts against (``RequestInfo``: method,
      path, lower-case headers, client IP). Default ``client_ip``; ``header("x-api-key")``,
      ``route``, or ``None`` for the global limit only.
    * ``routes``: path prefix -> another shaper, for per-route limits (``"/login"``
      matches ``/login`` and ``/login/...``; the longest prefix wins, else ``shaper``).
    * ``skip(request)``: True lets a request through unlimited (health checks).
    * ``add_headers``: ``RateLimit`` / ``RateLimit-Policy`` on every answer (default).

    WebSocket and lifespan events pass through untouched.
    """

    def __init__(self, app: ASGIApp, shaper: Any, *, key: KeyFn | None = client_ip,
                 routes: Mapping[str, Any] | None = None,
                 skip: Callable[[RequestInfo], bool] | None = None,
                 add_headers: bool = True) -> None:
        self.app = app
        self.limiter = Limiter(shaper, key=key, routes=routes, skip=skip,
                               add_headers=add_headers, asynchronous_ok=True)

    async def _decide(self, shaper: Any, client: str | None) -> Decision:
        if inspect.iscoroutinefunction(shaper.try_acquire):
            decision: Decision = await shaper.try_acquire(client)
            return decision
        return await asyncio.to_thread(shaper.try_acquire, client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        info = RequestInfo(scope["method"], scope["path"],
                           {k.decode("latin-1").lower(): v.decode("latin-1")
                            for k, v in scope.get("headers", ())},
                           peer[0] if peer else None)
        limiter = self.limiter
        if limiter.skip is not None and limiter.skip(info):
            await self.app(scope, receive, send)
            return
        shaper = limiter.shaper_for(info.path)
        decision = await self._decide(shaper, limiter.key(info))
        extra = [(k.encode("latin-1"), v.encode("latin-1"))
                 for k, v in limiter.headers(shaper, decision)]
        if not decision.allowed:
            status, body = limiter.status(decision)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()), *extra]})
            await send({"type": "http.response.body", "body": body})
            return
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
