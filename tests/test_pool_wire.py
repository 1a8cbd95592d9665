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


@pytest.mark.parametrize("ids", [("n1", "n2"), ("n 1", "n2")], ids=["plain", "whitespace"])
def test_hot_replies_carry_the_counts_as_one_string(r: redis.Redis, prefix: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    ids: tuple[str, str]) -> None:
    """Issue #12: a hot reply's connection counts are one bulk string ("<id> <n> ..."), so
    a client parses three reply elements whatever the pool's size; an id with whitespace
    gets the flat array. Either way the counts reach the view."""
    from distlb._core import pool as pl

    replies: list[Any] = []
    real = pl.parse

    def recording(reply: Any) -> pl.PoolState:
        replies.append(reply)
        return real(reply)

    monkeypatch.setattr(pl, "parse", recording)
    lb = LoadBalancer(r, "counts", prefix=prefix, breaker=None)
    try:
        for i, bid in enumerate(ids):
            lb.add_backend(Backend(bid, f"10.0.0.{i + 1}:80"))
        with lb.connection() as held:
            replies.clear()
            seen = lb.execute(lambda b: (b.id, {x.id: x.active_connections
                                                for x in lb.known_backends}))
        chosen, counts = seen
        expected = {bid: 0 for bid in ids}
        expected[held.id] += 1
        expected[chosen] += 1
        assert counts == expected
        hot = [x for x in replies if len(x) == 2]
        assert hot, replies
        busy = hot[0][1]          # the admit's reply: two leases held
        if " " in ids[0]:
            assert isinstance(busy, list) and len(busy) == 2 * len([n for n in
                                                                    expected.values() if n])
        else:
            assert isinstance(busy, (bytes, str)), busy
            text = busy.decode() if isinstance(busy, bytes) else busy
            words = text.split()
            assert dict(zip(words[::2], map(int, words[1::2]), strict=True)) == {
                k: v for k, v in expected.items() if v}
    finally:
        lb.close()
