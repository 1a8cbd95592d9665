"""Hash functions for the hashing strategies: FNV-1a, xxHash, CRC32, all 64-bit keys.

Every process must hash alike, so the choice is explicit (``hash="xxhash"``
by default) and never depends on what happens to be installed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import xxhash

from distlb.errors import ConfigError

HashFn = Callable[[bytes], int]
MASK64 = (1 << 64) - 1
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64-bit (pure Python: the slowest of the three, fine for short keys)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & MASK64
    return h


def xxh3_64(data: bytes) -> int:
    """xxHash3, 64-bit (the default: fastest, best spread)."""
    return xxhash.xxh3_64_intdigest(data)


def crc32_64(data: bytes) -> int:
    """CRC32, spread to 64 bits by a multiplicative mix (CRC32 alone clusters similar keys)."""
    return (zlib.crc32(data) * 0x9E3779B97F4A7C15) & MASK64


HASHES: dict[str, HashFn] = {"fnv1a": fnv1a_64, "xxhash": xxh3_64, "crc32": crc32_64}


def hash_function(name: str) -> HashFn:
    try:
        return HASHES[name]
    except (KeyError, TypeError):
        raise ConfigError("hash", f"must be one of {', '.join(HASHES)}; got {name!r}") from None
