"""The README says where the HTTP integrations' ``Upstream*`` errors are imported from:
every module it names exports every one of them, and they are the same classes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_readme_names_where_upstream_errors_come_from() -> None:
    text = " ".join(README.split())
    # the sentence up to its full stop (dots inside `code` spans do not end it)
    sentence = re.search(r"Import them from (?:[^.`]|`[^`]*`)*\.", text)
    assert sentence is not None, "the README does not say where Upstream* errors live"
    modules = re.findall(r"`(distlb\.integrations\.\w+)`", sentence[0])
    names = sorted(set(re.findall(r"`(Upstream\w+)`", README)))
    assert {"distlb.integrations.httpx", "distlb.integrations.requests"} <= set(modules)
    assert names == ["UpstreamError", "UpstreamStatus", "UpstreamTimeout", "UpstreamUnreachable"]
    first = importlib.import_module(modules[0])
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in names:
            assert name in module.__all__, (module_name, name)
            assert getattr(module, name) is getattr(first, name), (module_name, name)
    error = first.UpstreamError
    assert all(issubclass(getattr(first, n), error) for n in names)
    assert issubclass(first.UpstreamUnreachable, ConnectionError)
    assert issubclass(first.UpstreamTimeout, TimeoutError)
