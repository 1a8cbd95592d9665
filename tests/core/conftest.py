"""The core layer's tests: no server, no sockets, no threads of ours.

They drive the pure core (plans, parses, the retry loop, execute's decision flow)
with canned replies and a scripted fake runner, so the whole folder runs in about
a second. The parent conftest's keyspace check needs a server: overridden here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def every_key_has_a_ttl() -> Iterator[None]:
    yield  # no server: nothing is written anywhere
