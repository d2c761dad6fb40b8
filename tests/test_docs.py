"""The Python examples of each docs page run, in order, as one script.

A code block whose first line is ``# not run`` is skipped (it needs a cluster or data
that the page only describes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGES = sorted((Path(__file__).parent.parent / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def page_script(page: Path) -> str:
    blocks = [b for b in BLOCK.findall(page.read_text()) if not b.startswith("# not run")]
    return "\n".join(blocks)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
@pytest.mark.timeout(300)
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    script = page_script(page)
    if not script.strip():
        pytest.skip(f"{page.name} has no Python examples")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-3000:]}"
