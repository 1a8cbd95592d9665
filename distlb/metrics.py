"""Prometheus metrics for distlb (``pip install 'distlb[metrics]'``).

Call ``enable()`` once per process; the series then appear on the registry you
expose (``prometheus_client.start_http_server(9100)``, or your framework's
``/metrics``). Series (all counters carry ``_total``):

| series | labels | what |
|---|---|---|
| ``distlb_decisions_total`` | limiter, outcome, reason | decisions; reason: the denying limit |
| ``distlb_breaker_transitions_total`` | breaker, from_state, to_state | transitions seen here |
| ``distlb_breaker_state`` | breaker | 0 closed, 1 half-open, 2 open (last seen here) |
| ``distlb_retries_total`` | outcome | ``retried``, ``budget_denied``, ``gave_up`` |
| ``distlb_selections_total`` | pool, backend | calls the load balancer sent to each backend |
| ``distlb_store_errors_total`` | primitive | calls that found the store unreachable |
| ``distlb_fallbacks_total`` | primitive, policy | answers given by a failure policy |
"""

from __future__ import annotations

from typing import Any

from distlb import _observe

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def enable(registry: Any = None) -> dict[str, Any]:
    """Start counting into ``registry`` (default: prometheus_client's global one).

    Returns the metric objects by series name. Calling it again replaces them.
    """
    try:
        import prometheus_client as prom
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("distlb.metrics needs prometheus-client: "
                          "pip install 'distlb[metrics]'") from exc
    reg = registry if registry is not None else prom.REGISTRY
    m: dict[str, Any] = {
        "decisions": prom.Counter("distlb_decisions", "Limiter decisions",
                                  ["limiter", "outcome", "reason"], registry=reg),
        "transitions": prom.Counter("distlb_breaker_transitions",
                                    "Circuit breaker transitions seen by this process",
                                    ["breaker", "from_state", "to_state"], registry=reg),
        "state": prom.Gauge("distlb_breaker_state",
                            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                            ["breaker"], registry=reg),
        "retries": prom.Counter("distlb_retries", "Retry decisions", ["outcome"],
                                registry=reg),
        "selections": prom.Counter("distlb_selections", "Calls sent to each backend",
                                   ["pool", "backend"], registry=reg),
        "store_errors": prom.Counter("distlb_store_errors",
                                     "Calls that found the store unreachable", ["primitive"],
                                     registry=reg),
        "fallbacks": prom.Counter("distlb_fallbacks", "Answers given by a failure policy",
                                  ["primitive", "policy"], registry=reg),
    }

    def decision(limiter: str, allowed: bool, reason: str) -> None:
        m["decisions"].labels(limiter, "allowed" if allowed else "denied",
                              "" if allowed else reason).inc()

    def breaker(name: str, from_state: str, to_state: str) -> None:
        m["transitions"].labels(name, from_state, to_state).inc()
        m["state"].labels(name).set(STATE_VALUE.get(to_state, -1))

    def retry(outcome: str) -> None:
        m["retries"].labels(outcome).inc()

    def selection(pool: str, backend: str) -> None:
        m["selections"].labels(pool, backend).inc()

    def store_error(primitive: str) -> None:
        m["store_errors"].labels(primitive).inc()

    def fallback(primitive: str, policy: str) -> None:
        m["fallbacks"].labels(primitive, policy).inc()

    _observe.decision, _observe.breaker, _observe.retry = decision, breaker, retry
    _observe.selection, _observe.store_error, _observe.fallback = selection, store_error, fallback
    return m


def disable() -> None:
    """Stop counting (the series stay registered with their last values)."""
    for name in ("decision", "store_error", "fallback", "breaker", "retry", "selection"):
        setattr(_observe, name, _observe._nothing)
