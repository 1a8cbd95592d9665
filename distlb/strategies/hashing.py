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


def fmix64(h: int) -> int:
    """MurmurHash3's 64-bit finalizer: every input bit flips about half the output bits.

    FNV-1a and CRC32 alone place similar keys ("user800", "user801", ...) close
    together, which skews a hash ring; this mix spreads them evenly.
    """
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64-bit, finished with ``fmix64`` (pure Python: the slowest of the three)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & MASK64
    return fmix64(h)


#: xxHash3, 64-bit (the default: fastest, best spread).
xxh3_64: HashFn = xxhash.xxh3_64_intdigest


def crc32_64(data: bytes) -> int:
    """CRC32 (zlib), spread to 64 bits by ``fmix64``."""
    return fmix64(zlib.crc32(data))


HASHES: dict[str, HashFn] = {"fnv1a": fnv1a_64, "xxhash": xxh3_64, "crc32": crc32_64}


def hash_function(name: str) -> HashFn:
    try:
        return HASHES[name]
    except (KeyError, TypeError):
        raise ConfigError("hash", f"must be one of {', '.join(HASHES)}; got {name!r}") from None
