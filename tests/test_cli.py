"""The distlb command against real servers (standalone and cluster), output parsed from --json."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import redis

from distlb import CircuitBreaker, LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper
from distlb.embedded import EmbeddedCluster, EmbeddedServer


def distlb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distlb.cli", *args], capture_output=True,
                          text=True, timeout=120)


def inspect_json(url: str, prefix: str) -> dict[str, Any]:
    done = distlb("inspect", "--redis-url", url, "--prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def populate(client: Any, prefix: str) -> None:
    TokenBucket(client, "api", rate_per_s=10, burst=5, prefix=prefix).try_acquire(2)
    shaper = TrafficShaper(client, "edge", global_limit=Limit(100, 10), prefix=prefix)
    shaper.set_client_rate_limit("ali:ce", 50, 5)
    shaper.try_acquire("ali:ce")
    LeakyBucket(client, "out", rate_per_s=2, capacity=5, prefix=prefix).try_acquire(3)
    PriorityLimiter(client, "jobs", rate_per_s=0.1, burst=1, prefix=prefix).try_acquire(1)
    cb = CircuitBreaker(client, "node1", failure_threshold=1, prefix=prefix)
    cb.force_open()


def check_inventory(doc: dict[str, Any]) -> None:
    by_name = {(e["kind"], e["name"]): e for e in doc["entities"]}
    assert set(by_name) == {("tb", "api"), ("ts", "edge"), ("lb", "out"), ("pq", "jobs"),
                            ("cb", "node1")}
    assert by_name[("cb", "node1")]["summary"].startswith("open (forced open)")
    api = by_name[("tb", "api")]
    assert api["kind_label"] == "token bucket"
    assert float(api["keys"][0]["fields"]["tokens"]) == pytest.approx(3, abs=0.05)
    assert 0 < api["keys"][0]["ttl_s"] <= 2.5       # at most the longest refill (0.5 s) + 2 s
    edge = by_name[("ts", "edge")]
    assert {k["part"] for k in edge["keys"]} == {"global", "c:ali%3Ace", "limits"}
    assert "client ali:ce 50/s burst 5" in edge["summary"]
    assert "queued" in by_name[("lb", "out")]["summary"]


def test_inspect_standalone(server_url: str, prefix: str) -> None:
    populate(redis.Redis.from_url(server_url), prefix)
    check_inventory(inspect_json(server_url, prefix))
    table = distlb("inspect", "--redis-url", server_url, "--prefix", prefix).stdout
    assert "token bucket" in table and "client ali:ce" in table


@pytest.mark.cluster
def test_inspect_cluster_scans_every_primary(cluster: EmbeddedCluster, prefix: str) -> None:
    populate(cluster.client(), prefix)
    check_inventory(inspect_json(cluster.url, prefix))


def test_inspect_empty_namespace(server_url: str, prefix: str) -> None:
    done = distlb("inspect", "--redis-url", server_url, "--prefix", prefix)
    assert done.returncode == 0 and f"no distlb state under prefix {prefix!r}" in done.stdout
    assert inspect_json(server_url, prefix)["entities"] == []


def test_helpful_errors() -> None:
    done = distlb("inspect", "--redis-url", "redis://127.0.0.1:1")
    assert done.returncode == 2 and "cannot reach the server" in done.stderr
    with EmbeddedServer(extra_args=["--requirepass", "right"]) as s:
        done = distlb("inspect", "--redis-url", f"redis://:wrong@127.0.0.1:{s.port}")
        assert done.returncode == 2 and "refused the password" in done.stderr


def test_demo_passes_its_own_checks(server_url: str) -> None:
    done = distlb("demo", "--redis-url", server_url, "--workers", "2", "--duration", "6",
                  "--strategy", "least_connections")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS") == 7 and "FAIL" not in done.stdout
    assert "b2 starts failing" in done.stdout and "b2 recovers" in done.stdout


def test_watch_streams_breaker_and_registry_events(server_url: str, prefix: str) -> None:
    from distlb import Backend, LoadBalancer
    watcher = subprocess.Popen(
        [sys.executable, "-m", "distlb.cli", "watch", "--redis-url", server_url, "--prefix",
         prefix, "--json", "--count", "3", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stderr is not None
    assert "watching" in watcher.stderr.readline()     # subscribed
    r = redis.Redis.from_url(server_url)
    import time
    time.sleep(0.2)
    cb = CircuitBreaker(r, "node1", failure_threshold=1, prefix=prefix)
    cb.record_failure()                                 # closed -> open
    cb.reset()                                          # open -> closed
    LoadBalancer(r, "api", prefix=prefix).add_backend(Backend("n1", "10.0.0.1:80"))
    out, _ = watcher.communicate(timeout=60)
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e.get("to") or e.get("event")) for e in events] == [
        ("cb", "open"), ("cb", "closed"), ("pool", "added")]
    assert watcher.returncode == 0


def test_reset_needs_confirmation_and_resets(server_url: str, prefix: str) -> None:
    r = redis.Redis.from_url(server_url)
    populate(r, prefix)
    done = subprocess.run([sys.executable, "-m", "distlb.cli", "reset", "breaker", "node1",
                           "--redis-url", server_url, "--prefix", prefix],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--yes" in done.stderr
    assert CircuitBreaker(r, "node1", prefix=prefix).state().forced == "open"
    done = distlb("reset", "breaker", "node1", "--redis-url", server_url, "--prefix", prefix,
                  "--yes")
    assert done.returncode == 0, done.stderr
    st = CircuitBreaker(r, "node1", prefix=prefix).state()
    assert (st.state, st.forced) == ("closed", None)
    done = distlb("reset", "shaper", "edge", "--redis-url", server_url, "--prefix", prefix,
                  "--yes")
    assert "reset shaper 'edge': 3 keys" in done.stdout
    assert r.keys(f"{prefix}:{{ts:edge}}*") == []
    assert "nothing to reset" in distlb("reset", "budget", "none", "--redis-url", server_url,
                                        "--prefix", prefix, "--yes").stdout


def test_inspect_shows_pools_and_budgets(server_url: str, prefix: str) -> None:
    from distlb import Backend, LoadBalancer, RetryBudget
    r = redis.Redis.from_url(server_url)
    lb = LoadBalancer(r, "api", prefix=prefix)
    lb.add_backend(Backend("n1", "10.0.0.1:80"))
    lb.add_backend(Backend("n2", "10.0.0.2:80", healthy=False))
    lb.record_result("n1", 0.01, True)
    budget = RetryBudget(r, "api", prefix=prefix, deposit_batch=1)
    budget.deposit(5)
    budget.try_withdraw()
    doc = inspect_json(server_url, prefix)
    by = {(e["kind"], e["name"]): e for e in doc["entities"]}
    assert "1/2 backends healthy" in by[("pool", "api")]["summary"]
    assert "1 requests served" in by[("pool", "api")]["summary"]
    assert "5 requests, 1 retries" in by[("rb", "api")]["summary"]
    backends = next(k for k in by[("pool", "api")]["keys"] if k["part"] == "backends")
    assert json.loads(backends["fields"]["n2"])["healthy"] is False


def test_demo_spread_over_processes_as_over_hosts(server_url: str, prefix: str) -> None:
    """Roles backends and worker: separate programs (as on separate containers) that share
    only the server and the prefix, and see the same story."""
    import time
    common = ["--redis-url", server_url, "--prefix", prefix, "--duration", "6"]
    backends = subprocess.Popen([sys.executable, "-m", "distlb.cli", "demo", "--role",
                                 "backends", *common], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    workers = [subprocess.Popen([sys.executable, "-m", "distlb.cli", "demo", "--role",
                                 "worker", *common], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        out, _ = w.communicate(timeout=90)
        assert w.returncode == 0, out
        seen = out.strip().splitlines()[-1]
        assert "'open'" in seen and seen.rstrip("]}").endswith("'closed'"), seen
    out, _ = backends.communicate(timeout=90)
    assert backends.returncode == 0 and "b2 starts failing" in out and "b2 recovers" in out
