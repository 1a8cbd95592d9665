"""Steps an operation yields, and the helpers that decode replies."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from distlb._core.guard import StoreGuard
from distlb._core.scripts import Arg, Script

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (local time; only used for waiting, never for shared state)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """An operation already decided without I/O (e.g. a breaker known to be closed)."""

    value: T


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call the user's function: the sync shell calls it, the asyncio shell awaits it.

    The reply is an :class:`Outcome`.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
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
