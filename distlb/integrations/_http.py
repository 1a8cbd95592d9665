"""Client-side load balancing for HTTP, without an HTTP library: what counts as a
failure, what may be retried, ``Retry-After``, and how one request maps onto the
pool's ``execute``.

``distlb.integrations.httpx`` and ``distlb.integrations.requests`` share this.
Every attempt runs inside ``LoadBalancer.execute``: the pool admits the request
(its limits and traffic shaper), selects a backend, holds a lease on it, records
latency and outcome (statistics and the backend's breaker) and retries on another
backend as its ``retry_policy`` and budget allow. An attempt that fails raises an
``UpstreamError`` so the pool counts it; the transport turns the final outcome
back into what the HTTP library's caller expects (the last response, or the
library's own exception).

The pool's ``RetryPolicy`` is the only retry loop, and it is used as the user made
it (never replaced): an ``UpstreamError`` tells it, through two attributes every
``RetryPolicy`` reads, ``retryable = False`` (never retried, whatever ``retry_on``
says) and ``retry_delay_s`` (the least wait before the next attempt: a
``Retry-After``). The wait is the policy's sleep, before the next backend is
selected and leased, so no lease is held and no backend's latency grows during it,
and it counts toward the policy's ``max_total_s``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from distlb import (
    Backend,
    ConfigError,
    Context,
    DistlbError,
    NoBackendAvailable,
    RetryBudgetExhausted,
)

#: Methods RFC 9110 (section 9.2.2) defines as idempotent: retried by default.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: Statuses that count as a failed attempt by default: every 5xx.
SERVER_ERRORS = frozenset(range(500, 600))

HostHeader = Literal["logical", "backend"]


class UpstreamError(DistlbError):
    """One attempt on one backend failed. Raised inside ``execute`` so the pool records a
    failure (statistics, breaker) and its retry policy may try another backend.

    ``retryable`` is False when retrying would be unsafe or pointless: a request whose
    method is not in ``retry_methods`` that may have reached the backend, or a
    ``Retry-After`` longer than ``max_retry_after_s``. ``RetryPolicy`` never retries
    an error whose ``retryable`` is False. ``retry_after_s``: the server's
    ``Retry-After`` in seconds (None: none).
    """

    def __init__(self, message: str, *, backend: Backend, retryable: bool,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    @property
    def retry_delay_s(self) -> float:
        """Seconds ``RetryPolicy`` waits at least before the next attempt (as its sleep,
        before a backend is selected): the ``Retry-After`` of a retryable failure, else 0."""
        if not self.retryable or self.retry_after_s is None:
            return 0.0
        return self.retry_after_s


class UpstreamStatus(UpstreamError):
    """The backend answered with a status in ``failure_statuses``; ``response`` holds it."""

    def __init__(self, response: Any, status: int, **kw: Any) -> None:
        super().__init__(f"{kw['backend'].id} answered {status}", **kw)
        self.response = response
        self.status = status


class UpstreamUnreachable(UpstreamError, ConnectionError):
    """The connection failed (``connect=True``: before the request was sent) or broke."""

    def __init__(self, original: BaseException, *, connect: bool, **kw: Any) -> None:
        super().__init__(f"{kw['backend'].id}: {original!r}", **kw)
        self.original = original
        self.connect = connect


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The attempt timed out (``connect=True``: while connecting, so nothing was sent)."""

    def __init__(self, original: BaseException, *, connect: bool, **kw: Any) -> None:
        super().__init__(f"{kw['backend'].id}: {original!r}", **kw)
        self.original = original
        self.connect = connect


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (RFC 9110 section 10.2.3) in seconds: delay-seconds or an HTTP-date.
    None when absent or malformed (malformed fields are ignored, as the RFC asks)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """How a transport maps HTTP outcomes onto the pool (validated; see the transports)."""

    failure_statuses: frozenset[int] = SERVER_ERRORS
    retry_methods: frozenset[str] = IDEMPOTENT_METHODS
    max_retry_after_s: float = 10.0
    host_header: HostHeader = "logical"
    context: Callable[[str, str, Any], Context | None] | None = None

    @staticmethod
    def build(*, failure_statuses: Iterable[int] = SERVER_ERRORS,
              retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
              max_retry_after_s: float = 10.0, host_header: HostHeader = "logical",
              context: Callable[[str, str, Any], Context | None] | None = None
              ) -> HttpSettings:
        statuses = frozenset(failure_statuses)
        if not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
                   for s in statuses):
            raise ConfigError("failure_statuses", "must be HTTP status codes in [100, 599]")
        methods = frozenset(m.upper() for m in retry_methods if isinstance(m, str))
        if len(methods) != len(frozenset(retry_methods)):
            raise ConfigError("retry_methods", "must be method names (str)")
        if isinstance(max_retry_after_s, bool) or not isinstance(max_retry_after_s, int | float) \
                or not 0 <= max_retry_after_s <= 3600:
            raise ConfigError("max_retry_after_s",
                              f"must be a number in [0, 3600] seconds, got {max_retry_after_s!r}")
        if host_header not in ("logical", "backend"):
            raise ConfigError("host_header", f"must be 'logical' or 'backend', got {host_header!r}")
        if context is not None and not callable(context):
            raise ConfigError("context", "must be a callable (method, url, headers) -> Context")
        return HttpSettings(statuses, methods, float(max_retry_after_s), host_header, context)

    def context_for(self, method: str, url: str, headers: Any) -> Context | None:
        return None if self.context is None else self.context(method, url, headers)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into the host (no brackets) and the port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Request:
    """The state of one logical request across its attempts: its method, the last failure."""

    def __init__(self, settings: HttpSettings, method: str) -> None:
        self.settings = settings
        self.method = method.upper()
        self.idempotent = self.method in settings.retry_methods
        self.last: UpstreamError | None = None   # the last failed attempt

    def status(self, backend: Backend, response: Any, status: int,
               retry_after: str | None) -> UpstreamStatus:
        """The error for a failure status; retryable only for ``retry_methods`` and a
        ``Retry-After`` within ``max_retry_after_s`` (which the policy then waits)."""
        ra = parse_retry_after(retry_after)
        retryable = self.idempotent and (ra is None or ra <= self.settings.max_retry_after_s)
        self.last = UpstreamStatus(response, status, backend=backend, retryable=retryable,
                                   retry_after_s=ra)
        return self.last

    def broken(self, backend: Backend, original: BaseException, *, connect: bool,
               timeout: bool) -> UpstreamError:
        """The error for a failed connection or a timeout. A connect failure never sent the
        request, so it is retryable whatever the method."""
        cls = UpstreamTimeout if timeout else UpstreamUnreachable
        self.last = cls(original, connect=connect, backend=backend,
                        retryable=connect or self.idempotent)
        return self.last


def unwrap(error: BaseException, state: Request) -> Any:
    """What the caller gets when ``execute`` gave up: the last failure's response, or the
    HTTP library's own exception. When the retries ran out of backends
    (``NoBackendAvailable`` after a failed attempt) that is the last attempt's failure.
    Other errors (``RateLimited``, ``NoBackendAvailable``, ``CircuitOpen``, ...) are
    raised as they are."""
    cause = error.__cause__ if isinstance(error, RetryBudgetExhausted) else error
    if isinstance(cause, NoBackendAvailable) and state.last is not None:
        cause = state.last
    if isinstance(cause, UpstreamStatus):
        return cause.response
    if isinstance(cause, UpstreamUnreachable | UpstreamTimeout):
        raise cause.original from error
    raise error


def check_balancer(balancer: Any, *, asynchronous: bool) -> None:
    """A ``ConfigError`` unless ``balancer`` is a LoadBalancer of the right flavour."""
    import distlb
    import distlb.aio
    want = distlb.aio.LoadBalancer if asynchronous else distlb.LoadBalancer
    other = distlb.LoadBalancer if asynchronous else distlb.aio.LoadBalancer
    if isinstance(balancer, want):
        return
    if isinstance(balancer, other):
        raise ConfigError("balancer", f"must be a {want.__module__}.LoadBalancer for this "
                                      f"transport, got a {other.__module__}.LoadBalancer")
    raise ConfigError("balancer", f"must be a LoadBalancer, got {type(balancer).__name__}")


__all__ = ["IDEMPOTENT_METHODS", "SERVER_ERRORS", "HttpSettings", "Request", "UpstreamError",
           "UpstreamStatus", "UpstreamTimeout", "UpstreamUnreachable", "check_balancer",
           "parse_retry_after", "split_address", "unwrap"]
