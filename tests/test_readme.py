"""The README's Python blocks marked ``<!-- tested: ... -->`` run as written, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED = re.compile(r"<!-- tested:[^>]*-->\s*```python\n(.*?)```", re.S)
BLOCKS = MARKED.findall(README.read_text())


def test_readme_has_marked_blocks():
    assert BLOCKS, "README.md has no <!-- tested: ... --> python block"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
