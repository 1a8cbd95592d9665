"""Load-balancer pools: plan ``pool.lua`` calls and parse replies."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from distlb._core.ops import Call, text
from distlb._scripts import Arg, script
from distlb.errors import ConfigError

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
class PoolState:
    """One ``pool.lua`` reply: the registry (None when unchanged), connections, statistics."""

    status: str
    version: int
    server_us: int
    records: dict[str, dict[str, Any]] | None
    conns: dict[str, int]
    stats: dict[str, float] | None      #: None on the hot path (acquire, release, renew)


def _pairs(flat: Any) -> list[tuple[Any, Any]]:
    items = list(flat)
    return list(zip(items[::2], items[1::2], strict=True))


def parse(reply: Any) -> PoolState:
    records = None
    if reply[3]:
        records = {}
        for k, v in _pairs(reply[3]):
            record = json.loads(text(v))
            if not isinstance(record.get("metadata"), dict):   # Lua may turn {} into []
                record["metadata"] = {}
            records[text(k)] = record
    return PoolState(text(reply[0]), int(reply[1]), int(text(reply[2])), records,
                     {text(k): int(v) for k, v in _pairs(reply[4])},
                     {text(k): float(text(v)) for k, v in _pairs(reply[5])}
                     if int(reply[6]) else None)


def plan(op: str, keys: tuple[str, ...], args: list[Arg], *, known_version: int, name: str,
         channel: str, fallback: Callable[[], PoolState]) -> Call[PoolState]:
    return Call(script("pool"), keys, (op, *args, known_version, name, channel), parse, fallback)


def pack_record(record: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(record), use_bin_type=True)  # type: ignore[no-any-return]
