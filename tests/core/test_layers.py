"""The floor plan, enforced: the core imports nothing that does I/O.

Two checks. Statically, the import graph of every core module (every ``import``,
also inside functions) reaches no client library and no I/O module of distlb.
Dynamically, a fresh interpreter that refuses to import redis imports every core
module (the package ``__init__``, which binds the shells, is bypassed).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "distlb"

#: The pure layer: plans, parses, twins, the retry loop, views, execute's decisions.
CORE = sorted({f"distlb._core.{p.stem}" for p in (PKG / "_core").glob("*.py")} | {
    f"distlb._pool.{p.stem}" for p in (PKG / "_pool").glob("*.py") if p.stem != "__init__"} | {
    "distlb._shared", "distlb._shaping", "distlb._breaker", "distlb._retry",
    "distlb._balancer", "distlb._keys", "distlb._validate", "distlb._observe",
    "distlb.results", "distlb.errors", "distlb.strategies"})
#: Third-party or stdlib modules that mean I/O.
IO_LIBRARIES = {"redis", "valkey", "socket", "ssl", "asyncio", "selectors", "subprocess"}
#: distlb's own I/O layer: the runners, buses, tickers, shells, CLI, servers.
IO_MODULES = {"distlb._runtime", "distlb._scripts", "distlb._events", "distlb._background",
              "distlb._shell", "distlb.shaping", "distlb.breaker", "distlb.retry",
              "distlb.balancer", "distlb.aio", "distlb.embedded", "distlb.cli",
              "distlb.integrations", "distlb.metrics"}


def _file(module: str) -> Path | None:
    if not module.startswith("distlb"):
        return None
    if module == "distlb":
        return PKG / "__init__.py"
    rel = Path(*module.split(".")[1:])
    for candidate in (PKG / rel.with_suffix(".py"), PKG / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    path = _file(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            submodules = {f"{base}.{a.name}" for a in node.names
                          if _file(f"{base}.{a.name}") is not None}
            out.update(submodules)
            if len(submodules) < len(node.names):   # names defined by the module itself
                out.add(base)
    return out


def _graph(roots: list[str]) -> dict[str, str]:
    """Every module reachable from ``roots`` -> the module that imported it first."""
    seen: dict[str, str] = {root: "" for root in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        if not module.startswith("distlb") or _file(module) is None:
            continue
        for imported in _imports(module):
            if imported not in seen:
                seen[imported] = module
                todo.append(imported)
    return seen


def _is_io(module: str) -> bool:
    top = module.split(".")[0]
    return top in IO_LIBRARIES or any(module == m or module.startswith(m + ".")
                                      for m in IO_MODULES)


def test_core_import_graph_reaches_no_io_module() -> None:
    graph = _graph(CORE)
    bad = {}
    for module, importer in graph.items():
        if _is_io(module):
            chain = [module]
            while importer:
                chain.append(importer)
                importer = graph.get(importer, "")
            bad[module] = " <- ".join(chain)
    assert not bad, "core modules import I/O:\n" + "\n".join(bad.values())


def test_the_checker_sees_io_where_there_is_some() -> None:
    # The check itself must be able to fail: the shells and the runner do import redis.
    graph = _graph(["distlb.shaping"])
    assert "redis" in {m.split(".")[0] for m in graph}
    assert "distlb._runtime" in graph


def test_core_modules_import_in_an_interpreter_without_redis() -> None:
    program = f"""
import importlib, sys, types
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(IO_LIBRARIES - {"asyncio", "socket", "ssl",
                                                          "selectors", "subprocess"})!r}:
            raise ImportError("I/O library imported by the core: " + name)
        return None
sys.meta_path.insert(0, Refuse())
pkg = types.ModuleType("distlb")
pkg.__path__ = [{str(PKG)!r}]
sys.modules["distlb"] = pkg
for name in {CORE!r}:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "valkey")
                or m in {sorted(IO_MODULES)!r})
assert not leaked, leaked
print("ok")
"""
    done = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
