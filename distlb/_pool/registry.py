"""A pool's registry operations: add, change (compare-and-set), remove a backend.

The records are JSON in the ``:backends`` hash, which ``pool.lua`` stores but never
decodes: a change is built here from the local view and stored only if the stored
record is still the one it was built from (``patch``). The pool hands this unit the
one thing it needs to reach the store, ``plan(op, args)`` (a ``pool.lua`` call whose
reply the pool applies to its view before this unit reads the view again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from distlb._core import pool as pl
from distlb._core.ops import Call, Steps
from distlb._pool.view import PoolView
from distlb._validate import integer
from distlb.errors import ConfigError, DistlbError, StoreError
from distlb.strategies.base import Backend, check_id, check_metadata

#: ``plan(op, args)``: one ``pool.lua`` call (registry ops need the store: no fallback).
Plan = Callable[[str, list[Any]], Call[pl.PoolState]]


class BackendExists(DistlbError, LookupError):
    """``add_backend`` with an id the pool already has."""


class UnknownBackend(DistlbError, LookupError):
    """An operation named a backend the pool does not have."""


class Registry:
    """The registry operations of one pool: each validates its arguments (``ConfigError``
    before anything reaches the store) and is an operation the pool's runner drives."""

    #: Compare-and-set attempts of one health or weight change racing other changes.
    patch_attempts = 8

    def __init__(self, pool_name: str, view: PoolView, plan: Plan) -> None:
        self.pool_name = pool_name
        self._view = view
        self._plan = plan

    def add(self, backend: Backend) -> Steps[None]:
        if not isinstance(backend, Backend):
            raise ConfigError("backend", "must be a distlb.Backend")
        pl.check_address(backend.address)
        if not isinstance(backend.healthy, bool):
            raise ConfigError("healthy", "must be True or False")
        check_id(backend.id)
        raw = pl.encode_record(backend.address, backend.weight, backend.healthy,
                               check_metadata(backend.metadata))
        state: pl.PoolState = yield self._plan("add", [raw, backend.id])
        if state.status == "exists":
            raise BackendExists(f"pool {self.pool_name!r} already has a backend "
                                f"{backend.id!r}")

    def patch(self, backend_id: str, *, weight: int | None = None,
              healthy: bool | None = None,
              metadata: dict[str, Any] | None = None) -> Steps[None]:
        """Change a record: the client builds the new record from its view and the script
        stores it only if the stored one is still the one it was built from (the script
        never decodes records). A conflicting reply carries the fresh records: try again,
        at most ``patch_attempts`` times (then ``StoreError``)."""
        check_id(backend_id, "backend_id")
        view = self._view
        for _ in range(self.patch_attempts):
            rec = view.record(backend_id)
            if rec is None:                     # not in this view: read the registry
                yield self._plan("snapshot", [])
                rec = view.record(backend_id)
                if rec is None:
                    raise UnknownBackend(f"pool {self.pool_name!r} has no (readable) "
                                         f"backend {backend_id!r}")
            new_healthy = rec.healthy if healthy is None else healthy
            raw = pl.encode_record(rec.address, rec.weight if weight is None else weight,
                                   new_healthy, rec.metadata if metadata is None else metadata)
            state: pl.PoolState = yield self._plan(
                "patch", [backend_id, raw, rec.raw, int(new_healthy and not rec.healthy)])
            if state.status == "ok":
                return
            if state.status == "unknown":
                raise UnknownBackend(f"pool {self.pool_name!r} has no backend "
                                     f"{backend_id!r}")
            # "conflict": the reply refreshed the view; a record still the same one is
            # unreadable now: read it again.
            view.forget(backend_id, rec)
        raise StoreError(f"pool {self.pool_name!r}: backend {backend_id!r} changed "
                         f"concurrently {self.patch_attempts} times; not updated")

    def set_health(self, backend_id: str, healthy: bool) -> Steps[None]:
        if not isinstance(healthy, bool):
            raise ConfigError("healthy", "must be True or False")
        return self.patch(backend_id, healthy=healthy)

    def set_weight(self, backend_id: str, weight: int) -> Steps[None]:
        return self.patch(backend_id, weight=integer("weight", weight, low=0, high=1_000_000))

    def set_metadata(self, backend_id: str, metadata: Mapping[str, Any]) -> Steps[None]:
        return self.patch(backend_id, metadata=check_metadata(metadata))

    def remove(self, backend_id: str) -> Steps[None]:
        check_id(backend_id, "backend_id")
        state: pl.PoolState = yield self._plan("remove", [backend_id])
        if state.status == "unknown":
            raise UnknownBackend(f"pool {self.pool_name!r} has no backend {backend_id!r}")
