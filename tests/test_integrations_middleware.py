"""The rate-limiting middleware: in process through httpx's ASGI/WSGI transports, and
under real multi-worker servers (uvicorn --workers 4, gunicorn -w 4) as subprocesses."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import distlb.aio as aio
from distlb import ConfigError, Limit, TrafficShaper
from distlb.integrations import asgi, wsgi

ROOT = Path(__file__).resolve().parent.parent


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello", headers={"x-app": "1"})


STARLETTE = Starlette(routes=[Route("/", hello), Route("/login", hello),
                              Route("/login/sso", hello), Route("/loginx", hello),
                              Route("/health", hello)])


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
    return [b"hello"]


def parse_item(value: str) -> dict[str, Any]:
    name, *params = value.split(";")
    return {"name": name.strip('"'), **{k: int(v) for k, v in (p.split("=") for p in params)}}


def dead_redis_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


async def test_asgi_limits_per_client_with_the_ietf_headers(ar: redis.asyncio.Redis,
                                                            prefix: str) -> None:
    shaper = aio.TrafficShaper(ar, "api", global_limit=Limit(1000, 100),
                               client_limit=Limit(2, 3), prefix=prefix)
    app = asgi.RateLimitMiddleware(STARLETTE, shaper, key=asgi.header("x-api-key"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://app") as c:
        answers = [await c.get("/", headers={"x-api-key": "k1"}) for _ in range(4)]
        other = await c.get("/", headers={"x-api-key": "k2"})
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert other.status_code == 200                                # its own key, its own limit
    first, denied = answers[0], answers[3]
    assert first.text == "hello" and first.headers["x-app"] == "1"
    assert "retry-after" not in first.headers
    policy = [parse_item(p) for p in first.headers["ratelimit-policy"].split(", ")]
    assert {"name": "api.client", "q": 3, "w": 2} in policy
    assert {"name": "api.global", "q": 100, "w": 1} in policy
    assert parse_item(first.headers["ratelimit"]) == {"name": "api.client", "r": 2, "t": 1}
    assert denied.text == "Too Many Requests\n"
    assert denied.headers["retry-after"] == "1"          # 0.5 s rounded up: never "0"
    limit = parse_item(denied.headers["ratelimit"])
    assert limit == {"name": "api.client", "r": 0, "t": 1}    # t matches Retry-After


async def test_asgi_per_route_limits_skip_and_sync_shapers(r: redis.Redis,
                                                           prefix: str) -> None:
    default = TrafficShaper(r, "site", global_limit=Limit(1000, 100), prefix=prefix)
    login = TrafficShaper(r, "login", global_limit=Limit(1, 2), prefix=prefix)
    app = asgi.RateLimitMiddleware(STARLETTE, default, key=None, routes={"/login": login},
                                   skip=lambda req: req.path == "/health")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://app") as c:
        codes = [(await c.get(p)).status_code for p in ("/login", "/login/sso", "/login")]
        assert codes == [200, 200, 429]                   # one route limit for /login/...
        assert (await c.get("/loginx")).status_code == 200     # not under /login
        assert (await c.get("/")).status_code == 200
        health = await c.get("/health")
        assert health.status_code == 200 and "ratelimit" not in health.headers
        denied = await c.get("/login")
        assert parse_item(denied.headers["ratelimit"])["name"] == "login.global"


async def test_asgi_passes_other_scopes_through(ar: redis.asyncio.Redis, prefix: str) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    shaper = aio.TrafficShaper(ar, "api", global_limit=Limit(1, 1), prefix=prefix)
    app = asgi.RateLimitMiddleware(inner, shaper)
    for kind in ("lifespan", "websocket", "websocket"):
        await app({"type": kind}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket", "websocket"]
    assert (await shaper.peek()).remaining == 1            # nothing charged


def test_wsgi_limits_keys_and_headers(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", client_limit=Limit(1, 2), prefix=prefix)
    app = wsgi.RateLimitMiddleware(plain_wsgi, shaper)               # by client IP
    with httpx.Client(transport=httpx.WSGITransport(app=app, remote_addr="10.0.0.1"),
                      base_url="http://app") as c:
        answers = [c.get("/") for _ in range(3)]
    with httpx.Client(transport=httpx.WSGITransport(app=app, remote_addr="10.0.0.2"),
                      base_url="http://app") as c:
        assert c.get("/").status_code == 200
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["x-app"] == "1" and "ratelimit" in answers[0].headers
    assert answers[2].headers["retry-after"] == "1"
    assert parse_item(answers[2].headers["ratelimit-policy"]) == {"name": "api.client",
                                                                  "q": 2, "w": 2}
    by_route = wsgi.RateLimitMiddleware(plain_wsgi, TrafficShaper(
        r, "routes", client_limit=Limit(1, 1), prefix=prefix), key=wsgi.route)
    with httpx.Client(transport=httpx.WSGITransport(app=by_route), base_url="http://app") as c:
        assert [c.get(p).status_code for p in ("/a", "/b", "/a")] == [200, 200, 429]
        assert c.post("/a").status_code == 200                    # another route: POST /a


def test_store_down_follows_the_failure_policy() -> None:
    def shaper(policy: str) -> TrafficShaper:
        client = redis.Redis.from_url(dead_redis_url(), socket_connect_timeout=0.2,
                                      socket_timeout=0.2)
        return TrafficShaper(client, "api", global_limit=Limit(1, 1), on_store_error=policy,
                             retry_store_after_s=2)

    closed = wsgi.RateLimitMiddleware(plain_wsgi, shaper("fail_closed"))
    with httpx.Client(transport=httpx.WSGITransport(app=closed), base_url="http://a") as c:
        answer = c.get("/")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
    opened = wsgi.RateLimitMiddleware(plain_wsgi, shaper("fail_open"))
    with httpx.Client(transport=httpx.WSGITransport(app=opened), base_url="http://a") as c:
        answer = c.get("/")
    assert answer.status_code == 200 and "ratelimit" not in answer.headers
    local = wsgi.RateLimitMiddleware(plain_wsgi, shaper("local"))
    with httpx.Client(transport=httpx.WSGITransport(app=local), base_url="http://a") as c:
        assert [c.get("/").status_code for _ in range(2)] == [200, 429]   # in-process twin


def test_bad_configuration(r: redis.Redis, ar: redis.asyncio.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", prefix=prefix)
    with pytest.raises(ConfigError, match="shaper"):
        wsgi.RateLimitMiddleware(plain_wsgi, aio.TrafficShaper(ar, "api", prefix=prefix))
    with pytest.raises(ConfigError, match="shaper"):
        asgi.RateLimitMiddleware(STARLETTE, "redis://localhost")
    with pytest.raises(ConfigError, match="routes"):
        wsgi.RateLimitMiddleware(plain_wsgi, shaper, routes={"login": shaper})
    with pytest.raises(ConfigError, match="routes"):
        wsgi.RateLimitMiddleware(plain_wsgi, shaper, routes={"/login": 5})
    with pytest.raises(ConfigError, match="key"):
        wsgi.RateLimitMiddleware(plain_wsgi, shaper, key="x-api-key")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="skip"):
        asgi.RateLimitMiddleware(STARLETTE, shaper, skip=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="name"):
        asgi.header("")


# -- real servers, several workers -------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    """One request on a fresh connection, so the kernel spreads them over the workers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture(params=["uvicorn", "gunicorn"])
def served(request: pytest.FixtureRequest, server_url: str) -> Iterator[dict[str, Any]]:
    rate, burst = 50.0, 10.0
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTLB_TEST_REDIS_URL": server_url,
           "DISTLB_TEST_PREFIX": f"mw{uuid.uuid4().hex[:8]}", "DISTLB_TEST_RATE": str(rate),
           "DISTLB_TEST_BURST": str(burst)}
    if request.param == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "tests.integration_app:asgi_app",
               "--workers", "4", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]
    else:
        cmd = [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}",
               "--log-level", "warning", "tests.integration_app:wsgi_app"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        pids: set[str] = set()
        deadline = time.monotonic() + 90
        while len(pids) < 4 and time.monotonic() < deadline:   # wait for the workers
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                pids.add(get(port, "/health")[1])
            except OSError:
                time.sleep(0.1)
        assert pids, "the server never answered"
        yield {"port": port, "rate": rate, "burst": burst, "server": request.param}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.multiprocess
def test_one_limit_for_all_workers_of_a_real_server(served: dict[str, Any]) -> None:
    port, seconds, threads = served["port"], 4.0, 4
    codes: dict[int, int] = {}
    pids: set[str] = set()
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    stop_at: list[float] = []

    def load() -> None:
        start.wait()
        while time.monotonic() < stop_at[0]:
            status, body = get(port, "/")
            with lock:
                codes[status] = codes.get(status, 0) + 1
                if status == 200:
                    pids.add(body)

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for w in workers:
        w.start()
    t0 = time.monotonic()
    stop_at.append(t0 + seconds)
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    allowed = served["rate"] * elapsed + served["burst"]
    admitted = codes.get(200, 0)
    print(f"{served['server']}: {admitted} admitted, {codes.get(429, 0)} limited in "
          f"{elapsed:.2f}s by {len(pids)} workers; the limit allows {allowed:.0f}")
    assert set(codes) <= {200, 429} and codes.get(429, 0) > admitted     # load above the limit
    assert 0.9 * allowed <= admitted <= 1.1 * allowed
    assert len(pids) >= 2                    # several workers admitted, one limit held
