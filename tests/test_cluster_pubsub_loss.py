"""Node loss on the pub/sub path (issue #15): the node serving a client's event
subscription (the primary of the channel's slot) is SIGKILLed. While it is gone, a
breaker tripped by another client is still seen open within ``max_staleness_s`` (the
view is trusted no longer than that, then read from the store); once the replica is
promoted the subscription is re-established at the new primary (a client whose data
commands never failed refreshes its slot map for it) and events arrive again (seen far
sooner than a 30 s staleness would allow)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from distlb import CircuitBreaker
from distlb._events import channel_for
from distlb.embedded import EmbeddedCluster
from tests import cluster_fleet as fl
from tests import cluster_workers as cw

pytestmark = [pytest.mark.cluster, pytest.mark.failover]


@pytest.fixture
def replicated() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(masters=3, replicas=1, require_full_coverage=False) as c:
        yield c


def seen_open(cb: CircuitBreaker, deadline_s: float) -> float:
    """Seconds until ``cb`` refuses calls (this process's view), or fail at the deadline."""
    start = time.monotonic()
    while cb.can_attempt().allowed:
        assert time.monotonic() - start < deadline_s, "trip never seen"
        time.sleep(0.005)
    return time.monotonic() - start


def test_subscription_node_killed(replicated: EmbeddedCluster) -> None:
    prefix = f"ps{uuid.uuid4().hex[:8]}"
    channel_slot = key_slot(channel_for(prefix).encode())
    victim = replicated.primary_of(channel_slot)
    # The breakers live on a shard other than the subscription's.
    healthy = lambda s: replicated.primary_of(s) is not victim  # noqa: E731
    names = [fl.pick(prefix, "cb", f"cb{i}", healthy) for i in range(2)]
    observer_client = replicated.client(**cw.FAST)
    tripper_client = replicated.client(**cw.FAST)
    kw = dict(prefix=prefix, failure_threshold=1, open_timeout_s=60.0)
    try:
        watch_stale = CircuitBreaker(observer_client, names[0], max_staleness_s=1.0, **kw)
        watch_events = CircuitBreaker(observer_client, names[1], max_staleness_s=30.0, **kw)
        trip = [CircuitBreaker(tripper_client, n, subscribe=False, **kw) for n in names]
        assert watch_stale.can_attempt().allowed and watch_events.can_attempt().allowed
        time.sleep(0.2)   # let the observer's subscription start (it is lazy)

        killed = time.monotonic()
        replicated.kill(victim)
        trip[0].record_failure()
        stale_s = seen_open(watch_stale, 1.0 + 5.0)
        replicated.wait_owner(channel_slot, not_port=victim.port)
        promoted = time.monotonic()
        # Events again: the bus resubscribes in the background (at the new primary). An
        # event published in the gap is missed by design (the view then holds for at
        # most max_staleness_s); trip once the subscription is back.
        bus = watch_events._bus
        assert bus is not None
        deadline = time.monotonic() + 15
        while (since := bus.subscribed_since()) is None or since < killed:
            assert time.monotonic() < deadline, "the subscription never came back"
            time.sleep(0.01)
        resubscribed_s = time.monotonic() - promoted
        assert watch_events.can_attempt().allowed
        trip[1].record_failure()
        event_s = seen_open(watch_events, 15.0)
        print(f"\nsubscription node killed: trip seen after {stale_s:.3f} s while it was "
              f"down (max_staleness_s 1.0); after the promotion, a trip seen after "
              f"{event_s:.3f} s (max_staleness_s 30: by event), "
              f"resubscribed {resubscribed_s:.3f} s after the promotion was agreed")
        assert event_s < 15.0 < 30.0
        for cb in (watch_stale, watch_events, *trip):
            cb.reset()
            cb.close()
    finally:
        observer_client.close()
        tripper_client.close()

