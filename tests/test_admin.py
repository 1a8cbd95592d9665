"""distlb.admin against real servers: one entity's keys, reset and delete (standalone and a
3-master cluster), and the key, kind and event helpers the command line is built on."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
import redis.cluster

from distlb import CircuitBreaker, ConfigError, Limit, TokenBucket, TrafficShaper, admin


def shaper_with_override(client: Any, name: str, prefix: str) -> TrafficShaper:
    """A shaper with its global and one client bucket spent, and a shared override (slow
    rates: every key lives for minutes)."""
    shaper = TrafficShaper(client, name, global_limit=Limit(0.01, 10), prefix=prefix)
    shaper.set_client_rate_limit("ali:ce", 0.01, 5)
    assert shaper.try_acquire("ali:ce", cost=5).allowed
    return shaper


def test_kinds_keys_names_and_events() -> None:
    assert admin.kind_of("tb") is admin.kind_of("bucket") is admin.KINDS[0]
    assert {k.code for k in admin.KINDS} >= {"tb", "lk", "ts", "pq", "cb", "rb", "pool"}
    with pytest.raises(ConfigError) as e:
        admin.kind_of("buckets")
    assert e.value.field == "kind" and "bucket" in str(e.value)
    key = admin.entity_key("shaper", "ali:ce{x}", prefix="app")
    assert key == "app:{ts:ali%3Ace%7Bx%7D}"
    ref = admin.parse_key(key + ":c:b%3Ab")
    assert ref is not None and (ref.prefix, ref.kind, ref.name, ref.part) == (
        "app", "ts", "ali:ce{x}", "c:b%3Ab")
    assert admin.decode_name("b%3Ab") == "b:b" and admin.parse_key("other:key") is None
    assert admin.events_channel("app") == "app:events"
    assert admin.decode_event(json.dumps({"kind": "cb"})) == {"kind": "cb"}
    assert admin.decode_event(b"not json") is None and admin.decode_event("[1]") is None
    assert admin.redact_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"


@pytest.mark.parametrize("call", [admin.keys, admin.delete, admin.reset])
@pytest.mark.parametrize("kind, name, prefix, field", [
    ("nope", "api", "distlb", "kind"), ("bucket", "", "distlb", "name"),
    ("bucket", "api", "a{b}", "prefix")])
def test_bad_arguments_fail_before_the_store(call: Any, kind: str, name: str, prefix: str,
                                             field: str) -> None:
    nowhere = redis.Redis(port=1, socket_connect_timeout=0.1)   # never reached
    with pytest.raises(ConfigError) as e:
        call(nowhere, kind, name, prefix=prefix)
    assert e.value.field == field


def test_keys_reset_and_delete_one_entity(r: redis.Redis, prefix: str) -> None:
    shaper = shaper_with_override(r, "edge", prefix)
    sibling = shaper_with_override(r, "edge2", prefix)     # its name starts like edge's
    main = admin.entity_key("ts", "edge", prefix=prefix)
    assert admin.keys(r, "shaper", "edge", prefix=prefix) == [
        f"{main}:c:ali%3Ace", f"{main}:global", f"{main}:limits"]

    plan = admin.reset(r, "shaper", "edge", prefix=prefix, dry_run=True)
    assert plan.keys == (f"{main}:c:ali%3Ace", f"{main}:global")
    assert plan.kept == (f"{main}:limits",) and plan.kind.code == "ts"
    assert not shaper.try_acquire("ali:ce").allowed      # a dry run changed nothing

    done = admin.reset(r, "shaper", "edge", prefix=prefix)
    assert done == plan
    assert shaper.limits() == {"c:ali:ce": Limit(0.01, 5)}  # configuration kept
    assert shaper.try_acquire("ali:ce", cost=5).allowed     # both buckets full again

    assert admin.delete(r, "shaper", "edge", prefix=prefix) == 3
    assert admin.keys(r, "ts", "edge", prefix=prefix) == []
    assert shaper.limits() == {}                            # the whole entity is gone
    assert sibling.limits() == {"c:ali:ce": Limit(0.01, 5)}   # and nothing else
    assert not sibling.try_acquire("ali:ce").allowed
    assert admin.delete(r, "shaper", "edge", prefix=prefix) == 0
    assert admin.reset(r, "shaper", "edge", prefix=prefix).keys == ()
    admin.delete(r, "shaper", "edge2", prefix=prefix)


def test_reset_closes_a_breaker_for_every_process(r: redis.Redis, prefix: str) -> None:
    with CircuitBreaker(r, "node1", failure_threshold=1, prefix=prefix) as cb:
        cb.force_open()
        done = admin.reset(r, "breaker", "node1", prefix=prefix)
        assert done.keys and not done.kept
        st = cb.state()
        assert (st.state, st.forced) == ("closed", None)


@pytest.mark.cluster
def test_cluster_one_entity_one_slot(rc: redis.cluster.RedisCluster, prefix: str) -> None:
    names = [f"api{i}" for i in range(12)]     # spread over the three masters
    shapers = {n: shaper_with_override(rc, n, prefix) for n in names}
    TokenBucket(rc, "api0", rate_per_s=0.01, burst=5, prefix=prefix).try_acquire(2)
    slots = {rc.keyslot(admin.entity_key("ts", n, prefix=prefix)) for n in names}
    assert len({rc.nodes_manager.get_node_from_slot(s).name for s in slots}) > 1
    for n in names:
        found = admin.keys(rc, "shaper", n, prefix=prefix)
        assert len(found) == 3 and {rc.keyslot(k) for k in found} == {
            rc.keyslot(admin.entity_key("ts", n, prefix=prefix))}
    assert admin.reset(rc, "shaper", "api3", prefix=prefix).kept
    assert shapers["api3"].try_acquire("ali:ce", cost=5).allowed
    assert not shapers["api4"].try_acquire("ali:ce").allowed     # only api3 was reset
    for n in names:
        assert admin.delete(rc, "shaper", n, prefix=prefix) == 3
    assert admin.keys(rc, "bucket", "api0", prefix=prefix)        # another kind: untouched
    assert admin.delete(rc, "bucket", "api0", prefix=prefix) == 1


def test_unknown_kind_lists_each_allowed_word_once() -> None:
    with pytest.raises(ConfigError) as info:
        admin.kind_of("bogus")
    allowed = str(info.value).split("must be one of ")[1].split(", got")[0].split(", ")
    assert len(allowed) == len(set(allowed)) and "pool" in allowed


def test_validate_messages_give_the_value_and_the_range() -> None:
    from distlb import validate
    with pytest.raises(ConfigError, match=r"must be a number in \(0, 1e\+12\], got 'abc' "
                                          r"\(str\)"):
        validate.number("rate", "abc")
    long = "x" * 500
    with pytest.raises(ConfigError) as info:
        validate.number("rate", long)
    assert "...<502 chars>" in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(ConfigError, match=r"must be an int in \[1, 32\], got 1.5 \(float\)"):
        validate.integer("workers", 1.5, low=1, high=32)
    # The low bound is exclusive unless low_inclusive (documented in the README).
    with pytest.raises(ConfigError, match=r"\(1, 32\]"):
        validate.number("workers", 1, low=1, high=32)
    assert validate.number("workers", 1, low=1, high=32, low_inclusive=True) == 1.0
