"""Metrics for distlb: Prometheus (``pip install 'distlb[metrics]'``) or OpenTelemetry.

Call ``enable()`` once per process; the series then appear on the registry you
expose (``prometheus_client.start_http_server(9100)``, or your framework's
``/metrics``). ``enable_opentelemetry()`` records the same measurements as
OpenTelemetry instruments (``distlb.decisions``, ``distlb.breaker.transitions``,
``distlb.breaker.state``, ...) on the meter provider you give it; both may be on
at once. Prometheus series (all counters carry ``_total``):

| series | labels | what |
|---|---|---|
| ``distlb_decisions_total`` | limiter, outcome, reason | decisions; reason: the kind of the
  denying limit (``global``, ``client``, ``client_bandwidth``, ``backend_bandwidth``,
  ``bucket``, ``queue_full``, ``busy`` ...) |
| ``distlb_breaker_transitions_total`` | breaker, from_state, to_state | transitions seen here |
| ``distlb_breaker_state`` | breaker | 0 closed, 1 half-open, 2 open (last seen here) |
| ``distlb_retries_total`` | outcome | ``retried``, ``budget_denied``, ``gave_up`` |
| ``distlb_selections_total`` | pool, backend | calls the load balancer sent to its backends |
| ``distlb_store_errors_total`` | primitive | calls that found the store unreachable |
| ``distlb_fallbacks_total`` | primitive, policy | answers given by a failure policy |

Bounded labels: by default no label value holds a client id, a backend id or a
primitive's name, so a million clients or a churning fleet of backends make no more
series than one: ``reason`` is the kind of limit, ``backend`` is empty, ``primitive`` is
the kind of primitive (``token bucket``), and the breakers a load balancer makes for its
backends count under ``breaker="<pool>/*"`` (its state gauge: the worst state among
them, as seen here). ``enable(id_labels=True)`` opts in to the full values
(``reason="client:alice"``, ``backend="n1"``, ``breaker="<pool>/n1"``,
``primitive="token bucket 'api'"``): only for a small, fixed set of ids.
"""

from __future__ import annotations

import threading
from typing import Any

from distlb import _observe, admin

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def _primitive_kind(what: str) -> str:
    """``"token bucket 'api'"`` -> ``"token bucket"`` (the name may hold an id)."""
    for kind in (k.label for k in admin.KINDS):
        if what == kind or what.startswith(kind + " "):
            return kind
    return "other"


class _Labels:
    """Turns what the library observes into bounded label values (see the module doc)."""

    def __init__(self, id_labels: bool) -> None:
        if not isinstance(id_labels, bool):
            from distlb.errors import ConfigError
            raise ConfigError("id_labels", "must be True or False")
        self.id_labels = id_labels
        self.lock = threading.Lock()
        #: pool -> {breaker name: state value} for its breakers not closed (bounded by them)
        self.pools: dict[str, dict[str, int]] = {}

    def reason(self, allowed: bool, reason: str, detail: str | None) -> str:
        if allowed:
            return ""
        return detail if self.id_labels and detail else reason

    def backend(self, backend: str) -> str:
        return backend if self.id_labels else ""

    def primitive(self, what: str) -> str:
        return what if self.id_labels else _primitive_kind(what)

    def breaker(self, name: str, to_state: str, pool: str | None) -> tuple[str, int]:
        """The breaker label and the state value its gauge takes now."""
        value = STATE_VALUE.get(to_state, -1)
        if pool is None or self.id_labels:
            return name, value
        with self.lock:
            open_ = self.pools.setdefault(pool, {})
            if value > 0:
                open_[name] = value
            else:
                open_.pop(name, None)
            return f"{pool}/*", max(open_.values(), default=0)


def enable(registry: Any = None, *, id_labels: bool = False) -> dict[str, Any]:
    """Start counting into ``registry`` (default: prometheus_client's global one).

    ``id_labels``: label series with client ids, backend ids and primitive names (one
    series per id: only for a small, fixed set of them). Off, the number of series is
    bounded whatever the traffic. Returns the metric objects by series name. Calling it
    again replaces them.
    """
    lab = _Labels(id_labels)
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

    def decision(limiter: str, allowed: bool, reason: str, detail: str | None = None) -> None:
        m["decisions"].labels(limiter, "allowed" if allowed else "denied",
                              lab.reason(allowed, reason, detail)).inc()

    def breaker(name: str, from_state: str, to_state: str, pool: str | None = None) -> None:
        label, value = lab.breaker(name, to_state, pool)
        m["transitions"].labels(label, from_state, to_state).inc()
        m["state"].labels(label).set(value)

    def retry(outcome: str) -> None:
        m["retries"].labels(outcome).inc()

    def selection(pool: str, backend: str) -> None:
        m["selections"].labels(pool, lab.backend(backend)).inc()

    def store_error(primitive: str) -> None:
        m["store_errors"].labels(lab.primitive(primitive)).inc()

    def fallback(primitive: str, policy: str) -> None:
        m["fallbacks"].labels(lab.primitive(primitive), policy).inc()

    _install(decision=decision, breaker=breaker, retry=retry, selection=selection,
             store_error=store_error, fallback=fallback)
    return m


def enable_opentelemetry(meter_provider: Any = None, *,
                         id_labels: bool = False) -> dict[str, Any]:
    """Record the same measurements as OpenTelemetry instruments (``opentelemetry-api``).

    ``meter_provider`` defaults to the global one; ``id_labels`` as for ``enable()``
    (attributes, here). Returns the instruments by name.
    """
    lab = _Labels(id_labels)
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

    def decision(limiter: str, allowed: bool, reason: str, detail: str | None = None) -> None:
        inst["decisions"].add(1, {"limiter": limiter,
                                  "outcome": "allowed" if allowed else "denied",
                                  "reason": lab.reason(allowed, reason, detail)})

    def breaker(name: str, from_state: str, to_state: str, pool: str | None = None) -> None:
        label, value = lab.breaker(name, to_state, pool)
        inst["transitions"].add(1, {"breaker": label, "from_state": from_state,
                                    "to_state": to_state})
        states[label] = value

    def retry(outcome: str) -> None:
        inst["retries"].add(1, {"outcome": outcome})

    def selection(pool: str, backend: str) -> None:
        inst["selections"].add(1, {"pool": pool, "backend": lab.backend(backend)})

    def store_error(primitive: str) -> None:
        inst["store_errors"].add(1, {"primitive": lab.primitive(primitive)})

    def fallback(primitive: str, policy: str) -> None:
        inst["fallbacks"].add(1, {"primitive": lab.primitive(primitive), "policy": policy})

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
