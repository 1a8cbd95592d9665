"""A Sentinel-discovered master is just another client: sync and asyncio."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

import distlb.aio as aio
from distlb import TokenBucket
from distlb.embedded import EmbeddedServer, free_port, server_binary

pytestmark = pytest.mark.lua


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[int, EmbeddedServer]]:
    with EmbeddedServer() as master, tempfile.TemporaryDirectory() as d:
        port = free_port()
        conf = Path(d) / "sentinel.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor main 127.0.0.1 {master.port} 1\n")
        proc = subprocess.Popen([server_binary(), str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            probe = redis.Redis(port=port, socket_connect_timeout=0.2)
            while True:
                try:
                    if probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"):
                        break
                except redis.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "sentinel did not start"
                time.sleep(0.05)
            yield port, master
        finally:
            proc.terminate()
            proc.wait(5)


def test_sync_sentinel_master(sentinel: tuple[int, EmbeddedServer], prefix: str) -> None:
    port, _ = sentinel
    master = redis.sentinel.Sentinel([("127.0.0.1", port)]).master_for("main")
    tb = TokenBucket(master, "api", rate_per_s=0.001, burst=2, prefix=prefix)
    master.script_flush()
    assert [tb.try_acquire().allowed for _ in range(3)] == [True, True, False]


def test_async_sentinel_master(sentinel: tuple[int, EmbeddedServer], prefix: str) -> None:
    port, _ = sentinel

    async def main() -> int:
        s = redis.asyncio.sentinel.Sentinel([("127.0.0.1", port)])
        master = s.master_for("main")
        tb = aio.TokenBucket(master, "api", rate_per_s=0.001, burst=5, prefix=prefix)
        results = await asyncio.gather(*[tb.try_acquire() for _ in range(9)])
        await master.aclose()
        return sum(d.allowed for d in results)

    assert asyncio.run(main()) == 5
