"""The ``distlb`` command: ``demo`` and ``inspect``.

The server comes from ``--redis-url``, else ``$DISTLB_REDIS_URL``; ``demo`` starts
an embedded Valkey when neither is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from distlb import _keys

WRONG_PASSWORD = "the server refused the password (check the URL's credentials)"


def _url(args: argparse.Namespace) -> str | None:
    return args.redis_url or os.environ.get("DISTLB_REDIS_URL")


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
    from distlb._demo import DemoConfig, run_backends, run_demo, run_worker

    if args.role != "all" and not (args.prefix and _url(args)):
        return _fail("--role backends/worker need a shared server and prefix: "
                     "pass --redis-url and --prefix")
    from distlb.embedded import EmbeddedServerError

    try:
        with _server(_url(args)) as url:
            extra = {"prefix": args.prefix} if args.prefix else {}
            cfg = DemoConfig(url=url, workers=args.workers, backends=args.backends,
                             duration_s=args.duration, strategy=args.strategy,
                             rate_per_s=args.rate, burst=args.burst, **extra)
            if args.role == "backends":
                return 0 if run_backends(cfg, args.host, args.advertise) else 1
            if args.role == "worker":
                return 0 if run_worker(cfg) else 1
            return 0 if run_demo(cfg) else 1
    except EmbeddedServerError as exc:
        return _fail(str(exc))
    except redis.AuthenticationError:
        return _fail(WRONG_PASSWORD)
    except redis.ConnectionError as exc:
        return _fail(f"cannot reach the server: {exc}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from distlb import _inspect

    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    try:
        entities = _inspect.scan(client, args.prefix)
    except redis.ConnectionError as exc:
        return _fail(f"lost the server at {url}: {exc}")
    if args.json:
        print(json.dumps({"prefix": args.prefix, "entities": [e.as_dict() for e in entities]},
                         indent=2))
        return 0
    if not entities:
        print(f"no distlb state under prefix {args.prefix!r} at {url} "
              f"(is the prefix right? keys look like {args.prefix}:{{tb:name}})")
        return 0
    rows = [(_keys.KINDS.get(e.kind, e.kind), e.name, str(len(e.keys)),
             _inspect.human_ttl(max((k.ttl_s or 0) for k in e.keys)), e.summary)
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
    from distlb import _inspect

    url = _url(args)
    if not url:
        return _fail("no server given: pass --redis-url or set DISTLB_REDIS_URL")
    try:
        return _inspect.connect(url, socket_connect_timeout=3, socket_timeout=5), url
    except redis.AuthenticationError:
        return _fail(WRONG_PASSWORD)
    except redis.ConnectionError as exc:
        return _fail(f"cannot reach the server at {url}: {exc}")


def cmd_watch(args: argparse.Namespace) -> int:
    """Print every breaker transition, health change and registry change as it happens."""
    from distlb._events import channel_for, decode

    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    channel = channel_for(args.prefix)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(f"watching {channel} on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while args.count is None or seen < args.count:
            if deadline is not None and time.monotonic() > deadline:
                return 1 if args.count else 0
            msg = pubsub.get_message(timeout=0.5)
            if not msg or msg.get("type") != "message":
                continue
            event = decode(msg["data"])
            if event is None:
                continue
            seen += 1
            if args.json:
                print(json.dumps(event, sort_keys=True), flush=True)
            else:
                print(_describe(event, color), flush=True)
    except KeyboardInterrupt:
        pass
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
    if kind == "pool":
        return (f"{stamp}  pool {name}: backend {event.get('backend')} {event.get('event')} "
                f"(registry version {event.get('version')})")
    return f"{stamp}  {json.dumps(event, sort_keys=True)}"


RESETTABLE = {"bucket": "tb", "leaky": "lb", "shaper": "ts", "priority": "pq",
              "breaker": "cb", "budget": "rb", "pool": "pool"}


def cmd_reset(args: argparse.Namespace) -> int:
    """Reset one entity to its initial state for every process (with confirmation)."""
    from distlb import _keys, _scripts

    connected = _connect(args)
    if isinstance(connected, int):
        return connected
    client, url = connected
    kind = RESETTABLE[args.kind]
    entity = _keys.entity(args.prefix, kind, _keys.escape(args.name))
    # All of an entity's keys share its hash tag: one slot, so one node holds them all.
    keys = sorted({k.decode() for k in client.scan_iter(match=f"{_glob(entity)}*")})
    if not keys:
        print(f"nothing to reset: no keys for {args.kind} {args.name!r} under prefix "
              f"{args.prefix!r}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            return _fail("refusing to reset without confirmation: pass --yes")
        answer = input(f"reset {args.kind} {args.name!r} ({len(keys)} keys) on {url} "
                       f"for every process? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not reset")
            return 1
    if kind == "cb":
        from distlb.breaker import CircuitBreaker
        CircuitBreaker(client, args.name, prefix=args.prefix, subscribe=False).reset()
    else:
        s = _scripts.script("delete")
        _scripts.run_sync(client, s, keys, [])
    print(f"reset {args.kind} {args.name!r}: {len(keys)} keys")
    return 0


def _glob(text: str) -> str:
    """Escape glob characters so SCAN MATCH takes ``text`` literally."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def build_parser() -> argparse.ArgumentParser:
    from distlb import __version__

    parser = argparse.ArgumentParser(prog="distlb", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"distlb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="worker processes sharing one load balancer: a story")
    demo.add_argument("--redis-url", help="server to use (default: $DISTLB_REDIS_URL, "
                      "else an embedded Valkey)")
    demo.add_argument("--workers", type=_positive_int, default=3,
                      help="worker processes (default 3)")
    demo.add_argument("--backends", type=_positive_int, default=3,
                      help="HTTP backends, at least 2 (default 3)")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    demo.add_argument("--strategy", choices=sorted(STRATEGY_NAMES), default="round_robin")
    demo.add_argument("--rate", type=float, default=300.0,
                      help="the pool's shared limit, requests/s (default 300)")
    demo.add_argument("--burst", type=float, default=30.0, help="its burst (default 30)")
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
    ins.add_argument("--prefix", "--namespace", default=_keys.DEFAULT_PREFIX,
                     help="key prefix (default distlb)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=cmd_inspect)

    watch = sub.add_parser("watch", help="live stream of breaker, health and registry changes")
    watch.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    watch.add_argument("--prefix", "--namespace", default=_keys.DEFAULT_PREFIX)
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--count", type=_positive_int, help="stop after this many events")
    watch.add_argument("--timeout", type=float, help="stop after this many seconds")
    watch.set_defaults(func=cmd_watch)

    reset = sub.add_parser("reset", help="reset one bucket, breaker, budget, pool ...")
    reset.add_argument("kind", choices=sorted(RESETTABLE))
    reset.add_argument("name")
    reset.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    reset.add_argument("--prefix", "--namespace", default=_keys.DEFAULT_PREFIX)
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=cmd_reset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
