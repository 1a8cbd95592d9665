"""Rate limiting for any WSGI app (Flask, Django, Pyramid, ...).

::

    shaper = distlb.TrafficShaper(redis.Redis.from_url(url), "api",
                                  global_limit=Limit(100, 20), client_limit=Limit(5, 5))
    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, shaper)      # Flask

The same behaviour and options as ``distlb.integrations.asgi.RateLimitMiddleware``,
with a sync ``distlb.TrafficShaper``: one decision per request in Redis, so the
limits hold for all gunicorn/uWSGI workers together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

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

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {429: "429 Too Many Requests", 503: "503 Service Unavailable"}


def _headers(environ: Mapping[str, Any]) -> dict[str, str]:
    out = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
           if k.startswith("HTTP_")}
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            out[name.replace("_", "-").lower()] = environ[name]
    return out


class RateLimitMiddleware:
    """WSGI middleware: admit each request through a sync ``TrafficShaper`` or answer 429.

    ``key``, ``routes``, ``skip`` and ``add_headers`` as for the ASGI middleware; the
    path matched against ``routes`` is ``PATH_INFO`` (below the app's mount point).
    """

    def __init__(self, app: WSGIApp, shaper: Any, *, key: KeyFn | None = client_ip,
                 routes: Mapping[str, Any] | None = None,
                 skip: Callable[[RequestInfo], bool] | None = None,
                 add_headers: bool = True) -> None:
        self.app = app
        self.limiter = Limiter(shaper, key=key, routes=routes, skip=skip,
                               add_headers=add_headers, asynchronous_ok=False)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        info = RequestInfo(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""),
                           _headers(environ), environ.get("REMOTE_ADDR"))
        limiter = self.limiter
        if limiter.skip is not None and limiter.skip(info):
            return self.app(environ, start_response)
        shaper = limiter.shaper_for(info.path)
        decision = shaper.try_acquire(limiter.key(info))
        extra = limiter.headers(shaper, decision)
        if not decision.allowed:
            status, body = limiter.status(decision)
            start_response(_REASONS[status], [("Content-Type", "text/plain; charset=utf-8"),
                                              ("Content-Length", str(len(body))), *extra])
            return [body]
        if not extra:
            return self.app(environ, start_response)

        def start_with_headers(status: str, headers: list[tuple[str, str]],
                               exc_info: Any = None) -> Any:
            return start_response(status, [*headers, *extra], exc_info)

        return self.app(environ, start_with_headers)
