"""Server-side rate limiting without a web framework: which shaper and key a request
gets, and the status and headers of the answer.

``distlb.integrations.asgi`` and ``distlb.integrations.wsgi`` share this. Headers
follow draft-ietf-httpapi-ratelimit-headers-10 (September 2025): ``RateLimit-Policy``
lists every limit that applied as a structured-field item ``"<name>";q=<quota>;w=<window>``
and ``RateLimit`` reports the limit with the least room, ``"<name>";r=<remaining>;t=<reset>``.
A token bucket of ``rate_per_s`` and ``burst`` is advertised as a quota of ``burst``
requests per window of ``ceil(burst / rate_per_s)`` seconds (the time to refill it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from distlb import ConfigError, Decision, LimitState

#: A denial (429) or, when the store is unreachable under ``on_store_error="fail_closed"``, 503.
TOO_MANY_REQUESTS = 429
STORE_UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a key function sees of a request, the same for ASGI and WSGI."""

    method: str
    path: str
    headers: Mapping[str, str]     #: lower-case names
    client_ip: str | None


KeyFn = Callable[[RequestInfo], "str | None"]


def client_ip(request: RequestInfo) -> str | None:
    """The default key: the peer's address (behind a proxy, use ``header("x-real-ip")``)."""
    return request.client_ip


def header(name: str, *, fallback: KeyFn | None = client_ip) -> KeyFn:
    """Key by a request header (an API key, a user id set by a proxy), ``fallback`` when
    it is absent (by default the client IP; ``None``: such requests get only the
    shaper's global limit)."""
    if not isinstance(name, str) or not name:
        raise ConfigError("name", "must be a non-empty header name")
    lower = name.lower()

    def key(request: RequestInfo) -> str | None:
        value = request.headers.get(lower)
        if value:
            return value
        return fallback(request) if fallback is not None else None
    return key


def route(request: RequestInfo) -> str:
    """Key by route: method and path, so each endpoint gets its own client limit."""
    return f"{request.method} {request.path}"


def no_key(request: RequestInfo) -> None:
    """No per-client limit: only the shaper's global limit applies."""
    return None


def _policy_name(shaper: Any, label: str) -> str:
    kind = label.partition(":")[0] or "limit"
    return f'"{shaper.name}.{kind}"'


def _window_s(state: LimitState) -> int:
    return max(1, math.ceil(state.burst / state.rate_per_s)) if state.rate_per_s > 0 else 1


def _retry_after(seconds: float) -> int:
    """``Retry-After`` in whole seconds, rounded up and at least 1: a client that retries
    at once would only be denied again."""
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else 86400


class Limiter:
    """One middleware's configuration: the default shaper, the route shapers, the key."""

    def __init__(self, shaper: Any, *, key: KeyFn | None, routes: Mapping[str, Any] | None,
                 skip: Callable[[RequestInfo], bool] | None, add_headers: bool,
                 asynchronous_ok: bool) -> None:
        self.routes = sorted((dict(routes or {})).items(), key=lambda kv: -len(kv[0]))
        for path, s in [("", shaper), *self.routes]:
            if not hasattr(s, "try_acquire") or not hasattr(s, "global_limit"):
                raise ConfigError("routes" if path else "shaper",
                                  f"must be a TrafficShaper, got {type(s).__name__}")
            if not isinstance(path, str) or (path and not path.startswith("/")):
                raise ConfigError("routes", f"keys must be paths starting with '/', got {path!r}")
            if inspect.iscoroutinefunction(s.try_acquire) and not asynchronous_ok:
                raise ConfigError("shaper", "must be a sync distlb.TrafficShaper for WSGI "
                                            "(distlb.aio shapers need an event loop: use ASGI)")
        if key is not None and not callable(key):
            raise ConfigError("key", "must be a callable (RequestInfo) -> str | None")
        if skip is not None and not callable(skip):
            raise ConfigError("skip", "must be a callable (RequestInfo) -> bool")
        self.shaper = shaper
        self.key: KeyFn = key if key is not None else no_key
        self.skip = skip
        self.add_headers = bool(add_headers)

    def shaper_for(self, path: str) -> Any:
        """The shaper of the longest route prefix matching ``path`` (whole segments), else
        the default one. One request is checked against one shaper: one round trip, its
        global and client limits all-or-nothing."""
        for prefix, shaper in self.routes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return shaper
        return self.shaper

    def headers(self, shaper: Any, decision: Decision) -> list[tuple[str, str]]:
        """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` on a denial)."""
        out: list[tuple[str, str]] = []
        limited = [s for s in decision.limits if s.rate_per_s > 0 and math.isfinite(s.burst)]
        if not decision.allowed:
            out.append(("Retry-After", str(_retry_after(decision.retry_after_s))))
        if not self.add_headers or not limited:
            return out
        out.append(("RateLimit-Policy", ", ".join(
            f"{_policy_name(shaper, s.label)};q={math.floor(s.burst)};w={_window_s(s)}"
            for s in limited)))
        if decision.allowed:
            worst = min(limited, key=lambda s: s.remaining)
            reset = math.ceil(worst.reset_after_s)
        else:
            worst = max((s for s in limited if not s.allowed),
                        key=lambda s: s.retry_after_s, default=limited[0])
            reset = _retry_after(decision.retry_after_s)
        out.append(("RateLimit", f"{_policy_name(shaper, worst.label)};"
                                 f"r={max(0, math.floor(worst.remaining))};t={reset}"))
        return out

    @staticmethod
    def status(decision: Decision) -> tuple[int, bytes]:
        if decision.source == "fail_closed":
            return STORE_UNAVAILABLE, b"Service Unavailable: rate limiter store unreachable\n"
        return TOO_MANY_REQUESTS, b"Too Many Requests\n"


__all__ = ["STORE_UNAVAILABLE", "TOO_MANY_REQUESTS", "KeyFn", "Limiter", "RequestInfo",
           "client_ip", "header", "no_key", "route"]
