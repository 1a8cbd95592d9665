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
