"""A pool's fleet-wide configuration: plan and parse ``poolconfig.lua``, validate, apply.

The pool's limits (``rate_limit``, ``client_limit``), the numeric fields of its
``BreakerSettings`` and the strategy's declared parameters (``config_params``) live in
one hash under the pool's hash tag, ``{pool:<name>}:config``, versioned and changed by
compare-and-set in Lua, with a bounded history (``:config:history``). Every process
reads it at its pool's refresh (every ``refresh_s``, at once after a ``config`` event on
the pool's channel) and hands it to the pool's ``apply_config``: stored values win over
constructor arguments (one WARNING per pool object says so the first time they differ,
leaving out the values that object wrote itself); breaker fields apply only in a pool
built with breakers (``breaker=None`` keeps none, one WARNING). Nothing stored: the
constructor arguments are in force; a process never publishes its own.

Writes check each field against its own range (and breaker fields given together
against each other); the cross-field breaker rules against the fields not given, and
strategy parameters, are each process's to check (``breaker_notes`` explains a misfit).
``distlb.admin.pool_config`` / ``set_pool_config`` / ``pool_config_history`` do the
same without a pool object (the command line), with ``set_args``/``set_reply`` here.

Pure: the pool calls :class:`Follower` from its refresh and its event handler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distlb import _keys
from distlb._breaker import BreakerSettings
from distlb._core.ops import Call, Op, Steps, steps, text
from distlb._core.scripts import script
from distlb._rates import parse_rates
from distlb._shaping import Limit
from distlb._validate import integer, number, show
from distlb.errors import ConfigError, DistlbError, StoreError
from distlb.strategies.base import Param, check_params

log = logging.getLogger("distlb")

#: Seconds the config hash and its history live after their last write or read (a pool's).
CONFIG_TTL_MS = 30 * 86400 * 1000
#: History entries kept by default (newest first); ``history_max`` bounds it in [1, 10000].
HISTORY_MAX = 100
LIMIT_FIELDS = ("rate_limit", "client_limit")
#: The breaker settings a store can hold: the numeric ones (exception classes, ``subscribe``
#: stay per process). Integers, then seconds.
BREAKER_INTS = ("failure_threshold", "success_threshold", "half_open_max_requests")
BREAKER_FIELDS = (*BREAKER_INTS, "open_timeout_s", "probe_lease_s", "slow_call_s",
                  "max_staleness_s", "ttl_s")
META_FIELDS = ("version", "updated_by", "updated_at_us")
MAX_BY_CHARS = 200


class ConfigConflict(DistlbError):
    """``set_config(expected_version=N)`` found another version stored: nothing written.
    ``current`` is the configuration now stored (and in force in this process)."""

    def __init__(self, pool: str, expected: int, current: PoolConfig) -> None:
        super().__init__(f"pool {pool!r}: configuration version {current.version} is stored, "
                         f"not {expected}; nothing written (read it again and retry)")
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """A pool's configuration in force in this process.

    ``version``: the stored version (0: nothing stored, the constructor arguments are in
    force). ``stored``: the fields whose value came from the store (``rate_limit``,
    ``breaker.failure_threshold``, ``strategy.decay_s`` ...); every other value is this
    process's constructor argument. ``updated_at_s``: server time (Unix seconds) of the
    last write, None if none. ``strategy``: the numeric strategy parameters in force
    from the store.
    """

    version: int
    rate_limit: Limit | None
    client_limit: Limit | None
    breaker: BreakerSettings | None
    strategy: Mapping[str, float] = field(default_factory=dict)
    stored: frozenset[str] = frozenset()
    updated_by: str = ""
    updated_at_s: float | None = None

    def describe(self) -> dict[str, str]:
        """Every field as text (what ``distlb config get`` prints)."""
        out = {"version": str(self.version),
               "rate_limit": _limit_human(self.rate_limit),
               "client_limit": _limit_human(self.client_limit)}
        b = self.breaker
        for f in BREAKER_FIELDS:
            out[f"breaker.{f}"] = "none" if b is None else _num_text(getattr(b, f))
        for k, v in sorted(self.strategy.items()):
            out[f"strategy.{k}"] = _num_text(v)
        return out


def _num_text(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _limit_text(limit: Limit | None) -> str:
    """As stored: ``"<rate per s> <burst>"`` or ``"none"``."""
    return "none" if limit is None else f"{_num_text(limit.rate_per_s)} {_num_text(limit.burst)}"


def _limit_human(limit: Limit | None) -> str:
    return "none" if limit is None else str(limit)


# -- validation: what may be written --------------------------------------------------------


def limit_value(field_name: str, value: object) -> Limit | None:
    """A limit as given to ``set_config``: a ``Limit``, a rate string (``"100/s"``,
    ``"1000/hour burst 50"``), ``"<rate> <burst>"``, or None / ``"none"`` (no limit).

    An error names the part at fault (``rate_limit burst``, ``rate_limit rate``) and its
    range once, with the text given."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, Limit):
        return value.check_request_limit(field_name)   # a request costs 1: burst >= 1
    if isinstance(value, str):
        parts = value.split()
        if len(parts) == 2 and all(_is_float(p) for p in parts):
            rates = [(float(parts[0]), float(parts[1]))]
        else:
            rates = parse_rates(value, field_name)
            if len(rates) != 1:
                raise ConfigError(field_name, f"must be one rate, got {len(rates)} in "
                                              f"{show(value)} (a pool holds one limit)")
        try:
            limit = Limit(*rates[0])
        except ConfigError as exc:
            part = "burst" if exc.field == "burst" else "rate"
            raise ConfigError(f"{field_name} {part}", f"{str(exc).partition(': ')[2]} "
                                                      f"in {show(value)}") from None
        return limit.check_request_limit(field_name)
    raise ConfigError(field_name, "must be a distlb.Limit, a rate string like '100/s', "
                                  f"or None, got {show(value)} ({type(value).__name__})")


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


#: Each breaker field's own range (``BreakerSettings``'): ints [low, high]; seconds
#: (low, high], or [low, high] where marked. The cross-field rules (half_open_max_requests
#: >= success_threshold, ttl_s > open_timeout_s + probe_lease_s) are each process's to check.
BREAKER_RANGES: dict[str, tuple[float, float, bool]] = {
    "failure_threshold": (1, 1_000_000, True), "success_threshold": (1, 10_000, True),
    "half_open_max_requests": (1, 10_000, True), "open_timeout_s": (0.001, 86400, False),
    "probe_lease_s": (0.001, 86400, False), "slow_call_s": (0, 86400, False),
    "max_staleness_s": (0, 3600, True), "ttl_s": (0, 365 * 86400, False)}
#: The settings that make every cross-field rule easiest to meet: a breaker combination
#: that fails over these fails over any process's settings (it contradicts itself).
_PERMISSIVE: dict[str, Any] = {
    "failure_threshold": 1, "success_threshold": 1, "half_open_max_requests": 10_000,
    "open_timeout_s": 0.002, "probe_lease_s": 0.002, "slow_call_s": None,
    "max_staleness_s": 0.0, "ttl_s": 365 * 86400.0}


def breaker_value(name: str, value: object) -> float | int | None:
    """One breaker field, checked against its own range only (the combination is each
    process's: ``breaker_notes``)."""
    if name not in BREAKER_FIELDS:
        raise ConfigError(f"breaker.{name}", "is not a breaker setting the store can hold; "
                                             f"one of {', '.join(BREAKER_FIELDS)}")
    if isinstance(value, str):
        value = _parse_number(f"breaker.{name}", value, allow_none=name == "slow_call_s")
    if value is None and name == "slow_call_s":
        return None
    low, high, inclusive = BREAKER_RANGES[name]
    if name in BREAKER_INTS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return integer(f"breaker.{name}", value, low=int(low), high=int(high))
    return number(f"breaker.{name}", value, low=low, high=high, low_inclusive=inclusive)


def check_breaker_combination(checked: Mapping[str, Any]) -> None:
    """Refuse breaker fields that contradict EACH OTHER (no process could apply them, e.g.
    ``success_threshold=9 half_open_max_requests=5``): ``ConfigError`` naming the field."""
    try:
        BreakerSettings(**{**_PERMISSIVE, **checked})
    except ConfigError as exc:
        raise ConfigError(f"breaker.{exc.field}", f"{str(exc).partition(': ')[2]}, "
                          "with the other breaker fields given: no process can apply "
                          "them") from None


def breaker_notes(checked: Mapping[str, Any], base: BreakerSettings | None = None,
                  whose: str = "the default breaker settings") -> list[str]:
    """Why stored breaker fields cannot apply over ``base`` (default: ``BreakerSettings()``)
    - each process checks the combination over its own settings and ignores one that does
    not fit, with a warning. Empty when they fit."""
    if not checked:
        return []
    try:
        dataclasses.replace(base or BreakerSettings(), **checked)
    except ConfigError as exc:
        given = " ".join(f"breaker.{k}={_num_text(v)}" for k, v in checked.items())
        return [f"{given} does not fit {whose} (breaker.{exc.field}: "
                f"{str(exc).partition(': ')[2]}): a process with them ignores the stored "
                f"breaker fields with a warning; set breaker.{exc.field} too"]
    return []


def _parse_number(field_name: str, text_value: str, allow_none: bool = False) -> Any:
    t = text_value.strip()
    if allow_none and t.lower() == "none":
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        raise ConfigError(field_name, f"must be a number, got {show(text_value)}") from None


def strategy_value(strategy: Any, name: str, value: object, *,
                   strict: bool) -> float | int | None:
    """A numeric strategy parameter. ``strict`` (applying it to ``strategy``): the strategy
    must declare ``name`` in its ``config_params`` (``distlb.strategies.Param``: type and
    range, plus its ``check_config`` rule); otherwise a finite number, checked against
    ``strategy``'s declaration when it has one (the writer's own strategy)."""
    label = f"strategy.{name}"
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ConfigError(label, "must name a public parameter of the strategy (letters, "
                                 "digits and _, not starting with a digit or _), got "
                                 f"{show(name)}")
    if isinstance(value, str):
        value = _parse_number(label, value)
    v = number(label, value, low=-1e15, high=1e15, low_inclusive=True)
    declared = {p.name for p in getattr(strategy, "config_params", ())}
    if not strict and name not in declared:
        return v
    return check_params(strategy, {name: v})[name]


def _builtin_params() -> list[tuple[type, tuple[Param, ...]]]:
    """The built-in strategy classes that declare configurable parameters, with them."""
    import distlb.strategies as builtin

    found = (getattr(builtin, n) for n in builtin.__all__)
    return [(c, params) for c in found
            if isinstance(c, type) and (params := tuple(getattr(c, "config_params", ())))]


def builtin_strategy_value(name: str, value: object) -> float | int | None:
    """A strategy parameter written without the pool's strategy at hand (the command
    line, ``distlb.admin``): checked against the built-in strategies that declare
    ``name`` (valid for one of them is enough; their ``check_config`` rules too). A
    name no built-in strategy declares is refused: a custom strategy's parameters are
    written by ``LoadBalancer.set_config`` in a process that runs it, which checks them
    against the strategy itself."""
    label = f"strategy.{name}"
    v = strategy_value(None, name, value, strict=False)     # a public name, a number
    declared = _builtin_params()
    owners = [c for c, params in declared if any(p.name == name for p in params)]
    if not owners:
        known = sorted({p.name for _, params in declared for p in params})
        raise ConfigError(label, "no built-in strategy has this parameter (theirs: "
                                 f"{', '.join(known)}); a custom strategy's parameters are "
                                 "written with LoadBalancer.set_config by a process running "
                                 "it")
    first: ConfigError | None = None
    for cls in owners:
        try:        # an instance without __init__: check_params reads class attributes
            return check_params(object.__new__(cls), {name: v})[name]
        except ConfigError as e:
            first = first or e
    assert first is not None
    raise first


_MISSING = object()


def encode_changes(*, strategy: Any, rate_limit: object = _MISSING,
                   client_limit: object = _MISSING,
                   breaker: BreakerSettings | Mapping[str, object] | None = None,
                   strategy_params: Mapping[str, object] | None = None,
                   unset: Iterable[str] = ()) -> tuple[list[tuple[str, str]], list[str]]:
    """The (field, value) pairs to write and the fields to remove, all validated (a
    ``ConfigError`` names the first bad one) before anything reaches the store."""
    pairs: list[tuple[str, str]] = []
    for name, value in (("rate_limit", rate_limit), ("client_limit", client_limit)):
        if value is not _MISSING:
            pairs.append((name, _limit_text(limit_value(name, value))))
    if breaker is not None:
        items: Mapping[str, object]
        if isinstance(breaker, BreakerSettings):
            items = {f: getattr(breaker, f) for f in BREAKER_FIELDS}
        elif isinstance(breaker, Mapping):
            items = breaker
        else:
            raise ConfigError("breaker", "must be a BreakerSettings or a mapping of its "
                                         "numeric fields")
        checked = {str(k): breaker_value(str(k), v) for k, v in items.items()}
        check_breaker_combination(checked)     # over each process's own: breaker_notes
        pairs.extend((f"breaker.{k}", _num_text(v)) for k, v in checked.items())
    for k, v in (strategy_params or {}).items():
        value = (strategy_value(strategy, k, v, strict=True) if strategy is not None
                 else builtin_strategy_value(k, v))
        pairs.append((f"strategy.{k}", _num_text(value)))
    removals = []
    for f in unset:
        if not isinstance(f, str) or not (
                f in LIMIT_FIELDS or (f.removeprefix("breaker.") in BREAKER_FIELDS
                and f.startswith("breaker.")) or f.startswith("strategy.")):
            raise ConfigError("unset", f"must name stored fields (rate_limit, client_limit, "
                                       f"breaker.<field>, strategy.<name>), got {show(f)}")
        removals.append(f)
    if not pairs and not removals:
        raise ConfigError("set_config", "nothing to change: give at least one value")
    if {p for p, _ in pairs} & set(removals):
        raise ConfigError("unset", "a field cannot be both set and unset")
    return pairs, removals


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["rate_limit=100/s", "breaker.failure_threshold=3", "strategy.decay_s=5"]`` as
    ``set_config`` keywords (the command line's syntax; ``field=default`` removes a stored
    field, ``rate_limit=none`` stores "no limit"); values are checked there."""
    out: dict[str, Any] = {}
    breaker: dict[str, str] = {}
    strat: dict[str, str] = {}
    unset: list[str] = []
    seen: set[str] = set()
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError("assignment", f"must be field=value, got {show(item)}")
        if name in seen:       # the last one winning silently hides a typo
            raise ConfigError(name, "is given twice: give each field once")
        seen.add(name)
        if value.strip().lower() == "default":      # remove it: the constructor's value
            unset.append(name)
        elif name in LIMIT_FIELDS:
            out[name] = value
        elif name.startswith("breaker."):
            breaker[name.removeprefix("breaker.")] = value
        elif name.startswith("strategy."):
            strat[name.removeprefix("strategy.")] = value
        else:
            raise ConfigError(name, "is not a pool setting: rate_limit, client_limit, "
                                    "breaker.<field>, strategy.<name>")
    if breaker:
        out["breaker"] = breaker
    if strat:
        out["strategy"] = strat
    if unset:
        out["unset"] = unset
    return out


# -- reading: what the store holds -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """The config hash as read (raw text values), or ``None`` fields when nothing stored."""

    version: int
    fields: Mapping[str, str]


def parse_get(reply: Any) -> Stored | None:
    """A ``get``/``set`` reply: the stored hash, or None when unchanged since the version
    the caller knows. Raises ``StoreError`` for a key that is not a hash."""
    if isinstance(reply, list) and reply and text(reply[0]) == "wrongtype":
        raise StoreError(WRONG_TYPE)
    head = [text(x) for x in reply[:2]]
    if head[0] in ("ok", "conflict", "unchanged"):
        flat = reply[2:]
        version = int(head[1])
    else:
        if int(text(reply[1])) == 0:
            return None
        flat = reply[2:]
        version = int(head[0])
    pairs = {}
    for i in range(0, len(flat) - 1, 2):
        try:
            pairs[text(flat[i])] = text(flat[i + 1])
        except UnicodeDecodeError:
            continue
    return Stored(version, pairs)


WRONG_TYPE = ("the pool's config key is not a hash, or its history not a zset (written by "
              "hand?): delete them")


def plan(key: str, op: str, args: list[Any], parse: Callable[[Any], Any],
         fallback: Callable[[], Any], owner: Any) -> Call[Any]:
    keys = (_keys.part(key, "config"), _keys.part(key, "config", "history"))
    return Call(script("poolconfig"), keys, (op, *args), parse, fallback, owner)


# -- applying: what a process runs with ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """The values a pool runs with after a configuration read, handed to its
    ``apply_config``: the limits, the breaker settings (None: no breakers) and the strategy
    parameters (``{name: value}``, checked against the strategy's ``config_params``; a
    parameter no longer stored carries the constructor's value again)."""

    rate_limit: Limit | None
    client_limit: Limit | None
    breaker: BreakerSettings | None
    strategy: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Base:
    rate_limit: Limit | None
    client_limit: Limit | None
    breaker: BreakerSettings | None
    strategy: dict[str, Any]


class Follower:
    """One pool's view of its stored configuration and the constructor arguments it
    overrides. The pool calls ``refresh``/``after`` from its refresh and ``on_event``
    from its event handler; everything else is here."""

    def __init__(self, pool: Any) -> None:
        # Weak: the pool holds its follower; no cycle keeps a dropped pool (and its bus) alive.
        self._pool = weakref.ref(pool)
        self.base = _Base(pool.rate_limit, pool.client_limit, pool.breaker_settings, {})
        self.lock = threading.Lock()
        self.version = -1                # -1: never read; 0: nothing stored
        self.token = ""                  # "<version>:<updated_at_us>" last applied
        self.stored: frozenset[str] = frozenset()
        self.updated_by = ""
        self.updated_at_s: float | None = None
        self.warned_override = False
        #: Fields this pool object wrote itself (``set_config``): it chose those values, so
        #: they are never reported as overriding its constructor arguments.
        self.chosen: set[str] = set()
        self.warned_bad: set[tuple[str, str]] = set()
        self.warned_no_breaker = False

    @property
    def pool(self) -> Any:
        pool = self._pool()
        if pool is None:
            raise ReferenceError("the pool of this configuration is gone")
        return pool

    # -- the pool's hooks --------------------------------------------------------------------

    def on_event(self, event: Mapping[str, Any]) -> bool | None:
        """None if ``event`` is not a configuration change; else whether it is news (a
        version this follower has not applied): the pool then marks its view stale, so
        its next call refreshes (snapshot, then this configuration)."""
        if event.get("event") != "config":
            return None
        return str(event.get("config_version")) != str(self.version)

    def after(self, op: Op[Any]) -> Steps[Any]:
        """``op`` (the pool's snapshot, due every ``refresh_s`` or after an event), then
        the configuration read: the hot path (no refresh due) costs nothing more."""
        result = yield from steps(op)
        yield self.read()
        return result

    def read(self, known: str | None = None) -> Call[Any]:
        pool = self.pool
        return plan(pool.key, "get", [self.token if known is None else known, CONFIG_TTL_MS],
                    self.apply_reply, _none, pool._guard)

    def apply_reply(self, reply: Any) -> None:
        try:
            stored = parse_get(reply)
        except StoreError as exc:
            self._warn_bad("(key)", "not a hash", f"pool {self.pool.name!r}: {exc}; the "
                           "constructor arguments stay in force")
            return
        if stored is not None:
            self.apply(stored)

    # -- the values --------------------------------------------------------------------------

    def apply(self, stored: Stored) -> None:
        """Put the stored values in force (validated one by one: a bad value is ignored with
        a warning, never an error); fields not stored take the constructor's value."""
        pool, base, f = self.pool, self.base, stored.fields
        token = f"{stored.version}:{stored.fields.get('updated_at_us', '')}"
        with self.lock:
            if token == self.token:
                return
            used: set[str] = set()
            limits: dict[str, Limit | None] = {}
            for name in LIMIT_FIELDS:
                limits[name] = getattr(base, name)
                if name in f:
                    try:
                        limits[name] = limit_value(name, f[name])
                        used.add(name)
                    except ConfigError as exc:
                        self._warn_bad(name, f[name], f"pool {pool.name!r}: stored {name} "
                                       f"{f[name]!r} ignored ({exc})")
            breaker = base.breaker
            bfields: dict[str, Any] = {}
            for name in BREAKER_FIELDS:
                raw = f.get(f"breaker.{name}")
                if raw is None:
                    continue
                try:
                    bfields[name] = breaker_value(name, raw)
                except ConfigError as exc:
                    self._warn_bad(f"breaker.{name}", raw, f"pool {pool.name!r}: stored "
                                   f"breaker.{name} {raw!r} ignored ({exc})")
            if bfields and base.breaker is None:
                # Breakers on or off is the code's choice (``breaker=None``: this pool's
                # calls are never refused by a breaker); stored fields tune breakers, they
                # never switch them on.
                if not self.warned_no_breaker:
                    self.warned_no_breaker = True
                    log.warning("pool %r: built with breaker=None: the stored breaker fields "
                                "(%s) are ignored in this process (it has no breakers)",
                                pool.name, ", ".join(f"breaker.{n}" for n in sorted(bfields)))
            elif bfields:
                try:
                    breaker = dataclasses.replace(base.breaker or BreakerSettings(), **bfields)
                    used.update(f"breaker.{n}" for n in bfields)
                except ConfigError as exc:
                    self._warn_bad("breaker", repr(sorted(bfields.items())),
                                   f"pool {pool.name!r}: stored breaker settings ignored, "
                                   f"they do not fit this process's ({exc})")
            strategy: dict[str, Any] = {}
            for key_, raw in f.items():
                if not key_.startswith("strategy."):
                    continue
                name = key_.removeprefix("strategy.")
                try:
                    strategy[name] = strategy_value(pool.strategy, name, raw, strict=True)
                    used.add(key_)
                except ConfigError as exc:
                    self._warn_bad(key_, raw, f"pool {pool.name!r}: stored {key_} {raw!r} "
                                   f"ignored ({exc})")
            for key_ in f:
                if (key_ not in LIMIT_FIELDS and key_ not in META_FIELDS
                        and not key_.startswith(("breaker.", "strategy."))):
                    self._warn_bad(key_, f[key_], f"pool {pool.name!r}: stored config field "
                                   f"{key_!r} is not a pool setting; ignored")
            strategy = self._strategy_values(strategy, used)
            changes = self._describe_changes(limits, breaker, strategy)
            # The one way values reach the pool: its apply_config (limits, breakers retired
            # and made again with the new settings, the strategy's configure hook).
            pool.apply_config(Applied(limits["rate_limit"], limits["client_limit"], breaker,
                                      self._with_base(strategy)))
            self.version, self.token, self.stored = stored.version, token, frozenset(used)
            self.updated_by = f.get("updated_by", "")
            try:
                self.updated_at_s = int(f["updated_at_us"]) / 1e6
            except (KeyError, ValueError):
                self.updated_at_s = None
            overrides = [text_ for name, text_ in self._overrides(limits, breaker, strategy)
                         if name not in self.chosen]
        if overrides and not self.warned_override:
            self.warned_override = True
            log.warning("pool %r: the fleet-wide configuration (version %d, stored in Redis) "
                        "is in force, not this process's constructor arguments: %s",
                        pool.name, stored.version, "; ".join(overrides))
        elif changes:
            log.info("pool %r: configuration version %d applied: %s", pool.name,
                     stored.version, "; ".join(changes))

    def _strategy_values(self, strategy: dict[str, Any], used: set[str]) -> dict[str, Any]:
        """The stored strategy parameters, checked together against the strategy (its
        ``check_config`` rule over all of them); a set that fails is ignored whole."""
        pool = self.pool
        if not strategy:
            return strategy
        try:
            check_params(pool.strategy, self._with_base(strategy))
        except ConfigError as exc:
            self._warn_bad("strategy", repr(sorted(strategy.items())), f"pool {pool.name!r}: "
                           f"stored strategy parameters ignored ({exc})")
            used.difference_update(f"strategy.{n}" for n in strategy)
            return {}
        return strategy

    def _with_base(self, strategy: dict[str, Any]) -> dict[str, Any]:
        """Every strategy parameter ever stored: the stored value, else (removed since)
        the constructor's again. Remembers the constructor's value of a new one."""
        pool = self.pool
        for name in strategy:
            if name not in self.base.strategy:
                self.base.strategy[name] = getattr(pool.strategy, name)
        return {**self.base.strategy, **strategy}

    def _overrides(self, limits: dict[str, Limit | None], breaker: BreakerSettings | None,
                   strategy: dict[str, Any]) -> list[tuple[str, str]]:
        """(field, text) for each value in force that differs from the constructor's."""
        base, out = self.base, []
        for name in LIMIT_FIELDS:
            if limits[name] != getattr(base, name):
                out.append((name, f"{name}={_limit_human(limits[name])} (constructor: "
                                  f"{_limit_human(getattr(base, name))})"))
        if breaker != base.breaker:
            for name in BREAKER_FIELDS:
                new = None if breaker is None else getattr(breaker, name)
                old = None if base.breaker is None else getattr(base.breaker, name)
                if new != old:
                    out.append((f"breaker.{name}", f"breaker.{name}={_num_text(new)} "
                                                   f"(constructor: {_num_text(old)})"))
        for name, value in strategy.items():
            old = base.strategy.get(name, getattr(self.pool.strategy, name, None))
            if value != old:
                out.append((f"strategy.{name}", f"strategy.{name}={_num_text(value)} "
                                                f"(constructor: {_num_text(old)})"))
        return out

    def _describe_changes(self, limits: dict[str, Limit | None],
                          breaker: BreakerSettings | None,
                          strategy: dict[str, Any]) -> list[str]:
        pool, out = self.pool, []
        for name in LIMIT_FIELDS:
            if limits[name] != getattr(pool, name):
                out.append(f"{name} {_limit_human(getattr(pool, name))} -> "
                           f"{_limit_human(limits[name])}")
        if breaker != pool.breaker_settings:
            out.append("breaker settings changed")
        for name, value in strategy.items():
            if getattr(pool.strategy, name, None) != value:
                out.append(f"strategy.{name} -> {_num_text(value)}")
        return out

    def _warn_bad(self, key_: str, raw: str, message: str) -> None:
        if (key_, raw) not in self.warned_bad:
            if len(self.warned_bad) > 1000:
                self.warned_bad.clear()
            self.warned_bad.add((key_, raw))
            log.warning("%s", message)

    def current(self) -> PoolConfig:
        pool = self.pool
        with self.lock:
            return PoolConfig(max(self.version, 0), pool.rate_limit, pool.client_limit,
                              pool.breaker_settings,
                              {k.removeprefix("strategy."): getattr(pool.strategy,
                                                                    k.removeprefix("strategy."))
                               for k in self.stored if k.startswith("strategy.")},
                              self.stored, self.updated_by, self.updated_at_s)

    # -- the pool's public operations ----------------------------------------------------------

    def get(self) -> Steps[PoolConfig]:
        """Read the stored configuration now (whole), apply it, return what is in force."""
        yield plan(self.pool.key, "get", ["", CONFIG_TTL_MS], self._force_apply,
                   self._unavailable, self.pool._guard)
        return self.current()

    def _force_apply(self, reply: Any) -> None:
        stored = parse_get(reply)
        if stored is not None:
            self.apply(stored)

    def _unavailable(self) -> Any:
        from distlb.errors import StoreUnavailable
        raise StoreUnavailable(f"store unreachable: the configuration of pool "
                               f"{self.pool.name!r} cannot be read or changed")

    def set(self, changes: Mapping[str, Any], expected_version: int | None,
            by: str | None, history_max: int) -> Steps[PoolConfig]:
        pool = self.pool
        for name in changes:
            if name not in (*LIMIT_FIELDS, "breaker", "strategy", "unset"):
                raise ConfigError(name, "is not a pool setting: rate_limit, client_limit, "
                                        "breaker, strategy, unset")
        pairs, removals = encode_changes(
            strategy=pool.strategy, rate_limit=changes.get("rate_limit", _MISSING),
            client_limit=changes.get("client_limit", _MISSING),
            breaker=changes.get("breaker"), strategy_params=changes.get("strategy"),
            unset=changes.get("unset", ()))
        expected, who, history_max = _write_args(expected_version, by, history_max)
        flat = [x for p in pairs for x in p]
        status: list[str] = []
        bfields = {k.removeprefix("breaker."): breaker_value(k.removeprefix("breaker."), v)
                   for k, v in pairs if k.startswith("breaker.")}
        for note in breaker_notes(bfields, pool.breaker_settings or BreakerSettings(),
                                  "this process's breaker settings"):
            log.warning("pool %r: %s", pool.name, note)

        def parse(reply: Any) -> None:
            status.append(text(reply[0]))
            if status[0] == "ok":       # this process chose these: no warning about them
                self.chosen.update(p for p, _ in pairs)
                self.chosen.difference_update(removals)
            self._force_apply(reply)

        yield plan(pool.key, "set", [expected, CONFIG_TTL_MS, history_max, who, pool.name,
                                     pool.channel, len(pairs), *flat, *removals],
                   parse, self._unavailable, pool._guard)
        current = self.current()
        if status and status[0] == "conflict":
            raise ConfigConflict(pool.name, int(expected), current)
        return current

    def history(self, limit: int) -> Steps[list[dict[str, Any]]]:
        n = integer("limit", limit, low=1, high=10_000)
        reply = yield plan(self.pool.key, "history", ["", CONFIG_TTL_MS, n], parse_history,
                           self._unavailable, self.pool._guard)
        return list(reply)


def human_value(field_name: str, raw: Any) -> Any:
    """A stored value as people write it: a limit ``"200 200"`` as ``"200/s burst 200"``."""
    if field_name in LIMIT_FIELDS and isinstance(raw, str):
        try:
            return _limit_human(limit_value(field_name, raw))
        except ConfigError:
            return raw
    return raw


def parse_history(reply: Any) -> list[dict[str, Any]]:
    """History entries as documented: ``version`` and ``at_us`` ints, limits as rate
    strings (``"200/s burst 200"``), ``previous`` None for "was not stored"."""
    if isinstance(reply, list) and reply and text(reply[0]) == "wrongtype":
        raise StoreError(WRONG_TYPE)
    out = []
    for raw in reply or []:
        try:
            entry = json.loads(text(raw))
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(entry, dict):
            continue
        for part in ("set", "previous"):
            values = entry.get(part)
            if not isinstance(values, dict):       # cjson writes {} as []
                values = {}
            entry[part] = {k: None if v is False or v is None else human_value(k, v)
                           for k, v in values.items()}
        for number_field in ("version", "at_us"):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                entry[number_field] = int(entry[number_field])
        out.append(entry)
    return out


# -- without a pool object: what ``distlb.admin`` (the I/O) and the command line use ---------


def pool_keys(name: str, prefix: str) -> tuple[str, str]:
    """A pool's main key and its events channel (the name and prefix checked)."""
    key = _keys.entity(_keys.check_prefix(prefix), "pool", _keys.escape(name, "name"))
    return key, _keys.events_channel(_keys.check_prefix(prefix))


def stored_config(stored: Stored | None) -> PoolConfig:
    """What a store holds, over the library's defaults (no limit, ``BreakerSettings()``,
    no strategy parameter) for the fields it does not hold. A stored value that does not
    validate is left out (each process ignores it too); breaker fields whose combination
    does not fit the defaults are kept in ``stored`` but the defaults shown."""
    f = stored.fields if stored is not None else {}
    used: set[str] = set()
    limits: dict[str, Limit | None] = {"rate_limit": None, "client_limit": None}
    for name in LIMIT_FIELDS:
        if name in f:
            with _suppress():
                limits[name] = limit_value(name, f[name])
                used.add(name)
    bfields: dict[str, Any] = {}
    for name in BREAKER_FIELDS:
        if f"breaker.{name}" in f:
            with _suppress():
                bfields[name] = breaker_value(name, f[f"breaker.{name}"])
                used.add(f"breaker.{name}")
    breaker = BreakerSettings()
    with _suppress():
        breaker = dataclasses.replace(breaker, **bfields)
    strategy: dict[str, float] = {}
    for k, raw in f.items():
        if k.startswith("strategy."):
            with _suppress():
                value = strategy_value(None, k.removeprefix("strategy."), raw, strict=False)
                if value is not None:          # a finite number without a strategy
                    strategy[k.removeprefix("strategy.")] = value
                    used.add(k)
    at: float | None = None
    with _suppress():
        at = int(f["updated_at_us"]) / 1e6
    return PoolConfig(stored.version if stored is not None else 0, limits["rate_limit"],
                      limits["client_limit"], breaker, strategy, frozenset(used),
                      f.get("updated_by", ""), at)


def _suppress() -> contextlib.suppress:
    """Suppress the errors a hand-written value can raise (it is left out)."""
    return contextlib.suppress(ConfigError, KeyError, ValueError)


def check_changes(changes: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """``set_config``'s keywords checked without a pool (``encode_changes`` with no
    strategy: a strategy parameter must be one a built-in strategy declares, in its
    range; see ``builtin_strategy_value``)."""
    for field_name in changes:
        if field_name not in (*LIMIT_FIELDS, "breaker", "strategy", "unset"):
            raise ConfigError(field_name, "is not a pool setting: rate_limit, client_limit, "
                                          "breaker, strategy, unset")
    return encode_changes(
        strategy=None, rate_limit=changes.get("rate_limit", _MISSING),
        client_limit=changes.get("client_limit", _MISSING), breaker=changes.get("breaker"),
        strategy_params=changes.get("strategy"), unset=changes.get("unset", ()))


def set_args(name: str, prefix: str, changes: Mapping[str, Any],
             expected_version: int | None, by: str | None,
             history_max: int) -> tuple[list[str], list[Any]]:
    """The keys and arguments of a ``set`` without a pool object, all validated: the caller
    runs ``poolconfig`` with them and reads the reply with ``set_reply``."""
    pairs, removals = check_changes(changes)
    expected, who, history_max = _write_args(expected_version, by, history_max)
    key, channel = pool_keys(name, prefix)
    return script_keys(key), ["set", expected, CONFIG_TTL_MS, history_max, who, name, channel,
                              len(pairs), *[x for p in pairs for x in p], *removals]


def set_reply(name: str, expected_version: int | None, reply: Any) -> tuple[PoolConfig, bool]:
    """What a ``set`` stored, and whether it wrote (False: only removals of fields not
    stored). Raises ``ConfigConflict``."""
    current = stored_config(parse_get(reply))
    status = text(reply[0])
    if status == "conflict":
        raise ConfigConflict(name, int(expected_version or 0), current)
    return current, status == "ok"


def script_keys(key: str) -> list[str]:
    """The script's KEYS for a pool's main key."""
    return [_keys.part(key, "config"), _keys.part(key, "config", "history")]


def _write_args(expected_version: int | None, by: str | None,
                history_max: int) -> tuple[str, str, int]:
    expected = "" if expected_version is None else str(
        integer("expected_version", expected_version, low=0, high=2**53 - 1))
    who = by if by is not None else f"{platform.node()}:{os.getpid()}"
    if not isinstance(who, str) or not who or len(who) > MAX_BY_CHARS:
        raise ConfigError("by", f"must be a non-empty str of at most {MAX_BY_CHARS} "
                                f"characters, got {show(who)}")
    return expected, who, integer("history_max", history_max, low=1, high=10_000)


def _none() -> None:
    return None

__all__ = ["Applied", "ConfigConflict", "Follower", "PoolConfig", "encode_changes",
           "parse_assignments", "parse_history", "set_args", "set_reply", "stored_config"]
