"""What every strategy shares: the backend snapshot, the request context, the protocol.

Strategies are pure and local: given a snapshot of backends and a request
context they pick one, with no I/O. Time and randomness are injected
(``clock``, ``rng``) so tests are deterministic.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

from distlb._validate import integer, number
from distlb.errors import ConfigError, DistlbError


class NoBackendAvailable(DistlbError):
    """Every backend is unhealthy (or excluded), or there are none."""


MAX_ID_CHARS = 128


def check_id(backend_id: object, field: str = "id") -> str:
    """A backend id: a non-empty str of at most 128 characters (it also names the
    backend's circuit breaker, ``<pool>/<id>``)."""
    if not isinstance(backend_id, str) or not backend_id:
        raise ConfigError(field, f"must be a non-empty str, got {backend_id!r:.40}")
    if len(backend_id) > MAX_ID_CHARS:
        raise ConfigError(field, f"must be at most {MAX_ID_CHARS} characters")
    try:
        backend_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(field, "must be valid Unicode text (no lone surrogates)") from None
    return backend_id


#: Bounds on ``Backend.metadata``, which every process reads with every registry change.
MAX_METADATA_BYTES = 16 * 1024          #: its JSON encoding, in UTF-8 bytes
MAX_METADATA_DEPTH = 16                 #: nested dicts and lists
MAX_METADATA_INT = 2**53 - 1            #: ints every JSON reader (and a Lua double) holds exactly


def check_metadata(metadata: object, field: str = "metadata") -> dict[str, Any]:
    """Validate backend metadata and return it as a plain dict.

    It is stored as JSON in the shared registry and read back by every process, so
    only what reads back equal is accepted: dicts with ``str`` keys, lists (tuples
    read back as lists), ``str`` (valid Unicode), ``bool``, ``None``, ints within
    +-(2**53 - 1), finite floats; nested at most 16 deep, at most 16 KiB as JSON.
    Anything else raises ``ConfigError`` naming ``metadata`` before the store is touched.
    """
    def walk(value: object, where: str, depth: int) -> None:
        if depth > MAX_METADATA_DEPTH:
            raise ConfigError(field, f"nests deeper than {MAX_METADATA_DEPTH} levels at {where}")
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int):
            if not -MAX_METADATA_INT <= value <= MAX_METADATA_INT:
                raise ConfigError(field, f"ints must be within +-(2**53 - 1), got one at {where}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(field, f"numbers must be finite, got {value!r} at {where}")
        elif isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ConfigError(field, f"keys must be str, got {type(k).__name__} "
                                             f"{k!r:.40} at {where}")
                _check_text(k, where)
                walk(v, f"{where}[{k!r:.40}]", depth + 1)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]", depth + 1)
        else:
            raise ConfigError(field, f"values must be str, int, float, bool, None, list or "
                                     f"dict, got {type(value).__name__} at {where}")

    def _check_text(value: str, where: str) -> None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(field, f"text must be valid Unicode (no lone surrogates) at "
                                     f"{where}") from None

    if not isinstance(metadata, Mapping):
        raise ConfigError(field, f"must be a dict, got {type(metadata).__name__}")
    plain = dict(metadata)
    walk(plain, field, 0)
    size = len(json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ConfigError(field, f"must be at most {MAX_METADATA_BYTES} bytes as JSON, "
                                 f"got {size}")
    return plain


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend as strategies see it: identity, weight, health and live statistics.

    ``latency_ms`` is a moving average, ``error_rate`` a fraction in [0, 1],
    ``throughput_per_s`` completed requests per second, ``active_connections``
    the fleet-wide count. ``added_at_s`` (on the strategy's clock) is when it
    joined or last recovered, for slow start. ``metadata`` is free-form (zone,
    version, ...), stored with the backend in the shared registry as JSON;
    ``add_backend`` checks it with :func:`check_metadata` (finite numbers, str keys,
    bounded size and depth) so it reads back equal in every process.
    """

    id: str
    address: str = ""
    weight: int = 100
    healthy: bool = True
    active_connections: int = 0
    latency_ms: float = 0.0
    error_rate: float = 0.0
    throughput_per_s: float = 0.0
    added_at_s: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_id(self.id)
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) \
                or not 0 <= self.weight <= 1_000_000:
            raise ConfigError("weight", f"must be an int in [0, 1000000], got {self.weight!r}")

    def with_(self, **changes: object) -> Backend:
        """A copy with some fields changed: ``b.with_(active_connections=3)``."""
        return replace(self, **changes)  # type: ignore[arg-type]


#: The request priorities a pool's admission knows (``Context.priority``): higher is
#: admitted first when the pool is over its ``rate_limit`` (see the README's "Priority").
MIN_PRIORITY = 0
MAX_PRIORITY = 9
#: The largest ``Context.bytes``: 1 TB, far above any one request (and exact in a double).
MAX_BYTES = 10**12


def check_priority(priority: object) -> int:
    """An int priority in [MIN_PRIORITY, MAX_PRIORITY] (0..9), else ``ConfigError``."""
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ConfigError("priority", f"must be an int in [{MIN_PRIORITY}, {MAX_PRIORITY}], "
                                      f"got {priority!r:.40}")
    return priority


def check_bytes(nbytes: object) -> int | float:
    """A request size in bytes: a finite number in [0, 1e12], else ``ConfigError``."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int | float) \
            or not 0 <= nbytes <= MAX_BYTES:
        raise ConfigError("bytes", f"must be a number of bytes in [0, {MAX_BYTES:g}], "
                                   f"got {nbytes!r:.40}")
    return nbytes


def check_key(key: object, field: str = "key") -> str:
    """A hash key or client id: a ``str`` (a ``str`` subclass too), else ``ConfigError``."""
    if not isinstance(key, str):
        raise ConfigError(field, f"must be a str, got {key!r:.40} ({type(key).__name__})")
    return key


@dataclass(frozen=True, slots=True)
class Context:
    """What a request tells the strategy and the pool: a hash key, a client, a priority,
    a size.

    ``priority``: an int in [0, 9] (``ConfigError`` otherwise), 0 by default; under
    contention for the pool's ``rate_limit`` higher levels are admitted first and lower
    ones shed first (each level keeps a minimum share). ``bytes``: the request's size,
    charged against the pool's (and its traffic shaper's) bandwidth limits; 0 = not
    counted. ``exclude`` holds backend ids not to pick (e.g. those already tried by a
    retry).
    """

    key: str | None = None
    client_id: str | None = None
    priority: int = 0
    exclude: frozenset[str] = frozenset()
    bytes: int | float = 0

    def __post_init__(self) -> None:
        if self.key is not None and type(self.key) is not str:
            check_key(self.key, "key")
        if self.client_id is not None and type(self.client_id) is not str:
            check_key(self.client_id, "client_id")
        if self.priority != 0 or type(self.priority) is not int:
            check_priority(self.priority)
        if self.bytes != 0 or type(self.bytes) is not int:
            check_bytes(self.bytes)

    @classmethod
    def with_key(cls, key: str) -> Context:
        return cls(key=key)

    def with_priority(self, priority: int) -> Context:
        """A copy at ``priority`` (an int in [0, 9]; higher is admitted first)."""
        return replace(self, priority=priority)

    def with_bytes(self, nbytes: int | float) -> Context:
        """A copy whose request is ``nbytes`` bytes (charged against bandwidth limits)."""
        return replace(self, bytes=nbytes)

    def with_client(self, client_id: str) -> Context:
        return replace(self, client_id=client_id)

    def excluding(self, *backend_ids: str) -> Context:
        return replace(self, exclude=self.exclude | frozenset(backend_ids))


@runtime_checkable
class Strategy(Protocol):
    """A backend-selection strategy. Implement ``select``; ``observe`` is optional."""

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        """Pick one healthy backend, or raise ``NoBackendAvailable``."""
        ...


@dataclass(frozen=True, slots=True)
class Param:
    """One strategy parameter that the pool's fleet-wide configuration may set
    (``strategy.<name>`` in the ``:config`` hash): its attribute name, ``int`` or
    ``float``, and its range (``[low, high]``; ``(low, high]`` without ``low_inclusive``),
    the constructor's own. A strategy lists them in ``config_params``."""

    name: str
    kind: type[int] | type[float]
    low: float
    high: float
    low_inclusive: bool = True
    optional: bool = False        #: None (off) is a value too, as in the constructor

    def check(self, value: object, field: str | None = None) -> int | float | None:
        """``value`` as this parameter holds it (an integral float for an int parameter
        is taken), else ``ConfigError`` naming ``field`` (default: the name) and the range."""
        label = field or self.name
        if value is None and self.optional:
            return None
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return integer(label, value, low=int(self.low), high=int(self.high))
        return number(label, value, low=self.low, high=self.high,
                      low_inclusive=self.low_inclusive)


def configure(strategy: object, values: Mapping[str, int | float | None]) -> None:
    """Set declared parameters on ``strategy`` (checked against its ``config_params``):
    its own ``configure`` when it has one (the built-in ones: derived state such as a
    hash ring is rebuilt at once), else plain attributes. ``ConfigError`` names
    ``strategy.<name>`` for a parameter it does not declare or a value out of range;
    nothing is set then."""
    own = getattr(strategy, "configure", None)
    if callable(own):
        own(**values)
        return
    checked = check_params(strategy, values)
    for name, value in checked.items():
        setattr(strategy, name, value)


def check_params(strategy: object,
                 values: Mapping[str, object]) -> dict[str, int | float | None]:
    """``values`` checked against ``strategy``'s ``config_params`` (and its
    ``check_config`` rule, if any), as the parameters hold them."""
    declared = {p.name: p for p in getattr(strategy, "config_params", ())}
    out: dict[str, int | float | None] = {}
    for name, value in values.items():
        param = declared.get(name)
        if param is None:
            have = ", ".join(sorted(declared)) or "none"
            raise ConfigError(f"strategy.{name}", f"{type(strategy).__name__} has no "
                                                  f"configurable parameter {name!r} (it has: "
                                                  f"{have})")
        out[name] = param.check(value, f"strategy.{name}")
    rule = getattr(strategy, "check_config", None)
    if callable(rule):
        rule(out)
    return out


def candidates(backends: Sequence[Backend], ctx: Context | None) -> list[Backend]:
    """The healthy, non-excluded backends with a weight above zero."""
    exclude = ctx.exclude if ctx is not None else frozenset()
    out = [b for b in backends if b.healthy and b.weight > 0 and b.id not in exclude]
    if not out:
        raise NoBackendAvailable(f"no healthy backend among {len(backends)}")
    return out


class Base:
    """What the built-in strategies share: an injectable ``random.Random`` (ties,
    sampling) and clock, and the health filter, remembered for the last snapshot.

    Snapshots passed as tuples are immutable, so filtering the same tuple again
    is skipped: with 1000 backends the O(n) filter, not the pick, is the cost.

    ``config_params``: the parameters a pool's fleet-wide configuration may change at
    run time (``strategy.<name>``), applied by ``configure``; a subclass whose derived
    state (a ring, a table) depends on one rebuilds it in ``_reconfigured``.
    """

    #: The parameters ``configure`` may change (name, int/float, the constructor's range).
    config_params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self._seen: tuple[Sequence[Backend] | None, list[Backend]] = (None, [])
        self._indexed: tuple[list[Backend] | None, dict[str, Backend]] = (None, {})

    def configure(self, **values: int | float | None) -> None:
        """Change declared parameters (``config_params``) at run time: all checked first
        (``ConfigError`` naming ``strategy.<name>``; nothing changed then), then set; the
        ones that changed are handed to ``_reconfigured`` at once, so derived state (a
        hash ring, a lookup table) never lags behind its parameters."""
        checked = check_params(self, values)
        changed = frozenset(n for n, v in checked.items() if getattr(self, n) != v)
        for name in changed:
            setattr(self, name, checked[name])
        if changed:
            self._reconfigured(changed)

    def check_config(self, values: Mapping[str, int | float | None]) -> None:
        """A rule beyond each parameter's range (``ConfigError``); none by default."""

    def _reconfigured(self, changed: frozenset[str]) -> None:
        """Rebuild what depends on the parameters in ``changed`` (none by default)."""

    def _candidates(self, backends: Sequence[Backend], ctx: Context | None) -> list[Backend]:
        if (ctx is not None and ctx.exclude) or not isinstance(backends, tuple):
            return candidates(backends, ctx)
        seen, pool = self._seen
        if seen is not backends:
            pool = candidates(backends, ctx)
            self._seen = (backends, pool)
        return pool

    def select_key(self, backends: Sequence[Backend], key: str) -> Backend:
        """``select(backends, Context(key=key))`` for the plain key case; the hashing
        strategies answer it without building a Context."""
        return self.select(backends, Context(key=key))  # type: ignore[attr-defined,no-any-return]

    def _by_id(self, pool: list[Backend]) -> dict[str, Backend]:
        """``{id: backend}`` for a filtered pool, kept while the pool is the same object."""
        seen, index = self._indexed
        if seen is not pool:
            index = {b.id: b for b in pool}
            self._indexed = (pool, index)
        return index
