"""Shared-state events over pub/sub: breakers push every change to every process.

Scripts ``PUBLISH`` a JSON object on ``<prefix>:events`` whenever they change a
breaker. One subscriber per client and channel (a daemon thread for sync
clients, a task for asyncio ones) hands each event to the breakers of this
process, and pings every ``heartbeat_s`` so a silent, broken subscription is
noticed: while it is not healthy, views fall back to ``max_staleness_s``.

A bus counts its users (the objects that joined it); when the last one closes
(``close()``, the end of a ``with`` block, or garbage collection), the thread or
task ends within ``heartbeat_s`` and its pub/sub connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from distlb import _keys
from distlb._core.bus import Handler
from distlb._runtime import refused

log = logging.getLogger("distlb")


def channel_for(prefix: str) -> str:
    """The events channel of ``prefix`` (built by the key builder)."""
    return _keys.events_channel(prefix)


def decode(data: Any) -> dict[str, Any] | None:
    """An event: a JSON object (JSON, not msgpack, so decode_responses clients read it)."""
    try:
        event = json.loads(data)
    except (ValueError, TypeError):  # not ours: someone else publishing on the channel
        return None
    return event if isinstance(event, dict) else None


class _Bus:
    """Bookkeeping shared by the sync and asyncio subscribers."""

    heartbeat_s = 0.25

    def __init__(self, client: Any, channel: str, clock: Callable[[], float]) -> None:
        self.client = client
        self.channel = channel
        self.clock = clock
        self.handlers: dict[tuple[str, str], list[weakref.WeakMethod[Handler]]] = {}
        self.since: float | None = None     # when the live subscription (re)started
        self.alive_at = 0.0
        self.events = 0
        self.lost_at: float | None = None
        self.warned = False
        self.refused = False
        self.users = 0

    def register(self, kind: str, name: str, handler: Handler) -> None:
        self.handlers.setdefault((kind, name), []).append(weakref.WeakMethod(handler))

    def unregister(self, kind: str, name: str, handler: Handler) -> None:
        refs = self.handlers.get((kind, name), [])
        self.handlers[(kind, name)] = [r for r in refs if r() is not None and r() != handler]

    def subscribed_since(self) -> float | None:
        """When the current healthy subscription started, or None if it is not healthy."""
        if self.since is None or self.clock() - self.alive_at > 3 * self.heartbeat_s:
            return None
        return self.since

    def on_message(self, msg: dict[str, Any]) -> None:
        self.alive_at = self.clock()
        kind = msg.get("type")
        if kind == "subscribe":
            if self.lost_at is not None and self.since is None:
                log.info("event subscription on %s is back", self.channel)
            self.since = self.alive_at
            self.lost_at = None
        elif kind == "message":
            event = decode(msg.get("data"))
            if event is None:
                return
            self.events += 1
            for ref in self.handlers.get((str(event.get("kind")), str(event.get("name"))), []):
                handler = ref()
                if handler is not None:
                    try:
                        handler(event)
                    except Exception:  # a listener's bug must not kill the subscription
                        log.exception("event handler failed")

    #: A subscription down this long is worth a WARNING; shorter blips are INFO.
    warn_after_s = 5.0

    def lost(self, exc: BaseException) -> None:
        now = self.clock()
        if refused(exc) and not self.refused:
            self.refused = True  # configuration, not a blip: say so once, loudly
            log.error("event subscription on %s refused by the store (%s: %s): grant the ACL "
                      "user +subscribe +ping and the channel &%s (see the README's minimal "
                      "ACL); until then views fall back to bounded staleness", self.channel,
                      type(exc).__name__, exc, self.channel)
        if self.since is not None or self.lost_at is None:
            self.lost_at, self.warned = now, False
            log.info("event subscription on %s lost (%s); views fall back to "
                     "bounded staleness until it is back", self.channel, exc)
        elif not self.warned and now - self.lost_at > self.warn_after_s:
            self.warned = True
            log.warning("event subscription on %s down for %.0fs (%s); every breaker "
                        "check goes to the store once its view is older than max_staleness_s",
                        self.channel, now - self.lost_at, exc)
        self.since = None


class SyncBus(_Bus):
    """A daemon thread subscribed on one sync client."""

    _buses: dict[tuple[int, int, str], SyncBus] = {}
    # Reentrant: release() runs from finalizers, which the GC may call inside get().
    _lock = threading.RLock()

    @classmethod
    def get(cls, client: Any, channel: str, clock: Callable[[], float]) -> SyncBus:
        """The bus of ``client`` and ``channel`` in this process, one more user counted."""
        key = (os.getpid(), id(client), channel)  # a forked child starts its own
        with cls._lock:
            bus = cls._buses.get(key)
            new = bus is None or bus.client is not client
            if new:
                bus = cls._buses[key] = cls(client, channel, clock)
                bus.stop = threading.Event()
            assert bus is not None
            bus.users += 1
        if new:
            # Started outside the lock: Thread.start() waits for the new thread to run, and
            # the GC may run a finalizer (release(), which takes the lock) on that thread
            # before it does; holding the lock here deadlocked both.
            bus.start()
        return bus

    def release(self) -> None:
        """One user is done; the last one stops the thread (within ``heartbeat_s``) and
        closes its pub/sub connection."""
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            key = (os.getpid(), id(self.client), self.channel)
            if self._buses.get(key) is self:
                del self._buses[key]
        self.stop.set()

    #: Set by the last user's release(): the thread ends within ``heartbeat_s``.
    stop: threading.Event

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=f"distlb-events-{self.channel}",
                                       daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        pubsub = None
        try:
            while not self.stop.is_set():
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub()
                        pubsub.subscribe(self.channel)
                    msg = pubsub.get_message(timeout=self.heartbeat_s)
                    if msg is None:
                        pubsub.ping()
                    else:
                        self.on_message(msg)
                except Exception as exc:
                    if self.stop.is_set():  # closed under us (e.g. the client was closed)
                        break
                    self.lost(exc)
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            pubsub.close()
                    pubsub = None
                    self.stop.wait(self.heartbeat_s)
                    _refresh_topology(self.client)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()


def _refresh_topology(client: Any) -> Any:
    """After the subscription's node failed: refresh a cluster client's slot map.

    A cluster subscription lives on the primary of the channel's slot. A client whose
    data commands never failed (every entity on healthy shards) never refreshes its map,
    and would keep resubscribing at the dead node after its replica took over. Returns
    the asyncio client's coroutine to await; nothing for other clients.
    """
    manager = getattr(client, "nodes_manager", None)
    initialize = getattr(manager, "initialize", None)
    if initialize is None:
        return None
    try:
        return initialize()
    except Exception:   # still down: the next attempt refreshes again
        return None


class AsyncBus(_Bus):
    """A task subscribed on one asyncio client (per event loop)."""

    task: asyncio.Task[None] | None = None

    _buses: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                      dict[tuple[int, str], AsyncBus]] = \
        weakref.WeakKeyDictionary()

    @classmethod
    def get(cls, client: Any, channel: str, clock: Callable[[], float]) -> AsyncBus | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside a loop: subscribe on first use
            return None
        per_loop = cls._buses.setdefault(loop, {})
        bus = per_loop.get((id(client), channel))
        if bus is None or bus.client is not client or bus.task is None or bus.task.done():
            bus = per_loop[(id(client), channel)] = cls(client, channel, clock)
            bus.loop = loop
            bus.task = loop.create_task(bus._loop())
        bus.users += 1
        return bus

    loop: asyncio.AbstractEventLoop | None = None

    def release(self) -> None:
        """One user is done; the last one cancels the task, which closes its connection."""
        self.users -= 1
        if self.users > 0:
            return
        per_loop = self._buses.get(self.loop) if self.loop is not None else None
        if per_loop is not None and per_loop.get((id(self.client), self.channel)) is self:
            del per_loop[(id(self.client), self.channel)]
        task, self.task = self.task, None
        if task is not None and not task.done():
            try:
                task.cancel()
            except RuntimeError:  # garbage-collected after its loop closed: nothing to stop
                return
            # Awaited by aclose()/``async with`` so the connection is gone when they return.
            _closing.add(task)
            task.add_done_callback(_closing.discard)


    async def _loop(self) -> None:
        pubsub = None
        while True:
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub()
                    await pubsub.subscribe(self.channel)
                msg = await pubsub.get_message(timeout=self.heartbeat_s)
                if msg is None:
                    await pubsub.ping()
                else:
                    self.on_message(msg)
            except asyncio.CancelledError:
                await _close(pubsub)
                raise
            except Exception as exc:
                self.lost(exc)
                await _close(pubsub)
                pubsub = None
                await asyncio.sleep(self.heartbeat_s)
                refreshed = _refresh_topology(self.client)
                if refreshed is not None:
                    with contextlib.suppress(Exception):
                        await refreshed


#: Bus tasks cancelled and not yet finished (their pub/sub connection closing).
_closing: set[asyncio.Task[None]] = set()


async def wait_closed(timeout_s: float = 2.0) -> None:
    """Let the bus tasks of this loop that were just released finish closing."""
    loop = asyncio.get_running_loop()
    mine = [t for t in _closing if t.get_loop() is loop]
    if mine:
        await asyncio.wait(mine, timeout=timeout_s)


async def _close(pubsub: Any) -> None:
    """Close a subscription without ever hanging a loop's shutdown on a dead connection."""
    if pubsub is None:
        return
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
