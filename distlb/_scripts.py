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

from redis.exceptions import NoScriptError, ResponseError

from distlb._core.scripts import Arg, Script, script

__all__ = ["Arg", "Script", "is_noscript", "run_async", "run_sync", "script"]


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
