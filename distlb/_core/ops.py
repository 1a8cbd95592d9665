"""Steps an operation yields, and the helpers that decode replies."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from distlb._scripts import Arg, Script

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
    #: The command as packed for the wire, filled once by the asyncio batcher
    #: (calls are reused, so packing is paid once, not per request).
    packed: list[bytes] = field(default_factory=list, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (local time; only used for waiting, never for shared state)."""

    seconds: float


#: An operation: yields steps, receives replies (parsed Call results, or None after a Sleep).
#: An operation that is one script call is just that ``Call``: the hot path then
#: skips the generator machinery.
Steps = Generator[Call[Any] | Sleep, Any, R]
Op = Steps[R] | Call[R]


def text(value: Any) -> str:
    """A reply string, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def num(value: Any) -> float:
    """A reply number sent as a string (Lua truncates numbers in replies)."""
    return float(text(value))
