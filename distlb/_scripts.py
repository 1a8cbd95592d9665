"""Load the Lua scripts and run them: EVALSHA, and on NOSCRIPT one EVAL.

Scripts live in the top-level ``lua/`` folder of the repository and ship inside
the wheel as ``distlb/lua``. The helpers of ``_common.lua`` that a script uses are
prepended to it, so shared helpers (server clock, token-bucket arithmetic) exist once
in Lua too. Only the used ones: every ``local function`` runs (allocates a closure)
on every call, and in the server's Lua heap each allocation costs garbage collection.

Why EVAL rather than SCRIPT LOAD on NOSCRIPT: EVAL both runs the call and caches
the script on the node that owns the keys, in one round trip, and it is routed
like any keyed command, so it is right on a cluster where SCRIPT LOAD would have
to reach every primary.
"""

from __future__ import annotations

import hashlib
import re
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


_DEFINES = re.compile(r"^local (?:function )?([A-Za-z_]\w*)", re.M)


def helpers_for(common: str, body: str) -> str:
    """The blocks of ``common`` (separated by blank lines) that ``body`` uses, directly
    or through another such block, in their order. A block is used when a name it
    defines at the start of a line (``local NAME`` or ``local function NAME``) occurs
    as a word in the body or in a used block."""
    blocks = [b for b in common.split("\n\n") if _DEFINES.search(b)]
    used = [False] * len(blocks)
    text = [body]
    changed = True
    while changed:
        changed = False
        for i, block in enumerate(blocks):
            if not used[i] and any(re.search(rf"\b{n}\b", t)
                                   for n in _DEFINES.findall(block) for t in text):
                used[i] = changed = True
                text.append(block)
    return "\n\n".join(b.strip("\n") for b, u in zip(blocks, used, strict=True) if u)


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with the common helpers it uses prepended."""
    folder = _lua_dir()
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    source = f"{helpers_for(common, body)}\n\n{body}"
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
