"""Rate strings: the grammar, the arithmetic, and clear errors."""

from __future__ import annotations

import pytest

from distlb import ConfigError
from distlb._rates import parse_rates


@pytest.mark.parametrize("text, expected", [
    ("100/second", [(100.0, 100.0)]),
    ("100/s", [(100.0, 100.0)]),
    ("10 per second", [(10.0, 10.0)]),
    ("5 per 10 minutes", [(5 / 600, 5.0)]),
    ("1000/hour", [(1000 / 3600, 1000.0)]),
    ("2/day", [(2 / 86400, 2.0)]),
    ("10/s; 1000/hour", [(10.0, 10.0), (1000 / 3600, 1000.0)]),
    ("10/s, 100/m | 1000/h", [(10.0, 10.0), (100 / 60, 100.0), (1000 / 3600, 1000.0)]),
    ("100/second burst 20", [(100.0, 20.0)]),
    ("  7 / 2 s  ", [(3.5, 7.0)]),
    ("1.5/s", [(1.5, 1.5)]),
    ("100/MINUTE", [(100 / 60, 100.0)]),
])
def test_rates_parse(text: str, expected: list[tuple[float, float]]) -> None:
    got = parse_rates(text)
    assert len(got) == len(expected)
    for (rate, burst), (want_rate, want_burst) in zip(got, expected, strict=True):
        assert rate == pytest.approx(want_rate) and burst == want_burst


@pytest.mark.parametrize("text", ["", "100", "100/fortnight", "/s", "0/s", "10/0s", "-1/s",
                                  "10/s;", "10 s", "ten/s", "10/s burst", "10/s burst x"])
def test_bad_rates_name_the_field_and_the_grammar(text: str) -> None:
    with pytest.raises(ConfigError, match=r"limit: .*(rate|positive)"):
        parse_rates(text, "limit")


@pytest.mark.parametrize("value", [None, 10, b"10/s", ["10/s"]])
def test_rates_must_be_strings(value: object) -> None:
    with pytest.raises(ConfigError, match="rate string"):
        parse_rates(value)
