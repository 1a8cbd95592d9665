"""The rate-limiting middleware's cost per request, against the same app without it.

    python -m benchmarks.middleware                   # embedded Valkey
    python -m benchmarks.middleware --redis-url URL   # a server of yours
    python -m benchmarks.middleware --quick           # shorter rounds

Three ways (and the floor: the app plus a bare ``try_acquire``), each the median
of several rounds, each round measured back to back with the bare app so the
ratio compares neighbours:

* WSGI: the app called in process with and without ``wsgi.RateLimitMiddleware``
  (sync ``TrafficShaper``, one script call per request): the cost of the decision.
* ASGI: the same with ``asgi.RateLimitMiddleware`` and ``distlb.aio.TrafficShaper``,
  64 concurrent requests (the aio client coalesces their script calls).
* uvicorn: real HTTP requests to one uvicorn worker, with and without the
  middleware, from 8 client threads: what a client of a served app sees.

The limit is set far above the load, so every request is admitted and charged.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

import distlb.aio as aio
from distlb import Limit, TrafficShaper
from distlb.integrations import asgi, wsgi

HUGE = Limit(1e9, 1e9)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def per_s(fn: Callable[[], None], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


def side_by_side(bare: Callable[[float], float], limited: Callable[[float], float],
                 rounds: int, seconds: float) -> tuple[float, float, float]:
    """Medians of (bare/s, limited/s, limited / bare)."""
    b, m, ratio = [], [], []
    for _ in range(rounds):
        x, y = bare(seconds), limited(seconds)
        b.append(x)
        m.append(y)
        ratio.append(y / x)
    return statistics.median(b), statistics.median(m), statistics.median(ratio)


def bench_wsgi(url: str, prefix: str, rounds: int, seconds: float) -> tuple[float, float, float]:
    shaper = TrafficShaper(redis.Redis.from_url(url), "bench", global_limit=HUGE,
                           client_limit=HUGE, prefix=prefix)
    limited = wsgi.RateLimitMiddleware(wsgi_app, shaper)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1",
               "HTTP_HOST": "bench"}

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        pass

    def call(app: Any) -> Callable[[float], float]:
        return lambda s: per_s(lambda: list(app(dict(environ), start)), s)

    return side_by_side(call(wsgi_app), call(limited), rounds, seconds)


def bench_floor(url: str, prefix: str, rounds: int, seconds: float
                ) -> tuple[float, float, float]:
    """The app plus a bare ``try_acquire``: the decision's own cost, no middleware."""
    shaper = TrafficShaper(redis.Redis.from_url(url), "bench", global_limit=HUGE,
                           client_limit=HUGE, prefix=prefix)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"}

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        pass

    def bare(s: float) -> float:
        return per_s(lambda: list(wsgi_app(dict(environ), start)), s)

    def decided(s: float) -> float:
        def one() -> None:
            shaper.try_acquire("10.0.0.1")
            list(wsgi_app(dict(environ), start))
        return per_s(one, s)

    return side_by_side(bare, decided, rounds, seconds)


def bench_asgi(url: str, prefix: str, rounds: int, seconds: float) -> tuple[float, float, float]:
    async def main() -> tuple[float, float, float]:
        r = redis.asyncio.Redis.from_url(url)
        shaper = aio.TrafficShaper(r, "bench", global_limit=HUGE, client_limit=HUGE,
                                   prefix=prefix)
        limited = asgi.RateLimitMiddleware(asgi_app, shaper)
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [],
                 "client": ("10.0.0.1", 1234)}

        async def send(message: Any) -> None:
            pass

        async def one(app: Any) -> None:
            await app(scope, None, send)

        async def rate(app: Any, s: float) -> float:
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < s:
                await asyncio.gather(*[one(app) for _ in range(64)])
                n += 64
            return n / elapsed

        out = []
        for _ in range(rounds):
            x, y = await rate(asgi_app, seconds), await rate(limited, seconds)
            out.append((x, y, y / x))
        await r.aclose()
        return (statistics.median(o[0] for o in out), statistics.median(o[1] for o in out),
                statistics.median(o[2] for o in out))
    return asyncio.run(main())


_SERVED = """
import os, redis.asyncio, distlb.aio as aio
from distlb import Limit
from distlb.integrations import asgi
from benchmarks.middleware import asgi_app, HUGE
limited = asgi.RateLimitMiddleware(asgi_app, aio.TrafficShaper(
    redis.asyncio.Redis.from_url(os.environ["BENCH_URL"]), "bench", global_limit=HUGE,
    client_limit=HUGE, prefix=os.environ["BENCH_PREFIX"]))
"""


def bench_uvicorn(url: str, prefix: str, rounds: int, seconds: float
                  ) -> tuple[float, float, float]:
    root = Path(__file__).resolve().parent.parent
    module = root / "benchmarks" / f"_served_{uuid.uuid4().hex[:6]}.py"
    module.write_text(_SERVED)
    env = {**os.environ, "PYTHONPATH": str(root), "BENCH_URL": url, "BENCH_PREFIX": prefix}
    procs, ports = [], {}
    try:
        for name, target in (("bare", "benchmarks.middleware:asgi_app"),
                             ("limited", f"benchmarks.{module.stem}:limited")):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports[name] = s.getsockname()[1]
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", target, "--port", str(ports[name]),
                 "--log-level", "warning", "--no-access-log"], cwd=root, env=env))
        for port in ports.values():
            deadline = time.monotonic() + 60
            while True:
                try:
                    _get(http.client.HTTPConnection("127.0.0.1", port, timeout=5))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

        def load(port: int) -> Callable[[float], float]:
            def run(s: float) -> float:
                counts = [0] * 8

                def worker(i: int) -> None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    end = time.perf_counter() + s
                    while time.perf_counter() < end:
                        _get(conn)
                        counts[i] += 1
                    conn.close()
                threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return sum(counts) / (time.perf_counter() - start)
            return run

        return side_by_side(load(ports["bare"]), load(ports["limited"]), rounds, seconds)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        module.unlink()


def _get(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", "/")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("DISTLB_REDIS_URL"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, seconds = (3, 0.3) if args.quick else (5, 1.0)
    prefix = f"bench{uuid.uuid4().hex[:6]}"

    def run(url: str) -> None:
        print(f"{'what':<48} {'bare/s':>10} {'limited/s':>10} {'ratio':>7} {'cost/req':>9}")
        for label, fn in (("app + TrafficShaper.try_acquire, no middleware", bench_floor),
                          ("WSGI in process, sync shaper", bench_wsgi),
                          ("ASGI in process, aio shaper, 64 concurrent", bench_asgi),
                          ("uvicorn, 1 worker, 8 keep-alive client threads", bench_uvicorn)):
            bare, limited, ratio = fn(url, prefix, rounds, seconds)
            cost_us = (1 / limited - 1 / bare) * 1e6
            print(f"{label:<48} {bare:>10,.0f} {limited:>10,.0f} {ratio:>7.2f} "
                  f"{cost_us:>7.0f}us", flush=True)

    if args.redis_url:
        run(args.redis_url)
    else:
        from distlb.embedded import EmbeddedServer
        with EmbeddedServer() as server:
            run(server.url)


if __name__ == "__main__":
    main()
