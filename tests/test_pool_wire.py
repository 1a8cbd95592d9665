"""The pool packs its own pool.lua commands (distlb/_core/pool.py ``Wire``): the bytes must
be exactly redis-py's, and anything it does not pack itself is left to redis-py."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.connection import Connection

from distlb import Backend, LoadBalancer
from distlb._core.pool import Wire

SHA = "a" * 40
KEYS = ("p:{pool:x}", "p:{pool:x}:backends", "p:{pool:x}:conns")


def redis_py(keys: tuple[str, ...], args: tuple[Any, ...]) -> bytes:
    return b"".join(Connection().pack_command("EVALSHA", SHA, len(keys), *keys, *args))


@pytest.mark.parametrize("args", [
    (),
    ("admit", "n1", "0123abcd", 30000, "-", "10 20", 0, "1 2.5e-06 3", 0, "", 0, 0, "17.4"),
    ("release", "n1", "", 0.123456789, "1", 0.2, 1e-300, -0.0, 2 ** 70, b"\x00\xff", 0, ""),
    ("x" * 10_000,),
])
def test_packed_as_redis_py_packs(args: tuple[Any, ...]) -> None:
    wire = Wire(SHA)
    assert wire.pack(KEYS, args) == redis_py(KEYS, args)
    assert wire.pack(KEYS, args) == redis_py(KEYS, args)        # the cached head too
    assert wire.pack(KEYS[:1], args) == redis_py(KEYS[:1], args)


@pytest.mark.parametrize("args", [("n\u00e9",), (True,), (None,), (bytearray(b"x"),)])
def test_anything_else_is_left_to_redis_py(args: tuple[Any, ...]) -> None:
    assert Wire(SHA).pack(KEYS, args) is None
    assert Wire(SHA).pack(("k\u00e9",), ("a",)) is None


def test_a_non_ascii_backend_id_still_works(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    try:
        lb.add_backend(Backend("n\u00e9ud", "10.0.0.1:80"))
        assert lb.execute(lambda b: b.id) == "n\u00e9ud"
        assert lb.get_statistics().per_backend[0].requests == 1
    finally:
        lb.close()
