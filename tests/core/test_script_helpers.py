"""The _common.lua blocks a script gets: only those its code uses, not those its comments name."""

from __future__ import annotations

import re

from distlb._core.scripts import helpers_for, script

COMMON = """-- a header block without definitions

-- uses nothing
local function a()
  return 1
end

-- calls a
local function b()
  return a()
end

-- c: named in comments elsewhere only
local function c()
  return 3
end"""


def defined(source: str) -> list[str]:
    return re.findall(r"^local function (\w+)", source, re.M)


def test_a_helper_named_only_in_a_comment_is_left_out() -> None:
    body = "-- like c(), but inline\nreturn b()  -- not c either\n"
    assert defined(helpers_for(COMMON, body)) == ["a", "b"]


def test_a_helper_used_by_a_used_helper_comes_along() -> None:
    assert defined(helpers_for(COMMON, "return c() + b()")) == ["a", "b", "c"]


def test_the_hot_scripts_carry_only_what_they_call() -> None:
    # bucket.lua inlines the bucket arithmetic and only names bucket_read / bucket_write
    # in comments: each closure would be made on every call for nothing.
    helpers = set(defined(script("bucket").source))
    assert not {"bucket_read", "bucket_write", "admit_read"} & helpers, helpers
    assert {"prio_read", "prio_need", "prio_count"} <= helpers
    assert {"prio_read", "admit_read"} <= set(defined(script("pool").source))
