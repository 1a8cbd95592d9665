"""The two thin shells: run operations on a sync or an asyncio redis-py client.

Everything that decides *what* to do lives in ``distlb._core``; this module only
executes steps. It also holds the one implementation of the store failure
policy bookkeeping (:class:`StoreGuard`), used by both shells.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
from redis import exceptions as rx

from distlb import _observe
from distlb._core.ops import Call, Done, Invoke, Op, Outcome, Sleep
from distlb._scripts import is_noscript, run_async, run_sync
from distlb.errors import StoreError

log = logging.getLogger("distlb")
T = TypeVar("T")

#: Errors that mean "the store is unreachable or not serving": the failure policy applies.
#: Anything else the server says (wrong type, script error) is a StoreError.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.BusyLoadingError,
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.ReadOnlyError,
    rx.MasterDownError,
    OSError,
    asyncio.TimeoutError,
    rx.MaxConnectionsError,
)


@dataclass
class GuardStats:
    """Counters of one primitive's store health, readable as ``obj.store_stats``."""

    calls: int = 0
    store_errors: int = 0
    fallbacks: int = 0
    outages: int = 0


class StoreGuard:
    """Tracks whether the store is reachable and applies the failure policy.

    After a failure the store is not tried again for ``retry_store_after_s``
    (so an outage costs one timeout, not one per request); the first call after
    that tries again, and success ends the outage. Outage start and end are
    logged at WARNING; every fallback is counted and logged at DEBUG.
    """

    def __init__(self, what: str, retry_store_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.retry_store_after_s = retry_store_after_s
        self.clock = clock
        self.stats = GuardStats()
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    def skip(self) -> bool:
        """Whether to go straight to the failure policy (the store failed moments ago)."""
        return self._down and self.clock() < self._down_until

    def fallback(self, call: Call[T], exc: BaseException | None = None) -> T:
        if exc is not None:
            _observe.store_error(self.what)
        with self._lock:
            self.stats.fallbacks += 1
            if exc is not None:
                self.stats.store_errors += 1
                self._down_until = self.clock() + self.retry_store_after_s
                if not self._down:
                    self._down = True
                    self.stats.outages += 1
                    log.warning("distlb: store unreachable for %s (%s: %s); applying failure "
                                "policy, retrying the store every %.1fs", self.what,
                                type(exc).__name__, exc, self.retry_store_after_s)
        log.debug("distlb: fallback for %s", self.what)
        result = call.fallback()
        _observe.fallback(self.what, getattr(result, "source", "policy"))
        return result

    def succeeded(self) -> None:
        self.stats.calls += 1
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    log.warning("distlb: store reachable again for %s", self.what)


class SyncRunner:
    """Executes calls on a sync client; the failure policy is the guard's."""

    def __init__(self, client: Any, guard: StoreGuard,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.guard = guard
        self.sleep = sleep

    def call(self, call: Call[T]) -> T:
        guard = self.guard
        if guard.skip():
            return guard.fallback(call)
        try:
            reply = run_sync(self.client, call.script, call.keys, call.args)
        except UNAVAILABLE as exc:
            return guard.fallback(call, exc)
        except rx.ResponseError as exc:
            raise StoreError(f"{call.script.name}.lua failed: {exc}") from exc
        guard.succeeded()
        return call.parse(reply)

    def drive(self, op: Op[T]) -> T:
        """Run an operation to completion."""
        if isinstance(op, Call):
            return self.call(op)
        if isinstance(op, Done):
            return op.value
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                # An error while sleeping or calling goes back into the operation,
                # so it can clean up shared state (leave a queue) before it ends.
                step = op.throw(error) if error is not None else op.send(reply)
                error = None
                try:
                    if isinstance(step, Sleep):
                        self.sleep(step.seconds)
                        reply = None
                    elif isinstance(step, Invoke):
                        start = self.guard.clock()
                        try:
                            value = step.fn(*step.args, **step.kwargs)
                        except Exception as exc:
                            reply = Outcome(None, exc, self.guard.clock() - start)
                        else:
                            reply = Outcome(value, None, self.guard.clock() - start)
                    else:
                        reply = self.call(step)
                except BaseException as exc:
                    error = exc
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class _Batcher:
    """Coalesces concurrent calls on one asyncio client into pipelines.

    While one pipeline is in flight, new calls queue up; they leave together in
    the next pipeline. Under load a single round trip carries many decisions,
    which is how asyncio throughput beats the one-call-per-RTT limit. Each call
    is still its own atomic script.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pending: list[tuple[Call[Any], asyncio.Future[Any]]] = []
        self.flushing = False
        # A plain redis.asyncio.Redis (Sentinel masters included) gets the direct
        # path; clusters and other clients go through their own pipeline.
        self.direct = isinstance(client, redis.asyncio.Redis)

    def submit(self, call: Call[Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((call, fut))
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._send(batch)
        finally:
            self.flushing = False

    async def _send(self, batch: list[tuple[Call[Any], asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:
            call, fut = batch[0]
            try:
                reply = await run_async(self.client, call.script, call.keys, call.args)
            except BaseException as exc:  # handed to the waiting caller
                _settle(fut, exc=exc)
            else:
                _settle(fut, reply)
            return
        try:
            replies = await (self._exchange(batch) if self.direct else self._pipeline(batch))
        except BaseException as exc:
            for _, fut in batch:
                _settle(fut, exc=exc)
            return
        for (call, fut), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception) and is_noscript(reply):
                # Script cache flushed (restart, SCRIPT FLUSH): EVAL reloads it.
                try:
                    reply = await run_async(self.client, call.script, call.keys, call.args)
                except BaseException as exc:
                    _settle(fut, exc=exc)
                    continue
            if isinstance(reply, Exception):
                _settle(fut, exc=reply)
            else:
                _settle(fut, reply)


    async def _pipeline(self, batch: list[tuple[Call[Any], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call, _ in batch:
            # execute_command, not pipe.evalsha: cluster pipelines block the
            # helper but route the raw command by its keys just fine.
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys,
                                 *call.args)
        return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    async def _exchange(self, batch: list[tuple[Call[Any], asyncio.Future[Any]]]) -> list[Any]:
        """Write every command at once on one pooled connection, then read each reply.

        The same bytes as a pipeline, without its per-command bookkeeping; each
        call's command is packed once and kept on the (reused) Call.
        """
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            packed = []
            for call, _ in batch:
                if not call.packed:
                    call.packed.append(b"".join(conn.pack_command(
                        "EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)))
                packed.append(call.packed[0])
            await conn.send_packed_command(packed)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await conn.read_response())
                except rx.ResponseError as exc:  # one script's error; the stream stays in sync
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)


def _settle(fut: asyncio.Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class AsyncRunner:
    """Executes calls on a ``redis.asyncio`` client, coalescing concurrent calls."""

    def __init__(self, client: Any, guard: StoreGuard, *, auto_pipeline: bool = True,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.client = client
        self.guard = guard
        self.sleep = sleep
        self._batcher = _Batcher(client) if auto_pipeline else None

    async def call(self, call: Call[T]) -> T:
        if self.guard.skip():
            return self.guard.fallback(call)
        try:
            if self._batcher is not None:
                reply = await self._batcher.submit(call)
            else:
                reply = await run_async(self.client, call.script, call.keys, call.args)
        except UNAVAILABLE as exc:
            return self.guard.fallback(call, exc)
        except rx.ResponseError as exc:
            raise StoreError(f"{call.script.name}.lua failed: {exc}") from exc
        self.guard.succeeded()
        return call.parse(reply)

    async def drive(self, op: Op[T]) -> T:
        if isinstance(op, Call):
            return await self.call(op)
        if isinstance(op, Done):
            return op.value
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                step = op.throw(error) if error is not None else op.send(reply)
                error = None
                try:
                    if isinstance(step, Sleep):
                        await self.sleep(step.seconds)
                        reply = None
                    elif isinstance(step, Invoke):
                        start = self.guard.clock()
                        try:
                            value = step.fn(*step.args, **step.kwargs)
                            if inspect.isawaitable(value):
                                value = await value
                        except Exception as exc:
                            reply = Outcome(None, exc, self.guard.clock() - start)
                        else:
                            reply = Outcome(value, None, self.guard.clock() - start)
                    else:
                        reply = await self.call(step)
                except BaseException as exc:
                    error = exc
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
