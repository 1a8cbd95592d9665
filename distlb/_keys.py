"""The one place that builds Redis key names.

Layout: ``<prefix>:{<kind>:<name>}[:<part>[:<sub>]]``.

* The braces are a Redis Cluster *hash tag*: every key of one entity (a bucket,
  a shaper with all its clients, a priority queue) hashes to the same slot, so
  each Lua script touches a single slot and stays atomic on a cluster.
* User-supplied names are percent-encoded: every character outside
  ``[A-Za-z0-9._~@+=-]`` (``%``, ``{``, ``}``, ``:``, spaces, non-ASCII ...) becomes
  ``%XX`` of its UTF-8 bytes. The encoding is injective, so two different names
  can never produce the same key, and no name can close the hash tag early or
  add a ``:part`` of its own. Common names (``api``, ``user-42``) read as-is in
  ``redis-cli``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from distlb.errors import ConfigError

DEFAULT_PREFIX = "distlb"
MAX_NAME_CHARS = 256
_SAFE = "._~@+=-"  # besides ASCII letters and digits, which quote() always keeps
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._~@+=:-]{1,64}$")

#: Entity kinds and what they hold; the CLI uses this to label keys it finds.
KINDS = {
    "tb": "token bucket",
    "lb": "leaky bucket",
    "ts": "traffic shaper",
    "pq": "priority limiter",
    "cb": "circuit breaker",
    "rb": "retry budget",
    "pool": "load balancer pool",
}


def escape(value: str, field: str = "name") -> str:
    """Validate a user-supplied name and percent-encode it for use inside a key."""
    if not isinstance(value, str):
        raise ConfigError(field, f"must be a str, got {type(value).__name__}")
    if not value:
        raise ConfigError(field, "must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise ConfigError(field, f"must be at most {MAX_NAME_CHARS} characters, got {len(value)}")
    try:
        return quote(value, safe=_SAFE, encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored faithfully
        raise ConfigError(field, "must be valid Unicode text (no lone surrogates)") from exc


def unescape(value: str) -> str:
    """Inverse of :func:`escape`, for tools that list keys."""
    return unquote(value, encoding="utf-8", errors="strict")


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ConfigError(
            "prefix", "must be 1-64 characters of letters, digits and ._~@+=:- (no braces)"
        )
    return prefix


def events_channel(prefix: str) -> str:
    """The pub/sub channel scripts publish shared-state events on: ``<prefix>:events``."""
    return f"{prefix}:events"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A parsed distlb key: what the CLI shows for each key it finds."""

    prefix: str
    kind: str
    name: str
    part: str


def entity(prefix: str, kind: str, name: str) -> str:
    """The key of an entity's main record, e.g. ``distlb:{tb:api}``.

    ``name`` must already be escaped; every other key of the entity is
    ``entity(...) + ":" + part``.
    """
    return f"{prefix}:{{{kind}:{name}}}"


def parse(key: str | bytes) -> KeyRef | None:
    """Split a key built here back into its parts, or ``None`` if it is not ours."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    open_at = key.find(":{")
    close_at = key.find("}", open_at + 2)
    if open_at < 0 or close_at < 0:
        return None
    tag = key[open_at + 2 : close_at]
    kind, sep, name = tag.partition(":")
    if not sep or kind not in KINDS:
        return None
    part = key[close_at + 2 :] if key[close_at + 1 : close_at + 2] == ":" else ""
    return KeyRef(key[:open_at], kind, unescape(name), part)
