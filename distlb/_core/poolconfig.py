"""A pool's fleet-wide configuration: plan and parse ``poolconfig.lua``, validate, apply.

The pool's limits (``rate_limit``, ``client_limit``), the numeric fields of its
``BreakerSettings`` and numeric strategy parameters live in one hash under the pool's
hash tag, ``{pool:<name>}:config``, versioned and changed by compare-and-set in Lua,
with a bounded history (``:config:history``). Every process reads it at its pool's
refresh (every ``refresh_s``, at once after a ``config`` event on the pool's channel)
and applies it: stored values win over constructor arguments (one WARNING per pool
object says so the first time they differ). Nothing stored: the constructor
arguments are in force; a process never publishes its own.

Pure: the pool calls :class:`Follower` from its refresh and its event handler.
"""

from __future__ import annotations

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
from distlb._shaping import Limit
from distlb._validate import integer, number, show
from distlb.errors import ConfigError, DistlbError, StoreError

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
    ``"1000/hour burst 50"``), ``"<rate> <burst>"``, or None / ``"none"`` (no limit)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, Limit):
        return value
    if isinstance(value, str):
        parts = value.split()
        try:
            if len(parts) == 2 and all(_is_float(p) for p in parts):
                return Limit(float(parts[0]), float(parts[1]))
            return Limit.parse(value)
        except ConfigError as exc:
            raise ConfigError(field_name, f"{str(exc).partition(': ')[2] or exc} "
                                          f"(got {show(value)})") from None
    raise ConfigError(field_name, "must be a distlb.Limit, a rate string like '100/s', "
                                  f"or None, got {type(value).__name__}")


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def breaker_value(name: str, value: object) -> float | int | None:
    """One breaker field, checked alone (the combination is checked by ``BreakerSettings``)."""
    if name not in BREAKER_FIELDS:
        raise ConfigError(f"breaker.{name}", "is not a breaker setting the store can hold; "
                                             f"one of {', '.join(BREAKER_FIELDS)}")
    if isinstance(value, str):
        value = _parse_number(f"breaker.{name}", value, allow_none=name == "slow_call_s")
    if value is None and name == "slow_call_s":
        return None
    if name in BREAKER_INTS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return integer(f"breaker.{name}", value, low=1, high=1_000_000)
    return number(f"breaker.{name}", value, low_inclusive=True, high=365 * 86400)


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


def strategy_value(strategy: Any, name: str, value: object, *, strict: bool) -> float | int:
    """A numeric strategy parameter. ``strict`` (applying it to ``strategy``): the strategy
    must have a public numeric attribute ``name`` that its constructor accepts as a keyword
    with ``value`` (the constructor's own validation); otherwise only a finite number."""
    label = f"strategy.{name}"
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ConfigError(label, "must name a public attribute of the strategy")
    if isinstance(value, str):
        value = _parse_number(label, value)
    v = number(label, value, low=-1e15, high=1e15, low_inclusive=True)
    current = getattr(strategy, name, _MISSING) if strategy is not None else _MISSING
    if current is _MISSING or isinstance(current, bool) or not isinstance(
            current, int | float | type(None)):
        if strict:
            raise ConfigError(label, f"{type(strategy).__name__} has no numeric parameter "
                                     f"{name!r}")
        return v
    out: float | int = v
    if isinstance(current, int) and v.is_integer():
        out = int(v)
    try:
        type(strategy)(**{name: out})   # the constructor's own range check
    except TypeError:
        raise ConfigError(label, f"{type(strategy).__name__}() takes no keyword "
                                 f"{name!r}") from None
    return out


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
        try:                              # the combination, over the defaults
            BreakerSettings(**checked)    # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"breaker.{exc.field}", str(exc).partition(": ")[2]) from None
        pairs.extend((f"breaker.{k}", _num_text(v)) for k, v in checked.items())
    for k, v in (strategy_params or {}).items():
        pairs.append((f"strategy.{k}", _num_text(strategy_value(strategy, k, v,
                                                                strict=False))))
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
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError("assignment", f"must be field=value, got {show(item)}")
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
    if head[0] in ("ok", "conflict"):
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
        self.warned_bad: set[tuple[str, str]] = set()

    @property
    def pool(self) -> Any:
        pool = self._pool()
        if pool is None:
            raise ReferenceError("the pool of this configuration is gone")
        return pool

    # -- the pool's hooks --------------------------------------------------------------------

    def on_event(self, event: Mapping[str, Any]) -> bool:
        """True if ``event`` is a config change: the pool's view is marked stale, so its
        next call refreshes (snapshot, then this configuration)."""
        if event.get("event") != "config":
            return False
        if str(event.get("config_version")) != str(self.version):
            pool = self._pool()
            if pool is not None:
                pool._pool_view.mark_stale()
        return True

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
            if bfields:
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
            changes = self._describe_changes(limits, breaker, strategy)
            self._put(limits, breaker, strategy)
            self.version, self.token, self.stored = stored.version, token, frozenset(used)
            self.updated_by = f.get("updated_by", "")
            try:
                self.updated_at_s = int(f["updated_at_us"]) / 1e6
            except (KeyError, ValueError):
                self.updated_at_s = None
            overrides = self._overrides(limits, breaker, strategy)
        if overrides and not self.warned_override:
            self.warned_override = True
            log.warning("pool %r: the fleet-wide configuration (version %d, stored in Redis) "
                        "is in force, not this process's constructor arguments: %s",
                        pool.name, stored.version, "; ".join(overrides))
        elif changes:
            log.info("pool %r: configuration version %d applied: %s", pool.name,
                     stored.version, "; ".join(changes))

    def _put(self, limits: dict[str, Limit | None], breaker: BreakerSettings | None,
             strategy: dict[str, Any]) -> None:
        pool = self.pool
        pool.rate_limit = limits["rate_limit"]
        pool.client_limit = limits["client_limit"]
        for name, value in strategy.items():
            if name not in self.base.strategy:
                self.base.strategy[name] = getattr(pool.strategy, name)
            setattr(pool.strategy, name, value)
        for name, value in self.base.strategy.items():   # unset: back to the constructor's
            if name not in strategy:
                setattr(pool.strategy, name, value)
        if breaker != pool.breaker_settings:
            # Breakers are re-created with the new settings at their next use; their shared
            # state (open, failures, probes) is in Redis and stays.
            pool.breaker_settings = breaker
            for cb in pool._pool_breakers.reset(breaker, pool.subscribe):
                cb._leave_bus()

    def _overrides(self, limits: dict[str, Limit | None], breaker: BreakerSettings | None,
                   strategy: dict[str, Any]) -> list[str]:
        base, out = self.base, []
        for name in LIMIT_FIELDS:
            if limits[name] != getattr(base, name):
                out.append(f"{name}={_limit_human(limits[name])} (constructor: "
                           f"{_limit_human(getattr(base, name))})")
        if breaker != base.breaker:
            for name in BREAKER_FIELDS:
                new = None if breaker is None else getattr(breaker, name)
                old = None if base.breaker is None else getattr(base.breaker, name)
                if new != old:
                    out.append(f"breaker.{name}={_num_text(new)} (constructor: "
                               f"{_num_text(old)})")
        for name, value in strategy.items():
            old = base.strategy.get(name, getattr(self.pool.strategy, name, None))
            if value != old:
                out.append(f"strategy.{name}={_num_text(value)} (constructor: "
                           f"{_num_text(old)})")
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
        expected = "" if expected_version is None else str(
            integer("expected_version", expected_version, low=0, high=2**53 - 1))
        who = by if by is not None else f"{platform.node()}:{os.getpid()}"
        if not isinstance(who, str) or not who or len(who) > MAX_BY_CHARS:
            raise ConfigError("by", f"must be a non-empty str of at most {MAX_BY_CHARS} "
                                    f"characters, got {show(who)}")
        history_max = integer("history_max", history_max, low=1, high=10_000)
        flat = [x for p in pairs for x in p]
        status: list[str] = []

        def parse(reply: Any) -> None:
            status.append(text(reply[0]))
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
        reply = yield plan(self.pool.key, "history", ["", CONFIG_TTL_MS, n], _entries,
                           self._unavailable, self.pool._guard)
        return list(reply)


def _entries(reply: Any) -> list[dict[str, Any]]:
    if isinstance(reply, list) and reply and text(reply[0]) == "wrongtype":
        raise StoreError(WRONG_TYPE)
    out = []
    for raw in reply or []:
        try:
            entry = json.loads(text(raw))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict):
            if isinstance(entry.get("set"), list):     # cjson writes {} as []
                entry["set"] = {}
            if isinstance(entry.get("previous"), list):
                entry["previous"] = {}
            out.append(entry)
    return out


def _none() -> None:
    return None

__all__ = ["ConfigConflict", "Follower", "PoolConfig", "encode_changes", "parse_assignments"]
