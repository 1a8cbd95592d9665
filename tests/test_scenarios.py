"""The scenario table (tests/scenarios.py) over sync x asyncio, against real servers.

Each row of ``SCENARIOS`` runs once per flavour: ``test_scenario[sync-leaky_bucket]`` with
``distlb`` and a ``redis.Redis``, ``test_scenario[asyncio-leaky_bucket]`` with
``distlb.aio`` and a ``redis.asyncio.Redis``. Rows named ``*_cluster`` run on the 3-master
cluster. To add a scenario, see the module docstring of tests/scenarios.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.scenarios import SCENARIOS, Entry, run

pytestmark = pytest.mark.lua

FLAVORS = ["sync", "asyncio"]


def _marks(entry: Entry) -> list[pytest.MarkDecorator]:
    return [pytest.mark.cluster] if entry.where == "cluster" else []


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name, marks=_marks(e))
                                   for e in SCENARIOS])
@pytest.mark.parametrize("flavor", FLAVORS)
def test_scenario(flavor: str, entry: Entry, server_url: str, prefix: str,
                  request: pytest.FixtureRequest) -> None:
    # server_url is requested for every row: the table runs on real servers only (a
    # --fakeredis run deselects it; fakeredis has its own tests).
    asyncio.run(run(flavor, entry, prefix, request))


def test_the_table_is_what_the_brief_asks() -> None:
    names = {e.name for e in SCENARIOS}
    assert len(names) == len(SCENARIOS)
    assert {"token_bucket_exact", "leaky_bucket", "breaker_lifecycle",
            "load_balancer_execute", "store_unreachable"} <= names
    assert any(e.where == "cluster" for e in SCENARIOS)
