"""Every relative link in the README and the guides points at a file that exists and,
where it names a section (``file.md#section``), at a heading of that file."""
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped,
    each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(page):
    """The page's text outside code fences (where a '# comment' is no heading)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page):
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", prose(page), re.M)}


def relative_links(page):
    return [t for t in LINK.findall(prose(page)) if not re.match(r"[a-z]+:", t)]


def test_slug_follows_github():
    assert slug("FreyFaces: the paper's step-size interval at K = 500, screened") == \
        "freyfaces-the-papers-step-size-interval-at-k--500-screened"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {os.path.relpath(file, ROOT)})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{page.name}: broken links: " + "; ".join(broken)
