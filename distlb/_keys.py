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

@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of shared entity: the single descriptor ``inspect``, ``reset``, the key
    parser and the README's key table (checked by a test) all read.

    ``parts`` are the entity's key parts as the README writes them (``""`` is the
    entity's main key, ``<client>`` stands for an escaped name). ``kept_on_reset``
    are parts that hold configuration, not state: ``reset`` leaves them.
    ``reset`` says how state is cleared: ``"delete"`` (the keys go; the next call
    starts afresh) or ``"close"`` (a breaker is closed by its own script, which also
    clears a forced state and tells every process).
    """

    code: str                       #: the ``tb`` in ``distlb:{tb:api}``
    label: str                      #: what people call it: "token bucket"
    command: str                    #: its word on the command line: ``distlb reset bucket``
    parts: tuple[str, ...]
    summary: str                    #: what ``distlb inspect`` shows for it
    kept_on_reset: tuple[str, ...] = ()
    reset: str = "delete"


#: Every kind of entity distlb stores. A new primitive adds one row here (and its
#: README key table rows, which a test compares with ``parts``).
KIND_TABLE: tuple[Kind, ...] = (
    Kind("tb", "token bucket", "bucket", ("", "r<n>"), "tokens/burst @ rate"),
    Kind("lk", "leaky bucket", "leaky", ("",), "queued/capacity @ rate, the wait"),
    Kind("ts", "traffic shaper", "shaper",
         ("global", "c:<client>", "cb:<client>", "bb:<backend>", "limits", "prio"),
         "every bucket's tokens; the shared limits", kept_on_reset=("limits",)),
    Kind("pq", "priority limiter", "priority", ("", "queue", "leases", "depth"),
         "tokens; waiters"),
    Kind("cb", "circuit breaker", "breaker", ("", "probes", "window"),
         "state, failures, probes in flight (baseline for adaptive)", reset="close"),
    Kind("rb", "retry budget", "budget", ("",), "requests and retries in the window"),
    Kind("pool", "load balancer pool", "pool",
         ("", "backends", "since", "conns", "leases", "stats", "rl", "rl:c:<client>",
           "rl:cb:<client>", "rl:bb:<backend>", "prio", "checker", "config", "config:history"),
         "healthy backends, connections, leases, requests served; the fleet-wide config",
         kept_on_reset=("config", "config:history")),
)
#: code -> descriptor.
BY_CODE: dict[str, Kind] = {k.code: k for k in KIND_TABLE}
#: command-line word -> descriptor.
BY_COMMAND: dict[str, Kind] = {k.command: k for k in KIND_TABLE}
#: Entity kinds and what they hold (code -> label); the CLI uses this to label keys.
KINDS: dict[str, str] = {k.code: k.label for k in KIND_TABLE}


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


def part(entity_key: str, *parts: str) -> str:
    """A further key of an entity: ``part("distlb:{cb:api}", "probes")`` is
    ``distlb:{cb:api}:probes``. Parts holding user names must be escaped already."""
    return ":".join((entity_key, *parts))


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
