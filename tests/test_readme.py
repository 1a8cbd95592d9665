"""The README's examples are run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# Every example runs as pasted, except the client-settings snippet (it names no real host).
RUNNABLE = [b for b in BLOCKS if 'host="..."' not in b]


def test_readme_has_runnable_examples() -> None:
    assert len(RUNNABLE) >= 5


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"example{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(block: str) -> None:
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    # Each print is followed in the README by the line it prints, as a comment;
    # the deterministic ones must match exactly.
    printed = done.stdout.splitlines()
    expected = [m for m in re.findall(r"^\s*# (.*)$", block, flags=re.M)
                if m.startswith(("[", "True")) or m.isdigit()]
    for line in expected:
        assert any(line.split("  ")[0] in p for p in printed), (line, printed)
