"""benchmarks._server closes what it makes: no event subscription outlives the figures."""

from __future__ import annotations

import time
import uuid

import pytest

from benchmarks import _server
from distlb.embedded import EmbeddedServer


def subscribers(server: EmbeddedServer) -> int:
    c = server.client(decode_responses=True)
    try:
        return sum(1 for info in c.client_list() if int(info.get("sub", 0) or 0) > 0)
    finally:
        c.close()


@pytest.mark.real_server   # INFO commandstats, CLIENT LIST: a private, idle server
def test_server_costs_leaves_no_subscription(own_server: EmbeddedServer) -> None:
    r = own_server.client()
    try:
        floor, costs = _server.server_costs(r, f"srv{uuid.uuid4().hex[:6]}", n=20, rounds=1)
        assert floor > 0 and all(us > 0 for us in costs.values())
        deadline = time.monotonic() + 15
        while subscribers(own_server):
            assert time.monotonic() < deadline, "an event subscription outlived server_costs"
            time.sleep(0.05)
    finally:
        r.flushall()          # its keys (with TTLs) die with the private server anyway
        r.close()
