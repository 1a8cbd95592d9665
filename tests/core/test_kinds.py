"""One table of kinds: the README's key table, the key parser, inspect and reset read it."""

from __future__ import annotations

import re
from pathlib import Path

from distlb import _keys

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `distlb:\{(\w+):<name>\}([^`]*)`(?:, `([^`]*)`)? \|", re.M)


def readme_parts() -> set[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Keys in Redis"):]
    table = table[: table.index("\n## ")]
    out = set()
    for kind, first, second in ROW.findall(table):
        for part in (first, second):
            if part or part is first:
                out.add((kind, part.removeprefix(":")))
    return out


def test_readme_key_table_matches_the_table_of_kinds() -> None:
    described = {(k.code, p) for k in _keys.KIND_TABLE for p in k.parts}
    documented = readme_parts()
    assert documented, "no key table found in the README"
    assert documented == described, (
        f"in the README only: {sorted(documented - described)}; "
        f"in _keys.KIND_TABLE only: {sorted(described - documented)}")


def test_every_kind_parses_back_and_has_one_command_word() -> None:
    assert len({k.command for k in _keys.KIND_TABLE}) == len(_keys.KIND_TABLE)
    for kind in _keys.KIND_TABLE:
        for part in kind.parts:
            concrete = (part.replace("<client>", "a%3Ab").replace("<backend>", "n1")
                        .replace("<n>", "2"))
            key = _keys.entity("p", kind.code, "x%7By")
            if concrete:
                key = _keys.part(key, concrete)
            ref = _keys.parse(key)
            assert ref is not None and (ref.kind, ref.name, ref.part) == \
                (kind.code, "x{y", concrete)
        assert set(kind.kept_on_reset) <= set(kind.parts)
        assert kind.reset in {"delete", "close"}


def test_the_leaky_bucket_is_lk_and_lb_means_nothing() -> None:
    from distlb._shaping import LeakyBucketCore
    assert LeakyBucketCore.kind == "lk" and _keys.KINDS["lk"] == "leaky bucket"
    assert "lb" not in _keys.KINDS and _keys.parse("distlb:{lb:x}") is None
