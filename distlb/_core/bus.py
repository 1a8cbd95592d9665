"""Following shared-state events, seen from the core: what a bus offers, and the
mixin of the objects that follow their own events (breakers, pools).

Pure: the bus itself (a pub/sub thread or task, I/O) is ``distlb._events``; the
shells open it (``_open_bus``). The core only reads one value from it, "subscribed
since" (when the current healthy subscription started, or None), which says
whether a local view may be trusted without a round trip.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

Handler = Callable[[dict[str, Any]], None]


class Bus(Protocol):
    """One client's event subscription (``distlb._events.SyncBus`` / ``AsyncBus``)."""

    def register(self, kind: str, name: str, handler: Handler) -> None: ...

    def unregister(self, kind: str, name: str, handler: Handler) -> None: ...

    def subscribed_since(self) -> float | None: ...

    def release(self) -> None: ...


class Subscriber:
    """Mixin for shared objects that follow their own events (breakers, pools).

    The subclass provides ``subscribe``, ``kind``, ``name`` and ``_on_event``; the shell
    provides ``_open_bus`` (the client's bus, started on first use).
    """

    subscribe: bool
    kind: ClassVar[str]
    name: str
    _bus: Bus | None = None
    _leave: weakref.finalize[Any, Any] | None = None

    def _on_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _open_bus(self) -> Bus | None:
        """The bus of this object's client (joined by the caller), None if there is none
        (no running loop for an asyncio client). Bound by the shells."""
        raise NotImplementedError

    def _subscribed_since(self) -> float | None:
        """Join the client's bus on first use; when its healthy subscription started."""
        if not self.subscribe:
            return None
        bus = self._bus
        if bus is None:
            with _join_lock:
                bus = self._bus
                if bus is None:
                    bus = self._open_bus()
                    if bus is not None:
                        bus.register(self.kind, self.name, self._on_event)
                        # Leave the bus on close(), or when this object is garbage.
                        self._leave = weakref.finalize(self, bus.release)
                        self._bus = bus
        return bus.subscribed_since() if bus is not None else None

    def close(self) -> None:
        """Leave the event bus (it stops when its last user leaves), then the rest."""
        self._leave_bus()
        super().close()  # type: ignore[misc]

    def _leave_bus(self) -> None:
        """Stop following events (the bus ends when its last user leaves); rejoined on use."""
        with _join_lock:
            leave, bus, self._leave, self._bus = self._leave, self._bus, None, None
        if bus is not None:
            bus.unregister(self.kind, self.name, self._on_event)
        if leave is not None:
            leave()


_join_lock = threading.RLock()
