"""The runnable pages in docs/: every ``>>>`` example must still print what the page says.

Each Markdown file in docs/ is run as one doctest, the same check as
``python -m pytest --doctest-glob='*.md' docs/<page>.md``, so that the plain
``python -m pytest`` of the suite collects the pages too and they cannot drift
from the code they describe.
"""
import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples(page):
    result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS,
                              report=True, encoding="utf-8")
    assert result.attempted > 0, f"{page.name} has no examples"
    assert result.failed == 0, (f"{result.failed} of {result.attempted} examples in "
                                f"{page.name} failed (printed above)")
