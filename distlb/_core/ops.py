"""Steps an operation yields, and the helpers that decode replies."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from distlb._core.guard import StoreGuard
from distlb._core.scripts import Arg, Script

T = TypeVar("T")
R = TypeVar("R")


#: The step and result classes below are immutable by contract but not ``frozen``: a frozen
#: dataclass sets each field through ``object.__setattr__``, about 3 us more per object on
#: a loaded 2-core machine, and ``execute`` builds several per call. Never assign to them.
@dataclass(slots=True)
class Call(Generic[T]):
    """Run ``script`` with ``keys`` and ``args``; ``parse`` turns the raw reply into a result.

    ``fallback`` gives the result to use when the store cannot be reached; it
    encodes the primitive's failure policy (fail open, fail closed, local twin).
    """

    script: Script
    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    parse: Callable[[Any], T]
    fallback: Callable[[], T]
    #: The primitive whose call this is (its guard: the client to run it on, the failure
    #: policy's bookkeeping). A pool that runs its shaper's admission runs it on the
    #: shaper's client and guard. ``None``: the driving runner's own.
    owner: StoreGuard | None = None
    #: Told each result the store gave (not fallbacks) and the owner's clock read just
    #: before the call left (seconds): no later than the moment the script ran, so a
    #: time derived from it errs early. Token buckets remember denials with it.
    observe: Callable[[T, float], None] | None = None
    #: The command as packed for the wire, filled once by the asyncio batcher
    #: (calls are reused, so packing is paid once, not per request).
    packed: list[bytes] = field(default_factory=list, compare=False, repr=False)
    #: Told when the call ends without ``parse`` or ``fallback`` running (an error no
    #: failure policy hides, a cancelled task): a pool's deferred releases in flight stop
    #: being waited for. ``None`` for most calls.
    aborted: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (local time; only used for waiting, never for shared state)."""

    seconds: float


@dataclass(slots=True)
class Done(Generic[T]):
    """An operation already decided without I/O (e.g. a breaker known to be closed)."""

    value: T


@dataclass(slots=True)
class Invoke:
    """Call the user's function: the sync shell calls it, the asyncio shell awaits it.

    The reply is an :class:`Outcome`.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(slots=True)
class Outcome:
    """What an :class:`Invoke` step produced: a value or an exception, and how long it took."""

    value: Any
    error: BaseException | None
    duration_s: float


#: An operation: yields steps, receives replies (parsed Call results, or None after a Sleep).
#: An operation that is one script call is just that ``Call``: the hot path then
#: skips the generator machinery.
Steps = Generator[Call[Any] | Sleep | Invoke, Any, R]
Op = Steps[R] | Call[R] | Done[R]


def text(value: Any) -> str:
    """A reply string, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def num(value: Any) -> float:
    """A reply number sent as a string (Lua truncates numbers in replies)."""
    return float(text(value))


def steps(op: Op[R]) -> Steps[R]:
    """Any operation as steps, for ``yield from`` inside a larger operation."""
    if isinstance(op, Done):
        return op.value
    if isinstance(op, Call):
        return (yield op)  # type: ignore[no-any-return]
    return (yield from op)


class StepIO(Protocol):
    """What a runner does for :func:`run_steps`: the I/O of one step.

    A ``blocking`` runner (sync) returns each result from ``call`` and ``sleep`` and
    its loop never suspends (it drives :func:`run_steps` with one ``send(None)``); the
    asyncio runner returns awaitables, which the loop awaits, and awaits what the
    user's function returns when it is awaitable.
    """

    #: True: ``call``/``sleep`` return their results (the sync runner); False: awaitables.
    blocking: bool

    def clock(self) -> float: ...

    def call(self, call: Call[Any], /) -> Any: ...

    def sleep(self, seconds: float, /) -> Any: ...


async def run_steps(op: Steps[R], io: StepIO) -> R:
    """The one drive loop of both runners: run ``op``'s steps to its return value.

    Each step goes to ``io`` (a Call's parsed result or a Sleep's None is sent back
    into the operation; an Invoke's :class:`Outcome`, timed on ``io.clock``). An error
    while calling or sleeping (or a BaseException out of the user's function) is
    thrown into the operation instead, so it can clean up shared state (leave a queue)
    before it ends. Pure: no I/O of its own, no event loop needed (see :class:`StepIO`).
    """
    blocking = io.blocking
    reply: Any = None
    error: BaseException | None = None
    try:
        while True:
            step = op.throw(error) if error is not None else op.send(reply)
            error = None
            try:
                if isinstance(step, Sleep):
                    done = io.sleep(step.seconds)
                    if not blocking:
                        await done
                    reply = None
                elif isinstance(step, Invoke):
                    start = io.clock()
                    try:
                        value = step.fn(*step.args, **step.kwargs)
                        if not blocking and inspect.isawaitable(value):
                            value = await value
                    except Exception as exc:
                        reply = Outcome(None, exc, io.clock() - start)
                    else:
                        reply = Outcome(value, None, io.clock() - start)
                else:
                    reply = io.call(step) if blocking else await io.call(step)
            except BaseException as exc:
                error = exc
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
