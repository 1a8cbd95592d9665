"""Operating on the shared state as a whole: what the ``distlb`` command does, as a library.

The primitives change their own state, one call at a time. An operator (or a tool)
sometimes needs more: list an entity's keys, reset an entity for every process
without building the object that owns it, or delete it entirely, configuration and
all. Everything here reads the one table of kinds (``KINDS``), the same table the
README's key table is checked against, so a new kind of primitive is covered here
without a change.

Sync only: pass a ``redis.Redis``, ``redis.cluster.RedisCluster`` or Sentinel master.
Every key of one entity shares its hash tag (``<prefix>:{<kind>:<name>}``), so on a
cluster they all live in one slot: ``keys`` scans only the node that holds it, and
``delete``/``reset`` remove them in one atomic script call.

Arguments are checked before anything reaches the store: an unknown ``kind``, an
empty or too long ``name`` or an invalid ``prefix`` is a ``ConfigError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.cluster

from distlb import _keys, _scripts
from distlb._connect import redact_url
from distlb._core import poolconfig as _poolconfig
from distlb._core.poolconfig import PoolConfig
from distlb._core.scripts import script
from distlb._events import decode
from distlb._keys import DEFAULT_PREFIX, KeyRef, Kind
from distlb._validate import integer
from distlb.errors import ConfigError

__all__ = [
    "KINDS",
    "KeyRef",
    "Kind",
    "Reset",
    "breaker_notes",
    "check_pool_config",
    "decode_event",
    "decode_name",
    "delete",
    "entity_key",
    "events_channel",
    "keys",
    "kind_of",
    "parse_key",
    "pool_config",
    "pool_config_history",
    "redact_url",
    "reset",
    "set_pool_config",
]

#: Every kind of entity distlb stores: code (``tb``), label ("token bucket"), command-line
#: word (``bucket``), key parts, what ``distlb inspect`` summarises, what reset keeps.
KINDS: tuple[Kind, ...] = _keys.KIND_TABLE


def kind_of(word: str) -> Kind:
    """The kind named by its code (``"tb"``) or its command-line word (``"bucket"``)."""
    found = _keys.BY_CODE.get(word) or _keys.BY_COMMAND.get(word)
    if found is None:
        # A kind whose code is its command-line word (pool) is listed once.
        allowed = ", ".join(sorted(set(_keys.BY_COMMAND) | set(_keys.BY_CODE)))
        raise ConfigError("kind", f"must be one of {allowed}, got {word!r}")
    return found


def entity_key(kind: str, name: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The main key of an entity, e.g. ``distlb:{tb:api}``; its other keys are this plus
    ``:<part>``. ``kind`` is a code or a command-line word; ``name`` is escaped as the
    primitives escape it."""
    return _keys.entity(_keys.check_prefix(prefix), kind_of(kind).code, _keys.escape(name, "name"))


def parse_key(key: str | bytes) -> KeyRef | None:
    """A key's prefix, kind code, (unescaped) name and part; None if distlb did not build it."""
    return _keys.parse(key)


def decode_name(text: str) -> str:
    """A name or key part as escaped in a key (``ali%3Ace``) back to the text (``ali:ce``)."""
    return _keys.unescape(text)


def events_channel(prefix: str = DEFAULT_PREFIX) -> str:
    """The pub/sub channel the scripts publish shared-state events on (breaker transitions,
    health and registry changes): ``<prefix>:events``."""
    return _keys.events_channel(_keys.check_prefix(prefix))


def decode_event(data: Any) -> dict[str, Any] | None:
    """One message of ``events_channel`` as a dict (events are JSON objects); None for a
    message that is not one (someone else publishing on the channel)."""
    return decode(data)


def _glob(text: str) -> str:
    """Escape glob characters so SCAN MATCH takes ``text`` literally."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


def keys(client: Any, kind: str, name: str, *, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Every key the entity has now, sorted (SCAN: never blocks the server).

    On a cluster only the node that holds the entity's slot is scanned.
    """
    main = entity_key(kind, name, prefix=prefix)
    node = client
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_redis_connection(client.get_node_from_key(main))
    # The closing brace of the hash tag ends the name: "api*" cannot match "{tb:api2}".
    return sorted({_text(k) for k in node.scan_iter(match=f"{_glob(main)}*", count=500)})


def _delete(client: Any, found: Sequence[str]) -> int:
    if not found:
        return 0
    return int(_scripts.run_sync(client, script("delete"), found, []))


def delete(client: Any, kind: str, name: str, *, prefix: str = DEFAULT_PREFIX) -> int:
    """Delete the whole entity, configuration included (a shaper's shared limit overrides);
    returns how many keys went. One atomic script call.

    Unlike ``reset``, no event is published: processes holding a local view (a breaker's
    state) see the change at their next store read. Use ``reset`` for a breaker in use.
    """
    return _delete(client, keys(client, kind, name, prefix=prefix))


@dataclass(frozen=True, slots=True)
class Reset:
    """What ``reset`` did (or, with ``dry_run``, would do): the keys it cleared and the
    keys it kept because they hold configuration, not state."""

    kind: Kind
    name: str
    keys: tuple[str, ...]
    kept: tuple[str, ...]


def reset(client: Any, kind: str, name: str, *, prefix: str = DEFAULT_PREFIX,
          dry_run: bool = False) -> Reset:
    """Reset one entity's shared state for every process: what the library's ``reset()``
    does, without building the object (``distlb reset`` runs this).

    Buckets refill, queues and windows empty, a pool loses its registry, counts and
    statistics: their keys are deleted in one atomic script call. Configuration stays
    (the kind's ``kept_on_reset`` parts: a shaper's shared limit overrides). A breaker is
    closed by its own script instead (a forced state cleared too), which tells every
    process at once. ``dry_run``: only say what would be reset.
    """
    if not isinstance(dry_run, bool):
        raise ConfigError("dry_run", "must be True or False")
    descriptor = kind_of(kind)
    main = entity_key(kind, name, prefix=prefix)
    found = keys(client, kind, name, prefix=prefix)
    configuration = {_keys.part(main, p) for p in descriptor.kept_on_reset}
    result = Reset(descriptor, name, tuple(k for k in found if k not in configuration),
                   tuple(k for k in found if k in configuration))
    if dry_run or not result.keys:
        return result
    if descriptor.reset == "close":
        from distlb.breaker import CircuitBreaker

        with CircuitBreaker(client, name, prefix=prefix, subscribe=False) as breaker:
            breaker.reset()
    else:
        _delete(client, result.keys)
    return result


# -- a pool's fleet-wide configuration, without a LoadBalancer -------------------------------


def pool_config(client: Any, name: str, *, prefix: str = DEFAULT_PREFIX) -> PoolConfig:
    """The fleet-wide configuration stored for pool ``name`` (what ``distlb config get``
    prints): stored values over the library's defaults (no limit, ``BreakerSettings()``),
    ``stored`` naming the fields the store holds, ``strategy`` every stored strategy
    parameter. ``version`` 0: nothing stored. One script call; no pool object, so no
    constructor arguments to compare with and nothing logged."""
    key, _ = _poolconfig.pool_keys(name, prefix)
    reply = _scripts.run_sync(client, script("poolconfig"), _poolconfig.script_keys(key),
                              ["get", "", _poolconfig.CONFIG_TTL_MS])
    return _poolconfig.stored_config(_poolconfig.parse_get(reply))


def set_pool_config(client: Any, name: str, *, prefix: str = DEFAULT_PREFIX,
                    expected_version: int | None = None, by: str | None = None,
                    history_max: int = _poolconfig.HISTORY_MAX,
                    **changes: Any) -> PoolConfig:
    """Change pool ``name``'s fleet-wide configuration (``distlb config set``): the
    keywords of ``LoadBalancer.set_config`` (``rate_limit=``, ``client_limit=``,
    ``breaker=``, ``strategy=``, ``unset=``), each field checked against its own range
    before anything is written (``ConfigError``). Cross-field breaker rules and strategy
    parameters are checked by each process against its own settings (see
    ``breaker_notes``). Removing only fields that are not stored writes nothing.
    Compare-and-set with ``expected_version`` (``ConfigConflict``). Returns what is stored."""
    keys_, args = _poolconfig.set_args(name, prefix, changes, expected_version, by,
                                       history_max)
    reply = _scripts.run_sync(client, script("poolconfig"), keys_, args)
    return _poolconfig.set_reply(name, expected_version, reply)[0]


def check_pool_config(**changes: Any) -> None:
    """Check ``set_pool_config``'s keywords without a server (``ConfigError`` naming the
    field, its range and the value): what ``distlb config set`` runs before connecting."""
    _poolconfig.check_changes(changes)


def pool_config_history(client: Any, name: str, *, prefix: str = DEFAULT_PREFIX,
                        limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` changes of pool ``name``'s configuration, newest first: dicts
    with ``version`` (int), ``by``, ``at_us`` (int, server time in microseconds), ``set``
    ({field: value}, limits as ``"200/s burst 200"``), ``unset`` ([field, ...], when
    any) and ``previous`` ({field: value before, None when it was not stored})."""
    n = integer("limit", limit, low=1, high=10_000)
    key, _ = _poolconfig.pool_keys(name, prefix)
    reply = _scripts.run_sync(client, script("poolconfig"), _poolconfig.script_keys(key),
                              ["history", "", _poolconfig.CONFIG_TTL_MS, n])
    return _poolconfig.parse_history(reply)


def breaker_notes(breaker: dict[str, Any]) -> list[str]:
    """Why breaker fields (as stored) cannot apply over the default ``BreakerSettings``:
    one line each; empty when they fit. A process whose settings they do not fit ignores
    them with a warning."""
    checked = {k: _poolconfig.breaker_value(k, v) for k, v in breaker.items()}
    return _poolconfig.breaker_notes(checked)
