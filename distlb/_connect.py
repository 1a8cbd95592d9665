"""``distlb.connect``: a redis-py client built from a URL the way distlb wants it.

Every distlb object takes a client you build; this is the one documented way to build
it from configuration: a URL (or ``$DISTLB_REDIS_URL``), the recommended timeouts,
no client-side retries, and a ``RedisCluster`` when the server is a cluster node.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from distlb._runtime import refused, store_error, unavailable
from distlb._validate import number
from distlb.errors import ConfigError, StoreUnavailable


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` query) shown as ``***``.

    Every URL the command line prints goes through this: a terminal, a log or a CI
    transcript must never show the server's password.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
        query = urllib.parse.urlencode(
            [(k, "***" if k.lower() == "password" else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)],
            safe="*")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:           # not even a URL: show nothing that could be a secret
        return "<unparsable URL>"


#: The only environment variable distlb reads, and only in ``connect(url=None)``.
ENV_VAR = "DISTLB_REDIS_URL"
SCHEMES = ("redis", "rediss", "unix")
#: Seconds. A limiter's call takes well under a millisecond on a healthy store; a store
#: that has not answered in 100 ms is treated as down, so the failure policy decides at
#: once instead of every request waiting on it (see the README, "When the store is
#: unreachable").
SOCKET_TIMEOUT_S = 0.1
CONNECT_TIMEOUT_S = 0.1


def connect(url: str | None = None, *, asyncio: bool = False, cluster: bool | None = None,
            **overrides: Any) -> Any:
    """A redis-py client for ``url`` with the settings distlb recommends.

    ``url`` is ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
    ``unix:///path.sock``, as redis-py's ``from_url`` reads it. When ``url`` is None the URL
    comes from the ``DISTLB_REDIS_URL`` environment variable: this helper is the only place
    distlb reads the environment, and only then (a ConfigError if it is unset).

    The client gets ``socket_timeout`` and ``socket_connect_timeout`` of 0.1 s and no
    client-side retries (``Retry(NoBackoff(), 0)``): redis-py's default retries would
    stretch an outage into seconds per call before distlb's failure policy can act.
    ``overrides`` are passed to ``from_url`` and win (e.g. ``decode_responses=True``,
    ``protocol=3``, ``socket_timeout=0.5``, ``password=...``).

    ``asyncio=True`` returns the ``redis.asyncio`` twin (``distlb.aio.connect`` defaults to
    it). ``cluster=None`` asks the server once, here (``HELLO``, or ``INFO`` before Redis 6),
    whether it is a cluster node and returns a ``RedisCluster`` if so; pass ``cluster=True``
    or ``False`` to skip the question, e.g. to start while the store is down (a sync
    ``RedisCluster`` still reads the slot map at construction, so it needs a node up).
    Sentinel has no URL form: pass the same settings to ``Sentinel(...).master_for(...)``.

    Raises ConfigError for a bad URL or argument (naming it), StoreAuthError when the store
    refuses the credentials, StoreUnavailable when ``cluster=None`` and the store cannot be
    reached. The client is yours to close.
    """
    field = "url"
    if url is None:
        import os

        field, url = ENV_VAR, os.environ.get(ENV_VAR, "")
        if not url:
            raise ConfigError("url", f"no URL given and {ENV_VAR} is not set: pass "
                                     "url='redis://host:6379/0' or set the variable")
    _check_url(field, url)
    if not isinstance(asyncio, bool):
        raise ConfigError("asyncio", f"must be True or False, got {type(asyncio).__name__}")
    if cluster is not None and not isinstance(cluster, bool):
        raise ConfigError("cluster", "must be True, False or None (ask the server), got "
                                     f"{type(cluster).__name__}")
    for name in ("socket_timeout", "socket_connect_timeout"):
        if overrides.get(name) is not None:
            number(name, overrides[name], high=3600)
    settings: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S,
                                "socket_connect_timeout": CONNECT_TIMEOUT_S,
                                "retry": _no_retry(asyncio), **overrides}
    if cluster is None:
        cluster = _is_cluster(field, url, settings)
    if asyncio:
        cls: Any = redis.asyncio.cluster.RedisCluster if cluster else redis.asyncio.Redis
    else:
        cls = redis.cluster.RedisCluster if cluster else redis.Redis
    try:
        return cls.from_url(url, **settings)
    except (TypeError, ValueError) as exc:     # an unknown override, an unparsable option
        raise ConfigError(field, f"cannot build a client for {redact_url(url)}: {exc}") from exc
    except RedisClusterException as exc:
        if "db" in str(exc):                   # a cluster has database 0 only
            raise ConfigError(field, f"{redact_url(url)} is a cluster: {exc}") from exc
        # A sync RedisCluster reads the slot map at construction: it needs a node up.
        raise StoreUnavailable(f"cannot reach the cluster at {redact_url(url)}: {exc}") from exc


def _no_retry(is_async: bool) -> Any:
    if is_async:
        return redis.asyncio.retry.Retry(NoBackoff(), 0)
    return redis.retry.Retry(NoBackoff(), 0)


def _check_url(field: str, url: object) -> None:
    if not isinstance(url, str):
        hint = " (connect() builds the client; pass it a URL)" if hasattr(url, "evalsha") else ""
        raise ConfigError(field, f"must be a URL string like redis://host:6379/0, got "
                                 f"{type(url).__name__}{hint}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (parsing the port raises ValueError when it is not a number)
    except ValueError as exc:
        raise ConfigError(field, f"invalid URL {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(field, f"invalid URL {redact_url(url)!r}: it must start with "
                                 + ", ".join(f"{s}://" for s in SCHEMES)
                                 + " (e.g. redis://localhost:6379/0)")


def _is_cluster(field: str, url: str, settings: dict[str, Any]) -> bool:
    """Whether the server at ``url`` is a cluster node: one short-lived sync connection.

    ``HELLO 2`` reports ``mode`` and is allowed to every authenticated user (the README's
    minimal ACL grants no ``INFO``); Redis 5 has no HELLO, so ``INFO cluster`` then.
    """
    probe_settings = {**settings, "retry": _no_retry(False), "protocol": 2,
                      "decode_responses": True, "single_connection_client": True}
    probe = None
    try:
        probe = redis.Redis.from_url(url, **probe_settings)   # connects here
        try:
            hello = probe.execute_command("HELLO", "2")
            reply = dict(zip(hello[::2], hello[1::2], strict=False))
            return bool(reply.get("mode") == "cluster")
        except redis.ResponseError as exc:
            if refused(exc) or "unknown command" not in str(exc).lower():
                raise
            return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.RedisError as exc:
        where = redact_url(url)
        if isinstance(exc, redis.ResponseError) and "DB index is out of range" in str(exc):
            raise ConfigError(field, f"{where}: {exc} (the server has fewer databases; a "
                                     "cluster has database 0 only)") from exc
        if refused(exc):
            raise store_error(f"connect to {where}", exc) from exc
        if unavailable(exc):
            raise StoreUnavailable(
                f"cannot reach {where} to ask whether it is a cluster node ({exc}); pass "
                "cluster=False (or True) to build the client without asking") from exc
        raise store_error(f"connect to {where}", exc) from exc
    finally:
        if probe is not None:
            probe.close()


def connect_async(url: str | None = None, *, asyncio: bool = True, cluster: bool | None = None,
                  **overrides: Any) -> Any:
    """``distlb.aio.connect``: :func:`connect` returning a ``redis.asyncio`` client by default
    (it is not a coroutine: the cluster question, when asked, is one short sync round trip)."""
    return connect(url, asyncio=asyncio, cluster=cluster, **overrides)
