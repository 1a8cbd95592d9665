"""Run a script on a client: EVALSHA, and on NOSCRIPT one EVAL (I/O; the registry of
scripts is the pure ``distlb._core.scripts``).

Why EVAL rather than SCRIPT LOAD on NOSCRIPT: EVAL both runs the call and caches
the script on the node that owns the keys, in one round trip, and it is routed
like any keyed command, so it is right on a cluster where SCRIPT LOAD would have
to reach every primary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from distlb._core.ops import Call
from distlb._core.scripts import Arg, Script, script

__all__ = ["Arg", "Script", "direct_pool", "is_noscript", "run_async", "run_packed", "run_sync",
           "script"]

#: The methods of ``redis.Redis`` a script call passes through: a client class that
#: overrides (or an instrumentation that wraps) any of them keeps redis-py's own path.
_REDIS_PATH = ("evalsha", "eval", "execute_command", "_execute_command", "parse_response",
               "_send_command_parse_response")


def is_noscript(exc: BaseException) -> bool:
    # redis-py raises NoScriptError for a plain call; inside a pipeline some
    # versions hand back a ResponseError whose text starts with NOSCRIPT.
    return isinstance(exc, NoScriptError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("NOSCRIPT")
    )


def run_sync(client: Any, s: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run one script call on a sync redis-py client (standalone, cluster, Sentinel master)."""
    try:
        return client.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        return client.eval(s.source, len(keys), *keys, *args)


async def run_async(client: Any, s: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run one script call on a ``redis.asyncio`` client."""
    try:
        return await client.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(s.source, len(keys), *keys, *args)


def direct_pool(client: Any) -> Any | None:
    """The connection pool a sync script call may use directly, or None (redis-py's path).

    Why: ``client.evalsha`` costs more Python than the rest of a decision together
    (redis-py 8 wraps every command in observability hooks, a retry closure, argument
    filtering and a response-callback lookup), and a distlb call repeats the same
    command each time, so it can be packed once. Direct means: borrow a pooled
    connection, write the packed bytes, read one reply, under the client's own
    ``Retry`` (a stale connection is retried like redis-py does). Only a plain
    ``redis.Redis`` (Sentinel masters included) on a redis-py connection qualifies: a
    subclass or an instrumentation that overrides the command path, a single-connection
    client, client-side caching, a custom ``EVALSHA`` response callback or a
    non-redis-py connection (fakeredis) keep ``client.evalsha``.
    """
    if not isinstance(client, redis.Redis) or getattr(client, "connection", None) is not None:
        return None
    cls = type(client)
    for name in _REDIS_PATH:
        method = getattr(cls, name, None)
        if method is not getattr(redis.Redis, name, None) or hasattr(method, "__wrapped__"):
            return None
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(pool, "cache", None) is not None:
        return None
    if not getattr(pool, "connection_class", type).__module__.startswith("redis."):
        return None
    callbacks = getattr(client, "response_callbacks", {})
    if "EVALSHA" in callbacks or "EVAL" in callbacks:
        return None
    return pool


def _exchange(conn: Any, packed: bytes) -> Any:
    # One write of the one command; a tuple, not call.packed itself: two threads packing a
    # new call at once may both append to it.
    conn.send_packed_command((packed,))
    return conn.read_response()


def run_packed(client: Any, pool: Any, call: Call[Any]) -> Any:
    """Run ``call`` on a connection of ``pool`` (see :func:`direct_pool`): the command is
    packed once per call object (``call.packed``), errors are redis-py's own (a
    ConnectionError or TimeoutError after the client's retries; NOSCRIPT: one EVAL
    through the client)."""
    conn = pool.get_connection()
    try:
        packed = call.packed
        if not packed:
            packed.append(b"".join(conn.pack_command(
                "EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)))
        return conn.retry.call_with_retry(lambda: _exchange(conn, packed[0]),
                                          lambda _: conn.disconnect())
    except NoScriptError:
        pass
    finally:
        try:
            reconnect = getattr(conn, "should_reconnect", None)
            if reconnect is not None and reconnect():
                conn.disconnect()
        finally:
            pool.release(conn)
    return client.eval(call.script.source, len(call.keys), *call.keys, *call.args)
