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
from collections.abc import Iterator, Sequence

import redis

from distlb import _keys


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
    from distlb._demo import DemoConfig, run_demo
    from distlb.embedded import EmbeddedServerError

    try:
        with _server(_url(args)) as url:
            cfg = DemoConfig(url=url, workers=args.workers, backends=args.backends,
                             duration_s=args.duration, strategy=args.strategy,
                             rate_per_s=args.rate, burst=args.burst)
            return 0 if run_demo(cfg) else 1
    except EmbeddedServerError as exc:
        return _fail(str(exc))
    except redis.AuthenticationError:
        return _fail("the server refused the password (check the URL's credentials)")
    except redis.ConnectionError as exc:
        return _fail(f"cannot reach the server: {exc}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from distlb import _inspect

    url = _url(args)
    if not url:
        return _fail("no server given: pass --redis-url or set DISTLB_REDIS_URL")
    try:
        client = _inspect.connect(url, socket_connect_timeout=3, socket_timeout=5)
        entities = _inspect.scan(client, args.prefix)
    except redis.AuthenticationError:
        return _fail("the server refused the password (check the URL's credentials)")
    except redis.ConnectionError as exc:
        return _fail(f"cannot reach the server at {url}: {exc}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distlb", description=__doc__.split("\n")[0])
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
    demo.set_defaults(func=cmd_demo)

    ins = sub.add_parser("inspect", help="show every bucket, shaper and queue under a prefix")
    ins.add_argument("--redis-url", help="server (default: $DISTLB_REDIS_URL)")
    ins.add_argument("--prefix", "--namespace", default=_keys.DEFAULT_PREFIX,
                     help="key prefix (default distlb)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
