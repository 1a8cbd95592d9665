"""The two thin shells: run operations on a sync or an asyncio redis-py client.

Everything that decides *what* to do lives in ``distlb._core``; this module only
executes steps. It also holds the one implementation of the store failure
policy bookkeeping (:class:`StoreGuard`), used by both shells.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio
from redis import exceptions as rx

from distlb._core.guard import Command, GuardStats, StoreGuard, no_policy
from distlb._core.ops import Call, Done, Op, run_steps
from distlb._scripts import direct_pool, is_noscript, run_async, run_packed, run_sync, script
from distlb.errors import StoreAuthError, StoreError, StoreUnavailable

__all__ = ["AsyncRunner", "Command", "GuardStats", "StoreGuard", "StoreHealth", "SyncRunner",
           "no_policy", "refused", "store_error", "unavailable"]

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
    rx.SlotNotCoveredError,
    rx.ClusterError,
)

#: Errors that mean "the store refused *us*": configuration, not an outage (see StoreAuthError).
#: AuthenticationError is a ConnectionError in redis-py, so this is checked first.
REFUSED: tuple[type[BaseException], ...] = (
    rx.AuthenticationError,
    rx.AuthorizationError,
    rx.AuthenticationWrongNumberOfArgsError,
    rx.NoPermissionError,
    ssl.SSLCertVerificationError,
)
#: Reply prefixes of the same errors where they arrive wrapped (inside a script error, a pipeline).
_REFUSED_CODES = ("NOAUTH", "WRONGPASS", "NOPERM")
#: How a script's ``redis.call`` denied by the ACL is reported (Valkey and Redis 7).
_SCRIPT_ACL = ("ACL failure in script", "no permissions to run", "no permissions to access",
               # Redis 7.0: "The user executing the script can't run this command ...",
               # "... can't access at least one of the keys ...", "... can't publish ..."
               "The user executing the script can't")


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` says the store refused this client: a wrong or missing password, a
    missing ACL permission (also when a script's ``redis.call`` hit it), or a TLS
    certificate that does not verify (redis-py wraps that into a ConnectionError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, REFUSED):
            return True
        if isinstance(e, rx.RedisError):
            text = str(e)
            if any(code in text for code in _REFUSED_CODES) and (
                    isinstance(e, rx.ResponseError) or text.startswith(_REFUSED_CODES)):
                return True
            if isinstance(e, rx.ResponseError) and any(s in text for s in _SCRIPT_ACL):
                return True
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                return True
        e = e.__cause__ or e.__context__
    return False


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store is unreachable or not serving (the policy applies)."""
    if refused(exc):
        return False
    if isinstance(exc, UNAVAILABLE):
        return True
    # A long script or MULTI on the server: it answers nothing else until it ends.
    return isinstance(exc, rx.ResponseError) and str(exc).startswith("BUSY ")


def store_error(what: str, exc: BaseException) -> StoreError:
    """The exception to raise for an error no failure policy may hide."""
    if refused(exc):
        return StoreAuthError(
            f"{what}: the store refused this client ({type(exc).__name__}: {exc}); check the "
            "password, the ACL user's permissions (see the README's minimal ACL) and the TLS "
            "certificates. No failure policy applies to this: it is configuration, not an outage")
    return StoreError(f"{what} failed: {exc}")


class StoreHealth:
    """Whether one client's store answers again, shared by every guard on that client.

    The first guard that sees an outage starts a prober (a daemon thread for a sync
    client, a task of the running loop for an asyncio one) that PINGs the store every
    ``probe_interval_s`` and, the moment the server answers, ends the outage for every
    guard on the client: recovery takes about one probe interval after the server is
    back, not ``retry_store_after_s``. The prober only runs during an outage (it ends
    when the store answers, or when the last user of this client closes). On a
    cluster client PING goes to every primary, so a partial outage ends only when
    every node answers (or at ``retry_store_after_s``, whichever comes first).
    """

    #: Seconds between two probes while the store is down (one cheap PING each).
    probe_interval_s = 0.05

    _registry: dict[tuple[int, int, bool], StoreHealth] = {}
    # Reentrant: release() runs from finalizers, which the GC may call inside acquire().
    _registry_lock = threading.RLock()

    def __init__(self, client: Any, is_async: bool) -> None:
        self._client = client
        self.is_async = is_async
        #: Bumped each time the store answered a probe: guards compare it with the value
        #: they saw when their outage began (no clock involved, so fake clocks work).
        self.epoch = 0
        self.users = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()

    @classmethod
    def acquire(cls, client: Any, is_async: bool) -> StoreHealth:
        """The health of ``client`` in this process, one more user counted."""
        key = (os.getpid(), id(client), is_async)
        with cls._registry_lock:
            health = cls._registry.get(key)
            if health is None or health._client is not client:
                health = cls._registry[key] = cls(client, is_async)
            health.users += 1
            return health

    def release(self) -> None:
        """One user is done with the client; the last one stops any prober."""
        with self._registry_lock:
            self.users -= 1
            if self.users > 0:
                return
            for key, health in list(self._registry.items()):
                if health is self:
                    del self._registry[key]
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    def outage(self) -> None:
        """A guard on this client just failed: make sure a prober is running."""
        with self._lock:
            if self.is_async:
                if self._task is not None and not self._task.done():
                    return
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return
                self._stop = threading.Event()
                self._task = loop.create_task(self._aprobe(), name="distlb-store-probe")
            else:
                if self._thread is not None and self._thread.is_alive():
                    return  # (a thread of the parent is not alive in a forked child)
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._probe, name="distlb-store-probe",
                                                daemon=True)
                self._thread.start()

    @staticmethod
    def _verdict(exc: BaseException) -> str:
        """What a failed probe says: ``"down"`` (probe again), ``"answered"`` (an error
        reply is an answer: a refusal, e.g., makes the calls raise StoreAuthError), or
        ``"unknown"`` (this client cannot be probed: ``retry_store_after_s`` applies)."""
        if unavailable(exc):
            return "down"
        return "answered" if isinstance(exc, rx.RedisError) else "unknown"

    def _recovered(self) -> None:
        with self._lock:
            self.epoch += 1

    def _probe(self) -> None:
        stop = self._stop
        while not stop.wait(self.probe_interval_s):
            try:
                self._client.ping()
            except Exception as exc:
                verdict = self._verdict(exc)
                if verdict == "down":
                    continue
                if verdict == "unknown":
                    return
            self._recovered()
            return

    async def _aprobe(self) -> None:
        stop = self._stop
        while not stop.is_set():
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self._client.ping()
            except Exception as exc:
                verdict = self._verdict(exc)
                if verdict == "down":
                    continue
                if verdict == "unknown":
                    return
            self._recovered()
            return


#: A stand-in call for plain commands, so their outages are counted like every other.
_POLICYLESS: Call[None] = Call(script("delete"), (), (), lambda _: None, lambda: None)


def _abort(call: Call[Any]) -> None:
    """Tell a call that ended with neither ``parse`` nor ``fallback`` (see ``Call.aborted``)."""
    if call.aborted is not None:
        call.aborted()


class SyncRunner:
    """Drives operations on sync clients: each call on its owner's client under its owner's
    guard (the failure policy), others (and calls without an owner) on ``guard``'s."""

    #: ``StepIO`` of ``run_steps``: ``call`` and ``sleep`` return their results.
    blocking = True

    def __init__(self, guard: StoreGuard, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = guard.client
        self.guard = guard
        self.sleep = sleep
        # The last client seen and its direct pool (None: redis-py's own path).
        self._wire: tuple[Any, Any] = (object(), None)

    def call(self, call: Call[T]) -> T:
        guard = call.owner or self.guard
        if guard.skip():
            return guard.fallback(call)
        observe = call.observe
        sent = guard.clock() if observe is not None else 0.0
        client = guard.client
        wire = self._wire
        if wire[0] is not client:
            wire = self._wire = (client, direct_pool(client))
        try:
            if wire[1] is not None:
                reply = run_packed(client, wire[1], call)
            else:
                reply = run_sync(client, call.script, call.keys, call.args)
        except (rx.RedisError, OSError) as exc:  # OSError: raw socket errors of some clients
            if isinstance(exc, OSError) or unavailable(exc):
                return guard.fallback(call, exc)
            _abort(call)
            raise store_error(f"{call.script.name}.lua", exc) from exc
        except BaseException:
            _abort(call)
            raise
        guard.succeeded()
        result = call.parse(reply)
        if observe is not None:
            observe(result, sent)
        return result

    def clock(self) -> float:
        """The guard's clock (``run_steps`` times Invoke steps on it)."""
        return self.guard.clock()

    def command(self, cmd: Command[T]) -> T:
        """Run a plain command that has no failure policy (StoreUnavailable in an outage)."""
        try:
            reply = self.client.execute_command(*cmd.args)
        except (rx.RedisError, OSError) as exc:
            if unavailable(exc):
                self.guard.fallback(_POLICYLESS, exc)  # counted and logged like any outage
                raise StoreUnavailable(f"store unreachable: {cmd.what}") from exc
            raise store_error(cmd.what, exc) from exc
        self.guard.succeeded()
        return cmd.parse(reply)

    def drive(self, op: Op[T] | Command[T]) -> T:
        """Run an operation to completion: one call, one command, a value, or steps
        (through the one drive loop, ``run_steps``; this runner's steps never suspend)."""
        if isinstance(op, Call):
            return self.call(op)
        if isinstance(op, Command):
            return self.command(op)
        if isinstance(op, Done):
            return op.value
        loop = run_steps(op, self)
        try:
            loop.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        loop.close()  # pragma: no cover - a sync step never suspends
        raise RuntimeError("a sync step suspended")  # pragma: no cover


class _Batcher:
    """Coalesces concurrent calls on one asyncio client into pipelines.

    There is one batcher per client and event loop (:meth:`of`), shared by every
    object on that client: while one pipeline is in flight, new calls of any
    object queue up and leave together in the next write. Under load a single
    round trip carries many decisions, of many buckets, shapers and balancers,
    which is how asyncio throughput beats the one-call-per-RTT limit. Each call
    is still its own atomic script.
    """

    #: client -> event loop -> its batcher. Weak both ways: a batcher holds its client
    #: only weakly, so neither a dropped client nor a closed loop is kept alive here.
    _registry: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, _Batcher]] = weakref.WeakKeyDictionary()

    def __init__(self, client: Any) -> None:
        try:
            self._client: Callable[[], Any] = weakref.ref(client)
        except TypeError:  # not weakly referenceable: hold it (the runner does anyway)
            self._client = lambda: client
        self.pending: list[tuple[Call[Any], asyncio.Future[Any]]] = []
        self.flushing = False
        # A plain redis.asyncio.Redis (Sentinel masters included) gets the direct
        # path; clusters and other clients go through their own pipeline.
        self.direct = isinstance(client, redis.asyncio.Redis)

    @property
    def client(self) -> Any:
        client = self._client()
        if client is None:  # pragma: no cover - a call in flight holds its client
            raise StoreUnavailable("the client was garbage collected")
        return client

    @classmethod
    def of(cls, client: Any, loop: asyncio.AbstractEventLoop) -> _Batcher:
        """The batcher of ``client`` on ``loop`` (made on first use)."""
        try:
            per_loop = cls._registry.get(client)
            if per_loop is None:
                per_loop = cls._registry[client] = weakref.WeakKeyDictionary()
        except TypeError:  # a client that cannot be weakly referenced: its own batcher
            return cls(client)
        batcher = per_loop.get(loop)
        if batcher is None:
            batcher = per_loop[loop] = cls(client)
        return batcher

    def submit(self, call: Call[Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = loop.create_future()
        self.pending.append((call, fut))
        if not self.flushing:
            self.flushing = True
            loop.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._send(batch)
        finally:
            self.flushing = False

    async def _send(self, batch: list[tuple[Call[Any], asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:  # alone: redis-py's own path (its retry on a stale connection)
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
            # One timer for the whole batch (the connection's socket timeout), not one
            # armed and cancelled per reply: math.inf tells redis-py not to arm its own.
            async with asyncio.timeout(conn.socket_timeout):
                for _ in batch:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except rx.ResponseError as exc:  # one script's error; the stream stays
                        replies.append(exc)  # in sync
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
    """Drives operations on ``redis.asyncio`` clients (each call on its owner's client and
    guard, as :class:`SyncRunner`), coalescing concurrent calls on ``guard``'s client."""

    #: ``StepIO`` of ``run_steps``: ``call`` and ``sleep`` return awaitables.
    blocking = False

    def __init__(self, guard: StoreGuard, *, auto_pipeline: bool = True,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.client = guard.client
        self.guard = guard
        self.sleep = sleep
        self.auto_pipeline = auto_pipeline
        # The last (client, loop) -> batcher looked up: the hot path skips the registry.
        self._last: tuple[Any, asyncio.AbstractEventLoop | None, _Batcher | None] = (
            None, None, None)

    def _batcher(self, client: Any) -> _Batcher:
        loop = asyncio.get_running_loop()
        last_client, last_loop, batcher = self._last
        if last_client is client and last_loop is loop and batcher is not None:
            return batcher
        batcher = _Batcher.of(client, loop)
        self._last = (client, loop, batcher)
        return batcher

    async def call(self, call: Call[T]) -> T:
        guard = call.owner or self.guard
        if guard.skip():
            return guard.fallback(call)
        observe = call.observe
        sent = guard.clock() if observe is not None else 0.0
        try:
            if self.auto_pipeline:
                batcher = self._batcher(guard.client)
                reply = await batcher.submit(call, asyncio.get_running_loop())
            else:
                reply = await run_async(guard.client, call.script, call.keys, call.args)
        except (TimeoutError, rx.RedisError, OSError) as exc:
            if unavailable(exc):
                return guard.fallback(call, exc)
            _abort(call)
            raise store_error(f"{call.script.name}.lua", exc) from exc
        except BaseException:           # cancelled while in flight: its outcome is unknown
            _abort(call)
            raise
        guard.succeeded()
        result = call.parse(reply)
        if observe is not None:
            observe(result, sent)
        return result

    async def command(self, cmd: Command[T]) -> T:
        """Run a plain command that has no failure policy (StoreUnavailable in an outage)."""
        try:
            reply = await self.client.execute_command(*cmd.args)
        except (TimeoutError, rx.RedisError, OSError) as exc:
            if unavailable(exc):
                self.guard.fallback(_POLICYLESS, exc)
                raise StoreUnavailable(f"store unreachable: {cmd.what}") from exc
            raise store_error(cmd.what, exc) from exc
        self.guard.succeeded()
        return cmd.parse(reply)

    def clock(self) -> float:
        """The guard's clock (the ``StepIO`` of ``run_steps`` times Invoke steps on it)."""
        return self.guard.clock()

    def drive(self, op: Op[T] | Command[T]) -> Coroutine[Any, Any, T]:
        """The coroutine that runs an operation to completion (steps: the one drive
        loop, ``run_steps``). A plain function handing back the coroutine to await, not
        an ``async def`` around it: one coroutine frame less per decision."""
        if isinstance(op, Call):
            return self.call(op)
        if isinstance(op, Command):
            return self.command(op)
        if isinstance(op, Done):
            return _value(op.value)
        return run_steps(op, self)


async def _value(value: T) -> T:
    return value
