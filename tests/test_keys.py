"""The key builder: escaping, hash tags, round trips, bad names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from distlb import ConfigError, _keys

names = st.text(min_size=1, max_size=_keys.MAX_NAME_CHARS).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


@given(names)
def test_escaped_name_cannot_leave_its_hash_tag(name: str) -> None:
    key = _keys.entity("distlb", "ts", _keys.escape(name)) + ":c:" + _keys.escape(name, "client")
    tag = key[key.index("{") + 1 : key.index("}")]
    assert key.count("{") == 1 and key.count("}") == 1
    assert tag == "ts:" + _keys.escape(name)
    # Redis Cluster hashes only the tag: every key of the entity shares the slot.
    entity_key = _keys.entity("distlb", "ts", _keys.escape(name))
    assert key_slot(key.encode()) == key_slot(entity_key.encode())


@given(names, names)
def test_escaping_is_injective(a: str, b: str) -> None:
    assert (_keys.escape(a) == _keys.escape(b)) == (a == b)


@given(names)
def test_parse_round_trips(name: str) -> None:
    ref = _keys.parse(_keys.entity("myapp:distlb", "tb", _keys.escape(name)) + ":c:x")
    assert ref == _keys.KeyRef("myapp:distlb", "tb", name, "c:x")


def test_common_names_stay_readable() -> None:
    key = _keys.entity("distlb", "tb", _keys.escape("user-42@api.v2"))
    assert key == "distlb:{tb:user-42@api.v2}"
    assert _keys.escape("a:b{c}") == "a%3Ab%7Bc%7D"


@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("x" * 257, "at most"), (42, "str"), (None, "str"), (b"api", "str"),
    ("\ud800", "surrogate"),
])
def test_bad_names_raise_config_error_naming_the_field(bad: object, why: str) -> None:
    with pytest.raises(ConfigError, match=f"client_id.*{why}"):
        _keys.escape(bad, "client_id")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "a{b", "x" * 65, "sp ace", 3])
def test_bad_prefix(bad: object) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        _keys.check_prefix(bad)  # type: ignore[arg-type]


def test_parse_ignores_foreign_keys() -> None:
    assert _keys.parse("session:abc") is None
    assert _keys.parse("distlb:{zz:x}") is None
