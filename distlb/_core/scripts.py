"""The script registry: each ``lua/<name>.lua`` with ``_common.lua`` prepended, and its SHA1.

Pure: reading a file and hashing it. Running a script (EVALSHA, NOSCRIPT -> EVAL) is
the runner's job (``distlb._scripts``). Scripts live in the top-level ``lua/`` folder
of the repository and ship inside the wheel as ``distlb/lua``; ``_common.lua`` is
prepended to each, so shared helpers (server clock, bucket arithmetic) exist once in
Lua too.
"""

from __future__ import annotations

import hashlib
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


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with the common helpers prepended."""
    folder = _lua_dir()
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    source = f"{common}\n{body}"
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())
