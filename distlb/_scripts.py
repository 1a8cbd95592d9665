"""Load the Lua scripts and run them: EVALSHA, and on NOSCRIPT one EVAL.

Scripts live in the top-level ``lua/`` folder of the repository and ship inside
the wheel as ``distlb/lua``. ``_common.lua`` is prepended to each script, so
shared helpers (server clock, token-bucket arithmetic) exist once in Lua too.

Why EVAL rather than SCRIPT LOAD on NOSCRIPT: EVAL both runs the call and caches
the script on the node that owns the keys, in one round trip, and it is routed
like any keyed command, so it is right on a cluster where SCRIPT LOAD would have
to reach every primary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class Script:
    """A loaded Lua script: its name (file stem), full source and SHA1."""

    name: str
    source: str
    sha: str


def _lua_dir() -> Path:
    packaged = resources.files("distlb") / "lua"
    if packaged.is_dir():
        return Path(str(packaged))
    # Source checkout or editable install: lua/ sits beside the package.
    return Path(__file__).resolve().parent.parent / "lua"


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with the common helpers prepended."""
    folder = _lua_dir()
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    source = f"{common}\n{body}"
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


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
