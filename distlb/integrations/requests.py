"""A requests adapter that sends each request to the backend a distlb pool selects.

Mount it on a logical host prefix (requests' own convention)::

    session = requests.Session()
    session.mount("http://users/", LoadBalancedAdapter(users_pool))
    session.get("http://users/profile/42")     # goes to the backend the pool picks

Each request runs through the pool's ``execute`` exactly as with the httpx
transport (``distlb.integrations.httpx``): admission, selection, a lease held
until the body is read, latency and outcome recorded, retries on another backend
within the pool's retry policy and budget, only for idempotent methods once the
request may have reached a backend, ``Retry-After`` honoured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError

from distlb import Backend, ConfigError, Context
from distlb.integrations._http import (
    IDEMPOTENT_METHODS,
    SERVER_ERRORS,
    HostHeader,
    HttpSettings,
    Request,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
    check_balancer,
    unwrap,
)

__all__ = ["LoadBalancedAdapter", "UpstreamError", "UpstreamStatus", "UpstreamTimeout",
           "UpstreamUnreachable"]

ContextFn = Callable[[str, str, Any], Context | None]


def _connect_failed(exc: requests.ConnectionError) -> bool:
    """True when the connection was never made (refused, unresolvable): nothing was sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


class LoadBalancedAdapter(HTTPAdapter):
    """A ``requests.adapters.HTTPAdapter`` that balances every request over a sync
    ``distlb.LoadBalancer``. Options as ``distlb.integrations.httpx.LoadBalancedTransport``:

    * ``failure_statuses`` (default every 5xx), connection errors and timeouts are
      failed attempts (recorded, retried elsewhere); when attempts run out the caller
      gets the last response, or requests' own exception for a broken connection.
    * ``retry_methods`` (default the idempotent methods) are retried after the request
      may have reached a backend; a connect failure is retried whatever the method.
    * ``Retry-After`` on a failure status: the pool's ``retry_policy`` waits at least that
      long before the next attempt (its own sleep, no lease held); one longer than
      ``max_retry_after_s`` is not retried.
    * ``host_header``: ``"logical"`` (default) sends ``Host: users``; ``"backend"``
      the backend's address. ``context(method, url, headers)`` may return a
      ``distlb.Context``.

    ``response.url`` is the logical URL; ``response.headers`` are the backend's, and
    the backend's id is in ``response.distlb_backend``. Request bodies must be
    replayable (bytes or str, not a generator) for retries. ``pool_*`` and other
    keyword arguments go to ``HTTPAdapter``; its ``max_retries`` is refused
    (``ConfigError``) and stays 0, so the pool's policy is the only one retrying.
    """

    def __init__(self, balancer: Any, *, failure_statuses: Iterable[int] = SERVER_ERRORS,
                 retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
                 max_retry_after_s: float = 10.0, host_header: HostHeader = "logical",
                 context: ContextFn | None = None, **adapter: Any) -> None:
        check_balancer(balancer, asynchronous=False)
        if "max_retries" in adapter:
            raise ConfigError("max_retries", "must be left out: the pool's retry_policy is "
                                             "the only retry loop (urllib3's would retry "
                                             "inside each attempt)")
        self.balancer = balancer
        self.settings = HttpSettings.build(
            failure_statuses=failure_statuses, retry_methods=retry_methods,
            max_retry_after_s=max_retry_after_s, host_header=host_header, context=context)
        super().__init__(**adapter)

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: float | tuple[float | None, float | None] | None = None,
             verify: bool | str = True,
             cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
             proxies: Mapping[str, str] | None = None) -> requests.Response:
        state = Request(self.settings, request.method or "GET")
        ctx = self.settings.context_for(request.method or "GET", request.url or "",
                                        request.headers)
        options = {"timeout": timeout, "verify": verify, "cert": cert, "proxies": proxies}
        try:
            response: requests.Response = self.balancer.execute(
                self._attempt, request, state, options, ctx=ctx)
            return response
        except Exception as exc:
            return _unwrap(exc, state)

    def _attempt(self, backend: Backend, request: requests.PreparedRequest, state: Request,
                 options: dict[str, Any]) -> requests.Response:
        sent = request.copy()
        parts = urlsplit(request.url or "")
        sent.url = urlunsplit(parts._replace(netloc=backend.address))
        sent.headers["Host"] = backend.address if self.settings.host_header == "backend" \
            else parts.netloc.rpartition("@")[2]
        try:
            response = super().send(sent, stream=False, **options)
        except requests.exceptions.Timeout as exc:
            raise state.broken(backend, exc, connect=isinstance(
                exc, requests.exceptions.ConnectTimeout), timeout=True) from exc
        except requests.ConnectionError as exc:
            raise state.broken(backend, exc, connect=_connect_failed(exc),
                               timeout=False) from exc
        response.url = request.url or response.url
        response.request = request
        response.distlb_backend = backend.id  # type: ignore[attr-defined]
        if response.status_code in self.settings.failure_statuses:
            raise state.status(backend, response, response.status_code,
                               response.headers.get("Retry-After"))
        return response


def _unwrap(error: BaseException, state: Request) -> requests.Response:
    out: requests.Response = unwrap(error, state)
    return out
