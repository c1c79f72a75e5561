"""The Python on the documentation pages runs as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


def _code(page: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S))


@pytest.mark.slow
def test_own_layer_page_runs(capsys, mnist):
    exec(compile(_code("own-layer.md"), "docs/own-layer.md", "exec"), {"__name__": "page"})
    out = capsys.readouterr().out
    assert "ScaledTanh" in out and "WRONG" not in out and "validation accuracy" in out
