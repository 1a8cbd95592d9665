"""The one fake clock of the tests: seconds that pass only when a test says so.

``clock()`` reads it (pass it as ``clock=``), ``clock.sleep(s)`` records the wait and
advances it (pass it as ``sleep=``), ``clock.now += s`` moves it by hand.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
