"""Every chapter of the course runs top to bottom in a fresh kernel, in its own folder, and
its cells' assertions hold (the figures the chapter states)."""

from pathlib import Path

import jupytext
import nbclient
import pytest

COURSE = Path(__file__).parent.parent / "docs" / "course"
CHAPTERS = sorted(COURSE.glob("*/chapter.md"))


def test_there_are_chapters():
    assert CHAPTERS


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.parent.name)
def test_chapter_runs(chapter, mnist):  # mnist: the data in the cache before the kernel starts
    notebook = jupytext.read(chapter)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(chapter.parent)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, with the failing cell, if an assert fails
