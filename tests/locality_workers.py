"""Worker functions for the locality and cost tests, run in real child processes (spawn).

Only strings, numbers and queues cross the process boundary, as between real hosts.
"""

from __future__ import annotations

import random
import time
from typing import Any

from tests.workers import make_client


def route_from_zone(target: dict[str, Any], prefix: str, zone: str, seed: int,
                    commands: Any, out: Any) -> None:
    """One process in ``zone`` calling a pool through ``execute``, phase by phase.

    Each command is ``(phase, unhealthy ids, calls)``: wait (public API only) until this
    process's view of the registry shows exactly those backends unhealthy, then make
    ``calls`` calls and report how many went to each zone. ``None`` ends the worker.
    """
    from distlb import LoadBalancer, LocalityAwareBalancer

    lb = LoadBalancer(make_client(target), "geo",
                      LocalityAwareBalancer(region="eu", zone=zone, rng=random.Random(seed)),
                      prefix=prefix, refresh_s=0.2)
    try:
        while True:
            command = commands.get(timeout=300)
            if command is None:
                return
            phase, unhealthy, calls = command
            deadline = time.monotonic() + 60
            while {b.id for b in lb.backends() if not b.healthy} != set(unhealthy):
                if time.monotonic() > deadline:
                    out.put((zone, phase, {"error": "registry change never seen"}))
                    return
                time.sleep(0.01)
            counts: dict[str, int] = {}
            for _ in range(calls):
                where = lb.execute(lambda b: b.metadata["zone"])
                counts[where] = counts.get(where, 0) + 1
            out.put((zone, phase, counts))
    finally:
        lb.close()
