"""The asyncio generator refuses rules that no longer match anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gen_aio.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_aio_under_test", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_fresh_and_every_rule_is_used() -> None:
    assert load().main(["--check"]) == 0


def test_an_unused_rename_fails_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    gen = load()
    gen.RENAMES.append(("NoSuchSyncThing", "NoSuchAsyncThing"))
    assert gen.main(["--check"]) == 1
    assert "NoSuchSyncThing" in capsys.readouterr().out


def test_an_unused_sync_method_fails_the_check() -> None:
    gen = load()
    gen.SYNC_METHODS.add("no_such_method")
    assert gen.main(["--check"]) == 1


def test_the_asyncio_package_exports_every_sync_name() -> None:
    """``distlb/aio/__init__.py`` is generated from ``distlb/__init__.py``: one export list.
    Each name is the sync package's own object, except the shells (their asyncio twins) and
    ``connect`` (an asyncio client)."""
    import distlb
    import distlb.aio
    from distlb._connect import connect_async

    assert distlb.aio.__all__ == distlb.__all__
    shells = ("distlb.shaping", "distlb.breaker", "distlb.retry", "distlb.balancer")
    for name in distlb.__all__:
        sync, aio = getattr(distlb, name), getattr(distlb.aio, name)
        if name == "connect":
            assert aio is connect_async
        elif getattr(sync, "__module__", "") in shells:
            assert aio is not sync and aio.__module__ == sync.__module__.replace(
                "distlb.", "distlb.aio.", 1), name
        else:
            assert aio is sync, name


def test_a_stray_statement_among_the_package_imports_fails_the_generator() -> None:
    gen = load()
    source = (gen.ROOT / gen.PACKAGE[0]).read_text()
    first_import = source.index("from distlb.")
    with pytest.raises(SystemExit, match="only imports"):
        gen.generate_package(source[:first_import] + "from distlb.errors import ConfigError\n"
                             "X = 1\n" + source[first_import:])
