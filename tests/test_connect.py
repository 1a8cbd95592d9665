"""distlb.connect: a client from a URL or DISTLB_REDIS_URL, as the README recommends (issue #14
item 5): short timeouts, no client-side retries, a RedisCluster for a cluster node."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

import distlb
import distlb.aio as aio
from distlb import ConfigError, StoreAuthError, StoreUnavailable, TokenBucket
from distlb.embedded import EmbeddedCluster, EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
#: For calls that must reach the store on a loaded test machine (the 0.1 s default is for
#: production, where a store that slow should be treated as down).
PATIENT = {"socket_timeout": 5.0}


def settings(c: Any) -> dict[str, Any]:
    """The connection settings a (standalone or cluster, sync or asyncio) client will use."""
    if isinstance(c, redis.cluster.RedisCluster):
        return dict(c.get_default_node().redis_connection.connection_pool.connection_kwargs)
    if isinstance(c, redis.asyncio.cluster.RedisCluster):
        return dict(c.connection_kwargs)
    return dict(c.connection_pool.connection_kwargs)


def test_standalone_gets_short_timeouts_and_no_retries(server_url: str, prefix: str) -> None:
    c = distlb.connect(server_url)
    try:
        assert type(c) is redis.Redis
        kw = settings(c)
        assert kw["socket_timeout"] == 0.1 and kw["socket_connect_timeout"] == 0.1
        assert kw["retry"].get_retries() == 0
    finally:
        c.close()
    c = distlb.connect(server_url, decode_responses=True, protocol=3, **PATIENT)
    try:
        kw = settings(c)
        assert kw["socket_timeout"] == 5.0 and kw["decode_responses"] and kw["protocol"] == 3
        tb = TokenBucket(c, "api", rate_per_s=0.001, burst=2, prefix=prefix)
        assert [tb.try_acquire().source for _ in range(3)] == ["store"] * 3
        assert not tb.peek().allowed
    finally:
        c.close()


def test_url_from_the_environment_only_when_none_is_given(
        server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTLB_REDIS_URL", server_url)
    c = distlb.connect(**PATIENT)
    try:
        assert c.ping() and settings(c)["port"] == int(server_url.rsplit(":", 1)[1].split("/")[0])
    finally:
        c.close()
    # An explicit URL wins over the environment, which is then not even read.
    monkeypatch.setenv("DISTLB_REDIS_URL", "http://not-a-redis-url")
    c = distlb.connect(server_url, **PATIENT)
    c.close()
    with pytest.raises(ConfigError, match=r"^DISTLB_REDIS_URL: invalid URL .*redis://"):
        distlb.connect()
    monkeypatch.delenv("DISTLB_REDIS_URL")
    with pytest.raises(ConfigError, match=r"^url: no URL given and DISTLB_REDIS_URL is not set"):
        distlb.connect()


@pytest.mark.parametrize("url, message", [
    ("http://localhost:6379", r"must start with redis://, rediss://, unix://"),
    ("localhost:6379", r"must start with"),
    ("redis://localhost:port/0", r"invalid URL"),
    (6379, r"must be a URL string like redis://host:6379/0, got int"),
    (b"redis://localhost", r"got bytes"),
])
def test_bad_urls_raise_config_error_naming_the_field(url: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        distlb.connect(url)
    assert info.value.field == "url"


def test_bad_arguments_raise_config_error(server_url: str) -> None:
    with pytest.raises(ConfigError, match=r"^socket_timeout: must be a finite number"):
        distlb.connect(server_url, socket_timeout=-1)
    with pytest.raises(ConfigError, match=r"^asyncio: must be True or False"):
        distlb.connect(server_url, asyncio="yes")
    with pytest.raises(ConfigError, match=r"^cluster: must be True, False or None"):
        distlb.connect(server_url, cluster=1)
    with pytest.raises(ConfigError, match=r"^url: .*DB index is out of range"):
        distlb.connect(server_url.rsplit("/", 1)[0] + "/100000")


def test_a_password_never_shows_in_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        distlb.connect("http://user:hunter2@localhost:6379")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_a_client_passed_as_the_url_points_at_connect(r: redis.Redis) -> None:
    with pytest.raises(ConfigError, match=r"pass it a URL"):
        distlb.connect(r)  # type: ignore[arg-type]


def test_a_non_client_where_a_client_belongs_points_at_connect(server_url: str,
                                                               r: redis.Redis) -> None:
    with pytest.raises(ConfigError, match=r"^client: .*got str \(build one from a URL with "
                                          r"distlb\.connect\(url\), or distlb\.connect\(\) for "
                                          r"\$DISTLB_REDIS_URL\)"):
        TokenBucket(server_url, "api", rate_per_s=1, burst=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"got dict .*distlb\.connect\(url\)"):
        TokenBucket({"host": "localhost"}, "api", rate_per_s=1, burst=1)
    with pytest.raises(ConfigError, match=r"got str .*distlb\.aio\.connect\(url\)"):
        aio.TokenBucket(server_url, "api", rate_per_s=1, burst=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"got a sync Redis .*distlb\.aio\.connect\(url\)"):
        aio.TokenBucket(r, "api", rate_per_s=1, burst=1)


async def test_asyncio_client(server_url: str, prefix: str) -> None:
    c = aio.connect(server_url, **PATIENT)        # distlb.aio.connect: asyncio by default
    c2 = distlb.connect(server_url, asyncio=True)
    try:
        assert type(c) is redis.asyncio.Redis and type(c2) is redis.asyncio.Redis
        assert settings(c2)["socket_timeout"] == 0.1 and settings(c2)["retry"].get_retries() == 0
        tb = aio.TokenBucket(c, "api", rate_per_s=0.001, burst=2, prefix=prefix)
        assert [(await tb.try_acquire()).allowed for _ in range(3)] == [True, True, False]
    finally:
        await c.aclose()
        await c2.aclose()
    sync = aio.connect(server_url, asyncio=False)
    assert type(sync) is redis.Redis
    sync.close()


@pytest.mark.cluster
def test_cluster_detected(cluster: EmbeddedCluster, prefix: str) -> None:
    c = distlb.connect(cluster.url, **PATIENT)
    try:
        assert isinstance(c, redis.cluster.RedisCluster)
        assert settings(c)["retry"].get_retries() == 0
        tb = TokenBucket(c, "api", rate_per_s=0.001, burst=2, prefix=prefix)
        assert [tb.try_acquire().allowed for _ in range(3)] == [True, True, False]
    finally:
        c.close()
    with pytest.raises(ConfigError, match=r"^url: .*a cluster has database 0 only"):
        distlb.connect(cluster.url.rsplit("/", 1)[0] + "/1")
    with pytest.raises(ConfigError, match=r"^url: .* is a cluster: .*db"):
        distlb.connect(cluster.url.rsplit("/", 1)[0] + "/1", cluster=True)


@pytest.mark.cluster
async def test_cluster_detected_asyncio(cluster: EmbeddedCluster, prefix: str) -> None:
    c = aio.connect(cluster.url, **PATIENT)
    try:
        assert isinstance(c, redis.asyncio.cluster.RedisCluster)
        assert settings(c)["socket_connect_timeout"] == 0.1
        tb = aio.TokenBucket(c, "api", rate_per_s=0.001, burst=2, prefix=prefix)
        assert [(await tb.try_acquire()).allowed for _ in range(3)] == [True, True, False]
    finally:
        await c.aclose()


def test_cluster_false_skips_the_question(cluster: EmbeddedCluster, server_url: str) -> None:
    c = distlb.connect(cluster.url, cluster=False)
    assert type(c) is redis.Redis        # as told: no round trip to find out
    c.close()
    c = distlb.connect(server_url, cluster=False, **PATIENT)
    assert type(c) is redis.Redis and c.ping()
    c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a frozen store."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    t.join(5)
    for s in held:
        s.close()
    listener.close()


def test_unreachable_store(silent_server: str) -> None:
    with pytest.raises(StoreUnavailable, match=r"pass cluster=False"):
        distlb.connect(f"redis://127.0.0.1:{free_port()}/0")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cluster node"):
        distlb.connect(silent_server)            # asks, and gives up after the timeout
    assert time.monotonic() - t0 < 5             # redis-py's default would wait forever
    # Told it is no cluster, it builds the client at once; the failure policy takes over.
    c = distlb.connect(silent_server, cluster=False)
    try:
        tb = TokenBucket(c, "api", rate_per_s=1, burst=1, on_store_error="fail_closed")
        t0 = time.monotonic()
        d = tb.try_acquire()
        assert d.source == "fail_closed" and not d.allowed
        assert time.monotonic() - t0 < 5         # bounded by the 0.1 s timeout, not hung
    finally:
        c.close()


@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(extra_args=["--requirepass", "adminpw"]) as s:
        yield s


def test_refused_credentials_raise_store_auth_error(locked_server: EmbeddedServer) -> None:
    url = locked_server.url.replace("redis://", "redis://:wrong@")
    with pytest.raises(StoreAuthError, match="refused") as info:
        distlb.connect(url)
    assert "wrong" not in str(info.value).split("refused")[0]   # the URL is shown redacted


def test_the_readme_minimal_acl_user_can_connect(locked_server: EmbeddedServer,
                                                  prefix: str) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"ACL SETUSER app on >secret (.+)", text)
    assert m
    rules = m.group(1).strip().strip("`").replace("distlb:", f"{prefix}:").split()
    admin = locked_server.client(password="adminpw")
    admin.execute_command("ACL", "SETUSER", f"app{prefix}", "on", ">secret", *rules)
    try:
        url = locked_server.url.replace("redis://", f"redis://app{prefix}:secret@")
        c = distlb.connect(url, **PATIENT)     # HELLO, not INFO (which the ACL denies)
        try:
            assert type(c) is redis.Redis
            tb = TokenBucket(c, "api", rate_per_s=0.001, burst=1, prefix=prefix)
            assert tb.try_acquire().source == "store"
        finally:
            c.close()
    finally:
        admin.execute_command("ACL", "DELUSER", f"app{prefix}")
        admin.close()
