"""The script registry: each ``lua/<name>.lua`` with ``_common.lua`` prepended, and its SHA1.

Pure: reading a file and hashing it. Running a script (EVALSHA, NOSCRIPT -> EVAL) is
the runner's job (``distlb._scripts``). Scripts live in the top-level ``lua/`` folder
of the repository and ship inside the wheel as ``distlb/lua``. The helpers of
``_common.lua`` that a script uses are prepended to it, so shared helpers (server
clock, bucket arithmetic) exist once in Lua too. Only the used ones: every ``local
function`` runs (allocates a closure) on every call, and in the server's Lua heap each
allocation costs garbage collection.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

#: One argument of a script call, as redis-py packs it.
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
    return Path(__file__).resolve().parent.parent.parent / "lua"


_DEFINES = re.compile(r"^local (?:function )?([A-Za-z_]\w*)", re.M)
#: A Lua line comment (no script puts "--" inside a string literal).
_COMMENT = re.compile(r"--.*$", re.M)


def helpers_for(common: str, body: str) -> str:
    """The blocks of ``common`` (separated by blank lines) that ``body`` uses, directly
    or through another such block, in their order. A block is used when a name it
    defines at the start of a line (``local NAME`` or ``local function NAME``) occurs
    as a word in the code (comments aside: a helper named in a comment costs every call
    a closure) of the body or of a used block."""
    blocks = [b for b in common.split("\n\n") if _DEFINES.search(b)]
    used = [False] * len(blocks)
    text = [_COMMENT.sub("", body)]
    changed = True
    while changed:
        changed = False
        for i, block in enumerate(blocks):
            if not used[i] and any(re.search(rf"\b{n}\b", t)
                                   for n in _DEFINES.findall(block) for t in text):
                used[i] = changed = True
                text.append(_COMMENT.sub("", block))
    return "\n\n".join(b.strip("\n") for b, u in zip(blocks, used, strict=True) if u)


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with the common helpers it uses prepended."""
    folder = _lua_dir()
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    source = f"{helpers_for(common, body)}\n\n{body}"
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())
