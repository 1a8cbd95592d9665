"""The ``distlb`` command: a demo, and inspect, watch or reset the state shared in Redis.

The server comes from ``--redis-url``, else ``$DISTLB_REDIS_URL``; ``demo`` starts
an embedded Valkey when neither is given. Every URL printed has its password masked.
Ctrl-C ends any command quietly with exit code 130; SIGTERM ends it in order (the
embedded server and the demo's workers stop with it) with exit code 143.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import redis

from distlb import DEFAULT_PREFIX, admin
from distlb.admin import redact_url
from distlb.cli.inspect import plural
from distlb.errors import ConfigError

WRONG_PASSWORD = "the server refused the password (check the URL's credentials)"
NEED_PASSWORD = ("the server needs a password, and the URL gives none: "
                 "use redis://:PASSWORD@HOST:PORT/0 (or redis://USER:PASSWORD@...)")
SCHEMES = ("redis", "rediss", "unix")
#: ConfigError fields of the demo's settings -> the options that set them.
DEMO_OPTIONS = {"workers": "--workers", "backends": "--backends", "duration_s": "--duration",
                "rate_per_s": "--rate", "burst": "--burst", "strategy": "--strategy"}


def _url(args: argparse.Namespace) -> str | None:
    return args.redis_url or os.environ.get("DISTLB_REDIS_URL")


def _check_url(url: str) -> str | None:
    """Why ``url`` cannot name a server (a one-line message), or None if it can."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (parsing the port raises ValueError when it is not a number)
    except ValueError as exc:
        return f"invalid server URL {redact_url(url)!r}: {exc}"
    if parts.scheme not in SCHEMES:
        return (f"invalid server URL {redact_url(url)!r}: it must start with "
                + ", ".join(f"{s}://" for s in SCHEMES) + " (e.g. redis://localhost:6379/0)")
    return None


def _has_password(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    return bool(parts.password) or bool(query.get("password"))


def _server_error(exc: Exception, url: str) -> str:
    """One line for a server error met while connecting or working: never a traceback."""
    if isinstance(exc, redis.AuthenticationError):
        return WRONG_PASSWORD if _has_password(url) else NEED_PASSWORD
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (f"the server's ACL refuses a command for this user at {redact_url(url)}: {exc} "
                "(see the README's section on ACLs)")
    if isinstance(exc, redis.TimeoutError):
        return f"the server at {redact_url(url)} did not answer in time: {exc}"
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach the server at {redact_url(url)}: {exc}"
    return f"the server at {redact_url(url)} answered with an error: {exc}"


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from distlb.embedded import EmbeddedServer

    with EmbeddedServer() as server:
        print(f"started an embedded Valkey server at {server.url}", file=sys.stderr)
        yield server.url


def _fail(message: str) -> int:
    print(f"distlb: {message}", file=sys.stderr)
    return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from distlb.cli.demo import DemoConfig, run_backends, run_demo, run_worker

    if args.role != "all" and not (args.prefix and _url(args)):
        return _fail("--role backends/worker need a shared server and prefix: "
                     "pass --redis-url and --prefix")
    from distlb.embedded import EmbeddedServerError

    url = _url(args)
    if url and (problem := _check_url(url)):
        return _fail(problem)
    try:   # every setting is checked before a server, backend or worker starts
        extra = {"prefix": args.prefix} if args.prefix else {}
        checked = DemoConfig(url="", workers=args.workers, backends=args.backends,
                             duration_s=args.duration, strategy=args.strategy,
                             rate_per_s=args.rate, burst=args.burst, **extra)
    except ConfigError as exc:
        option = DEMO_OPTIONS.get(exc.field, exc.field)
        return _fail(f"demo {option}: {str(exc).partition(': ')[2]}")
    try:
        with _server(url) as server_url:
            cfg = dataclasses.replace(checked, url=server_url)
            if args.role == "backends":
                return 0 if run_backends(cfg, args.host, args.advertise) else 1
            if args.role == "worker":
                return 0 if run_worker(cfg) else 1
            return 0 if run_demo(cfg) else 1
    except EmbeddedServerError as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:
        return _fail(_server_error(exc, url or ""))


def cmd_inspect(args: argparse.Namespace) -> int:
    from distlb.cli import inspect as _inspect

    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    try:
        entities = _inspect.scan(client, args.prefix)
    except redis.RedisError as exc:
        return _fail(_server_error(exc, url))
    if args.json:
        print(json.dumps({"prefix": args.prefix, "entities": [e.as_dict() for e in entities]},
                         indent=2))
        return 0
    if not entities:
        print(f"no distlb state under prefix {args.prefix!r} at {redact_url(url)} "
              f"(is the prefix right? keys look like {args.prefix}:{{tb:name}})")
        return 0
    rows = [(admin.kind_of(e.kind).label, e.name, str(len(e.keys)),
             _inspect.human_ttl(_longest_ttl(e.keys)), e.summary)
            for e in entities]
    head = ("KIND", "NAME", "KEYS", "TTL", "STATE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


STRATEGY_NAMES = ("round_robin", "least_connections", "power_of_two", "consistent_hash",
                  "adaptive", "peak_ewma")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _connect(args: argparse.Namespace) -> tuple[Any, str] | int:
    from distlb.cli import inspect as _inspect

    url = _url(args)
    if not url:
        return _fail("no server given: pass --redis-url or set DISTLB_REDIS_URL")
    if problem := _check_url(url):
        return _fail(problem)
    try:
        return _inspect.connect(url, socket_connect_timeout=3, socket_timeout=5), url
    except ValueError as exc:    # from_url: a query option it cannot read
        return _fail(f"invalid server URL {redact_url(url)!r}: {exc}")
    except redis.RedisError as exc:
        return _fail(_server_error(exc, url))


def cmd_watch(args: argparse.Namespace) -> int:
    """Print every breaker transition, health change and registry change as it happens."""
    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    channel = admin.events_channel(args.prefix)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
    except redis.RedisError as exc:
        pubsub.close()
        return _fail(_server_error(exc, url))
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(f"watching {channel} on {redact_url(url)} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while args.count is None or seen < args.count:
            if deadline is not None and time.monotonic() > deadline:
                return 1 if args.count else 0
            msg = pubsub.get_message(timeout=0.5)
            if not msg or msg.get("type") != "message":
                continue
            event = admin.decode_event(msg["data"])
            if event is None:
                continue
            seen += 1
            if args.json:
                print(json.dumps(event, sort_keys=True), flush=True)
            else:
                print(_describe(event, color), flush=True)
    except redis.RedisError as exc:
        return _fail(_server_error(exc, url))
    finally:
        pubsub.close()
    return 0


def _describe(event: dict[str, Any], color: bool) -> str:
    stamp = time.strftime("%H:%M:%S")
    kind, name = event.get("kind"), event.get("name")
    if kind == "cb":
        if event.get("event") == "transition":
            to = str(event.get("to"))
            code = {"open": "31", "half_open": "33", "closed": "32"}.get(to, "0")
            to_text = f"\033[{code}m{to}\033[0m" if color else to
            forced = f" (forced {event['forced']})" if event.get("forced") else ""
            return f"{stamp}  breaker {name}: {event.get('from')} -> {to_text}{forced}"
        return f"{stamp}  breaker {name}: {event.get('failures')} consecutive failures"
    if kind == "pool" and event.get("event") == "config":
        fields = event.get("fields")
        changed = (": " + ", ".join(str(f) for f in fields)
                   if isinstance(fields, list) and fields else "")
        by = f" by {event['by']}" if event.get("by") else ""
        return (f"{stamp}  pool {name}: configuration version {event.get('config_version')}"
                f"{by}{changed}")
    if kind == "pool":
        return (f"{stamp}  pool {name}: backend {event.get('backend')} {event.get('event')} "
                f"(registry version {event.get('version')})")
    return f"{stamp}  {json.dumps(event, sort_keys=True)}"


#: ``distlb reset`` words, from the one table of kinds.
RESETTABLE = sorted(k.command for k in admin.KINDS)


def cmd_reset(args: argparse.Namespace) -> int:
    """Reset one entity's shared state for every process (with confirmation).

    ``distlb.admin.reset``: the same as the library's ``reset()``: buckets refill, queues
    and windows empty, a breaker closes (forced state cleared); a pool loses its registry,
    counts and statistics. Configuration stays: a shaper keeps its shared limit overrides
    (``TrafficShaper.remove_client_rate_limit`` and friends delete those).
    """
    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    try:
        plan = admin.reset(client, args.kind, args.name, prefix=args.prefix, dry_run=True)
    except ConfigError as exc:
        return _fail(f"reset: {exc}")
    except redis.RedisError as exc:
        return _fail(_server_error(exc, url))
    what_kept = ("shared limit overrides" if args.kind == "shaper"
                 else "fleet-wide configuration")
    if not plan.keys:
        if plan.kept:      # only configuration: say so, not "no keys"
            print(f"nothing to reset for {args.kind} {args.name!r} under prefix "
                  f"{args.prefix!r} (kept: its {what_kept}, {plural(len(plan.kept), 'key')})")
        else:
            print(f"nothing to reset: no keys for {args.kind} {args.name!r} under prefix "
                  f"{args.prefix!r}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            return _fail("refusing to reset without confirmation: pass --yes")
        answer = input(f"reset {args.kind} {args.name!r} ({plural(len(plan.keys), 'key')}) on "
                       f"{redact_url(url)} for every process? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not reset")
            return 1
    try:
        done = admin.reset(client, args.kind, args.name, prefix=args.prefix)
    except redis.RedisError as exc:
        return _fail(_server_error(exc, url))
    print(f"reset {args.kind} {args.name!r}: {plural(len(done.keys), 'key')}"
          + (f" (kept its {what_kept})" if done.kept else ""))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``distlb config get|set|history POOL``: a pool's fleet-wide configuration.

    Built on ``distlb.admin.pool_config`` / ``set_pool_config`` / ``pool_config_history``:
    no pool object, so no constructor arguments and no strategy of its own to check
    against (each process checks strategy parameters and breaker combinations)."""
    from distlb.balancer import ConfigConflict
    from distlb.balancer import parse_config_assignments as parse_assignments
    from distlb.errors import StoreError

    action = args.action
    try:   # every value is checked before the server is contacted
        changes = parse_assignments(args.assignments) if action == "set" else {}
        if action == "set" and not changes:
            return _fail("config set: give at least one field=value, e.g. rate_limit=100/s "
                         "breaker.failure_threshold=3 (field=default removes a stored one)")
        if action == "set":
            admin.check_pool_config(**changes)
        notes = admin.breaker_notes(changes.get("breaker", {})) if action == "set" else []
        prefix = args.prefix or DEFAULT_PREFIX
        admin.entity_key("pool", args.pool, prefix=prefix)    # the name and prefix
    except ConfigError as exc:
        return _fail(f"config {action}: {exc}")
    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    try:
        if action == "history":
            return _print_history(admin.pool_config_history(client, args.pool, prefix=prefix,
                                                            limit=args.limit), args)
        if action == "set":
            registry = admin.entity_key("pool", args.pool, prefix=prefix) + ":backends"
            if not client.exists(registry):
                notes.append(f"pool {args.pool!r} has no backends registered under prefix "
                             f"{prefix!r} (a typo?); the configuration is stored anyway and "
                             "applies when processes run the pool")
            if "strategy" in changes:
                notes.append("strategy parameters were checked against the built-in "
                             "strategies that declare them; a process whose strategy does not "
                             "declare one ignores it with a warning")
            before = admin.pool_config(client, args.pool, prefix=prefix).version
            cfg = admin.set_pool_config(client, args.pool, prefix=prefix,
                                        expected_version=args.expect_version, by=args.by,
                                        **changes)
            if cfg.version == before:      # any write bumps the version
                notes.append("nothing to change (the fields to remove are not stored): no "
                             "new version written")
            for note in notes:             # on stderr: --json output stays JSON only
                print(f"distlb: note: {note}", file=sys.stderr)
        else:
            cfg = admin.pool_config(client, args.pool, prefix=prefix)
    except ConfigConflict as exc:
        return _fail(f"config set: {exc}")
    except ConfigError as exc:
        return _fail(f"config {action}: {exc}")
    except (StoreError, redis.RedisError) as exc:
        return _fail(_server_error(exc, url) if isinstance(exc, redis.RedisError) else str(exc))
    rows = cfg.describe()
    if args.json:
        print(json.dumps({"pool": args.pool, "version": cfg.version, "values": rows,
                          "stored": sorted(cfg.stored), "updated_by": cfg.updated_by,
                          "updated_at_s": cfg.updated_at_s}, indent=2, sort_keys=True))
        return 0
    if cfg.version == 0:
        print(f"pool {args.pool!r}: no configuration stored; each process uses its "
              "constructor arguments (the library's defaults shown)")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cfg.updated_at_s or 0))
        print(f"pool {args.pool!r}: version {cfg.version}, by {cfg.updated_by} at {when} "
              "(fields not stored: each process's constructor argument; defaults shown)")
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        mark = "  (stored)" if k in cfg.stored else ""
        print(f"  {k.ljust(width)}  {v}{mark}")
    return 0


def _print_history(entries: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """``config history``: JSON only with ``--json``, else one line per change."""
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
        return 0
    if not entries:
        print(f"no configuration changes stored for pool {args.pool!r}")
    for e in entries:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(e["at_us"]) / 1e6))
        changed = [f"{k}={v}" for k, v in sorted(e.get("set", {}).items())]
        changed += [f"{k}=default" for k in e.get("unset", [])]
        print(f"v{e['version']}  {at} UTC  by {e.get('by', '?')}:  " + " ".join(changed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from distlb import __version__
    from distlb.cli.demo import MAX_BACKENDS, MAX_WORKERS

    parser = argparse.ArgumentParser(
        prog="distlb", description="distlb: a demo of worker processes sharing one load "
        "balancer, and tools to inspect, watch and reset the state they share in Redis/Valkey.")
    parser.add_argument("--version", action="version", version=f"distlb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="worker processes sharing one load balancer: a story")
    demo.add_argument("--redis-url", help="server to use (default: $DISTLB_REDIS_URL, "
                      "else an embedded Valkey)")
    demo.add_argument("--workers", type=int, default=3,
                      help=f"worker processes, 1 to {MAX_WORKERS} (default 3)")
    demo.add_argument("--backends", type=int, default=3,
                      help=f"HTTP backends, 2 to {MAX_BACKENDS} (default 3)")
    demo.add_argument("--duration", type=float, default=20.0,
                      help="seconds, at least 1 (default 20)")
    demo.add_argument("--strategy", choices=sorted(STRATEGY_NAMES), default="round_robin")
    demo.add_argument("--rate", type=float, default=300.0,
                      help="the pool's shared limit, requests/s (default 300)")
    demo.add_argument("--burst", type=float, default=30.0,
                      help="its burst, at least 2 (default 30)")
    demo.add_argument("--prefix", help="key prefix (default: a fresh one per run); an "
                      "existing prefix is cleared first")
    demo.add_argument("--role", choices=("all", "backends", "worker"), default="all",
                      help="all (default): the whole story here; backends / worker: one part "
                      "of it, for a demo spread over containers or hosts")
    demo.add_argument("--host", default="127.0.0.1",
                      help="role backends: the address to listen on")
    demo.add_argument("--advertise", help="role backends: the host name workers use")
    demo.set_defaults(func=cmd_demo)

    ins = sub.add_parser("inspect", help="show every bucket, shaper and queue under a prefix")
    ins.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    ins.add_argument("--prefix", "--namespace", default=DEFAULT_PREFIX,
                     help="key prefix (default distlb)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=cmd_inspect)

    watch = sub.add_parser("watch", help="live stream of breaker, health and registry changes")
    watch.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    watch.add_argument("--prefix", "--namespace", default=DEFAULT_PREFIX)
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--count", type=_positive_int, help="stop after this many events")
    watch.add_argument("--timeout", type=float, help="stop after this many seconds")
    watch.set_defaults(func=cmd_watch)

    reset = sub.add_parser("reset", help="reset one bucket, breaker, budget, pool ... for "
                           "every process (a shaper keeps its shared limit overrides)")
    reset.add_argument("kind", choices=RESETTABLE)
    reset.add_argument("name")
    reset.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    reset.add_argument("--prefix", "--namespace", default=DEFAULT_PREFIX)
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=cmd_reset)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    common.add_argument("--prefix", "--namespace", default=None, help="key prefix "
                        "(default distlb)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    config = sub.add_parser(
        "config", help="get, set or list the history of a pool's fleet-wide configuration",
        description="A pool's limits, breaker settings and strategy parameters, stored in "
        "Redis and applied by every process at its next refresh.")
    actions = config.add_subparsers(dest="action", required=True, metavar="{get,set,history}")
    get = actions.add_parser("get", parents=[common], help="show the stored configuration",
                             description="Show pool POOL's stored configuration.")
    get.add_argument("pool", metavar="POOL")
    cset = actions.add_parser(
        "set", parents=[common], help="change fields (field=value ...)",
        description="Change pool POOL's configuration for every process: rate_limit=100/s, "
        "client_limit='10/s burst 20', rate_limit=none (no limit), "
        "breaker.failure_threshold=3, strategy.decay_s=5; field=default removes a stored "
        "value (the constructor's is in force again). Each field once.")
    cset.add_argument("pool", metavar="POOL")
    cset.add_argument("assignments", nargs="+", metavar="field=value")
    cset.add_argument("--expect-version", type=int, default=None,
                      help="write only if this version is stored (compare-and-set)")
    cset.add_argument("--by", help="who makes the change (default host:pid)")
    hist = actions.add_parser("history", parents=[common], help="list the latest changes",
                              description="List pool POOL's latest configuration changes, "
                              "newest first.")
    hist.add_argument("pool", metavar="POOL")
    hist.add_argument("--limit", type=_positive_int, default=20,
                      help="entries to show (default 20)")
    for p in (get, cset, hist):
        p.set_defaults(func=cmd_config, assignments=[])
    cset.set_defaults(assignments=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:       # Ctrl-C: the `with` blocks have cleaned up on the way
        print(file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind like Ctrl-C, so the embedded server and the workers are stopped.

    A second SIGTERM is ignored: it must not cut that clean-up short.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _longest_ttl(keys: list[Any]) -> float | None:
    """The entity's TTL column: its longest-lived key; ``None`` ("none") when a key has no
    TTL at all (a forced breaker holds until reset)."""
    ttls = [k.ttl_s for k in keys]
    return None if any(t is None for t in ttls) else max((t for t in ttls if t is not None),
                                                         default=None)
