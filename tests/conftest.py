"""Fixtures: a real server for every test, a 3-master cluster, and the client matrix.

* ``server_url``: ``$DISTLB_REDIS_URL`` when set, else an embedded Valkey (or the
  binary in ``$DISTLB_SERVER_BINARY``, e.g. Debian's redis-server 7.0 in CI).
* ``cluster``: a 3-master Redis Cluster formed from the same binary.
* ``client``: a sync client in each of the four reply modes users may hand us:
  RESP2/RESP3 x decode_responses off/on.
* ``prefix``: a fresh key prefix per test, so tests never see each other's keys
  and never need FLUSHALL on a shared server.

``pytest --fakeredis`` runs the single-process tests of every primitive again on
fakeredis (issue #14): ``client``, ``r`` and ``ar`` become ``fakeredis`` clients on one
in-process ``FakeServer``, and only the tests that use one of them and no real server
(``server_url``, ``own_server``, ``cluster``, ``rc``, ``target``; the ``multiprocess``,
``cluster``, ``faults`` and ``real_server`` markers) are collected; the rest are
deselected, not skipped. CI runs both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from distlb.embedded import EmbeddedCluster, EmbeddedServer

#: Fixtures that mean a real server (or several processes on one): never faked.
REAL_ONLY_FIXTURES = {"server_url", "own_server", "cluster", "rc", "target"}
REAL_ONLY_MARKERS = {"multiprocess", "cluster", "faults", "real_server"}
STORE_FIXTURES = {"client", "r", "ar"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fakeredis", action="store_true",
                     help="run the single-process store tests on fakeredis instead of a server")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_server: cannot hold on fakeredis (says why); "
                                       "left out of `pytest --fakeredis`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fakeredis"):
        return
    keep, drop = [], []
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        marks = {m.name for m in item.iter_markers()}
        fakeable = (names & STORE_FIXTURES and not names & REAL_ONLY_FIXTURES
                    and not marks & REAL_ONLY_MARKERS)
        (keep if fakeable else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def fake_server(pytestconfig: pytest.Config) -> Any:
    """The one in-process fakeredis server of a ``--fakeredis`` run, else None."""
    if not pytestconfig.getoption("--fakeredis"):
        return None
    import fakeredis

    return fakeredis.FakeServer()


CLIENT_MODES = [(2, False), (2, True), (3, False), (3, True)]
MODE_IDS = [f"resp{p}-{'str' if d else 'bytes'}" for p, d in CLIENT_MODES]


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("DISTLB_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedServer() as server:
        yield server.url


# -- every distlb key has a TTL ------------------------------------------------------------------
# After each test module, scan the shared server's keyspace: a distlb key without a TTL
# fails the module (its last test shows the error). The one documented exception is a
# forced breaker (a breaker hash whose ``forced`` field is set): it holds until reset().
# Offending keys are deleted once reported, so the next module is judged on its own keys.

def _keys_without_ttl(c: redis.Redis) -> list[str]:
    from distlb import _keys

    out = []
    for key in c.scan_iter(count=1000):
        ref = _keys.parse(key)
        if ref is None or c.pttl(key) != -1:
            continue
        if ref.kind == "cb" and c.type(key) == b"hash" and c.hget(key, "forced"):
            continue
        out.append(key.decode("utf-8", "replace"))
    return out


@pytest.fixture(scope="module", autouse=True)
def every_key_has_a_ttl(request: pytest.FixtureRequest, fake_server: Any) -> Iterator[None]:
    # Looked up, not requested: a --fakeredis run must not start a real server for it.
    url = None if fake_server is not None else request.getfixturevalue("server_url")
    yield
    if url is None:
        import fakeredis

        c = fakeredis.FakeRedis(server=fake_server)
    else:
        c = redis.Redis.from_url(url)
    try:
        offenders = _keys_without_ttl(c)
        if offenders:
            c.delete(*offenders)
            pytest.fail(f"{len(offenders)} distlb key(s) without a TTL: {sorted(offenders)[:20]}")
    finally:
        c.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(masters=3) as c:
        yield c


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _store_client(request: pytest.FixtureRequest, fake_server: Any, *,
                  is_async: bool = False, **kwargs: Any) -> Any:
    """A client on the real server, or on the fake one in a ``--fakeredis`` run."""
    if fake_server is not None:
        import fakeredis
        import fakeredis.aioredis

        cls = fakeredis.aioredis.FakeRedis if is_async else fakeredis.FakeRedis
        return cls(server=fake_server, **kwargs)
    url = request.getfixturevalue("server_url")
    return (redis.asyncio.Redis if is_async else redis.Redis).from_url(url, **kwargs)


@pytest.fixture(params=CLIENT_MODES, ids=MODE_IDS)
def client(request: pytest.FixtureRequest, fake_server: Any) -> Iterator[redis.Redis]:
    protocol, decode = request.param
    c = _store_client(request, fake_server, protocol=protocol, decode_responses=decode)
    yield c
    c.close()


@pytest.fixture
def r(request: pytest.FixtureRequest, fake_server: Any) -> Iterator[redis.Redis]:
    """A plain RESP2 bytes client, for tests that do not vary the reply mode."""
    c = _store_client(request, fake_server)
    yield c
    c.close()


@pytest.fixture
async def ar(request: pytest.FixtureRequest,
             fake_server: Any) -> AsyncIterator[redis.asyncio.Redis]:
    c = _store_client(request, fake_server, is_async=True)
    yield c
    await c.aclose()


@pytest.fixture
def rc(cluster: EmbeddedCluster) -> Iterator[redis.cluster.RedisCluster]:
    c = cluster.client()
    yield c
    c.close()


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A private server a test may stop and restart."""
    with EmbeddedServer() as s:
        yield s


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest, server_url: str) -> dict[str, Any]:
    """Where multi-process tests point their workers: plain strings that cross processes."""
    if request.param == "standalone":
        return {"url": server_url}
    cluster: EmbeddedCluster = request.getfixturevalue("cluster")
    return {"cluster": cluster.startup_nodes}
