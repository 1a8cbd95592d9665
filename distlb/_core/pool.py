"""Load-balancer pools: plan ``pool.lua`` calls and parse replies."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distlb._core.ops import text
from distlb.errors import ConfigError
from distlb.strategies.base import check_id, check_metadata

log = logging.getLogger("distlb")

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def check_address(address: object) -> str:
    """``host:port``: a hostname, an IPv4 address, or ``[IPv6]``, and a port in 1..65535."""
    if not isinstance(address, str):
        raise ConfigError("address", f"must be a str 'host:port', got {type(address).__name__}")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError("address", f"must be 'host:port' with a port in 1..65535, got "
                                     f"{address!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError("address", f"bad IPv6 address in {address!r}") from None
    elif ":" in host:
        raise ConfigError("address", f"IPv6 addresses go in brackets: '[{host}]:{port}'")
    elif not _HOST.match(host):
        raise ConfigError("address", f"bad host in {address!r}")
    return address


@dataclass(frozen=True, slots=True)
class Record:
    """One readable registry record, as stored (``raw``, for compare-and-set) and parsed."""

    raw: str
    address: str
    weight: int
    healthy: bool
    metadata: dict[str, Any]
    since_us: int


@dataclass(slots=True)          # immutable by contract; not frozen: built per call (see ops)
class PoolState:
    """One ``pool.lua`` reply: the registry (None when unchanged), connections, statistics.

    ``version`` is the registry token ``"<epoch>.<version>"`` (``"0"``: no registry).
    """

    status: str
    version: str
    server_us: int
    records: dict[str, Record] | None
    conns: dict[str, int]
    stats: dict[str, float] | None      #: None on the hot path (acquire, release, renew)


def _pairs(flat: Any) -> list[tuple[Any, Any]]:
    items = list(flat)
    return list(zip(items[::2], items[1::2], strict=True))


def encode_record(address: str, weight: int, healthy: bool, metadata: Mapping[str, Any]) -> str:
    """The JSON text stored for a backend (keys sorted: the same record, the same text)."""
    return json.dumps({"address": address, "weight": weight, "healthy": healthy,
                       "metadata": dict(metadata)}, ensure_ascii=False, allow_nan=False,
                      sort_keys=True, separators=(",", ":"))


def decode_record(backend_id: str, raw: str, since: Any) -> Record:
    """Parse and validate one stored record; ``ValueError`` if it is not one we could write."""
    r = json.loads(raw)
    if not isinstance(r, dict):
        raise ValueError("not a JSON object")
    check_id(backend_id)
    address, weight, healthy = r.get("address"), r.get("weight"), r.get("healthy")
    check_address(address)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
        raise ValueError(f"bad weight {weight!r:.40}")
    if not isinstance(healthy, bool):
        raise ValueError(f"bad healthy flag {healthy!r:.40}")
    metadata = check_metadata(r.get("metadata", {}))
    try:
        since_us = int(text(since))
    except ValueError:
        since_us = 0        # unreadable join time: no slow start, the backend is still used
    return Record(raw, str(address), weight, healthy, metadata, since_us)


def _records(flat: Any) -> dict[str, Record]:
    items = list(flat)
    out = {}
    for k, v, since in zip(items[::3], items[1::3], items[2::3], strict=True):
        try:
            backend_id = text(k)
            out[backend_id] = decode_record(backend_id, text(v), since)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # A record this client cannot read (written by hand, or by another version)
            # is left out of the view: one bad record must not stop every call.
            log.warning("skipping unreadable backend record %r: %s", k, exc)
    return out


def _numbers(flat: Any, kind: type[int] | type[float]) -> dict[str, Any]:
    out = {}
    for k, v in _pairs(flat):
        try:
            value = kind(text(v))
        except (ValueError, UnicodeDecodeError):
            continue                       # not a number (written by hand): ignored
        if kind is float and not math.isfinite(value):
            continue
        out[text(k)] = value
    return out


def parse(reply: Any) -> PoolState:
    if len(reply) == 2:             # a hot op's short reply: "<token> <server_us> <status>"
        token, server_us, status = text(reply[0]).split(" ", 2)
        flat = reply[1]
        conns: dict[str, int] = {}
        if isinstance(flat, (bytes, str)):   # "<id> <count> ...": one element to read
            flat = text(flat).split()
        if flat:
            try:
                conns = {text(k): int(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            except ValueError:      # a count written by hand that is not a number: skip it
                conns = _numbers(flat, int)
        return PoolState(status, token, int(server_us), None, conns, None)
    records = _records(reply[3]) if int(reply[7]) else None
    return PoolState(text(reply[0]), text(reply[1]), int(text(reply[2])), records,
                     _numbers(reply[4], int),
                     _numbers(reply[5], float) if int(reply[6]) else None)


class Wire:
    """``pool.lua`` commands packed for the wire by the pool itself, as redis-py packs them.

    An ``execute`` makes two script calls with ~17 words each; redis-py's packer encodes
    every word through its generic encoder (type checks, a str encode each) on every call,
    about a fifth of the client's CPU per call. The pool's words are few kinds: the
    EVALSHA, the SHA, the key count and the keys are the same on every call, so they are
    packed once per key set (``head``); the rest (op, ids, numbers) are packed here with
    the same bytes redis-py would write. Only ASCII text is packed here (identical under
    any ASCII-compatible client ``encoding``); any other word leaves the command to
    redis-py (``pack`` returns None). Pure: no client, no I/O.
    """

    __slots__ = ("_heads", "_segs", "sha")

    #: Words whose packed form is remembered (op names, backend ids, the registry token,
    #: the TTL...): bounded, cleared when full (lease ids, never seen twice, pass through).
    MAX_SEGMENTS = 1024

    def __init__(self, sha: str) -> None:
        self.sha = sha
        self._heads: dict[tuple[str, ...], tuple[int, bytes]] = {}
        # a str or int word -> its RESP bulk string, or None for a word redis-py must pack
        self._segs: dict[str | int, bytes | None] = {}

    def _head(self, keys: tuple[str, ...]) -> tuple[int, bytes] | None:
        words = ["EVALSHA", self.sha, str(len(keys)), *keys]
        if not all(w.isascii() for w in words):
            return None
        packed = b"".join(b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words)
        self._heads[keys] = head = (len(words), packed)
        return head

    @staticmethod
    def _seg(a: Any) -> bytes | None:
        t = type(a)
        if t is str:
            if not a.isascii():
                return None
            b = a.encode()
        elif t is int:
            b = b"%d" % a
        elif t is float:
            b = repr(a).encode()      # redis-py's own rule for numbers
        elif t is bytes:
            b = a
        else:                         # bool, subclasses...: redis-py decides
            return None
        return b"$%d\r\n%s\r\n" % (len(b), b)

    def pack(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> bytes | None:
        """``EVALSHA sha len(keys) *keys *args`` as RESP, or None (redis-py packs it)."""
        head = self._heads.get(keys) or self._head(keys)
        if head is None:
            return None
        n, packed = head
        out = [b"*%d\r\n" % (n + len(args)), packed]
        segs = self._segs
        for a in args:
            t = type(a)
            if t is str or t is int:          # hashable, and never equal across the two
                seg = segs.get(a, b"")
                if seg == b"":
                    seg = self._seg(a)
                    if len(segs) >= self.MAX_SEGMENTS:
                        segs.clear()
                    segs[a] = seg
            else:
                seg = self._seg(a)
            if seg is None:
                return None
            out.append(seg)
        return b"".join(out)
