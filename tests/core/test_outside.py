"""The floor plan, enforced for the outside: the command line, the integrations and the
metrics use the public API only (``distlb``, ``distlb.aio``, ``distlb.admin``, ...).

A private module (``distlb._keys``, ``distlb._scripts`` ...) may change shape with any
release; a tool that needs something from one gets a public home for it instead
(``distlb.admin`` for keys, kinds, events and reset; ``distlb.validate`` for checks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "distlb"
#: The outside: every file of these packages, and these modules.
OUTSIDE = sorted([*(PKG / "cli").rglob("*.py"), *(PKG / "integrations").rglob("*.py"),
                  PKG / "metrics.py", PKG / "embedded.py"])
#: What must stay, and why: (file relative to distlb/, private module) -> reason.
ALLOWED = {
    # metrics is the library's observer: it subscribes to the events the core reports
    # through the private hook registry (a public one would only rename it).
    ("metrics.py", "distlb._observe"): "the observation hooks metrics subscribes to",
}


def private_uses(path: Path) -> set[str]:
    """Every private distlb module ``path`` imports or reaches: ``import distlb._x``,
    ``from distlb._x import ...``, ``from distlb import _x``, ``distlb._x`` (also inside
    functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("distlb._"))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.startswith("distlb._"):
                found.add(node.module)
            elif node.module == "distlb":
                found.update(f"distlb.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__"))
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "distlb" and node.attr.startswith("_")
              and not node.attr.startswith("__")):
            found.add(f"distlb.{node.attr}")
    return {m.split(".")[0] + "." + m.split(".")[1] for m in found}


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(PKG)))
def test_the_outside_uses_only_the_public_api(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    private = {m for m in private_uses(path) if (rel, m) not in ALLOWED}
    assert not private, (f"distlb/{rel} imports private {sorted(private)}: use the public API "
                         f"(distlb, distlb.aio, distlb.admin, distlb.validate) or give what it "
                         f"needs a public home")


def test_every_allowance_is_still_needed() -> None:
    for (rel, module), why in ALLOWED.items():
        assert module in private_uses(PKG / rel), f"{rel} no longer needs {module} ({why})"


def test_the_check_sees_every_way_to_reach_a_private_module(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import distlb\nimport distlb._keys\nfrom distlb._scripts import run_sync\n"
                      "from distlb import _events, admin, __version__\n"
                      "def f():\n    from distlb._connect import redact_url\n"
                      "    return distlb._shared.x\n")
    assert private_uses(sample) == {"distlb._keys", "distlb._scripts", "distlb._events",
                                    "distlb._connect", "distlb._shared"}
