"""The distlb command against real servers (standalone and cluster), output parsed from --json.

Timing: every key the tests read back is made with slow rates, so it lives for minutes, not
the fraction of a second a busy machine may take to start the CLI. Processes are waited for
by condition (a line printed, a process gone) with generous deadlines, never by fixed sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from distlb import CircuitBreaker, LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper
from distlb.embedded import EmbeddedCluster, EmbeddedServer

CLI = [sys.executable, "-m", "distlb.cli"]


def distlb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def inspect_json(url: str, prefix: str) -> dict[str, Any]:
    done = distlb("inspect", "--redis-url", url, "--prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def populate(client: Any, prefix: str) -> None:
    """One of each entity. Rates are slow: each key lives for minutes (a bucket's TTL is
    the time it takes to refill), so a CLI started late on a busy machine still sees it."""
    TokenBucket(client, "api", rate_per_s=0.01, burst=5, prefix=prefix).try_acquire(2)
    shaper = TrafficShaper(client, "edge", global_limit=Limit(0.1, 10), prefix=prefix)
    shaper.set_client_rate_limit("ali:ce", 0.05, 5)
    shaper.try_acquire("ali:ce", cost=4)
    LeakyBucket(client, "out", rate_per_s=0.01, capacity=5, prefix=prefix).try_acquire(3)
    PriorityLimiter(client, "jobs", rate_per_s=0.01, burst=1, prefix=prefix).try_acquire(1)
    cb = CircuitBreaker(client, "node1", failure_threshold=1, prefix=prefix)
    cb.force_open()


def check_inventory(doc: dict[str, Any]) -> None:
    by_name = {(e["kind"], e["name"]): e for e in doc["entities"]}
    assert set(by_name) == {("tb", "api"), ("ts", "edge"), ("lk", "out"), ("pq", "jobs"),
                            ("cb", "node1")}
    assert by_name[("cb", "node1")]["summary"].startswith("open (forced open)")
    api = by_name[("tb", "api")]
    assert api["kind_label"] == "token bucket"
    assert float(api["keys"][0]["fields"]["tokens"]) == pytest.approx(3, abs=0.05)
    # at least until full again (200 s at 0.01/s) + 1 s, at most the longest refill + 2 s
    assert 60 < api["keys"][0]["ttl_s"] <= 600
    edge = by_name[("ts", "edge")]
    assert {k["part"] for k in edge["keys"]} == {"global", "c:ali%3Ace", "limits"}
    assert "client ali:ce 0.05/s burst 5" in edge["summary"]
    assert "queued" in by_name[("lk", "out")]["summary"]


def test_inspect_standalone(server_url: str, prefix: str) -> None:
    populate(redis.Redis.from_url(server_url), prefix)
    check_inventory(inspect_json(server_url, prefix))
    table = distlb("inspect", "--redis-url", server_url, "--prefix", prefix).stdout
    assert "token bucket" in table and "client ali:ce" in table
    forced = next(line for line in table.splitlines() if "node1" in line)
    assert forced.split()[4] == "none"      # a forced breaker has no TTL (not "0.0s")


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
    # the table's header is the README's, and every column counts one second, not a running
    # total: the limited cells add up to at most the run's total (requests - admitted)
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "breaker per worker" in line)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert header.rstrip() in readme.splitlines(), header
    assert header.split()[4:7] == ["admitted/s", "limited/s", "failed/s"], header
    rows = [line.split() for line in lines if re.match(r"\s*\d+s\s", line)]
    held = re.search(r"(\d+) admitted of (\d+) requests", done.stdout)
    assert rows and held is not None, done.stdout
    limited_total = int(held[2]) - int(held[1])
    assert 0 < sum(int(row[5]) for row in rows) <= limited_total, (rows, limited_total)


def test_watch_streams_breaker_and_registry_events(server_url: str, prefix: str) -> None:
    from distlb import Backend, LoadBalancer
    watcher = subprocess.Popen(
        [sys.executable, "-m", "distlb.cli", "watch", "--redis-url", server_url, "--prefix",
         prefix, "--json", "--count", "3", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stderr is not None
    assert "watching" in watcher.stderr.readline()     # subscribed
    r = redis.Redis.from_url(server_url)
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
    # global and client buckets refilled; the shared overrides (configuration) kept
    assert "reset shaper 'edge': 2 keys (kept its shared limit overrides)" in done.stdout
    assert r.keys(f"{prefix}:{{ts:edge}}*") == [f"{prefix}:{{ts:edge}}:limits".encode()]
    done = distlb("reset", "bucket", "api", "--redis-url", server_url, "--prefix", prefix,
                  "--yes")
    assert "reset bucket 'api': 1 key\n" in done.stdout
    assert "nothing to reset" in distlb("reset", "budget", "none", "--redis-url", server_url,
                                        "--prefix", prefix, "--yes").stdout


def test_reset_refuses_an_invalid_name_in_one_line(server_url: str, prefix: str) -> None:
    done = distlb("reset", "bucket", "x" * 300, "--redis-url", server_url, "--prefix", prefix,
                  "--yes")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("distlb: reset: name: must be at most 256"), done.stderr


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
    assert "1 request served" in by[("pool", "api")]["summary"]
    assert "5 requests, 1 retry in" in by[("rb", "api")]["summary"]
    backends = next(k for k in by[("pool", "api")]["keys"] if k["part"] == "backends")
    assert json.loads(backends["fields"]["n2"])["healthy"] is False
    # pool.lua's "~keep" member of the leases zset is no lease: an idle pool holds none
    assert r.zscore(f"{prefix}:{{pool:api}}:leases", "~keep") is not None
    assert "0 leases" in by[("pool", "api")]["summary"]
    with lb.connection():     # one lease held while the CLI looks
        held = {(e["kind"], e["name"]): e for e in inspect_json(server_url, prefix)["entities"]}
    assert "1 lease" in held[("pool", "api")]["summary"]
    assert "1 leases" not in held[("pool", "api")]["summary"]


def _named_clients(r: redis.Redis, name: str) -> int:
    return sum(1 for c in r.client_list() if c.get("name") == name)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_demo_spread_over_processes_as_over_hosts(server_url: str, prefix: str) -> None:
    """Roles backends and worker: separate programs (as on separate containers) that share
    only the server and the prefix, and see the same story."""
    common = ["--prefix", prefix, "--duration", "6"]
    r = redis.Redis.from_url(server_url)
    # The workers first: they wait for the backends to appear, so however slowly a busy
    # machine starts them, each one runs through the whole story (failure at 30%). Their
    # connections carry a client name, so other tests' connections coming and going on the
    # shared server cannot hide them.
    names = [f"w{i}{prefix}" for i in range(2)]
    workers = [subprocess.Popen([*CLI, "demo", "--role", "worker", "--redis-url",
                                 f"{server_url}?client_name={name}", *common],
                                stdout=subprocess.PIPE, text=True) for name in names]
    wait_for(lambda: all(_named_clients(r, name) for name in names), "both workers connected")
    common = ["--redis-url", server_url, *common]
    backends = subprocess.Popen([*CLI, "demo", "--role", "backends", *common],
                                stdout=subprocess.PIPE, text=True)
    for w in workers:
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0, out
        seen = out.strip().splitlines()[-1]
        assert "'open'" in seen and seen.rstrip("]}").endswith("'closed'"), seen
    out, _ = backends.communicate(timeout=120)
    assert backends.returncode == 0 and "b2 starts failing" in out and "b2 recovers" in out


# -- item 16: what a user meets first ------------------------------------------------------


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("command", [["inspect"], ["watch", "--timeout", "1"],
                                     ["reset", "bucket", "api", "--yes"], ["demo"]])
@pytest.mark.parametrize("url", ["localhost:6379", "127.0.0.1", "http://127.0.0.1:6379",
                                 "redis://127.0.0.1:port"])
def test_a_url_without_a_valid_scheme_is_one_line(command: list[str], url: str) -> None:
    done = distlb(*command, "--redis-url", url)
    no_traceback(done)
    assert done.returncode == 2 and done.stderr.startswith("distlb: invalid server URL"), \
        done.stderr
    if "port" not in url:
        assert "redis://, rediss://, unix://" in done.stderr


@pytest.fixture(scope="module")
def locked() -> Any:
    """A server that needs the password s3cret."""
    with EmbeddedServer(extra_args=["--requirepass", "s3cret"]) as s:
        yield s


def test_the_password_is_never_printed(locked: EmbeddedServer, prefix: str) -> None:
    for url in (f"redis://:s3cret@127.0.0.1:{locked.port}/0",
                f"redis://default:s3cret@127.0.0.1:{locked.port}/0",
                f"redis://127.0.0.1:{locked.port}/0?password=s3cret"):
        runs = [distlb("inspect", "--redis-url", url, "--prefix", prefix),  # "no state at URL"
                distlb("watch", "--redis-url", url, "--prefix", prefix, "--timeout", "0.5"),
                distlb("demo", "--redis-url", url, "--duration", "1", "--workers", "1",
                       "--backends", "2")]
        for done in runs:
            no_traceback(done)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "s3cret" not in done.stdout + done.stderr, done.stdout + done.stderr
            assert f"***@127.0.0.1:{locked.port}" in done.stdout + done.stderr \
                or "password=***" in done.stdout + done.stderr
    bad = distlb("inspect", "--redis-url", "redis://:s3cret@127.0.0.1:1/0")
    assert bad.returncode == 2 and "s3cret" not in bad.stderr and ":***@" in bad.stderr


def test_no_password_is_not_a_wrong_password(locked: EmbeddedServer) -> None:
    for command in (["inspect"], ["watch", "--timeout", "1"], ["reset", "pool", "p", "--yes"],
                    ["demo", "--duration", "1", "--workers", "1"]):
        done = distlb(*command, "--redis-url", f"redis://127.0.0.1:{locked.port}/0")
        no_traceback(done)
        assert done.returncode == 2 and "needs a password" in done.stderr, done.stderr
        done = distlb(*command, "--redis-url", f"redis://:wrong@127.0.0.1:{locked.port}/0")
        assert done.returncode == 2 and "refused the password" in done.stderr, done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--backends", "1"], "--backends: must be in [2, 32], got 1"),
    (["--backends", "0"], "--backends: must be in [2, 32], got 0"),
    (["--workers", "0"], "--workers: must be in [1, 32], got 0"),
    (["--workers", "1000"], "--workers: must be in [1, 32], got 1000"),
    (["--duration", "0"], "--duration: must be a finite number in [1, 86400], got 0.0"),
    (["--duration", "-5"], "--duration: must be a finite number in [1, 86400], got -5.0"),
    (["--duration", "nan"], "--duration: must be a finite number"),
    (["--rate", "0"], "--rate: must be a finite number in (0, 1e+06], got 0.0"),
    (["--burst", "1"], "--burst: must be a finite number in [2, 1e+06], got 1.0"),
])
def test_demo_settings_are_checked_before_anything_starts(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISTLB_REDIS_URL"}
    done = subprocess.run([*CLI, "demo", *args], capture_output=True, text=True, timeout=120,
                          env=env)
    no_traceback(done)
    assert done.returncode == 2 and f"distlb: demo {message}" in done.stderr, done.stderr
    assert "started an embedded" not in done.stderr        # refused before starting a server


def test_demo_with_the_fewest_backends_and_shortest_run(server_url: str) -> None:
    """--backends 2 --duration 1 (the lower bounds) run the whole story and end (this used
    to hang at --duration 0 and crash at the end with one backend)."""
    done = distlb("demo", "--redis-url", server_url, "--backends", "2", "--duration", "1",
                  "--workers", "1")
    no_traceback(done)
    assert done.stdout.count("PASS") + done.stdout.count("FAIL") == 7, done.stdout


def test_help_names_every_command() -> None:
    done = distlb("--help")
    assert done.returncode == 0 and "``" not in done.stdout
    for command in ("demo", "inspect", "watch", "reset"):
        assert command in done.stdout.split("positional arguments")[0]


def test_singular_counts_and_an_empty_pool(server_url: str, prefix: str) -> None:
    from distlb import Backend, LoadBalancer
    r = redis.Redis.from_url(server_url)
    CircuitBreaker(r, "one", failure_threshold=5, prefix=prefix).record_failure()
    lb = LoadBalancer(r, "empty", prefix=prefix)
    lb.add_backend(Backend("n1", "10.0.0.1:80"))
    lb.remove_backend("n1")
    lb.close()
    table = distlb("inspect", "--redis-url", server_url, "--prefix", prefix).stdout
    assert re.search(r"circuit breaker\s+one\s+1\s+\S+\s+closed, 1 failure$", table, re.M), table
    assert re.search(r"load balancer pool\s+empty\s+\d+\s+\S+\s+no backends", table), table


def test_shaper_reset_is_one_behaviour_in_the_cli_and_the_library(server_url: str,
                                                                  prefix: str) -> None:
    """Both refill the buckets and keep the shared overrides (configuration)."""
    r = redis.Redis.from_url(server_url)
    for name, reset in (("lib", lambda s: (s.reset(), s.reset_client("c"))),
                        ("cli", lambda s: distlb("reset", "shaper", s.name, "--redis-url",
                                                 server_url, "--prefix", prefix, "--yes"))):
        shaper = TrafficShaper(r, name, global_limit=Limit(0.01, 5), prefix=prefix)
        shaper.set_client_rate_limit("c", 0.01, 3)
        assert shaper.try_acquire("c", cost=3).allowed
        assert not shaper.try_acquire("c").allowed            # the client's bucket is empty
        reset(shaper)
        assert shaper.limits() == {"c:c": Limit(0.01, 3)}, name    # the override stays
        assert shaper.try_acquire("c", cost=3).allowed, name     # and both buckets are full
        assert not shaper.try_acquire("c").allowed, name        # under the same override


# -- signals: nothing left behind ----------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every process whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie, waiting to be reaped, is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _start_demo() -> tuple[subprocess.Popen[str], int, list[int]]:
    """``distlb demo`` on an embedded server, in its own session (as from a terminal), once
    its workers run: the CLI, the server's pid and the workers' pids."""
    env = {k: v for k, v in os.environ.items() if k != "DISTLB_REDIS_URL"}
    demo = subprocess.Popen([*CLI, "demo", "--workers", "2", "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    assert demo.stdout is not None and demo.stderr is not None
    assert "started an embedded Valkey server" in demo.stderr.readline()
    for line in demo.stdout:                               # the table's header: workers run
        if "breaker per worker" in line:
            break
    kids = {p: _cmdline(p) for p in _children(demo.pid)}
    servers = [p for p, cmd in kids.items() if "server" in cmd]
    assert len(servers) == 1, kids
    workers = [p for p, cmd in kids.items() if "multiprocessing" in cmd
               and "resource_tracker" not in cmd]
    assert len(workers) == 2, kids
    return demo, servers[0], workers


def test_sigterm_stops_the_embedded_server_and_the_workers() -> None:
    demo, server, workers = _start_demo()
    demo.send_signal(signal.SIGTERM)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 143 and "Traceback" not in err, err
    wait_for(lambda: not any(_alive(p) for p in [server, *workers]), "server and workers gone")


def test_ctrl_c_exits_quietly_with_130() -> None:
    demo, server, workers = _start_demo()
    os.killpg(demo.pid, signal.SIGINT)                # the terminal signals the whole group
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    wait_for(lambda: not any(_alive(p) for p in [server, *workers]), "server and workers gone")


def test_sigkill_leaves_no_orphaned_server() -> None:
    """Even a parent that cannot clean up (SIGKILL) takes its embedded server with it."""
    demo, server, workers = _start_demo()
    demo.kill()
    demo.communicate(timeout=60)
    wait_for(lambda: not any(_alive(p) for p in [server, *workers]), "server and workers gone")
