"""Metrics for distlb: Prometheus (``pip install 'distlb[metrics]'``) or OpenTelemetry.

Call ``enable()`` once per process; the series then appear on the registry you
expose (``prometheus_client.start_http_server(9100)``, or your framework's
``/metrics``). ``enable_opentelemetry()`` records the same measurements as
OpenTelemetry instruments (``distlb.decisions``, ``distlb.breaker.transitions``,
``distlb.breaker.state``, ...) on the meter provider you give it; both may be on
at once. Prometheus series (all counters carry ``_total``):

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

    _install(decision=decision, breaker=breaker, retry=retry, selection=selection,
             store_error=store_error, fallback=fallback)
    return m


def enable_opentelemetry(meter_provider: Any = None) -> dict[str, Any]:
    """Record the same measurements as OpenTelemetry instruments (``opentelemetry-api``).

    ``meter_provider`` defaults to the global one. Returns the instruments by name.
    """
    from opentelemetry import metrics as otel
    from opentelemetry.metrics import CallbackOptions, Observation

    provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
    meter = provider.get_meter("distlb")
    states: dict[str, int] = {}

    def observe_states(options: CallbackOptions) -> list[Observation]:
        return [Observation(v, {"breaker": k}) for k, v in list(states.items())]

    inst: dict[str, Any] = {
        "decisions": meter.create_counter("distlb.decisions", description="Limiter decisions"),
        "transitions": meter.create_counter("distlb.breaker.transitions",
                                            description="Breaker transitions seen here"),
        "state": meter.create_observable_gauge(
            "distlb.breaker.state", [observe_states],
            description="Breaker state: 0 closed, 1 half-open, 2 open"),
        "retries": meter.create_counter("distlb.retries", description="Retry decisions"),
        "selections": meter.create_counter("distlb.selections",
                                           description="Calls sent to each backend"),
        "store_errors": meter.create_counter("distlb.store_errors",
                                             description="Calls that found the store down"),
        "fallbacks": meter.create_counter("distlb.fallbacks",
                                          description="Answers given by a failure policy"),
    }

    def decision(limiter: str, allowed: bool, reason: str) -> None:
        inst["decisions"].add(1, {"limiter": limiter,
                                  "outcome": "allowed" if allowed else "denied",
                                  "reason": "" if allowed else reason})

    def breaker(name: str, from_state: str, to_state: str) -> None:
        inst["transitions"].add(1, {"breaker": name, "from_state": from_state,
                                    "to_state": to_state})
        states[name] = STATE_VALUE.get(to_state, -1)

    def retry(outcome: str) -> None:
        inst["retries"].add(1, {"outcome": outcome})

    def selection(pool: str, backend: str) -> None:
        inst["selections"].add(1, {"pool": pool, "backend": backend})

    def store_error(primitive: str) -> None:
        inst["store_errors"].add(1, {"primitive": primitive})

    def fallback(primitive: str, policy: str) -> None:
        inst["fallbacks"].add(1, {"primitive": primitive, "policy": policy})

    _install(decision=decision, breaker=breaker, retry=retry, selection=selection,
             store_error=store_error, fallback=fallback)
    return inst


HOOKS = ("decision", "store_error", "fallback", "breaker", "retry", "selection")


def _install(**sinks: Any) -> None:
    """Add sinks to the observation hooks, keeping those already installed (so Prometheus
    and OpenTelemetry can both be on)."""
    for name, sink in sinks.items():
        before = getattr(_observe, name)
        if before is _observe._nothing:
            setattr(_observe, name, sink)
        else:
            def chained(*args: Any, _a: Any = before, _b: Any = sink) -> None:
                _a(*args)
                _b(*args)
            setattr(_observe, name, chained)


def disable() -> None:
    """Stop recording, for every sink (the series keep their last values)."""
    for name in HOOKS:
        setattr(_observe, name, _observe._nothing)
