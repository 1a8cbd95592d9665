"""Read distlb's state for people: SCAN every primary, decode each entity's keys.

Used by ``distlb inspect``. Read-only: it never changes a key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.cluster

from distlb import DEFAULT_PREFIX, admin


@dataclass
class KeyState:
    key: str
    part: str
    type: str
    ttl_s: float | None
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0


@dataclass
class Entity:
    kind: str
    name: str
    keys: list[KeyState]
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "kind_label": admin.kind_of(self.kind).label,
                "name": self.name, "summary": self.summary,
                "keys": [asdict(k) for k in self.keys]}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 key``, ``3 keys``: a count with its noun in the right number."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def connect(url: str, **kwargs: Any) -> Any:
    """A client for ``url``: a ``RedisCluster`` when the server is a cluster node."""
    r = redis.Redis.from_url(url, **kwargs)
    if r.info("cluster").get("cluster_enabled"):
        r.close()
        return redis.cluster.RedisCluster.from_url(url, **kwargs)
    return r


def node_clients(client: Any) -> Iterator[Any]:
    if isinstance(client, redis.cluster.RedisCluster):
        for node in client.get_primaries():
            yield client.get_redis_connection(node)
    else:
        yield client


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def scan(client: Any, prefix: str = DEFAULT_PREFIX, count: int = 500) -> list[Entity]:
    """Every distlb entity under ``prefix``, from SCAN on each primary."""
    grouped: dict[tuple[str, str], list[KeyState]] = {}
    for node in node_clients(client):
        for raw in node.scan_iter(match=f"{prefix}:{{*", count=count):
            key = _s(raw)
            ref = admin.parse_key(key)
            if ref is None or ref.prefix != prefix:
                continue
            grouped.setdefault((ref.kind, ref.name), []).append(_read_key(node, key, ref.part))
    now_us = _server_time_us(client)
    entities = [Entity(kind, name, sorted(ks, key=lambda k: k.part))
                for (kind, name), ks in sorted(grouped.items())]
    for e in entities:
        e.summary = summarize(e, now_us)
    return entities


def _server_time_us(client: Any) -> int:
    node = next(node_clients(client))
    sec, usec = node.time()
    return int(sec) * 1_000_000 + int(usec)


# The member pool.lua keeps in a pool's leases zset so the zset (and its TTL) outlives its
# leases; it is never a lease (lua/pool.lua, KEYS[4]).
_KEEP = "~keep"


def _read_key(node: Any, key: str, part: str) -> KeyState:
    kind = _s(node.type(key))
    ttl_ms = node.pttl(key)
    ks = KeyState(key, part, kind, ttl_ms / 1000 if ttl_ms >= 0 else None)
    if kind == "hash":
        raw = node.hgetall(key)
        ks.fields = {_s(k): _s(v) for k, v in raw.items()}   # registry records are JSON
        ks.size = len(ks.fields)
    elif kind == "zset":
        ks.size = node.zcard(key)
        if part == "leases" and node.zscore(key, _KEEP) is not None:
            ks.size -= 1    # pool.lua's "~keep" member (score +inf) keeps the zset: no lease
    return ks


def _bucket_now(f: dict[str, str], now_us: int) -> float:
    """Tokens in a bucket hash at ``now_us``, refilled as the Lua script would."""
    tokens, ts = float(f.get("tokens", "nan")), float(f.get("ts_us", "nan"))
    rate, burst = float(f.get("rate", "nan")), float(f.get("burst", "nan"))
    if math.isnan(tokens + ts + rate + burst):
        return math.nan
    return min(burst, tokens + max(0, now_us - ts) * rate / 1e6)


_PART_LABELS = {"c": "client", "cb": "client bandwidth", "bb": "backend bandwidth",
                "rl": "pool limit", "rl:c": "client limit"}


def part_label(part: str) -> str:
    """``c:ali%3Ace`` -> ``client ali:ce``: the key part as a person reads it."""
    if part.startswith("rl:c:"):
        return f"client {admin.decode_name(part[5:])} limit"
    if part.startswith(("rl:cb:", "rl:bb:")):
        return part_label(part[3:])
    kind, sep, ident = part.partition(":")
    if not sep:
        return part or "bucket"
    return f"{_PART_LABELS.get(kind, kind)} {admin.decode_name(ident)}"


def _healthy(record: str) -> bool:
    """Whether a registry record (JSON) says healthy; an unreadable one does not."""
    try:
        return json.loads(record).get("healthy") is True
    except (ValueError, AttributeError, RecursionError):
        return False


def _config_value(name: str, raw: str) -> str:
    """A stored pool setting as people write it: a limit ``"200 200"`` as ``200/s burst 200``
    (anything else, or a value that does not parse, as stored)."""
    if name in ("rate_limit", "client_limit") and len(raw.split()) == 2:
        from distlb.shaping import Limit
        try:
            return str(Limit(*(float(x) for x in raw.split())))
        except ValueError:       # ConfigError too: written by hand
            return raw
    return raw


def summarize(e: Entity, now_us: int) -> str:
    """One human line per entity."""
    parts = []
    for k in e.keys:
        f = k.fields
        if e.kind == "pool" and k.part == "config":
            shown = [f"{n}={_config_value(n, v)}" for n, v in sorted(f.items())
                     if n not in ("version", "updated_by", "updated_at_us")]
            parts.append(f"config v{f.get('version', '?')}: " + (", ".join(shown) or "-"))
        elif e.kind == "pool" and k.part == "config:history":
            parts.append(plural(k.size, "config change") + " in history")
        elif "tokens" in f:
            label = part_label(k.part)
            parts.append(f"{label}: {_bucket_now(f, now_us):.1f}/{float(f['burst']):g} tokens "
                         f"@ {float(f['rate']):g}/s")
        elif "next_us" in f:
            wait = max(0.0, (float(f["next_us"]) - now_us) / 1e6)
            queued = wait * float(f["rate"])
            parts.append(f"queued {queued:.1f}/{float(f['capacity']):g} "
                         f"@ {float(f['rate']):g}/s (wait {wait * 1000:.0f} ms)")
        elif "state" in f:
            text = f["state"].replace("_", "-")
            if f.get("forced"):
                text += f" (forced {f['forced']})"
            text += ", " + plural(int(float(f.get("failures", "0"))), "failure")
            if f["state"] == "half_open":
                text += ", " + plural(int(float(f.get("successes", "0"))), "probe success",
                                      "probe successes")
            if "baseline" in f:
                text += f", baseline error rate {float(f['baseline']):.3f}"
            parts.append(text)
        elif k.part == "probes":
            parts.append(plural(k.size, "probe") + " in flight")
        elif k.part == "limits":
            parts.append("shared limits: " + ", ".join(
                f"{part_label(n)} {float(v.split()[0]):g}/s burst {float(v.split()[1]):g}"
                for n, v in f.items()))
        elif k.part == "queue":
            parts.append(f"{k.size} waiting")
        elif e.kind == "rb" and not k.part:
            deposits = sum(int(v) for n, v in f.items() if n.endswith(":d"))
            withdrawals = sum(int(v) for n, v in f.items() if n.endswith(":w"))
            parts.append(f"{plural(deposits, 'request')}, {plural(withdrawals, 'retry', 'retries')}"
                         " in the window")
        elif k.part == "backends":
            up = sum(1 for v in f.values() if _healthy(v))
            parts.append(f"{up}/{plural(len(f), 'backend')} healthy")
        elif k.part == "conns":
            parts.append("connections " + " ".join(f"{n}={v}" for n, v in sorted(f.items())))
        elif k.part == "leases":
            parts.append(plural(k.size, "lease"))
        elif k.part == "prio":
            levels = sorted({n.partition(":")[0] for n in f if n.endswith(
                (":admitted", ":denied"))}, key=lambda n: -int(n) if n.isdigit() else 0)
            parts.append("priority admitted/denied " + ", ".join(
                f"{n}: {f.get(n + ':admitted', '0')}/{f.get(n + ':denied', '0')}"
                for n in levels))
        elif k.part == "stats":
            total = sum(int(float(v)) for n, v in f.items() if n.endswith(":requests"))
            parts.append(plural(total, "request") + " served")
    if e.kind == "pool" and not any(k.part == "backends" for k in e.keys):
        parts.insert(0, "no backends")     # the registry hash goes when its last entry does
    if not parts:   # never an empty STATE: at least say what is stored
        parts.append(", ".join(f"{k.part or 'main'} ({k.type})" for k in e.keys))
    return "; ".join(parts)


def human_ttl(ttl_s: float | None) -> str:
    if ttl_s is None:
        return "none"
    if ttl_s < 60:
        return f"{ttl_s:.1f}s"
    if ttl_s < 3600:
        return f"{ttl_s / 60:.0f}m"
    if ttl_s < 86400:
        return f"{ttl_s / 3600:.1f}h"
    return f"{ttl_s / 86400:.1f}d"
