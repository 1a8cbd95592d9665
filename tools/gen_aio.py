"""Generate the asyncio shells in ``distlb/aio/`` from the sync shells in ``distlb/``.

The shells are one-line methods that drive sans-I/O operations; the asyncio
twin differs only by ``async``/``await`` and the runner. Writing it by hand
would be a copy to keep in sync, so it is generated (as httpcore's unasync
does) and a test fails when a generated file is stale.

    python tools/gen_aio.py          # rewrite distlb/aio/*.py
    python tools/gen_aio.py --check  # exit 1 if any generated file is stale

The package's exports (``distlb/aio/__init__.py``) are generated too, from
``distlb/__init__.py``: the same names, the shells taken from ``distlb.aio.*``,
everything else (results, errors, options, strategies) the very same objects.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: sync module -> generated asyncio module
MODULES = {"distlb/shaping.py": "distlb/aio/shaping.py",
           "distlb/breaker.py": "distlb/aio/breaker.py",
           "distlb/retry.py": "distlb/aio/retry.py",
           "distlb/balancer.py": "distlb/aio/balancer.py"}
#: sync package -> generated asyncio package (its export list)
PACKAGE = ("distlb/__init__.py", "distlb/aio/__init__.py")
PACKAGE_DOC = '''"""distlb for asyncio: the same names as ``distlb``, with awaitable methods.

Pass a ``redis.asyncio`` client (``Redis``, ``RedisCluster`` or a Sentinel
master). Results, errors, options, ``Limit`` and the strategies are the sync
package's own objects; ``connect`` builds a ``redis.asyncio`` client.

GENERATED from distlb/__init__.py by tools/gen_aio.py: do not edit.
"""'''
#: the sync package's imports -> the asyncio package's (module renames, whole words)
PACKAGE_IMPORTS = [
    (r"^from distlb\._connect import connect$",
     "from distlb._connect import connect_async as connect"),
    (r"^from distlb\.(shaping|breaker|retry|balancer) import", r"from distlb.aio.\1 import"),
]
#: methods that stay sync in the asyncio shell (they do no I/O)
SYNC_METHODS = {"__call__", "guard", "__init__", "connection",
                "start_health_checks", "_renewer", "close", "_new_breaker",
                "__post_init__", "_run", "breaker_for"}
#: plain renames, applied in order
RENAMES = [
    ("SyncShared", "AsyncShared"),
    ("SyncRunner(guard, self.sleep)", "AsyncRunner(guard, sleep=self.sleep)"),
    ("SyncRunner", "AsyncRunner"),
    ("SyncDrive", "AsyncDrive"),
    ("SyncTicker", "AsyncTicker"),
    ("from distlb.breaker import", "from distlb.aio.breaker import"),
    ("def __enter__(self", "def __aenter__(self"),
    ("def __exit__(self", "def __aexit__(self"),
    ("``with breaker.guard():``", "``async with breaker.guard():``"),
    ("        def wrapper(", "        async def wrapper("),
]


def generate(source: str, origin: str, used: set[str] | None = None) -> str:
    """The asyncio twin of ``source``; ``used`` collects the rules that applied."""
    used = set() if used is None else used
    out = source
    out = re.sub(r'^"""(.*?)"""', lambda m: '"""Asyncio twin of ``' + origin.replace("/", ".")[:-3]
                 + "``: the same classes and methods, awaited.\n\nUse a ``redis.asyncio`` client."
                 " Concurrent calls from many tasks are coalesced\ninto pipelines: one round trip"
                 " carries many decisions, each still its own\natomic script.\n\n"
                 f"GENERATED from {origin} by tools/gen_aio.py: do not edit.\n" + '"""',
                 out, count=1, flags=re.S)
    for old, new in RENAMES:
        if old in out:
            used.add(old)
        out = out.replace(old, new)

    def asyncify(m: re.Match[str]) -> str:
        if m.group(1) in SYNC_METHODS:
            used.add(m.group(1))
            return m.group(0)
        return f"    async def {m.group(1)}(self"

    out = re.sub(r"^    def (\w+)\(self", asyncify, out, flags=re.M)
    out = re.sub(r"\bself\.((?:breaker|balancer)\.)?_run\(", r"await self.\1_run(", out)
    out = re.sub(r"\bself\.client\.(\w+)\(", r"await self.client.\1(", out)
    return out


#: one top-level ``from X import ...`` (one line, or parenthesised over several)
IMPORT = re.compile(r"^from (\S+) import (?:\([^)]*\)|.*)$", re.M)


def generate_package(source: str, used: set[str] | None = None) -> str:
    """The asyncio package's ``__init__`` from the sync one: its docstring, the imports
    renamed (then sorted again by module, as isort wants them), the rest as it is."""
    used = set() if used is None else used
    body = re.sub(r'^""".*?"""\n', "", source, count=1, flags=re.S)
    matches = list(IMPORT.finditer(body))
    if not matches:
        raise SystemExit(f"{PACKAGE[0]}: no imports found")
    renamed = []
    for statement in (m.group(0) for m in matches):
        for pattern, replacement in PACKAGE_IMPORTS:
            new = re.sub(pattern, replacement, statement, flags=re.M)
            if new != statement:
                used.add(pattern)
            statement = new
        renamed.append(statement)
    first, last = matches[0], matches[-1]
    between = IMPORT.sub("", body[first.start():last.end()]).strip()
    if between:   # something other than imports among them: it would be lost
        raise SystemExit(f"{PACKAGE[0]}: only imports may stand between the first and last "
                         f"import, found {between!r}")
    ordered = sorted(renamed, key=lambda st: st.split()[1])
    return (PACKAGE_DOC + "\n" + body[:first.start()] + "\n".join(ordered)
            + body[last.end():])


def main(argv: list[str]) -> int:
    stale = []
    used: set[str] = set()
    jobs = [(dst, generate((ROOT / src).read_text(), src, used)) for src, dst in MODULES.items()]
    jobs.append((PACKAGE[1], generate_package((ROOT / PACKAGE[0]).read_text(), used)))
    for dst, text in jobs:
        target = ROOT / dst
        if target.exists() and target.read_text() == text:
            continue
        stale.append(dst)
        if "--check" not in argv:
            target.write_text(text)
    unused = ([old for old, _ in RENAMES + PACKAGE_IMPORTS if old not in used]
              + sorted(SYNC_METHODS - used))
    if unused:
        # A rule that matches nothing is a rule someone forgot to update: say so.
        print("unused rules in tools/gen_aio.py (remove or fix them):", *unused)
        return 1
    if stale and "--check" in argv:
        print("stale generated files (run python tools/gen_aio.py):", *stale)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
