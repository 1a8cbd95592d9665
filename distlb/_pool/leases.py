"""A pool's leases as this process knows them: held, to give back, to release later.

* held: lease members ("<id>|<lease>") this process holds, renewed in the background;
  a forked child drops its parent's (it must not keep them alive).
* ghosts: leases whose acquire (or release) got no answer. The script may have run, so
  each is given back by a later call that reaches the store (no extra round trip).
* pending: releases deferred by ``release="deferred"``, sent by the next call or the
  flusher.

Every pool.lua call takes what it carries with ``trailing()`` and reports back with
``answered()`` or ``unanswered()``; a call that carries releases is in flight from
``trailing()`` until ``landed()``, so ``flush_releases()`` can wait for releases another
thread or task (the background flusher) took just before it (``in_flight``/``flying``).
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
import weakref
from collections.abc import Iterator

#: Lease members given back per call, and remembered at most, after unanswered calls.
GHOSTS_PER_CALL = 32
MAX_GHOSTS = 4096
#: Deferred releases (``release="deferred"``) carried per script call.
RELEASES_PER_CALL = 32

#: One deferred release: the "release" op's own arguments
#: (backend id, lease id or "", latency ms, "1" if failed else "0", alpha).
Release = tuple[str, str, str, str, str]


def _lease_ids() -> Iterator[str]:
    """Lease ids unique fleet-wide: a random per-process prefix and a counter (cheaper than
    a uuid4 per lease). A forked child gets a new prefix (see ``os.register_at_fork``)."""
    prefix = uuid.uuid4().hex[:16]
    return (f"{prefix}{n:x}" for n in itertools.count())


_LEASE_IDS = [_lease_ids()]


#: Every book of this process, so that a forked child starts with clean ones.
_BOOKS: weakref.WeakSet[LeaseBook] = weakref.WeakSet()


def _in_child() -> None:
    """A forked child gets new lease ids, and neither renews nor releases its parent's
    leases (the parent does: a release sent twice would count its statistics twice)."""
    _LEASE_IDS[0] = _lease_ids()
    for book in list(_BOOKS):
        book.held.clear()
        book.pending.clear()
        book._flying.clear()      # the parent's calls: never landing here


os.register_at_fork(after_in_child=_in_child)


def new_lease_id() -> str:
    return next(_LEASE_IDS[0])


class LeaseBook:
    """The lease bookkeeping of one pool object (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held: dict[str, float] = {}      # member -> local start (s)
        self.ghosts: dict[str, None] = {}     # insertion-ordered: the oldest go first
        self.pending: list[Release] = []
        # Calls carrying deferred releases, taken by trailing() and not landed yet:
        # ticket -> None (tickets only grow, so "taken before" is "a smaller ticket").
        self._flying: dict[int, None] = {}
        self._tickets = itertools.count(1)
        self._pid = os.getpid()
        _BOOKS.add(self)

    def hold(self, member: str, started_s: float) -> None:
        with self._lock:
            self.held[member] = started_s

    def let_go(self, member: str, release: Release | None = None) -> None:
        """Stop renewing ``member``; with ``release``, queue it (deferred)."""
        with self._lock:
            self.held.pop(member, None)
            if release is not None:
                self.pending.append(release)

    def to_renew(self) -> list[str]:
        with self._lock:
            if self._pid != os.getpid():   # a forked child must not keep its parent's leases
                self.held.clear()
                self._pid = os.getpid()
            return list(self.held)

    def trailing(self) -> tuple[list[Release], list[str], int]:
        """What the next call carries: deferred releases (taken) and ghosts (kept until
        ``answered``), and its ticket (0 when it carries no release): the caller reports
        ``landed(ticket)`` however the call ends."""
        if not self.ghosts and not self.pending:
            return [], [], 0
        with self._lock:
            ghosts = list(itertools.islice(self.ghosts, GHOSTS_PER_CALL))
            releases = self.pending[:RELEASES_PER_CALL]
            del self.pending[:RELEASES_PER_CALL]
            ticket = 0
            if releases:
                ticket = next(self._tickets)
                self._flying[ticket] = None
        return releases, ghosts, ticket

    def landed(self, ticket: int) -> None:
        """The call of ``ticket`` ended: answered, unanswered (its releases became ghosts)
        or failed. Idempotent; 0 is no ticket."""
        if ticket:
            with self._lock:
                self._flying.pop(ticket, None)

    def in_flight(self) -> int:
        """The newest ticket in flight now (0: none): ``flying(t)`` then says whether any
        call that took releases up to then has not landed yet."""
        with self._lock:
            return max(self._flying, default=0)

    def flying(self, upto: int) -> bool:
        """Whether a call with a ticket <= ``upto`` is still in flight."""
        if not self._flying:
            return False
        with self._lock:
            return any(t <= upto for t in self._flying)

    def answered(self, ghosts: list[str]) -> None:
        if ghosts:
            with self._lock:
                for member in ghosts:
                    self.ghosts.pop(member, None)

    def unanswered(self, releases: list[Release], member: str | None) -> None:
        """A call got no answer: it may have run or not, so its leases (the one it took or
        kept, and those its deferred releases returned) are given back by a later call.
        The outcomes of those releases are lost rather than recorded twice."""
        lost = [f"{r[0]}|{r[1]}" for r in releases if r[1]]
        if member is not None:
            lost.append(member)
        if lost:
            with self._lock:
                for m in lost:
                    self.ghosts[m] = None
                while len(self.ghosts) > MAX_GHOSTS:   # the oldest expire by TTL anyway
                    self.ghosts.pop(next(iter(self.ghosts)))
