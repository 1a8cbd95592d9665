"""Breakers shared by real processes: trips contained, probes rationed, dead probes healed."""

from __future__ import annotations

import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from distlb import CircuitBreaker
from tests import workers
from tests.test_multiprocess import ctx, run_workers

pytestmark = pytest.mark.multiprocess


class Backend(socketserver.ThreadingTCPServer):
    """A loopback backend: answers "ok" or "fail" per its mode, logs every arrival."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.fail_after_s: float | None = None   # switch to "fail" this long after the 1st call
        self.delay_s = 0.0
        self.arrivals: list[tuple[float, str]] = []
        self.walls: list[float] = []              # wall-clock time of each arrival
        self.lock = threading.Lock()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Backend = self.server  # type: ignore[assignment]
        self.rfile.readline()
        with server.lock:
            now = time.monotonic()
            if server.fail_after_s is not None and server.arrivals and \
                    now > server.arrivals[0][0] + server.fail_after_s:
                server.mode = "fail"
            server.arrivals.append((now, server.mode))
            server.walls.append(time.time())
        if server.delay_s:
            time.sleep(server.delay_s)
        self.wfile.write(f"{server.mode}\n".encode())


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_after_the_trip_at_most_one_call_per_process_reaches_the_backend(
        target: dict[str, Any], backend: Backend) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    threshold, procs = 5, 4
    cfg = dict(failure_threshold=threshold, open_timeout_s=60)
    backend.fail_after_s = 0.5      # timed from the first call, not from spawning workers
    results = run_workers(workers.call_through_breaker,
                          [(target, prefix, backend.server_address[1], cfg, 1, 1.5)] * procs)
    ok = sum(r["ok"] for r in results)
    refused = sum(r["refused"] for r in results)
    # When the breaker tripped, on the server's clock (the same host's wall clock as the
    # backend's arrivals). Failures before it tripped the breaker: at least `threshold`
    # (more when a success that was in flight at the switch reset the consecutive count);
    # after it, each process may have had one call in flight, no more.
    client = workers.make_client(target)
    opened_s = int(client.hget(f"{prefix}:{{cb:backend}}", "opened_us")) / 1e6
    failed = [w for (_, mode), w in zip(backend.arrivals, backend.walls, strict=True)
              if mode == "fail"]
    before = sum(1 for w in failed if w <= opened_s)
    after = len(failed) - before
    print(f"ok {ok}, refused {refused}, failing calls before the trip {before}, after {after}")
    assert ok > 20 and refused > 20
    assert before >= threshold
    assert after <= procs


def test_half_open_probes_are_rationed_across_processes(target: dict[str, Any],
                                                        backend: Backend) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    cfg = dict(failure_threshold=1, open_timeout_s=0.3, success_threshold=3,
               half_open_max_requests=3, probe_lease_s=5)
    client = workers.make_client(target)
    CircuitBreaker(client, "backend", prefix=prefix, **cfg).record_failure()  # open now
    backend.delay_s = 0.3                      # probes stay in flight together
    results = run_workers(workers.call_until_ok,
                          [(target, prefix, backend.server_address[1], cfg, 3, 4, 30.0)] * 4)
    first = backend.arrivals[0][0]
    during_probe = [t for t, _ in backend.arrivals if t < first + 0.25]
    print(f"requests while probing: {len(during_probe)}; all {len(backend.arrivals)}; {results}")
    assert len(during_probe) <= 3
    assert len(backend.arrivals) > 3           # the probes closed it; traffic resumed


def test_a_killed_probe_holder_does_not_block_recovery(target: dict[str, Any]) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    cfg = dict(failure_threshold=1, open_timeout_s=0.2, success_threshold=1,
               half_open_max_requests=1, probe_lease_s=0.6)
    cb = CircuitBreaker(workers.make_client(target), "backend", prefix=prefix, **cfg)
    cb.record_failure()
    time.sleep(0.25)
    barrier, out = ctx.Barrier(1), ctx.Queue()
    p = ctx.Process(target=workers.take_probe_and_die, args=(target, prefix, cfg, barrier, out))
    p.start()
    assert out.get(timeout=30)["permit"]
    p.join(10)
    assert p.exitcode == -9
    assert not cb.can_attempt().allowed        # the dead process still holds the only slot
    t0 = time.monotonic()
    while not (attempt := cb.can_attempt()).allowed:
        assert time.monotonic() - t0 < 10
        time.sleep(0.02)
    cb.record_success(attempt)
    assert cb.state().state == "closed"
