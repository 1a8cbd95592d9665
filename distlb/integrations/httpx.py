"""httpx transports that send each request to the backend a distlb pool selects.

Mount one per logical host (httpx's own convention)::

    client = httpx.Client(mounts={"http://users": LoadBalancedTransport(users_pool)})
    client.get("http://users/profile/42")      # goes to the backend the pool picks

Every request runs through the pool's ``execute``: admission (the pool's limits and
traffic shaper), selection, a fleet-wide connection lease held until the response
body is read, latency and outcome recorded (statistics and the backend's circuit
breaker), and retries on another backend within the pool's ``retry_policy`` and
retry budget. ``AsyncLoadBalancedTransport`` is the same for ``httpx.AsyncClient``
and a ``distlb.aio.LoadBalancer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx

from distlb import Backend, Context
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
    parse_retry_after,
    split_address,
    unwrap,
)

__all__ = ["IDEMPOTENT_METHODS", "AsyncLoadBalancedTransport", "LoadBalancedTransport",
           "UpstreamError", "UpstreamStatus", "UpstreamTimeout", "UpstreamUnreachable",
           "parse_retry_after"]

ContextFn = Callable[[str, str, Any], Context | None]


class _Base:
    def __init__(self, balancer: Any, *, asynchronous: bool, failure_statuses: Iterable[int],
                 retry_methods: Iterable[str], max_retry_after_s: float,
                 host_header: HostHeader, context: ContextFn | None) -> None:
        check_balancer(balancer, asynchronous=asynchronous)
        self.balancer = balancer
        self.settings = HttpSettings.build(
            failure_statuses=failure_statuses, retry_methods=retry_methods,
            max_retry_after_s=max_retry_after_s, host_header=host_header, context=context)

    def _ctx(self, request: httpx.Request) -> Context | None:
        return self.settings.context_for(request.method, str(request.url), request.headers)

    def _rewrite(self, request: httpx.Request, backend: Backend, body: bytes) -> httpx.Request:
        host, port = split_address(backend.address)
        headers = request.headers.copy()
        if self.settings.host_header == "backend":
            headers["Host"] = backend.address
        return httpx.Request(request.method, request.url.copy_with(host=host, port=port),
                             headers=headers, content=body, extensions=request.extensions)

    def _classify(self, state: Request, backend: Backend, exc: httpx.TransportError
                  ) -> UpstreamError:
        # Nothing was sent: the connection was never made, or none was free in the pool.
        connect = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return state.broken(backend, exc, connect=connect,
                            timeout=isinstance(exc, httpx.TimeoutException))

    def _finish(self, state: Request, backend: Backend, response: httpx.Response,
                raw: bytes) -> httpx.Response:
        extensions = dict(response.extensions)
        extensions["distlb.backend"] = backend.id
        out = httpx.Response(response.status_code, headers=response.headers,
                             stream=httpx.ByteStream(raw), extensions=extensions)
        if response.status_code in self.settings.failure_statuses:
            raise state.status(backend, out, response.status_code,
                               response.headers.get("retry-after"))
        return out


class LoadBalancedTransport(_Base, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that balances every request over a ``LoadBalancer``.

    * The URL's host and port become the selected backend's address; the ``Host``
      header keeps the logical host (``host_header="backend"`` sends the address).
    * ``failure_statuses`` (default: every 5xx), connect errors and timeouts are failed
      attempts: recorded as failures and retried on another backend as the pool's
      ``retry_policy`` allows. When attempts run out the caller gets the last response
      (a 5xx is an answer), or httpx's exception for a broken connection.
    * Only ``retry_methods`` (default: the idempotent methods of RFC 9110) are retried
      once they may have reached a backend; a connect failure never sent the request,
      so it is retried whatever the method.
    * ``Retry-After`` on a failure status: the pool's ``retry_policy`` waits at least
      that long before the next attempt (as its own sleep: no backend is leased during
      it; it counts toward ``max_total_s``); one longer than ``max_retry_after_s``
      (seconds) is not retried at all.
    * The pool's ``retry_policy`` is the only retry loop and is never replaced: a
      failure that must not be retried says so (``UpstreamError.retryable``), and its
      ``retry_on`` decides the rest by class (``UpstreamStatus`` for a failure status,
      ``UpstreamUnreachable``, a ``ConnectionError``, ``UpstreamTimeout``, a
      ``TimeoutError``). Give a ``transport`` without retries of its own.
    * ``context(method, url, headers)`` may return a ``distlb.Context`` (hash key,
      client id for the pool's per-client limit, priority).
    * The body is read within the lease, so latency and the lease cover the whole
      response (not for endless streams). Request bodies are buffered for retries.

    ``RateLimited``, ``NoBackendAvailable`` and ``CircuitOpen`` from the pool are raised
    as they are. The response's ``extensions["distlb.backend"]`` names the backend.
    """

    def __init__(self, balancer: Any, *, transport: httpx.BaseTransport | None = None,
                 failure_statuses: Iterable[int] = SERVER_ERRORS,
                 retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
                 max_retry_after_s: float = 10.0, host_header: HostHeader = "logical",
                 context: ContextFn | None = None) -> None:
        super().__init__(balancer, asynchronous=False, failure_statuses=failure_statuses,
                         retry_methods=retry_methods, max_retry_after_s=max_retry_after_s,
                         host_header=host_header, context=context)
        self.transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        state = Request(self.settings, request.method)
        try:
            response: httpx.Response = self.balancer.execute(
                self._attempt, request, body, state, ctx=self._ctx(request))
            return response
        except Exception as exc:
            out: httpx.Response = unwrap(exc, state)
            return out

    def _attempt(self, backend: Backend, request: httpx.Request, body: bytes,
                 state: Request) -> httpx.Response:
        try:
            response = self.transport.handle_request(self._rewrite(request, backend, body))
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise self._classify(state, backend, exc) from exc
        return self._finish(state, backend, response, raw)

    def close(self) -> None:
        self.transport.close()


class AsyncLoadBalancedTransport(_Base, httpx.AsyncBaseTransport):
    """``LoadBalancedTransport`` for ``httpx.AsyncClient`` and a ``distlb.aio.LoadBalancer``:
    the same options and behaviour, awaited."""

    def __init__(self, balancer: Any, *, transport: httpx.AsyncBaseTransport | None = None,
                 failure_statuses: Iterable[int] = SERVER_ERRORS,
                 retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
                 max_retry_after_s: float = 10.0, host_header: HostHeader = "logical",
                 context: ContextFn | None = None) -> None:
        super().__init__(balancer, asynchronous=True, failure_statuses=failure_statuses,
                         retry_methods=retry_methods, max_retry_after_s=max_retry_after_s,
                         host_header=host_header, context=context)
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        state = Request(self.settings, request.method)
        try:
            response: httpx.Response = await self.balancer.execute(
                self._attempt, request, body, state, ctx=self._ctx(request))
            return response
        except Exception as exc:
            out: httpx.Response = unwrap(exc, state)
            return out

    async def _attempt(self, backend: Backend, request: httpx.Request, body: bytes,
                       state: Request) -> httpx.Response:
        try:
            response = await self.transport.handle_async_request(
                self._rewrite(request, backend, body))
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise self._classify(state, backend, exc) from exc
        return self._finish(state, backend, response, raw)

    async def aclose(self) -> None:
        await self.transport.aclose()
