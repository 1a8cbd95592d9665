"""The store refusing us is configuration, not an outage: passwords, ACLs, TLS (issue #10 item 5),
the minimal ACL the README documents (item 18), client validation, log format (item 17)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

import distlb.aio as aio
from distlb import (
    AdaptiveCircuitBreaker,
    Backend,
    CircuitBreaker,
    ConfigError,
    LeakyBucket,
    LoadBalancer,
    PriorityLimiter,
    RetryBudget,
    StoreAuthError,
    StoreError,
    TokenBucket,
    TrafficShaper,
)
from distlb.embedded import EmbeddedServer

pytestmark = pytest.mark.lua
ROOT = Path(__file__).resolve().parent.parent
FAST = dict(socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


@pytest.fixture(scope="module")
def acl_server() -> Iterator[EmbeddedServer]:
    """A private server whose default user needs a password (so nobody gets in by accident)."""
    with EmbeddedServer(extra_args=["--requirepass", "adminpw"]) as s:
        yield s


def admin(server: EmbeddedServer) -> redis.Redis:
    return server.client(password="adminpw")


def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``cond`` with a generous deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def readme_acl(prefix: str) -> list[str]:
    """The ACL rules the README documents as the library's minimum, for ``prefix``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"ACL SETUSER app on >secret (.+)", text)
    assert m, "the README documents the minimal ACL as `ACL SETUSER app on >secret ...`"
    return m.group(1).strip().strip("`").replace("distlb:", f"{prefix}:").split()


@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
def test_wrong_or_missing_password_raises_never_fails_open(
        acl_server: EmbeddedServer, prefix: str, password: str | None) -> None:
    r = acl_server.client(password=password, **FAST)
    tb = TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix)  # fail_open by default
    for _ in range(3):  # every call, not just the first: no outage is recorded
        with pytest.raises(StoreAuthError, match="refused"):
            tb.try_acquire()
    assert tb.store_stats.fallbacks == 0 and tb.store_stats.outages == 0
    assert isinstance(StoreAuthError("x"), StoreError)
    cb = CircuitBreaker(r, "svc", prefix=prefix, subscribe=False)
    with pytest.raises(StoreAuthError):
        cb.can_attempt()
    shaper = TrafficShaper.with_global_limit(r, 10, 10, prefix=prefix)
    with pytest.raises(StoreAuthError):
        shaper.limits()
    with pytest.raises(StoreAuthError):
        shaper.set_global_limit(5, 5)
    r.close()


async def test_wrong_password_raises_on_asyncio_too(acl_server: EmbeddedServer,
                                                    prefix: str) -> None:
    c = redis.asyncio.Redis(host="127.0.0.1", port=acl_server.port, password="wrong")
    tb = aio.TokenBucket(c, "api", rate_per_s=1, burst=1, prefix=prefix)
    results = await asyncio.gather(*[tb.try_acquire() for _ in range(5)], return_exceptions=True)
    assert all(isinstance(e, StoreAuthError) for e in results), results
    shaper = aio.TrafficShaper.with_global_limit(c, 10, 10, prefix=prefix)
    with pytest.raises(StoreAuthError):
        await shaper.limits()
    assert tb.store_stats.fallbacks == 0
    await c.aclose()


def _user(server: EmbeddedServer, name: str, rules: list[str]) -> redis.Redis:
    a = admin(server)
    a.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules)
    a.close()
    return server.client(username=name, password="pw", **FAST)


def test_acl_user_missing_a_permission_raises(acl_server: EmbeddedServer, prefix: str) -> None:
    # No EVALSHA/EVAL at all: NOPERM on the command.
    r = _user(acl_server, f"noscript-{prefix}", [f"~{prefix}:*", "+ping", "+hgetall"])
    tb = TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix)
    with pytest.raises(StoreAuthError, match=r"NoPermissionError|NOPERM"):
        tb.try_acquire()
    assert tb.store_stats.fallbacks == 0
    r.close()
    # Scripts allowed, but the keys are outside the user's pattern: NOPERM on the keys.
    r = _user(acl_server, f"otherkeys-{prefix}", ["~elsewhere:*", "+@all"])
    for make in (lambda: TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix).try_acquire(),
                 lambda: LeakyBucket(r, "l", rate_per_s=1, capacity=1, prefix=prefix).try_acquire(),
                 lambda: CircuitBreaker(r, "b", prefix=prefix, subscribe=False).record_failure(),
                 lambda: TrafficShaper.with_global_limit(r, 1, 1, prefix=prefix).limits()):
        with pytest.raises(StoreAuthError):
            make()
    r.close()
    # Every key and command, but a script command denied inside the script (PUBLISH).
    r = _user(acl_server, f"nopublish-{prefix}", [f"~{prefix}:*", "&*", "+@all", "-publish"])
    cb = CircuitBreaker(r, "b", prefix=prefix, failure_threshold=1, subscribe=False)
    with pytest.raises(StoreAuthError):
        cb.record_failure()  # trips: the script publishes the transition
    r.close()


def test_untrusted_certificate_raises(prefix: str, tmp_path: Path) -> None:
    """The embedded Valkey is built without TLS, so a Python TLS listener with a
    self-signed certificate stands in: the handshake fails before any Redis byte,
    which is exactly the case (an untrusted CA) the client must not treat as an outage."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = redis.Redis(host="localhost", port=port, ssl=True, **FAST)
        tb = TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix)
        with pytest.raises(StoreAuthError, match=r"(?i)certificate"):
            tb.try_acquire()
        assert tb.store_stats.fallbacks == 0
        r.close()
    finally:
        stop.set()
        t.join(5)
        listener.close()


def test_minimal_acl_from_the_readme_runs_everything(acl_server: EmbeddedServer,
                                                     prefix: str) -> None:
    r = _user(acl_server, f"app-{prefix}", readme_acl(prefix))
    kw = dict(prefix=prefix, on_store_error="fail_closed")  # any store error would show
    tb = TokenBucket(r, "tb", rate_per_s=1, burst=2, **kw)
    assert [tb.try_acquire().allowed for _ in range(3)] == [True, True, False]
    assert tb.peek().source == "store"
    tb.reset()
    leaky = LeakyBucket(r, "lk", rate_per_s=10, capacity=2, **kw)
    assert leaky.try_acquire().source == "store"
    leaky.reset()
    shaper = TrafficShaper.with_global_limit(r, 100, 100, **kw)
    assert shaper.set_client_rate_limit("alice", 1, 1)
    assert set(shaper.limits()) == {"c:alice"}
    assert shaper.try_acquire("alice").allowed and not shaper.try_acquire("alice").allowed
    shaper.reset_client("alice")
    shaper.remove_client_rate_limit("alice")
    prio = PriorityLimiter(r, "pr", rate_per_s=100, burst=5, **kw)
    assert prio.acquire(1).source == "store"
    prio.reset()
    budget = RetryBudget(r, "rb", **kw)
    budget.deposit(10)
    assert budget.try_withdraw().source == "store"
    budget.reset()
    # Breakers follow each other's events over the channel the ACL grants.
    cb = CircuitBreaker(r, "cb", failure_threshold=1, **kw)
    other = CircuitBreaker(r, "cb", failure_threshold=1, **kw)
    assert other.can_attempt().allowed
    until(lambda: other._subscribed_since() is not None)      # SUBSCRIBE allowed
    cb.record_failure()
    until(lambda: other._bus is not None and other._bus.events >= 1)  # PUBLISH reached us
    assert not other.can_attempt().allowed
    cb.force_closed()
    cb.reset()
    acb = AdaptiveCircuitBreaker(r, "acb", **kw)
    acb.record_result(True)
    assert acb.state().source == "store"
    lb = LoadBalancer(r, "pool", **kw)
    lb.add_backend(Backend("b1", "127.0.0.1:1"))
    lb.update_backend_weight("b1", 2)
    assert lb.execute(lambda b: b.id) == "b1"
    assert lb.get_statistics().per_backend[0].requests == 1
    lb.remove_backend("b1")
    for obj in (tb, leaky, shaper, prio, budget, cb, other, acb, lb):
        assert obj.store_stats.fallbacks == 0, obj
        obj.close()
    r.close()


def test_readme_acl_covers_every_command_the_scripts_run() -> None:
    rules = readme_acl("distlb")
    allowed = {rule[1:].lower() for rule in rules if rule.startswith("+")}
    used = set()
    for path in (ROOT / "lua").glob("*.lua"):
        used |= {m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]",
                                               path.read_text(encoding="utf-8"))}
    assert used and used <= allowed, f"missing from the README's ACL: {sorted(used - allowed)}"
    assert {"evalsha", "eval", "ping", "subscribe", "hgetall"} <= allowed
    assert "~distlb:*" in rules and "&distlb:events" in rules


# -- a wrong client argument fails at construction --------------------------------------------

def test_a_url_or_the_wrong_flavour_of_client_is_a_config_error(r: redis.Redis) -> None:
    for bad in ("redis://localhost:6379", b"x", None, 42, object()):
        with pytest.raises(ConfigError, match=r"^client: "):
            TokenBucket(bad, "api", rate_per_s=1, burst=1)
    ar = redis.asyncio.Redis()
    for make in (lambda c: TokenBucket(c, "api", rate_per_s=1, burst=1),
                 lambda c: CircuitBreaker(c, "cb"),
                 lambda c: LoadBalancer(c, "pool"),
                 lambda c: RetryBudget(c, "rb")):
        with pytest.raises(ConfigError, match="must be a sync client"):
            make(ar)
    for amake in (lambda c: aio.TokenBucket(c, "api", rate_per_s=1, burst=1),
                  lambda c: aio.CircuitBreaker(c, "cb"),
                  lambda c: aio.LoadBalancer(c, "pool")):
        with pytest.raises(ConfigError, match="must be an asyncio client"):
            amake(r)
    with pytest.raises(ConfigError, match=r"distlb\.connect\(url\)"):
        TrafficShaper("redis://localhost")


# -- log lines -----------------------------------------------------------------------------

def test_log_lines_do_not_repeat_the_logger_name(own_server: EmbeddedServer, prefix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    r = own_server.client(**FAST)
    tb = TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix)
    assert tb.try_acquire().source == "store"
    own_server.stop()
    with caplog.at_level(logging.DEBUG, "distlb"):
        tb.try_acquire()
        own_server.start()
        for _ in range(200):
            if tb.try_acquire().source == "store":
                break
            threading.Event().wait(0.02)
    messages = [rec.getMessage() for rec in caplog.records if rec.name.startswith("distlb")]
    assert any("store unreachable" in m for m in messages)
    assert any("reachable again" in m for m in messages)
    formatted = [logging.Formatter("%(name)s: %(message)s").format(rec) for rec in caplog.records]
    assert not [f for f in formatted if f.startswith("distlb: distlb:")], formatted
    tb.close()
    r.close()


def test_no_log_call_in_the_package_repeats_the_logger_name() -> None:
    offenders = []
    for path in (ROOT / "distlb").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.name}: {m}" for m in
                      re.findall(r"log\.\w+\(\s*f?[\"']distlb: [^\"']*", text)]
    assert offenders == []


def test_a_refused_subscription_is_reported_once_as_an_error(
        acl_server: EmbeddedServer, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    rules = [rule for rule in readme_acl(prefix) if not rule.startswith("&")]  # no channel
    r = _user(acl_server, f"nochannel-{prefix}", rules)
    with caplog.at_level(logging.INFO, "distlb"):
        cb = CircuitBreaker(r, "cb", prefix=prefix, on_store_error="fail_closed")
        assert cb.can_attempt().source == "store"  # the scripts still work
        until(lambda: any("refused" in m for m in caplog.messages))
        cb.close()
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and f"&{prefix}:events" in errors[0].getMessage()
    r.close()
