"""Worker functions for tests/test_breaker_late_results.py, run in real child processes
(multiprocessing, spawn): only strings, numbers and multiprocessing events cross over."""

from __future__ import annotations

from typing import Any

from distlb import CircuitBreaker
from tests.workers import make_client


def slow_call_in_guard(target: dict[str, Any], prefix: str, cfg: dict[str, Any],
                       go: Any, out: Any) -> None:
    """One slow call inside ``guard()``, admitted while closed on the fast path; it fails
    only when ``go`` is set. Then one more call, admitted after, that fails too."""
    cb = CircuitBreaker(make_client(target), "backend", prefix=prefix, **cfg)
    cb.can_attempt()                 # learn the state once: the guard below needs no trip
    try:
        with cb.guard() as attempt:
            out.put({"admitted": attempt.source, "period": attempt.period})
            if not go.wait(60):
                out.put({"error": "never released"})
                return
            raise ConnectionError("the slow call finally failed")
    except ConnectionError:
        pass
    st = cb.state()
    out.put({"late": (st.state, st.failures)})
    fresh = cb.can_attempt()
    cb.record_failure(fresh)
    st = cb.state()
    out.put({"fresh": (st.state, st.failures, fresh.period)})
    cb.close()
