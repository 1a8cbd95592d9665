"""Periodic background work: lease renewal and health checks.

A sync object runs it on a daemon thread, an asyncio object as a task of the
running loop. Both call back into the object's own operations, so the work
itself is written once. A ticker restarts itself in a forked child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distlb.strategies import Backend

log = logging.getLogger("distlb")


class SyncTicker:
    """Call ``fn()`` every ``interval_s`` seconds on a daemon thread, from ``ensure()`` on."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], Any]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.fn = fn
        self._pid = -1
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            threading.Thread(target=self._loop, name=self.name, daemon=True).start()

    def _loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:
                log.exception("%s failed; retrying in %.1fs", self.name, self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._pid = -1


class AsyncTicker:
    """Await ``fn()`` every ``interval_s`` seconds as a task of the running loop."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.fn = fn
        self._task: asyncio.Task[None] | None = None

    def ensure(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)
        except RuntimeError:  # no running loop yet: started on first use inside one
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.fn()
            except Exception:
                log.exception("%s failed; retrying in %.1fs", self.name, self.interval_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def tcp_check(timeout_s: float = 1.0) -> Callable[[Backend], bool]:
    """A health check that opens (and closes) a TCP connection to the backend's address."""
    def check(backend: Backend) -> bool:
        host, _, port = backend.address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except OSError:
            return False
    return check
